r"""Independent reference of the Lorentz, Klein and conversion ops: each op written
once from its textbook formula, evaluated at 60 digits with mpmath (one row at a
time: :func:`evaluate`) or in float64 torch with autograd (all rows: :func:`batch`).
Nothing here comes from the kernels or ``xpu_stone.engine.rowwise_cpu``.

How the GPU tests use it (as ``tests/mp_reference.py`` serves the Poincaré ops):
the float64 reference is the fast path, and every row on which it disagrees with
the kernel beyond the tolerance is settled at 60 digits
(``helpers.settled_error`` / ``helpers.settled_grad_errors`` with ``oracle=`` this
module). The fast path is ``xpu_stone.reference`` (an independent plain-torch
transcription of the same textbook maths) for every op where that module computes
the same function of its inputs accurately in float64, and :func:`batch` for the
rest (``OWN_FAST_PATH``).

Which formula defines an op on the hyperboloid. Test inputs are rounded to their
dtype, so a hyperboloid point is off :math:`\langle x,x\rangle_L = -1/c` by its
rounding (for a point at distance 20 in float64 the constraint is off by ~10,
relative to ``1/c``), and a tangent vector is tangent only up to rounding.
Expressions that are equal on the hyperboloid then give different values, and
their ambient gradients differ even on it (by a multiple of the normal
:math:`Jx`). The ops are documented (``xpu_stone.lorentz``) by the forms below,
which use the chord :math:`d = y - x` and the space part: the forms that stay
well conditioned for nearby points far from the origin. Each is the textbook
expression rewritten through an identity that holds on the hyperboloid; the
CPU test ``tests/test_mp_reference_models.py`` checks every identity at 60 digits
on exact hyperboloid points and tangent vectors, and checks the conversions and
distances against each other (isometries) and against the Poincaré oracle.

* ``dist``: :math:`\operatorname{arcosh}(-c\langle x,y\rangle_L)/\sqrt c
  = \frac{2}{\sqrt c}\operatorname{asinh}(\frac{\sqrt c}{2}\|y-x\|_L)`
  (:math:`\cosh 2a = 1 + 2\sinh^2 a`, :math:`\langle d,d\rangle_L = -2/c - 2\langle x,y\rangle_L`).
* ``dist0``, ``logmap0``: :math:`\operatorname{arcosh}(\sqrt c x_0)
  = \operatorname{asinh}(\sqrt c\|x_{1:}\|)` (:math:`c x_0^2 = 1 + c\|x_{1:}\|^2`).
* ``logmap``: :math:`d_c(x,y)\,w/\|w\|_L` with :math:`w = y + c\langle x,y\rangle_L x
  = d - \frac c2\langle d,d\rangle_L x` and :math:`\|w\|_L^2 = \langle d,d\rangle_L(1 + \frac c4\langle d,d\rangle_L)`.
* ``geodesic``: :math:`(\sinh((1-t)\theta)u + \sinh(t\theta)v)/\sinh\theta` with
  :math:`\theta = \sqrt c\,d_c(u,v)` from the chord.
* ``transp``: :math:`v + \frac{c\langle y,v\rangle_L}{1 - c\langle x,y\rangle_L}(x+y)`
  (``xpu_stone.reference.lorentz`` uses geoopt's log-map form, equal only for tangent ``v``).

The Klein and conversion formulas are functions on :math:`\mathbb R^n` (no
constraint). The Klein distance is the textbook arcosh written through an
identity of :math:`\mathbb R^n` that keeps small distances' digits (its float64
arcosh has none left, and a NaN gradient, for nearby points); the Klein geodesic
is the hyperboloid's seen through the Klein chart (lift, geodesic, project back).
"""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import torch

from xpu_stone.reference import convert as RC
from xpu_stone.reference import klein as RK
from xpu_stone.reference import lorentz as RL

REFERENCES = {"lorentz": RL, "klein": RK, "convert": RC}

mp.mp.dps = 60


class _Row:
    """One row at 60 digits: vectors are numpy arrays of mpf, scalars mpf."""

    tiny = mp.mpf("1e-300")  # squared norms floored here: a zero vector gets each formula's limit
    sqrt, asinh, sinh, cosh = mp.sqrt, mp.asinh, mp.sinh, mp.cosh

    @staticmethod
    def dot(a, b):
        return mp.fsum(a * b)

    @staticmethod
    def head(x):
        return x[0]

    @staticmethod
    def tail(x):
        return x[1:]

    @staticmethod
    def cat(h, t):
        return np.concatenate((np.array([h], dtype=object), t))

    @classmethod
    def floor(cls, s):
        return max(s, cls.tiny)

    @staticmethod
    def where(cond, a, b):
        return a if cond else b

    @staticmethod
    def zero(like):
        return mp.mpf(0)


class _Batch:
    """All rows in float64 torch (features on the last dim; scalars keep it as 1)."""

    tiny = 1e-200
    sqrt, asinh, sinh, cosh = torch.sqrt, torch.asinh, torch.sinh, torch.cosh

    @staticmethod
    def dot(a, b):
        return (a * b).sum(-1, keepdim=True)

    @staticmethod
    def head(x):
        return x[..., :1]

    @staticmethod
    def tail(x):
        return x[..., 1:]

    @staticmethod
    def cat(h, t):
        shape = torch.broadcast_shapes(h.shape[:-1], t.shape[:-1])
        return torch.cat((h.expand(*shape, 1), t.expand(*shape, t.shape[-1])), -1)

    @classmethod
    def floor(cls, s):
        return torch.clamp_min(s, cls.tiny)

    @staticmethod
    def where(cond, a, b):
        return torch.where(cond, a, b)

    @staticmethod
    def zero(like):
        return torch.zeros_like(like)


# ------------------------------------------------------------------ Lorentz
def _minkowski(B, u, v):
    r""":math:`\langle u, v\rangle_L = -u_0 v_0 + \sum_{i\ge1} u_i v_i`."""
    return B.dot(B.tail(u), B.tail(v)) - B.head(u) * B.head(v)


def _chord(B, x, y):
    """<d, d>_L of the chord d = y - x (floored) and d."""
    d = y - x
    return B.floor(_minkowski(B, d, d)), d


def lorentz_inner(B, u, v, c):
    return _minkowski(B, u, v)


def lorentz_norm(B, u, c):
    r""":math:`\sqrt{\max(\langle u,u\rangle_L, 0)}`."""
    return B.sqrt(B.floor(_minkowski(B, u, u)))


def lorentz_dist(B, x, y, c):
    sc = B.sqrt(c)
    dd, _ = _chord(B, x, y)
    return 2 / sc * B.asinh(sc * B.sqrt(dd) / 2)


def lorentz_dist0(B, x, c):
    sc = B.sqrt(c)
    xs = B.tail(x)
    return B.asinh(sc * B.sqrt(B.floor(B.dot(xs, xs)))) / sc


def lorentz_expmap0(B, u, c):
    r""":math:`(\cosh(\sqrt c\|u_{1:}\|)/\sqrt c,\ \sinh(\sqrt c\|u_{1:}\|)u_{1:}/(\sqrt c\|u_{1:}\|))`."""
    sc = B.sqrt(c)
    us = B.tail(u)
    th = sc * B.sqrt(B.floor(B.dot(us, us)))
    return B.cat(B.cosh(th) / sc, B.sinh(th) / th * us)


def lorentz_logmap0(B, y, c):
    sc = B.sqrt(c)
    ys = B.tail(y)
    th = sc * B.sqrt(B.floor(B.dot(ys, ys)))
    return B.cat(B.zero(B.head(y)), B.asinh(th) / th * ys)


def lorentz_expmap(B, x, u, c):
    r""":math:`\cosh(\sqrt c\|u\|_L)x + \sinh(\sqrt c\|u\|_L)u/(\sqrt c\|u\|_L)`."""
    th = B.sqrt(c) * lorentz_norm(B, u, c)
    return B.cosh(th) * x + B.sinh(th) / th * u


def lorentz_logmap(B, x, y, c):
    sc = B.sqrt(c)
    dd, d = _chord(B, x, y)
    s = sc * B.sqrt(dd) / 2
    w = d - c * dd / 2 * x
    return 2 / sc * B.asinh(s) / (B.sqrt(dd) * B.sqrt(1 + s * s)) * w


def lorentz_project(B, x, c):
    r""":math:`(\sqrt{1/c + \|x_{1:}\|^2},\ x_{1:})`."""
    xs = B.tail(x)
    return B.cat(B.sqrt(1 / c + B.dot(xs, xs)), xs)


def lorentz_proj_tan(B, x, u, c):
    return u + c * _minkowski(B, x, u) * x


def lorentz_transp(B, x, y, v, c):
    return v + c * _minkowski(B, y, v) / (1 - c * _minkowski(B, x, y)) * (x + y)


def lorentz_geodesic(B, u, v, t, c):
    dd, _ = _chord(B, u, v)
    th = 2 * B.asinh(B.sqrt(c) * B.sqrt(dd) / 2)
    return (B.sinh((1 - t) * th) * u + B.sinh(t * th) * v) / B.sinh(th)


# ------------------------------------------------------------------- Klein
def _sq(B, x):
    return B.dot(x, x)


def klein_dist(B, u, v, c):
    r""":math:`\operatorname{asinh}\sqrt{c(A\|d\|^2 + c\langle u,d\rangle^2)/(AB)}/\sqrt c` with
    :math:`A = 1 - c\|u\|^2`, :math:`B = 1 - c\|v\|^2`, :math:`d = v - u`: the textbook
    :math:`\operatorname{arcosh}((1 - c\langle u,v\rangle)/\sqrt{AB})/\sqrt c` through
    :math:`(1 - c\langle u,v\rangle)^2 - AB = c(A\|d\|^2 + c\langle u,d\rangle^2)`
    (an identity on all of :math:`\mathbb R^n`; its terms are non-negative, so it keeps
    the digits of small distances)."""
    d = v - u
    a, b = 1 - c * _sq(B, u), 1 - c * _sq(B, v)
    sh2 = c * (a * _sq(B, d) + c * B.dot(u, d) ** 2) / (a * b)
    return B.asinh(B.sqrt(B.floor(sh2))) / B.sqrt(c)


def klein_geodesic(B, u, v, t, c):
    """The hyperboloid's geodesic in the Klein chart: lift, geodesic, project back."""
    return convert_lorentz_to_klein(
        B,
        lorentz_geodesic(B, convert_klein_to_lorentz(B, u, c), convert_klein_to_lorentz(B, v, c), t, c),
        c,
    )


def klein_project(B, x, c, eps):
    r"""``x`` if :math:`\|x\| \le (1-\epsilon)/\sqrt c`, else ``x`` rescaled to that norm."""
    maxnorm = (1 - eps) / B.sqrt(c)
    n = B.sqrt(B.floor(_sq(B, x)))
    return B.where(n > maxnorm, x / n * maxnorm, x)


def klein_lorentz_factor(B, x, c):
    return 1 / B.sqrt(1 - c * _sq(B, x))


# ------------------------------------------------------------- conversions
def convert_poincare_to_lorentz(B, x, c):
    r""":math:`((1 + c\|x\|^2)/\sqrt c,\ 2x)/(1 - c\|x\|^2)`."""
    n2 = _sq(B, x)
    return B.cat((1 + c * n2) / (B.sqrt(c) * (1 - c * n2)), 2 * x / (1 - c * n2))


def convert_lorentz_to_poincare(B, y, c):
    return B.tail(y) / (1 + B.sqrt(c) * B.head(y))


def convert_poincare_to_klein(B, x, c):
    return 2 * x / (1 + c * _sq(B, x))


def convert_klein_to_poincare(B, k, c):
    return k / (1 + B.sqrt(1 - c * _sq(B, k)))


def convert_lorentz_to_klein(B, y, c):
    return B.tail(y) / (B.sqrt(c) * B.head(y))


def convert_klein_to_lorentz(B, k, c):
    g = 1 / B.sqrt(1 - c * _sq(B, k))
    return B.cat(g / B.sqrt(c), g * k)


# ------------------------------------------------------------------ access
OPS = {
    f"{family}.{name}": globals()[f"{family}_{name}"]
    for family, names in (
        ("lorentz", ("inner", "norm", "dist", "dist0", "expmap0", "logmap0", "expmap", "logmap", "project",
                     "proj_tan", "transp", "geodesic")),
        ("klein", ("dist", "geodesic", "project", "lorentz_factor")),
        ("convert", ("poincare_to_lorentz", "lorentz_to_poincare", "poincare_to_klein", "klein_to_poincare",
                     "lorentz_to_klein", "klein_to_lorentz")),
    )
    for name in names
}  # fmt: skip
SCALAR_OUT = {"lorentz.inner", "lorentz.norm", "lorentz.dist", "lorentz.dist0", "klein.dist",
              "klein.lorentz_factor"}  # fmt: skip
SCALAR_ARG = {"lorentz.geodesic": 2, "klein.geodesic": 2}  # position of the per-row scalar t
# Ops whose float64 fast path is batch() rather than xpu_stone.reference. Lorentz:
# the reference evaluates a textbook form that is a different function off the
# hyperboloid (and whose gradient differs on it by a normal component). Klein: the
# reference's arcosh loses all digits of small distances in float64 (its gradient
# is NaN or noise where u and v are close), on a tenth of the stress grid's rows.
OWN_FAST_PATH = {"lorentz.dist", "lorentz.dist0", "lorentz.logmap0", "lorentz.logmap", "lorentz.transp",
                 "lorentz.geodesic", "klein.dist", "klein.geodesic"}  # fmt: skip


def evaluate(name, args, c, eps=None):
    """Op ``name`` ("family.op") on one row at 60 digits: ``args`` are lists
    (vectors) or numbers (the per-row t); returns a list, or a number for ops with
    one output per row."""
    row = [np.array([mp.mpf(v) for v in a], dtype=object) if isinstance(a, list) else mp.mpf(a) for a in args]
    extra = (mp.mpf(eps),) if name == "klein.project" else ()
    out = OPS[name](_Row, *row, mp.mpf(c), *extra)
    return out if name in SCALAR_OUT else list(out)


def batch(name, args, c, eps=None):
    """Op ``name`` on float64 tensors (rows on the leading dims), differentiable;
    ``c`` a float or a tensor broadcasting against ``x[..., :1]``."""
    like = args[0]
    c = torch.as_tensor(c, dtype=torch.float64, device=like.device)
    extra = (eps,) if name == "klein.project" else ()
    out = OPS[name](_Batch, *args, c, *extra)
    return out.squeeze(-1) if name in SCALAR_OUT else out


def fast_path(name, args, c, eps=None):
    """The float64 fast path of op ``name`` (differentiable): ``xpu_stone.reference``,
    or :func:`batch` for the ops of ``OWN_FAST_PATH``. ``args``, ``c``: float64."""
    if name in OWN_FAST_PATH:
        return batch(name, args, c, eps)
    family, op = name.split(".")
    fn = getattr(REFERENCES[family], op)
    return fn(*args, c=c, eps=eps) if name == "klein.project" else fn(*args, c=c)


def hyperboloid_row(d, theta, gen, c=1.0):
    """A 60-digit point of the hyperboloid <x,x>_L = -1/c at distance ``theta / sqrt(c)``
    from the origin in a random direction (for the identity checks)."""
    direction = [mp.mpf(float(v)) for v in torch.randn(d - 1, generator=gen, dtype=torch.float64)]
    n = mp.sqrt(mp.fsum(v * v for v in direction))
    sc = mp.sqrt(mp.mpf(c))
    r = mp.mpf(theta)
    return np.array([mp.cosh(r) / sc] + [mp.sinh(r) / sc * v / n for v in direction], dtype=object)


def tangent_row(x, gen, scale, c=1.0):
    """A 60-digit tangent vector at ``x``: a random vector projected, u + c<x,u>_L x."""
    u = np.array([mp.mpf(float(v)) * scale for v in torch.randn(len(x), generator=gen)], dtype=object)
    return lorentz_proj_tan(_Row, x, u, mp.mpf(c))


def digits(a, b) -> float:
    """Agreement of two 60-digit results: -log10 of the normwise relative difference."""
    a = np.atleast_1d(np.array(a, dtype=object))
    b = np.atleast_1d(np.array(b, dtype=object))
    num = mp.sqrt(mp.fsum((p - q) ** 2 for p, q in zip(a, b)))
    den = mp.sqrt(mp.fsum(q * q for q in b))
    return math.inf if num == 0 else float(-mp.log10(num / max(den, mp.mpf("1e-300"))))
