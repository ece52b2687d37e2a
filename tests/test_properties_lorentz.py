"""Property-based tests of every row-wise op of :mod:`xpu_stone.lorentz` (Hypothesis).

Each example draws one call (``tests/strategies.py``: hyperboloid points (D >= 2)
out to the distance of the ball points closest to the boundary, within the
ranges ``xpu_stone.lorentz`` documents per dtype, tangent vectors, shapes,
layouts, broadcasting, dtypes, c) and checks, row by row, within
``FWD_TOL[dtype]`` plus the row's conditioning (``tests/prop_oracles.py``):

* the oracle: ``tests/mp_reference_models.py``, the documented forms at the
  stored values (float64 fast path, rows settled at 60 digits);
* the identities: inner symmetric and ``<x, x>_L = -1/c``, ``|2u|_L = 2 |u|_L``,
  distance symmetric, ``d(x, x) = 0``, the triangle inequality,
  ``d0(x) = d(o, x)``, exp o log and log o exp at the origin and at a point,
  project keeps the space part, lands on the hyperboloid (to the rounding of its
  time coordinate) and is idempotent, proj_tan idempotent, transport there and
  back, geodesic endpoints and ``d(u, geodesic(u, v, t)) = t d(u, v)``. Where
  the identity holds only on the hyperboloid, the exact values of both sides at
  the stored points (which a dtype holds only near it) set the slack.

The CPU cases run in CI (profile ``ci``); the ``cuda`` cases are marked ``gpu``.
"""

from __future__ import annotations

import math

import mp_reference_models as MPM
import pytest
import torch
from helpers import DTYPE_NAME, FWD_TOL, TANGENT_MAX_DIST
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis_profiles import example_report, record  # noqa: F401  (example_report: autouse fixture)
from prop_oracles import U64, Computed, exact
from strategies import (
    C_RANGE,
    C_RANGE_HYPERBOLOID_FP16,
    DTYPES,
    UNIT,
    call_args,
    draw_case,
    max_hyperboloid_dist,
    poisoned,
    reference_args,
)

from xpu_stone import lorentz as L
from xpu_stone.engine.checks import HYPERBOLOID, domain_tol, not_points
from xpu_stone.reference import lorentz as RL  # noqa: F401  (its ARG_KINDS: the ops covered)

DEVICES = ("cpu", pytest.param("cuda", marks=pytest.mark.gpu))
NAMES = tuple(n for n in L.__all__ if n not in ("cdist", "knn"))  # those two: test_properties_pairwise.py
# h = a hyperboloid point, t = a tangent vector at the first h, T = a tangent vector
# at a point of its own, w = any vector, s = a per-row scalar
KINDS = {
    "inner": "hh",
    "norm": "T",
    "dist": "hh",
    "dist0": "h",
    "expmap0": "w",
    "logmap0": "h",
    "expmap": "ht",
    "logmap": "hh",
    "project": "w",
    "proj_tan": "hw",
    "transp": "hht",
    "geodesic": "hhs",
}
TANGENT = {"norm", "expmap", "proj_tan", "transp"}  # points no farther than TANGENT_MAX_DIST


def test_every_op_is_covered():
    assert set(KINDS) == set(NAMES) == set(RL.ARG_KINDS)


def _draw(data, name, dtype, device):
    c_range = C_RANGE_HYPERBOLOID_FP16 if dtype == torch.float16 else C_RANGE

    def rmax(c_min):
        return max_hyperboloid_dist(dtype, c_min, tangent=name in TANGENT, products=name == "inner")

    # expmap0's vector: sqrt(c)|u_s| up to the largest distance
    w_hi = math.log10(max_hyperboloid_dist(dtype, 10 ** c_range[0])) if name == "expmap0" else 2.0
    tangent_len = max_hyperboloid_dist(dtype, 10 ** c_range[0], tangent=True)
    return draw_case(
        data,
        KINDS[name],
        dtype,
        device,
        min_d=2,
        c_range=c_range,
        rmax=rmax,
        w_range=(-8.0, w_hi),
        tangent_len=tangent_len,
        extra="h" if name == "dist" else "",
    )


def _within(t, points, bound):
    """Rows whose point lies within ``bound[dtype]`` of the origin (sqrt(c) d0 <= bound)."""
    p = t.flat(points, scalar=False)
    c = torch.tensor(t.c, dtype=torch.float64)
    r = torch.asinh(c.sqrt() * p[:, 1:].norm(dim=-1))
    return r <= bound[t.dtype]


def _points(t, points):
    """Rows whose (computed, stored) vector is a point of the hyperboloid, by the ops' own
    rule: an identity through a vector that is none gives NaN by contract (expmap of a
    u that rounding to the dtype has taken off the tangent space: exp_x(u) = x + u for a
    null u, no point)."""
    p = t.flat(points, scalar=False)
    c = torch.tensor(t.c, dtype=torch.float64).unsqueeze(-1)
    tol = domain_tol(HYPERBOLOID, DTYPE_NAME[t.dtype], p.shape[-1])
    return ~not_points(HYPERBOLOID, p, c, tol).squeeze(-1)


def _sum_bound(t, args64):
    """Per row, Higham's bound (D + 2) u sum_i |x_i y_i| (u = 2^-53) of a float64
    Minkowski product of D coordinates: far out, -x0 y0 and <x_s, y_s> nearly cancel and
    their rounding is all that is left."""
    x, y = (t.flat(t.full(a), scalar=False) for a in args64[:2])
    return (x.shape[-1] + 2) * U64 * (x * y).abs().sum(-1)


def _zeros(t):
    return torch.zeros(t.batch, dtype=torch.float64)


def _twice(slack):
    return lambda i, ref: 2 * slack(i, ref)


def _origin(t):
    """o = (1/sqrt(c), 0, ...) per row, in the dtype on the device."""
    c = torch.tensor(t.c, dtype=torch.float64).reshape(*t.batch, 1)
    o = torch.zeros(*t.batch, t.case.d, dtype=torch.float64)
    o[..., :1] = 1 / c.sqrt()
    return o.to(t.dtype).to(t.case.device)


def _minus_inv_c(t):
    return (-1 / torch.tensor(t.c, dtype=torch.float64)).reshape(t.batch)


# ------------------------------------------------------------------ identities
def inner(t, args, args64, c):
    x, y = args
    t.check("symmetry", L.inner(y, x, c=c), t.out, 2, slack_fn=_twice(t.slack()), scalar=True)
    xl = t.listed(args64[0])
    t.check(
        "<x, x>_L = -1/c",
        L.inner(x, x, c=c),
        _minus_inv_c(t),
        slack_fn=t.plus(t.composition_slack("inner", [xl, xl]), _sum_bound(t, [args64[0], args64[0]])),
        scalar=True,
    )


def norm(t, args, args64, c):
    (u,) = args
    t.check(
        "|2u|_L = 2|u|_L", L.norm(2 * u, c=c), 2 * t.out.double(), 2, slack_fn=_twice(t.slack()), scalar=True
    )


def dist(t, args, args64, c):
    x, y = args
    t.check("symmetry", L.dist(y, x, c=c), t.out, 2, slack_fn=_twice(t.slack()), scalar=True)
    xl = t.listed(args64[0])
    t.check("d(x, x) = 0", L.dist(x, x, c=c), _zeros(t), slack_fn=t.slack("dist", [xl, xl]), scalar=True)
    t.check_triangle("dist", L.dist, x, y, t.case.extra[0].tensor, c)


def dist0(t, args, args64, c):
    (x,) = args
    o = _origin(t)
    rl = [t.listed(o), t.listed(args64[0])]
    # equal on the hyperboloid; the stored x is off it by its rounding, which the exact
    # difference of the two (documented) forms measures
    t.check(
        "d0(x) = d(o, x)", L.dist(o, x, c=c), t.out, 2, slack_fn=t.composition_slack("dist", rl), scalar=True
    )


def expmap0(t, args, args64, c):
    u = t.full(args64[0]).clone()
    u[..., 0] = 0  # expmap0 ignores the time coordinate, logmap0 gives none
    t.check(
        "log0(exp0(u)) = u",
        L.logmap0(t.out, c=c),
        u,
        2,
        slack_fn=t.composition_slack("logmap0", [t.listed(t.out)]),
    )


def logmap0(t, args, args64, c):
    t.check(
        "exp0(log0(y)) = y",
        L.expmap0(t.out, c=c),
        t.full(args64[0]),
        2,
        slack_fn=t.composition_slack("expmap0", [t.listed(t.out)]),
    )


def expmap(t, args, args64, c):
    x, u = args
    rl = [t.listed(args64[0]), t.listed(t.out)]
    t.check(
        "log_x(exp_x(u)) = u",
        L.logmap(x, t.out, c=c),
        t.full(args64[1]),
        2,
        slack_fn=t.composition_slack("logmap", rl),
        only=_points(t, t.out.double().cpu()),
    )


def logmap(t, args, args64, c):
    x, y = args
    rl = [t.listed(args64[0]), t.listed(t.out)]
    t.check(
        "exp_x(log_x(y)) = y",
        L.expmap(x, t.out, c=c),
        t.full(args64[1]),
        2,
        slack_fn=t.composition_slack("expmap", rl),
        only=_within(t, args64[0], TANGENT_MAX_DIST),  # expmap's documented range
    )


def project(t, args, args64, c):
    (x,) = args
    dtype = t.dtype
    p = t.flat(t.out)
    if not torch.equal(p[:, 1:], t.flat(t.full(args64[0]))[:, 1:]):
        t.failures.append("lorentz.project: the space part changed")
    # on the hyperboloid up to the rounding of the time coordinate (4 u p0^2) and of the
    # float64 evaluation of <p, p>_L (4 u64 |p|^2)
    pp = p[:, 1:].square().sum(-1) - p[:, 0].square()
    defect = (pp + 1 / torch.tensor(t.c, dtype=torch.float64)).abs()
    bound = 4 * UNIT[dtype] * p[:, 0].square() + 4 * U64 * p.square().sum(-1)
    for i in torch.nonzero(~(defect <= bound)).flatten().tolist():
        t.failures.append(
            f"lorentz.project: row {i}: |<p,p>_L + 1/c| = {float(defect[i]):.3g} > {float(bound[i]):.3g}"
        )
    t.check("idempotent", L.project(t.out, c=c), t.out, 4 * UNIT[dtype] / FWD_TOL[dtype])


def proj_tan(t, args, args64, c):
    x, u = args
    rl = [t.listed(args64[0]), t.listed(t.out)]
    t.check(
        "proj_tan(x, proj_tan(x, u)) = proj_tan(x, u)",
        L.proj_tan(x, t.out, c=c),
        t.out,
        2,
        slack_fn=t.composition_slack("proj_tan", rl),
    )


def transp(t, args, args64, c):
    x, y, _ = args
    t.check_transp_round_trip(L.transp, c, x, y, args64)


def geodesic(t, args, args64, c):
    u, v, _ = args
    ul, vl, tl = t.row_args
    t.check_geodesic_ends(L.geodesic, c, u, v, args64)
    d = MPM.fast_path("lorentz.dist", args64[:2], t.rc).expand(t.batch)
    tv = torch.tensor(tl, dtype=torch.float64).reshape(t.batch)
    t.check(
        "d(u, geodesic(u, v, t)) = |t| d(u, v)",
        L.dist(u, t.out, c=c),
        tv.abs() * d,
        2,
        # 0 <= t <= 1, u and v where xpu_stone.lorentz documents the dtype to hold tangent
        # vectors: beyond, the distance to the hyperboloid of the stored points (and of the
        # geodesic built from their chord) outgrows the domain's tolerance
        only=_within(t, args64[0], TANGENT_MAX_DIST)
        & _within(t, args64[1], TANGENT_MAX_DIST)
        & (tv >= 0).reshape(-1)
        & (tv <= 1).reshape(-1),
        exact_fn=lambda i: abs(tl[i]) * exact(("lorentz", "dist"), [ul[i], vl[i]], t.c[i]),
        slack_fn=t.composition_slack("dist", [ul, t.listed(t.out)]),
        scalar=True,
    )


IDENTITIES = {
    "inner": inner,
    "norm": norm,
    "dist": dist,
    "dist0": dist0,
    "expmap0": expmap0,
    "logmap0": logmap0,
    "expmap": expmap,
    "logmap": logmap,
    "project": project,
    "proj_tan": proj_tan,
    "transp": transp,
    "geodesic": geodesic,
}


def test_every_op_has_identities():
    assert set(IDENTITIES) == set(NAMES)


# ------------------------------------------------------------------ the test
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: DTYPE_NAME[d])
@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_lorentz_op(name, dtype, device, data):
    case = _draw(data, name, dtype, device)
    args = call_args(case)
    args64, rc = reference_args(case)  # float64, broadcast to the result's batch
    ref = MPM.fast_path(f"lorentz.{name}", args64, rc)
    assume(ref.numel() == 0 or bool(ref.abs().max() <= torch.finfo(dtype).max / 8))  # fp16: no saturation
    with poisoned(device):
        out = getattr(L, name)(*args, c=case.c.value)
    assert torch.isfinite(out).all(), f"lorentz.{name}: non-finite output"
    t = Computed("lorentz", name, case, args64, out, rc)
    t.check_oracle(ref.expand(out.shape), summation=_sum_bound(t, args64) if name == "inner" else None)
    if t.n:
        IDENTITIES[name](t, args, args64, case.c.value)
    record("lorentz", name, dtype, device)
    assert not t.failures, "\n".join(t.failures[:20])
