"""Poincare-ball ops as row descriptions: a line-for-line mirror of the structs
in ``cuda_src/poincare.cu`` (terms, dots, output terms, per-row formula).

Each ``*_coeffs`` function takes the row's dots, ``c``, ``t`` and ``eps`` as
tensors of shape ``(..., 1)`` and returns the output coefficients; see
:mod:`xpu_stone.engine` for how they are used forward and backward.
"""

from __future__ import annotations

from .._deps import torch
from ..constants import MIN_DENOM, TANH_MAX
from ..engine.rowop import ALONE
from ..engine.rowwise import row_op
from ..engine.rowwise_cpu import artanh_c, clamp_min, norm_from_sq, sinh_c, tanh_c

__all__ = [
    "MOBIUS_ADD",
    "MOBIUS_SUB",
    "MOBIUS_SCALAR_MUL",
    "EXPMAP0",
    "LOGMAP0",
    "EXPMAP",
    "LOGMAP",
    "DIST",
    "DIST0",
    "PROJECT",
    "LAMBDA_X",
    "GYRATION",
    "TRANSP",
    "GEODESIC",
]  # the row ops of this family

X, Y, Z = 0, 1, 2  # input vector slots


def _mobius_sum(dot, c, t, eps):
    """x (+) y and x (-) y = x (+) (-y) from the dots |x|^2, |y|^2, |w|^2 of
    w = x + y (mobius_add) or w = x - y (mobius_sub): (A w + c|w|^2 x) / (A B + c|w|^2),
    A = 1 - c|x|^2, B = 1 - c|y|^2, since 1 +- 2c<x,y> + c|y|^2 = A + c|w|^2 and
    1 +- 2c<x,y> + c^2|x|^2|y|^2 = A B + c|w|^2: keeps its digits at x ~ -+y (the
    denominator ~ 0 near the boundary). Coefficients of w and x."""
    xx, yy, ww = dot
    a = 1 - c * xx
    den = clamp_min(a * (1 - c * yy) + c * ww, MIN_DENOM)
    return [a / den, c * ww / den]


def _artanh_w(xx, yy, dd, c):
    """artanh(sqrt(c)|(-x) (+) y|) = asinh(sqrt(c|d|^2 / (A B))), d = y - x: with
    1 - c|(-x) (+) y|^2 = A B / den, artanh(z) = asinh(z / sqrt(1 - z^2)) needs no
    difference of numbers near 1 (A, B clamped at MIN_DENOM)."""
    ab = clamp_min(1 - c * xx, MIN_DENOM) * clamp_min(1 - c * yy, MIN_DENOM)
    return torch.asinh(torch.sqrt(c) * norm_from_sq(dd / ab))


def _scalar_mul(dot, c, t, eps):
    sn = torch.sqrt(c) * norm_from_sq(dot[0])
    return [tanh_c(t * artanh_c(sn)) / sn]


def _expmap0(dot, c, t, eps):
    sn = torch.sqrt(c) * norm_from_sq(dot[0])
    return [tanh_c(sn) / sn]


def _logmap0(dot, c, t, eps):
    sn = torch.sqrt(c) * norm_from_sq(dot[0])
    return [artanh_c(sn) / sn]


def _expmap_late(dot, c):
    """s of the late dot |x + s u|^2: z = s u with s = tanh(sqrt(c)|u| / B_x) / (sqrt(c)|u|),
    B_x = 1 - c|x|^2 = 2 / lambda_x."""
    return _expmap_scale(_expmap_arg(dot[0], dot[1], c), dot[1], c)


def _expmap_scale(a, uu, c):
    return tanh_c(a) / (torch.sqrt(c) * norm_from_sq(uu))


def _expmap_arg(xx, uu, c):
    return torch.clamp_max(torch.sqrt(c) * norm_from_sq(uu) / clamp_min(1 - c * xx, MIN_DENOM), TANH_MAX)


def _expmap(dot, c, t, eps):
    """x (+) z, z = s u (see :func:`_expmap_late`), as the Mobius sum of :func:`_mobius_sum`
    with w = x + z: (A w + c|w|^2 x) / (A B + c|w|^2), A = 1 - c|x|^2, B = 1 - c|z|^2 =
    1 / cosh^2(a). |w|^2 is the late dot (summed from the elements of x + s u): near the
    boundary with x + z ~ 0 the dots alone lose it. Coefficients of x and u."""
    xx, uu, _, ww = dot
    a = _expmap_arg(xx, uu, c)
    s = _expmap_scale(a, uu, c)
    ax = 1 - c * xx
    den = clamp_min(ax / torch.cosh(a) ** 2 + c * ww, MIN_DENOM)
    return [(ax + c * ww) / den, ax * s / den]


def _logmap(dot, c, t, eps):
    xx, yy, dd = dot
    sc = torch.sqrt(c)
    bx = 1 - c * xx
    den = clamp_min(bx * (1 - c * yy) + c * dd, MIN_DENOM)
    sn = sc * norm_from_sq(dd / den)
    f = clamp_min(bx, MIN_DENOM) * _artanh_w(xx, yy, dd, c) / sn
    return [f * (bx + c * dd) / den, -f * c * dd / den]


def _dist(dot, c, t, eps):
    """d(x, y) = (2 / sqrt(c)) asinh(sqrt(c|y - x|^2 / (A B)))."""
    xx, yy, dd = dot
    return [2 * _artanh_w(xx, yy, dd, c) / torch.sqrt(c)]


def _dist0(dot, c, t, eps):
    sc = torch.sqrt(c)
    return [2 * artanh_c(sc * norm_from_sq(dot[0])) / sc]


def _project(dot, c, t, eps):
    n = norm_from_sq(dot[0])
    maxnorm = (1 - eps) / torch.sqrt(c)
    return [torch.where(n > maxnorm, maxnorm / n, torch.ones_like(n))]


def _lambda_x(dot, c, t, eps):
    return [2 / clamp_min(1 - c * dot[0], MIN_DENOM)]


def gyration_coeffs(uu, vv, ss, sw, vw, sv, c):
    """gyr[u, v] w = w + alpha s + gamma v, s = u + v (see xs_gyration_coeffs in
    poincare.cu): alpha = 2c (<v,w> B - c<s,w>|v|^2 + 2c<s,v><v,w>) / dn,
    gamma = -2c (<s,w> B + c<v,w>|s|^2) / dn, dn = A B + c|s|^2."""
    b = 1 - c * vv
    dn = clamp_min((1 - c * uu) * b + c * ss, MIN_DENOM)
    alpha = 2 * c * (vw * b - c * sw * vv + 2 * c * sv * vw) / dn
    gamma = -2 * c * (sw * b + c * vw * ss) / dn
    return alpha, gamma


def _gyration(dot, c, t, eps):
    alpha, gamma = gyration_coeffs(*dot, c)
    return [torch.ones_like(alpha), alpha, gamma]


def _transp(dot, c, t, eps):
    xx, yy, dd, dv, xv, dx = dot
    alpha, gamma = gyration_coeffs(yy, xx, dd, dv, -xv, -dx, c)  # gyr[y, -x] v = v + alpha d - gamma x
    scale = clamp_min(1 - c * yy, MIN_DENOM) / clamp_min(1 - c * xx, MIN_DENOM)
    return [scale, scale * alpha, -scale * gamma]


def _geodesic(dot, c, t, eps):
    """geodesic(u, v, t) = (2 r0 B u + 2 r1 A v) / (A B + r0 (1 + c|u|^2) B + r1 (1 + c|v|^2) A),
    r0 = sinh((1 - t) delta) / sinh(delta), r1 = sinh(t delta) / sinh(delta),
    delta = sqrt(c) d(u, v), A = 1 - c|u|^2, B = 1 - c|v|^2: the hyperboloid geodesic
    taken back to the ball; t = 1 gives v and t = 0 gives u to rounding, with no
    tanh (whose input clamp TANH_MAX would limit t delta)."""
    uu, vv, dd = dot
    delta = 2 * _artanh_w(uu, vv, dd, c)
    sd = sinh_c(delta)
    r0, r1 = sinh_c((1 - t) * delta) / sd, sinh_c(t * delta) / sd
    a, b = clamp_min(1 - c * uu, MIN_DENOM), clamp_min(1 - c * vv, MIN_DENOM)
    den = a * b + r0 * (1 + c * uu) * b + r1 * (1 + c * vv) * a
    return [2 * r0 * b / den, 2 * r1 * a / den]


def _op(name, struct, vectors, terms, dots, out, coeffs, **kw):
    return row_op("poincare", name, struct, vectors, terms, dots, out, coeffs, **kw)


_XY = ((X, ALONE), (Y, ALONE))
_XYD = ((X, ALONE), (Y, ALONE), (Y, X))  # x, y, d = y - x
_XYS = ((X, ALONE), (Y, ALONE), (X, Y))  # x, y, d = x - y
_XYP = ((X, ALONE), (Y, ALONE), (X, Y, False, True))  # x, y, s = x + y
_ONE = ((X, ALONE),)
_SQ = ((0, 0),)

MOBIUS_ADD = _op(
    "mobius_add", "PoincareMobiusAdd", ("x", "y"), _XYP, ((0, 0), (1, 1), (2, 2)), (2, 0), _mobius_sum
)
MOBIUS_SUB = _op(
    "mobius_sub", "PoincareMobiusSub", ("x", "y"), _XYS, ((0, 0), (1, 1), (2, 2)), (2, 0), _mobius_sum
)
MOBIUS_SCALAR_MUL = _op(
    "mobius_scalar_mul", "PoincareMobiusScalarMul", ("x",), _ONE, _SQ, (0,), _scalar_mul, param="r"
)
EXPMAP0 = _op("expmap0", "PoincareExpmap0", ("u",), _ONE, _SQ, (0,), _expmap0)
LOGMAP0 = _op("logmap0", "PoincareLogmap0", ("y",), _ONE, _SQ, (0,), _logmap0)
EXPMAP = _op(
    "expmap",
    "PoincareExpmap",
    ("x", "u"),
    _XY,
    ((0, 0), (1, 1), (0, 1), (0, 1)),  # |x|^2, |u|^2, <x,u>, late |x + s u|^2
    (0, 1),
    _expmap,
    late=_expmap_late,
)
LOGMAP = _op("logmap", "PoincareLogmap", ("x", "y"), _XYD, ((0, 0), (1, 1), (2, 2)), (2, 1), _logmap)
DIST = _op("dist", "PoincareDist", ("x", "y"), _XYD, ((0, 0), (1, 1), (2, 2)), (0,), _dist, scalar_out=True)
DIST0 = _op("dist0", "PoincareDist0", ("x",), _ONE, _SQ, (0,), _dist0, scalar_out=True)
PROJECT = _op("project", "PoincareProject", ("x",), _ONE, _SQ, (0,), _project, uses_eps=True)
LAMBDA_X = _op("lambda_x", "PoincareLambdaX", ("x",), _ONE, _SQ, (0,), _lambda_x, scalar_out=True)
GYRATION = _op(
    "gyration",
    "PoincareGyration",
    ("a", "b", "u"),
    ((X, ALONE), (Y, ALONE), (Z, ALONE), (X, Y, False, True)),  # a, b, u, s = a + b
    ((0, 0), (1, 1), (3, 3), (3, 2), (1, 2), (3, 1)),  # aa bb ss su bu sb
    (2, 3, 1),
    _gyration,
)
TRANSP = _op(
    "transp",
    "PoincareTransp",
    ("x", "y", "v"),
    ((X, ALONE), (Y, ALONE), (Z, ALONE), (Y, X)),  # x, y, v, d = y - x
    ((0, 0), (1, 1), (3, 3), (3, 2), (0, 2), (3, 0)),  # xx yy dd dv xv dx
    (2, 3, 0),
    _transp,
)
GEODESIC = _op(
    "geodesic",
    "PoincareGeodesic",
    ("u", "v"),
    _XYD,
    ((0, 0), (1, 1), (2, 2)),
    (0, 1),
    _geodesic,
    param="t",
)
