r"""Hyperboloid (Lorentz) model of curvature :math:`-c` (:math:`c > 0`).

Points satisfy :math:`\langle x, x\rangle_L = -1/c`, :math:`x_0 > 0`, with the
time coordinate first and the Minkowski product

.. math::

    \langle u, v\rangle_L = -u_0 v_0 + \sum_{i \ge 1} u_i v_i .

Inputs, broadcasting, ``c`` and ``t`` as in :mod:`xpu_stone.poincare`: torch
tensors (CPU or CUDA, autograd, ``torch.compile``) or CuPy arrays, features on
the last dim. The origin is :math:`o = (1/\sqrt c, 0, \dots, 0)`.

Distances and the maps between nearby points are evaluated from the difference
:math:`d = y - x` (for points on the hyperboloid,
:math:`-c\langle x, y\rangle_L = 1 + \tfrac{c}{2}\langle d, d\rangle_L`):

.. math::

    d_c(x, y) = \frac{1}{\sqrt c}\operatorname{arcosh}(-c\langle x, y\rangle_L)
              = \frac{2}{\sqrt c}\operatorname{asinh}\Big(\frac{\sqrt c}{2}\|y - x\|_L\Big),

which keeps the digits of small distances far from the origin, where
:math:`\operatorname{arcosh}(-c\langle x,y\rangle_L)` loses them all. Inputs are
assumed to lie on the hyperboloid (use :func:`project`); off it, these formulas
and the textbook ones differ by the distance to the hyperboloid.

Precision far from the origin: a point at distance :math:`r` has coordinates of
size :math:`e^r/(2\sqrt c)`, and a tangent vector :math:`u` there has
:math:`\|u\|_L^2 = \|u_{1:}\|^2 - u_0^2` cancelling by a factor
:math:`\approx x_0^2`. Rounded to fp16/bf16 (fp32), a tangent vector is tangent
only to about :math:`\epsilon x_0` of its size, so :func:`expmap`, :func:`norm`
and :func:`transp` lose meaning beyond distance ~3 (~8) from the origin and may
overflow; fp64 holds to ~8 (the tests use these bounds). Distances and the maps
between points (:func:`dist`, :func:`logmap`, :func:`geodesic`) do not suffer this.
"""

from __future__ import annotations

from . import engine, pairwise
from .ops import lorentz as _ops

__all__ = [
    "inner",
    "norm",
    "dist",
    "dist0",
    "expmap0",
    "logmap0",
    "expmap",
    "logmap",
    "project",
    "proj_tan",
    "transp",
    "geodesic",
    "cdist",
    "knn",
]

_call = engine.call


def inner(u, v, c=1.0, keepdim=False):
    r"""Minkowski product :math:`\langle u, v\rangle_L = -u_0 v_0 + \sum_{i\ge1} u_i v_i`
    (``c`` is accepted for a uniform signature and not used in the formula; it is
    checked as everywhere, and a row with a bad tensor ``c`` is NaN)."""
    return _call(_ops.INNER, (u, v), c, keepdim=keepdim)


def norm(u, c=1.0, keepdim=False):
    r"""Norm of a tangent vector :math:`\|u\|_L = \sqrt{\max(\langle u,u\rangle_L, 0)}`."""
    return _call(_ops.NORM, (u,), c, keepdim=keepdim)


def dist(x, y, c=1.0, keepdim=False):
    r"""Geodesic distance
    :math:`\frac{2}{\sqrt c}\operatorname{asinh}(\frac{\sqrt c}{2}\|y - x\|_L)`
    (:math:`= \operatorname{arcosh}(-c\langle x,y\rangle_L)/\sqrt c` on the hyperboloid)."""
    return _call(_ops.DIST, (x, y), c, keepdim=keepdim)


def dist0(x, c=1.0, keepdim=False):
    r"""Distance to the origin :math:`\operatorname{asinh}(\sqrt c\,\|x_{1:}\|)/\sqrt c`."""
    return _call(_ops.DIST0, (x,), c, keepdim=keepdim)


def expmap0(u, c=1.0):
    r"""Exponential map at the origin:
    :math:`\big(\cosh(\sqrt c\|u_{1:}\|)/\sqrt c,\;
    \sinh(\sqrt c\|u_{1:}\|)\,u_{1:}/(\sqrt c\|u_{1:}\|)\big)`.
    ``u`` has the full dimension; its time coordinate is ignored (tangent vectors
    at the origin have none)."""
    return _call(_ops.EXPMAP0, (u,), c)


def logmap0(y, c=1.0):
    r"""Logarithmic map at the origin:
    :math:`\big(0,\;\operatorname{asinh}(\sqrt c\|y_{1:}\|)\,y_{1:}/(\sqrt c\|y_{1:}\|)\big)`."""
    return _call(_ops.LOGMAP0, (y,), c)


def expmap(x, u, c=1.0):
    r"""Exponential map at ``x``:
    :math:`\cosh(\sqrt c\|u\|_L)\,x + \sinh(\sqrt c\|u\|_L)\,u/(\sqrt c\|u\|_L)`
    for a tangent vector ``u`` at ``x``."""
    return _call(_ops.EXPMAP, (x, u), c)


def logmap(x, y, c=1.0):
    r"""Logarithmic map at ``x``: the tangent vector
    :math:`d_c(x,y)\,\frac{y + c\langle x,y\rangle_L x}{\|y + c\langle x,y\rangle_L x\|_L}`,
    evaluated as :math:`f\,(d - z x)` with :math:`d = y - x`,
    :math:`s = \frac{\sqrt c}{2}\|d\|_L`, :math:`z = 2s^2`,
    :math:`f = \operatorname{asinh}(s)/(s\sqrt{1+s^2})`."""
    return _call(_ops.LOGMAP, (x, y), c)


def project(x, c=1.0):
    r"""The point of the hyperboloid above ``x``'s space part:
    :math:`\big(\sqrt{1/c + \|x_{1:}\|^2},\; x_{1:}\big)`."""
    return _call(_ops.PROJECT, (x,), c)


def proj_tan(x, u, c=1.0):
    r"""Tangent component of ``u`` at ``x``: :math:`u + c\langle x, u\rangle_L\,x`."""
    return _call(_ops.PROJ_TAN, (x, u), c)


def transp(x, y, v, c=1.0):
    r"""Parallel transport of ``v`` from :math:`T_x` to :math:`T_y` along the geodesic:
    :math:`v + \frac{c\langle y, v\rangle_L}{1 - c\langle x, y\rangle_L}(x + y)`."""
    return _call(_ops.TRANSP, (x, y, v), c)


def geodesic(u, v, t, c=1.0):
    r"""Point at fraction ``t`` of the geodesic from ``u`` to ``v`` (the Reality Stone
    Lorentz layer), :math:`\exp_u(t\log_u v)`:

    .. math::

        \frac{\sinh((1-t)\theta)\,u + \sinh(t\theta)\,v}{\sinh\theta},
        \qquad \theta = \sqrt c\,d_c(u, v)

    (evaluated as :math:`(a + b)\,u + b\,(v - u)` with the two sinh ratios
    :math:`a, b`, from :math:`s = \frac{\sqrt c}{2}\|v - u\|_L`).

    ``t`` is a float or a tensor with one value per row (size 1 in the last dim).
    """
    return _call(_ops.GEODESIC, (u, v), c, t)


def cdist(x, y, c=1.0):
    """Pairwise distances, ``(*, N, D) x (*, M, D) -> (*, N, M)``: one GEMM and a
    fused epilogue (see :func:`xpu_stone.pairwise.cdist`)."""
    return pairwise.cdist(x, y, c, model="lorentz")


def knn(x, y, k, c=1.0, chunk_rows=None):
    """The ``k`` nearest rows of ``y`` for each row of ``x``: ``(values, indices)``
    (see :func:`xpu_stone.pairwise.knn`)."""
    return pairwise.knn(x, y, k, c, model="lorentz", chunk_rows=chunk_rows)
