"""xpu_stone.compat.patch_geoopt: geoopt's public behaviour is kept (outputs and gradients)."""

from __future__ import annotations

import pytest
import torch

geoopt = pytest.importorskip("geoopt")

from xpu_stone import compat  # noqa: E402

CASES = [
    ("dist", 2, {}),
    ("dist", 2, {"keepdim": True}),
    ("dist0", 1, {}),
    ("expmap", 2, {}),
    ("expmap", 2, {"project": False}),
    ("expmap0", 1, {}),
    ("logmap", 2, {}),
    ("logmap0", 1, {}),
    ("mobius_add", 2, {}),
    ("projx", 1, {}),
    ("transp", 3, {}),
    ("lambda_x", 1, {"keepdim": True}),
]


@pytest.fixture
def patched_cpu():
    """Patched with CPU routing enabled, so that the routing is exercised without a GPU."""
    compat.patch_geoopt(devices=("cpu",))
    yield
    compat.unpatch_geoopt()


def _inputs(n, gen, ball, far=False):
    out = []
    for i in range(n):
        z = torch.randn(6, 5, dtype=torch.float64, generator=gen)
        if i < 2 or n == 1:  # points (the third argument of transp is a tangent vector)
            z = z / z.norm(dim=-1, keepdim=True) * torch.rand(6, 1, dtype=torch.float64, generator=gen)
            z = z * (1.2 if far else 0.9) / float(ball.c) ** 0.5
        out.append(z.requires_grad_())
    return out


def _call(ball, name, args, kw):
    out = getattr(ball, name)(*args, **kw)
    grads = torch.autograd.grad(out.sum(), args, allow_unused=True)
    return out.detach(), [g if g is None else g.detach() for g in grads]


@pytest.mark.parametrize(
    "name,nargs,kw", CASES, ids=[f"{n}{'-' + '-'.join(k) if k else ''}" for n, _, k in CASES]
)
def test_outputs_and_gradients_match_geoopt(patched_cpu, name, nargs, kw):
    ball = geoopt.PoincareBall(c=0.8)
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    args = _inputs(nargs, gen, ball, far=name == "projx")
    before = compat.stats()["calls"]
    mine, mine_g = _call(ball, name, args, kw)
    assert compat.stats()["calls"] == before + 1, "the call was not routed to xpu_stone"
    compat.unpatch_geoopt()
    theirs, theirs_g = _call(ball, name, args, kw)
    compat.patch_geoopt(devices=("cpu",))
    # geoopt clamps artanh's argument at 1 - 1e-7 in every dtype: agreement to ~1e-6 near the boundary
    torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-7)
    for a, b in zip(mine_g, theirs_g, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fallbacks_keep_geoopt_paths(patched_cpu):
    gen = torch.Generator().manual_seed(0)
    x = _inputs(1, gen, geoopt.PoincareBall())[0].detach()
    before = compat.stats()
    # learnable curvature, positive curvature, dim other than the last, float16, kwargs without counterpart
    learn = geoopt.PoincareBall(c=1.0, learnable=True)
    learn.dist0(x)
    geoopt.SphereProjection(k=1.0).dist0(x)
    geoopt.PoincareBall().dist0(x.t().contiguous(), dim=0)
    geoopt.PoincareBall().dist0(x.half())
    after = compat.stats()
    assert after["calls"] == before["calls"] and after["fallbacks"] == before["fallbacks"] + 4
    torch.testing.assert_close(geoopt.PoincareBall().dist0(x.t(), dim=0), geoopt.PoincareBall().dist0(x))


def test_cuda_only_by_default_and_unpatch_restores():
    original = geoopt.PoincareBall.dist
    names = compat.patch_geoopt()
    try:
        assert "Stereographic.dist" in names and compat.is_patched()
        assert geoopt.PoincareBall.dist is not original
        assert compat.patch_geoopt() == names  # idempotent
        before = compat.stats()["calls"]
        x = torch.zeros(3, 2, dtype=torch.float64)
        geoopt.PoincareBall().dist0(x)  # CPU tensors stay on geoopt's path by default
        assert compat.stats()["calls"] == before
    finally:
        compat.unpatch_geoopt()
    assert geoopt.PoincareBall.dist is original and not compat.is_patched()


def test_geoopt_training_loop_unchanged(patched_cpu):
    gen = torch.Generator().manual_seed(4)
    init = _inputs(1, gen, geoopt.PoincareBall())[0].detach()
    results = []
    for patch in (True, False):
        if not patch:
            compat.unpatch_geoopt()
        p = geoopt.ManifoldParameter(init.clone(), manifold=geoopt.PoincareBall())
        opt = geoopt.optim.RiemannianAdam([p], lr=0.05)
        for _ in range(5):
            opt.zero_grad()
            p.manifold.dist(p, init.flip(0)).pow(2).sum().backward()
            opt.step()
        results.append(p.detach())
    compat.patch_geoopt(devices=("cpu",))
    torch.testing.assert_close(results[0], results[1], rtol=1e-7, atol=1e-9)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "name,nargs,kw", CASES, ids=[f"{n}{'-' + '-'.join(k) if k else ''}" for n, _, k in CASES]
)
def test_cuda_routing_matches_geoopt(name, nargs, kw):
    ball = geoopt.PoincareBall(c=0.8).cuda()
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    args = [
        a.detach().float().cuda().requires_grad_() for a in _inputs(nargs, gen, ball, far=name == "projx")
    ]
    theirs, theirs_g = _call(ball, name, args, kw)
    compat.patch_geoopt()
    try:
        before = compat.stats()["calls"]
        mine, mine_g = _call(ball, name, args, kw)
        assert compat.stats()["calls"] == before + 1
    finally:
        compat.unpatch_geoopt()
    torch.testing.assert_close(mine, theirs, rtol=2e-5, atol=2e-6)
    for a, b in zip(mine_g, theirs_g, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_manifolds_created_and_freed_never_reuse_a_stale_curvature(patched_cpu):
    """Many manifolds of both curvature signs, each used then freed: a new manifold's
    ``k`` can land at a freed one's address, and must still get its own curvature
    (the patched result equals geoopt's own maths for that ``k``, call after call)."""
    from geoopt.manifolds.stereographic import math as gmath

    gen = torch.Generator().manual_seed(5)
    served = compat.stats()["calls"]
    for i in range(300):
        k = (0.3 + torch.rand((), generator=gen, dtype=torch.float64).item()) * (-1 if i % 2 else 1)
        m = geoopt.Stereographic(k=k)
        x = torch.randn(4, 3, dtype=torch.float64, generator=gen) * 0.2
        y = torch.randn(4, 3, dtype=torch.float64, generator=gen) * 0.2
        got = m.dist(x, y)
        want = gmath.dist(x, y, k=m.k)
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-9), (i, k, (got - want).abs().max().item())
        del m
    assert compat.stats()["calls"] > served  # the ball's calls were served by xpu_stone
