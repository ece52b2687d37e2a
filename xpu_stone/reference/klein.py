r"""Klein-model maths written plainly in torch through the hyperboloid (the
textbook route: lift, compute, project back), independent of the kernels'
closed forms. ``c`` is a float or a tensor broadcasting against ``x[..., :1]``.
A row whose point arguments lie outside the closed disk (:math:`c\|x\|^2 > 1`)
gives NaN.
"""

from __future__ import annotations

import torch

from . import lorentz as L

EPS = 1e-15

ARG_KINDS = {"dist": "pp", "geodesic": "pps", "project": "w", "lorentz_factor": "p"}


def _c(c, like):
    return torch.as_tensor(c, dtype=like.dtype, device=like.device)


def _sq(x):
    return (x * x).sum(-1, keepdim=True)


def nan_outside(value, c, *points):
    """``value`` with NaN in the rows where a point is outside the closed disk (or not finite)."""
    bad = torch.zeros((), dtype=torch.bool, device=value.device)
    for p in points:
        bad = bad | ~(_c(c, p) * _sq(p) <= 1)
    return torch.where(bad, torch.full((), float("nan"), dtype=value.dtype, device=value.device), value)


def to_lorentz(k, c=1.0):
    c = _c(c, k)
    g = 1 / (1 - c * _sq(k)).clamp_min(EPS).sqrt()
    return torch.cat((g / c.sqrt(), g * k), -1)


def from_lorentz(y, c=1.0):
    return y[..., 1:] / (_c(c, y).sqrt() * y[..., :1])


def dist(u, v, c=1.0, keepdim=False):
    c = _c(c, u)
    cosh = (1 - c * (u * v).sum(-1, keepdim=True)) / ((1 - c * _sq(u)) * (1 - c * _sq(v))).sqrt()
    d = nan_outside(torch.acosh(cosh.clamp_min(1.0)) / c.sqrt(), c, u, v)
    return d if keepdim else d.squeeze(-1)


def geodesic(u, v, t, c=1.0):
    return nan_outside(from_lorentz(L.geodesic(to_lorentz(u, c), to_lorentz(v, c), t, c), c), c, u, v)


def project(x, c=1.0, eps=1e-5):
    maxnorm = (1 - eps) / _c(c, x).sqrt()
    n = _sq(x).clamp_min(EPS * EPS).sqrt()
    return torch.where(n > maxnorm, x / n * maxnorm, x)


def lorentz_factor(x, c=1.0, keepdim=False):
    g = nan_outside(1 / (1 - _c(c, x) * _sq(x)).sqrt(), c, x)
    return g if keepdim else g.squeeze(-1)


def einstein_midpoint(x, weights=None, dim=-2, c=1.0, keepdim=False):
    g = lorentz_factor(x, c, keepdim=True)
    if weights is not None:
        g = g * weights[..., None]
    return (g * x).sum(dim, keepdim) / g.sum(dim, keepdim)
