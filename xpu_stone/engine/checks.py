"""Checks of a row-wise call's operands, torch or CuPy, before anything runs:
types, dtypes, devices, feature dims, broadcastable batch dims, and the scalars
(by :mod:`xpu_stone.engine.scalars`). Inputs are never modified."""

from __future__ import annotations

from .._deps import is_cupy_array, torch
from ..errors import InvalidArgumentError, ShapeMismatchError
from .launch import CUPY_DTYPES, TORCH_DTYPES
from .rowop import RowOp
from .scalars import check_scalar

__all__ = ["batch_shape", "broadcast", "validate_cupy", "validate_torch"]


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
