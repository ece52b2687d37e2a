"""Lorentz (hyperboloid) ops as row descriptions: a line-for-line mirror of the
structs in ``cuda_src/lorentz.cu``; see :mod:`xpu_stone.ops.poincare` for the
conventions and :mod:`xpu_stone.engine` for how they run.
"""

from __future__ import annotations

from .._deps import torch
from ..constants import MIN_DENOM
from ..engine.rowop import ALONE, E0
from ..engine.rowwise import row_op
from ..engine.rowwise_cpu import clamp_min, cosh_c, norm_from_sq, sinh_c

__all__ = [
    "INNER",
    "NORM",
    "DIST",
    "DIST0",
    "EXPMAP0",
    "LOGMAP0",
    "EXPMAP",
    "LOGMAP",
    "PROJECT",
    "PROJ_TAN",
    "TRANSP",
    "GEODESIC",
]  # the row ops of this family

X, Y, Z = 0, 1, 2  # input vector slots
SPACE = True  # third entry of a term: element 0 zeroed


def _inner(dot, c, t, eps):
    return [dot[0] - dot[1] * dot[2]]


def _norm(dot, c, t, eps):
    return [norm_from_sq(dot[0] - dot[1] * dot[1])]


def _half_chord(dot, c):
    """s = sqrt(c) |d|_L / 2 from |d_s|^2 and d_0."""
    return torch.sqrt(c) * norm_from_sq(dot[0] - dot[1] * dot[1]) / 2


def _dist(dot, c, t, eps):
    return [2 * torch.asinh(_half_chord(dot, c)) / torch.sqrt(c)]


def _dist0(dot, c, t, eps):
    sc = torch.sqrt(c)
    return [torch.asinh(sc * norm_from_sq(dot[0])) / sc]


def _expmap0(dot, c, t, eps):
    sc = torch.sqrt(c)
    th = sc * norm_from_sq(dot[0])
    return [cosh_c(th) / sc, sinh_c(th) / th]


def _logmap0(dot, c, t, eps):
    sn = torch.sqrt(c) * norm_from_sq(dot[0])
    return [torch.asinh(sn) / sn]


def _expmap(dot, c, t, eps):
    th = torch.sqrt(c) * norm_from_sq(dot[0] - dot[1] * dot[1])
    return [cosh_c(th), sinh_c(th) / th]


def _logmap(dot, c, t, eps):
    s = _half_chord(dot, c)
    f = torch.asinh(s) / (s * torch.sqrt(1 + s * s))
    return [f, -2 * f * s * s]


def _project(dot, c, t, eps):
    return [torch.ones_like(dot[0]), torch.sqrt(1 / c + dot[0])]


def _proj_tan(dot, c, t, eps):
    return [torch.ones_like(dot[0]), c * (dot[0] - dot[1] * dot[2])]


def _transp(dot, c, t, eps):
    xy = dot[0] - dot[1] * dot[2]
    yv = dot[3] - dot[2] * dot[4]
    k = c * yv / clamp_min(1 - c * xy, MIN_DENOM)
    return [torch.ones_like(k), k, k]


def _geodesic(dot, c, t, eps):
    s = _half_chord(dot, c)
    th = 2 * torch.asinh(s)
    sh = 2 * s * torch.sqrt(1 + s * s)
    b = sinh_c(t * th) / sh
    return [sinh_c((1 - t) * th) / sh + b, b]


def _op(name, struct, vectors, terms, dots, out, coeffs, **kw):
    return row_op("lorentz", name, struct, vectors, terms, dots, out, coeffs, min_features=2, **kw)


_E0 = (E0, ALONE)
_DIFF = ((X, ALONE), (Y, X), (Y, X, SPACE), _E0)  # x, d = y - x, d_s, e0
_DIFF_DOTS = ((2, 2), (1, 3))  # |d_s|^2, d_0
_PAIR = ((X, ALONE), (Y, ALONE), (X, ALONE, SPACE), _E0)  # x, y, x_s, e0
_PAIR_DOTS = ((2, 1), (0, 3), (1, 3))  # <x_s,y>, x_0, y_0

INNER = _op("inner", "LorentzInner", ("u", "v"), _PAIR, _PAIR_DOTS, (0,), _inner, scalar_out=True)
NORM = _op(
    "norm",
    "LorentzNorm",
    ("u",),
    ((X, ALONE), (X, ALONE, SPACE), _E0),
    ((1, 1), (0, 2)),
    (0,),
    _norm,
    scalar_out=True,
)
DIST = _op(
    "dist",
    "LorentzDist",
    ("x", "y"),
    ((Y, X), (Y, X, SPACE), _E0),
    ((1, 1), (0, 2)),
    (0,),
    _dist,
    scalar_out=True,
)
DIST0 = _op("dist0", "LorentzDist0", ("x",), ((X, ALONE, SPACE),), ((0, 0),), (0,), _dist0, scalar_out=True)
EXPMAP0 = _op("expmap0", "LorentzExpmap0", ("u",), ((X, ALONE, SPACE), _E0), ((0, 0),), (1, 0), _expmap0)
LOGMAP0 = _op("logmap0", "LorentzLogmap0", ("y",), ((X, ALONE, SPACE),), ((0, 0),), (0,), _logmap0)
EXPMAP = _op(
    "expmap",
    "LorentzExpmap",
    ("x", "u"),
    ((X, ALONE), (Y, ALONE), (Y, ALONE, SPACE), _E0),
    ((2, 2), (1, 3)),
    (0, 1),
    _expmap,
)
LOGMAP = _op("logmap", "LorentzLogmap", ("x", "y"), _DIFF, _DIFF_DOTS, (1, 0), _logmap)
PROJECT = _op("project", "LorentzProject", ("x",), ((X, ALONE, SPACE), _E0), ((0, 0),), (0, 1), _project)
PROJ_TAN = _op("proj_tan", "LorentzProjTan", ("x", "u"), _PAIR, _PAIR_DOTS, (1, 0), _proj_tan)
TRANSP = _op(
    "transp",
    "LorentzTransp",
    ("x", "y", "v"),
    ((X, ALONE), (Y, ALONE), (Z, ALONE), (X, ALONE, SPACE), (Y, ALONE, SPACE), _E0),
    ((3, 1), (0, 5), (1, 5), (4, 2), (2, 5)),
    (2, 0, 1),
    _transp,
)
GEODESIC = _op("geodesic", "LorentzGeodesic", ("u", "v"), _DIFF, _DIFF_DOTS, (0, 1), _geodesic, param="t")
