"""xpu_stone.compat.patch_geoopt: geoopt's public behaviour is kept (outputs and gradients)."""

from __future__ import annotations

import pytest
import torch

geoopt = pytest.importorskip("geoopt")

import math  # noqa: E402

import torch.autograd.forward_ad as fwAD  # noqa: E402
from geoopt.manifolds.lorentz import math as lmath  # noqa: E402
from geoopt.manifolds.stereographic import math as gmath  # noqa: E402

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


def _reasons(name):
    return compat.stats()["methods"].get(name, {}).get("reasons", {})


def _declined_cases():
    """(label, manifold, method, args, kwargs, the reason counted) of calls the patch must
    pass to geoopt."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, dtype=torch.float64, generator=gen) * 0.1
    far = x.clone()
    far[2] *= 100  # outside the ball
    nan = x.clone()
    nan[1, 1] = float("nan")
    lx = geoopt.Lorentz(k=2.0).double()
    lp = lmath.project(torch.randn(6, 4, dtype=torch.float64, generator=gen), k=torch.tensor(2.0))
    off = lp.clone()
    off[0, 0] *= 3  # off the hyperboloid
    short = torch.zeros(6, 4, dtype=torch.float64)
    short[:, 1] = 1e-6
    ball = geoopt.PoincareBall(c=0.8).double()
    return [
        ("learnable", geoopt.PoincareBall(c=1.0, learnable=True), "dist0", (x,), {}, "learnable curvature"),
        ("sphere", geoopt.SphereProjection(k=1.0), "dist0", (x,), {}, "curvature value"),
        ("flat", geoopt.Stereographic(k=0.0), "dist0", (x,), {}, "curvature value"),
        ("Taylor", geoopt.Stereographic(k=-1e-9), "expmap0", (x,), {}, "curvature value"),
        ("dim 0", ball, "dist0", (x.t().contiguous(),), {"dim": 0}, "dim not the last"),
        ("float16", ball, "dist0", (x.half(),), {}, "dtype"),
        ("D = 1", ball, "expmap0", (x[:, :1],), {}, "feature dims"),
        ("no rows", ball, "dist", (x[:0], x[0]), {}, "no rows"),
        ("outside", ball, "dist0", (far,), {}, "point outside the model"),
        ("NaN", ball, "expmap0", (nan,), {}, "non-finite or huge input"),
        ("keepdim 1", ball, "dist0", (x,), {"keepdim": 1}, "non-boolean option"),
        (
            "k (1,), 1-d",
            geoopt.Lorentz(k=torch.tensor([2.0])),
            "projx",
            (lp[0].float(),),
            {},
            "curvature shape or dtype",
        ),
        ("float64 k, 1-d float32", ball, "dist0", (x[0].float(),), {}, "curvature shape or dtype"),
        ("off the hyperboloid", lx, "proju", (off, lp), {}, "point outside the model"),
        ("short tangent", lx, "expmap0", (short,), {}, "tangent shorter than geoopt's norm clamp"),
    ]


@pytest.mark.parametrize("case", range(len(_declined_cases())), ids=[c[0] for c in _declined_cases()])
def test_calls_the_patch_cannot_serve_exactly_run_geoopt(patched_cpu, case):
    label, m, name, args, kw, reason = _declined_cases()[case]
    qualname = ("Lorentz." if isinstance(m, geoopt.Lorentz) else "Stereographic.") + name
    before = compat.stats()
    counted = _reasons(qualname).get(reason, 0)
    try:
        mine = getattr(m, name)(*args, **kw)
    except (TypeError, RuntimeError) as err:  # geoopt's own error, raised by geoopt
        mine = type(err)
    after = compat.stats()
    assert after["calls"] == before["calls"], f"{label}: served"
    assert after["fallbacks"] == before["fallbacks"] + 1
    assert _reasons(qualname).get(reason, 0) == counted + 1, _reasons(qualname)
    compat.unpatch_geoopt()
    try:
        theirs = getattr(m, name)(*args, **kw)
    except (TypeError, RuntimeError) as err:
        theirs = type(err)
    if isinstance(theirs, type):
        assert mine is theirs
    else:
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0, equal_nan=True)


def test_transforms_and_forward_ad_run_geoopt(patched_cpu):
    ball = geoopt.PoincareBall(c=0.8).double()
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.2
    counted = _reasons("Stereographic.dist0")
    torch.vmap(ball.dist0)(x)
    with fwAD.dual_level():
        fwAD.unpack_dual(ball.dist0(fwAD.make_dual(x, torch.ones_like(x))))
    reasons = _reasons("Stereographic.dist0")
    assert (
        reasons.get("transform, tracing or capture", 0) == counted.get("transform, tracing or capture", 0) + 1
    )
    assert reasons.get("forward-mode AD", 0) == counted.get("forward-mode AD", 0) + 1


@pytest.mark.parametrize("how", ["no_grad fill", ".data fill", ".data assignment"])
@pytest.mark.parametrize("kind", ["Stereographic", "PoincareBall", "Lorentz"])
def test_curvature_changed_in_place_is_read_at_every_call(patched_cpu, kind, how):
    """A curvature changed in place is the one the next call uses (a no_grad fill bumps
    the tensor's version, a ``.data`` fill or assignment does not): the patched result
    equals geoopt's own maths (its module functions, which the patch leaves alone) for
    the new k, call after call."""
    m = {"Stereographic": geoopt.Stereographic(k=-1.0), "PoincareBall": geoopt.PoincareBall(c=1.0),
         "Lorentz": geoopt.Lorentz(k=1.0)}[kind].double()  # fmt: skip
    param = next(iter(m.parameters()))
    gen = torch.Generator().manual_seed(2)
    for step, value in enumerate([0.5, 2.0, 0.25, 3.0]):
        target = (
            math.log(math.expm1(value))
            if kind == "PoincareBall"
            else (-value if kind == "Stereographic" else value)
        )
        if how == "no_grad fill":
            with torch.no_grad():
                param.fill_(target)
        elif how == ".data fill":
            param.data.fill_(target)
        else:
            param.data = torch.full_like(param, target)
        served = compat.stats()["calls"]
        if kind == "Lorentz":
            x = lmath.project(torch.randn(5, 4, dtype=torch.float64, generator=gen), k=m.k)
            y = lmath.project(torch.randn(5, 4, dtype=torch.float64, generator=gen), k=m.k)
            got, want = m.dist(x, y), lmath.dist(x, y, k=m.k)
        else:
            x = torch.randn(5, 4, dtype=torch.float64, generator=gen) * 0.1
            y = torch.randn(5, 4, dtype=torch.float64, generator=gen) * 0.1
            got, want = m.dist(x, y), gmath.dist(x, y, k=m.k)
        assert compat.stats()["calls"] == served + 1, "not served"
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12, msg=f"step {step}")


def test_stats_count_per_method_and_reason(patched_cpu):
    ball = geoopt.PoincareBall(c=0.5).double()
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 0.1
    before = compat.stats()
    ball.lambda_x(x)
    ball.lambda_x(x)
    geoopt.SphereProjection(k=1.0).double().lambda_x(x)
    after = compat.stats()
    mine, old = (
        after["methods"]["Stereographic.lambda_x"],
        before["methods"].get("Stereographic.lambda_x", {}),
    )
    assert mine["calls"] == old.get("calls", 0) + 2 and mine["fallbacks"] == old.get("fallbacks", 0) + 1
    assert mine["reasons"]["curvature value"] == old.get("reasons", {}).get("curvature value", 0) + 1
    assert after["calls"] == sum(e["calls"] for e in after["methods"].values())
    assert after["fallbacks"] == sum(e["fallbacks"] for e in after["methods"].values())


def test_artanh_clamp_of_geoopt_is_applied(patched_cpu):
    """Two points near opposite ends of the ball: geoopt's artanh clamps its argument at
    1 - 1e-7, so its distance and log map are capped; the patch serves both calls with
    the same caps (value and gradient)."""
    ball = geoopt.PoincareBall(c=1.0).double()
    e = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0]], dtype=torch.float64) * (1 - 1e-5)
    results = []
    for patch in (True, False):
        if not patch:
            compat.unpatch_geoopt()
        x, y = e.clone().requires_grad_(), (-e).clone().requires_grad_()
        before = compat.stats()["calls"]
        d, v = ball.dist(x, y), ball.logmap(x, y)
        grads = torch.autograd.grad(d.sum() + (v * torch.tensor([0.3, -0.2, 0.5])).sum(), (x, y))
        assert compat.stats()["calls"] == before + (2 if patch else 0)
        results.append((d.detach(), v.detach(), grads))
    compat.patch_geoopt(devices=("cpu",))
    (d1, v1, g1), (d2, v2, g2) = results
    cap = 2 * math.atanh(1 - 1e-7) / math.sqrt(-float(ball.k) + 1e-15)
    torch.testing.assert_close(d1, torch.full_like(d1, cap), rtol=1e-12, atol=0)
    torch.testing.assert_close(d1, d2, rtol=1e-12, atol=0)
    torch.testing.assert_close(v1, v2, rtol=1e-9, atol=1e-12)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


def test_second_derivatives_are_geoopts(patched_cpu):
    """Gradients taken with create_graph=True, then differentiated again: geoopt's second
    derivatives, also through expmap_transp, whose transp takes the y that expmap made
    from x (its share of the gradient must reach x once)."""
    ball = geoopt.PoincareBall(c=0.7).double()
    gen = torch.Generator().manual_seed(4)
    x0, u0, v0 = (torch.randn(4, 3, dtype=torch.float64, generator=gen) * s for s in (0.3, 0.2, 1.0))

    def second(name):
        x, u, v = (t.clone().requires_grad_() for t in (x0, u0, v0))
        out = ball.dist(x, u) if name == "dist" else sum(o.pow(2).sum() for o in ball.expmap_transp(x, u, v))
        g = torch.autograd.grad(out.sum(), (x, u, v), create_graph=True, allow_unused=True)
        q = sum(t.pow(2).sum() for t in g if t is not None)
        return torch.autograd.grad(q, (x, u, v), allow_unused=True)

    for name in ("dist", "expmap_transp"):
        before = compat.stats()["calls"]
        mine = second(name)
        assert compat.stats()["calls"] > before, "not served"
        compat.unpatch_geoopt()
        theirs = second(name)
        compat.patch_geoopt(devices=("cpu",))
        for a, b in zip(mine, theirs):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=name)


def test_scaled_made_while_patched_runs_geoopt_after_unpatch():
    """geoopt.Scaled binds its base's methods when made: made while patched, it keeps
    the wrapper, which passes every call to geoopt once unpatched."""
    compat.patch_geoopt(devices=("cpu",))
    try:
        scaled = geoopt.Scaled(geoopt.PoincareBall(c=0.9).double(), 2.0)
        x = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 0.1
        before = compat.stats()["calls"]
        served = scaled.dist0(x)
        assert compat.stats()["calls"] == before + 1
    finally:
        compat.unpatch_geoopt()
    before = compat.stats()
    theirs = scaled.dist0(x)
    assert compat.stats() == before
    torch.testing.assert_close(served, theirs, rtol=1e-9, atol=1e-12)


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
