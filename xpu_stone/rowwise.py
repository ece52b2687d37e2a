"""Row-wise ops: description, validation, launch, and the CPU transcription.

A :class:`RowOp` mirrors one op struct of ``cuda_src/*.cu`` (see the header of
``cuda_src/common/rowwise.cuh`` for the model): which vector inputs it takes,
the terms and dots of its row, and ``coeffs``, the per-row formula written in
torch exactly as the C++ one is. From these this module gives

* ``launch_forward`` / ``launch_backward``: operands flattened to rows (batch
  broadcasting by zero strides, no copies unless a broadcast pattern cannot be
  expressed by one row stride), a dispatcher choice, and one kernel launch on
  the caller's current stream; for torch tensors and for CuPy arrays;
* ``cpu_forward`` / ``cpu_backward``: the same maths in torch, used on CPU
  tensors, and checked by CPU CI (``gradcheck`` of the backward assembly against
  the forward, and the forward against the independent reference).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

from . import config, policies, profiler
from ._deps import cupy, is_cupy_array, require_torch, torch
from .constants import ACCUM_DTYPE, ARTANH_MAX, COSH_MAX, MIN_SQNORM, TANH_MAX
from .errors import InvalidArgumentError, InvalidCurvatureError, ShapeMismatchError
from .kernels import dispatcher
from .kernels.launch import get_function, launch_row
from .kernels.registry import REGISTRY, ROWWISE_VARIANTS, SCALAR_ROW_VARIANTS, VEC_WIDTH, OpKernels

_PROFILES = profiler.ACTIVE

if torch is not None:
    TORCH_DTYPES = {
        torch.float32: "float32",
        torch.float64: "float64",
        torch.float16: "float16",
        torch.bfloat16: "bfloat16",
    }
else:  # the CuPy-only installation
    TORCH_DTYPES = {}
TORCH_OF = {v: k for k, v in TORCH_DTYPES.items()}
CUPY_DTYPES = {"float32": "float32", "float64": "float64", "float16": "float16"}


E0 = -2  # the term index of e_0, the unit vector of element 0 (XS_E0 in rowwise.cuh)


@dataclass(frozen=True, eq=False)
class RowOp:
    """One row-wise op. ``terms``: (a, b) for v_a - v_b, b = -1 for v_a alone,
    (E0, -1) for e_0, and a third entry True to zero element 0 (the space part
    of a Lorentz vector); ``dots``: pairs of term indices; ``out``: the terms of
    a vector output. ``in_shift`` / ``out_shift``: the inputs / the output hold
    the logical row from that element on (see rowwise.cuh)."""

    family: str
    name: str
    struct: str
    vectors: tuple[str, ...]
    terms: tuple[tuple[int, int], ...]
    dots: tuple[tuple[int, int], ...]
    out: tuple[int, ...]
    coeffs: Callable
    scalar_out: bool = False
    param: str | None = None  # name of the per-row scalar passed as t ("t", "r")
    uses_eps: bool = False
    in_shift: int = 0
    out_shift: int = 0
    min_features: int = 1  # 2 for hyperboloid points: the time coordinate and a space one

    @property
    def qualname(self) -> str:
        return f"{self.family}_{self.name}"

    @property
    def kernels(self) -> OpKernels:
        return REGISTRY.get(self.qualname)

    @functools.cached_property
    def labels(self) -> dict[str, str]:
        """Profiler names of the forward and backward launches."""
        return {d: f"{self.qualname}.{d}" for d in ("fwd", "bwd")}

    @property
    def shifted(self) -> bool:
        return bool(self.in_shift or self.out_shift)

    def width(self, d: int) -> int:
        """Length of the logical row for inputs of ``d`` features."""
        return d + self.in_shift

    def out_width(self, d: int) -> int:
        """Features of the output for inputs of ``d`` features."""
        return d + self.in_shift - self.out_shift

    def register(self) -> RowOp:
        variants = SCALAR_ROW_VARIANTS if self.shifted else ROWWISE_VARIANTS
        REGISTRY.register(OpKernels(self.qualname, f"{self.family}.cu", self.struct, variants))
        return self


# ----------------------------------------------------------------- validation
def _check_scalar(value, name: str, what: str, positive: bool):
    err = InvalidCurvatureError if positive else InvalidArgumentError
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise err(f"{name} must be a {what}, a 0-d tensor or a tensor, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or (positive and v <= 0):
        raise err(f"{name} must be a finite{' positive' if positive else ''} number, got {value!r}")
    return v


def _check_scalar_tensor(s, name: str, like, positive: bool):
    err = InvalidCurvatureError if positive else InvalidArgumentError
    if not s.dtype.is_floating_point:
        raise err(f"{name} must have a floating dtype, got {s.dtype}")
    if s.dim() > 0 and s.shape[-1] != 1:
        raise ShapeMismatchError(
            f"{name} must hold one value per row: size 1 in the last dim (e.g. shape (N, 1) for "
            f"inputs of shape (N, D)), got shape {tuple(s.shape)}"
        )
    if s.device != like.device:
        if s.dim() == 0 and s.device.type == "cpu":
            s = s.to(like.device)
        else:
            raise InvalidArgumentError(f"{name} is on {s.device} but the inputs are on {like.device}")
    if config.check_tensor_values and not _in_trace(s):
        bad = ~torch.isfinite(s) if not positive else ~(torch.isfinite(s) & (s > 0))
        if bool(bad.any()):
            raise err(f"{name} must be finite{' and positive' if positive else ''} everywhere")
    return s


def _too_short(op: RowOp, shape):
    raise ShapeMismatchError(
        f"{op.vectors[0]} is a Lorentz vector (time coordinate first): it needs at least one space "
        f"coordinate too ({max(op.min_features, op.out_shift + 1)} or more features), got shape {tuple(shape)}"
    )


def _in_trace(s) -> bool:
    if torch.compiler.is_compiling():
        return True
    return s.is_cuda and torch.cuda.is_current_stream_capturing()


def validate_torch(op: RowOp, vecs: tuple, c, t):
    """Checks a call on torch tensors; returns (vecs, c, c_val, t, t_val, dtype name, batch)."""
    names = op.vectors
    x = vecs[0]
    if not isinstance(x, torch.Tensor):
        raise InvalidArgumentError(
            f"{names[0]} must be a torch.Tensor or a cupy.ndarray, got {type(x).__name__}"
        )
    dtype = TORCH_DTYPES.get(x.dtype)
    if dtype is None:
        raise InvalidArgumentError(f"{names[0]} must be float16, bfloat16, float32 or float64, got {x.dtype}")
    xdt, xdev, xshape = x.dtype, x.device, x.shape
    if not xshape:
        raise ShapeMismatchError(f"{names[0]} must have at least one dim (features last), got a 0-d tensor")
    d = xshape[-1]
    if d == 0:
        raise ShapeMismatchError(f"{names[0]} has an empty feature dim (shape {tuple(xshape)})")
    if d < op.min_features or d <= op.out_shift:
        _too_short(op, xshape)
    same = True
    for name, v in zip(names[1:], vecs[1:]):
        if not isinstance(v, torch.Tensor):
            raise InvalidArgumentError(
                f"{name} must be a torch.Tensor like {names[0]}, got {type(v).__name__}"
            )
        if v.dtype != xdt:
            raise InvalidArgumentError(
                f"{name} has dtype {v.dtype} but {names[0]} has {xdt}; cast one of them"
            )
        if v.device != xdev:
            raise InvalidArgumentError(f"{name} is on {v.device} but {names[0]} is on {xdev}")
        vshape = v.shape
        if not vshape:
            raise ShapeMismatchError(f"{name} must have at least one dim (features last), got a 0-d tensor")
        if vshape[-1] != d:
            raise ShapeMismatchError(
                f"{name} has {vshape[-1]} features but {names[0]} has {d} "
                f"(shapes {tuple(vshape)} and {tuple(xshape)})"
            )
        same = same and vshape == xshape
    c_val = 1.0
    if isinstance(c, torch.Tensor):
        c = _check_scalar_tensor(c, "c", x, positive=True)
        same = same and c.dim() == 0
    else:
        c_val, c = _check_scalar(c, "c", "positive number", positive=True), None
    t_val = 0.0
    if op.param is not None:
        if isinstance(t, torch.Tensor):
            t = _check_scalar_tensor(t, op.param, x, positive=False)
            same = same and t.dim() == 0
        else:
            t_val, t = _check_scalar(t, op.param, "number", positive=False), None
    batch = tuple(xshape[:-1]) if same else batch_shape(vecs, c, t)
    return vecs, c, c_val, t, t_val, dtype, batch


def batch_shape(vecs, c=None, t=None) -> tuple:
    """The broadcast batch shape of the vectors (all dims but the last) and of
    the per-row scalars c and t (their dims but the last)."""
    shapes = [tuple(v.shape[:-1]) for v in vecs]
    for s in (c, t):
        if s is not None and s.dim() > 0:
            shapes.append(tuple(s.shape[:-1]))
    return broadcast(shapes)


def broadcast(shapes) -> tuple:
    """torch/NumPy broadcasting of shape tuples (torch.broadcast_shapes costs
    about 25 us a call, several times a whole kernel launch)."""
    first = shapes[0]
    if all(s == first for s in shapes):
        return first
    out = []
    for i in range(1, max(len(s) for s in shapes) + 1):
        size = 1
        for s in shapes:
            n = s[-i] if i <= len(s) else 1
            if n != 1:
                if size not in (1, n):
                    raise ShapeMismatchError(
                        "batch dims do not broadcast: " + ", ".join(str(tuple(s)) for s in shapes)
                    )
                size = n
        out.append(size)
    return tuple(reversed(out))


# ------------------------------------------------------------- the entry point
def _needs_grad(vecs, c, t) -> bool:
    if not torch.is_grad_enabled():
        return False
    for v in vecs:
        if v.requires_grad:
            return True
    return (c is not None and c.requires_grad) or (t is not None and t.requires_grad)


def call(op: RowOp, vecs: tuple, c, t=None, eps: float = 0.0):
    """Runs ``op`` on torch tensors or CuPy arrays: checks the inputs, then takes
    the direct kernel launch (CUDA, no autograd, not tracing) or the torch
    custom op (autograd, torch.compile, CPU)."""
    if is_cupy_array(vecs[0]):
        return call_cupy(op, vecs, c, t, eps)
    if torch is None:
        require_torch(f"xpu_stone.{op.family}.{op.name} on non-CuPy inputs")
    vecs, c, c_val, t, t_val, dtype, batch = validate_torch(op, vecs, c, t)
    if vecs[0].is_cuda and not _needs_grad(vecs, c, t) and not torch.compiler.is_compiling():
        return launch_forward(op, vecs, c, c_val, t, t_val, eps, dtype, batch)
    from .torch_ops import OPS

    return OPS[op.qualname](*vecs, c, c_val, t, t_val, eps)


def keepdim(out, keep: bool):
    """A scalar op's output with the feature dim kept (size 1) or dropped."""
    return out[..., None] if keep else out


def dtype_name(x) -> str:
    """ "float32", ... for a torch tensor or CuPy array (float32 for anything else)."""
    if is_cupy_array(x):
        return str(x.dtype)
    return TORCH_DTYPES.get(getattr(x, "dtype", None), "float32")


# ------------------------------------------------------------ flattening rows
def _collapse(sizes, strides):
    """One stride that walks all batch dims in order, or None if there is none."""
    row_stride = expected = None
    for size, stride in zip(reversed(sizes), reversed(strides)):
        if size == 1:
            continue
        if row_stride is None:
            row_stride = stride
        elif stride != expected:
            return None
        expected = stride * size
    return 0 if row_stride is None else row_stride


def _torch_rows(v, batch, d):
    """(tensor kept alive, row stride, element stride) of v as rows x d."""
    if v.is_contiguous() and v.shape[:-1] == batch:
        return v, d, 1
    ve = v.expand(*batch, v.shape[-1])
    rs = _collapse(ve.shape[:-1], ve.stride()[:-1])
    if rs is None:
        ve = ve.contiguous()
        rs = d
    return ve, rs, (ve.stride(-1) if d > 1 else 1)


def _cupy_rows(v, batch, d):
    if v.shape[:-1] == batch and v.flags.c_contiguous:
        return v, d, 1
    ve = cupy.broadcast_to(v, (*batch, v.shape[-1]))
    item = ve.itemsize
    rs = _collapse(ve.shape[:-1], [s // item for s in ve.strides[:-1]])
    if rs is None:
        ve = cupy.ascontiguousarray(ve)
        rs = d
    return ve, rs, (ve.strides[-1] // item if d > 1 else 1)


def _aligned(ptrs_strides, d: int, dtype: str) -> bool:
    vec = VEC_WIDTH[dtype]
    if d % vec:
        return False
    for ptr, rs, es in ptrs_strides:
        if ptr % 16 or rs % vec or (es != 1 and d > 1):
            return False
    return True


def _grid(choice, rows: int) -> int:
    rpb = choice.config.rows_per_block()
    return -(-rows // rpb)


def _prepare(vecs, c, c_val, t, t_val, dtype: str, batch, rows_of, ptr_of, scalar_rows):
    """Rows view of every operand: (d, rows, kept arrays, leading xs_row_args fields, aligned)."""
    d = vecs[0].shape[-1]
    rows = math.prod(batch)
    vec = VEC_WIDTH[dtype]
    aligned = d % vec == 0
    keep, ptrs, rss, ess = [], [0, 0, 0], [0, 0, 0], [0, 0, 0]
    for j, v in enumerate(vecs):
        ve, rs, es = rows_of(v, batch, d)
        keep.append(ve)
        p = ptrs[j] = ptr_of(ve)
        rss[j], ess[j] = rs, es
        if aligned and (p % 16 or rs % vec or (es != 1 and d > 1)):
            aligned = False
    fields = [rows, d, *ptrs, *rss, *ess]
    for s, val in ((c, c_val), (t, t_val)):
        if s is None:
            fields += (0, 0, val)
        else:
            se, rs = scalar_rows(s, batch, dtype)
            keep.append(se)
            fields += (ptr_of(se), rs, 0.0)
    return d, rows, keep, fields, aligned


# ------------------------------------------------------------------ torch GPU
def _param_dtype(dtype: str):
    return torch.float64 if dtype == "float64" else torch.float32


def _torch_scalar_rows(s, batch, dtype):
    s = s.to(_param_dtype(dtype))
    if s.dim() == 0:
        return s, 0
    se = s.expand(*batch, 1)
    rs = _collapse(se.shape[:-1], se.stride()[:-1])
    if rs is None:
        se, rs = se.contiguous(), 1
    return se, rs


def _prepare_contiguous(vecs, c_val, t_val, dtype: str, batch):
    """_prepare for the commonest call: vectors contiguous and of one shape,
    c and t plain numbers. None when the call is not of that kind."""
    x = vecs[0]
    d = x.shape[-1]
    vec = VEC_WIDTH[dtype]
    aligned = d % vec == 0
    ptrs = [0, 0, 0]
    for j, v in enumerate(vecs):
        if not v.is_contiguous() or v.shape != x.shape:
            return None
        p = ptrs[j] = v.data_ptr()
        aligned = aligned and p % 16 == 0
    nv = len(vecs)
    rs = [d] * nv + [0] * (3 - nv)
    es = [1] * nv + [0] * (3 - nv)
    rows = math.prod(batch)
    return d, rows, vecs, [rows, d, *ptrs, *rs, *es, 0, 0, c_val, 0, 0, t_val], aligned


def launch_forward(op: RowOp, vecs, c, c_val, t, t_val, eps, dtype, batch):
    """Runs the forward kernel on torch CUDA tensors; returns a new tensor."""
    x = vecs[0]
    prepared = (
        None if (c is not None or t is not None) else _prepare_contiguous(vecs, c_val, t_val, dtype, batch)
    )
    d, rows, keep, fields, aligned = prepared or _prepare(
        vecs, c, c_val, t, t_val, dtype, batch, _torch_rows, _torch_ptr, _torch_scalar_rows
    )
    out = torch.empty(batch if op.scalar_out else (*batch, op.out_width(d)), dtype=x.dtype, device=x.device)
    if config.poison_outputs:
        out.fill_(float("nan"))
    if rows == 0:
        return out
    dev = x.device.index
    if op.shifted:
        d = fields[1] = op.width(d)
        aligned = False
    fn, choice = _kernel(op, "fwd", dtype, d, aligned, dev)
    fields += (float(eps), out.data_ptr(), 0, 0, 0, 0, 0, 0, 0, 0)
    _launch(op, "fwd", fn, choice, rows, d, dtype, fields, _torch_stream(dev), dev)
    return out


def launch_backward(op: RowOp, grad, vecs, c, c_val, t, t_val, eps, dtype, batch, needs):
    """Runs the backward kernel; returns per-row gradients (None where not needed):
    one rows-shaped tensor per vector, then c and t as (*batch, 1) tensors."""
    x = vecs[0]
    d, rows, keep, fields, aligned = _prepare(
        vecs, c, c_val, t, t_val, dtype, batch, _torch_rows, _torch_ptr, _torch_scalar_rows
    )
    if op.scalar_out:
        ge = grad.expand(batch)
        g_rs = _collapse(ge.shape, ge.stride())
        if g_rs is None:
            ge, g_rs = ge.contiguous(), 1
        g_es = 0
    else:
        ge, g_rs, g_es = _torch_rows(grad, batch, op.out_width(d))
        aligned = aligned and _aligned([(ge.data_ptr(), g_rs, g_es)], d, dtype)
    nv = len(vecs)
    outs = [torch.empty((*batch, d), dtype=x.dtype, device=x.device) if needs[j] else None for j in range(nv)]
    pd = _param_dtype(dtype)
    for s, need in ((c, needs[nv]), (t, needs[nv + 1])):
        outs.append(torch.empty((*batch, 1), dtype=pd, device=x.device) if (need and s is not None) else None)
    if config.poison_outputs:
        for o in outs:
            if o is not None:
                o.fill_(float("nan"))
    if rows == 0:
        return outs
    dev = x.device.index
    if op.shifted:
        d = fields[1] = op.width(d)
        aligned = False
    fn, choice = _kernel(op, "bwd", dtype, d, aligned, dev)
    gv = [o.data_ptr() if o is not None else 0 for o in outs[:nv]] + [0] * (3 - nv)
    gct = [o.data_ptr() if o is not None else 0 for o in outs[nv:]]
    fields += (float(eps), 0, ge.data_ptr(), g_rs, g_es, *gv, *gct)
    _launch(op, "bwd", fn, choice, rows, d, dtype, fields, _torch_stream(dev), dev)
    return outs


def _torch_ptr(v) -> int:
    return v.data_ptr()


def _cupy_ptr(v) -> int:
    return v.data.ptr


def _torch_stream(dev: int) -> int:
    return torch._C._cuda_getCurrentRawStream(dev)


def _launch(
    op: RowOp, direction: str, fn, choice, rows: int, d: int, dtype: str, fields, stream: int, dev: int
):
    grid, block = _grid(choice, rows), choice.config.block
    if _PROFILES:
        profiler.record_launch(
            op.labels[direction],
            choice.variant,
            (rows, d),
            dtype,
            dev,
            stream,
            launch_row,
            fn,
            grid,
            block,
            fields,
            stream,
            dev,
        )
    else:
        launch_row(fn, grid, block, fields, stream, dev)


_kernel_cache: dict[tuple, tuple] = {}


def _kernel(op: RowOp, direction: str, dtype: str, d: int, aligned: bool, dev: int):
    """(loaded function, dispatcher choice) for this call; cached per shape class and policy."""
    key = (op.qualname, direction, dtype, d, aligned, dev, policies.policy_token(), dispatcher.generation())
    hit = _kernel_cache.get(key)
    if hit is None:
        choice = dispatcher.select(op.qualname, dtype, d, aligned, dev)
        k = op.kernels
        name = k.kernel_name(direction, dtype, ACCUM_DTYPE[dtype], choice.config)
        hit = _kernel_cache[key] = (get_function(k.source, name, dev, k.defines(dtype)), choice)
    return hit


# ---------------------------------------------------------------------- CuPy
def call_cupy(op: RowOp, vecs, c, t, eps):
    """Forward on CuPy arrays (no torch needed); launches on CuPy's current stream."""
    x = vecs[0]
    for name, v in zip(op.vectors, vecs):
        if not is_cupy_array(v):
            raise InvalidArgumentError(
                f"{name} must be a cupy.ndarray like {op.vectors[0]}, got {type(v).__name__}"
            )
        if v.dtype != x.dtype:
            raise InvalidArgumentError(f"{name} has dtype {v.dtype} but {op.vectors[0]} has {x.dtype}")
        if v.device.id != x.device.id:
            raise InvalidArgumentError(
                f"{name} is on GPU {v.device.id} but {op.vectors[0]} is on GPU {x.device.id}"
            )
        if v.ndim == 0 or v.shape[-1] != x.shape[-1]:
            raise ShapeMismatchError(f"{name} has shape {v.shape}, {op.vectors[0]} has shape {x.shape}")
    dtype = CUPY_DTYPES.get(str(x.dtype))
    if dtype is None:
        raise InvalidArgumentError(f"{op.vectors[0]} must be float16, float32 or float64, got {x.dtype}")
    if x.shape[-1] == 0:
        raise ShapeMismatchError(f"{op.vectors[0]} has an empty feature dim (shape {x.shape})")
    if x.shape[-1] < op.min_features or x.shape[-1] <= op.out_shift:
        _too_short(op, x.shape)
    pd = "float64" if dtype == "float64" else "float32"
    scal = []
    for s, name, positive in ((c, "c", True), (t, op.param, False)):
        if name is None:
            scal.append((None, 0.0))
        elif is_cupy_array(s):
            if s.ndim > 0 and s.shape[-1] != 1:
                raise ShapeMismatchError(f"{name} must have size 1 in the last dim, got shape {s.shape}")
            if s.device.id != x.device.id:
                raise InvalidArgumentError(
                    f"{name} is on GPU {s.device.id} but the inputs are on GPU {x.device.id}"
                )
            if config.check_tensor_values:
                ok = cupy.isfinite(s) & (s > 0) if positive else cupy.isfinite(s)
                if not bool(ok.all()):
                    err = InvalidCurvatureError if positive else InvalidArgumentError
                    raise err(f"{name} must be finite{' and positive' if positive else ''} everywhere")
            scal.append((s.astype(pd, copy=False), 0.0))
        else:
            what = "positive number" if positive else "number"
            scal.append((None, _check_scalar(s, name, what, positive)))
    (cs, c_val), (ts, t_val) = scal
    shapes = [v.shape[:-1] for v in vecs] + [s.shape[:-1] for s in (cs, ts) if s is not None and s.ndim > 0]
    batch = broadcast([tuple(s) for s in shapes])

    def scalar_rows(s, b, _dtype):
        if s.ndim == 0:
            return s, 0
        se = cupy.broadcast_to(s, (*b, 1))
        rs = _collapse(se.shape[:-1], [st // se.itemsize for st in se.strides[:-1]])
        if rs is None:
            se, rs = cupy.ascontiguousarray(se), 1
        return se, rs

    d, rows, keep, fields, aligned = _prepare(
        vecs, cs, c_val, ts, t_val, dtype, batch, _cupy_rows, _cupy_ptr, scalar_rows
    )
    with x.device:
        out = cupy.empty(batch if op.scalar_out else (*batch, op.out_width(d)), dtype=x.dtype)
        if config.poison_outputs:
            out.fill(float("nan"))
        if rows:
            dev = x.device.id
            if op.shifted:
                d = fields[1] = op.width(d)
                aligned = False
            fn, choice = _kernel(op, "fwd", dtype, d, aligned, dev)
            fields += (float(eps), out.data.ptr, 0, 0, 0, 0, 0, 0, 0, 0)
            stream = cupy.cuda.get_current_stream().ptr
            _launch(op, "fwd", fn, choice, rows, d, dtype, fields, stream, dev)
    return out


# ----------------------------------------------------- CPU transcription (torch)
def clamp_min(x, lo):
    return torch.clamp_min(x, lo)


def _limit_key(x) -> str:
    return "float64" if x.dtype == torch.float64 else "float32"


def norm_from_sq(sq):
    """sqrt of a squared norm, zero norms counted as sqrt(MIN_SQNORM)."""
    return torch.sqrt(torch.clamp_min(sq, MIN_SQNORM[_limit_key(sq)]))


def tanh_c(x):
    return torch.tanh(torch.clamp(x, -TANH_MAX, TANH_MAX))


def artanh_c(x):
    hi = ARTANH_MAX[_limit_key(x)]
    return torch.atanh(torch.clamp(x, -hi, hi))


def sinh_c(x):
    hi = COSH_MAX[_limit_key(x)]
    return torch.sinh(torch.clamp(x, -hi, hi))


def cosh_c(x):
    hi = COSH_MAX[_limit_key(x)]
    return torch.cosh(torch.clamp(x, -hi, hi))


def _store(x, dtype: torch.dtype):
    """Rounds to the storage dtype; fp16 saturates at +-65504 as the kernels do."""
    if dtype == torch.float16:
        x = x.clamp(-65504.0, 65504.0)
    return x.to(dtype)


def _accum_dtype(dtype: torch.dtype):
    """fp64 for fp32/fp64 rows, fp32 for fp16/bf16 (ACCUM_DTYPE); all row maths uses it."""
    return TORCH_OF[ACCUM_DTYPE[TORCH_DTYPES[dtype]]]


def _as_rows_scalar(s, val, like, dt):
    return torch.full((), val, dtype=dt, device=like.device) if s is None else s.to(dt)


def _space_mask(n: int, like):
    """(0, 1, 1, ...): multiplies a row into its space part (element 0 zeroed)."""
    m = torch.ones(n, dtype=like.dtype, device=like.device)
    m[0] = 0
    return m


def _terms(op: RowOp, vecs, dt):
    """The op's terms as logical rows (inputs shifted right by ``in_shift``)."""
    vs = [v.to(dt) for v in vecs]
    if op.in_shift:
        vs = [torch.nn.functional.pad(v, (op.in_shift, 0)) for v in vs]
    n = vs[0].shape[-1]
    out = []
    for a, b, *spatial in op.terms:
        if a == E0:
            t = torch.zeros(n, dtype=dt, device=vs[0].device)
            t[0] = 1
        else:
            t = vs[a] - vs[b] if b >= 0 else vs[a]
        out.append(t * _space_mask(n, t) if spatial and spatial[0] else t)
    return out


def cpu_forward(op: RowOp, vecs, c, c_val, t, t_val, eps):
    """The kernel's maths in torch (any device): terms, dots, coeffs, output."""
    accum = _accum_dtype(vecs[0].dtype)
    ts = _terms(op, vecs, accum)
    dots = [(ts[p] * ts[q]).sum(-1, keepdim=True) for p, q in op.dots]
    cs, tt = _as_rows_scalar(c, c_val, vecs[0], accum), _as_rows_scalar(t, t_val, vecs[0], accum)
    coef = op.coeffs(dots, cs, tt, eps)
    if op.scalar_out:
        return _store(coef[0].squeeze(-1), vecs[0].dtype)
    out = sum(coef[k] * ts[op.out[k]] for k in range(len(op.out)))
    return _store(out[..., op.out_shift :], vecs[0].dtype)


def cpu_backward(op: RowOp, grad, vecs, c, c_val, t, t_val, eps, needs):
    """The backward kernel's assembly in torch; same outputs as launch_backward."""
    accum = _accum_dtype(vecs[0].dtype)
    batch = batch_shape(vecs, c, t)
    d = vecs[0].shape[-1]
    ts = _terms(op, vecs, accum)

    def leaf(v):  # one independent value per row, so adjoints stay per row
        return v.expand(*batch, 1).detach().contiguous().requires_grad_()

    if op.out_shift and not op.scalar_out:
        grad = torch.nn.functional.pad(grad, (op.out_shift, 0))
    with torch.enable_grad():
        dots = [leaf((ts[p] * ts[q]).sum(-1, keepdim=True)) for p, q in op.dots]
        cs = leaf(_as_rows_scalar(c, c_val, vecs[0], accum))
        tt = leaf(_as_rows_scalar(t, t_val, vecs[0], accum))
        coef = op.coeffs(dots, cs, tt, eps)
        if op.scalar_out:
            weights = [grad.to(accum).unsqueeze(-1)]
        else:
            weights = [(grad.to(accum) * ts[k]).sum(-1, keepdim=True) for k in op.out]
        pairs = [(cf.expand(w.shape), w) for cf, w in zip(coef, weights) if cf.requires_grad]
        sbar = torch.autograd.grad(
            [p[0] for p in pairs], [*dots, cs, tt], [p[1] for p in pairs], allow_unused=True
        )
    sbar = [torch.zeros((), dtype=accum) if s is None else s for s in sbar]
    gterm = [0] * len(op.terms)
    if not op.scalar_out:
        for k, term in enumerate(op.out):
            gterm[term] = gterm[term] + coef[k].detach() * grad.to(accum)
    for (p, q), s in zip(op.dots, sbar[: len(op.dots)]):
        if p == q:
            gterm[p] = gterm[p] + 2 * s * ts[p]
        else:
            gterm[p] = gterm[p] + s * ts[q]
            gterm[q] = gterm[q] + s * ts[p]
    grads = [0] * len(vecs)
    for (a, b, *spatial), g in zip(op.terms, gterm):
        if a == E0:
            continue  # a constant
        if spatial and spatial[0]:
            g = g * _space_mask(ts[0].shape[-1], ts[0])
        grads[a] = grads[a] + g
        if b >= 0:
            grads[b] = grads[b] - g
    nv = len(vecs)
    out = []
    for j in range(nv):
        if not needs[j]:
            out.append(None)
            continue
        gj = grads[j] if isinstance(grads[j], torch.Tensor) else torch.zeros((), dtype=accum)
        gj = gj.expand(*batch, op.width(d))[..., op.in_shift :]
        out.append(_store(gj, vecs[0].dtype).contiguous())
    pd = _param_dtype(TORCH_DTYPES[vecs[0].dtype])
    for s, sb, need in ((c, sbar[-2], needs[nv]), (t, sbar[-1], needs[nv + 1])):
        out.append(sb.expand(*batch, 1).to(pd).contiguous() if (need and s is not None) else None)
    return out
