"""Capture xpu_stone kernels, torch ops and CuPy ops in one CUDA graph.

    g = xpu_stone.runtime.capture(f, x)      # f(x) may mix torch, CuPy and xpu_stone
    y = g(x_new)                             # copies x_new into the graph's input, replays

During capture torch's capture stream is made CuPy's current stream too (a
CuPy launch on another stream would be left out of the graph), and CuPy's
allocations come from torch's allocator, hence from the graph's private pool
(CuPy's own pool would call ``cudaMalloc``, which capture forbids). Work that
synchronises with the host (``.item()``, ``bool(array.any())``) cannot be
captured, as with any CUDA graph: the capture then raises (a
:class:`~xpu_stone.errors.CudaError` for a CUDA call it refused) with the caller's
stream, CuPy's stream and allocator, torch's allocator and random generator put
back as they were, and the graph's memory released.
"""

from __future__ import annotations

from .._deps import cupy, is_cupy_array, require_cupy, require_torch, torch
from ..errors import InvalidArgumentError, ShapeMismatchError, XpuStoneError, cuda_error
from ..kernels.launch import cupy_stream
from .devices import current_device
from .memory import use_torch_allocator
from .streams import Stream, stream


def map_arrays(fn, obj):
    """``obj`` with ``fn`` applied to every torch tensor and CuPy array in it
    (through tuples, lists and dicts)."""
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_arrays(fn, o) for o in obj)
    if isinstance(obj, dict):
        return {k: map_arrays(fn, v) for k, v in obj.items()}
    if (torch is not None and isinstance(obj, torch.Tensor)) or is_cupy_array(obj):
        return fn(obj)
    return obj


def signature(args) -> tuple:
    """What a captured graph is specific to: shape, dtype and device of each array
    argument, the value of each other argument."""
    out = []
    for a in args:
        if torch is not None and isinstance(a, torch.Tensor):
            out.append(("tensor", tuple(a.shape), a.dtype, a.device))
        elif is_cupy_array(a):
            out.append(("cupy", a.shape, a.dtype.str, a.device.id))
        else:
            try:
                hash(a)
            except TypeError:  # a list, say: its text stands for it
                a = repr(a)
            out.append(("value", type(a), a))
    return tuple(out)


def _matches(x, static) -> bool:
    """``signature((x,)) == signature((static,))``, quicker for arrays (once per input and replay)."""
    if torch is not None and isinstance(static, torch.Tensor):
        return (
            isinstance(x, torch.Tensor)
            and x.shape == static.shape
            and x.dtype == static.dtype
            and x.device == static.device
        )
    if is_cupy_array(static):
        return (
            is_cupy_array(x)
            and x.shape == static.shape
            and x.dtype == static.dtype
            and x.device.id == static.device.id
        )
    return signature((x,)) == signature((static,))


def _static_copy(x):
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().clone()
    if is_cupy_array(x):
        return x.copy()
    return x


def input_device(args) -> int:
    """The CUDA device of the first CUDA tensor or CuPy array among ``args`` (else
    the current device)."""
    for a in args:
        if torch is not None and isinstance(a, torch.Tensor) and a.is_cuda:
            return a.device.index
        if is_cupy_array(a):
            return a.device.id
    return current_device()


class CapturedGraph:
    """``fn(*inputs)`` captured once; :meth:`__call__` replays it on new inputs of
    the same signature. ``inputs`` are the graph's own input buffers (write into
    them and call :meth:`replay` to skip the copies), ``outputs`` what ``fn``
    returned during capture: the buffers every replay overwrites."""

    def __init__(self, fn, example_inputs, warmup: int = 2, pool=None):
        require_torch("CUDA graph capture")
        cp = require_cupy("CUDA graph capture")
        current_device()  # a typed error when there is no GPU
        self.device = input_device(example_inputs)
        self.signature = signature(example_inputs)
        self.inputs = tuple(_static_copy(x) for x in example_inputs)
        with torch.cuda.device(self.device):
            # Warm-up on a side stream (torch's advice: capture sees warmed-up
            # libraries and no lazy initialisation); compiles and loads kernels.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with stream(side):
                for _ in range(warmup):
                    fn(*self.inputs)
            caller_stream = torch.cuda.current_stream()
            caller_stream.wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            # a pool id of our own (unless given one), to release it if the capture fails
            pool = torch.cuda.graph_pool_handle() if pool is None else pool
            # a capture stream of this device: torch.cuda.graph's default one is made once per
            # process, on whichever device was current then, and would move a capture for
            # another GPU (and its allocations) to that device
            capture_on = torch.cuda.Stream(self.device)
            try:
                with use_torch_allocator(), torch.cuda.graph(self.graph, pool=pool, stream=capture_on):
                    capture_stream = Stream.wrap(torch.cuda.current_stream())
                    with cp.cuda.Device(self.device), capture_stream.cupy:
                        self.outputs = fn(*self.inputs)
            except BaseException as e:
                _undo_failed_capture(self.device, pool, caller_stream)
                cuda_call = isinstance(e, RuntimeError) and (hasattr(e, "error_code") or "CUDA" in str(e))
                if isinstance(e, XpuStoneError) or not cuda_call:
                    raise
                raise cuda_error(e, "CUDA-graph capture") from e  # a CUDA call the capture refused
        self._cupy_inputs = any(is_cupy_array(x) for x in self.inputs)

    def replay(self) -> None:
        """Replays the graph on its device's current stream, on whatever its input buffers hold."""
        with torch.cuda.device(self.device):
            self.graph.replay()

    def __call__(self, *inputs):
        """Copies ``inputs`` into the graph's input buffers, replays, returns :attr:`outputs`."""
        if len(inputs) != len(self.inputs):
            raise InvalidArgumentError(
                f"the graph was captured with {len(self.inputs)} inputs, got {len(inputs)}"
            )
        with torch.cuda.device(self.device):
            if self._cupy_inputs:
                ext = cupy_stream(torch.cuda.current_stream().cuda_stream)
            for i, (static, x) in enumerate(zip(self.inputs, inputs)):
                if x is static:
                    continue
                if not _matches(x, static):
                    raise ShapeMismatchError(
                        f"input {i} does not match the captured one: {signature((x,))[0]} vs "
                        f"{signature((static,))[0]}; capture a graph for it"
                    )
                if isinstance(static, torch.Tensor):
                    static.copy_(x)
                elif is_cupy_array(static):
                    with ext:
                        cupy.copyto(static, x)
            self.graph.replay()
        return self.outputs


def _undo_failed_capture(device: int, pool, caller_stream) -> None:
    """Puts back what a capture that failed part-way leaves behind (when the capture
    itself failed, ``CUDAGraph.capture_end`` raises before its own clean-up):

    * the caller's current stream (``torch.cuda.graph`` leaves its capture stream
      current when ending the capture raises);
    * torch's caching allocator, still routing to the graph's pool, which is then
      never released: end the routing and release the pool, once, only if the
      routing was still on (otherwise the graph object releases it);
    * torch's CUDA generator, still marked as capturing, so that every later random
      op on the device fails ("Offset increment outside graph capture"): a fresh
      state with the same seed and offset.

    The CuPy stream and allocator come back through their context managers."""
    torch.cuda.set_stream(caller_stream)
    try:
        torch._C._cuda_endAllocateToPool(device, pool)
    except (AttributeError, RuntimeError):  # capture_end ended it (or a torch without the binding)
        pass
    else:
        torch._C._cuda_releasePool(device, pool)
    gen = torch.cuda.default_generators[device]
    try:
        gen.graphsafe_set_state(gen.clone_state())
    except (AttributeError, RuntimeError):  # a torch without graph-safe generator states
        pass


def capture(fn, *example_inputs, warmup: int = 2, pool=None) -> CapturedGraph:
    """Runs ``fn(*example_inputs)`` ``warmup`` times on a side stream, then captures
    it into a CUDA graph (``pool``: a ``torch.cuda.graph_pool_handle()`` to share
    memory with other graphs replayed in capture order)."""
    return CapturedGraph(fn, example_inputs, warmup=warmup, pool=pool)
