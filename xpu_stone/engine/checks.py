r"""Checks of a row-wise call's operands, torch or CuPy, before anything runs:
types, dtypes, devices, feature dims, broadcastable batch dims, and the scalars
(by :mod:`xpu_stone.engine.scalars`). Inputs are never modified.

Bad rows
--------
Every op declares which of its inputs are *points* of its model
(:data:`POINT_INPUTS`, mirroring ``XS_POINTS`` of the structs in ``cuda_src/*.cu``);
the others are tangent vectors or vectors to project. An input row is **bad** when

* it holds a NaN or an inf (any input, any element; an fp64 row whose squared
  norm overflows may count as such); or
* it is a point input outside its domain by more than rounding. With :math:`u` the
  unit roundoff of the storage dtype (:data:`UNIT_ROUNDOFF`: :math:`2^{-53}, 2^{-24},
  2^{-11}, 2^{-8}` for fp64, fp32, fp16, bf16), :math:`u_S = 2^{-53}` that of the
  fp64 arithmetic and :math:`D` the row length, ``tol`` = :func:`domain_tol`:

  - Poincaré ball and Klein disk: a point iff :math:`c\|x\|^2 \le 1 + 4u + (D+2)u_S`;
  - hyperboloid: a point iff :math:`x_0 > 0` and
    :math:`|c\langle x,x\rangle_L + 1| \le (2^{-6} + 4u + (D+2)u_S)(1 + c\|x\|^2)`.

  So the ball admits :math:`c\|x\|^2 \le 1 + 2.4\cdot10^{-7}` in fp32,
  :math:`1 + 2.0\cdot10^{-3}` in fp16, :math:`1 + 1.6\cdot10^{-2}` in bf16 and
  :math:`1 + (D + 6)\,1.1\cdot10^{-16}` in fp64: what rounding a point of the ball to
  the dtype can do. Points within the tolerance keep the formulas' clamps
  (:math:`1-c\|x\|^2` counted as at least ``MIN_DENOM``, artanh's argument as at most
  ``ARTANH_MAX``). The hyperboloid's margin is a fixed fraction,
  :data:`HYPERBOLOID_MARGIN` (1/64): its formulas work from differences and have no
  singularity near it, while points drift off it by far more than rounding (a few
  fp32 ops, finite-difference gradient checks, a step of a learnable ``c``); what it
  rejects is vectors that are no hyperboloid points at all (ball points, the lower
  sheet :math:`x_0 < 0`, zero vectors).

A bad row gives NaN in every output that depends on it: the whole output row of a
row-wise op (or its scalar) and, backward, every gradient of that row (inputs, a
per-row ``c`` and ``t``); in :func:`xpu_stone.pairwise.cdist`, every distance to it.
Projections (``poincare.project``, ``lorentz.project``) take any finite vector.
The kernels (``cuda_src/common/domain.cuh``, ``rowwise.cuh``) and the CPU
transcription (:mod:`xpu_stone.engine.rowwise_cpu`) apply the same rule;
:func:`check_values` (the checked mode, ``xpu_stone.config.check_finite``) raises
a typed error for such rows instead.
"""

from __future__ import annotations

import numpy

from .. import config
from .._deps import cupy, is_cupy_array, torch
from ..errors import DomainError, InvalidArgumentError, NonFiniteError, ShapeMismatchError
from .launch import CUPY_DTYPES, TORCH_DTYPES
from .rowop import RowOp
from .scalars import check_scalar, tracing

__all__ = [
    "BALL",
    "HYPERBOLOID",
    "HYPERBOLOID_MARGIN",
    "POINT_INPUTS",
    "UNIT_ROUNDOFF",
    "batch_shape",
    "broadcast",
    "check_row_op_values",
    "check_values",
    "domain_tol",
    "not_points",
    "validate_cupy",
    "validate_torch",
]


def _too_short(op: RowOp, shape):
    raise ShapeMismatchError(
        f"{op.vectors[0]} is a Lorentz vector (time coordinate first): it needs at least one space "
        f"coordinate too ({max(op.min_features, op.out_shift + 1)} or more features), got shape {tuple(shape)}"
    )


def _check_features(op: RowOp, shape) -> None:
    if not shape:
        raise ShapeMismatchError(
            f"{op.vectors[0]} must have at least one dim (features last), got a 0-d tensor"
        )
    d = shape[-1]
    if d == 0:
        raise ShapeMismatchError(f"{op.vectors[0]} has an empty feature dim (shape {tuple(shape)})")
    if d < op.min_features or d <= op.out_shift:
        _too_short(op, shape)


def _check_scalars(op: RowOp, c, t, like):
    """((c tensor, c value), (t tensor, t value)); a tensor's value slot is unused."""
    cs = check_scalar(c, "c", like, positive=True)
    ts = (None, 0.0) if op.param is None else check_scalar(t, op.param, like, positive=False)
    return cs, ts


def validate_torch(op: RowOp, vecs: tuple, c, t):
    """Checks a call on torch tensors; returns (c, c_val, t, t_val, dtype name, batch)."""
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
    _check_features(op, xshape)
    d = xshape[-1]
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
    (c, c_val), (t, t_val) = _check_scalars(op, c, t, x)
    same = same and (c is None or c.dim() == 0) and (t is None or t.dim() == 0)
    batch = tuple(xshape[:-1]) if same else batch_shape(vecs, c, t)
    return c, c_val, t, t_val, dtype, batch


def validate_cupy(op: RowOp, vecs: tuple, c, t):
    """Checks a call on CuPy arrays; returns (c, c_val, t, t_val, dtype name, batch)."""
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
    _check_features(op, x.shape)
    (c, c_val), (t, t_val) = _check_scalars(op, c, t, x)
    return c, c_val, t, t_val, dtype, batch_shape(vecs, c, t)


def batch_shape(vecs, c=None, t=None) -> tuple:
    """The broadcast batch shape of the vectors (all dims but the last) and of
    the per-row scalars c and t (their dims but the last)."""
    shapes = [tuple(v.shape[:-1]) for v in vecs]
    for s in (c, t):
        if s is not None and s.ndim > 0:
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


# ------------------------------------------------------------------ bad rows
BALL, HYPERBOLOID = "ball", "hyperboloid"

_B01, _H01 = (BALL, (0, 1)), (HYPERBOLOID, (0, 1))
_B0, _H0 = (BALL, (0,)), (HYPERBOLOID, (0,))
# qualname -> (domain, indices of the inputs that are points of it); ops not listed
# take no point (tangent vectors, vectors to project). Mirrors XS_POINTS of the
# structs in cuda_src/*.cu (tests/test_nonfinite.py compares them).
POINT_INPUTS: dict[str, tuple[str, tuple[int, ...]]] = {
    "poincare_mobius_add": _B01,
    "poincare_mobius_sub": _B01,
    "poincare_mobius_scalar_mul": _B0,
    "poincare_logmap0": _B0,
    "poincare_expmap": _B0,
    "poincare_logmap": _B01,
    "poincare_dist": _B01,
    "poincare_dist0": _B0,
    "poincare_lambda_x": _B0,
    "poincare_gyration": _B01,
    "poincare_transp": _B01,
    "poincare_geodesic": _B01,
    "lorentz_dist": _H01,
    "lorentz_dist0": _H0,
    "lorentz_logmap0": _H0,
    "lorentz_expmap": _H0,
    "lorentz_logmap": _H01,
    "lorentz_proj_tan": _H0,
    "lorentz_transp": _H01,
    "lorentz_geodesic": _H01,
    "klein_dist": _B01,
    "klein_geodesic": _B01,
    "klein_lorentz_factor": _B0,
    "convert_poincare_to_klein": _B0,
    "convert_klein_to_poincare": _B0,
    "convert_poincare_to_lorentz": _B0,
    "convert_lorentz_to_poincare": _H0,
    "convert_lorentz_to_klein": _H0,
    "convert_klein_to_lorentz": _B0,
}

UNIT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}
HYPERBOLOID_MARGIN = 2.0**-6  # relative distance to the hyperboloid still counted as on it

_DOMAIN_TEXT = {
    BALL: "a point of the ball c|x|^2 < 1 (or the Klein disk)",
    HYPERBOLOID: "a point of the hyperboloid <x,x>_L = -1/c, x_0 > 0",
}


def domain_tol(domain: str, dtype: str, d: int, accum: str = "float64") -> float:
    """The tolerance of points stored in ``dtype``, rows of ``d`` elements reduced in
    ``accum``: ``4u + (d + 2) u_S`` for the ball, plus :data:`HYPERBOLOID_MARGIN`
    for the hyperboloid (``xs_domain_tol`` of domain.cuh)."""
    base = 4 * UNIT_ROUNDOFF[dtype] + (HYPERBOLOID_MARGIN if domain == HYPERBOLOID else 0.0)
    return base + (d + 2) * UNIT_ROUNDOFF[accum]


def not_points(domain: str, v, c, tol: float):
    """``(..., 1)`` booleans: rows of ``v`` (torch tensor or CuPy array, in the
    arithmetic dtype) that are not points of ``domain`` for curvature ``c`` (a number
    or an array broadcasting against ``v[..., :1]``): beyond ``tol`` outside, or
    holding a NaN or inf (``xs_in_ball`` / ``xs_on_hyperboloid`` of domain.cuh)."""
    if domain == BALL:
        return ~(c * (v * v).sum(axis=-1, keepdims=True) <= 1 + tol)
    x0 = v[..., :1]
    sq = (v[..., 1:] * v[..., 1:]).sum(axis=-1, keepdims=True)
    t = x0 * x0
    m = c * (sq - t) + 1  # c<x,x>_L + 1
    lim = tol * (1 + c * (sq + t))
    return ~((x0 > 0) & (m <= lim) & (-m <= lim) & (lim - lim == 0))


def _dtype_name(v) -> str:
    return str(v.dtype) if is_cupy_array(v) else TORCH_DTYPES[v.dtype]


def _first_row(mask) -> tuple[int, ...]:
    """The index (over the leading dims) of the first True row of a ``(..., 1)`` mask."""
    flat = int((mask.reshape(-1) * 1).argmax())
    shape = tuple(mask.shape[:-1])
    return tuple(int(i) for i in numpy.unravel_index(flat, shape)) if shape else ()


def check_values(op: str, args, c=1.0) -> None:
    """The checked mode (``config.check_finite``; skipped while ``torch.compile``
    traces or a CUDA graph captures): raises :class:`~xpu_stone.errors.NonFiniteError`
    for the first input with a NaN or inf, else :class:`~xpu_stone.errors.DomainError`
    for the first point input outside its domain beyond rounding (see the module
    docstring), naming ``op``, the argument and its first bad row. ``args``: ``(name,
    array, domain or None)`` with arrays ``(..., D)`` (torch or CuPy, one kind), rows
    on the last dim; ``c`` a number or an array broadcasting against ``(..., 1)``.
    One pass over the inputs and one synchronisation."""
    if not config.check_finite or not args or tracing(args[0][1]):
        return
    cupy_input = is_cupy_array(args[0][1])
    xp = cupy if cupy_input else torch
    wide = [v.astype(xp.float64) if cupy_input else v.detach().to(torch.float64) for _, v, _ in args]
    if not cupy_input and isinstance(c, torch.Tensor):
        c = c.detach()
    # (name, domain or None for the finiteness, tolerance, rows that fail): finiteness first
    masks = [(n, None, 0.0, ~xp.isfinite(v).all(axis=-1, keepdims=True)) for (n, _, _), v in zip(args, wide)]
    for (name, v, domain), vd in zip(args, wide):
        if domain is not None:
            tol = domain_tol(domain, _dtype_name(v), v.shape[-1])
            masks.append((name, domain, tol, not_points(domain, vd, c, tol)))
    flags = xp.stack([m[-1].any() for m in masks]).tolist()  # the one synchronisation
    for name, domain, tol, bad in (m for m, flag in zip(masks, flags) if flag):
        row = _first_row(bad)
        if domain is None:
            raise NonFiniteError(
                f"{op}: {name} has a NaN or inf in row {row} (xpu_stone.config.check_finite is on)",
                op,
                name,
                row,
            )
        raise DomainError(
            f"{op}: row {row} of {name} is not {_DOMAIN_TEXT[domain]}, beyond the rounding "
            f"tolerance {tol:.2g} (xpu_stone.config.check_finite is on)",
            op,
            name,
            row,
        )


def check_row_op_values(op: RowOp, vecs, c, c_val) -> None:
    """:func:`check_values` for a row-wise call (its inputs, their point kinds, its ``c``)."""
    domain, points = POINT_INPUTS.get(op.qualname, (None, ()))
    args = [(n, v, domain if j in points else None) for j, (n, v) in enumerate(zip(op.vectors, vecs))]
    check_values(f"{op.family}.{op.name}", args, c_val if c is None else c)
