"""CPU tests of xpu_stone.nn: each layer against its functional definition,
outputs inside the ball, gradients reaching every parameter, manifold marking
of ball-valued parameters, the geodesic layers of the three models, and a short
run of the digits example."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from xpu_stone import linear as L
from xpu_stone import nn as hnn
from xpu_stone import poincare as P
from xpu_stone.errors import InvalidArgumentError, InvalidCurvatureError
from xpu_stone.manifolds import ManifoldParameter, PoincareBall, manifold_of
from xpu_stone.reference import linear as RL

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _ball(shape, c=1.0, seed=0, max_norm=0.9):
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(*shape, generator=gen)
    r = torch.rand(*shape[:-1], 1, generator=gen) * max_norm
    return d / d.norm(dim=-1, keepdim=True) * r / math.sqrt(c)


def _inside(y, c):
    return bool((y.double().norm(dim=-1) < 1 / math.sqrt(c)).all())


def test_curvature():
    for c in (1e-3, 0.5, 1.0, 30.0):
        cur = hnn.Curvature(c)
        assert abs(float(cur().detach()) - c) < 1e-5 * max(1.0, c)
        (g,) = torch.autograd.grad(cur(), cur.raw)
        assert float(g) > 0
    assert hnn.Curvature(2.0, learnable=False)() == 2.0
    with pytest.raises(InvalidCurvatureError):
        hnn.Curvature(-1.0)


def test_to_poincare_clips_and_learns_c():
    x = torch.randn(16, 5) * 10
    layer = hnn.ToPoincare(c=2.0, learnable_c=True, clip_r=1.5)
    y = layer(x)
    assert _inside(y, 2.0)
    # clipped to norm 1.5 before exp0: |y| = tanh(sqrt(c) 1.5) / sqrt(c)
    assert torch.allclose(
        y.norm(dim=-1), torch.full((16,), math.tanh(math.sqrt(2) * 1.5) / math.sqrt(2)), atol=1e-5
    )
    y.sum().backward()
    assert layer.curvature.raw.grad is not None and torch.isfinite(layer.curvature.raw.grad)
    small = torch.randn(4, 5) * 0.1
    assert torch.allclose(hnn.ToPoincare(1.0, clip_r=1.5)(small), P.expmap0(small, 1.0), atol=1e-6)


def test_hyp_linear_matches_definition_and_marks_bias():
    torch.manual_seed(0)
    layer = hnn.HypLinear(6, 4, c=0.7)
    assert isinstance(layer.bias, ManifoldParameter)
    assert manifold_of(layer.bias) == PoincareBall(0.7)
    with torch.no_grad():
        layer.bias.copy_(_ball((4,), 0.7, seed=3))
    x = _ball((10, 6), 0.7, seed=1)
    ref = RL.hyp_linear(x.double(), layer.weight.double(), layer.bias.double(), 0.7)
    assert torch.allclose(layer(x).double(), ref, atol=1e-5)
    layer(x).sum().backward()
    assert layer.weight.grad is not None and layer.bias.grad is not None


def test_poincare_linear_and_mlr():
    torch.manual_seed(1)
    fc, mlr = hnn.PoincareLinear(8, 6, c=1.3), hnn.HypMLR(6, 3, c=1.3)
    x = _ball((12, 8), 1.3, seed=2)
    y = fc(x)
    assert _inside(y, 1.3)
    assert torch.allclose(y, L.poincare_fc(x, fc.weight, fc.bias, 1.3), atol=1e-6)
    logits = mlr(y)
    assert logits.shape == (12, 3)
    assert torch.allclose(
        logits.double(), RL.mlr_hnnpp(y.double(), mlr.weight.double(), mlr.bias.double(), 1.3), atol=1e-5
    )
    nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2] * 4)).backward()
    for p in (*fc.parameters(), *mlr.parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all()
    with pytest.raises(InvalidArgumentError, match="fixed curvature"):
        hnn.HypMLR(4, 2, c=hnn.Curvature(1.0))


@pytest.mark.parametrize("layer", (hnn.HypLinear, hnn.PoincareLinear, hnn.HypMLR))
def test_layer_sizes_must_be_positive_ints(layer):
    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(InvalidArgumentError, match="positive int"):
            layer(bad, 2)
        with pytest.raises(InvalidArgumentError, match="positive int"):
            layer(2, bad)


def test_hyp_act():
    x = _ball((9, 4), 2.0, seed=4)
    assert torch.allclose(hnn.HypAct(nn.Identity(), 2.0)(x), x, atol=1e-6)
    y = hnn.HypAct(nn.ReLU(), 2.0)(x)
    assert torch.allclose(y, P.expmap0(torch.relu(P.logmap0(x, 2.0)), 2.0), atol=1e-6)
    with pytest.raises(InvalidArgumentError):
        hnn.HypAct(3)


def test_shared_learnable_curvature():
    cur = hnn.Curvature(1.0)
    model = nn.Sequential(hnn.ToPoincare(cur), hnn.HypLinear(5, 5, cur), hnn.HypAct(nn.Tanh(), cur))
    model(torch.randn(7, 5)).sum().backward()
    assert cur.raw.grad is not None and torch.isfinite(cur.raw.grad)


def test_poincare_ball_layer():
    u, v = _ball((8, 3), seed=5), _ball((8, 3), seed=6)
    fixed = hnn.PoincareBallLayer(t=0.3)
    assert torch.allclose(fixed(u, v), P.geodesic(u, v, 0.3))
    learn = hnn.PoincareBallLayer(t=0.3, learnable=True)
    learn(u, v).sum().backward()
    assert learn.t.grad is not None
    with pytest.raises(InvalidArgumentError):
        hnn.PoincareBallLayer(t=float("nan"))


def _lorentz(shape, c, seed):
    gen = torch.Generator().manual_seed(seed)
    space = torch.randn(*shape[:-1], shape[-1] - 1, generator=gen, dtype=torch.float64) * 0.5
    return torch.cat([torch.sqrt(1 / c + space.square().sum(-1, keepdim=True)), space], dim=-1)


def test_lorentz_layer_is_on_the_geodesic():
    lorentz = pytest.importorskip("xpu_stone.lorentz")
    c = 2.0
    u, v = _lorentz((6, 4), c, 7), _lorentz((6, 4), c, 8)
    layer = hnn.LorentzLayer(t=0.25, c=c)
    y = layer(u, v)
    assert torch.allclose(y, lorentz.geodesic(u, v, 0.25, c))
    # on the hyperboloid, a quarter of the way: d(u, y) = d(u, v) / 4
    assert torch.allclose(lorentz.dist(u, y, c), lorentz.dist(u, v, c) / 4, atol=1e-9)
    learn = hnn.LorentzLayer(t=0.25, learnable=True, c=c)
    learn(u, v).sum().backward()
    assert learn.t.grad is not None


def test_klein_layer_is_on_the_geodesic():
    klein = pytest.importorskip("xpu_stone.klein")
    c = 0.5
    u, v = _ball((6, 4), c, 9).double(), _ball((6, 4), c, 10).double()
    layer = hnn.KleinLayer(t=0.4, c=c)
    y = layer(u, v)
    assert torch.allclose(y, klein.geodesic(u, v, 0.4, c))
    assert torch.allclose(klein.dist(u, y, c), 0.4 * klein.dist(u, v, c), atol=1e-9)


def test_digits_short_run():
    pytest.importorskip("sklearn")
    from xpu_stone.examples import digits_mlp

    acc, correct, total, model = digits_mlp.train("cpu", epochs=6, progress=False)
    assert total == 450 and correct == round(acc * total)
    assert acc >= 0.9
    assert any(isinstance(p, ManifoldParameter) for p in model.parameters())


def test_hyp_linear_bias_lives_on_the_layers_ball():
    from xpu_stone.manifolds import manifold_of

    for c, want in ((0.7, 0.7), (hnn.Curvature(2.0, learnable=False), 2.0), (hnn.Curvature(3.0), 3.0)):
        assert manifold_of(hnn.HypLinear(4, 3, c=c).bias).c == pytest.approx(want)
