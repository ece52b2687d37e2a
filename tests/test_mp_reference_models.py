"""The oracle of the Lorentz, Klein and conversion ops (tests/mp_reference_models.py),
on CPU: its forms against the textbook ones at 60 digits on exact hyperboloid
points and tangent vectors; the conversions as isometries against the Poincaré
oracle (tests/mp_reference.py); its float64 evaluation against xpu_stone.reference;
and the CPU path of the ops against it on the stress grid (float64, a few hundred
rows: forward, gradients of every input and of a per-row c)."""

from __future__ import annotations

import mp_reference
import mp_reference_models as MR
import mpmath as mp
import numpy as np
import pytest
import torch
from helpers import MODEL_OPS, model_args, model_call, model_eps, rel_err, settled_error, settled_grad_errors

CURVATURES = (1e-3, 0.7, 1e3)
ROW = MR._Row


# ---------------------------------------------------- textbook forms (60 digits)
def _inner(u, v):
    return -u[0] * v[0] + mp.fsum(a * b for a, b in zip(u[1:], v[1:]))


def _origin(d, c):
    return np.array([1 / mp.sqrt(c)] + [mp.mpf(0)] * (d - 1), dtype=object)


def _dist(x, y, c):
    return mp.acosh(-c * _inner(x, y)) / mp.sqrt(c)


def _expmap(x, u, c):
    n = mp.sqrt(c) * mp.sqrt(_inner(u, u))
    return mp.cosh(n) * x + mp.sinh(n) / n * u


def _logmap(x, y, c):
    w = y + c * _inner(x, y) * x
    return _dist(x, y, c) / mp.sqrt(_inner(w, w)) * w


def _transp(x, y, v, c):
    """geoopt's form: v - <log_x y, v>_L / d^2 (log_x y + log_y x)."""
    lxy, lyx = _logmap(x, y, c), _logmap(y, x, c)
    return v - _inner(lxy, v) / _dist(x, y, c) ** 2 * (lxy + lyx)


def _klein_dist(u, v, c):
    uu, vv, uv = (mp.fsum(a * b for a, b in zip(p, q)) for p, q in ((u, u), (v, v), (u, v)))
    return mp.acosh((1 - c * uv) / mp.sqrt((1 - c * uu) * (1 - c * vv))) / mp.sqrt(c)


def _ball_row(d, radius, gen, c):
    v = [mp.mpf(float(a)) for a in torch.randn(d, generator=gen, dtype=torch.float64)]
    n = mp.sqrt(mp.fsum(a * a for a in v))
    return np.array([a / n * mp.mpf(radius) / mp.sqrt(c) for a in v], dtype=object)


def _ev(name, *args, c, eps=None):
    out = MR.OPS[name](ROW, *args, mp.mpf(c), *(() if eps is None else (mp.mpf(eps),)))
    return out


@pytest.mark.parametrize("c", CURVATURES)
@pytest.mark.parametrize("d", (2, 5, 17))
def test_lorentz_forms_equal_the_textbook_on_the_hyperboloid(d, c):
    """Each rewritten form equals its textbook expression on exact hyperboloid
    points and tangent vectors (to 45 of 60 digits; the textbook arcosh keeps
    fewer of a small distance, hence the pair at distance 1e-6)."""
    gen = torch.Generator().manual_seed(d)
    o = _origin(d, c)
    for rx, ry in ((0.3, 2.0), (5.0, 4.0), (1.0, 1.0 + 1e-6)):
        x, y = MR.hyperboloid_row(d, rx, gen, c), MR.hyperboloid_row(d, ry, gen, c)
        if d == 2 and rx == 1.0:  # the same direction: the near pair
            y = MR.hyperboloid_row(d, ry, torch.Generator().manual_seed(d), c)
        v = MR.tangent_row(x, gen, 0.7, c)
        need = 45 if rx != 1.0 else 30
        assert MR.digits(_ev("lorentz.dist", x, y, c=c), _dist(x, y, c)) > need
        assert MR.digits(_ev("lorentz.dist0", x, c=c), _dist(o, x, c)) > 45
        assert MR.digits(_ev("lorentz.logmap0", y, c=c), _logmap(o, y, c)) > 45
        assert MR.digits(_ev("lorentz.expmap0", _logmap(o, y, c), c=c), y) > 45
        assert MR.digits(_ev("lorentz.logmap", x, y, c=c), _logmap(x, y, c)) > need
        assert MR.digits(_ev("lorentz.expmap", x, v, c=c), _expmap(x, v, c)) > 45
        assert MR.digits(_ev("lorentz.transp", x, y, v, c=c), _transp(x, y, v, c)) > need - 5
        for t in map(mp.mpf, ("0", "0.3", "1", "1.4", "-0.5")):
            want = _expmap(x, t * _logmap(x, y, c), c) if t else x
            assert MR.digits(_ev("lorentz.geodesic", x, y, t, c=c), want) > need - 5
        assert MR.digits(_ev("lorentz.norm", v, c=c), mp.sqrt(_inner(v, v))) > 45
        assert MR.digits(_ev("lorentz.inner", x, v, c=c) + 1, mp.mpf(1)) > 45  # v tangent at x
        assert MR.digits(_ev("lorentz.project", x, c=c), x) > 45
        assert MR.digits(_ev("lorentz.proj_tan", x, v, c=c), v) > 45


@pytest.mark.parametrize("c", CURVATURES)
@pytest.mark.parametrize("d", (1, 4, 17))
def test_conversions_are_isometries_and_klein_forms_are_textbook(d, c):
    """Distances agree in all three models (the Poincaré one from tests/mp_reference.py);
    the maps invert each other; the Klein distance equals the textbook arcosh; the
    Klein geodesic is the chord from u to v at constant hyperbolic speed."""
    gen = torch.Generator().manual_seed(10 + d)
    for rx, ry in ((0.2, 0.9), (0.999, 0.5), (1e-8, 0.3)):
        x, y = _ball_row(d, rx, gen, c), _ball_row(d, ry, gen, c)
        want = mp_reference.dist(list(x), list(y), mp.mpf(c))
        lx, ly = _ev("convert.poincare_to_lorentz", x, c=c), _ev("convert.poincare_to_lorentz", y, c=c)
        kx, ky = _ev("convert.poincare_to_klein", x, c=c), _ev("convert.poincare_to_klein", y, c=c)
        assert MR.digits(_inner(lx, lx), -1 / mp.mpf(c)) > 45
        assert MR.digits(_ev("lorentz.dist", lx, ly, c=c), want) > 40
        assert MR.digits(_ev("klein.dist", kx, ky, c=c), want) > 40
        assert MR.digits(_klein_dist(kx, ky, c), want) > 40
        assert MR.digits(_ev("convert.lorentz_to_poincare", lx, c=c), x) > 45
        assert MR.digits(_ev("convert.klein_to_poincare", kx, c=c), x) > 45
        assert MR.digits(_ev("convert.lorentz_to_klein", lx, c=c), kx) > 45
        assert MR.digits(_ev("convert.klein_to_lorentz", kx, c=c), lx) > 45
        assert MR.digits(_ev("klein.lorentz_factor", kx, c=c), mp.sqrt(c) * lx[0]) > 45
        dk = _klein_dist(kx, ky, c)
        for t in map(mp.mpf, ("0", "0.25", "1", "1.3", "-0.4")):
            g = _ev("klein.geodesic", kx, ky, t, c=c)
            assert abs(_klein_dist(kx, g, c) - abs(t) * dk) < mp.mpf("1e-25") * dk
            assert abs(_klein_dist(g, ky, c) - abs(1 - t) * dk) < mp.mpf("1e-25") * dk
            if d > 1:  # on the chord: g - u parallel to v - u
                a, b = g - kx, ky - kx
                cos = mp.fsum(a * b) / mp.sqrt(mp.fsum(a * a) * mp.fsum(b * b)) if t else mp.mpf(1)
                assert abs(abs(cos) - 1) < mp.mpf("1e-40")
    x = _ball_row(d, 0.995, gen, c)
    pulled = x / mp.sqrt(mp.fsum(x * x)) * (1 - mp.mpf(1e-2)) / mp.sqrt(c)
    assert MR.digits(_ev("klein.project", x, c=c, eps=1e-2), pulled) > 45
    assert MR.digits(_ev("klein.project", x, c=c, eps=1e-3), x) > 55


@pytest.mark.parametrize("case", MODEL_OPS, ids=lambda case: f"{case[0]}.{case[1]}")
def test_float64_forms_agree_with_xpu_stone_reference_and_60_digits(case):
    """On well-conditioned inputs: batch() equals xpu_stone.reference (forward, and
    gradients where the reference is the same function of the inputs) and the
    60-digit evaluation of the same rows."""
    family, name = case
    qualname = f"{family}.{name}"
    eps = 1e-5 if qualname == "klein.project" else None
    args = [
        a.requires_grad_() for a in model_args(family, name, 200, 9, 0.7, torch.float64, seed=3, nice=True)
    ]
    ours = MR.batch(qualname, args, 0.7, eps)
    ref = MR.REFERENCES[family].__dict__[name](*args, c=0.7, **({"eps": eps} if eps else {}))
    assert rel_err(ours, ref) < 1e-12
    for i in (0, 77, 199):
        row = [a[i].detach().tolist() if a.shape[-1] > 1 else float(a[i].detach()) for a in args]
        exact = MR.evaluate(qualname, row, 0.7, eps)
        exact = [float(v) for v in (exact if isinstance(exact, list) else [exact])]
        assert rel_err(ours[i].reshape(-1), torch.tensor(exact, dtype=torch.float64)) < 1e-13, i
    if qualname in MR.OWN_FAST_PATH and family == "lorentz":
        return  # the ambient gradients of the textbook forms differ by normal components
    g = torch.randn(ours.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mine = torch.autograd.grad(ours, args, g)
    theirs = torch.autograd.grad(ref, args, g)
    for a, b in zip(mine, theirs):
        assert rel_err(a, b) < 1e-10


def _cpu_cases(family, name):
    """(rows, D, c) on the stress grid; D = 1 only where the hyperboloid is not a point."""
    one = family != "lorentz" and name not in ("lorentz_to_poincare", "lorentz_to_klein")
    return [(300, d, c) for d, c in (((1, 1e3),) if one else ()) + ((3, 1.0), (17, 1e-3))]


@pytest.mark.parametrize("case", MODEL_OPS, ids=lambda case: f"{case[0]}.{case[1]}")
def test_cpu_path_matches_oracle(case):
    """The ops on CPU tensors in float64 (the stress grid, per-row c) against the
    oracle: forward to 1e-9, gradients of every input and of c to 1e-8."""
    family, name = case
    qualname = f"{family}.{name}"
    eps = model_eps(family, name, torch.float64)
    for k, (rows, d, c0) in enumerate(_cpu_cases(family, name)):
        args = [a.requires_grad_() for a in model_args(family, name, rows, d, c0, torch.float64, seed=k)]
        c = torch.full((rows, 1), c0, dtype=torch.float64, requires_grad=True)
        out = model_call(family, name, args, c, torch.float64)
        ref = MR.fast_path(qualname, args, c, eps)
        err, _ = settled_error(qualname, out.detach(), ref.detach(), args, c, eps, 1e-9, oracle=MR)
        assert err < 1e-9, (d, c0, err)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
        grads = torch.autograd.grad(out, [*args, c], g)
        ref_grads = torch.autograd.grad(ref, [*args, c], g, allow_unused=True)
        ref_grads = [torch.zeros_like(b) if r is None else r for r, b in zip(ref_grads, [*args, c])]
        errs = settled_grad_errors(qualname, grads, ref_grads, args, c, g, eps, 1e-8, oracle=MR)
        assert max(errs) < 1e-8, (d, c0, errs)
