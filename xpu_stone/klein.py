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
from ._deps import is_cupy_array
from .constants import BOUNDARY_EPS
from .engine.scalars import check_boundary_eps
from .errors import InvalidArgumentError
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
    broadcasts against ``x`` without its feature dim (default: all ones);
    non-negative weights keep ``m`` inside the ball. ``dim`` indexes ``x`` and must
    not be the feature dim. The Lorentz factors come from a fused kernel; the
    weighted sums are torch's (or CuPy's) reductions.
    """
    nd = x.ndim
    axis = dim % nd
    if axis == nd - 1:
        raise InvalidArgumentError(f"dim={dim} is the feature dim of x (shape {tuple(x.shape)})")
    g = lorentz_factor(x, c, keepdim=True)
    if weights is not None:
        g = g * weights[..., None]
    num = (g * x).sum(axis, keepdims=keepdim) if is_cupy_array(x) else (g * x).sum(axis, keepdim)
    den = g.sum(axis, keepdims=keepdim) if is_cupy_array(x) else g.sum(axis, keepdim)
    return num / den
