"""Device memory: statistics over torch's and CuPy's pools, one pool for both,
pinned host buffers, typed out-of-memory errors (:func:`typed_out_of_memory`: the
one conversion of torch's and CuPy's allocator errors).

torch and CuPy each keep a caching pool of device memory; memory cached by one
is not available to the other. :func:`use_torch_allocator` routes CuPy's
allocations through torch's caching allocator, so there is one pool, torch's
statistics count CuPy's arrays, and CuPy allocations made during a
``torch.cuda.graph`` capture come from the graph's private pool (CuPy's own pool
would call ``cudaMalloc``, which is illegal during capture)::

    with xpu_stone.runtime.use_torch_allocator():
        a = cupy.zeros(1 << 20)          # memory from torch's caching allocator
    print(xpu_stone.runtime.memory_stats())
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

from .._deps import cupy, require_cupy, require_torch, torch
from ..errors import OutOfMemoryError, UnsupportedOperationError, XpuStoneError, cuda_error
from .devices import current_device


@dataclass(frozen=True)
class MemoryStats:
    """Bytes on one device. ``torch_*``: torch's caching allocator (it also holds
    CuPy's arrays while :func:`use_torch_allocator` is on); ``cupy_*``: CuPy's own
    pool; ``free`` / ``total``: the device as the driver sees it; ``pinned_*``:
    torch's pinned host allocator."""

    device: int
    torch_allocated: int
    torch_reserved: int
    torch_peak: int
    cupy_used: int
    cupy_reserved: int
    free: int
    total: int
    pinned_active: int
    pinned_reserved: int
    cupy_routed_to_torch: bool

    @property
    def allocated(self) -> int:
        """Bytes in live tensors and arrays, both libraries."""
        return self.torch_allocated + self.cupy_used

    @property
    def reserved(self) -> int:
        """Bytes held by both pools (allocated plus cached)."""
        return self.torch_reserved + self.cupy_reserved

    @property
    def peak(self) -> int:
        """Peak of torch's allocated bytes since the last :func:`reset_peak` (covers CuPy
        only while routed: CuPy's own pool keeps no peak)."""
        return self.torch_peak


def _device(device) -> int:
    if isinstance(device, int):
        return device
    if device is not None and torch.device(device).index is not None:
        return torch.device(device).index
    return current_device()


def memory_stats(device=None) -> MemoryStats:
    """Statistics of ``device`` (default: the current one); needs a GPU."""
    dev = _device(device)
    t_alloc = t_res = t_peak = pin_active = pin_res = 0
    if torch is not None and torch.cuda.is_available():
        t_alloc = torch.cuda.memory_allocated(dev)
        t_res = torch.cuda.memory_reserved(dev)
        t_peak = torch.cuda.max_memory_allocated(dev)
        host = torch.cuda.host_memory_stats()
        pin_active = host.get("active_bytes.current", 0)
        pin_res = host.get("allocated_bytes.current", 0)
    c_used = c_res = 0
    if cupy is not None:
        with cupy.cuda.Device(dev):
            pool = cupy.get_default_memory_pool()
            c_used, c_res = pool.used_bytes(), pool.total_bytes()
            free, total = cupy.cuda.runtime.memGetInfo()
    else:
        free, total = torch.cuda.mem_get_info(dev)
    return MemoryStats(
        dev,
        t_alloc,
        t_res,
        t_peak,
        c_used,
        c_res,
        free,
        total,
        pin_active,
        pin_res,
        torch_allocator_enabled(),
    )


def reset_peak(device=None) -> None:
    """Restarts torch's peak counter of ``device``."""
    require_torch("reset_peak").cuda.reset_peak_memory_stats(_device(device))


def empty_cache() -> None:
    """Returns the cached, unused blocks of torch's pool, CuPy's pool and CuPy's
    pinned pool to the driver (live tensors and arrays are untouched)."""
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    if cupy is not None:
        try:
            cupy.get_default_memory_pool().free_all_blocks()
            cupy.get_default_pinned_memory_pool().free_all_blocks()
        except cupy.cuda.runtime.CUDARuntimeError:
            pass  # no usable device: nothing is cached


def pinned_empty(shape, dtype=None):
    """An uninitialised page-locked host buffer, for asynchronous copies to and
    from the GPU: a torch tensor when ``dtype`` is a torch dtype (torch's pinned
    caching allocator), a NumPy array in CuPy's pinned pool when it is a NumPy
    dtype or name. Needs a GPU driver."""
    if torch is not None and (dtype is None or isinstance(dtype, torch.dtype)):
        if not torch.cuda.is_available():
            raise UnsupportedOperationError("pinned host memory needs a CUDA device and driver")
        return torch.empty(shape, dtype=dtype or torch.float32, pin_memory=True)
    cp = require_cupy("pinned NumPy buffers")
    import cupyx

    try:
        return cupyx.empty_pinned(shape, dtype=dtype or "float32")
    except cp.cuda.runtime.CUDARuntimeError as e:
        raise UnsupportedOperationError(f"pinned host memory needs a CUDA device and driver ({e})") from e


# ------------------------------------------------------ out-of-memory errors
def out_of_memory(requested: int | None, device: int | None, cause: str = "") -> OutOfMemoryError:
    """The typed error for a failed allocation of ``requested`` bytes on ``device``
    (None: not known), saying how much the device and torch's cache still have
    free; ``cause`` is the failed allocator's own message."""
    free = cached = None
    try:
        if torch is not None and device is not None:
            free, _ = torch.cuda.mem_get_info(device)
            cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    except (RuntimeError, AssertionError):  # no usable device (AssertionError: a CPU build of torch)
        pass
    detail = "unknown" if free is None else f"{free} bytes free on the device, {cached} cached by torch"
    size = "memory" if requested is None else f"{requested} bytes"
    return OutOfMemoryError(
        f"could not allocate {size} on {'the GPU' if device is None else f'GPU {device}'} ({detail})"
        + (f": {cause}" if cause else ""),
        "cudaErrorMemoryAllocation",
        requested=requested,
        free=free,
    )


# torch's and CuPy's allocator errors, and the CUDA call errors that may name an
# out-of-memory failure (a module load, a launch, a cudaMalloc)
_ALLOCATOR_ERRORS = tuple(
    t
    for t in (
        getattr(torch, "OutOfMemoryError", None),
        cupy.cuda.memory.OutOfMemoryError if cupy is not None else None,
    )
    if t is not None
)
_CUDA_CALL_ERRORS = (
    (cupy.cuda.runtime.CUDARuntimeError, cupy.cuda.driver.CUDADriverError) if cupy is not None else ()
)
OOM_CANDIDATES = _ALLOCATOR_ERRORS + _CUDA_CALL_ERRORS
"""The exception types :func:`typed_out_of_memory` may turn into OutOfMemoryError."""
_GPU_IN_TEXT = re.compile(r"\bGPU (\d+)\b")  # torch: "Tried to allocate 2.00 GiB. GPU 0 has ..."
_CUPY_BYTES = re.compile(r"allocating ([\d,]+) bytes")  # CuPy: "Out of memory allocating 1,024 bytes"


def typed_out_of_memory(exc: BaseException) -> OutOfMemoryError | None:
    """:class:`~xpu_stone.errors.OutOfMemoryError` for ``exc`` when it reports a
    failed device allocation (torch's or CuPy's out-of-memory error, a CUDA call
    that failed with ``cudaErrorMemoryAllocation`` / ``CUDA_ERROR_OUT_OF_MEMORY``),
    else None. Raise it ``from exc``."""
    if isinstance(exc, OutOfMemoryError):
        return exc
    if isinstance(exc, _ALLOCATOR_ERRORS):
        text = str(exc)
        gpu, size = _GPU_IN_TEXT.search(text), _CUPY_BYTES.search(text)
        requested = int(size.group(1).replace(",", "")) if size else None
        return out_of_memory(requested, _failed_device(exc, gpu), text.splitlines()[0] if text else "")
    if isinstance(exc, _CUDA_CALL_ERRORS):
        typed = cuda_error(exc)
        return typed if isinstance(typed, OutOfMemoryError) else None
    return None


def _failed_device(exc: BaseException, named) -> int | None:
    """The device of a failed allocation: the one torch's message names, else CuPy's
    current device for CuPy's error (it allocates there), else the current device."""
    if named:
        return int(named.group(1))
    try:
        if cupy is not None and isinstance(exc, cupy.cuda.memory.OutOfMemoryError):
            return cupy.cuda.runtime.getDevice()
        return current_device()
    except (XpuStoneError, RuntimeError):  # no usable device
        return None


# ------------------------------------------- CuPy through torch's allocator


class _TorchBlock:
    """Owner of one block from torch's caching allocator: gives it back when the
    last CuPy array on it is gone. The block belongs to the stream it was taken
    on (CuPy's current stream), as torch's own blocks do."""

    __slots__ = ("ptr",)

    def __init__(self, ptr: int):
        self.ptr = ptr

    def __del__(self):
        if self.ptr:
            torch.cuda.caching_allocator_delete(self.ptr)


def torch_backed_alloc(nbytes: int):
    """A CuPy allocator (``cupy.cuda.set_allocator``) taking memory from torch's
    caching allocator on CuPy's current device and stream."""
    dev = cupy.cuda.runtime.getDevice()
    if nbytes == 0:
        return cupy.cuda.MemoryPointer(cupy.cuda.UnownedMemory(0, 0, None, dev), 0)
    stream = cupy.cuda.get_current_stream(dev).ptr
    try:
        ptr = torch.cuda.caching_allocator_alloc(nbytes, dev, stream)
    except torch.cuda.OutOfMemoryError as e:
        raise out_of_memory(nbytes, dev) from e
    return cupy.cuda.MemoryPointer(cupy.cuda.UnownedMemory(ptr, nbytes, _TorchBlock(ptr), dev), 0)


_routing_lock = threading.Lock()


def torch_allocator_enabled() -> bool:
    return cupy is not None and cupy.cuda.get_allocator() is torch_backed_alloc


class _Routing:
    """Handle returned by :func:`use_torch_allocator`; as a context manager it puts
    the previous allocator back on exit."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._prev = None
        self._apply()

    def _apply(self) -> None:
        with _routing_lock:
            self._prev = cupy.cuda.get_allocator()
            if self.enabled:
                cupy.cuda.set_allocator(torch_backed_alloc)
            elif self._prev is torch_backed_alloc:
                cupy.cuda.set_allocator(cupy.get_default_memory_pool().malloc)

    def __enter__(self) -> _Routing:
        return self

    def __exit__(self, *exc) -> None:
        with _routing_lock:
            cupy.cuda.set_allocator(self._prev)


def use_torch_allocator(enabled: bool = True) -> _Routing:
    """Routes CuPy's device allocations through torch's caching allocator
    (``enabled=False``: back to CuPy's default pool). Takes effect at once, for
    every thread; used as a context manager, the previous allocator comes back
    at the end of the block. Arrays keep the memory they were given either way.
    An allocation that fails raises :class:`~xpu_stone.errors.OutOfMemoryError`
    with the requested size and the free memory."""
    require_cupy("use_torch_allocator")
    if enabled:
        require_torch("use_torch_allocator")
    return _Routing(enabled)
