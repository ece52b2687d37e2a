"""The op half of the Riemannian optimizers (:mod:`xpu_stone.optim`; kernels in
``cuda_src/optim.cu``): the fused multi-tensor step and its records.

One launch per (device, dtype, optimizer kind) updates every tensor of the set:
the host packs one 24-field record per tensor (:data:`META_FIELDS`, mirroring
``xs_opt_meta``; ``tests/test_cuda_layout.py`` checks the two against each
other) into a pinned buffer, copies it to the device on the current stream, and
launches one warp per row of all tensors together. :class:`ReplayPlan` rewrites
those records in place for a repeated step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._deps import torch
from ..engine.launch import TORCH_DTYPES, address, allocates, torch_stream
from ..errors import InvalidArgumentError, UnsupportedOperationError
from ..kernels.launch import get_function, launch_kernel
from ..kernels.registry import CXX_TYPE, DTYPES, REGISTRY, KernelList

__all__ = [
    "EUCLIDEAN",
    "FIELD",
    "LORENTZ",
    "POINCARE",
    "INT_FIELDS",
    "KERNELS",
    "META_FIELDS",
    "PinnedRing",
    "ReplayPlan",
    "StepConfig",
    "fused_step",
]

META_FIELDS = (
    *("param", "grad", "buf", "v", "vmax", "idx", "row_start", "rows", "D", "numel", "kind", "flags", "step"),
    *("c", "ball_eps", "lr", "wd", "beta1", "beta2", "eps", "bc1", "bc2", "pad0", "pad1"),
)
INT_FIELDS = 13  # the first 13 are long long, the rest double
FIELD = {name: i for i, name in enumerate(META_FIELDS)}

# StepConfig.kind and the flags bits (the XS_* enums of optim.cu)
EUCLIDEAN, POINCARE, LORENTZ = 0, 1, 2
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
            (dtype, f"xs_riemannian_step<{CXX_TYPE[dtype]}, {mode}>") for dtype in DTYPES for mode in (0, 1)
        ),
    )
)


@dataclass(frozen=True)
class StepConfig:
    """Hyper-parameters of one tensor's step (``beta1`` / ``beta2`` are SGD's momentum
    and dampening). ``bc1`` / ``bc2``: Adam's bias corrections :math:`1-\\beta^t`."""

    adam: bool
    kind: int
    c: float
    ball_eps: float
    lr: float
    wd: float
    beta1: float
    beta2: float
    eps: float = 0.0
    amsgrad: bool = False
    nesterov: bool = False
    retr: bool = False
    momentum: bool = False
    first_step: bool = False
    bc1: float = 1.0
    bc2: float = 1.0


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


def build_records(items: list) -> tuple[np.ndarray, list, int]:
    """``(records, keep, rows)``: one ``xs_opt_meta`` record per item (see
    :func:`fused_step`), the coalesced sparse-gradient tensors the records point
    into (alive until the launch is queued), and the total number of rows."""
    ints = np.zeros((len(items), len(META_FIELDS)), dtype=np.int64)
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
        ints[i, :INT_FIELDS] = (
            param.data_ptr(), gptr, address(buf), address(v), address(vmax), iptr,
            start, rows, d, numel, h.kind, _flags(h), 0,
        )  # fmt: skip
        floats[i, INT_FIELDS:22] = (h.c, h.ball_eps, h.lr, h.wd, h.beta1, h.beta2, h.eps, h.bc1, h.bc2)
        start += rows
    return ints, keep, start


@allocates
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
    stream = torch_stream(device.index)
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


class ReplayPlan:
    """The fused records of the last full step of a Riemannian optimizer, replayed while every parameter
    with a gradient is the one recorded, with a dense gradient of the same
    layout, and the group's switches are unchanged: only the gradient pointers,
    the learning rates and the other per-step scalars are rewritten (vectorised),
    instead of rebuilding 24 fields per tensor in Python. Anything else (a new
    parameter, a sparse or missing gradient, a changed switch, graph capture)
    takes the full step, which builds a new plan."""

    def __init__(self, opt, fused: dict, launched: dict):
        """``fused``: the step's items per (device, dtype); ``launched``: the records
        and row count :func:`fused_step` launched for each."""
        gindex = {id(p): gi for gi, group in enumerate(opt.param_groups) for p in group["params"]}
        self.order = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
        where = {id(p): i for i, p in enumerate(self.order)}
        self.switches = [self._switches(group) for group in opt.param_groups]
        self.sets = []
        for (device, dtype), items in fused.items():
            params = [it[1] for it in items]
            records, rows = launched[(device, dtype)]
            groups = np.array([gindex[id(p)] for p in params])
            states = [opt.state[p] for p in params]
            self.sets.append(
                dict(
                    device=device,
                    dtype=TORCH_DTYPES[dtype],
                    params=params,
                    at=np.array([where[id(p)] for p in params]),  # positions in self.order
                    records=records,
                    rows=rows,
                    groups=[(gi, np.flatnonzero(groups == gi)) for gi in np.unique(groups)],
                    states=states,
                    ring=PinnedRing(records.nbytes),
                )
            )
        self.first_step = FIRST_STEP

    @staticmethod
    def _switches(group) -> tuple:
        return tuple(group.get(k) for k in ("nesterov", "amsgrad", "retraction")) + (
            group.get("momentum", 0) > 0,
        )

    def replay(self, opt) -> bool:
        if torch.cuda.is_current_stream_capturing():
            return False
        if [self._switches(group) for group in opt.param_groups] != self.switches:
            return False
        # torch checks a .grad's dtype and shape on assignment: left to check are
        # the recorded parameters, dense and contiguous gradients
        order, n, k = self.order, len(self.order), 0
        gptrs, pptrs = [], []
        for group in opt.param_groups:
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                if k == n or order[k] is not p or g.is_sparse or not g.is_contiguous():
                    return False
                gptrs.append(g.data_ptr())
                pptrs.append(p.data_ptr())
                k += 1
        if k != n:
            return False
        gptrs, pptrs = np.array(gptrs, dtype=np.int64), np.array(pptrs, dtype=np.int64)
        F = FIELD
        for st in self.sets:
            if not np.array_equal(st["records"][:, F["param"]], pptrs[st["at"]]):
                return False  # a parameter's storage was replaced
        for st in self.sets:
            rec = st["records"]
            flt = rec.view(np.float64)
            rec[:, F["grad"]] = gptrs[st["at"]]
            steps = np.empty(len(st["states"]), dtype=np.float64)
            for i, state in enumerate(st["states"]):
                state["step"] += 1
                steps[i] = state["step"]
            rec[:, F["flags"]] &= ~self.first_step  # only a first step starts the momentum buffer
            for gi, rows in st["groups"]:
                group = opt.param_groups[gi]
                flt[rows, F["lr"]] = group["lr"]
                flt[rows, F["wd"]] = group["weight_decay"]
                if opt._adam:
                    beta1, beta2 = group["betas"]
                    flt[rows, F["beta1"]] = beta1
                    flt[rows, F["beta2"]] = beta2
                    flt[rows, F["eps"]] = group["eps"]
                    flt[rows, F["bc1"]] = 1.0 - beta1 ** steps[rows]
                    flt[rows, F["bc2"]] = 1.0 - beta2 ** steps[rows]
                else:
                    flt[rows, F["beta1"]] = group["momentum"]
                    flt[rows, F["beta2"]] = group["dampening"]
            meta = st["ring"].to_device(rec, st["device"])
            launch_records(meta, len(st["params"]), st["rows"], st["device"], st["dtype"], opt._adam)
        return True
