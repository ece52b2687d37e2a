"""CUDA streams and events shared by torch and CuPy.

A :class:`Stream` is one CUDA stream seen by both libraries (a
``torch.cuda.Stream`` and a CuPy view of the same handle). xpu_stone's kernels
launch on the caller's current stream (torch's for tensors, CuPy's for arrays);
:func:`stream` makes a stream current for both at once::

    s = xpu_stone.runtime.Stream()
    with xpu_stone.runtime.stream(s):
        y = xpu_stone.poincare.expmap0(x)      # on s
        z = cupy.tanh(cupy_array)              # on s too
    xpu_stone.runtime.current_stream().wait_event(s.record_event())   # join back

Events are CuPy events (timing on request). :func:`timed` measures the GPU time
of a block of work on the current stream.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager

from .._deps import cupy, require_cupy, torch
from ..errors import InvalidArgumentError
from ..kernels.launch import cupy_stream
from .devices import current_device


class Stream:
    """A CUDA stream for torch and CuPy. ``Stream()`` makes a new one on the
    current device (``priority``: lower is more urgent, as in CUDA);
    :meth:`wrap` adopts an existing torch stream, CuPy stream or raw handle."""

    def __init__(self, device: int | None = None, priority: int = 0):
        cp = require_cupy("CUDA streams")
        dev = current_device() if device is None else device
        if torch is not None:
            self._init(torch.cuda.Stream(device=dev, priority=priority), None, dev)
        else:
            with cp.cuda.Device(dev):
                self._init(None, cp.cuda.Stream(non_blocking=True, priority=priority), dev)

    def _init(self, torch_stream, cupy_stream_, device: int) -> None:
        self.device = device
        self.ptr = int(torch_stream.cuda_stream if torch_stream is not None else cupy_stream_.ptr)
        self.torch = torch_stream
        if self.torch is None and torch is not None:
            self.torch = torch.cuda.ExternalStream(self.ptr, device=device)
        self.cupy = cupy_stream_ if cupy_stream_ is not None else cupy_stream(self.ptr)

    @classmethod
    def wrap(cls, s, device: int | None = None) -> Stream:
        """A :class:`Stream` for ``s``: a :class:`Stream` (returned as is), a
        ``torch.cuda.Stream``, a CuPy stream, or a raw ``cudaStream_t`` handle (int)."""
        if isinstance(s, Stream):
            return s
        require_cupy("CUDA streams")
        out = cls.__new__(cls)
        if torch is not None and isinstance(s, torch.cuda.Stream):
            out._init(s, None, s.device.index)
        elif isinstance(s, (cupy.cuda.Stream, cupy.cuda.ExternalStream)):
            out._init(None, s, s.device_id if s.device_id >= 0 else current_device())
        elif isinstance(s, int) and not isinstance(s, bool):
            dev = current_device() if device is None else device
            out._init(None, cupy_stream(s), dev)
        else:
            raise InvalidArgumentError(
                f"a stream must be an xpu_stone Stream, a torch.cuda.Stream, a CuPy stream or an int "
                f"handle, got {type(s).__name__}"
            )
        return out

    def synchronize(self) -> None:
        """Waits until every piece of work queued on the stream has finished."""
        self.cupy.synchronize()

    def query(self) -> bool:
        """True when every piece of work queued on the stream has finished."""
        return self.cupy.done

    def wait_event(self, event: Event) -> None:
        """Work queued on this stream after the call waits for ``event`` (the host does not)."""
        self.cupy.wait_event(event.cupy)

    def wait_stream(self, other) -> None:
        """Work queued on this stream after the call waits for the work queued on ``other`` so far."""
        self.wait_event(Stream.wrap(other).record_event())

    def record_event(self, event: Event | None = None) -> Event:
        """Records ``event`` (a new one, without timing, when None) on this stream."""
        event = event or Event()
        return event.record(self)

    def __eq__(self, other) -> bool:
        return isinstance(other, Stream) and self.ptr == other.ptr and self.device == other.device

    def __hash__(self) -> int:
        return hash((self.ptr, self.device))

    def __repr__(self) -> str:
        return f"Stream(device={self.device}, handle=0x{self.ptr:x})"


class Event:
    """A CUDA event. ``timing=True`` for :meth:`elapsed_ms`; ``blocking=True``
    makes :meth:`synchronize` sleep instead of spin."""

    def __init__(self, timing: bool = False, blocking: bool = False):
        cp = require_cupy("CUDA events")
        self.timing = timing
        self.cupy = cp.cuda.Event(block=blocking, disable_timing=not timing)

    def record(self, stream=None) -> Event:
        """Records the event on ``stream`` (default: the current stream); returns self."""
        s = current_stream() if stream is None else Stream.wrap(stream)
        self.cupy.record(s.cupy)
        return self

    def synchronize(self) -> None:
        self.cupy.synchronize()

    def query(self) -> bool:
        """True once the work recorded before the event has finished."""
        return self.cupy.done

    def elapsed_ms(self, end: Event) -> float:
        """GPU milliseconds from this event to ``end`` (waits for ``end``); both need ``timing=True``."""
        if not (self.timing and end.timing):
            raise InvalidArgumentError("elapsed_ms needs two events made with timing=True")
        end.synchronize()
        return cupy.cuda.get_elapsed_time(self.cupy, end.cupy)


def current_stream(device: int | None = None) -> Stream:
    """torch's current stream of ``device`` when torch is installed (the stream
    xpu_stone launches tensor work on), CuPy's otherwise."""
    dev = current_device() if device is None else device
    if torch is not None:
        return Stream.wrap(torch.cuda.current_stream(dev))
    return Stream.wrap(require_cupy("CUDA streams").cuda.get_current_stream(dev))


@contextmanager
def stream(s):
    """Makes ``s`` (anything :meth:`Stream.wrap` takes) the current stream, and its
    device the current device, for torch and CuPy together."""
    s = Stream.wrap(s)
    with ExitStack() as stack:
        if s.torch is not None:
            stack.enter_context(torch.cuda.stream(s.torch))
        stack.enter_context(cupy.cuda.Device(s.device))
        stack.enter_context(s.cupy)
        yield s


def synchronize(device: int | None = None) -> None:
    """Waits for all work on ``device`` (default: the current one)."""
    cp = require_cupy("synchronize")
    with cp.cuda.Device(current_device() if device is None else device):
        cp.cuda.runtime.deviceSynchronize()


class Timer:
    """GPU time of a block, from :func:`timed`."""

    def __init__(self, stream_=None):
        self._stream = stream_
        self.start = Event(timing=True)
        self.end = Event(timing=True)

    def __enter__(self) -> Timer:
        self.start.record(self._stream)
        return self

    def __exit__(self, *exc) -> None:
        self.end.record(self._stream)

    @property
    def ms(self) -> float:
        """Milliseconds between the start and the end of the block on the GPU (waits for the end)."""
        return self.start.elapsed_ms(self.end)


def timed(stream_=None) -> Timer:
    """``with timed() as t: ...`` then ``t.ms``: the GPU time of the work queued
    in the block on ``stream_`` (default: the current stream at entry and exit)."""
    return Timer(stream_)
