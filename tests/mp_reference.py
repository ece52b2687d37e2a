"""60-digit reference of the Poincare ops (mpmath), one row at a time.

The float64 torch reference is itself inaccurate where the maths is
ill-conditioned (points near the boundary: 1 - c|x|^2 loses its digits inside
composed Mobius sums). The tests use it as a fast path and settle every row on
which it disagrees with xpu_stone by evaluating that row here.
"""

from __future__ import annotations

import mpmath as mp

mp.mp.dps = 60


def _dot(a, b):
    return mp.fsum(x * y for x, y in zip(a, b))


def _lin(sa, a, sb, b):
    return [sa * x + sb * y for x, y in zip(a, b)]


def _norm(a):
    return mp.sqrt(_dot(a, a))


def mobius_add(x, y, c):
    xy, xx, yy = _dot(x, y), _dot(x, x), _dot(y, y)
    den = 1 + 2 * c * xy + c * c * xx * yy
    return _lin((1 + 2 * c * xy + c * yy) / den, x, (1 - c * xx) / den, y)


def _neg(a):
    return [-v for v in a]


def _scale_fn(f, n):  # f(n)/n with its limit at 0
    return f(n) / n if n != 0 else mp.mpf(1)


def mobius_scalar_mul(r, x, c):
    sc, n = mp.sqrt(c), _norm(x)
    if n == 0:
        return [mp.mpf(0)] * len(x)
    return [mp.tanh(r * mp.atanh(sc * n)) / (sc * n) * v for v in x]


def expmap0(u, c):
    sc, n = mp.sqrt(c), _norm(u)
    s = _scale_fn(mp.tanh, sc * n)
    return [s * v for v in u]


def logmap0(y, c):
    sc, n = mp.sqrt(c), _norm(y)
    s = _scale_fn(mp.atanh, sc * n)
    return [s * v for v in y]


def lambda_x(x, c):
    return 2 / (1 - c * _dot(x, x))


def expmap(x, u, c):
    sc, n = mp.sqrt(c), _norm(u)
    if n == 0:
        return list(x)
    s = mp.tanh(sc * lambda_x(x, c) * n / 2) / (sc * n)
    return mobius_add(x, [s * v for v in u], c)


def logmap(x, y, c):
    sc = mp.sqrt(c)
    w = mobius_add(_neg(x), y, c)
    n = _norm(w)
    if n == 0:
        return [mp.mpf(0)] * len(x)
    f = 2 / (sc * lambda_x(x, c)) * mp.atanh(sc * n) / n
    return [f * v for v in w]


def dist(x, y, c):
    sc = mp.sqrt(c)
    return 2 / sc * mp.atanh(sc * _norm(mobius_add(_neg(x), y, c)))


def dist0(x, c):
    sc = mp.sqrt(c)
    return 2 / sc * mp.atanh(sc * _norm(x))


def project(x, c, eps):
    maxnorm = (1 - eps) / mp.sqrt(c)
    n = _norm(x)
    return [v / n * maxnorm for v in x] if n > maxnorm else list(x)


def gyration(a, b, u, c):
    ab = mobius_add(a, b, c)
    return mobius_add(_neg(ab), mobius_add(a, mobius_add(b, u, c), c), c)


def transp(x, y, v, c):
    s = lambda_x(x, c) / lambda_x(y, c)
    return [s * e for e in gyration(y, _neg(x), v, c)]


def geodesic(u, v, t, c):
    return mobius_add(u, mobius_scalar_mul(t, mobius_add(_neg(u), v, c), c), c)


def mobius_sub(x, y, c):
    return mobius_add(x, _neg(y), c)


def evaluate(name, args, c, eps=None):
    """Op ``name`` on one row: ``args`` are lists of floats (vectors) or floats."""
    row = [[mp.mpf(v) for v in a] if isinstance(a, list) else mp.mpf(a) for a in args]
    c = mp.mpf(c)
    if name == "project":
        return project(*row, c, mp.mpf(eps))
    return globals()[name](*row, c)
