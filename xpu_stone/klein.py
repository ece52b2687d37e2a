r"""Beltrami-Klein model of curvature :math:`-c`: the ball of radius :math:`1/\sqrt c`
in which geodesics are straight chords.

With :math:`A = 1 - c\|u\|^2`, :math:`B = 1 - c\|v\|^2`, :math:`d = v - u`:

.. math::

    \cosh(\sqrt c\, d_c(u, v)) = \frac{1 - c\langle u, v\rangle}{\sqrt{AB}},
    \qquad
    \sinh^2(\sqrt c\, d_c(u, v)) = \frac{c\,(A\|d\|^2 + c\langle u, d\rangle^2)}{AB},

the second (a sum of non-negative terms) being what the kernels evaluate.
Inputs as in :mod:`xpu_stone.poincare`.
"""

from __future__ import annotations

from . import engine
from ._deps import cupy, is_cupy_array, torch
from .constants import BOUNDARY_EPS
from .engine.checks import broadcast
from .engine.scalars import check_boundary_eps, check_on_host
from .errors import InvalidArgumentError, ShapeMismatchError
from .ops import klein as _ops
from .ops import poincare as _poincare_ops

__all__ = ["dist", "geodesic", "project", "lorentz_factor", "einstein_midpoint"]

_call = engine.call


def dist(u, v, c=1.0, keepdim=False):
    r"""Geodesic distance
    :math:`\frac{1}{\sqrt c}\operatorname{asinh}\sqrt{c\,(A\|d\|^2 + c\langle u,d\rangle^2)/(AB)}`."""
    return _call(_ops.DIST, (u, v), c, keepdim=keepdim)


def geodesic(u, v, t, c=1.0):
    r"""Point at fraction ``t`` of the geodesic from ``u`` to ``v`` at constant
    hyperbolic speed (the Reality Stone Klein layer): :math:`u + \lambda (v - u)` with

    .. math::

        \lambda = \frac{\sinh(t\theta)\sqrt A}{\sinh((1-t)\theta)\sqrt B + \sinh(t\theta)\sqrt A},
        \qquad \theta = \sqrt c\, d_c(u, v)

    (the hyperboloid's geodesic seen in the Klein chart). ``t`` is a float or a
    tensor with one value per row.
    """
    return _call(_ops.GEODESIC, (u, v), c, t)


def project(x, c=1.0, eps=None):
    r"""Pulls ``x`` inside the ball: rows with :math:`\sqrt c\|x\| > 1 - \epsilon` are
    rescaled to norm :math:`(1 - \epsilon)/\sqrt c` (the same map as
    :func:`xpu_stone.poincare.project`; ``eps`` per dtype by default)."""
    dtype = engine.dtype_name(x)
    eps = BOUNDARY_EPS[dtype] if eps is None else check_boundary_eps(eps, dtype)
    return _call(_poincare_ops.PROJECT, (x,), c, eps=eps)


def lorentz_factor(x, c=1.0, keepdim=False):
    r"""Lorentz factor :math:`\gamma_x = 1/\sqrt{1 - c\|x\|^2}`."""
    return _call(_ops.LORENTZ_FACTOR, (x,), c, keepdim=keepdim)


def einstein_midpoint(x, weights=None, dim=-2, c=1.0, keepdim=False):
    r"""Weighted Einstein midpoint of the points of ``x`` along ``dim``:

    .. math::

        m = \frac{\sum_i w_i \gamma_{x_i} x_i}{\sum_i w_i \gamma_{x_i}}

    (the weighted hyperbolic centroid in the Klein model; Ungar 2008). ``weights``
    (same array type, dtype and device as ``x``) broadcasts against ``x`` without
    its feature dim (default: all ones); weights must be finite and non-negative
    with a positive sum along ``dim`` (otherwise the midpoint is undefined): checked
    like a tensor curvature (:data:`xpu_stone.config.check_tensor_values`: on the host
    for CPU weights, by opt-in for GPU ones); unchecked, a midpoint with a bad weight,
    or with weights summing to 0, is NaN. ``dim`` indexes ``x`` and must not be the
    feature dim. The Lorentz factors come from a fused kernel; the weighted sums are
    torch's (or CuPy's) reductions.
    """
    cupy_input = is_cupy_array(x)
    if not (cupy_input or (torch is not None and isinstance(x, torch.Tensor))):
        raise InvalidArgumentError(f"x must be a torch tensor or a CuPy array, got {type(x).__name__}")
    nd = x.ndim
    if not isinstance(dim, int) or isinstance(dim, bool) or not -nd <= dim < nd:
        raise InvalidArgumentError(f"dim must be an int indexing x of shape {tuple(x.shape)}, got {dim!r}")
    axis = dim % nd
    if axis == nd - 1:
        raise InvalidArgumentError(f"dim={dim} is the feature dim of x (shape {tuple(x.shape)})")
    g = lorentz_factor(x, c, keepdim=True)
    if weights is not None:
        g = g * _check_weights(weights, x, axis, cupy_input)[..., None]
    num = (g * x).sum(axis, keepdims=keepdim) if cupy_input else (g * x).sum(axis, keepdim)
    den = g.sum(axis, keepdims=keepdim) if cupy_input else g.sum(axis, keepdim)
    return num / den


def _check_weights(w, x, axis: int, cupy_input: bool):
    """``w``, checked on the host where :func:`check_on_host` says so; otherwise with
    NaN for a weight that is not finite and non-negative (its midpoint comes out NaN,
    as does one whose weights sum to 0)."""
    if not (is_cupy_array(w) if cupy_input else isinstance(w, torch.Tensor)):
        raise InvalidArgumentError(
            f"weights must be a {'CuPy array' if cupy_input else 'torch tensor'} like x, got {type(w).__name__}"
        )
    if w.dtype != x.dtype or w.device != x.device:
        raise InvalidArgumentError(
            f"weights must have x's dtype and device ({x.dtype} on {x.device}), got {w.dtype} on {w.device}"
        )
    try:
        shape = broadcast((tuple(w.shape), tuple(x.shape[:-1])))
    except ShapeMismatchError:
        shape = None
    if shape != tuple(x.shape[:-1]):
        raise ShapeMismatchError(
            f"weights of shape {tuple(w.shape)} do not broadcast to x's points {tuple(x.shape[:-1])}"
        )
    xp = cupy if cupy_input else torch
    ok = xp.isfinite(w) & (w >= 0)
    if not check_on_host(w, x):
        return xp.where(ok, w, xp.asarray(float("nan"), dtype=w.dtype) if cupy_input else float("nan"))
    total = (xp.broadcast_to(w, shape) if cupy_input else w.expand(shape)).sum(axis)
    if not bool(ok.all() & (total > 0).all()):
        raise InvalidArgumentError("weights must be finite and non-negative with a positive sum along dim")
    return w
