r"""Hyperboloid maths written plainly in torch from the textbook formulas
(Nickel & Kiela 2018; geoopt's lorentz module with k = 1/c), independent of the
kernels. The oracle of the tests and of the tuner's check; ``c`` is a float or a
tensor broadcasting against ``x[..., :1]``. Where textbook expressions that are
equal on the hyperboloid differ off it (inputs rounded to a dtype are off it, and
ambient gradients differ even on it, by a normal component), the form is the one
:mod:`xpu_stone.lorentz` documents as the op (from the chord y - x and the space
part): dist, dist0, logmap0, logmap, transp, geodesic; tests/test_mp_reference_models.py
checks each against the arcosh forms at 60 digits on exact hyperboloid points. A row whose point arguments are off the hyperboloid (the
lower sheet, or :math:`|c\langle x,x\rangle_L + 1|` above ``OFF`` times
:math:`1 + c\|x\|^2`) gives NaN, not a number computed from a non-point.
"""

from __future__ import annotations

import torch

EPS = 1e-15
OFF = 2.0**-6  # relative distance to the hyperboloid still counted as on it (the package's convention)

# p = a point of the hyperboloid, v = a tangent vector at the first point,
# w = any vector, s = one number per row.
ARG_KINDS = {
    "inner": "pp",
    "norm": "v",
    "dist": "pp",
    "dist0": "p",
    "expmap0": "w",
    "logmap0": "p",
    "expmap": "pv",
    "logmap": "pp",
    "project": "w",
    "proj_tan": "pw",
    "transp": "ppv",
    "geodesic": "pps",
}


def _c(c, like):
    return torch.as_tensor(c, dtype=like.dtype, device=like.device)


def _keep(x, keepdim):
    return x if keepdim else x.squeeze(-1)


def nan_off(value, c, *points):
    """``value`` with NaN in the rows (``value[..., :1]`` broadcasting) where a point is
    off the hyperboloid (or not finite)."""
    bad = torch.zeros((), dtype=torch.bool, device=value.device)
    for p in points:
        c_p = _c(c, p)
        sq = (p * p).sum(-1, keepdim=True)
        m = c_p * inner(p, p, keepdim=True) + 1
        bad = bad | ~((p[..., :1] > 0) & (m.abs() <= OFF * (1 + c_p * sq)) & torch.isfinite(sq))
    return torch.where(bad, torch.full((), float("nan"), dtype=value.dtype, device=value.device), value)


def inner(u, v, c=1.0, keepdim=False):
    prod = u * v
    return _keep(prod[..., 1:].sum(-1, keepdim=True) - prod[..., :1], keepdim)


def norm(u, c=1.0, keepdim=False):
    return _keep(inner(u, u, keepdim=True).clamp_min(EPS * EPS).sqrt(), keepdim)


def _chord(x, y):
    """<d, d>_L of the chord d = y - x (at least EPS^2)."""
    return inner(y - x, y - x, keepdim=True).clamp_min(EPS * EPS)


def dist(x, y, c=1.0, keepdim=False):
    """arcosh(-c<x,y>_L)/sqrt(c), as 2 asinh(sqrt(c)/2 |y - x|_L)/sqrt(c) (equal on the
    hyperboloid; the function the op defines off it, and its ambient gradient)."""
    sc = _c(c, x).sqrt()
    return _keep(nan_off(2 / sc * torch.asinh(sc * _chord(x, y).sqrt() / 2), c, x, y), keepdim)


def dist0(x, c=1.0, keepdim=False):
    """arcosh(sqrt(c) x_0)/sqrt(c), as asinh(sqrt(c) |x_s|)/sqrt(c)."""
    sc = _c(c, x).sqrt()
    n = (x[..., 1:] ** 2).sum(-1, keepdim=True).clamp_min(EPS * EPS).sqrt()
    return _keep(nan_off(torch.asinh(sc * n) / sc, c, x), keepdim)


def expmap0(u, c=1.0):
    sc = _c(c, u).sqrt()
    us = u[..., 1:]
    n = us.norm(dim=-1, keepdim=True).clamp_min(EPS)
    return torch.cat((torch.cosh(sc * n) / sc, torch.sinh(sc * n) * us / (sc * n)), -1)


def logmap0(y, c=1.0):
    sc = _c(c, y).sqrt()
    ys = y[..., 1:]
    n = (ys * ys).sum(-1, keepdim=True).clamp_min(EPS * EPS).sqrt()
    out = torch.cat((torch.zeros_like(y[..., :1]), torch.asinh(sc * n) * ys / (sc * n)), -1)
    return nan_off(out, c, y)


def expmap(x, u, c=1.0):
    sc = _c(c, x).sqrt()
    n = norm(u, keepdim=True)
    return nan_off(torch.cosh(sc * n) * x + torch.sinh(sc * n) * u / (sc * n), c, x)


def logmap(x, y, c=1.0):
    """d(x, y) w / |w|_L with w = y + c<x,y>_L x, as w = d - c<d,d>_L/2 x and
    |w|_L^2 = <d,d>_L (1 + c<d,d>_L/4) from the chord d = y - x (equal on the hyperboloid)."""
    c = _c(c, x)
    dd = _chord(x, y)
    w = y - x - c * dd / 2 * x
    return dist(x, y, c, keepdim=True) * w / (dd * (1 + c * dd / 4)).sqrt()


def project(x, c=1.0):
    xs = x[..., 1:]
    return torch.cat(((1 / _c(c, x) + (xs * xs).sum(-1, keepdim=True)).sqrt(), xs), -1)


def proj_tan(x, u, c=1.0):
    return nan_off(u + _c(c, x) * inner(x, u, keepdim=True) * x, c, x)


def transp(x, y, v, c=1.0):
    """Parallel transport v + c<y,v>_L / (1 - c<x,y>_L) (x + y) (geoopt's log-map form
    v - <log_x y, v>_L / d^2 (log_x y + log_y x) equals it for tangent v only)."""
    c = _c(c, x)
    out = v + c * inner(y, v, keepdim=True) / (1 - c * inner(x, y, keepdim=True)) * (x + y)
    return nan_off(out, c, x, y)


def geodesic(u, v, t, c=1.0):
    """exp_u(t log_u v) = (sinh((1-t) th) u + sinh(t th) v) / sinh(th), th = sqrt(c) d(u, v)."""
    th = _c(c, u).sqrt() * dist(u, v, c, keepdim=True)
    t = _c(t, u)
    return (torch.sinh((1 - t) * th) * u + torch.sinh(t * th) * v) / torch.sinh(th)
