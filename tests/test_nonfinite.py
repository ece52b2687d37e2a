"""Non-finite and out-of-domain inputs propagate as NaN, never vanish (issue 16, item 3).

Every row op of every model, every dtype, on the CPU transcription and (marked
``gpu``, outputs poisoned) on the CUDA kernels: a row with a NaN, an inf, or a
point input outside its domain gives a NaN output row and NaN gradients, while
the other rows are bit-for-bit what they are without the bad rows; inputs that
are not points (tangent vectors, vectors to project) are never placed. The
domain's edge per dtype: points within rounding of the boundary keep the clamp,
points beyond it give NaN. ``cdist`` and ``knn`` (NaN distances, ranked last).
The checked mode (``config.check_finite``, ``XPU_STONE_CHECK_FINITE``) raises
typed errors naming the op, the argument and the row, and stays out of
``torch.compile`` tracing. The declarations of point inputs agree between the
CUDA structs, the engine and the argument kinds of the references.

The expectations are written here from the rule of :mod:`xpu_stone.engine.checks`
(squared norms and Minkowski products recomputed in float64 by the test), not
taken from the package's own masks.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import cuda_layout as cl
import pytest
import torch
from helpers import DTYPE_NAME, model_args, op_args, row_inputs

from xpu_stone import config, ops
from xpu_stone import convert as C
from xpu_stone import linear as LIN
from xpu_stone import lorentz as L
from xpu_stone import pairwise as PW
from xpu_stone import poincare as P
from xpu_stone.constants import BOUNDARY_EPS
from xpu_stone.engine import call
from xpu_stone.engine.checks import HYPERBOLOID_MARGIN, POINT_INPUTS, UNIT_ROUNDOFF
from xpu_stone.errors import (
    DomainError,
    InvalidArgumentError,
    InvalidCurvatureError,
    NonFiniteError,
    XpuStoneError,
)
from xpu_stone.reference import convert as RC
from xpu_stone.reference import klein as RK
from xpu_stone.reference import lorentz as RL
from xpu_stone.reference import poincare as RP

DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
ROW_OPS = ops.row_ops()
ROWS, D, C_VAL = 8, 5, 0.7
NAN_ROW, INF_ROW, OUT_ROW, OUT_ROW2 = 1, 3, 5, 6
CUDA_SRC = Path(__file__).resolve().parent.parent / "cuda_src"

# Inputs the references' ARG_KINDS call points ("p", "b") that the ops take as
# any vector: gyr[a, b] acts on every vector, and <u, v>_L is defined for all.
NOT_POINTS = {("poincare", "gyration"): {2}, ("lorentz", "inner"): {0, 1}}
KINDS = {"poincare": RP.ARG_KINDS, "lorentz": RL.ARG_KINDS, "klein": RK.ARG_KINDS, "convert": RC.ARG_KINDS}


def _id(op) -> str:
    return op.qualname


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request):
    if request.param == "cuda":
        request.getfixturevalue("poisoned_outputs")  # every output element must be written
    return request.param


def _domain(op, j: int) -> str | None:
    """The domain of input j of ``op`` by the references' argument kinds (None: not a point)."""
    kind = [k for k in KINDS[op.family][op.name] if k != "s"][j]
    if j in NOT_POINTS.get((op.family, op.name), ()) or kind not in "pb":
        return None
    hyperboloid = op.family == "lorentz" or (op.family == "convert" and kind == "p")
    return "hyperboloid" if hyperboloid else "ball"


def _inputs(op, dtype, device, rows=ROWS, seed=0):
    """(vectors, t or None, eps) of ``op``: good rows drawn as the accuracy tests draw them."""
    if op.family == "poincare":
        x, y, z, u, t = row_inputs(rows, D, C_VAL, dtype, seed, device)
        args = op_args(op.name, x, y, z, u, t)
    else:
        args = model_args(op.family, op.name, rows, D, C_VAL, dtype, seed, device, nice=True)
    kinds = [k for k in KINDS[op.family][op.name]]
    vecs = [a for a, k in zip(args, kinds) if k != "s"]
    ts = [a for a, k in zip(args, kinds) if k == "s"]
    eps = BOUNDARY_EPS[DTYPE_NAME[dtype]] if op.uses_eps else 0.0
    return vecs, (ts[0] if ts else None), eps


def _poison(op, vecs, j: int):
    """Copies of ``vecs`` with bad rows in input j: a NaN, an inf, and for a point
    input two rows outside its domain; for any other input, one far outside the
    ball (which must not count). Returns (vectors, rows that must be NaN, rows
    changed that must not be NaN)."""
    out = [v.clone() for v in vecs]
    v = out[j]
    v[NAN_ROW, j % v.shape[-1]] = math.nan
    v[INF_ROW, (j + 1) % v.shape[-1]] = -math.inf if j % 2 else math.inf
    bad, moved = {NAN_ROW, INF_ROW}, set()
    domain = _domain(op, j)
    if domain == "ball":
        v[OUT_ROW] = 2 / math.sqrt(C_VAL) * _unit(v[OUT_ROW])  # c|x|^2 = 4
        v[OUT_ROW2] = 1.1 / math.sqrt(C_VAL) * _unit(v[OUT_ROW2])
        bad |= {OUT_ROW, OUT_ROW2}
    elif domain == "hyperboloid":
        v[OUT_ROW] = -v[OUT_ROW]  # the lower sheet
        v[OUT_ROW2] = 0  # c<0, 0>_L + 1 = 1
        bad |= {OUT_ROW, OUT_ROW2}
    elif op.family == "poincare":
        v[OUT_ROW] = 2 / math.sqrt(C_VAL) * _unit(v[OUT_ROW])  # a tangent vector may be long
        moved.add(OUT_ROW)
    return out, bad, moved


def _unit(row):
    r = row.double()
    n = r.norm()
    r = r / n if n > 0 else torch.ones_like(r) / math.sqrt(r.numel())
    return r.to(row.dtype)


def _rows_nan(out, rows):
    flat = out.reshape(out.shape[0], -1)
    return [r for r in rows if not bool(torch.isnan(flat[r]).all())]


def _good(n, bad):
    return [r for r in range(n) if r not in bad]


def _assert_same(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


# ---------------------------------------------------------------- row ops, forward
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", ROW_OPS, ids=_id)
def test_bad_rows_give_nan_rows_and_good_rows_are_unchanged(op, dtype, device):
    vecs, t, eps = _inputs(op, dtype, device)
    clean = call(op, tuple(vecs), C_VAL, t, eps)
    for j in range(len(vecs)):
        bad_vecs, bad, moved = _poison(op, vecs, j)
        out = call(op, tuple(bad_vecs), C_VAL, t, eps)
        assert out.shape == clean.shape
        assert _rows_nan(out, bad) == [], (op.qualname, op.vectors[j], "rows not all NaN")
        good = _good(ROWS, bad | moved)
        _assert_same(out[good], clean[good])
        assert not torch.isnan(out[_good(ROWS, bad)]).any(), (op.qualname, op.vectors[j])


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("op", ROW_OPS, ids=_id)
def test_bad_rows_give_nan_gradients(op, dtype, device):
    """Backward: every gradient of a bad row (inputs, per-row c and t) is NaN;
    the good rows' gradients are those of the clean inputs."""
    vecs, t, eps = _inputs(op, dtype, device, seed=1)
    c = torch.full((ROWS, 1), C_VAL, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    c = c.to(device)

    def grads(vs):
        leaves = [v.clone().requires_grad_() for v in vs]
        cl_ = c.clone().requires_grad_()
        tl = t.clone().requires_grad_() if t is not None else None
        out = call(op, tuple(leaves), cl_, tl, eps)
        g = torch.ones_like(out)
        inputs = [*leaves, cl_] + ([tl] if tl is not None else [])
        return torch.autograd.grad(out, inputs, g, allow_unused=True)

    clean = grads(vecs)
    for j in range(len(vecs)):
        bad_vecs, bad, moved = _poison(op, vecs, j)
        got = grads(bad_vecs)
        good = _good(ROWS, bad | moved)
        for k, (g, g0) in enumerate(zip(got, clean)):
            if g is None:
                continue
            assert _rows_nan(g, bad) == [], (op.qualname, op.vectors[j], "gradient", k)
            _assert_same(g[good], g0[good])


def test_the_issue_examples_give_nan():
    """The outside check's findings: a point of norm 2 (c = 1) no longer gives
    finite numbers (dist 35.23, lambda_x 2e15, poincare_to_lorentz 5e15)."""
    x = torch.tensor([[2.0, 0.0], [0.3, 0.1]], dtype=torch.float64)
    y = torch.tensor([[0.1, 0.2], [0.0, 0.2]], dtype=torch.float64)
    assert torch.isnan(P.dist(x, y)[0]) and torch.isfinite(P.dist(x, y)[1])
    assert torch.isnan(P.lambda_x(x)[0]) and torch.isfinite(P.lambda_x(x)[1])
    assert (
        torch.isnan(C.poincare_to_lorentz(x)[0]).all() and torch.isfinite(C.poincare_to_lorentz(x)[1]).all()
    )
    for ref in (RP.dist(x, y), RP.lambda_x(x), RC.poincare_to_lorentz(x)):  # the references agree
        assert torch.isnan(ref[0]).all() and torch.isfinite(ref[1]).all()


# ------------------------------------------------------------ the edge of the ball
def _ball_edge(dtype, device, d=3):
    """Points stored in ``dtype`` near the unit sphere (c = 1): (points, c|x|^2
    recomputed in float64 here, the tolerance of the rule)."""
    gen = torch.Generator().manual_seed(5)
    dirs = torch.randn(4000, d, generator=gen, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    scale = (
        1 + torch.rand(4000, 1, generator=gen, dtype=torch.float64) * 20 * UNIT_ROUNDOFF[DTYPE_NAME[dtype]]
    )
    x = (dirs * scale).to(dtype)
    sq = x.double().square().sum(-1)
    tol = 4 * UNIT_ROUNDOFF[DTYPE_NAME[dtype]] + (d + 2) * 2.0**-53
    return x.to(device), sq, tol


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_points_within_rounding_of_the_boundary_keep_the_clamp(dtype, device):
    """c|x|^2 in (1, 1 + tol]: what rounding a point of the ball to ``dtype`` can
    give; the maps stay finite (the clamps act). Beyond 1 + tol: NaN."""
    x, sq, tol = _ball_edge(dtype, device)
    inside = (sq > 1) & (sq <= 1 + 0.5 * tol)  # margins: the kernels' sums round differently
    outside = sq >= 1 + 2 * tol
    assert inside.sum() >= 5 and outside.sum() >= 5, (int(inside.sum()), int(outside.sum()))
    origin = torch.zeros_like(x)
    for out in (
        P.dist(x, origin),
        P.lambda_x(x),
        P.logmap0(x),
        C.poincare_to_lorentz(x),
        P.mobius_add(x, origin),
    ):
        flat = out.reshape(out.shape[0], -1).cpu()
        assert torch.isfinite(flat[inside]).all()
        assert torch.isnan(flat[outside]).all()
    assert torch.isfinite(P.project(x, eps=BOUNDARY_EPS[DTYPE_NAME[dtype]])).all()  # projects anything finite


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_hyperboloid_margin(dtype, device):
    """|c<x,x>_L + 1| <= (1/64 + rounding)(1 + c|x|^2): on; four times the margin off: NaN."""
    y = RL.project(torch.randn(64, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    sq = y.square().sum(-1, keepdim=True)
    for rel, finite in ((0.5, True), (4.0, False)):
        # move x_0 so that c<x,x>_L + 1 = -rel * margin * (1 + c|x|^2) (c = 1)
        t0 = (y[..., :1] ** 2 + rel * HYPERBOLOID_MARGIN * (1 + sq)).sqrt()
        moved = torch.cat((t0, y[..., 1:]), -1)
        out = L.dist0(moved.to(dtype).to(device))
        assert bool(torch.isfinite(out).all() if finite else torch.isnan(out).all()), (rel, dtype)


# ------------------------------------------------------------------ cdist and knn
def _model_points(model, n, dtype, device, seed):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, D, generator=gen, dtype=torch.float64)
    a = a / a.norm(dim=-1, keepdim=True) * torch.rand(n, 1, generator=gen, dtype=torch.float64) * 0.9
    a = a / math.sqrt(C_VAL)
    if model == "lorentz":
        a = C.poincare_to_lorentz(a, c=C_VAL)
    return a.to(dtype).to(device)


def _pair_poison(model, a):
    """NaN, inf and out-of-domain rows 1, 3, 5 of ``a``."""
    a = a.clone()
    a[NAN_ROW, 0] = math.nan
    a[INF_ROW, 2] = math.inf
    a[OUT_ROW] = (
        -a[OUT_ROW] if model == "lorentz" else a[OUT_ROW] * 3 / a[OUT_ROW].double().norm().to(a.dtype)
    )
    return a, [NAN_ROW, INF_ROW, OUT_ROW]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("model", ("poincare", "lorentz"))
def test_cdist_bad_rows_are_nan_rows_and_columns(model, dtype, device):
    x = _model_points(model, 9, dtype, device, 1)
    y = _model_points(model, 8, dtype, device, 2)
    clean = PW.cdist(x, y, C_VAL, model)
    xb, bx = _pair_poison(model, x)
    yb, by = _pair_poison(model, y)
    out = PW.cdist(xb, yb, C_VAL, model)
    assert torch.isnan(out[bx]).all() and torch.isnan(out[:, by]).all()
    gx, gy = _good(9, bx), _good(8, by)
    _assert_same(out[gx][:, gy], clean[gx][:, gy])
    assert torch.isfinite(out[gx][:, gy]).all()
    # NaN is never snapped to 0; the ball's coincident points still are
    self_d = PW.cdist(yb, yb, C_VAL, model)
    assert torch.isnan(self_d[by, by]).all() and torch.isfinite(self_d[gy, gy]).all()
    assert model == "lorentz" or (self_d[gy, gy] == 0).all()


@pytest.mark.parametrize("model", ("poincare", "lorentz"))
def test_cdist_gradients_of_bad_rows(model, device):
    """A bad row of y: its gradient row is NaN, and every row of x's gradient (each
    distance of x_i to it is NaN); the good rows of y keep their clean gradients."""
    x = _model_points(model, 6, torch.float64, device, 3)
    y = _model_points(model, 8, torch.float64, device, 4)

    def grads(yy):
        xl, yl = x.clone().requires_grad_(), yy.clone().requires_grad_()
        return torch.autograd.grad(PW.cdist(xl, yl, C_VAL, model).sum(), (xl, yl))

    gx0, gy0 = grads(y)
    yb, by = _pair_poison(model, y)
    gx, gy = grads(yb)
    good = _good(8, by)
    assert torch.isnan(gx).all() and torch.isnan(gy[by]).all()
    torch.testing.assert_close(gy[good], gy0[good], rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32, torch.float16), ids=str)
@pytest.mark.parametrize("model", ("poincare", "lorentz"))
def test_knn_ranks_nan_distances_last(model, dtype, device):
    """A NaN row of y was every query's nearest neighbour; now bad rows come
    only after every finite distance, with NaN values."""
    x = _model_points(model, 7, dtype, device, 5)
    y, by = _pair_poison(model, _model_points(model, 8, dtype, device, 6))
    values, idx = PW.knn(x, y, 1, C_VAL, model)
    assert not any(int(i) in by for i in idx.flatten()) and torch.isfinite(values).all()
    values, idx = PW.knn(x, y, 8, C_VAL, model)
    assert all(set(row[-3:].tolist()) == set(by) for row in idx.cpu())
    assert torch.isnan(values[:, -3:]).all() and torch.isfinite(values[:, :-3]).all()
    assert (values[:, 1:-3] >= values[:, :-4]).all()  # sorted
    xb, bx = _pair_poison(model, x)
    values, _ = PW.knn(xb, y, 2, C_VAL, model)
    assert torch.isnan(values[bx]).all() and torch.isfinite(values[_good(7, bx)]).all()


# ------------------------------------------------------------------ checked mode
@pytest.fixture
def checked(monkeypatch):
    monkeypatch.setattr(config, "check_finite", True)


@pytest.mark.usefixtures("checked")
@pytest.mark.parametrize("op", ROW_OPS, ids=_id)
def test_checked_mode_names_the_op_the_argument_and_the_row(op, device):
    vecs, t, eps = _inputs(op, torch.float32, device, seed=2)
    call(op, tuple(vecs), C_VAL, t, eps)  # good inputs pass
    for j in range(len(vecs)):
        bad_vecs, _, _ = _poison(op, vecs, j)
        with pytest.raises(NonFiniteError) as e:
            call(op, tuple(bad_vecs), C_VAL, t, eps)
        assert (e.value.op, e.value.argument, e.value.row) == (
            f"{op.family}.{op.name}",
            op.vectors[j],
            (NAN_ROW,),
        )
        assert f"{op.family}.{op.name}" in str(e.value) and op.vectors[j] in str(e.value)
        finite = [v.clone() for v in bad_vecs]
        finite[j][[NAN_ROW, INF_ROW]] = vecs[j][[NAN_ROW, INF_ROW]]
        if _domain(op, j) is None:
            call(op, tuple(finite), C_VAL, t, eps)  # a long tangent vector is fine
            continue
        with pytest.raises(DomainError) as e:
            call(op, tuple(finite), C_VAL, t, eps)
        assert (e.value.argument, e.value.row) == (op.vectors[j], (OUT_ROW,))


@pytest.mark.usefixtures("checked")
def test_checked_mode_batched_rows_and_per_row_c(device):
    x = torch.full((2, 3, 4), 0.1, device=device)
    x[1, 2, 0] = 3.0
    with pytest.raises(DomainError, match=r"row \(1, 2\) of x") as e:
        P.dist0(x)
    assert e.value.row == (1, 2)
    c = torch.full((2, 3, 1), 1.0, device=device)
    c[0, 1] = 100.0  # 100 * 4 * 0.01 > 1: that row of x is outside the ball of its c
    x[1, 2, 0] = 0.1
    with pytest.raises(DomainError) as e:
        P.dist0(x, c=c)
    assert e.value.row == (0, 1)


@pytest.mark.usefixtures("checked")
@pytest.mark.parametrize("model", ("poincare", "lorentz"))
def test_checked_mode_pairwise(model, device):
    x = _model_points(model, 4, torch.float32, device, 7)
    y, _ = _pair_poison(model, _model_points(model, 8, torch.float32, device, 8))
    for fn in (lambda: PW.cdist(x, y, C_VAL, model), lambda: PW.knn(x, y, 2, C_VAL, model)):
        with pytest.raises(NonFiniteError) as e:
            fn()
        assert (e.value.argument, e.value.row) == ("y", (NAN_ROW,)) and e.value.op.startswith("pairwise.")
    y[[NAN_ROW, INF_ROW]] = x[:2]
    with pytest.raises(DomainError) as e:
        PW.cdist(x, y, C_VAL, model)
    assert (e.value.op, e.value.argument, e.value.row) == ("pairwise.cdist", "y", (OUT_ROW,))


def test_checked_mode_is_off_by_default_and_typed():
    assert issubclass(NonFiniteError, XpuStoneError) and issubclass(NonFiniteError, ValueError)
    assert issubclass(DomainError, XpuStoneError) and issubclass(DomainError, ValueError)
    x = torch.tensor([[math.nan, 0.0], [2.0, 0.0]])
    if not config.check_finite:  # the suite runs without XPU_STONE_CHECK_FINITE
        assert torch.isnan(P.dist0(x)).all()


@pytest.mark.parametrize(("value", "on"), (("1", True), ("0", False)))
def test_environment_variable_turns_the_checked_mode_on(value, on):
    env = {**os.environ, "XPU_STONE_CHECK_FINITE": value}
    code = "import xpu_stone; print(xpu_stone.config.check_finite)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(on)


@pytest.mark.usefixtures("checked")
def test_checked_mode_is_skipped_while_compiling():
    x = torch.tensor([[math.nan, 0.0], [0.2, 0.1]])
    compiled = torch.compile(lambda a: P.dist0(a) + PW.cdist(a, a).sum(-1), fullgraph=True, backend="eager")
    out = compiled(x)  # traced: no check, no raise; the NaN row propagates
    assert torch.isnan(out[0]) and torch.isnan(out[1])  # row 1 meets the NaN row in cdist
    with pytest.raises(NonFiniteError):
        P.dist0(x)


# ------------------------------------------------------------- the declarations
def _declared_points() -> dict[str, tuple[str, tuple[int, ...]]]:
    """{struct: (domain, inputs)} from XS_POINTS(...) in the structs of cuda_src."""
    found = {}
    for path in sorted(CUDA_SRC.glob("*.cu")):
        for name, (base, body) in cl.struct_bodies(cl.strip_comments(path.read_text())).items():
            m = re.search(r"\bXS_POINTS\s*\(\s*xs_(\w+)\s*((?:,\s*\d+\s*)*)\)", body)
            if base == "xs_op_base" and m:
                found[name] = (m.group(1), tuple(int(i) for i in re.findall(r"\d+", m.group(2))))
    return found


def test_point_inputs_agree_between_cuda_engine_and_references():
    declared = _declared_points()
    assert len(declared) >= 25
    for op in ROW_OPS:
        cuda = declared.get(op.struct, (None, ()))
        engine = POINT_INPUTS.get(op.qualname, (None, ()))
        domains = [_domain(op, j) for j in range(len(op.vectors))]
        kinds = {d for d in domains if d is not None}
        refs = (kinds.pop() if kinds else None, tuple(j for j, d in enumerate(domains) if d))
        assert cuda == engine == refs, (op.qualname, cuda, engine, refs)


def test_domain_constants_mirror_domain_cuh():
    text = cl.strip_comments((CUDA_SRC / "common" / "domain.cuh").read_text())
    ctypes = {"double": "float64", "float": "float32", "xs_half": "float16", "xs_bf16": "bfloat16"}
    for ctype, name in ctypes.items():
        m = re.search(rf"struct xs_roundoff<{ctype}>\s*{{\s*static constexpr double u = (0x1p-\d+);", text)
        assert m and float.fromhex(m.group(1)) == UNIT_ROUNDOFF[name], ctype
    m = re.search(r"4 \* xs_roundoff<T>::u \+ \(domain == xs_hyperboloid \? (0x1p-\d+) : 0\.0\)", text)
    assert m and float.fromhex(m.group(1)) == HYPERBOLOID_MARGIN
    assert "double(D + 2) * xs_roundoff<S>::u" in text


@pytest.mark.gpu
@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_and_cpu_agree_on_bad_rows(dtype):
    """The same NaN rows on both sides, for every op and input."""
    for op in ROW_OPS:
        vecs, t, eps = _inputs(op, dtype, "cpu", seed=3)
        for j in range(len(vecs)):
            bad_vecs, _, _ = _poison(op, vecs, j)
            cpu = call(op, tuple(bad_vecs), C_VAL, t, eps)
            gpu = call(
                op, tuple(v.cuda() for v in bad_vecs), C_VAL, None if t is None else t.cuda(), eps
            ).cpu()
            nan_rows = [torch.isnan(o.reshape(ROWS, -1)).all(-1) for o in (cpu, gpu)]
            assert torch.equal(*nan_rows), (op.qualname, op.vectors[j])


@pytest.mark.gpu
@pytest.mark.usefixtures("checked", "poisoned_outputs")
def test_checked_mode_is_skipped_in_cuda_graph_capture():
    x = torch.tensor([[math.nan, 0.0], [0.2, 0.1]], device="cuda")
    P.dist0(torch.full_like(x, 0.1))  # warm-up outside the capture (kernel load)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = P.dist0(x)  # captured: no check (it would synchronise), no raise
    graph.replay()
    torch.cuda.synchronize()
    assert torch.isnan(out[0]) and torch.isfinite(out[1])


@pytest.mark.gpu
@pytest.mark.usefixtures("poisoned_outputs")
def test_cupy_arrays_follow_the_same_rule(monkeypatch):
    cupy = pytest.importorskip("cupy")
    x = cupy.asarray([[math.nan, 0.0], [2.0, 0.0], [0.2, 0.1]], dtype=cupy.float32)
    d = cupy.asnumpy(P.dist0(x))
    assert math.isnan(d[0]) and math.isnan(d[1]) and math.isfinite(d[2])
    y = cupy.asarray([[0.1, 0.0], [0.0, 0.3]], dtype=cupy.float32)
    dist = cupy.asnumpy(PW.cdist(x, y))
    assert all(math.isnan(v) for v in dist[:2].ravel()) and all(math.isfinite(v) for v in dist[2])
    # a CuPy c is a GPU array: not read on the host by default (NaN for its bad rows),
    # checked there with check_tensor_values
    monkeypatch.setattr(config, "check_tensor_values", None)
    c = cupy.asarray([[1.0], [1.0], [-1.0]])
    d = cupy.asnumpy(P.dist0(x[[2, 2, 2]], c=c))
    assert math.isfinite(d[0]) and math.isfinite(d[1]) and math.isnan(d[2])
    monkeypatch.setattr(config, "check_tensor_values", True)
    with pytest.raises(InvalidCurvatureError):
        P.dist0(x[[2, 2, 2]], c=c)
    monkeypatch.setattr(config, "check_finite", True)
    with pytest.raises(NonFiniteError) as e:
        P.dist0(x)
    assert (e.value.argument, e.value.row) == ("x", (0,))
    with pytest.raises(DomainError) as e:
        PW.cdist(x[1:], y)
    assert (e.value.argument, e.value.row) == ("x", (0,))


# ---------------------------------------------------------------- bad c and t tensors
BAD_C = {NAN_ROW: 0.0, INF_ROW: -1.0, OUT_ROW: math.nan, OUT_ROW2: math.inf}  # row -> a bad c
BAD_T = {NAN_ROW: math.nan, INF_ROW: -math.inf, OUT_ROW: math.inf}  # row -> a bad t


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("op", ROW_OPS, ids=_id)
def test_unchecked_bad_c_and_t_tensors_give_nan_rows(op, dtype, device, monkeypatch):
    """With the tensors' values not read on the host (``check_tensor_values`` False; on
    a GPU also the default), a per-row c of 0, -1, NaN or inf, or a per-row t of NaN or
    +-inf, gives that row NaN outputs and NaN gradients (inputs, c, t); the other rows
    are bit-for-bit those of the good values."""
    monkeypatch.setattr(config, "check_tensor_values", False)
    vecs, t, eps = _inputs(op, dtype, device, seed=4)
    pd = torch.float64 if dtype == torch.float64 else torch.float32
    c = torch.full((ROWS, 1), C_VAL, dtype=pd, device=device)
    bad_c = c.clone()
    for r, v in BAD_C.items():
        bad_c[r] = v
    cases = [(bad_c, t, set(BAD_C))]
    if t is not None:
        t = t.expand(ROWS, 1).clone()
        bad_t = t.clone()
        for r, v in BAD_T.items():
            bad_t[r] = v
        cases.append((c, bad_t, set(BAD_T)))

    def run(cc, tt):
        leaves = [v.clone().requires_grad_() for v in vecs]
        cl_ = cc.clone().requires_grad_()
        tl = tt.clone().requires_grad_() if tt is not None else None
        out = call(op, tuple(leaves), cl_, tl, eps)
        inputs = [*leaves, cl_] + ([tl] if tl is not None else [])
        return (out.detach(), *torch.autograd.grad(out, inputs, torch.ones_like(out), allow_unused=True))

    clean = run(c, t)
    for cc, tt, bad in cases:
        got = run(cc, tt)
        good = _good(ROWS, bad)
        for k, (g, g0) in enumerate(zip(got, clean)):
            if g is None:
                continue
            assert _rows_nan(g, bad) == [], (op.qualname, "output" if k == 0 else f"gradient {k - 1}")
            _assert_same(g[good], g0[good])


def test_tensor_values_are_read_on_the_host_only_where_that_costs_no_sync(monkeypatch):
    """``check_tensor_values``: None (the default) checks a CPU tensor on the host and
    raises; a false value lets it through (NaN rows); a true value checks every tensor
    (any truthy or falsy value, not just the bools)."""
    x = torch.full((3, 4), 0.1)
    bad_c = torch.tensor([[1.0], [-1.0], [1.0]])
    bad_t = torch.tensor([[0.5], [math.nan], [0.5]])
    for flag in (None, True, 1):
        monkeypatch.setattr(config, "check_tensor_values", flag)
        with pytest.raises(InvalidCurvatureError, match="positive"):
            P.expmap0(x, c=bad_c)
        with pytest.raises(InvalidArgumentError, match="finite"):
            P.geodesic(x, x / 2, bad_t)
    for flag in (False, 0):
        monkeypatch.setattr(config, "check_tensor_values", flag)
        for out in (P.expmap0(x, c=bad_c), P.geodesic(x, x / 2, bad_t)):
            assert torch.isnan(out[1]).all() and not torch.isnan(out[[0, 2]]).any()


def test_which_tensors_are_read_on_the_host(monkeypatch):
    """The rule of ``check_on_host`` for a tensor off the CPU (a meta tensor stands in
    for a GPU one): by default only in the checked mode, which synchronises anyway."""
    from xpu_stone.engine.scalars import check_on_host

    gpu_like, cpu = torch.empty(2, 1, device="meta"), torch.ones(2, 1)
    cases = [  # (check_tensor_values, check_finite) -> (off the CPU, on the CPU)
        ((None, False), (False, True)),
        ((None, True), (True, True)),
        ((True, False), (True, True)),
        ((False, True), (False, False)),
    ]
    for (flag, checked), expected in cases:
        monkeypatch.setattr(config, "check_tensor_values", flag)
        monkeypatch.setattr(config, "check_finite", checked)
        assert (check_on_host(gpu_like), check_on_host(cpu)) == expected, (flag, checked)


@pytest.mark.parametrize(("value", "flag"), (("1", True), ("0", False), ("", None)))
def test_environment_variable_sets_the_tensor_check(value, flag):
    env = {**os.environ, "XPU_STONE_CHECK_TENSOR_VALUES": value}
    code = "import xpu_stone; print(xpu_stone.config.check_tensor_values)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(flag)


def test_gemm_style_ops_check_the_c_they_read_on_the_host(monkeypatch):
    """cdist, knn and the HNN++ maps read a tensor c on the host (mobius_matvec a CPU one): a bad one raises there,
    whatever ``check_tensor_values`` says."""
    monkeypatch.setattr(config, "check_tensor_values", False)
    x = torch.full((4, 3), 0.1)
    z, r = torch.full((3, 2), 0.1), torch.zeros(2)
    for bad in (torch.tensor(-1.0), torch.tensor(math.nan)):
        with pytest.raises(InvalidCurvatureError):
            LIN.poincare_fc(x, z, r, bad)
        with pytest.raises(InvalidCurvatureError):
            LIN.poincare_mlr(x, z, r, bad)
        with pytest.raises(InvalidCurvatureError):
            PW.cdist(x, x, bad)
        with pytest.raises(InvalidCurvatureError):
            PW.knn(x, x, 2, bad)
        with pytest.raises(InvalidCurvatureError):
            LIN.mobius_matvec(torch.eye(3), x, bad)


@pytest.mark.gpu
def test_a_gpu_tensor_c_costs_no_synchronisation(monkeypatch):
    """Default config, a learnable c (0-d and per row) and a learnable t on the GPU:
    forward and backward of row ops of two models, of mobius_matvec and of a HypLinear
    with a learnable Curvature, the no-grad launch path, and a Klein midpoint with GPU
    weights run under ``torch.cuda.set_sync_debug_mode("error")``
    without a synchronisation (torch's; a CuPy one would not show); with
    ``check_tensor_values`` True, and in the checked mode, the host check synchronises
    and the same step raises (the guard can fail); a bad c gives NaN rows (mobius_matvec:
    a NaN call) instead of an error, and raises InvalidCurvatureError in the checked
    mode."""
    from xpu_stone import klein as K
    from xpu_stone.nn import Curvature, HypLinear

    monkeypatch.setattr(config, "check_tensor_values", None)
    monkeypatch.setattr(config, "check_finite", False)
    x = (torch.rand(64, 16, device="cuda") * 0.05).requires_grad_()
    y = torch.rand(64, 16, device="cuda") * 0.05
    c = torch.tensor(0.8, device="cuda", requires_grad=True)
    c_rows = torch.full((64, 1), 0.8, device="cuda", requires_grad=True)
    t = torch.full((64, 1), 0.3, device="cuda", requires_grad=True)
    h = L.expmap0(torch.cat([torch.zeros(64, 1, device="cuda"), y], -1), c=0.8)  # points of c = 0.8
    w = torch.rand(8, 4, device="cuda") + 0.1

    layer = HypLinear(16, 8, c=Curvature(0.8, learnable=True)).cuda()

    def step():
        out = P.dist(P.mobius_add(x, y, c=c), y, c=c).sum() + P.expmap0(y, c=c_rows).sum()
        out = out + P.geodesic(x, y, t, c=c).sum() + L.dist(h, h.flip(0), c=c).sum()
        out = out + layer(x).sum() + LIN.mobius_matvec(layer.weight, x, c).sum()
        grads = torch.autograd.grad(out, (x, c, c_rows, t, *layer.parameters()))
        with torch.no_grad():
            P.mobius_add(x, y, c=c)
            K.einstein_midpoint(x.detach()[:32].reshape(8, 4, 16), w, dim=1)
        return grads

    step()  # kernels loaded outside the guard
    torch.cuda.synchronize()
    for (flag, checked), raises in (((None, False), False), ((True, False), True), ((None, True), True)):
        monkeypatch.setattr(config, "check_tensor_values", flag)
        monkeypatch.setattr(config, "check_finite", checked)
        torch.cuda.set_sync_debug_mode("error")
        try:
            if raises:
                with pytest.raises(RuntimeError, match="synchroniz"):
                    step()
            else:
                step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    monkeypatch.setattr(config, "check_tensor_values", None)
    monkeypatch.setattr(config, "check_finite", False)
    bad = torch.full((64, 1), 0.8, device="cuda")
    bad[5] = -1.0
    out = P.dist(x.detach(), y, c=bad).cpu()
    assert torch.isnan(out[5]) and not torch.isnan(torch.cat([out[:5], out[6:]])).any()
    for bad_c in (torch.tensor(-1.0, device="cuda"), torch.tensor(math.nan, device="cuda")):
        assert torch.isnan(LIN.mobius_matvec(layer.weight.detach(), x.detach(), bad_c)).all()
    monkeypatch.setattr(config, "check_finite", True)
    with pytest.raises(InvalidCurvatureError):
        P.dist(x.detach(), y, c=bad)


def test_unchecked_bad_midpoint_weights_give_nan(monkeypatch):
    """Klein midpoint weights not read on the host: a negative or NaN weight, or weights
    summing to 0, give that midpoint NaN; the others are those of the good weights."""
    from xpu_stone import klein as K

    monkeypatch.setattr(config, "check_tensor_values", False)
    x = torch.rand(4, 3, 2, dtype=torch.float64) * 0.3
    w = torch.ones(4, 3, dtype=torch.float64)
    clean = K.einstein_midpoint(x, w, dim=1)
    bad = w.clone()
    bad[0, 1], bad[1, 2], bad[2] = -1.0, math.nan, 0.0
    got = K.einstein_midpoint(x, bad, dim=1)
    assert torch.isnan(got[:3]).all() and not torch.isnan(got[3]).any()
    _assert_same(got[3], clean[3])
