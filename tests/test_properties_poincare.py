"""Property-based tests of every row-wise op of :mod:`xpu_stone.poincare` (Hypothesis).

Each example draws one call (``tests/strategies.py``: shapes, layouts,
broadcasting, dtypes, c as a float, a 0-d tensor or one value per row from 1e-4
to 1e4, points from the origin to 1e-7 of the boundary, equal, nearby and
opposite operands) and checks, row by row, within ``FWD_TOL[dtype]`` plus the
row's conditioning (the rule is in ``tests/prop_oracles.py``):

* the oracle: the float64 textbook reference, rows it disagrees on settled at
  60 digits (``tests/mp_reference.py``);
* the op's identities: left cancellation, ``x + 0 = x``, ``x - y = x + (-y)``,
  ``x - x = 0``, ``mobius_scalar_mul(1, x) = x``, ``d0(r x) = |r| d0(x)``, exp o log and log o exp (at 0
  and at a point), symmetry, ``d(x, x) = 0``, the triangle inequality,
  ``d0(x) = d(0, x)``, project inside its margin, idempotent and the identity
  inside the margin, ``lambda_x >= 2``, gyrations keep norms, are undone by
  ``gyr[b, a]`` and satisfy ``a + (b + u) = (a + b) + gyr[a, b] u``, transport there
  and back, geodesic endpoints and ``d(u, geodesic(u, v, t)) = |t| d(u, v)``.

The CPU cases run in CI (profile ``ci``); the ``cuda`` cases are marked ``gpu``.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import DTYPE_NAME, FWD_TOL
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis_profiles import example_report, record  # noqa: F401  (example_report: autouse fixture)
from prop_oracles import Computed, exact, floats
from strategies import DTYPES, MARGIN, UNIT, call_args, draw_case, poisoned, reference_args

from xpu_stone import poincare as P
from xpu_stone.constants import BOUNDARY_EPS, TANH_MAX
from xpu_stone.reference import poincare as R

DEVICES = ("cpu", pytest.param("cuda", marks=pytest.mark.gpu))
NAMES = tuple(n for n in P.__all__ if n not in ("cdist", "knn"))  # those two: test_properties_pairwise.py
# b = a ball point, w = any vector, s = a per-row scalar: the reference's ARG_KINDS renamed
KINDS = {n: k.replace("p", "b").replace("v", "w") for n, k in R.ARG_KINDS.items()}


def test_every_op_is_covered():
    assert set(KINDS) == set(NAMES)


def _eps(name, dtype):
    return {"eps": BOUNDARY_EPS[DTYPE_NAME[dtype]]} if name == "project" else {}


def _inside(t: Computed, points, factor=10.0):
    """Rows whose point lies ``factor`` margins or more inside the ball (identities that
    go through a computed point need it stored inside)."""
    c = torch.tensor(t.c, dtype=torch.float64)
    return c.sqrt() * t.flat(points).norm(dim=-1) <= 1 - factor * MARGIN[t.dtype]


# tanh's argument is clamped at TANH_MAX (constants.py, as geoopt does): expmap moves at
# most 2 TANH_MAX / sqrt(c) from x, expmap0 at most 2 TANH_MAX / sqrt(c) from the origin.
# Rows past the clamp are checked for a point in the closed ball, not against the
# unclamped exact value (_check_closed_ball, every row).
SATURATING = ("expmap", "expmap0")


def _unclamped(t: Computed, name, operands):
    """Rows whose tanh argument lies below the clamp (a margin for its rounding):
    sqrt(c)|u| / (1 - c|x|^2) for expmap (operands x, u), sqrt(c)|u| for expmap0 (u)."""
    c = torch.tensor(t.c, dtype=torch.float64)
    u = t.flat(t.full(operands[-1]), scalar=False)
    a = c.sqrt() * u.norm(dim=-1)
    if name == "expmap":
        a = a / (1 - c * t.flat(t.full(operands[0]), scalar=False).square().sum(-1))
    return a <= TANH_MAX * (1 - 1e-9)


def _check_closed_ball(t: Computed):
    """Every row of the result in the closed ball, up to rounding to the dtype (and this
    check's own float64 rounding of sqrt(c)|out|)."""
    c = torch.tensor(t.c, dtype=torch.float64)
    norm = c.sqrt() * t.flat(t.out.double(), scalar=False).norm(dim=-1)
    for i in torch.nonzero(~(norm <= 1 + 2 * UNIT[t.dtype] + 8 * UNIT[torch.float64])).flatten().tolist():
        t.failures.append(f"poincare.{t.name}: row {i}: sqrt(c)|out| = {float(norm[i]):.17g} > 1")


def _zeros(t: Computed, width=None):
    return torch.zeros(t.batch if width is None else (*t.batch, width), dtype=torch.float64)


# ------------------------------------------------------------------ identities
def mobius_add(t, args, args64, c):
    x, y = args
    xl, zl = t.listed(args64[0]), t.listed(t.out)
    t.check(
        "(-x) + (x + y) = y",
        P.mobius_add(-x, t.out, c=c),
        t.full(args64[1]),
        2,
        slack_fn=t.composition_slack("mobius_add", [[[-v for v in r] for r in xl], zl]),
    )
    t.check("x + 0 = x", P.mobius_add(x, torch.zeros_like(x), c=c), t.full(args64[0]))


def mobius_sub(t, args, args64, c):
    x, y = args
    t.check("x - y = x + (-y)", t.out, P.mobius_add(x, -y, c=c), 2, slack_fn=_twice(t.slack()))
    xl = t.listed(args64[0])
    t.check(
        "x - x = 0", P.mobius_sub(x, x, c=c), _zeros(t, t.case.d), slack_fn=t.slack("mobius_sub", [xl, xl])
    )


def mobius_scalar_mul(t, args, args64, c):
    r, x = args
    t.check("1 x = x", P.mobius_scalar_mul(1.0, x, c=c), t.full(args64[1]))
    # d0(r x) = |r| d0(x), where r x stays 10 margins inside
    rl, xl = t.row_args
    d0 = R.dist0(args64[1], c=t.rc).expand(t.batch)
    rv = torch.tensor(rl, dtype=torch.float64).reshape(t.batch)
    reach = (torch.tensor(t.c, dtype=torch.float64).sqrt() * (rv.abs() * d0).reshape(-1) / 2) <= math.atanh(
        1 - 10 * MARGIN[t.dtype]
    )
    t.check(
        "d0(r x) = |r| d0(x)",
        P.dist0(t.out, c=c),
        rv.abs() * d0,
        2,
        exact_fn=lambda i: abs(rl[i]) * exact(("poincare", "dist0"), [xl[i]], t.c[i]),
        slack_fn=t.composition_slack("dist0", [t.listed(t.out)]),
        only=reach,
        scalar=True,
    )


def expmap0(t, args, args64, c):
    u = t.full(args64[0])
    reach = torch.tensor(t.c, dtype=torch.float64).sqrt() * t.flat(u).norm(dim=-1) <= math.atanh(
        1 - 10 * MARGIN[t.dtype]
    )
    back = P.logmap0(t.out, c=c)
    t.check(
        "log0(exp0(u)) = u",
        back,
        u,
        2,
        slack_fn=t.composition_slack("logmap0", [t.listed(t.out)]),
        only=reach,
    )


def logmap0(t, args, args64, c):
    back = P.expmap0(t.out, c=c)
    t.check(
        "exp0(log0(y)) = y",
        back,
        t.full(args64[0]),
        2,
        slack_fn=t.composition_slack("expmap0", [t.listed(t.out)]),
    )


def expmap(t, args, args64, c):
    x, u = args
    back = P.logmap(x, t.out, c=c)
    rl = [t.listed(args64[0]), t.listed(t.out)]
    t.check(
        "log_x(exp_x(u)) = u",
        back,
        t.full(args64[1]),
        2,
        slack_fn=t.composition_slack("logmap", rl),
        only=_inside(t, t.out),
    )


def logmap(t, args, args64, c):
    x, y = args
    back = P.expmap(x, t.out, c=c)
    rl = [t.listed(args64[0]), t.listed(t.out)]
    t.check(
        "exp_x(log_x(y)) = y",
        back,
        t.full(args64[1]),
        2,
        slack_fn=t.composition_slack("expmap", rl),
        only=_unclamped(t, "expmap", [args64[0], t.out.double().cpu()]),
    )


def dist(t, args, args64, c):
    x, y = args
    t.check("symmetry", P.dist(y, x, c=c), t.out, 2, slack_fn=_twice(t.slack()), scalar=True)
    xl = t.listed(args64[0])
    t.check("d(x, x) = 0", P.dist(x, x, c=c), _zeros(t), slack_fn=t.slack("dist", [xl, xl]), scalar=True)
    t.check_triangle("dist", P.dist, x, y, t.case.extra[0].tensor, c)


def dist0(t, args, args64, c):
    (x,) = args
    t.check(
        "d0(x) = d(0, x)",
        P.dist(torch.zeros_like(x), x, c=c),
        t.out,
        2,
        slack_fn=_twice(t.slack()),
        scalar=True,
    )


def project(t, args, args64, c):
    t.check_ball_project(P.project, args64[0], c)


def lambda_x(t, args, args64, c):
    low = t.flat(t.out).reshape(-1) < 2 * (1 - FWD_TOL[t.dtype])
    for i in torch.nonzero(low).flatten().tolist():
        t.failures.append(f"poincare.lambda_x: row {i}: {float(t.flat(t.out)[i]):.17g} < 2")


def gyration(t, args, args64, c):
    a, b, u = args
    al, bl, ul, ol = (t.listed(v) for v in (*args64, t.out))
    norms = t.flat(t.out).norm(dim=-1).reshape(t.batch)
    u_norms = t.flat(t.full(args64[2])).norm(dim=-1).reshape(t.batch)
    t.check("|gyr[a,b]u| = |u|", norms, u_norms, slack_fn=t.slack(), scalar=True)
    t.check(
        "gyr[b,a] gyr[a,b] u = u",
        P.gyration(b, a, t.out, c=c),
        t.full(args64[2]),
        2,
        slack_fn=t.composition_slack("gyration", [bl, al, ol]),
    )
    ab = P.mobius_add(a, b, c=c)
    c64 = t.rc

    def lhs_exact(i):
        return exact(
            ("poincare", "mobius_add"),
            [al[i], floats(exact(("poincare", "mobius_add"), [bl[i], ul[i]], t.c[i]))],
            t.c[i],
        )

    t.check(
        "a + (b + u) = (a + b) + gyr[a,b] u",
        P.mobius_add(ab, t.out, c=c),
        R.mobius_add(args64[0], R.mobius_add(args64[1], args64[2], c=c64), c=c64).expand(*t.batch, t.case.d),
        3,
        exact_fn=lhs_exact,
        slack_fn=t.composition_slack("mobius_add", [t.listed(ab), ol]),
    )


def transp(t, args, args64, c):
    x, y, _ = args
    t.check_transp_round_trip(P.transp, c, x, y, args64)


def geodesic(t, args, args64, c):
    u, v, _ = args
    ul, vl, tl = t.row_args
    t.check_geodesic_ends(P.geodesic, c, u, v, args64)
    d = R.dist(args64[0], args64[1], c=t.rc).expand(t.batch)
    tv = torch.tensor(tl, dtype=torch.float64).reshape(t.batch)
    t.check(
        "d(u, geodesic(u, v, t)) = |t| d(u, v)",
        P.dist(u, t.out, c=c),
        tv.abs() * d,
        2,
        exact_fn=lambda i: abs(tl[i]) * exact(("poincare", "dist"), [ul[i], vl[i]], t.c[i]),
        slack_fn=t.composition_slack("dist", [ul, t.listed(t.out)]),
        only=_inside(t, t.out),
        scalar=True,
    )


def _twice(slack):
    return lambda i, ref: 2 * slack(i, ref)


IDENTITIES = {
    "mobius_add": mobius_add,
    "mobius_sub": mobius_sub,
    "mobius_scalar_mul": mobius_scalar_mul,
    "expmap0": expmap0,
    "logmap0": logmap0,
    "expmap": expmap,
    "logmap": logmap,
    "dist": dist,
    "dist0": dist0,
    "project": project,
    "lambda_x": lambda_x,
    "gyration": gyration,
    "transp": transp,
    "geodesic": geodesic,
}


def test_every_op_has_identities():
    assert set(IDENTITIES) == set(NAMES)


# ------------------------------------------------------------------ the test
def _cases():
    for name in NAMES:
        for dtype in DTYPES:
            for device in DEVICES:
                dev = device if isinstance(device, str) else device.values[0]
                marks = [] if isinstance(device, str) else list(device.marks)
                yield pytest.param(name, dtype, dev, marks=marks, id=f"{name}-{DTYPE_NAME[dtype]}-{dev}")


@pytest.mark.parametrize(("name", "dtype", "device"), list(_cases()))
@given(data=st.data())
def test_poincare_op(name, dtype, device, data):
    case = draw_case(data, KINDS[name], dtype, device, extra="b" if name == "dist" else "")
    args = call_args(case)
    args64, rc = reference_args(case)  # float64, broadcast to the result's batch
    ref = getattr(R, name)(*args64, c=rc, **_eps(name, dtype))
    assume(ref.numel() == 0 or bool(ref.abs().max() <= torch.finfo(dtype).max / 8))  # fp16: no saturation
    with poisoned(device):
        out = getattr(P, name)(*args, c=case.c.value, **_eps(name, dtype))
    assert torch.isfinite(out).all(), f"poincare.{name}: non-finite output"
    t = Computed("poincare", name, case, args64, out, rc, _eps(name, dtype).get("eps"))
    ref = ref.expand(out.shape)
    if name in SATURATING:
        t.check_oracle(ref, only=_unclamped(t, name, args64))
        _check_closed_ball(t)
    else:
        t.check_oracle(ref)
    if t.n:
        IDENTITIES[name](t, args, args64, case.c.value)
    record("poincare", name, dtype, device)
    assert not t.failures, "\n".join(t.failures[:20])
