"""Differential test of ``xpu_stone.compat.patch_geoopt``: random programs of geoopt
manifold calls, run once without the patch and once with it, must agree call by call.

A program (seeded) makes manifolds (PoincareBall, PoincareBallExact, Stereographic and
StereographicExact of both signs and k = 0, SphereProjection, Lorentz, Scaled versions;
fixed or learnable curvature of float32 or float64), changes their curvature in place
(``no_grad`` fill, ``.data`` fill, ``.data`` assignment), frees them (``gc.collect``)
and calls their methods: the wrapped ones (``compat.POINCARE_METHODS``,
``compat.LORENTZ_METHODS``) and the public methods that use them or sit next to them,
on random shapes (0 rows, D = 1, odd D, broadcast operands, ``keepdim``, ``dim``),
points near and outside the boundary, off the hyperboloid, non-finite rows, short
and zero tangent vectors. Inputs require grad at random: gradients (and, sometimes,
second derivatives) are compared too.

The patched run replays each call on the very inputs of the plain run (so that no
difference propagates) with manifolds made and changed in the same way. Oracle:
geoopt itself. Errors must be the same exception type; NaN on one side only is a
disagreement. Values must agree within ``atol + rtol * size`` (TOL per dtype;
``size``: the element's magnitude, or its vector's largest; ``rtol`` at least 4 eps of
the curvature's dtype, whose square roots and reciprocals geoopt rounds there). Where
they do not, geoopt's own rounding at those inputs is measured and allowed for:

* its spread: geoopt rerun (TorchScript's profiling executor changes its float32
  rounding between runs), on inputs perturbed by 4 ulps and on permuted coordinates;
  NOISE times that much more is allowed;
* the conditioning of the maths (the ball's conformal factor and the artanh of far
  points, the hyperboloid's size of far points and the arcosh of close ones): 64 eps
  times it, squared for first and cubed for second derivatives;
* geoopt's artanh (an absolute error of an ulp of 1, so a relative one of eps/z at
  small z, 5% at a zero row);
* alternatives the patched value may match instead: geoopt in float64 at the same
  curvature value (or its square root's), on the ball scaled by 32 (where geoopt's
  ``sqrt(|k| + 1e-15)`` and its ``k`` agree), and for methods calling wrapped ones
  (expmap_transp, retr_transp, ...) geoopt with those inner calls returning the
  patched values or computed in float64 (near the boundary a few ulps of a value
  crossing between geoopt's code and a served call move the rest by far more).

Each of these was needed by calls this test found; on them mpmath or geoopt in float64
showed the patched value to be the accurate one, or both sides to be rounding noise.

Each wrapped method's calls per dtype, served by xpu_stone or passed to geoopt (with
the reasons), are printed and written to ``$XPU_STONE_TEST_REPORT_DIR/
compat_differential_<device>.json`` when that variable is set. The test asserts that
every wrapped method was served on at least ``MIN_SERVED`` calls per dtype, at least
``MIN_SHARE`` of them all, and that xpu_stone never raised on a call the patch accepted.
"""

from __future__ import annotations

import functools
import gc
import json
import math
import os
import random
from collections import Counter, defaultdict

import pytest
import torch

geoopt = pytest.importorskip("geoopt")

from geoopt.manifolds.lorentz import math as lmath  # noqa: E402
from geoopt.manifolds.stereographic import math as gmath  # noqa: E402

from xpu_stone import compat  # noqa: E402

DTYPES = (torch.float32, torch.float64)
TOL = {torch.float32: (1e-5, 1e-6), torch.float64: (1e-9, 1e-12)}  # rtol, atol
NOISE = 8.0
PROGRAMS = 50  # per dtype
STEPS = 40  # per program
MIN_SERVED = 10  # per wrapped method and dtype
MIN_SHARE = 0.35  # of the wrapped methods' calls, served
WRAPPED = [f"Stereographic.{n}" for n in compat.POINCARE_METHODS] + [
    f"Lorentz.{n}" for n in compat.LORENTZ_METHODS
]

# Arguments: P point, T tangent (at the first P), X any vector, R / S one scalar a row
# (mobius_scalar_mul's r, geodesic's t), W a vector of weights, Z a tangent at the origin.
BALL_CALLS = {
    "dist": ("PP", ["keepdim"]),
    "dist2": ("PP", ["keepdim"]),
    "dist0": ("P", ["keepdim"]),
    "expmap": ("PT", ["project"]),
    "expmap0": ("T", ["project"]),
    "logmap": ("PP", []),
    "logmap0": ("P", []),
    "mobius_add": ("PP", ["project"]),
    "mobius_sub": ("PP", ["project"]),
    "mobius_coadd": ("PP", ["project"]),
    "projx": ("X", []),
    "proju": ("PT", []),
    "transp": ("PPT", []),
    "transp0": ("PT", []),
    "transp0back": ("PT", []),
    "lambda_x": ("P", ["keepdim"]),
    "retr": ("PT", []),
    "expmap_transp": ("PTT", ["project"]),
    "transp_follow_expmap": ("PTT", ["project"]),
    "transp_follow_retr": ("PTT", []),
    "retr_transp": ("PTT", []),
    "egrad2rgrad": ("PT", []),
    "inner": ("PTT", ["keepdim"]),
    "norm": ("PT", ["keepdim"]),
    "mobius_scalar_mul": ("RP", ["project"]),
    "mobius_pointwise_mul": ("WP", ["project"]),
    "geodesic": ("SPP", []),
    "geodesic_unit": ("SPT", ["project"]),
    "gyration": ("PPT", []),
    "antipode": ("P", []),
    "dist2plane": ("PPT", ["keepdim", "signed", "scaled"]),
    "random_normal": ("", []),
    "wrapped_normal": ("", []),
}
LORENTZ_CALLS = {
    "dist": ("PP", ["keepdim"]),
    "dist0": ("P", ["keepdim"]),
    "expmap": ("PT", ["norm_tan", "project"]),
    "expmap0": ("Z", ["project"]),
    "logmap": ("PP", []),
    "logmap0": ("P", []),
    "logmap0back": ("P", []),
    "projx": ("X", []),
    "proju": ("PX", []),
    "transp": ("PPT", []),
    "transp0": ("PT", []),
    "transp0back": ("PT", []),
    "transp_follow_expmap": ("PTT", ["project"]),
    "retr": ("PT", []),
    "egrad2rgrad": ("PX", []),
    "inner": ("PTT", ["keepdim"]),
    "norm": ("T", ["keepdim"]),
    "inner0": ("T", ["keepdim"]),
    "geodesic_unit": ("SPT", ["project"]),
    "random_normal": ("", []),
}
# Lorentz.egrad2rgrad changes its argument in place: no grad there
NO_GRAD = {("lorentz", "egrad2rgrad")}


# ------------------------------------------------------------------ manifolds
def _manifold_spec(rng: random.Random):
    """(class name, curvature-ish value, learnable, float64 k, scale or None, k of shape (1,),
    k left on the CPU)."""
    kind = rng.choice(["PoincareBall", "PoincareBall", "PoincareBallExact", "Stereographic", "Stereographic",
                       "StereographicExact", "SphereProjection", "Lorentz", "Lorentz", "Lorentz", "Lorentz"])  # fmt: skip
    mag = 10 ** rng.uniform(-1, 1)
    if kind in ("Stereographic", "StereographicExact"):
        value = rng.choice([-mag, -mag, mag, 0.0, -1e-9, 1e-9, -3e-6, -2e-5])
    else:
        value = mag
    scale = rng.choice([None, None, None, 10 ** rng.uniform(-0.5, 0.5)])
    k_vector = kind == "Lorentz" and rng.random() < 0.2
    return kind, value, rng.random() < 0.1, rng.random() < 0.25, scale, k_vector, rng.random() < 0.15


def _make(spec, device):
    """A fresh manifold; on a GPU run, some keep their curvature on the CPU."""
    kind, value, learnable, k64, scale, k_vector, k_on_cpu = spec
    if kind == "PoincareBall" or kind == "PoincareBallExact":
        m = getattr(geoopt, kind)(c=value, learnable=learnable)
    elif kind == "SphereProjection":
        m = geoopt.SphereProjection(k=value, learnable=learnable)
    elif kind == "Lorentz":
        m = geoopt.Lorentz(k=torch.tensor([value]) if k_vector else value, learnable=learnable)
    else:
        m = getattr(geoopt, kind)(k=value, learnable=learnable)
    if k64:
        m = m.double()
    m = m if k_on_cpu else m.to(device)
    return geoopt.Scaled(m, scale) if scale is not None else m


def _base(m):
    return m.base if isinstance(m, geoopt.Scaled) else m


def _family(m) -> str:
    return "lorentz" if isinstance(_base(m), geoopt.Lorentz) else "ball"


def _change_curvature(m, rng: random.Random) -> None:
    """Sets a new curvature in place, three ways (only one bumps the tensor's version)."""
    base = _base(m)
    name = next(n for n in ("isp_c", "isp_k", "k") if n in base._parameters)
    param = base._parameters[name]
    new = 10 ** rng.uniform(-1, 1)
    if name == "k" and isinstance(base, geoopt.Stereographic):
        new = rng.choice([-new, -new, new])
    if name != "k":
        new = math.log(math.expm1(new))  # softplus^-1
    how = rng.choice(["no_grad", "data_fill", "data_assign"])
    if how == "no_grad":
        with torch.no_grad():
            param.fill_(new)
    elif how == "data_fill":
        param.data.fill_(new)
    else:
        param.data = torch.full_like(param, new)


# ------------------------------------------------------------------ inputs
class Inputs:
    """Random tensors for one call, from the program's generator."""

    def __init__(self, gen: torch.Generator, rng: random.Random, dtype, device):
        self.gen, self.rng, self.dtype, self.device = gen, rng, dtype, device

    def _u(self, shape, lo=0.0, hi=1.0):
        return torch.rand(shape, generator=self.gen, dtype=torch.float64) * (hi - lo) + lo

    def _n(self, shape):
        return torch.randn(shape, generator=self.gen, dtype=torch.float64)

    def _out(self, t):
        if self.rng.random() < 0.02 and t.numel():  # a non-finite element
            t = t.clone()
            t.view(-1)[self.rng.randrange(t.numel())] = self.rng.choice([math.nan, math.inf, -math.inf])
        return t.to(self.dtype).to(self.device)

    def _rows(self, shape, choices):
        """One factor a row: choices are (weight, low exponent, high exponent) of 10^U or a constant."""
        rows = shape[:-1] + (1,)
        out = torch.empty(rows, dtype=torch.float64)
        pick = self._u(rows)
        acc = 0.0
        total = sum(w for w, *_ in choices)
        for w, *spec in choices:
            lo, hi = acc / total, (acc + w) / total
            mask = (pick >= lo) & (pick < hi)
            val = (
                spec[0](rows) if callable(spec[0]) else torch.full(rows, float(spec[0]), dtype=torch.float64)
            )
            out[mask] = val[mask]
            acc += w
        return out

    def direction(self, shape):
        z = self._n(shape)
        return z / z.norm(dim=-1, keepdim=True).clamp_min(1e-300)

    def ball_point(self, shape, kv):
        """Points of the ball of radius 1/sqrt(-k): inside, near or on the boundary, zero,
        a few outside; any scale for k >= 0."""
        if kv < 0:
            frac = self._rows(shape, [
                (50, lambda r: self._u(r, 0, 0.95)),
                (20, lambda r: 1 - 10 ** self._u(r, -7.5, -2)),
                (8, lambda r: 10 ** self._u(r, -9, -2)),
                (5, 0.0),
                (12, lambda r: self._u(r, 0.95, 0.999)),
                (3, lambda r: 1 + self._u(r, 1e-3, 0.5)),
            ])  # fmt: skip
            radius = 1 / math.sqrt(-kv)
        else:
            frac = self._rows(shape, [(90, lambda r: 10 ** self._u(r, -3, 0.5)), (10, 0.0)])
            radius = 1 / math.sqrt(kv) if kv > 0 else 1.0
        return self._out(self.direction(shape) * frac * radius)

    def tangent(self, shape):
        scale = self._rows(
            shape,
            [(80, lambda r: 10 ** self._u(r, -6, 0.7)), (8, 0.0), (12, lambda r: 10 ** self._u(r, -12, -6))],
        )
        return self._out(self._n(shape) * scale)

    def lorentz_point(self, shape, kv):
        if self.rng.random() < 0.08:  # not a point of the hyperboloid
            return self._out(self._n(shape) * 2)
        sk = math.sqrt(kv)
        r = self._rows(shape, [(70, lambda s: self._u(s, 0, 3)), (10, lambda s: 10 ** self._u(s, -9, -3)), (8, 0.0), (12, lambda s: self._u(s, 3, 7))])  # fmt: skip
        space = self.direction(shape[:-1] + (shape[-1] - 1,)) * sk * torch.sinh(r / sk)
        time = torch.sqrt(kv + (space * space).sum(-1, keepdim=True))
        return self._out(torch.cat([time, space], -1))

    def lorentz_tangent(self, x, shape, kv):
        """Tangent at x (a float64 projection), a few raw vectors."""
        raw = self._n(shape) * self._rows(shape, [(80, lambda r: 10 ** self._u(r, -6, 0.5)), (8, 0.0), (12, lambda r: 10 ** self._u(r, -10, -4))])  # fmt: skip
        if self.rng.random() < 0.1:
            return self._out(raw)
        x64 = x.detach().cpu().to(torch.float64)
        k = torch.tensor(kv, dtype=torch.float64)
        return self._out(lmath.project_u(x64, raw, k=k) if torch.isfinite(x64).all() else raw)

    def origin_tangent(self, shape):
        v = self._n(shape) * self._rows(shape, [(85, lambda r: 10 ** self._u(r, -5, 0.5)), (15, lambda r: 10 ** self._u(r, -10, -5))])  # fmt: skip
        if self.rng.random() < 0.6:
            v[..., 0] = 0
        return self._out(v)

    def per_row(self, shape, lo, hi):
        return self._out(self._u(shape[:-1] + (1,), lo, hi))

    def weights(self, d):
        return self._out(self._n((d,)))


def _shapes(rng: random.Random, n_args: int, family: str):
    """Shapes of n_args tensors: one batch shape, a feature count and a broadcast pattern."""
    d = 1 if rng.random() < 0.06 else rng.choice([2, 3, 5, 8] if family == "ball" else [2, 3, 3, 4, 6, 9])
    batch = (
        (0,)
        if rng.random() < 0.05
        else rng.choice([(), (1,), (rng.randint(2, 7),), (rng.randint(1, 3), rng.randint(2, 4))])
    )
    shapes = [batch + (d,)] * n_args
    pattern = rng.random()
    if n_args > 1 and pattern < 0.15:
        shapes[1] = (d,)  # one row against many
    elif n_args > 1 and pattern < 0.3 and batch and batch[0] > 0:
        shapes[0] = (batch[0], 1, d)
        shapes[1] = (rng.randint(1, 3), d)
        shapes[2:] = [(batch[0], 1, d)] * (n_args - 2)
    return shapes


def _build_call(m, family, name, rng, inputs):
    """(args, kwargs) of one call; the tangent arguments belong to the first point."""
    kinds, opts = (BALL_CALLS if family == "ball" else LORENTZ_CALLS)[name]
    kv = float(_base(m).k.detach().reshape(-1)[0])
    if name in ("random_normal", "wrapped_normal"):
        shape = (rng.randint(0, 5), rng.choice([1, 2, 3, 6]))
        kw = (
            {"mean": inputs.ball_point(shape[-1:], kv).to(_base(m).k.dtype)}
            if name == "wrapped_normal"
            else {}
        )
        return list(shape), kw
    tensor_kinds = kinds.replace("R", "").replace("S", "")
    shapes = iter(_shapes(rng, max(len(tensor_kinds), 1), family))
    args, first = [], None
    for kind in kinds:
        if kind == "R" or kind == "S":
            continue
        shape = next(shapes)
        if kind == "P":
            t = inputs.ball_point(shape, kv) if family == "ball" else inputs.lorentz_point(shape, kv)
            first = t if first is None else first
        elif kind == "T":
            if family == "ball":
                t = inputs.tangent(shape)
            else:
                t = inputs.lorentz_tangent(
                    first if first is not None else inputs.lorentz_point(shape, kv), shape, kv
                )
        elif kind == "Z":
            t = inputs.origin_tangent(shape)
        elif kind == "W":
            t = inputs.weights(shape[-1])
        else:  # X
            t = inputs.tangent(shape) * (10 ** rng.uniform(-1, 2))
        args.append(t)
    if "R" in kinds:
        args.insert(0, inputs.per_row(args[0].shape, -3, 3))
    if "S" in kinds:
        args.insert(0, inputs.per_row(args[0].shape, -0.5, 1.5))
    kw = {o: rng.random() < 0.5 for o in opts}
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    ndims = {t.dim() for t in tensors}
    if rng.random() < 0.15 and len(ndims) == 1:
        kw["dim"] = rng.choice([-1, ndims.pop() - 1])
    elif rng.random() < 0.05 and len(ndims) == 1 and ndims.pop() >= 2 and name not in ("random_normal",):
        args = [a.movedim(-1, 0) for a in args]
        kw["dim"] = 0
    return args, kw


# ------------------------------------------------------------------ one call
def _flatten(out):
    if isinstance(out, tuple):
        return list(out)
    return [out]


def _execute(m, name, args, kw, grad: bool, second: bool, weights, call=None):
    """(outputs, first derivatives, second derivatives, out types) or the exception type;
    ``call(ins, kw)`` replaces ``getattr(m, name)(*ins, **kw)``."""
    ins = [a.detach().clone().requires_grad_(grad) if isinstance(a, torch.Tensor) else a for a in args]
    kw = {k: (v.detach().clone() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    try:
        out = call(ins, kw) if call is not None else getattr(m, name)(*ins, **kw)
    except Exception as err:  # noqa: BLE001 - both runs must raise alike
        return type(err)
    outs = _flatten(out)
    types = [type(o) for o in outs]
    leaves = [a for a in ins if isinstance(a, torch.Tensor)] + [p for p in m.parameters() if p.requires_grad]
    firsts, seconds = None, None
    live = [(o, w) for o, w in zip(outs, weights or []) if o.requires_grad]
    if live and leaves:
        loss = sum((o * w).sum() for o, w in live)
        g = torch.autograd.grad(loss, leaves, allow_unused=True, create_graph=second)
        firsts = [None if x is None else x.detach() for x in g]
        if second and any(x is not None and x.requires_grad for x in g):
            q = sum((x * x).sum() for x in g if x is not None and x.requires_grad)
            seconds = [
                None if x is None else x.detach() for x in torch.autograd.grad(q, leaves, allow_unused=True)
            ]
    return [o.detach() for o in outs], firsts, seconds, types


def _jitter(args, size: float, seed: int):
    """``args`` with each float tensor element multiplied by 1 + U(-size, size)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for a in args:
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            f = 1 + size * (2 * torch.rand(a.shape, generator=gen, dtype=torch.float64) - 1)
            a = (a.cpu().to(torch.float64) * f).to(a.dtype).to(a.device)
        out.append(a)
    return out


def _slack(expected, m, name, args, kw, grad, second, weights, dtype, seed):
    """What geoopt's own rounding allows at these inputs: (spreads, alternative geoopt
    results, artanh errors, conditioning). Spreads: elementwise max distance of geoopt's
    results to ``expected`` when run again (TorchScript's profiling executor changes its
    float32 rounding between runs), on inputs perturbed by a few ulps and on permuted
    coordinates. Alternatives: geoopt in float64 at the same curvature value (or its
    square root's), and on the rescaled ball (see the helpers)."""

    def again(manifold, a, w):
        _seed(seed)
        return _execute(manifold, name, a, kw, grad, second, w)

    ulps = 4 * torch.finfo(dtype).eps
    variants = [again(m, a, weights) for a in (args, _jitter(args, ulps, 1), _jitter(args, ulps, 2))]
    variants += [_permuted(m, name, args, kw, grad, second, weights, seed, p) for p in (1, 2)]
    w64 = [w.double() for w in weights] if weights else weights
    wide_args = [a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
    wide = [again(_widen(m, root), wide_args, w64) for root in (False, True)]
    rescaled = _rescaled(m, name, args, kw, grad, second, weights, seed)
    spreads = None
    for v in variants:
        if isinstance(v, type) or isinstance(expected, type):
            continue
        d = _distances(expected, v)
        spreads = (
            d
            if spreads is None
            else [None if a is None or b is None else torch.maximum(a, b) for a, b in zip(spreads, d)]
        )
    alternatives = [_all(v) for v in (*wide, rescaled) if not isinstance(v, type)]
    return (
        spreads,
        alternatives,
        _artanh_error(expected, m, name, args, kw, dtype),
        _conditioning(m, name, args),
    )


def _conditioning(m, name, args) -> float:
    """How ill-conditioned the call's points make it: the ball's largest conformal
    factor 2 / (1 - c|x|^2) (near the boundary 1 - c|x|^2 cancels), the hyperboloid's
    largest c|x|^2 (far out its Minkowski products cancel) and, between two points,
    1 / (1 - z^2) and 1 / (v^2 - 1) (see below); at least 1. geoopt and the kernels lose about log10 of it
    in digits in their results, twice that in first and three times in second
    derivatives, each in its own way."""
    k = float(_base(m).k.detach().reshape(-1)[0])
    kinds = (BALL_CALLS if _family(m) == "ball" else LORENTZ_CALLS)[name][0]
    points = [a.detach().double() for kind, a in zip(kinds, args) if kind == "P" and a.numel()]
    worst = 1.0
    for p in points if k != 0 else []:
        sq = (p**2).sum(-1)
        if _family(m) == "ball" and k < 0:
            worst = max(worst, 2 / (1 + k * sq).abs().clamp_min(1e-300).min().item())
        elif _family(m) == "lorentz":
            worst = max(worst, (sq / k).max().item())
    if _family(m) == "ball" and k < 0 and name in ("dist", "logmap") and len(points) == 2:
        # artanh(z), z = sqrt(c)|(-x) + y|, of far apart points: z near 1
        z2 = -k * (gmath.mobius_add(-points[0], points[1], k=torch.tensor(k, dtype=torch.float64)) ** 2).sum(
            -1
        )
        worst = max(worst, 1 / (1 - z2).abs().clamp_min(1e-300).min().item())
    if _family(m) == "lorentz" and name in ("dist", "logmap") and len(points) == 2:
        # geoopt's arcosh(v), v = -<x,y>_L / k, of close points: its relative error grows
        # as 1 / (v^2 - 1) there
        xy = points[0] * points[1]
        v = (xy[..., 0] - xy[..., 1:].sum(-1)) / k
        worst = max(worst, 1 / (v * v - 1).clamp_min(1e-300).min().item())
    return worst


def _rescaled(m, name, args, kw, grad, second, weights, seed):
    """The ball's dist, logmap and expmap as geoopt computes them in float64 on the ball
    of curvature 1024 k, points and vectors divided by 32 and results multiplied by 32
    (the same maths, each step exact in binary): geoopt's square roots of
    ``|k| + 1e-15`` next to its Mobius sums in ``k`` then differ by 1e-18, not 1e-15. The
    kernels take one curvature; near the boundary that 1e-15 moves geoopt's results by
    more than rounding does."""
    k = _base(m).k.detach()
    if _family(m) != "ball" or name not in ("dist", "logmap", "expmap") or not float(k.reshape(-1)[0]) < 0:
        return type(None)
    wide = geoopt.Stereographic(k=k.double() * 1024)
    wide = geoopt.Scaled(wide, m.scale.double()) if isinstance(m, geoopt.Scaled) else wide

    def call(ins, kw):
        return (32 * getattr(wide, name)(*[t.double() / 32 for t in ins], **kw)).to(ins[0].dtype)

    _seed(seed)
    return _execute(m, name, args, kw, grad, second, weights, call)


def _permuted(m, name, args, kw, grad, second, weights, seed, p):
    """geoopt's results with the coordinates (the space ones on the hyperboloid)
    permuted and the results permuted back: the same maths, other rounding in its
    sums (near the boundary its Mobius sums cancel to a few digits, which perturbing
    the inputs does not show)."""
    vecs = [a for a in args if isinstance(a, torch.Tensor) and a.dim() and a.shape[-1] > 1]
    if not vecs or kw.get("dim", -1) not in (-1, vecs[0].dim() - 1) or weights is None and grad:
        return type(None)
    d = vecs[0].shape[-1]
    lorentz = _family(m) == "lorentz"
    perm = torch.randperm(d - lorentz, generator=torch.Generator().manual_seed(p)) + lorentz
    perm = torch.cat([torch.arange(lorentz), perm]).to(vecs[0].device)
    back = torch.argsort(perm)
    moved = [isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[-1] == d for a in args]
    rank = max(a.dim() for a in vecs)
    _seed(seed)
    res = _execute(m, name, [a[..., perm] if mv else a for a, mv in zip(args, moved)], kw, grad, second,
                   [w[..., perm] if w.dim() == rank and w.shape[-1] == d else w for w in weights] if weights else weights)  # fmt: skip
    if isinstance(res, type):
        return res
    outs, firsts, seconds, types = res
    outs = [o[..., back] if o.dim() == rank and o.shape[-1] == d else o for o in outs]

    def unmove(gs):
        if gs is None:
            return None
        flags = moved + [False] * (len(gs) - len(moved))  # the manifold's parameters last
        return [g[..., back] if g is not None and f else g for g, f in zip(gs, flags)]

    return outs, unmove(firsts), unmove(seconds), types


def _inner_replaced(m, name, args, kw, grad, second, weights, seed, accurate: bool):
    """A composite method (one that calls wrapped methods, as expmap_transp or
    transp_follow_retr) run by geoopt with each inner wrapped call replaced: by the
    patched value as a constant offset to geoopt's result (so geoopt's derivatives at
    the patched values), or, ``accurate``, by geoopt in float64 at the exact curvature.
    Between geoopt's code and a served call, values cross that each side rounds its own
    way, and near the boundary the other side's derivatives amplify a few ulps of them
    by far more than any change of the composite's inputs would. Call while patched."""
    swapped = {key: key[0].__dict__[key[1]] for key in compat._originals}

    def replaced(original, wrapper):
        @functools.wraps(original)
        def method(self, *a, **k):
            if accurate:
                wide = [t.double() if isinstance(t, torch.Tensor) else t for t in a]
                dtype = next(t.dtype for t in a if isinstance(t, torch.Tensor))
                return original(_widen(self), *wide, **k).to(dtype)
            out = original(self, *a, **k)
            with torch.no_grad():
                value = wrapper(self, *[t.detach() if isinstance(t, torch.Tensor) else t for t in a], **k)
            return out + (value - out).detach()

        return method

    try:
        for (cls, n), wrapper in swapped.items():
            setattr(cls, n, replaced(compat._originals[cls, n], wrapper))
        _seed(seed)
        result = _execute(m, name, args, kw, grad, second, weights)
    finally:
        for (cls, n), wrapper in swapped.items():
            setattr(cls, n, wrapper)
    return None if isinstance(result, type) else _all(result)


# geoopt's artanh(z) = (log(1 + z) - log(1 - z)) / 2 has an absolute error of about one
# ulp of 1, so a relative one of eps/z: at small z (points and differences near 0, where
# geoopt also counts norms below 1e-15 as 1e-15) its dist, dist0, logmap, logmap0 and
# their gradients are off by that much (5% at a zero row in float64); the kernels' artanh
# is accurate there.
ARTANH_METHODS = {"dist", "dist0", "logmap", "logmap0"}


def _artanh_error(expected, m, name, args, kw, dtype):
    """Per item, the relative error 4 eps / z of geoopt's artanh in each row (for the
    items of a ball's ``ARTANH_METHODS`` call along the last dim), or None."""
    base = _base(m)
    if name not in ARTANH_METHODS or _family(m) != "ball" or isinstance(expected, type):
        return None
    tensors = [a.detach().to(torch.float64).cpu() for a in args]
    if kw.get("dim", -1) not in (-1, tensors[0].dim() - 1) or any(t.numel() == 0 for t in tensors):
        return None
    k = base.k.detach().to(torch.float64).cpu()
    if not float(k) < 0:
        return None
    w = tensors[0] if len(tensors) == 1 else gmath.mobius_add(-tensors[0], tensors[1], k=k)
    z = torch.sqrt(k.abs() + 1e-15) * w.norm(dim=-1, keepdim=True).clamp_min(1e-15)
    rows = 4 * torch.finfo(dtype).eps / z  # batch + (1,)
    out = []
    for i, item in enumerate(_all(expected)):
        if item is None:
            out.append(None)
        elif i == 0 and name in ("dist", "dist0") and not kw.get("keepdim", False):
            out.append(rows[..., 0])
        else:
            out.append(_reduce_rows(rows, item.shape))
    return out


def _reduce_rows(rows, shape):
    """``rows`` (batch + (1,)) brought to ``shape`` (a tensor broadcast against the
    batch): the largest value over the rows that meet in one element."""
    r = rows
    pad = (1,) * (r.dim() - len(shape)) + tuple(shape)
    for i, (n, want) in enumerate(zip(r.shape, pad)):
        if want == 1 and n > 1:
            r = r.amax(i, keepdim=True)
    return r.reshape(r.shape[r.dim() - len(shape) :]).expand(shape) if len(shape) else r.reshape(())


def _widen(m, root: bool = False):
    """A float64 manifold with the curvature value of ``m`` set exactly (a Stereographic
    or Lorentz one: a float64 softplus of PoincareBall's parameter would move it by a
    few ulps, which near the boundary moves results by far more); with ``root``, on the
    ball, the value whose ``|k| + 1e-15`` in float64 is the ``|k| + 1e-15`` of ``k`` in
    its dtype (a float32 one drops the 1e-15): the square root that geoopt takes, and
    the patch with it."""
    base = _base(m)
    k = base.k.detach()
    kv = k.to(torch.float64)
    if root and _family(m) == "ball":
        kv = torch.sign(kv) * ((k.abs() + 1e-15).to(torch.float64) - 1e-15)
    if isinstance(base, geoopt.Lorentz):
        wide = geoopt.Lorentz(k=kv)
    else:
        wide = (
            geoopt.StereographicExact if isinstance(base, geoopt.StereographicExact) else geoopt.Stereographic
        )(k=kv)
    return geoopt.Scaled(wide, m.scale.double()) if isinstance(m, geoopt.Scaled) else wide


def _all(res):
    outs, firsts, seconds, _ = res
    return outs + (firsts or []) + (seconds or [])


def _distances(a, b):
    out = []
    for x, y in zip(_all(a), _all(b)):
        if x is None or y is None or x.shape != y.shape:
            out.append(None)
            continue
        d = (x.to(torch.float64) - y.to(torch.float64).to(x.device)).abs()
        out.append(torch.where(torch.isnan(d), torch.full_like(d, math.inf), d))
    return out


def _coarsest_eps(m) -> float:
    """The machine epsilon of the coarsest of ``m``'s curvature and scale: geoopt takes
    square roots and reciprocals of them in their own dtype."""
    dtypes = [_base(m).k.dtype] + ([m.scale.dtype] if isinstance(m, geoopt.Scaled) else [])
    return max(torch.finfo(d).eps for d in dtypes)


def _scale(ref, d: int):
    """What an element's error is relative to: its size, or, in a vector of ``d``
    features, the largest of the vector's (rounding errors go with the vector's norm)."""
    size = ref.abs().nan_to_num(0.0, posinf=math.inf)
    if d and ref.dim() and ref.shape[-1] == d:
        size = size.amax(-1, keepdim=True).expand_as(size)
    return size


def _disagreement(a, b, k_eps: float, slack=None, d: int = 0) -> str | None:
    """Why results a (geoopt) and b (patched) disagree, or None. Tolerances by each
    result's dtype, the relative one at least 4 eps of the curvature's dtype; with
    ``slack`` (spreads, alternative geoopt results, artanh errors, conditioning) an
    element also passes within NOISE spreads, geoopt's artanh error and 64 eps times the
    conditioning (to the power 1, 2, 3 for outputs, first and second derivatives;
    relative) of geoopt's result or of an alternative (see _slack, _inner_replaced)."""
    if isinstance(a, type) or isinstance(b, type):
        return None if a is b else f"outcomes {a} vs {b}"
    if a[3] != b[3]:
        return f"output types {a[3]} vs {b[3]}"
    spread, alternatives, art, cond = slack if slack is not None else (None, [], None, 1.0)
    order = [1] * len(a[0]) + [2] * len(a[1] or []) + [3] * len(a[2] or [])  # outputs, 1st, 2nd derivatives
    for i, (x, y) in enumerate(zip(_all(a), _all(b))):
        if (x is None) != (y is None):  # autograd's None for a zero gradient
            if bool(((y if x is None else x) != 0).any()):
                return f"item {i}: None vs a nonzero tensor"
            continue
        if x is None:
            continue
        if x.shape != y.shape or x.dtype != y.dtype:
            return f"item {i}: {tuple(x.shape)} {x.dtype} vs {tuple(y.shape)} {y.dtype}"
        rtol, atol = TOL[x.dtype]
        rtol = max(rtol, 4 * k_eps, 64 * torch.finfo(x.dtype).eps * min(cond, 1e30) ** order[i])
        xd, yd = x.to(torch.float64), y.to(torch.float64)
        extra = 0.0
        if spread is not None and spread[i] is not None:
            extra = NOISE * spread[i].to(xd.device)
        if art is not None and art[i] is not None:
            extra = extra + art[i].to(xd.device) * torch.maximum(xd.abs(), yd.abs())
        # an alternative run can list other items (a float64 manifold's k is no leaf, so
        # it has no k gradient): only an item of the same shape stands for this one
        refs = [xd] + [
            alt[i].to(torch.float64).to(xd.device)
            for alt in alternatives
            if len(alt) == len(_all(a)) and alt[i] is not None and alt[i].shape == x.shape
        ]
        ok = torch.zeros(xd.shape, dtype=torch.bool, device=xd.device)
        for ref in refs:
            allowed = atol + rtol * _scale(ref, d) + extra
            ok |= (ref == yd) | (torch.isnan(ref) & torch.isnan(yd)) | ((ref - yd).abs() <= allowed)
            ok |= torch.isinf(torch.as_tensor(allowed)).expand_as(ok)  # geoopt itself unbounded there
        if not bool(ok.all()):
            allowed = atol + rtol * _scale(xd, d) + extra
            j = int((~ok).reshape(-1).to(torch.int8).argmax())
            return (
                f"item {i}: geoopt {xd.reshape(-1)[j].item()!r} vs patched {yd.reshape(-1)[j].item()!r}"
                f" (allowed {torch.as_tensor(allowed).expand_as(xd).reshape(-1)[j].item():.3g})"
            )
    return None


# ------------------------------------------------------------------ programs
def _play(seed: int, dtype, device, replay=None, counts=None, failures=None):
    """Runs program ``seed``. Without ``replay`` (geoopt alone) returns the calls it made;
    with it (patched), replays them on the same inputs and records disagreements."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    inputs = Inputs(gen, rng, dtype, device)
    alive, record = [], []
    for step in range(STEPS):
        action = rng.random()
        if action < 0.12 or not alive:
            alive.append(_make(_manifold_spec(rng), device))
            if len(alive) > 3:
                alive.pop(rng.randrange(len(alive)))
            if rng.random() < 0.5:
                gc.collect(1)  # a Scaled holds its methods bound to itself: a cycle
            continue
        m = alive[rng.randrange(len(alive))]
        if action < 0.18:
            _change_curvature(m, rng)
            continue
        family = _family(m)
        table = BALL_CALLS if family == "ball" else LORENTZ_CALLS
        wrapped = compat.POINCARE_METHODS if family == "ball" else compat.LORENTZ_METHODS
        name = rng.choice(sorted(wrapped) if rng.random() < 0.5 else sorted(table))
        args, kw = _build_call(m, family, name, rng, inputs)
        grad = (family, name) not in NO_GRAD and rng.random() < 0.4
        second = grad and rng.random() < 0.25
        call_seed = rng.randrange(2**31)
        if replay is None:
            _seed(call_seed)
            plain = _execute(m, name, args, kw, False, False, None)
            weights = None
            if grad and not isinstance(plain, type):
                wg = torch.Generator().manual_seed(call_seed)
                weights = [
                    torch.randn(o.shape, generator=wg, dtype=torch.float64).to(o.dtype).to(o.device)
                    for o in plain[0]
                ]
            _seed(call_seed)
            result = _execute(m, name, args, kw, grad, second, weights)
            record.append((args, kw, weights, result))
            continue
        args, kw, weights, expected = replay[len(record)]
        record.append(None)
        before = compat.stats()["methods"]
        _seed(call_seed)
        got = _execute(m, name, args, kw, grad, second, weights)
        _count(counts, before, compat.stats()["methods"], dtype)
        d = next((a.shape[-1] for a in args if isinstance(a, torch.Tensor) and a.dim()), 0)
        why = _disagreement(expected, got, _coarsest_eps(m), d=d)
        if why is not None:
            compat.unpatch_geoopt()
            try:
                slack = _slack(expected, m, name, args, kw, grad, second, weights, dtype, call_seed)
            finally:
                compat.patch_geoopt(devices=(torch.device(device).type,))
            why = _disagreement(expected, got, _coarsest_eps(m), slack, d)
        if why is not None and name not in (
            compat.POINCARE_METHODS if family == "ball" else compat.LORENTZ_METHODS
        ):
            for accurate in (False, True):
                alt = _inner_replaced(m, name, args, kw, grad, second, weights, call_seed, accurate)
                slack[1].extend([alt] if alt is not None else [])
            why = _disagreement(expected, got, _coarsest_eps(m), slack, d)
        if why is not None:
            failures.append(f"seed {seed} step {step} {type(m).__name__}({_base(m).k.detach().reshape(-1)[0].item():.4g}"
                            f"{', learnable' if _base(m).k.requires_grad else ''}).{name} {dtype} "
                            f"shapes {[tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]} kw {kw} "
                            f"grad {grad}/{second}: {why}")  # fmt: skip
    return record


def _seed(seed: int) -> None:
    """Seeds what geoopt's random points draw from (torch.manual_seed costs ~5 ms)."""
    torch.random.default_generator.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed(seed)


def _count(counts, before, after, dtype):
    for name, entry in after.items():
        old = before.get(name, {"calls": 0, "fallbacks": 0, "reasons": {}})
        key = f"{name}|{str(dtype).replace('torch.', '')}"
        counts[key]["served"] += entry["calls"] - old["calls"]
        counts[key]["fallback"] += entry["fallbacks"] - old["fallbacks"]
        for reason, n in entry["reasons"].items():
            counts[key]["reason: " + reason] += n - old["reasons"].get(reason, 0)


def _run_all(device: str, programs=range(PROGRAMS)):
    """Runs ``programs`` (seeds; a float64 program's seed is 1000 more) both ways."""
    counts: dict[str, Counter] = defaultdict(Counter)
    failures: list[str] = []
    calls = 0
    for dtype in DTYPES:
        for p in programs:
            seed = 1000 * DTYPES.index(dtype) + p
            compat.unpatch_geoopt()
            record = _play(seed, dtype, device)
            calls += len(record)
            compat.patch_geoopt(devices=(torch.device(device).type,))
            try:
                _play(seed, dtype, device, replay=record, counts=counts, failures=failures)
            finally:
                compat.unpatch_geoopt()
    return counts, failures, calls


def _report(device, counts, calls):
    """Prints and (with $XPU_STONE_TEST_REPORT_DIR) writes the calls of each wrapped
    method per dtype, served or passed to geoopt (and why); returns the table."""
    table = {key: {k: v for k, v in sorted(c.items()) if v} for key, c in sorted(counts.items())}
    served = sum(c.get("served", 0) for c in table.values())
    fallback = sum(c.get("fallback", 0) for c in table.values())
    report = {"device": device, "programs": PROGRAMS * len(DTYPES), "calls": calls, "served": served,
              "fallback": fallback, "per_method_dtype": table}  # fmt: skip
    print(
        f"\ncompat differential ({device}): {calls} calls, of the wrapped methods {served} served, {fallback} to geoopt"
    )
    for key, c in table.items():
        print(f"  {key:32s} served {c.get('served', 0):4d}  fallback {c.get('fallback', 0):4d}  "
              + ", ".join(f"{k[8:]} {v}" for k, v in c.items() if k.startswith("reason: ")))  # fmt: skip
    out_dir = os.environ.get("XPU_STONE_TEST_REPORT_DIR")
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, f"compat_differential_{device}.json"), "w") as f:
            json.dump(report, f, indent=1)
    return table


def _check(device):
    counts, failures, calls = _run_all(device)
    table = _report(device, counts, calls)
    assert not failures, f"{len(failures)} disagreements:\n" + "\n".join(failures[:20])
    raised = [key for key, c in table.items() if any("xpu_stone raised" in k for k in c)]
    assert not raised, f"xpu_stone raised on calls the patch accepted: {raised}"
    served = sum(c.get("served", 0) for c in table.values())
    share = served / max(served + sum(c.get("fallback", 0) for c in table.values()), 1)
    assert share >= MIN_SHARE, f"only {share:.0%} of the wrapped methods' calls served by xpu_stone"
    for name in WRAPPED:
        for dtype in DTYPES:
            served = table.get(f"{name}|{str(dtype).replace('torch.', '')}", {}).get("served", 0)
            assert served >= MIN_SERVED, f"{name} {dtype}: only {served} calls served by xpu_stone"


def test_random_programs_agree_with_geoopt_cpu():
    _check("cpu")


@pytest.mark.gpu
def test_random_programs_agree_with_geoopt_cuda():
    _check("cuda")
