"""Manifold descriptors and ManifoldParameter (CPU)."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch

from xpu_stone.errors import InvalidArgumentError, InvalidCurvatureError, UnsupportedOperationError
from xpu_stone.manifolds import Euclidean, Lorentz, ManifoldParameter, PoincareBall, manifold_of
from xpu_stone.reference import poincare as ref


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = ManifoldParameter(torch.randn(6, 3) * 0.1, PoincareBall(c=0.5))
        self.hyp = ManifoldParameter(Lorentz(2.0).projx(torch.randn(4, 5)), Lorentz(2.0))
        self.lin = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.lin(self.emb[x]).sum() + self.hyp.sum()


def test_descriptors_are_values():
    assert PoincareBall(1.0) == PoincareBall(c=1) and hash(PoincareBall(2.0)) == hash(PoincareBall(2))
    assert PoincareBall(1.0) != PoincareBall(2.0) and Lorentz(1.0) != PoincareBall(1.0)
    assert pickle.loads(pickle.dumps(Lorentz(3.0))) == Lorentz(3.0)
    for bad in (0.0, -1.0, float("nan"), "x", torch.ones(2)):
        with pytest.raises(InvalidCurvatureError):
            PoincareBall(bad)
    with pytest.raises(InvalidArgumentError):
        ManifoldParameter(torch.zeros(2), manifold="poincare")
    with pytest.raises(InvalidArgumentError, match="floating point"):
        ManifoldParameter(torch.zeros(2, dtype=torch.int64), PoincareBall())


def test_parameter_basics():
    p = ManifoldParameter(torch.zeros(3, 2), PoincareBall(2.0))
    assert isinstance(p, torch.nn.Parameter) and p.requires_grad
    assert manifold_of(p) == PoincareBall(2.0)
    assert manifold_of(torch.zeros(2)) is None and manifold_of(torch.nn.Parameter(torch.zeros(2))) is None
    assert type(p * 2) is torch.Tensor and manifold_of(p * 2) is None
    assert manifold_of(ManifoldParameter(torch.zeros(2))) == Euclidean()
    assert not ManifoldParameter(torch.zeros(2), Euclidean(), requires_grad=False).requires_grad
    assert "PoincareBall" in repr(p)


def test_deepcopy_pickle_state_dict_and_to():
    net = Net()
    clone = copy.deepcopy(net)
    assert type(clone.emb) is ManifoldParameter and clone.emb.manifold == PoincareBall(0.5)
    assert clone.emb.data_ptr() != net.emb.data_ptr() and torch.equal(clone.emb, net.emb)
    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert manifold_of(loaded.hyp) == Lorentz(2.0) and torch.equal(loaded.hyp, net.hyp)
    # state_dict holds plain tensors (loadable with weights_only=True); loading copies in place
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    buf.seek(0)
    other = Net()
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert manifold_of(other.emb) == PoincareBall(0.5) and torch.equal(other.emb, net.emb)
    net.double()
    assert type(net.emb) is ManifoldParameter and net.emb.dtype == torch.float64
    assert [manifold_of(p) for p in net.parameters()][:2] == [PoincareBall(0.5), Lorentz(2.0)]


def test_ddp_wrapping_keeps_manifolds():
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    def check():  # the DDP (its reducer holds the group) is freed on return, before the group goes
        ddp = DistributedDataParallel(Net())
        ddp(torch.tensor([0, 2])).backward()
        params = dict(ddp.named_parameters())
        assert manifold_of(params["module.emb"]) == PoincareBall(0.5)
        assert manifold_of(ddp.module.hyp) == Lorentz(2.0) and params["module.emb"].grad is not None

    # Destroying the group while a DDP still holds it left the test process hanging once
    # in ProcessGroupGloo's destructor when the DDP was freed afterwards (CPU CI, 2026-12-02).
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        check()
    finally:
        dist.destroy_process_group()


def test_geoopt_translation():
    geoopt = pytest.importorskip("geoopt")
    assert manifold_of(geoopt.ManifoldParameter(torch.zeros(2, 2), geoopt.PoincareBall(c=2.0))) == (
        PoincareBall(2.0)
    )
    assert manifold_of(geoopt.ManifoldTensor(torch.zeros(2, 3), manifold=geoopt.Lorentz(k=0.5))) == Lorentz(
        2.0
    )
    assert manifold_of(geoopt.ManifoldParameter(torch.zeros(2))) == Euclidean()
    with pytest.raises(UnsupportedOperationError):
        manifold_of(geoopt.ManifoldParameter(torch.zeros(2, 2), geoopt.Sphere()))


def _rand_ball(n, d, c, gen):
    x = torch.randn(n, d, dtype=torch.float64, generator=gen)
    return x / (1 + x.norm(dim=-1, keepdim=True)) / c**0.5 * 0.9


def test_poincare_descriptor_matches_reference():
    gen = torch.Generator().manual_seed(0)
    c = 0.7
    m = PoincareBall(c)
    x, y = _rand_ball(8, 5, c, gen), _rand_ball(8, 5, c, gen)
    u, g = torch.randn(8, 5, dtype=torch.float64, generator=gen), torch.randn(8, 5, dtype=torch.float64)
    lam = ref.lambda_x(x, c, keepdim=True)
    torch.testing.assert_close(m.egrad2rgrad(x, g), g / lam**2)
    torch.testing.assert_close(m.inner(x, u, g), lam**2 * (u * g).sum(-1, keepdim=True))
    torch.testing.assert_close(m.expmap(x, u * 0.1), ref.expmap(x, u * 0.1, c))
    torch.testing.assert_close(m.transp(x, y, u), ref.transp(x, y, u, c))
    far = m.projx(x * 10)
    assert (far.norm(dim=-1) * c**0.5 <= 1 - 1e-5 + 1e-12).all()


def test_lorentz_descriptor_identities():
    gen = torch.Generator().manual_seed(1)
    c = 1.7
    m = Lorentz(c)
    x = m.projx(torch.randn(16, 4, dtype=torch.float64, generator=gen) * 0.5)
    torch.testing.assert_close(m.inner(x, x), torch.full((16, 1), -1 / c, dtype=torch.float64))
    u = m.proju(x, torch.randn(16, 4, dtype=torch.float64, generator=gen))
    v = m.proju(x, torch.randn(16, 4, dtype=torch.float64, generator=gen))
    torch.testing.assert_close(m.inner(x, x, u), torch.zeros(16, 1, dtype=torch.float64), atol=1e-12, rtol=0)
    u = u / m.inner(x, u).sqrt() * torch.rand(16, 1, dtype=torch.float64, generator=gen) * 3
    y = m.expmap(x, u)
    torch.testing.assert_close(m.inner(y, y), torch.full((16, 1), -1 / c, dtype=torch.float64))
    # geodesic distance arccosh(-c<x,y>)/sqrt(c) equals the tangent norm
    d = torch.acosh(-c * m.minkowski(x, y)) / c**0.5
    torch.testing.assert_close(d, m.inner(x, u).sqrt())
    # parallel transport: tangent at y, preserves inner products
    tu, tv = m.transp(x, y, u), m.transp(x, y, v)
    torch.testing.assert_close(m.inner(y, y, tu), torch.zeros(16, 1, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(m.inner(y, tu, tv), m.inner(x, u, v))
    # the Riemannian gradient is tangent and represents the Euclidean differential
    g = torch.randn(16, 4, dtype=torch.float64, generator=gen)
    rg = m.egrad2rgrad(x, g)
    torch.testing.assert_close(m.inner(x, x, rg), torch.zeros(16, 1, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(m.inner(x, rg, u), (g * u).sum(-1, keepdim=True))
