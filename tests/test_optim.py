"""Riemannian SGD / Adam on CPU (the torch path), against a float64 oracle, geoopt and torch.optim."""

from __future__ import annotations

import copy

import pytest
import torch
from optim_reference import CASES, MANIFOLDS, Oracle, random_point

from xpu_stone.errors import InvalidArgumentError
from xpu_stone.manifolds import Euclidean, Lorentz, ManifoldParameter, PoincareBall
from xpu_stone.optim import RiemannianAdam, RiemannianSGD

OPTS = {"adam": RiemannianAdam, "sgd": RiemannianSGD}


def _run(manifold, opt, hp, retraction, dtype, shape=(7, 5), steps=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    p = random_point(manifold, shape, gen, dtype)
    oracle = Oracle(manifold, p.detach(), opt, retraction, **hp)
    optim = OPTS[opt]([p], retraction=retraction, **hp)
    for _ in range(steps):
        g = torch.randn(shape, dtype=torch.float64, generator=gen)
        p.grad = g.to(dtype)
        optim.step()
        oracle.step(p.grad)
    return p, oracle


@pytest.mark.parametrize("manifold", MANIFOLDS, ids=str)
@pytest.mark.parametrize("opt,hp", CASES, ids=[f"{o}{i}" for i, (o, _) in enumerate(CASES)])
@pytest.mark.parametrize("retraction", ["expmap", "retr"])
def test_step_matches_float64_oracle(manifold, opt, hp, retraction):
    p, oracle = _run(manifold, opt, hp, retraction, torch.float64)
    torch.testing.assert_close(p.detach(), oracle.x, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("manifold", [PoincareBall(0.7), Lorentz(1.3)], ids=str)
@pytest.mark.parametrize("opt,hp", [CASES[1], CASES[3]], ids=["adam", "sgd"])
def test_float32_and_odd_shapes(manifold, opt, hp):
    p, oracle = _run(manifold, opt, hp, "expmap", torch.float32, shape=(2, 3, 37), steps=2)
    # hyperboloid coordinates grow like cosh(distance), and fp32 rounding with them
    scale = oracle.x.abs().max().item() if isinstance(manifold, Lorentz) else 1.0
    torch.testing.assert_close(p.detach().double(), oracle.x, rtol=2e-5, atol=5e-6 * scale)


def test_points_stay_inside_the_ball():
    gen = torch.Generator().manual_seed(3)
    for c in (1.0, 4.0):
        p = random_point(PoincareBall(c), (50, 3), gen, torch.float32)
        opt = RiemannianSGD([p], lr=100.0)
        for _ in range(5):
            p.grad = torch.randn(50, 3, generator=gen) * 1e3
            opt.step()
            assert torch.isfinite(p).all()
            assert (p.detach().double().norm(dim=-1) * c**0.5 <= 1 - 1e-5 + 1e-7).all()


@pytest.mark.parametrize(
    "opt,hp",
    [("sgd", dict(lr=0.3)), ("adam", dict(lr=0.05)), ("adam", dict(lr=0.05, weight_decay=0.1, amsgrad=True))],
)
def test_matches_geoopt_with_first_order_retraction(opt, hp):
    geoopt = pytest.importorskip("geoopt")
    gen = torch.Generator().manual_seed(5)
    mine = random_point(PoincareBall(0.8), (9, 4), gen)
    theirs = geoopt.ManifoldParameter(mine.detach().clone(), manifold=geoopt.PoincareBall(c=0.8))
    ours = OPTS[opt]([mine], retraction="retr", **hp)
    gopt = (geoopt.optim.RiemannianAdam if opt == "adam" else geoopt.optim.RiemannianSGD)([theirs], **hp)
    for _ in range(5):
        g = torch.randn(9, 4, dtype=torch.float64, generator=gen)
        mine.grad, theirs.grad = g.clone(), g.clone()
        ours.step()
        gopt.step()
    torch.testing.assert_close(mine.detach(), theirs.detach(), rtol=1e-7, atol=1e-9)
    if opt == "adam":
        torch.testing.assert_close(ours.state[mine]["exp_avg"], gopt.state[theirs]["exp_avg"])
        torch.testing.assert_close(ours.state[mine]["exp_avg_sq"], gopt.state[theirs]["exp_avg_sq"][:, :1])


@pytest.mark.parametrize(
    "opt,hp,torch_cls",
    [
        ("sgd", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01), torch.optim.SGD),
        ("sgd", dict(lr=0.1, momentum=0.5, dampening=0.2), torch.optim.SGD),
        ("adam", dict(lr=0.01, weight_decay=0.05, amsgrad=True), torch.optim.Adam),
    ],
)
def test_plain_parameters_get_torch_updates(opt, hp, torch_cls):
    torch.manual_seed(0)
    a = torch.nn.Linear(5, 3).double()
    b = copy.deepcopy(a)
    ours, theirs = OPTS[opt](a.parameters(), **hp), torch_cls(b.parameters(), **hp)
    for _ in range(4):
        x = torch.randn(8, 5, dtype=torch.float64)
        for model, o in ((a, ours), (b, theirs)):
            o.zero_grad()
            model(x).pow(2).sum().backward()
            o.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("manifold", [PoincareBall(1.0), Lorentz(1.0), Euclidean()], ids=str)
@pytest.mark.parametrize("opt,hp", [("adam", dict(lr=0.05)), ("sgd", dict(lr=0.2))])
def test_sparse_embedding_gradients(manifold, opt, hp):
    gen = torch.Generator().manual_seed(7)
    emb = torch.nn.Embedding(12, 4, sparse=True).double()
    emb.weight = random_point(manifold, (12, 4), gen)
    oracle = Oracle(manifold, emb.weight.detach(), opt, **hp)
    optim = OPTS[opt](emb.parameters(), **hp)
    for _ in range(3):
        idx = torch.randint(0, 12, (9,), generator=gen)  # repeated rows are summed
        w = torch.randn(9, 4, dtype=torch.float64, generator=gen)
        optim.zero_grad()
        (emb(idx) * w).sum().backward()
        assert emb.weight.grad.is_sparse
        optim.step()
        dense = torch.zeros(12, 4, dtype=torch.float64).index_add_(0, idx, w)
        rows = torch.unique(idx)
        oracle.step(dense[rows], rows)
    torch.testing.assert_close(emb.weight.detach(), oracle.x, rtol=1e-9, atol=1e-10)


def test_state_dict_resume():
    gen = torch.Generator().manual_seed(11)
    p = random_point(PoincareBall(1.0), (6, 3), gen)
    q = torch.nn.Parameter(torch.randn(4, dtype=torch.float64, generator=gen))
    opt = RiemannianAdam([p, q], lr=0.05, amsgrad=True)
    grads = [(torch.randn(6, 3, dtype=torch.float64, generator=gen), torch.randn(4, dtype=torch.float64))
             for _ in range(6)]  # fmt: skip

    def steps(o, params, gs):
        for gp, gq in gs:
            params[0].grad, params[1].grad = gp.clone(), gq.clone()
            o.step()

    steps(opt, (p, q), grads[:3])
    saved_params = copy.deepcopy((p, q))
    saved = copy.deepcopy(opt.state_dict())
    steps(opt, (p, q), grads[3:])
    p2, q2 = saved_params
    opt2 = RiemannianAdam([p2, q2], lr=0.05, amsgrad=True)
    opt2.load_state_dict(saved)
    steps(opt2, (p2, q2), grads[3:])
    torch.testing.assert_close(p2, p, rtol=0, atol=0)
    torch.testing.assert_close(q2, q, rtol=0, atol=0)
    assert opt2.state[p2]["step"] == 6


def test_geoopt_parameters_are_stepped_on_their_manifold():
    geoopt = pytest.importorskip("geoopt")
    gen = torch.Generator().manual_seed(2)
    x = random_point(PoincareBall(1.5), (5, 3), gen).detach()
    gp = geoopt.ManifoldParameter(x.clone(), manifold=geoopt.PoincareBall(c=1.5))
    oracle = Oracle(PoincareBall(1.5), x, "sgd", lr=0.1)
    g = torch.randn(5, 3, dtype=torch.float64, generator=gen)
    gp.grad = g.clone()
    RiemannianSGD([gp], lr=0.1).step()
    oracle.step(g)
    torch.testing.assert_close(gp.detach(), oracle.x)


def test_invalid_arguments():
    p = ManifoldParameter(torch.zeros(3, 2), PoincareBall())
    for kwargs in (dict(lr=-1.0), dict(lr=0.1, nesterov=True), dict(lr=0.1, retraction="cayley")):
        with pytest.raises(InvalidArgumentError):
            RiemannianSGD([p], **kwargs)
    with pytest.raises(InvalidArgumentError):
        RiemannianAdam([p], betas=(1.0, 0.9))
    p.grad = torch.ones(3, 2)
    with pytest.raises(InvalidArgumentError, match="fused=True"):
        RiemannianSGD([p], lr=0.1, fused=True).step()
    before = p.detach().clone()
    q = ManifoldParameter(torch.zeros(2, 3, 2), PoincareBall())
    q.grad = torch.sparse_coo_tensor(torch.tensor([[0]]), torch.ones(1, 3, 2), (2, 3, 2))
    with pytest.raises(InvalidArgumentError, match="sparse"):
        RiemannianSGD([q], lr=0.1).step()
    assert torch.equal(p.detach(), before)


@pytest.mark.parametrize("opt", (RiemannianSGD, RiemannianAdam))
def test_a_bad_parameter_anywhere_steps_nothing(opt):
    """The first parameter is good, the second bad: the step raises and neither the
    first parameter nor any optimizer state has moved."""
    good = ManifoldParameter(torch.full((3, 2), 0.1), PoincareBall())
    good.grad = torch.ones(3, 2)
    bad_cases = (
        (ManifoldParameter(torch.zeros(3, 2), PoincareBall(eps=1e-8)), torch.ones(3, 2),
         InvalidArgumentError),  # a boundary margin float32 cannot hold
        (torch.zeros(2, 3, 2), torch.sparse_coo_tensor(torch.tensor([[0]]), torch.ones(1, 3, 2), (2, 3, 2)),
         InvalidArgumentError),  # sparse gradient of a 3-D parameter
    )  # fmt: skip
    for data, grad, error in bad_cases:
        bad = data if isinstance(data, torch.nn.Parameter) else torch.nn.Parameter(data)
        bad.grad = grad
        o = opt([good, bad], lr=0.1)
        before = good.detach().clone()
        with pytest.raises(error):
            o.step()
        assert torch.equal(good.detach(), before)
        assert not o.state, "optimizer state was created before the check"


@pytest.mark.parametrize("opt", (RiemannianSGD, RiemannianAdam))
def test_group_hyperparameters_are_checked(opt):
    p = ManifoldParameter(torch.zeros(3, 2), PoincareBall())
    q = ManifoldParameter(torch.zeros(3, 2), PoincareBall())
    o = opt([p], lr=0.1)
    for bad in (dict(lr=-1.0), dict(lr=float("nan")), dict(weight_decay=-1.0), dict(retraction="cayley")):
        with pytest.raises(InvalidArgumentError):
            o.add_param_group({"params": [q], **bad})
        assert len(o.param_groups) == 1
    with pytest.raises(InvalidArgumentError):
        opt([{"params": [p]}, {"params": [q], "lr": -0.5}], lr=0.1)


def test_boundary_margin_must_fit_the_dtype():
    ball = PoincareBall(eps=1e-8)
    assert ball.boundary_eps(torch.float64) == 1e-8
    with pytest.raises(InvalidArgumentError, match="rounds to 1"):
        ball.boundary_eps(torch.float32)
    p = ManifoldParameter(torch.zeros(3, 2), ball)
    p.grad = torch.ones(3, 2)
    with pytest.raises(InvalidArgumentError, match="rounds to 1"):
        RiemannianSGD([p], lr=0.1).step()
    assert torch.equal(p.detach(), torch.zeros(3, 2))


@pytest.mark.parametrize("adam", (False, True))
def test_replayed_step_writes_the_records_of_a_full_step(monkeypatch, adam):
    """From the second step on, a fused step replays the previous records with new
    gradient pointers and per-step scalars; they must equal what a full step
    builds (CPU: the launch is replaced by a recorder)."""
    import numpy as np

    from xpu_stone.ops import optim as fused
    from xpu_stone.optim import optimizers as O

    launched = []

    class Ring:
        def __init__(self, nbytes):
            pass

        def to_device(self, records, device):
            return records.copy()

    monkeypatch.setattr(O._Riemannian, "_fusable", lambda self, p, g: True)
    monkeypatch.setattr(fused, "_device_meta", lambda ints, device: (ints.copy(), None))
    monkeypatch.setattr(fused, "PinnedRing", Ring)
    monkeypatch.setattr(fused, "launch_records", lambda meta, *a: launched.append(np.array(meta)))
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)

    def make():
        gen = torch.Generator().manual_seed(0)
        ps = [
            ManifoldParameter(torch.rand(5, 4, generator=gen) * 0.1, PoincareBall(0.7)),
            ManifoldParameter(torch.rand(3, 6, generator=gen), Lorentz(1.3)),
            torch.nn.Parameter(torch.rand(7, generator=gen)),
        ]
        if adam:
            opt = RiemannianAdam([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.05}], lr=0.01, amsgrad=True)
        else:
            opt = RiemannianSGD([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.05}], lr=0.01, momentum=0.9)
        return ps, opt

    replays = []
    replay = fused.ReplayPlan.replay
    monkeypatch.setattr(
        fused.ReplayPlan, "replay", lambda self, opt: replays.append(replay(self, opt)) or replays[-1]
    )
    (pa, a), (pb, b) = make(), make()
    sched = torch.optim.lr_scheduler.StepLR(a, step_size=1, gamma=0.5)
    sched_b = torch.optim.lr_scheduler.StepLR(b, step_size=1, gamma=0.5)
    pointer_cols = [fused.FIELD[k] for k in ("param", "grad", "buf", "v", "vmax", "idx")]
    for step in range(4):
        for p, q in zip(pa, pb):
            p.grad = torch.rand_like(p)  # fresh tensors: new pointers every step
            q.grad = p.grad.clone()
        launched.clear()
        a.step()
        b._plan = None
        b.step()
        ra, rb = launched
        assert np.array_equal(np.delete(ra, pointer_cols, axis=1), np.delete(rb, pointer_cols, axis=1)), step
        assert list(ra[:, fused.FIELD["grad"]]) == [p.grad.data_ptr() for p in pa]
        sched.step()
        sched_b.step()
    assert replays == [True, True, True]  # steps 2-4 were replays
    assert [a.state[p]["step"] for p in pa] == [4, 4, 4]
    pa[0].grad = None  # a parameter without a gradient: a full step again
    launched.clear()
    a.step()
    assert replays[-1] is False and len(launched) == 1 and launched[0].shape[0] == 2
