"""Property-based tests of every op of :mod:`xpu_stone.klein` (Hypothesis).

Each example draws one call (``tests/strategies.py``: Klein points from the
origin to 1e-7 of the boundary, shapes, layouts, broadcasting, dtypes, c) and
checks, row by row, within ``FWD_TOL[dtype]`` plus the row's conditioning
(``tests/prop_oracles.py``):

* the oracle: ``tests/mp_reference_models.py`` (float64 fast path, rows settled
  at 60 digits);
* the identities: distance symmetric, ``d(x, x) = 0``, the triangle inequality,
  the isometry to the Poincare ball (``d_K(u, v) = d_P(k2p(u), k2p(v))``),
  geodesic endpoints, ``d(u, geodesic(u, v, t)) = |t| d(u, v)`` and the geodesic
  on the chord through u and v, project inside its margin, idempotent and the
  identity inside it, ``gamma >= 1``; the Einstein midpoint against its weighted
  mean at 60 digits, and the midpoint of two points equidistant from both.

The CPU cases run in CI (profile ``ci``); the ``cuda`` cases are marked ``gpu``.
"""

from __future__ import annotations

import math

import mp_reference_models as MPM
import mpmath as mp
import pytest
import torch
from helpers import DTYPE_NAME, FWD_TOL
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis_profiles import example_report, record  # noqa: F401  (example_report: autouse fixture)
from prop_oracles import U64, Computed, check_rows, exact
from strategies import (
    DTYPES,
    LAYOUTS,
    MARGIN,
    UNIT,
    ball_values,
    batch_shapes,
    call_args,
    curvatures,
    draw_case,
    feature_dims,
    lay_out,
    poisoned,
    reference_args,
    seeds,
)

from xpu_stone import convert as C
from xpu_stone import klein as K
from xpu_stone import poincare as P
from xpu_stone.constants import BOUNDARY_EPS

DEVICES = ("cpu", pytest.param("cuda", marks=pytest.mark.gpu))
NAMES = tuple(K.__all__)
ROW_OPS = ("dist", "geodesic", "project", "lorentz_factor")
KINDS = {"dist": "bb", "geodesic": "bbs", "project": "w", "lorentz_factor": "b"}  # b = a Klein point


def test_every_op_is_covered():
    assert set(ROW_OPS) | {"einstein_midpoint"} == set(NAMES)


def _eps(name, dtype):
    return {"eps": BOUNDARY_EPS[DTYPE_NAME[dtype]]} if name == "project" else {}


def _inside(t, points, factor=10.0):
    c = torch.tensor(t.c, dtype=torch.float64)
    return c.sqrt() * t.flat(points, scalar=False).norm(dim=-1) <= 1 - factor * MARGIN[t.dtype]


# ------------------------------------------------------------------ identities
def dist(t, args, args64, c):
    x, y = args
    own = t.slack()
    t.check("symmetry", K.dist(y, x, c=c), t.out, 2, slack_fn=lambda i, r: 2 * own(i, r), scalar=True)
    xl = t.listed(args64[0])
    zeros = torch.zeros(t.batch, dtype=torch.float64)
    t.check("d(x, x) = 0", K.dist(x, x, c=c), zeros, slack_fn=t.slack("dist", [xl, xl]), scalar=True)
    t.check_triangle("dist", K.dist, x, y, t.case.extra[0].tensor, c)
    px, py = C.klein_to_poincare(x, c=c), C.klein_to_poincare(y, c=c)
    t.check(
        "d_K(u, v) = d_P(k2p(u), k2p(v))",
        P.dist(px, py, c=c),
        t.out,
        3,
        slack_fn=t.composition_slack(("poincare", "dist"), [t.listed(px), t.listed(py)]),
        scalar=True,
    )


def geodesic(t, args, args64, c):
    u, v, _ = args
    ul, vl, tl = t.row_args
    t.check_geodesic_ends(K.geodesic, c, u, v, args64)
    d = MPM.fast_path("klein.dist", args64[:2], t.rc).expand(t.batch)
    tv = torch.tensor(tl, dtype=torch.float64).reshape(t.batch)
    t.check(
        "d(u, geodesic(u, v, t)) = |t| d(u, v)",
        K.dist(u, t.out, c=c),
        tv.abs() * d,
        2,
        exact_fn=lambda i: abs(tl[i]) * exact(("klein", "dist"), [ul[i], vl[i]], t.c[i]),
        slack_fn=t.composition_slack("dist", [ul, t.listed(t.out)]),
        only=_inside(t, t.out),
        scalar=True,
    )
    # on the chord: the component of g - u orthogonal to v - u vanishes
    g, a, b = (t.flat(w, scalar=False) for w in (t.out, args64[0], args64[1]))
    chord = b - a
    lam = ((g - a) * chord).sum(-1, keepdim=True) / chord.square().sum(-1, keepdim=True).clamp_min(1e-300)
    off = (g - a - lam * chord).norm(dim=-1)
    # plus the stored point's subnormal rounding (fp16 coordinates below 6.1e-5 are
    # multiples of 2^-24, however exactly they were computed)
    step = torch.finfo(t.dtype).tiny * torch.finfo(t.dtype).eps * math.sqrt(g.shape[-1])
    bound = FWD_TOL[t.dtype] * g.norm(dim=-1) + 4 * UNIT[t.dtype] * (a.norm(dim=-1) + b.norm(dim=-1)) + step
    for i in torch.nonzero(~(off <= bound)).flatten().tolist():
        t.failures.append(
            f"klein.geodesic: row {i} is {float(off[i]):.3g} off the chord (allowed {float(bound[i]):.3g})"
        )


def project(t, args, args64, c):
    t.check_ball_project(K.project, args64[0], c)


def lorentz_factor(t, args, args64, c):
    low = t.flat(t.out).reshape(-1) < 1 - FWD_TOL[t.dtype]
    for i in torch.nonzero(low).flatten().tolist():
        t.failures.append(f"klein.lorentz_factor: row {i}: {float(t.flat(t.out)[i]):.17g} < 1")


IDENTITIES = {"dist": dist, "geodesic": geodesic, "project": project, "lorentz_factor": lorentz_factor}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: DTYPE_NAME[d])
@pytest.mark.parametrize("name", ROW_OPS)
@given(data=st.data())
def test_klein_op(name, dtype, device, data):
    case = draw_case(data, KINDS[name], dtype, device, extra="b" if name == "dist" else "")
    args = call_args(case)
    args64, rc = reference_args(case)
    eps = _eps(name, dtype).get("eps")
    ref = MPM.fast_path(f"klein.{name}", args64, rc, eps)
    assume(ref.numel() == 0 or bool(ref.abs().max() <= torch.finfo(dtype).max / 8))  # fp16: no saturation
    with poisoned(device):
        out = getattr(K, name)(*args, c=case.c.value, **_eps(name, dtype))
    assert torch.isfinite(out).all(), f"klein.{name}: non-finite output"
    t = Computed("klein", name, case, args64, out, rc, eps)
    t.check_oracle(ref.expand(out.shape))
    if t.n:
        IDENTITIES[name](t, args, args64, case.c.value)
    record("klein", name, dtype, device)
    assert not t.failures, "\n".join(t.failures[:20])


# ------------------------------------------------------------------ the Einstein midpoint
def _midpoint_exact(points, weights, c):
    """sum_i w_i gamma_i x_i / sum_i w_i gamma_i at 60 digits (one output row)."""
    c = mp.mpf(c)
    num = [mp.mpf(0)] * len(points[0])
    den = mp.mpf(0)
    for x, w in zip(points, weights):
        x = [mp.mpf(v) for v in x]
        g = mp.mpf(w) / mp.sqrt(1 - c * mp.fsum(v * v for v in x))
        num = [a + g * v for a, v in zip(num, x)]
        den += g
    return [v / den for v in num]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: DTYPE_NAME[d])
@given(data=st.data())
def test_klein_einstein_midpoint(dtype, device, data):
    """m = sum w_i gamma_i x_i / sum w_i gamma_i along ``dim`` (-2, or 0 for points
    stacked first), weights None or non-negative with one positive per group, c a
    float, a 0-d tensor or one value per group. Its error is bounded by FWD_TOL and
    by the weighted mean of |x_i| times the weights' relative error: the dtype's
    rounding of the products and 2^-53 / (1 - c|x_i|^2) for gamma_i."""
    batch = data.draw(batch_shapes(max_rows=6), label="groups")
    n = data.draw(st.integers(1, 5), label="points per group")
    d = data.draw(feature_dims(1, 300), label="D")
    c = data.draw(curvatures((*batch, 1), dtype, device), label="c")  # one value per group
    gen = torch.Generator().manual_seed(data.draw(seeds(), label="seed"))
    x64 = data.draw(ball_values((*batch, n, d), c.rows64, dtype, gen), label="points")
    if data.draw(st.booleans(), label="weights"):
        w = torch.tensor(
            data.draw(st.lists(st.floats(0, 2), min_size=math.prod(batch) * n, max_size=math.prod(batch) * n))
        )
        w = w.reshape(*batch, n).double()
        w[..., 0] = w[..., 0].clamp_min(0.125)
        w = w.to(dtype).double()
    else:
        w = None
    first = data.draw(st.booleans(), label="points stacked first")
    layout = data.draw(st.sampled_from(LAYOUTS[:4]), label="layout")
    xt = x64.to(dtype).to(device)
    wt = None if w is None else w.to(dtype).to(device)
    if first:  # (n, *batch, D) and dim=0
        xt, wt = xt.movedim(-2, 0), (None if wt is None else wt.movedim(-1, 0))
    xt = lay_out(xt, layout)
    cv = c.value.movedim(-2, 0) if first and c.kind == "row" else c.value  # (1, *batch, 1)
    with poisoned(device):
        out = K.einstein_midpoint(xt, wt, dim=0 if first else -2, c=cv)
    assert out.shape == (*batch, d) and out.dtype == dtype
    assert torch.isfinite(out).all()
    rows = math.prod(batch)
    o = out.detach().cpu().double().reshape(rows, d)
    pts = x64.reshape(rows, n, d)
    ws = torch.ones(rows, n, dtype=torch.float64) if w is None else w.reshape(rows, n)
    cr = c.rows64.expand(*batch, 1, 1).reshape(rows).tolist() if rows else []
    gamma = 1 / (1 - torch.tensor(cr, dtype=torch.float64).reshape(rows, 1) * pts.square().sum(-1)).sqrt()
    ref = ((ws * gamma)[..., None] * pts).sum(1) / (ws * gamma).sum(1, keepdim=True)
    a_min = (1 / gamma.square()).amin(1) if n else torch.ones(rows)
    mean_norm = (ws * gamma * pts.norm(dim=-1)).sum(1) / (ws * gamma).sum(1)
    slack = 8 * (4 * UNIT[dtype] + U64 / a_min) * mean_norm

    def exact_row(i):
        return _midpoint_exact(pts[i].tolist(), ws[i].tolist(), cr[i])

    failures = check_rows(
        "klein.einstein_midpoint vs exact",
        o,
        ref,
        FWD_TOL[dtype],
        dtype,
        exact_row,
        lambda i, r: float(slack[i]),
    )
    if n == 2 and w is None and rows:  # the midpoint of two points is equidistant from them
        x2 = xt if not first else xt.movedim(0, -2)
        cg = c.value if c.kind != "row" else c.value[..., 0, :]  # one value per group: (*batch, 1)
        d1, d2 = K.dist(x2[..., 0, :], out, c=cg), K.dist(out, x2[..., 1, :], c=cg)
        failures += check_rows(
            "klein.einstein_midpoint: d(u, m) = d(m, v)",
            d1.detach().cpu().double().reshape(rows, 1),
            d2.detach().cpu().double().reshape(rows, 1),
            3 * FWD_TOL[dtype],
            dtype,
            slack_fn=lambda i, r: _equidistance_slack(pts[i], o[i], cr[i]),
        )
    record("klein", "einstein_midpoint", dtype, device)
    assert not failures, "\n".join(failures[:20])


def _equidistance_slack(pts, m, c):
    """|d(u, m) - d(m, v)| at 60 digits for the computed (stored) m: how far from the
    midpoint its rounding puts it."""
    u, v, m = pts[0].tolist(), pts[1].tolist(), m.tolist()
    return abs(float(exact(("klein", "dist"), [u, m], c) - exact(("klein", "dist"), [m, v], c)))
