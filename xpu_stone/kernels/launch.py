"""Loads compiled kernels onto a device and launches them on the caller's stream.

A launch packs the kernel's one parameter struct with ``struct.pack_into`` and
calls ``cuLaunchKernel`` (through CuPy's driver binding) with raw device
pointers and the raw handle of the caller's *current* stream (torch's for
tensors, CuPy's for arrays), so CUDA-graph capture and side streams see every
launch. No DLPack capsule and no per-argument conversion is made on this path.
"""

from __future__ import annotations

import ctypes
import struct
import threading

import numpy

from .._deps import cupy as _cupy
from .._deps import require_cupy
from ..errors import cuda_error
from .compiler import compile_kernel

_driver = _cupy.cuda.driver if _cupy is not None else None

_functions: dict[tuple, object] = {}
_load_lock = threading.Lock()

# Field order of `xs_row_args` in cuda_src/common/rowwise.cuh (27 fields of 8 bytes).
ROW_ARGS = struct.Struct("<qq3Q3q3qQqdQqddQQqq3QQQ")
ROW_ARG_FIELDS = (
    "rows",
    "D",
    "v0",
    "v1",
    "v2",
    "v0_rs",
    "v1_rs",
    "v2_rs",
    "v0_es",
    "v1_es",
    "v2_es",
    "c_ptr",
    "c_rs",
    "c_val",
    "t_ptr",
    "t_rs",
    "t_val",
    "eps",
    "out",
    "g",
    "g_rs",
    "g_es",
    "gv0",
    "gv1",
    "gv2",
    "gc",
    "gt",
)


class _ParamBuffer(threading.local):
    """Per-thread kernel-parameter memory: one struct and the pointer array
    cuLaunchKernel reads (it copies both before returning)."""

    def __init__(self):
        self.struct = ctypes.create_string_buffer(ROW_ARGS.size)
        self.params = (ctypes.c_void_p * 1)(ctypes.addressof(self.struct))
        self.params_ptr = ctypes.addressof(self.params)


_params = _ParamBuffer()


def device_arch(device_id: int) -> str:
    cupy = require_cupy("running kernels")
    return f"sm_{cupy.cuda.Device(device_id).compute_capability}"


def get_function(source: str, name: str, device_id: int, defines: tuple[str, ...] = ()):
    """The loaded kernel ``name`` of ``source`` on ``device_id`` (compiled on first use)."""
    key = (device_id, source, name, defines)
    fn = _functions.get(key)
    if fn is None:
        with _load_lock:
            fn = _functions.get(key)
            if fn is None:
                fn = _functions[key] = _load(source, name, device_id, defines)
    return fn


def _load(source: str, name: str, device_id: int, defines: tuple[str, ...]):
    cupy = require_cupy("running kernels")
    with cupy.cuda.Device(device_id):
        kernel = compile_kernel(source, name, device_arch(device_id), defines=defines)
        module = cupy.cuda.function.Module()
        module.load(kernel.cubin)
        return module.get_function(kernel.lowered_name)


def launch_row(fn, grid: int, block: int, fields: tuple, stream_ptr: int, device_id: int) -> None:
    """Launches a row-wise kernel with its ``xs_row_args`` fields (in ROW_ARG_FIELDS
    order) on the stream with handle ``stream_ptr`` of ``device_id``."""
    cupy = require_cupy("running kernels")
    buf = _params
    ROW_ARGS.pack_into(buf.struct, 0, *fields)
    try:
        _launch_on(cupy, device_id, fn.ptr, grid, 1, 1, block, 1, 1, 0, stream_ptr, buf.params_ptr)
    except _driver.CUDADriverError as e:
        raise cuda_error(e) from e


_CUDA_ERROR_INVALID_CONTEXT = 201


def _make_context_current(cupy, device_id: int, error) -> None:
    """Re-raises ``error`` unless it is CUDA_ERROR_INVALID_CONTEXT; then makes the primary
    context of ``device_id`` (the one torch and CuPy share) current in this thread.

    A thread that has made no CUDA runtime call has no current context, and the driver's
    cuLaunchKernel then fails with that error: torch's autograd device thread when an
    xpu_stone backward is the first work it runs (``torch.autograd.grad(cdist(x, y), ...,
    torch.ones_like(...))``), or a user's new thread whose first CUDA work is an
    xpu_stone op. ``cudaSetDevice`` makes the primary context current (CUDA 12 and
    later), even when ``cudaGetDevice`` already reports ``device_id``. (CuPy's own
    kernel calls and module loads make the context current themselves; the raw
    cuLaunchKernel of :func:`_launch_on` does not, and checking on every launch would
    cost the hot path a call.)"""
    if getattr(error, "status", None) != _CUDA_ERROR_INVALID_CONTEXT:
        raise error
    cupy.cuda.runtime.setDevice(device_id)


def _launch_on(cupy, device_id: int, fn_ptr: int, gx, gy, gz, bx, by, bz, shared_mem, stream_ptr, params_ptr):
    """cuLaunchKernel with packed parameters, making ``device_id`` current only when it is
    not (and its context current when this thread has none: :func:`_make_context_current`)."""
    try:
        if cupy.cuda.runtime.getDevice() == device_id:
            _driver.launchKernel(fn_ptr, gx, gy, gz, bx, by, bz, shared_mem, stream_ptr, params_ptr, 0)
            return
    except _driver.CUDADriverError as e:
        _make_context_current(cupy, device_id, e)
    with cupy.cuda.Device(device_id):
        _driver.launchKernel(fn_ptr, gx, gy, gz, bx, by, bz, shared_mem, stream_ptr, params_ptr, 0)


# While a profile is open, xpu_stone.runtime.profiler installs its recorder here
# (the kernel layer knows nothing of the runtime above it); every launch path reads it.
RECORDER: list = [None]


def set_recorder(recorder) -> None:
    """Installs ``recorder(op, variant, shape, dtype, device, stream, launch, *args)``,
    which must run ``launch(*args)`` and record it, for every launch; None removes it."""
    RECORDER[0] = recorder


def launch_kernel(
    fn,
    grid,
    block,
    args: tuple,
    stream_ptr: int,
    device_id: int,
    shared_mem: int = 0,
    *,
    op: str = "",
    shape: tuple = (),
    dtype: str = "",
) -> None:
    """Launches any loaded kernel (see :func:`get_function`) on the stream with
    handle ``stream_ptr``. ``args`` are CuPy arrays or NumPy scalars of the exact
    C types of the kernel's parameters (``numpy.uint64(ptr)`` for a raw device
    pointer, ``numpy.int64``, ``numpy.float32``...); ``grid`` and ``block`` are
    ints or tuples. ``op``, ``shape`` and ``dtype`` label the launch for
    :mod:`xpu_stone.runtime.profiler`. NumPy-scalar arguments are packed once into
    per-thread memory and launched with ``cuLaunchKernel`` directly (like
    :func:`launch_row`); a CuPy array among them takes CuPy's slower call."""
    recorder = RECORDER[0]
    if recorder is not None:
        recorder(op or "kernel", "", shape, dtype, device_id, stream_ptr, _launch_kernel, fn, grid, block,
                 args, stream_ptr, device_id, shared_mem)  # fmt: skip
    else:
        _launch_kernel(fn, grid, block, args, stream_ptr, device_id, shared_mem)


class _StreamHandle:
    """A raw ``cudaStream_t`` handle offered through the CUDA stream protocol
    (``__cuda_stream__`` returns ``(version 0, handle)``), the form CuPy 14's
    ``Stream.from_external`` takes; CuPy holds it and never destroys the stream."""

    __slots__ = ("ptr",)

    def __init__(self, ptr: int):
        self.ptr = int(ptr)

    def __cuda_stream__(self) -> tuple[int, int]:
        return (0, self.ptr)


def cupy_stream(stream_ptr: int):
    """A CuPy stream object for the raw handle ``stream_ptr`` (torch's stream, a
    side stream...), for CuPy calls that take a stream. It does not own the
    stream; use it inside ``cupy.cuda.Device(d)`` of the stream's device."""
    return require_cupy("CUDA streams").cuda.Stream.from_external(_StreamHandle(stream_ptr))


# NumPy scalar type -> struct code of the kernel parameter it fills
_PARAM_CODES = {
    numpy.uint64: "Q",
    numpy.int64: "q",
    numpy.uint32: "I",
    numpy.int32: "i",
    numpy.float64: "d",
    numpy.float32: "f",
}


class _PackedParams(threading.local):
    """Per-thread parameter memory of :func:`launch_kernel`, one per argument signature:
    the values packed at their C alignment in one buffer and the array of pointers into
    it that cuLaunchKernel reads (it copies the values before returning)."""

    def __init__(self):
        self.by_signature: dict[tuple, tuple] = {}


_packed = _PackedParams()


def _params_ptr(args: tuple) -> int | None:
    """The packed parameters of ``args`` (NumPy scalars); None for any other argument."""
    signature = tuple(map(type, args))
    entry = _packed.by_signature.get(signature)
    if entry is None:
        codes = [_PARAM_CODES.get(t) for t in signature]
        if None in codes:
            return None
        layout = struct.Struct("@" + "".join(codes))  # native alignment: as the C compiler lays them
        ends = [struct.calcsize("@" + "".join(codes[: i + 1])) for i in range(len(codes))]
        buf = ctypes.create_string_buffer(max(layout.size, 1))
        base = ctypes.addressof(buf)
        params = (ctypes.c_void_p * max(len(codes), 1))(
            *[base + end - struct.calcsize(code) for end, code in zip(ends, codes)]
        )
        entry = _packed.by_signature[signature] = (layout, buf, params, ctypes.addressof(params))
    layout, buf, _, ptr = entry
    layout.pack_into(buf, 0, *args)
    return ptr


def _dims(v) -> tuple[int, int, int]:
    t = tuple(v) if isinstance(v, tuple) else (v,)
    return (int(t[0]), int(t[1]) if len(t) > 1 else 1, int(t[2]) if len(t) > 2 else 1)


def _launch_kernel(fn, grid, block, args, stream_ptr, device_id, shared_mem):
    cupy = require_cupy("running kernels")
    params = _params_ptr(args)
    try:
        if params is None:  # CuPy arrays among the arguments: CuPy's own call converts them
            with cupy.cuda.Device(device_id):
                # (CuPy's call makes the device's context current itself)
                fn(_dims(grid), _dims(block), args, shared_mem=shared_mem, stream=cupy_stream(stream_ptr))
        else:
            _launch_on(cupy, device_id, fn.ptr, *_dims(grid), *_dims(block), shared_mem, stream_ptr, params)
    except _driver.CUDADriverError as e:
        raise cuda_error(e) from e
