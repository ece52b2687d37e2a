r"""Poincare ball of curvature :math:`-c` (:math:`c > 0`, radius :math:`1/\sqrt{c}`).

Every function takes torch tensors (CPU or CUDA; autograd and ``torch.compile``
work) or CuPy arrays (forward only, no torch needed). Features are on the last
dim; leading dims broadcast like torch. ``c`` is a positive float, a 0-d tensor,
or a tensor with one value per row (size 1 in the last dim, e.g. ``(N, 1)`` for
inputs ``(N, D)``); a tensor ``c`` that requires grad gets its gradient.
Signatures follow geoopt's with ``c = -k``.

Formulas (Ganea, Becigneul & Hofmann, *Hyperbolic Neural Networks*, 2018):

.. math::

    x \oplus_c y = \frac{(1 + 2c\langle x,y\rangle + c\|y\|^2)\,x + (1 - c\|x\|^2)\,y}
                        {1 + 2c\langle x,y\rangle + c^2\|x\|^2\|y\|^2},
    \qquad \lambda_x = \frac{2}{1 - c\|x\|^2},

    d_c(x, y) = \frac{2}{\sqrt c}\operatorname{artanh}\big(\sqrt c\,\|(-x)\oplus_c y\|\big).
"""

from __future__ import annotations

from . import engine, pairwise
from .constants import BOUNDARY_EPS
from .engine.scalars import check_boundary_eps
from .ops import poincare as _ops

__all__ = [
    "mobius_add",
    "mobius_sub",
    "mobius_scalar_mul",
    "expmap0",
    "logmap0",
    "expmap",
    "logmap",
    "dist",
    "dist0",
    "project",
    "lambda_x",
    "gyration",
    "transp",
    "geodesic",
    "cdist",
    "knn",
]


_call = engine.call


def mobius_add(x, y, c=1.0):
    r"""Mobius addition :math:`x \oplus_c y` (see the module formula)."""
    return _call(_ops.MOBIUS_ADD, (x, y), c)


def mobius_sub(x, y, c=1.0):
    r""":math:`x \ominus_c y = x \oplus_c (-y)`."""
    return _call(_ops.MOBIUS_SUB, (x, y), c)


def mobius_scalar_mul(r, x, c=1.0):
    r"""Mobius scalar multiplication
    :math:`r \otimes_c x = \tanh(r\operatorname{artanh}(\sqrt c\|x\|))\,x/(\sqrt c\|x\|)`.

    ``r`` is a float or a tensor with one value per row (size 1 in the last dim).
    """
    return _call(_ops.MOBIUS_SCALAR_MUL, (x,), c, r)


def expmap0(u, c=1.0):
    r"""Exponential map at the origin :math:`\tanh(\sqrt c\|u\|)\,u/(\sqrt c\|u\|)`."""
    return _call(_ops.EXPMAP0, (u,), c)


def logmap0(y, c=1.0):
    r"""Logarithmic map at the origin :math:`\operatorname{artanh}(\sqrt c\|y\|)\,y/(\sqrt c\|y\|)`."""
    return _call(_ops.LOGMAP0, (y,), c)


def expmap(x, u, c=1.0):
    r"""Exponential map at ``x``:
    :math:`x \oplus_c \tanh(\sqrt c\,\lambda_x\|u\|/2)\,u/(\sqrt c\|u\|)`."""
    return _call(_ops.EXPMAP, (x, u), c)


def logmap(x, y, c=1.0):
    r"""Logarithmic map at ``x``:
    :math:`\frac{2}{\sqrt c\,\lambda_x}\operatorname{artanh}(\sqrt c\|w\|)\,w/\|w\|`,
    :math:`w = (-x)\oplus_c y`."""
    return _call(_ops.LOGMAP, (x, y), c)


def dist(x, y, c=1.0, keepdim=False):
    r"""Geodesic distance
    :math:`\frac{2}{\sqrt c}\operatorname{artanh}(\sqrt c\|(-x)\oplus_c y\|)`."""
    return _call(_ops.DIST, (x, y), c, keepdim=keepdim)


def dist0(x, c=1.0, keepdim=False):
    r"""Distance to the origin :math:`\frac{2}{\sqrt c}\operatorname{artanh}(\sqrt c\|x\|)`."""
    return _call(_ops.DIST0, (x,), c, keepdim=keepdim)


def project(x, c=1.0, eps=None):
    r"""Pulls ``x`` inside the ball: rows with :math:`\sqrt c\|x\| > 1 - \epsilon` are
    rescaled to norm :math:`(1 - \epsilon)/\sqrt c`. ``eps`` defaults per dtype to
    :data:`xpu_stone.constants.BOUNDARY_EPS`; a given ``eps`` must lie in (0, 1) with
    :math:`1 - \epsilon` below 1 in the dtype of ``x`` (else
    :class:`~xpu_stone.errors.InvalidArgumentError`)."""
    dtype = engine.dtype_name(x)
    eps = BOUNDARY_EPS[dtype] if eps is None else check_boundary_eps(eps, dtype)
    return _call(_ops.PROJECT, (x,), c, eps=eps)


def lambda_x(x, c=1.0, keepdim=False):
    r"""Conformal factor :math:`\lambda_x = 2/(1 - c\|x\|^2)`."""
    return _call(_ops.LAMBDA_X, (x,), c, keepdim=keepdim)


def gyration(a, b, u, c=1.0):
    r"""Gyration :math:`\operatorname{gyr}[a,b]u = \ominus(a\oplus b)\oplus(a\oplus(b\oplus u))`,
    in the closed form of Ungar (2008)."""
    return _call(_ops.GYRATION, (a, b, u), c)


def transp(x, y, v, c=1.0):
    r"""Parallel transport of ``v`` from :math:`T_x` to :math:`T_y`:
    :math:`\operatorname{gyr}[y,-x]v\;\lambda_x/\lambda_y`."""
    return _call(_ops.TRANSP, (x, y, v), c)


def geodesic(u, v, t, c=1.0):
    r"""Point at fraction ``t`` of the geodesic from ``u`` to ``v``:
    :math:`u \oplus_c (t \otimes_c ((-u) \oplus_c v))` (the Reality Stone Poincare layer).

    ``t`` is a float or a tensor with one value per row (size 1 in the last dim).
    """
    return _call(_ops.GEODESIC, (u, v), c, t)


def cdist(x, y, c=1.0):
    """Pairwise distances, ``(*, N, D) x (*, M, D) -> (*, N, M)``: one GEMM and a
    fused epilogue (see :func:`xpu_stone.pairwise.cdist`)."""
    return pairwise.cdist(x, y, c, model="poincare")


def knn(x, y, k, c=1.0, chunk_rows=None):
    """The ``k`` nearest rows of ``y`` for each row of ``x``: ``(values, indices)``
    (see :func:`xpu_stone.pairwise.knn`)."""
    return pairwise.knn(x, y, k, c, model="poincare", chunk_rows=chunk_rows)
