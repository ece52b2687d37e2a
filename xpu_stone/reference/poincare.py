r"""Poincare-ball maths written plainly in torch, after Ganea et al. (2018) and
geoopt's stereographic module, independent of the kernels' rewritten forms.
The oracle of the tests; ``c`` is a float or a tensor broadcasting against
``x[..., :1]``. The clamps (``EPS``) serve points of the closed ball; a row whose
point arguments lie outside it (:math:`c\|x\|^2 > 1`) gives NaN, as the
formulas' artanh would, not a clamped number.
"""

from __future__ import annotations

import torch

EPS = 1e-15

# What each op takes, in order: p = a point of the ball, v = a tangent vector
# (or any vector, for project), s = one number per row. Test and demo data are
# built from this.
ARG_KINDS = {
    "mobius_add": "pp",
    "mobius_sub": "pp",
    "mobius_scalar_mul": "sp",
    "expmap0": "v",
    "logmap0": "p",
    "expmap": "pv",
    "logmap": "pp",
    "dist": "pp",
    "dist0": "p",
    "project": "v",
    "lambda_x": "p",
    "gyration": "ppp",
    "transp": "ppv",
    "geodesic": "pps",
}


def arguments(name, points, vector, scalar):
    """The arguments of op ``name`` drawn from ``points`` (used in order), a
    tangent ``vector`` and a per-row ``scalar``."""
    points = iter(points)
    return tuple(next(points) if k == "p" else vector if k == "v" else scalar for k in ARG_KINDS[name])


def _c(c, like):
    return torch.as_tensor(c, dtype=like.dtype, device=like.device)


def _sq(x):
    return (x * x).sum(-1, keepdim=True)


def _norm(x):
    return _sq(x).clamp_min(EPS * EPS).sqrt()


def _artanh(z):
    return torch.atanh(z.clamp(-1 + EPS, 1 - EPS))


def _tanh(z):
    return torch.tanh(z.clamp(-15, 15))


def nan_outside(value, c, *points):
    """``value`` with NaN in the rows (``value[..., :1]`` broadcasting) where a point is
    outside the closed ball (or not finite)."""
    bad = torch.zeros((), dtype=torch.bool, device=value.device)
    for p in points:
        bad = bad | ~(_c(c, p) * _sq(p) <= 1)
    return torch.where(bad, torch.full((), float("nan"), dtype=value.dtype, device=value.device), value)


def _mobius_add(x, y, c):
    """x + y for any vectors (the gyration and the maps use it on tangent vectors too)."""
    c = _c(c, x)
    xy = (x * y).sum(-1, keepdim=True)
    num = (1 + 2 * c * xy + c * _sq(y)) * x + (1 - c * _sq(x)) * y
    return num / (1 + 2 * c * xy + c * c * _sq(x) * _sq(y)).clamp_min(EPS)


def mobius_add(x, y, c=1.0):
    return nan_outside(_mobius_add(x, y, c), c, x, y)


def mobius_sub(x, y, c=1.0):
    return mobius_add(x, -y, c)


def mobius_scalar_mul(r, x, c=1.0):
    sc = _c(c, x).sqrt()
    n = _norm(x)
    return nan_outside(_tanh(_c(r, x) * _artanh(sc * n)) * x / (sc * n), c, x)


def expmap0(u, c=1.0):
    sc = _c(c, u).sqrt()
    n = _norm(u)
    return _tanh(sc * n) * u / (sc * n)


def logmap0(y, c=1.0):
    sc = _c(c, y).sqrt()
    n = _norm(y)
    return nan_outside(_artanh(sc * n) * y / (sc * n), c, y)


def lambda_x(x, c=1.0, keepdim=False):
    lam = nan_outside(2 / (1 - _c(c, x) * _sq(x)).clamp_min(EPS), c, x)
    return lam if keepdim else lam.squeeze(-1)


def expmap(x, u, c=1.0):
    sc = _c(c, x).sqrt()
    n = _norm(u)
    second = _tanh(sc * lambda_x(x, c, keepdim=True) * n / 2) * u / (sc * n)
    return mobius_add(x, second, c)


def logmap(x, y, c=1.0):
    sc = _c(c, x).sqrt()
    sub = mobius_add(-x, y, c)
    n = _norm(sub)
    return 2 / (sc * lambda_x(x, c, keepdim=True)) * _artanh(sc * n) * sub / n


def dist(x, y, c=1.0, keepdim=False):
    sc = _c(c, x).sqrt()
    d = 2 / sc * _artanh(sc * mobius_add(-x, y, c).norm(dim=-1, keepdim=True))
    return d if keepdim else d.squeeze(-1)


def dist0(x, c=1.0, keepdim=False):
    sc = _c(c, x).sqrt()
    d = nan_outside(2 / sc * _artanh(sc * x.norm(dim=-1, keepdim=True)), c, x)
    return d if keepdim else d.squeeze(-1)


def project(x, c=1.0, eps=1e-5):
    maxnorm = (1 - eps) / _c(c, x).sqrt()
    n = _norm(x)
    return torch.where(n > maxnorm, x / n * maxnorm, x)


def gyration(a, b, u, c=1.0):
    """gyr[a, b] u = (-(a + b)) + (a + (b + u)), from its definition (``u`` any vector)."""
    out = _mobius_add(-_mobius_add(a, b, c), _mobius_add(a, _mobius_add(b, u, c), c), c)
    return nan_outside(out, c, a, b)


def transp(x, y, v, c=1.0):
    return gyration(y, -x, v, c) * lambda_x(x, c, keepdim=True) / lambda_x(y, c, keepdim=True)


def geodesic(u, v, t, c=1.0):
    return mobius_add(u, mobius_scalar_mul(t, mobius_add(-u, v, c), c), c)
