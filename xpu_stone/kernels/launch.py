"""Loads compiled kernels onto a device and launches them on the caller's stream.

Launches go through CuPy's ``Function`` with raw device pointers and the raw
handle of the caller's *current* stream (torch's for tensors, CuPy's for
arrays), so CUDA-graph capture and side streams see every launch. No DLPack
capsule is made on this path: that costs 20-28 us a tensor.
"""

from __future__ import annotations

import threading

from .._deps import require_cupy
from ..errors import CudaError
from .compiler import compile_kernel

_functions: dict[tuple, object] = {}
_load_lock = threading.Lock()
_streams: dict[int, object] = {}


class _RawStream:
    """What CuPy's launcher needs of a stream: its handle."""

    __slots__ = ("ptr",)

    def __init__(self, ptr: int):
        self.ptr = ptr


def stream_handle(ptr: int) -> _RawStream:
    s = _streams.get(ptr)
    if s is None:
        if len(_streams) > 256:
            _streams.clear()
        s = _streams[ptr] = _RawStream(ptr)
    return s


def device_arch(device_id: int) -> str:
    cupy = require_cupy("running kernels")
    return f"sm_{cupy.cuda.Device(device_id).compute_capability}"


def get_function(source: str, name: str, device_id: int):
    """The loaded kernel ``name`` of ``source`` on ``device_id`` (compiled on first use)."""
    key = (device_id, source, name)
    fn = _functions.get(key)
    if fn is None:
        with _load_lock:
            fn = _functions.get(key)
            if fn is None:
                fn = _functions[key] = _load(source, name, device_id)
    return fn


def _load(source: str, name: str, device_id: int):
    cupy = require_cupy("running kernels")
    with cupy.cuda.Device(device_id):
        kernel = compile_kernel(source, name, device_arch(device_id))
        module = cupy.cuda.function.Module()
        module.load(kernel.cubin)
        return module.get_function(kernel.lowered_name)


def launch(fn, grid: int, block: int, args: tuple, stream_ptr: int, device_id: int) -> None:
    """Launches ``fn`` on the stream with handle ``stream_ptr`` of ``device_id``."""
    cupy = require_cupy("running kernels")
    try:
        if cupy.cuda.runtime.getDevice() == device_id:
            fn((grid,), (block,), args, 0, stream_handle(stream_ptr))
        else:
            with cupy.cuda.Device(device_id):
                fn((grid,), (block,), args, 0, stream_handle(stream_ptr))
    except cupy.cuda.driver.CUDADriverError as e:
        raise CudaError(str(e), _error_name(e)) from e


def _error_name(e) -> str | None:
    text = str(e)
    return text.split(":", 1)[0] if text.startswith("CUDA_ERROR") else None
