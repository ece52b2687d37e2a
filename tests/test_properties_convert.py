"""Property-based tests of every conversion of :mod:`xpu_stone.convert` (Hypothesis).

Each example draws one call (``tests/strategies.py``: ball points from the origin
to 1e-7 of the boundary and the hyperboloid points of matching distances,
shapes, layouts, broadcasting, dtypes, c) and checks, row by row, within
``FWD_TOL[dtype]`` plus the row's conditioning (``tests/prop_oracles.py``):

* the oracle: ``tests/mp_reference_models.py`` (float64 fast path, rows settled
  at 60 digits);
* the round trip through the inverse conversion;
* the isometry: the distance of two converted points in the target model equals
  their distance in the source model (Poincare <-> Lorentz <-> Klein, any c);
* the result lies in its model's domain (ball: within the rounding tolerance
  of the boundary; hyperboloid: x_0 > 0).

The CPU cases run in CI (profile ``ci``); the ``cuda`` cases are marked ``gpu``.
"""

from __future__ import annotations

import mp_reference_models as MPM
import pytest
import torch
from helpers import DTYPE_NAME
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

from xpu_stone import convert as C
from xpu_stone import klein as K
from xpu_stone import lorentz as L
from xpu_stone import poincare as P
from xpu_stone.reference import poincare as R

DEVICES = ("cpu", pytest.param("cuda", marks=pytest.mark.gpu))
NAMES = tuple(C.__all__)
MODELS = {n: tuple(n.split("_to_")) for n in NAMES}  # name -> (source, target)
KIND = {"poincare": "b", "klein": "b", "lorentz": "h"}
DIST = {"poincare": P.dist, "lorentz": L.dist, "klein": K.dist}


def test_every_conversion_is_covered():
    assert {(s, t) for s, t in MODELS.values()} == {(a, b) for a in KIND for b in KIND if a != b}


def _inverse(name):
    s, t = MODELS[name]
    return f"{t}_to_{s}"


def _source_dist64(model, args, c):
    """float64 fast path of the source model's distance."""
    if model == "poincare":
        return R.dist(*args, c=c)
    return MPM.fast_path(f"{model}.dist", args, c)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: DTYPE_NAME[d])
@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_convert_op(name, dtype, device, data):
    src, dst = MODELS[name]
    k = KIND[src]
    hyper = "lorentz" in (src, dst)
    c_range = C_RANGE_HYPERBOLOID_FP16 if dtype == torch.float16 and hyper else C_RANGE
    case = draw_case(
        data,
        k,
        dtype,
        device,
        min_d=2 if src == "lorentz" else 1,
        c_range=c_range,
        rmax=lambda c_min: max_hyperboloid_dist(dtype, c_min),
        extra=k,
    )
    args = call_args(case)
    args64, rc = reference_args(case)
    ref = MPM.fast_path(f"convert.{name}", args64, rc)
    assume(ref.numel() == 0 or bool(ref.abs().max() <= torch.finfo(dtype).max / 8))  # fp16: no saturation
    fn = getattr(C, name)
    c = case.c.value
    with poisoned(device):
        out = fn(*args, c=c)
    assert torch.isfinite(out).all(), f"convert.{name}: non-finite output"
    t = Computed("convert", name, case, args64, out, rc)
    t.check_oracle(ref.expand(out.shape))
    if t.n:
        identities(t, name, args, args64, c)
    record("convert", name, dtype, device)
    assert not t.failures, "\n".join(t.failures[:20])


def _strictly_inside(t, points):
    c = torch.tensor(t.c, dtype=torch.float64)
    return c * t.flat(points, scalar=False).square().sum(-1) < 1


def identities(t, name, args, args64, c):
    src, dst = MODELS[name]
    fn = getattr(C, name)
    (x,) = args
    back = getattr(C, _inverse(name))(t.out, c=c)
    t.check(
        f"{_inverse(name)}({name}(x)) = x",
        back,
        args64[0].expand(*t.batch, args64[0].shape[-1]),
        2,
        slack_fn=t.composition_slack(_inverse(name), [t.listed(t.out)]),
    )
    # isometry: d_dst(f(x), f(z)) = d_src(x, z), z the extra point
    z = t.case.extra[0].tensor
    fz = fn(z, c=c)
    zl = t.listed(t.case.extra[0].values64.expand(*t.batch, z.shape[-1]))
    xl = t.row_args[0]
    d_src = _source_dist64(src, [args64[0], t.case.extra[0].values64.expand(*t.batch, z.shape[-1])], t.rc)
    # a ball point the dtype rounds onto the boundary has no distance (the kernels clamp
    # it): those rows are left to the conversion's oracle
    only = _strictly_inside(t, t.out) & _strictly_inside(t, fz) if dst != "lorentz" else None
    t.check(
        f"d_{dst}(f(x), f(z)) = d_{src}(x, z)",
        DIST[dst](t.out, fz, c=c),
        d_src.expand(t.batch),
        3,
        exact_fn=lambda i: exact((src, "dist"), [xl[i], zl[i]], t.c[i]),
        slack_fn=t.composition_slack((dst, "dist"), [t.listed(t.out), t.listed(fz)]),
        only=only,
        scalar=True,
    )
    o = t.flat(t.out, scalar=False)
    if dst == "lorentz":
        for i in torch.nonzero(~(o[:, 0] > 0)).flatten().tolist():
            t.failures.append(f"convert.{name}: row {i}: time coordinate {float(o[i, 0]):.3g} <= 0")
    else:  # the ball, up to the rounding tolerance of xpu_stone's domain rule
        cc = torch.tensor(t.c, dtype=torch.float64)
        sq = cc * o.square().sum(-1)
        tol = 4 * UNIT[t.dtype] + (o.shape[-1] + 2) * U64
        for i in torch.nonzero(~(sq <= 1 + tol)).flatten().tolist():
            t.failures.append(f"convert.{name}: row {i}: c|out|^2 = {float(sq[i]):.17g} > 1")
