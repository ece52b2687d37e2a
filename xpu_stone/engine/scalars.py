r"""The one rule for the curvature ``c`` and the other per-call scalars (``t``, ``r``).

A scalar is given as

* a real number (Python ``int``/``float`` or a NumPy scalar; not ``bool``), which
  must be finite, and for ``c`` positive; or
* a tensor (a torch tensor for torch inputs, a CuPy array for CuPy inputs) of a
  floating dtype whose values are all finite (and for ``c`` positive). It holds
  either **one value** (any shape with one element: one ``c`` for the whole call)
  or, where the op allows it (``per_row=True``: the row-wise ops), **one value
  per row**: size 1 in the last dim, the other dims broadcasting against the
  batch dims of the inputs (``(N, 1)`` for inputs ``(N, D)``). It lives on the
  inputs' device; a one-value CPU tensor is moved there.

Values of tensors are checked by :func:`check_scalar` on the host where that needs
no synchronisation (a tensor on the CPU) or where the call synchronises anyway (the
checked mode, ``config.check_finite``), everywhere with
``config.check_tensor_values = True`` (one synchronisation per tensor on a GPU),
nowhere with ``False``, and never while the call is being traced by
``torch.compile`` or captured into a CUDA graph. Unchecked, a bad value reaches the
row-wise kernels, which give NaN for its rows (:mod:`xpu_stone.config`). A value
read on the host anyway is always checked: :func:`curvature_value` (manifolds,
layers with a fixed ``c``, optimizers) and ``cdist``, ``knn`` and the HNN++ maps,
which take their one ``c`` by value. Errors are typed: a bad
curvature raises :class:`~xpu_stone.errors.InvalidCurvatureError`, a bad other
scalar :class:`~xpu_stone.errors.InvalidArgumentError`, a per-row tensor of the
wrong shape :class:`~xpu_stone.errors.ShapeMismatchError`.

Used by the row-wise engine (torch and CuPy), the GEMM-style ops (pairwise,
linear), :mod:`xpu_stone.manifolds`, :mod:`xpu_stone.nn` and the optimizers.
"""

from __future__ import annotations

import functools
import math
import numbers

import numpy

from .. import config
from .._deps import cupy, is_cupy_array, torch
from ..errors import InvalidArgumentError, InvalidCurvatureError, ShapeMismatchError

__all__ = [
    "check_boundary_eps",
    "check_on_host",
    "check_curvature",
    "check_number",
    "check_scalar",
    "read_curvature",
    "curvature_value",
    "tracing",
]


def _error(positive: bool):
    return InvalidCurvatureError if positive else InvalidArgumentError


def check_number(value, name: str = "c", *, positive: bool = True, or_tensor: bool = False) -> float:
    """``value`` as a float, if it is a finite (positive) real number; else a typed error
    (``or_tensor``: the message says a tensor would do too)."""
    err = _error(positive)
    if type(value) is not float and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
        what = ("positive number" if positive else "number") + (" or a tensor" if or_tensor else "")
        raise err(f"{name} must be a {what}, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or (positive and v <= 0):
        raise err(f"{name} must be a finite{' positive' if positive else ''} number, got {value!r}")
    return v


def tracing(like=None) -> bool:
    """Whether values cannot be read now: torch.compile tracing or CUDA-graph capture."""
    if torch is None or is_cupy_array(like):
        return False
    if torch.compiler.is_compiling():
        return True
    return like is not None and like.is_cuda and torch.cuda.is_current_stream_capturing()


def check_scalar(value, name: str = "c", like=None, *, positive: bool = True, per_row: bool = True):
    """Checks ``value`` against the module's rule; returns ``(tensor, number)``:
    ``(None, float)`` for a number, ``(tensor, 1.0)`` for a tensor (0-d when it
    holds one value and ``per_row`` is False; on ``like``'s device)."""
    err = _error(positive)
    cupy_input = is_cupy_array(like)
    is_tensor = is_cupy_array(value) if cupy_input else torch is not None and isinstance(value, torch.Tensor)
    if not is_tensor:
        return None, check_number(value, name, positive=positive, or_tensor=True)
    floating = value.dtype.kind == "f" if cupy_input else value.dtype.is_floating_point
    if not floating:
        raise err(f"{name} must have a floating dtype, got {value.dtype}")
    ndim = value.ndim
    if per_row:
        if ndim > 0 and value.shape[-1] != 1:
            raise ShapeMismatchError(
                f"{name} must hold one value, or one value per row: size 1 in the last dim (e.g. shape "
                f"(N, 1) for inputs of shape (N, D)), got shape {tuple(value.shape)}"
            )
    elif value.size != 1 if cupy_input else value.numel() != 1:
        raise err(
            f"{name} must be a number or a one-element tensor, got a tensor of shape {tuple(value.shape)}"
        )
    if check_on_host(value, like):  # before a CPU value moves to the inputs' device
        xp = cupy if cupy_input else torch
        ok = xp.isfinite(value) & (value > 0) if positive else xp.isfinite(value)
        if not bool(ok.all()):
            raise err(f"{name} must be finite{' and positive' if positive else ''} everywhere")
    if like is not None:
        value = _on_device_of(value, like, name, one=not per_row or ndim == 0)
    if not per_row:
        value = value.reshape(())
    return value, 1.0


def check_on_host(value, like=None) -> bool:
    """Whether the values of the tensor ``value`` (a torch tensor or CuPy array) are
    checked on the host: ``config.check_tensor_values`` true, or None (the default)
    and either ``value`` on the CPU (no synchronisation) or the checked mode on
    (``config.check_finite``, which synchronises anyway); never while ``like``'s call
    is traced or captured."""
    flag = config.check_tensor_values
    if flag is None:
        want = config.check_finite or (not is_cupy_array(value) and value.device.type == "cpu")
    else:
        want = bool(flag)
    return want and not tracing(like if like is not None else value)


def _on_device_of(value, like, name: str, one: bool):
    if is_cupy_array(like):
        if value.device.id != like.device.id:
            raise InvalidArgumentError(
                f"{name} is on GPU {value.device.id} but the inputs are on GPU {like.device.id}"
            )
        return value
    if value.device == like.device:
        return value
    if one and value.device.type == "cpu":
        return value.to(like.device)
    raise InvalidArgumentError(f"{name} is on {value.device} but the inputs are on {like.device}")


def check_curvature(c, like=None, *, per_row: bool = False):
    """:func:`check_scalar` for a curvature (positive), one value by default."""
    return check_scalar(c, "c", like, positive=True, per_row=per_row)


def curvature_value(c) -> float:
    """A curvature fixed for the object that takes it (a manifold, a layer, an
    optimizer's step): a positive number or a one-element tensor, read once on the
    host (gradients do not flow through it)."""
    c_t, value = check_curvature(c)
    return value if c_t is None else read_curvature(c_t)


def read_curvature(c_t) -> float:
    """The value of a one-element tensor ``c_t`` already through :func:`check_scalar`,
    read on the host (a synchronisation for a GPU tensor) and so checked here whatever
    ``config.check_tensor_values`` says."""
    return check_number(float(c_t.detach()), "c")


def check_boundary_eps(eps, dtype: str) -> float:
    """A boundary margin for points stored in ``dtype`` ("float32", ...): a number with
    ``0 < eps < 1`` such that ``1 - eps`` rounds below 1 in that dtype (otherwise the
    "projected" points would sit on the boundary, where the maps are infinite)."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0 < eps < 1:  # NaN fails too
        raise InvalidArgumentError(f"eps must be a number in (0, 1), got {eps!r}")
    v = float(eps)
    if _one_minus_rounds_to_one(v, dtype):
        raise InvalidArgumentError(
            f"eps={eps!r} is too small for {dtype}: 1 - eps rounds to 1 there (take eps of at least "
            f"xpu_stone.constants.BOUNDARY_EPS[{dtype!r}])"
        )
    return v


@functools.lru_cache(maxsize=256)
def _one_minus_rounds_to_one(v: float, dtype: str) -> bool:
    """Cached: a manifold's projection asks with the same margin at every step."""
    if torch is not None:
        return bool(torch.tensor(1.0 - v, dtype=getattr(torch, dtype)) >= 1)
    return bool(numpy.asarray(1.0 - v, dtype=dtype) >= 1)  # the CuPy-only installation: no bfloat16
