"""Launches of the fused multi-tensor steps of ``cuda_src/optim.cu``.

One launch per (device, dtype, optimizer kind) updates every tensor of the set:
the host packs one 24-field record per tensor (:data:`_META_FIELDS`, mirroring
``xs_opt_meta``) into a pinned buffer, copies it to the device on the current
stream, and launches one warp per row of all tensors together.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InvalidArgumentError, UnsupportedOperationError
from ..kernels import REGISTRY
from ..kernels.launch import get_function, launch_kernel
from ..kernels.registry import CXX_TYPE, KernelList
from ..rowwise import TORCH_DTYPES
from ._math import EUCLIDEAN, StepConfig

_META_FIELDS = (
    *("param", "grad", "buf", "v", "vmax", "idx", "row_start", "rows", "D", "numel", "kind", "flags", "step"),
    *("c", "ball_eps", "lr", "wd", "beta1", "beta2", "eps", "bc1", "bc2", "pad0", "pad1"),
)
_INT_FIELDS = 13
assert len(_META_FIELDS) == 24
_F = {name: i for i, name in enumerate(_META_FIELDS)}

AMSGRAD, NESTEROV, RETR, MOMENTUM, FIRST_STEP = 1, 2, 4, 8, 16
EUCLIDEAN_ROW = 1024  # elements per warp for Euclidean tensors
BLOCK = 256
_CAPTURED: list = []  # metadata of steps captured into CUDA graphs (see fused_step)
_META_CACHE: dict = {}  # (device, record bytes) -> device copy, for steps that repeat their records
_META_CACHE_SIZE = 16


KERNELS = REGISTRY.register(
    KernelList(
        "riemannian_optim",
        "optim.cu",
        kernels=tuple(
            (dtype, f"xs_riemannian_step<{CXX_TYPE[dtype]}, {mode}>")
            for dtype in ("float32", "float64", "float16", "bfloat16")
            for mode in (0, 1)
        ),
    )
)


def _flags(h: StepConfig) -> int:
    return (
        AMSGRAD * h.amsgrad
        + NESTEROV * h.nesterov
        + RETR * h.retr
        + MOMENTUM * h.momentum
        + FIRST_STEP * h.first_step
    )


def _device_meta(ints: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The records on ``device`` and the pinned host buffer they are copied from: a cached
    copy (host ``None``) when a recent step had the same records (SGD with gradients at
    stable addresses: no copy at all), else a copy from pinned memory on the current stream."""
    key = (device, ints.tobytes())
    meta = _META_CACHE.get(key)
    if meta is not None:
        return meta, None
    host = torch.from_numpy(ints).pin_memory()
    meta = host.to(device, non_blocking=True)
    if len(_META_CACHE) >= _META_CACHE_SIZE:
        _META_CACHE.pop(next(iter(_META_CACHE)))
    _META_CACHE[key] = meta
    return meta, host


def _ptr(t) -> int:
    return 0 if t is None else t.data_ptr()


def build_records(items: list) -> tuple[np.ndarray, list, int]:
    """``(records, keep, rows)``: one ``xs_opt_meta`` record per item (see
    :func:`fused_step`), the coalesced sparse-gradient tensors the records point
    into (alive until the launch is queued), and the total number of rows."""
    ints = np.zeros((len(items), len(_META_FIELDS)), dtype=np.int64)
    floats = ints.view(np.float64)
    keep = []
    start = 0
    for i, (h, param, grad, buf, v, vmax) in enumerate(items):
        numel = param.numel()
        if grad.is_sparse:
            grad = grad.coalesce()
            idx, values = grad.indices()[0].contiguous(), grad.values().contiguous()
            keep += [idx, values]
            d = param.shape[-1]
            rows = idx.numel()
            gptr, iptr = values.data_ptr(), idx.data_ptr()
        else:
            d = param.shape[-1] if (h.kind != EUCLIDEAN and param.dim() > 0) else EUCLIDEAN_ROW
            rows = -(-numel // d)
            gptr, iptr = grad.data_ptr(), 0
        ints[i, :_INT_FIELDS] = (
            param.data_ptr(), gptr, _ptr(buf), _ptr(v), _ptr(vmax), iptr,
            start, rows, d, numel, h.kind, _flags(h), 0,
        )  # fmt: skip
        floats[i, _INT_FIELDS:22] = (h.c, h.ball_eps, h.lr, h.wd, h.beta1, h.beta2, h.eps, h.bc1, h.bc2)
        start += rows
    return ints, keep, start


def fused_step(items: list, adam: bool) -> tuple[np.ndarray, int] | None:
    """``items``: ``(h, param, grad, buf, v, vmax)`` with CUDA tensors of one device and
    dtype, contiguous; ``grad`` dense (same shape) or sparse COO over the first dim of a
    2-D parameter. Updates them all with one kernel launch and returns the records
    launched and their row count (None when there was nothing to launch)."""
    if not items:
        return None
    param0 = items[0][1]
    dtype = TORCH_DTYPES.get(param0.dtype)
    if dtype is None:
        raise InvalidArgumentError(f"fused Riemannian step: unsupported dtype {param0.dtype}")
    device = param0.device
    ints, keep, start = build_records(items)
    if start == 0:
        return None
    capturing = torch.cuda.is_current_stream_capturing()
    if capturing and (adam or any(item[0].first_step for item in items)):
        # a graph replays the records of the captured step: Adam's bias corrections
        # 1 - beta^t (and SGD's first step, which starts the buffer) would never advance
        raise UnsupportedOperationError(
            "a RiemannianAdam step, or the first step of RiemannianSGD with momentum, cannot be "
            "captured in a CUDA graph (its per-step scalars would be replayed unchanged); capture "
            "RiemannianSGD after one eager step"
        )
    meta, host = _device_meta(ints, device)
    if capturing:
        _CAPTURED.append((meta, host, *keep))  # a CUDA graph reads these at every replay
    launch_records(meta, len(items), start, device, dtype, adam)
    return ints, start


def launch_records(meta: torch.Tensor, count: int, rows: int, device, dtype: str, adam: bool) -> None:
    """One launch of the fused step over ``count`` records (on ``device``) covering ``rows`` rows."""
    name = KERNELS.name(dtype, 1 if adam else 0)
    fn = get_function(KERNELS.source, name, device.index, KERNELS.defines(dtype))
    stream = torch.cuda.current_stream(device).cuda_stream
    grid = -(-rows * 32 // BLOCK)
    launch_kernel(
        fn,
        grid,
        BLOCK,
        (np.uint64(meta.data_ptr()), np.int32(count), np.int64(rows)),
        stream,
        device.index,
        op="riemannian_optim",
        shape=(count, rows),
        dtype=dtype,
    )


class PinnedRing:
    """Pinned host buffers that a repeated step stages its records in, each
    reused only after its previous copy to the device has completed (an event
    per buffer), so no step pays for pinning fresh memory."""

    def __init__(self, nbytes: int, count: int = 4):
        self.buffers = [torch.empty(nbytes, dtype=torch.uint8, pin_memory=True) for _ in range(count)]
        self.events: list = [None] * count
        self.next = 0

    def to_device(self, records: np.ndarray, device) -> torch.Tensor:
        i = self.next
        self.next = (i + 1) % len(self.buffers)
        if self.events[i] is not None:
            self.events[i].synchronize()  # long done in practice: a step or more ago
        buf = self.buffers[i]
        buf.numpy()[:] = records.reshape(-1).view(np.uint8)
        meta = buf.to(device, non_blocking=True).view(torch.int64)
        ev = self.events[i] = self.events[i] or torch.cuda.Event()
        ev.record(torch.cuda.current_stream(device))
        return meta
