"""CPU tests of xpu_stone.pairwise (cdist, knn): the GEMM-plus-epilogue maths
against the float64 broadcast reference, its documented accuracy for nearby
pairs, float64 gradcheck of the hand-written backward, knn against brute force,
torch.library registration (opcheck, torch.compile), and bad-input errors."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import ball_points, rel_err

from xpu_stone import convert as C
from xpu_stone import pairwise as PW
from xpu_stone.errors import InvalidArgumentError, InvalidCurvatureError, ShapeMismatchError
from xpu_stone.ops import pairwise as OPW
from xpu_stone.reference import pairwise as RP

CURVATURES = (0.01, 1.0, 4.0, 100.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _interior(shape, c, gen, dtype=torch.float64, max_norm=0.9):
    """Points of the ball with norms uniform in [0, max_norm] of the radius."""
    d = torch.randn(*shape, generator=gen, dtype=torch.float64)
    d = d / d.norm(dim=-1, keepdim=True)
    r = torch.rand(*shape[:-1], 1, generator=gen, dtype=torch.float64) * max_norm
    return (d * r / math.sqrt(c)).to(dtype)


def _points(model, shape, c, gen, dtype=torch.float64):
    if model == "poincare":
        return _interior(shape, c, gen, dtype)
    return RP.lorentz_points(shape, c, dtype, gen, scale=1.0 / math.sqrt(c))


def _lorentz_ambient(x, y, c):
    """arcosh(-c <x, y>_L) / sqrt(c): the formula whose ambient gradient cdist returns."""
    c = torch.as_tensor(c, dtype=x.dtype)
    prod = x.unsqueeze(-2) * y.unsqueeze(-3)
    inner = prod[..., 1:].sum(-1) - prod[..., 0]
    return torch.acosh((-c * inner).clamp_min(1)) / c.sqrt()


@pytest.mark.parametrize("model", ["poincare", "lorentz"])
@pytest.mark.parametrize("c", CURVATURES)
def test_float64_matches_reference(model, c):
    gen = torch.Generator().manual_seed(1)
    x, y = _points(model, (37, 9), c, gen), _points(model, (23, 9), c, gen)
    out = PW.cdist(x, y, c, model)
    ref = RP.cdist(x, y, c, model)
    assert out.shape == (37, 23) and out.dtype == torch.float64
    assert rel_err(out, ref) < 1e-10


@pytest.mark.parametrize("model", ["poincare", "lorentz"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_low_precision_matches_reference(model, dtype):
    gen = torch.Generator().manual_seed(2)
    x, y = _points(model, (40, 16), 1.0, gen, dtype), _points(model, (31, 16), 1.0, gen, dtype)
    out = PW.cdist(x, y, 1.0, model)
    assert out.dtype == dtype
    # the reference at the rounded inputs: what is left is the GEMM's and the epilogue's error
    ref = RP.cdist(x.double(), y.double(), 1.0, model)
    tol = 2e-5 if dtype == torch.float32 else 1e-2
    assert rel_err(out, ref) < tol


def test_batched_and_broadcast():
    gen = torch.Generator().manual_seed(3)
    x = _interior((2, 1, 5, 4), 1.0, gen)
    y = _interior((3, 7, 4), 1.0, gen)
    out = PW.cdist(x, y)
    assert out.shape == (2, 3, 5, 7)
    ref = RP.cdist(x, y)
    assert rel_err(out, ref) < 1e-10


def test_zero_rows_and_one_feature():
    x = torch.zeros(0, 3, dtype=torch.float64)
    y = torch.rand(4, 3, dtype=torch.float64) * 0.1
    assert PW.cdist(x, y).shape == (0, 4)
    a = torch.tensor([[0.1], [-0.3]], dtype=torch.float64)
    b = torch.tensor([[0.2], [0.5], [-0.7]], dtype=torch.float64)
    assert rel_err(PW.cdist(a, b), RP.cdist(a, b)) < 1e-12


@pytest.mark.parametrize("model", ["poincare", "lorentz"])
def test_self_distance_is_zero_with_finite_gradients(model):
    gen = torch.Generator().manual_seed(4)
    x = _points(model, (20, 8), 1.0, gen, torch.float32).requires_grad_()
    d = PW.cdist(x, x, 1.0, model)
    assert torch.all(d.diagonal() == 0)
    (g,) = torch.autograd.grad(d.sum(), x)
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("c", CURVATURES)
def test_nearby_pairs_within_documented_limit(c):
    """fp32: |d - d_exact| <= lambda_x sqrt(tau (|x|^2 + |y|^2)) (a factor 4 of slack),
    for gaps from 1e-7 to 1e-1 of the radius and points up to the boundary."""
    gen = torch.Generator().manual_seed(5)
    x = ball_points((200, 32), c, torch.float64, gen=gen)
    step = torch.randn(200, 32, generator=gen, dtype=torch.float64)
    gap = 10 ** (-7 + 6 * torch.rand(200, 1, generator=gen, dtype=torch.float64)) / math.sqrt(c)
    y = x + step / step.norm(dim=-1, keepdim=True) * gap * (1 - math.sqrt(c) * x.norm(dim=-1, keepdim=True))
    x32, y32 = x.float(), y.float()
    out = PW.cdist(x32, y32, c).diagonal().double()
    ref = RP.cdist_poincare(x32.double(), y32.double(), c).diagonal()
    xx, yy = x32.double().square().sum(-1), y32.double().square().sum(-1)
    lam = 2 / (1 - c * torch.maximum(xx, yy))
    bound = lam * torch.sqrt(OPW.snap_tau(torch.float32, 32) * (xx + yy)) + 1e-6 * ref
    assert torch.all((out - ref).abs() <= 4 * bound)


def test_boundary_points_stay_finite():
    for c in CURVATURES:
        gen = torch.Generator().manual_seed(6)
        x = ball_points((64, 17), c, torch.float32, gen=gen, boundary=True).requires_grad_()
        y = ball_points((48, 17), c, torch.float32, gen=gen).requires_grad_()
        d = PW.cdist(x, y, c)
        assert torch.isfinite(d).all() and (d >= 0).all()
        gx, gy = torch.autograd.grad(d.sum(), (x, y))
        assert torch.isfinite(gx).all() and torch.isfinite(gy).all()


@pytest.mark.parametrize("model", ["poincare", "lorentz"])
def test_gradcheck(model):
    gen = torch.Generator().manual_seed(7)
    for c in (0.5, 3.0):
        x = _points(model, (2, 5, 4), c, gen).requires_grad_()
        y = _points(model, (2, 3, 4), c, gen).requires_grad_()
        ct = torch.tensor(c, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda a, b, k: PW.cdist(a, b, k, model), (x, y, ct))


@pytest.mark.parametrize("model", ["poincare", "lorentz"])
def test_gradients_match_reference_autograd(model):
    gen = torch.Generator().manual_seed(8)
    x = _points(model, (30, 6), 2.0, gen).requires_grad_()
    y = _points(model, (11, 6), 2.0, gen).requires_grad_()
    ct = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    g = torch.randn(30, 11, generator=gen, dtype=torch.float64)
    ours = torch.autograd.grad(PW.cdist(x, y, ct, model), (x, y, ct), g)
    ref_fn = RP.cdist_poincare if model == "poincare" else _lorentz_ambient
    ref = torch.autograd.grad(ref_fn(x, y, ct), (x, y, ct), g)
    for a, b in zip(ours, ref):
        assert rel_err(a, b) < 1e-9


@pytest.mark.parametrize("model", ["poincare", "lorentz"])
def test_knn_exact_against_brute_force(model):
    gen = torch.Generator().manual_seed(9)
    x = _points(model, (50, 8), 1.0, gen)
    y = _points(model, (70, 8), 1.0, gen)
    ref_v, ref_i = RP.knn(x, y, 5, 1.0, model)
    for chunk in (None, 1, 7, 50):
        v, i = PW.knn(x, y, 5, 1.0, model, chunk_rows=chunk)
        assert torch.equal(i, ref_i)
        assert rel_err(v, ref_v) < 1e-12
        assert torch.all(v[:, 1:] >= v[:, :-1])


def test_knn_batched_values_differentiable():
    gen = torch.Generator().manual_seed(10)
    x = _interior((2, 6, 3), 1.0, gen).requires_grad_()
    y = _interior((2, 9, 3), 1.0, gen).requires_grad_()
    v, i = PW.knn(x, y, 3, chunk_rows=4)
    assert v.shape == i.shape == (2, 6, 3)
    ref_v, ref_i = RP.knn(x.detach(), y.detach(), 3)
    assert torch.equal(i, ref_i)
    assert torch.autograd.gradcheck(lambda a, b: PW.knn(a, b, 3)[0], (x, y))


def test_knn_fp32_selects_true_neighbours():
    gen = torch.Generator().manual_seed(11)
    x = _interior((100, 16), 1.0, gen, torch.float32)
    y = _interior((300, 16), 1.0, gen, torch.float32)
    v, i = PW.knn(x, y, 4, chunk_rows=33)
    exact = RP.cdist(x.double(), y.double())
    ref_v = torch.topk(exact, 4, largest=False).values
    # every returned neighbour is within rounding of the true k-th distance
    assert torch.allclose(torch.gather(exact, 1, i), ref_v, rtol=1e-4, atol=1e-5)
    assert rel_err(v, ref_v) < 1e-5


def test_opcheck_and_compile():
    gen = torch.Generator().manual_seed(12)
    x = _interior((1, 4, 3), 1.0, gen).requires_grad_()
    y = _interior((1, 5, 3), 1.0, gen).requires_grad_()
    c = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.xpu_stone.pairwise_cdist.default, (x, y, c, 1.0, 0))
    # the hyperboloid of c = 2 (model 1) through the ball of radius 1/sqrt(2)
    xl, yl = (C.poincare_to_lorentz(a.detach() / math.sqrt(2), c=2.0).requires_grad_() for a in (x, y))
    torch.library.opcheck(torch.ops.xpu_stone.pairwise_cdist.default, (xl, yl, None, 2.0, 1))
    compiled = torch.compile(lambda a, b: PW.cdist(a, b, 1.5).sum(), fullgraph=True, backend="aot_eager")
    out = compiled(x, y)
    (g,) = torch.autograd.grad(out, x)
    (g_ref,) = torch.autograd.grad(PW.cdist(x, y, 1.5).sum(), x)
    assert torch.allclose(g, g_ref)


def test_bad_inputs():
    x = torch.rand(3, 4) * 0.1
    with pytest.raises(InvalidArgumentError, match="model"):
        PW.cdist(x, x, model="klein")
    with pytest.raises(InvalidCurvatureError):
        PW.cdist(x, x, c=-1.0)
    with pytest.raises(InvalidCurvatureError):
        PW.cdist(x, x, c=torch.ones(3))
    with pytest.raises(ShapeMismatchError, match="features"):
        PW.cdist(x, torch.rand(3, 5))
    with pytest.raises(ShapeMismatchError, match="rows, D"):
        PW.cdist(x[0], x)
    with pytest.raises(InvalidArgumentError, match="dtype"):
        PW.cdist(x, x.double())
    with pytest.raises(InvalidArgumentError, match="float16"):
        PW.cdist(x.int(), x.int())
    with pytest.raises(ShapeMismatchError, match="broadcast"):
        PW.cdist(torch.rand(2, 3, 4), torch.rand(3, 3, 4))
    with pytest.raises(InvalidArgumentError, match="k must"):
        PW.knn(x, x, 4)
    with pytest.raises(InvalidArgumentError, match="chunk_rows"):
        PW.knn(x, x, 2, chunk_rows=0)
    before = x.clone()
    PW.cdist(x, x)
    assert torch.equal(x, before)
