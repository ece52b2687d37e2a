r"""Hyperboloid maths written plainly in torch from the textbook formulas
(arcosh of the Minkowski product, Nickel & Kiela 2018; geoopt's lorentz module
with k = 1/c), independent of the kernels' rewritten forms. The oracle of the
tests on well-conditioned inputs; ``c`` is a float or a tensor broadcasting
against ``x[..., :1]``. A row whose point arguments are off the hyperboloid (the
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


def _arcosh(z):
    return torch.acosh(z.clamp_min(1.0))


def dist(x, y, c=1.0, keepdim=False):
    c = _c(c, x)
    return _keep(nan_off(_arcosh(-c * inner(x, y, keepdim=True)) / c.sqrt(), c, x, y), keepdim)


def dist0(x, c=1.0, keepdim=False):
    c = _c(c, x)
    return _keep(nan_off(_arcosh(c.sqrt() * x[..., :1]) / c.sqrt(), c, x), keepdim)


def expmap0(u, c=1.0):
    sc = _c(c, u).sqrt()
    us = u[..., 1:]
    n = us.norm(dim=-1, keepdim=True).clamp_min(EPS)
    return torch.cat((torch.cosh(sc * n) / sc, torch.sinh(sc * n) * us / (sc * n)), -1)


def logmap0(y, c=1.0):
    sc = _c(c, y).sqrt()
    ys = y[..., 1:]
    n = ys.norm(dim=-1, keepdim=True).clamp_min(EPS)
    out = torch.cat((torch.zeros_like(y[..., :1]), _arcosh(sc * y[..., :1]) * ys / (sc * n)), -1)
    return nan_off(out, c, y)


def expmap(x, u, c=1.0):
    sc = _c(c, x).sqrt()
    n = norm(u, keepdim=True)
    return nan_off(torch.cosh(sc * n) * x + torch.sinh(sc * n) * u / (sc * n), c, x)


def logmap(x, y, c=1.0):
    c = _c(c, x)
    w = y + c * inner(x, y, keepdim=True) * x
    return dist(x, y, c, keepdim=True) * w / norm(w, keepdim=True)


def project(x, c=1.0):
    xs = x[..., 1:]
    return torch.cat(((1 / _c(c, x) + (xs * xs).sum(-1, keepdim=True)).sqrt(), xs), -1)


def proj_tan(x, u, c=1.0):
    return nan_off(u + _c(c, x) * inner(x, u, keepdim=True) * x, c, x)


def transp(x, y, v, c=1.0):
    """Transport along the geodesic via the log maps (geoopt's form):
    v - <log_x y, v>_L / d^2 (log_x y + log_y x)."""
    lxy = logmap(x, y, c)
    lyx = logmap(y, x, c)
    d2 = dist(x, y, c, keepdim=True) ** 2
    return v - inner(lxy, v, keepdim=True) / d2.clamp_min(EPS) * (lxy + lyx)


def geodesic(u, v, t, c=1.0):
    return expmap(u, _c(t, u) * logmap(u, v, c), c)
