"""Klein-model ops as row descriptions: a line-for-line mirror of the structs
in ``cuda_src/klein.cu`` (see :mod:`xpu_stone.ops.poincare` for the conventions).
"""

from __future__ import annotations

from .._deps import torch
from ..constants import MIN_DENOM
from ..engine.rowop import ALONE
from ..engine.rowwise import row_op
from ..engine.rowwise_cpu import clamp_min, norm_from_sq, sinh_c

__all__ = ["DIST", "GEODESIC", "LORENTZ_FACTOR"]  # the row ops of this family

X, Y = 0, 1


def _sinh2(dot, c):
    """(sinh(sqrt(c) d(u, v))^2, A, B) from |u|^2, |v|^2, |d|^2, <u,d>."""
    uu, vv, dd, ud = dot
    a = clamp_min(1 - c * uu, MIN_DENOM)
    b = clamp_min(1 - c * vv, MIN_DENOM)
    return c * (a * dd + c * ud * ud) / (a * b), a, b


def _dist(dot, c, t, eps):
    sh2, _, _ = _sinh2(dot, c)
    return [torch.asinh(norm_from_sq(sh2)) / torch.sqrt(c)]


def _geodesic(dot, c, t, eps):
    sh2, a_, b_ = _sinh2(dot, c)
    th = torch.asinh(norm_from_sq(sh2))
    a = sinh_c((1 - t) * th) * torch.sqrt(b_)
    b = sinh_c(t * th) * torch.sqrt(a_)
    return [torch.ones_like(b), b / (a + b)]  # > 0, ~ th sqrt(A) as th -> 0: no clamp (see klein.cu)


def _lorentz_factor(dot, c, t, eps):
    return [1 / torch.sqrt(clamp_min(1 - c * dot[0], MIN_DENOM))]


def _op(name, struct, vectors, terms, dots, out, coeffs, **kw):
    return row_op("klein", name, struct, vectors, terms, dots, out, coeffs, **kw)


_UVD = ((X, ALONE), (Y, ALONE), (Y, X))  # u, v, d = v - u
_UVD_DOTS = ((0, 0), (1, 1), (2, 2), (0, 2))  # |u|^2, |v|^2, |d|^2, <u,d>

DIST = _op("dist", "KleinDist", ("u", "v"), _UVD, _UVD_DOTS, (0,), _dist, scalar_out=True)
GEODESIC = _op("geodesic", "KleinGeodesic", ("u", "v"), _UVD, _UVD_DOTS, (0, 2), _geodesic, param="t")
LORENTZ_FACTOR = _op(
    "lorentz_factor",
    "KleinLorentzFactor",
    ("x",),
    ((X, ALONE),),
    ((0, 0),),
    (0,),
    _lorentz_factor,
    scalar_out=True,
)
