"""Fused multi-tensor Riemannian SGD / Adam kernels (GPU) against the float64 oracle."""

from __future__ import annotations

import copy

import pytest
import torch
from optim_reference import CASES, MANIFOLDS, Oracle, grad_scale, random_point

from xpu_stone.errors import UnsupportedOperationError
from xpu_stone.manifolds import Euclidean, Lorentz, PoincareBall
from xpu_stone.optim import RiemannianAdam, RiemannianSGD

pytestmark = pytest.mark.gpu
OPTS = {"adam": RiemannianAdam, "sgd": RiemannianSGD}
# manifold rows of several widths (one warp a row: D < 32, = 32, looping) and Euclidean tensors
SHAPES = [(5, 10), (3, 32), (4, 77), (2, 3, 256), (1, 1000)]
TOL = {torch.float64: (1e-9, 1e-10), torch.float32: (2e-5, 5e-6), torch.bfloat16: (3e-2, 3e-2),
       torch.float16: (5e-3, 5e-3)}  # fmt: skip


def _setup(opt, hp, retraction, dtype, seed, steps=3):
    gen = torch.Generator().manual_seed(seed)
    params, oracles = [], []
    for i, manifold in enumerate(MANIFOLDS):
        for shape in SHAPES[i % 2 :: 2]:
            p = random_point(manifold, shape, gen, dtype, "cuda")
            params.append(p)
            oracles.append(Oracle(manifold, p.detach().cpu(), opt, retraction, **hp))
    bias = torch.nn.Parameter(torch.randn(3001, generator=gen).to("cuda", dtype))  # plain, 1-D, odd size
    params.append(bias)
    oracles.append(Oracle(Euclidean(), bias.detach().cpu(), opt, retraction, **hp))
    optim = OPTS[opt](params, retraction=retraction, fused=True, **hp)
    for _ in range(steps):
        for p, o in zip(params, oracles, strict=True):
            g = (torch.randn(p.shape, dtype=torch.float64, generator=gen) * grad_scale(o.m, o.x)).to(dtype)
            p.grad = g.cuda()
            o.step(g)
        optim.step()
    torch.cuda.synchronize()
    return params, oracles


@pytest.mark.parametrize("opt,hp", CASES, ids=[f"{o}{i}" for i, (o, _) in enumerate(CASES)])
@pytest.mark.parametrize("retraction", ["expmap", "retr"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_fused_step_matches_oracle(opt, hp, retraction, dtype):
    params, oracles = _setup(opt, hp, retraction, dtype, seed=1)
    rtol, atol = TOL[dtype]
    for p, o in zip(params, oracles, strict=True):
        scale = o.x.abs().max().item() if isinstance(o.m, Lorentz) else 1.0
        torch.testing.assert_close(p.detach().cpu().double(), o.x, rtol=rtol, atol=atol * scale)
        if isinstance(o.m, PoincareBall):
            assert (p.detach().double().norm(dim=-1) * o.m.c**0.5 < 1).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_one_step(dtype):
    params, oracles = _setup("adam", dict(lr=0.01), "expmap", dtype, seed=2, steps=1)
    rtol, atol = TOL[dtype]
    for p, o in zip(params, oracles, strict=True):
        if isinstance(o.m, Lorentz):
            continue  # hyperboloid coordinates in 16-bit floats: far off the manifold after rounding
        torch.testing.assert_close(p.detach().cpu().double(), o.x, rtol=rtol, atol=atol)


@pytest.mark.parametrize("manifold", [PoincareBall(1.0), Lorentz(1.0), Euclidean()], ids=str)
@pytest.mark.parametrize("opt,hp", [("adam", dict(lr=0.05, amsgrad=True)), ("sgd", dict(lr=0.2))])
def test_sparse_embedding_gradients(manifold, opt, hp):
    gen = torch.Generator().manual_seed(7)
    emb = torch.nn.Embedding(300, 10, sparse=True).cuda()
    emb.weight = random_point(manifold, (300, 10), gen, torch.float32, "cuda")
    oracle = Oracle(manifold, emb.weight.detach().cpu(), opt, **hp)
    optim = OPTS[opt](emb.parameters(), fused=True, **hp)
    for _ in range(3):
        idx = torch.randint(0, 300, (500,), generator=gen)
        w = torch.randn(500, 10, dtype=torch.float64, generator=gen) * grad_scale(manifold, oracle.x[idx])
        optim.zero_grad()
        (emb(idx.cuda()) * w.float().cuda()).sum().backward()
        optim.step()
        dense = torch.zeros(300, 10, dtype=torch.float64).index_add_(0, idx, w.float().double())
        rows = torch.unique(idx)
        oracle.step(dense[rows], rows)
    torch.testing.assert_close(emb.weight.detach().cpu().double(), oracle.x, rtol=2e-5, atol=1e-5)


def test_fused_equals_torch_path_and_resumes():
    gen = torch.Generator().manual_seed(4)
    a = random_point(PoincareBall(0.5), (64, 33), gen, torch.float32, "cuda")
    b = type(a)(a.detach().clone(), a.manifold)
    fa = RiemannianAdam([a], lr=0.02, fused=True)
    fb = RiemannianAdam([b], lr=0.02, fused=False)
    for step in range(4):
        g = torch.randn(64, 33, generator=gen).cuda()
        a.grad, b.grad = g.clone(), g.clone()
        fa.step()
        fb.step()
        if step == 1:
            fa2 = RiemannianAdam([a], lr=0.02, fused=True)
            fa2.load_state_dict(fa.state_dict())
            fa = fa2
    torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(fa.state[a]["exp_avg"], fb.state[b]["exp_avg"], rtol=1e-5, atol=1e-7)


def test_cuda_graph_capture():
    gen = torch.Generator().manual_seed(9)
    p = random_point(PoincareBall(1.0), (128, 16), gen, torch.float32, "cuda")
    opt = RiemannianSGD([p], lr=0.1, momentum=0.9, fused=True)
    p.grad = torch.randn(128, 16, generator=gen).cuda()
    opt.step()  # state exists before capture
    ref = type(p)(p.detach().clone(), p.manifold)
    ref_opt = RiemannianSGD([ref], lr=0.1, momentum=0.9, fused=False)
    # a copy: load_state_dict keeps same-device tensors by reference, and a shared momentum
    # buffer would be advanced by both optimizers
    ref_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    graph = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        opt.step()  # warm-up on the side stream (compiles and loads the kernel)
    torch.cuda.current_stream().wait_stream(s)
    ref.grad = p.grad.clone()
    ref_opt.step()
    with torch.cuda.graph(graph):
        opt.step()
    graph.replay()
    ref_opt.step()
    torch.cuda.synchronize()
    torch.testing.assert_close(p.detach(), ref.detach(), rtol=1e-5, atol=1e-6)


def test_adam_step_refuses_graph_capture():
    gen = torch.Generator().manual_seed(10)
    p = random_point(PoincareBall(1.0), (8, 4), gen, torch.float32, "cuda")
    opt = RiemannianAdam([p], lr=0.01, fused=True)
    p.grad = torch.randn(8, 4, generator=gen).cuda()
    opt.step()
    graph = torch.cuda.CUDAGraph()
    # the bias corrections are per-step host scalars: a replay would reuse the captured ones
    with torch.cuda.graph(graph), pytest.raises(UnsupportedOperationError, match="CUDA graph"):
        opt.step()
