r"""Property-based tests of :func:`xpu_stone.pairwise.cdist` and :func:`~xpu_stone.pairwise.knn`
for both models, called through ``xpu_stone.pairwise`` (``model=``) or the models'
modules (``poincare.cdist``, ``lorentz.knn``, ...) (Hypothesis).

Each example draws ``x`` ``(*bx, N, D)`` and ``y`` ``(*by, M, D)`` (batch dims that
broadcast, zero rows, layouts, dtypes, c a float or a 0-d tensor, points from the
origin to 1e-7 of the boundary and the matching hyperboloid points) and checks:

* cdist against the exact distances (Poincare: 60-digit ``tests/mp_reference.py``;
  hyperboloid: the documented product form arcosh(-c<x,y>_L)/sqrt(c) at the stored
  points) within the accuracy ``xpu_stone.pairwise`` documents: the GEMM rounds
  ``w = cosh(sqrt(c) d) - 1`` by at most
  ``dw = 2c tau (|x|^2 + |y|^2) / ((1 - c|x|^2)(1 - c|y|^2))`` (hyperboloid:
  ``tau c (|x||y| + 2 x_0 y_0)``), ``tau = snap_tau(dtype, D)``, so
  ``|d - d_exact| <= 4 min(sqrt(2 dw), dw / sqrt(w (w + 2))) / sqrt(c) + FWD_TOL d_exact``
  (the first form is the documented bound for nearby pairs, the second its
  relative error for separated ones);
* ``cdist(x, x)`` has an exact zero diagonal, ``cdist(y, x)`` is the transpose;
* knn: values sorted, indices in range, every neighbour within the cdist bound
  of the true k-th distance, values (recomputed from differences) against the
  exact distances of the chosen pairs within ``FWD_TOL`` plus their conditioning
  (``tests/prop_oracles.py``; the hyperboloid's from ``tests/mp_reference_models.py``).

The CPU cases run in CI (profile ``ci``); the ``cuda`` cases are marked ``gpu``.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import DTYPE_NAME, FWD_TOL
from hypothesis import given
from hypothesis import strategies as st
from hypothesis_profiles import example_report, record  # noqa: F401  (example_report: autouse fixture)
from prop_oracles import COND_FACTOR, ZERO_NORM_FLOOR, exact, perturbation_change
from strategies import (
    C_RANGE,
    C_RANGE_HYPERBOLOID_FP16,
    DTYPES,
    LAYOUTS,
    ball_values,
    curvatures,
    feature_dims,
    hyperboloid_values,
    lay_out,
    max_hyperboloid_dist,
    poisoned,
    reduced_shape,
    seeds,
)

from xpu_stone import lorentz, pairwise, poincare
from xpu_stone.ops.pairwise import MODELS as MODEL_CODES
from xpu_stone.ops.pairwise import snap_tau
from xpu_stone.reference import poincare as R

DEVICES = ("cpu", pytest.param("cuda", marks=pytest.mark.gpu))
MODELS = ("poincare", "lorentz")
MODULES = {"poincare": poincare, "lorentz": lorentz}


def test_every_entry_point_is_covered():
    assert set(pairwise.__all__) == {"cdist", "knn"}
    assert all({"cdist", "knn"} <= set(m.__all__) for m in MODULES.values())


def _cdist64(model, x, y, c):
    """float64 fast path: the textbook distance of every pair (broadcast, no GEMM)."""
    if model == "poincare":
        return R.dist(x.unsqueeze(-2), y.unsqueeze(-3), c=c)
    prod = x.unsqueeze(-2) * y.unsqueeze(-3)
    z = -c * (prod[..., 1:].sum(-1) - prod[..., 0])
    return torch.acosh(z.clamp_min(1)) / math.sqrt(c)


def _stored_step(dtype) -> float:
    """The spacing of the dtype's subnormals: a distance stored in fp16 below its smallest
    normal (6.1e-5) is a multiple of 2^-24, so it can sit that far from the exact value
    however it was computed (bf16, fp32 and fp64 steps are far below any bound here)."""
    return torch.finfo(dtype).tiny * torch.finfo(dtype).eps


def _bound(model, x, y, c, dtype, d_exact):
    """The documented cdist accuracy (see the module docstring) for every pair."""
    tau = snap_tau(dtype, x.shape[-1], MODEL_CODES[model])
    xx, yy = x.square().sum(-1).unsqueeze(-1), y.square().sum(-1).unsqueeze(-2)
    # squared norms below the GEMM dtype's smallest normal underflow (module docstring)
    under = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).tiny
    if model == "poincare":
        dw = 2 * c * (tau * (xx + yy) + under) / ((1 - c * xx) * (1 - c * yy)).clamp_min(1e-300)
    else:
        x0, y0 = x[..., 0].unsqueeze(-1), y[..., 0].unsqueeze(-2)
        dw = tau * c * ((xx * yy).sqrt() + 2 * x0 * y0) + c * under
    w = torch.cosh(math.sqrt(c) * d_exact) - 1
    dd = torch.minimum((2 * dw).sqrt(), dw / (w * (w + 2)).sqrt().clamp_min(1e-300)) / math.sqrt(c)
    return 4 * dd + FWD_TOL[dtype] * d_exact + _stored_step(dtype) + ZERO_NORM_FLOOR


def _draw(data, model, dtype, device):
    batch = data.draw(st.sampled_from(((), (2,), (2, 3))), label="batch")
    bx = data.draw(reduced_shape(batch), label="x batch")
    by = data.draw(reduced_shape(batch), label="y batch")
    n, m = data.draw(st.integers(0, 6), label="N"), data.draw(st.integers(1, 6), label="M")
    d = data.draw(feature_dims(2 if model == "lorentz" else 1, 500), label="D")
    c_range = C_RANGE_HYPERBOLOID_FP16 if dtype == torch.float16 and model == "lorentz" else C_RANGE
    c = data.draw(curvatures((), dtype, device, c_range).filter(lambda c: c.kind != "row"), label="c")
    cv = float(c.rows64.reshape(-1)[0])
    gen = torch.Generator().manual_seed(data.draw(seeds(), label="seed"))
    c_rows = torch.full((1, 1), cv, dtype=torch.float64)
    if model == "poincare":
        x = data.draw(ball_values((*bx, n, d), c_rows, dtype, gen), label="x")
        y = data.draw(ball_values((*by, m, d), c_rows, dtype, gen), label="y")
    else:
        rmax = max_hyperboloid_dist(dtype, cv)
        x = data.draw(hyperboloid_values((*bx, n, d), c_rows, dtype, gen, rmax), label="x")
        y = data.draw(hyperboloid_values((*by, m, d), c_rows, dtype, gen, rmax), label="y")
    if n and bx == by and data.draw(st.booleans(), label="y shares x's rows"):  # equal pairs
        k = min(n, m)
        y = y.clone()
        y[..., :k, :] = x[..., :k, :]
    tensors = [
        lay_out(v.to(dtype).to(device), data.draw(st.sampled_from(LAYOUTS[:4]), label="layout"))
        for v in (x, y)
    ]
    return c, cv, x, y, tensors


def _call(data, fn, model, *args, **kw):
    """Through xpu_stone.pairwise (model=) or the model's module."""
    if data.draw(st.booleans(), label="through xpu_stone.pairwise"):
        return getattr(pairwise, fn)(*args, model=model, **kw)
    return getattr(MODULES[model], fn)(*args, **kw)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: DTYPE_NAME[d])
@pytest.mark.parametrize("model", MODELS)
@given(data=st.data())
def test_cdist(model, dtype, device, data):
    c, cv, x, y, (xt, yt) = _draw(data, model, dtype, device)
    with poisoned(device):
        out = _call(data, "cdist", model, xt, yt, c.value)
    batch = torch.broadcast_shapes(x.shape[:-2], y.shape[:-2])
    n, m = x.shape[-2], y.shape[-2]
    assert out.shape == (*batch, n, m) and out.dtype == dtype
    assert torch.isfinite(out).all() and (out >= 0).all()
    o = out.detach().cpu().double()
    xe, ye = x.expand(*batch, n, x.shape[-1]), y.expand(*batch, m, y.shape[-1])
    ref = _cdist64(model, xe, ye, cv)
    failures = []
    bound = _bound(model, xe, ye, cv, dtype, ref)
    bad = ~((o - ref).abs() <= bound)
    for idx in torch.nonzero(bad).tolist():  # settle at 60 digits
        *b, i, j = idx
        xi, yj = xe[(*b, i)].tolist(), ye[(*b, j)].tolist()
        ex = float(exact(("pairwise", model), [xi, yj], cv))
        allowed = float(_bound(model, xe[(*b, i)][None], ye[(*b, j)][None], cv, dtype, torch.tensor([[ex]])))
        if not abs(float(o[tuple(idx)]) - ex) <= allowed:
            failures.append(
                f"{model}.cdist: pair {idx}: {float(o[tuple(idx)]):.17g} vs exact {ex:.17g} (allowed {allowed:.3g})"
            )
    # cdist(x, x) has an exact zero diagonal; cdist(y, x) is the transpose
    if n:
        self_d = _call(data, "cdist", model, xt, xt, c.value)
        diag = self_d.diagonal(dim1=-2, dim2=-1)
        if not bool((diag == 0).all()):
            failures.append(f"{model}.cdist(x, x): nonzero diagonal {diag.max().item():.3g}")
    back = _call(data, "cdist", model, yt, xt, c.value).transpose(-1, -2).detach().cpu().double()
    sym = ~((back - o).abs() <= 2 * bound)
    for idx in torch.nonzero(sym).tolist()[:5]:
        failures.append(
            f"{model}.cdist(y, x)^T: pair {idx}: {float(back[tuple(idx)]):.17g} vs {float(o[tuple(idx)]):.17g}"
        )
    record(model, "cdist", dtype, device)
    assert not failures, "\n".join(failures[:20])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: DTYPE_NAME[d])
@pytest.mark.parametrize("model", MODELS)
@given(data=st.data())
def test_knn(model, dtype, device, data):
    c, cv, x, y, (xt, yt) = _draw(data, model, dtype, device)
    m = y.shape[-2]
    k = data.draw(st.integers(1, m), label="k")
    chunk = data.draw(st.sampled_from((None, 1, 2, 5)), label="chunk_rows")
    with poisoned(device):
        values, idx = _call(data, "knn", model, xt, yt, k, c.value, chunk_rows=chunk)
    batch = torch.broadcast_shapes(x.shape[:-2], y.shape[:-2])
    n = x.shape[-2]
    assert values.shape == idx.shape == (*batch, n, k) and values.dtype == dtype
    v, ix = values.detach().cpu().double(), idx.cpu()
    failures = []
    if not bool(((ix >= 0) & (ix < m)).all()):
        failures.append(f"{model}.knn: index out of range")
    if k > 1 and not bool((v[..., 1:] >= v[..., :-1]).all()):
        failures.append(f"{model}.knn: values not sorted")
    xe, ye = x.expand(*batch, n, x.shape[-1]), y.expand(*batch, m, y.shape[-1])
    # the chosen neighbours: within the cdist accuracy of the true k-th distance
    full = _cdist64(model, xe, ye, cv)
    bound = _bound(model, xe, ye, cv, dtype, full)
    kth = torch.sort(full, dim=-1).values[..., k - 1 : k]
    chosen, chosen_bound = full.gather(-1, ix), bound.gather(-1, ix)
    slack = chosen_bound + bound.amax(-1, keepdim=True)
    for p in torch.nonzero(~(chosen <= kth + slack)).tolist()[:5]:
        failures.append(
            f"{model}.knn: neighbour {p} at {float(chosen[tuple(p)]):.17g} > k-th {float(kth[tuple(p[:-1])]):.17g}"
        )
    # the values: the distances of the chosen pairs from their differences
    key = ("poincare", "dist") if model == "poincare" else ("lorentz", "dist")
    tol = FWD_TOL[dtype]
    floor = _stored_step(dtype) + ZERO_NORM_FLOOR
    for p in torch.nonzero(~((v - chosen).abs() <= tol * chosen + floor)).tolist():
        *b, i, j = p
        args = [xe[(*b, i)].tolist(), ye[(*b, int(ix[tuple(p)]))].tolist()]
        ex = float(exact(key, args, cv))
        allowed = tol * ex + floor
        err = abs(float(v[tuple(p)]) - ex)
        if err > allowed:
            allowed += COND_FACTOR * perturbation_change(key, args, cv)
        if not err <= allowed:
            failures.append(
                f"{model}.knn: value {p}: {float(v[tuple(p)]):.17g} vs exact {ex:.17g} (allowed {allowed:.3g})"
            )
    record(model, "knn", dtype, device)
    assert not failures, "\n".join(failures[:20])
