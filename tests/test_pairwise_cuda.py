"""GPU tests of xpu_stone.pairwise (skipped without a CUDA GPU): the fused epilogue
kernels against the float64 reference and the CPU path, every output element
written (outputs poisoned with NaN first), odd shapes (M not a multiple of the
vector width, D = 1, zero rows), batches, the L2-chunked forward, backward and
dL/dc in every dtype (fp16 included), knn against brute force, torch.compile
(inductor), CUDA graphs, CuPy."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import GRAD_TOL, ball_points, rel_err, saturate_fp16

from xpu_stone import config
from xpu_stone import pairwise as PW
from xpu_stone.ops import pairwise as OPW
from xpu_stone.reference import pairwise as RP

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("poisoned_outputs")]

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
SHAPES = ((1, 1, 1), (7, 5, 3), (64, 128, 16), (100, 333, 17), (513, 1000, 128), (0, 9, 4), (9, 0, 4))
MODELS = ("poincare", "lorentz")
TOL = {torch.float64: 1e-10, torch.float32: 3e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}


def _points(model, shape, c, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    if model == "poincare":
        d = torch.randn(*shape, generator=gen, dtype=torch.float64)
        d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-300)
        r = torch.rand(*shape[:-1], 1, generator=gen, dtype=torch.float64) * 0.9
        x = d * r / math.sqrt(c)
    else:
        x = RP.lorentz_points(shape, c, torch.float64, gen, scale=1 / math.sqrt(c))
    return x.to(dtype).cuda()


def _ambient_lorentz(x, y, c):
    prod = x.unsqueeze(-2) * y.unsqueeze(-3)
    inner = prod[..., 1:].sum(-1) - prod[..., 0]
    c = torch.as_tensor(c, dtype=x.dtype, device=x.device)
    return torch.acosh((-c * inner).clamp_min(1)) / c.sqrt()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("model", MODELS)
def test_forward_matches_reference(model, dtype):
    for k, (n, m, d) in enumerate(SHAPES):
        if model == "lorentz" and d == 1:
            continue
        c = (0.01, 1.0, 4.0, 100.0)[k % 4]
        x, y = _points(model, (n, d), c, dtype, 2 * k), _points(model, (m, d), c, dtype, 2 * k + 1)
        out = PW.cdist(x, y, c, model)
        assert out.shape == (n, m) and out.dtype == dtype and out.is_cuda
        if n * m == 0:
            continue
        assert torch.isfinite(out).all(), (n, m, d)
        ref = RP.cdist(x.double(), y.double(), c, model)
        assert rel_err(out, ref) < TOL[dtype], (n, m, d, c)
        cpu = PW.cdist(x.cpu(), y.cpu(), c, model)
        assert rel_err(out.cpu(), cpu) < TOL[dtype]


def test_batched_and_chunked_forward():
    x = _points("poincare", (3, 200, 32), 1.0, torch.float32, 1)
    y = _points("poincare", (3, 300, 32), 1.0, torch.float32, 2)
    out = PW.cdist(x, y)
    assert rel_err(out, RP.cdist(x.double(), y.double())) < TOL[torch.float32]
    x1, y1 = x[0], y[0]
    whole = PW.cdist(x1, y1)
    old = OPW.GEMM_CHUNK_BYTES
    try:
        for chunk_bytes in (0, 128 * 300 * 4, 1):  # none, 128-row chunks, the smallest chunk
            OPW.GEMM_CHUNK_BYTES = chunk_bytes
            assert torch.allclose(PW.cdist(x1, y1), whole, rtol=1e-5, atol=1e-5)
            assert torch.allclose(PW.cdist(x1.half(), y1.half()).float(), whole, rtol=1e-2, atol=1e-2)
    finally:
        OPW.GEMM_CHUNK_BYTES = old


def _c_scale(ref_fn, x, y, c, g):
    """sum |g_ij dd_ij/dc|: the size of the terms of dL/dc = sum g_ij dd_ij/dc, which
    cancel (g has both signs); dL/dc is held to the tolerance relative to it."""
    _, dd = torch.autograd.functional.jvp(
        lambda cc: ref_fn(x.detach(), y.detach(), cc), c.detach(), c.new_ones(())
    )
    return float((g * dd).abs().sum())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("model", MODELS)
def test_backward_matches_reference(model, dtype):
    """dL/dx, dL/dy and dL/dc against autograd of the float64 reference, in every
    dtype (fp16: the reference saturated at +-65504 like the kernels' stores)."""
    for n, m, d in ((5, 3, 4), (130, 257, 16), (600, 1024, 64), (2, 7, 3)):
        x = _points(model, (n, d), 2.0, dtype, n).requires_grad_()
        y = _points(model, (m, d), 2.0, dtype, m).requires_grad_()
        c = torch.tensor(2.0, device="cuda", dtype=torch.float64, requires_grad=True)
        g = torch.randn(n, m, device="cuda", dtype=torch.float64)
        ours = torch.autograd.grad(PW.cdist(x, y, c, model), (x, y, c), g.to(dtype))
        xd, yd = x.detach().double().requires_grad_(), y.detach().double().requires_grad_()
        cd = c.detach().clone().requires_grad_()
        ref_fn = RP.cdist_poincare if model == "poincare" else _ambient_lorentz
        ref = torch.autograd.grad(ref_fn(xd, yd, cd), (xd, yd, cd), g)
        tol = {torch.float64: 1e-8, torch.float32: 1e-3, torch.float16: GRAD_TOL[torch.float16],
               torch.bfloat16: 5e-2}[dtype]  # fmt: skip
        floors = (0.0, 0.0, _c_scale(ref_fn, xd, yd, cd, g))
        for k, (a, b) in enumerate(zip(ours, ref)):
            a, b = saturate_fp16(a, b)
            assert torch.isfinite(a).all()
            assert rel_err(a, b, floors[k]) < tol, (model, n, m, d, k)


def test_backward_kernel_equals_cpu_path():
    for model in MODELS:
        x = _points(model, (2, 70, 9), 1.0, torch.float64, 3)
        y = _points(model, (2, 45, 9), 1.0, torch.float64, 4)
        out = PW.cdist(x, y, 1.0, model)
        g = torch.randn_like(out)
        mid = PW.MODELS[model]
        gpu = OPW.cdist_bwd_cuda(g, x, y, out, 1.0, mid, [True, True, True])
        cpu = OPW.cdist_bwd_cpu(g.cpu(), x.cpu(), y.cpu(), out.cpu(), 1.0, mid, [True, True, True])
        for a, b in zip(gpu, cpu):
            assert rel_err(a.cpu(), b) < 1e-12


def test_self_distance_and_near_boundary():
    x = ball_points((300, 64), 1.0, torch.float32, device="cuda", boundary=True).requires_grad_()
    d = PW.cdist(x, x)
    assert torch.all(d.diagonal() == 0) and torch.isfinite(d).all()
    (g,) = torch.autograd.grad(d.sum(), x)
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("model", MODELS)
def test_knn_against_brute_force(model):
    x = _points(model, (700, 32), 1.0, torch.float64, 5)
    y = _points(model, (2000, 32), 1.0, torch.float64, 6)
    ref_v, ref_i = RP.knn(x, y, 8, 1.0, model)
    for chunk in (None, 64, 699):
        v, i = PW.knn(x, y, 8, 1.0, model, chunk_rows=chunk)
        assert torch.equal(i, ref_i)
        assert rel_err(v, ref_v) < 1e-10
    v32, i32 = PW.knn(x.float(), y.float(), 8, 1.0, model, chunk_rows=100)
    exact = RP.cdist(x, y, 1.0, model)
    assert torch.allclose(torch.gather(exact, 1, i32), ref_v, rtol=1e-4, atol=1e-4)


def test_torch_compile_inductor():
    x = _points("poincare", (256, 64), 1.0, torch.float32, 7).requires_grad_()
    y = _points("poincare", (128, 64), 1.0, torch.float32, 8).requires_grad_()

    def f(a, b):
        return (PW.cdist(a, b) ** 2).sum() + PW.cdist(a, b, 1.0).mean()

    compiled = torch.compile(f, fullgraph=True)
    got = torch.autograd.grad(compiled(x, y), (x, y))
    want = torch.autograd.grad(f(x, y), (x, y))
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_cuda_graph_and_side_stream():
    x = _points("poincare", (128, 32), 1.0, torch.float32, 9)
    y = _points("poincare", (96, 32), 1.0, torch.float32, 10)
    want = PW.cdist(x, y)
    config.poison_outputs = False  # fill_ outside the captured region is not what is tested here
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        side = PW.cdist(x, y)
    torch.cuda.current_stream().wait_stream(s)
    assert torch.equal(side, want)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(s):
        PW.cdist(x, y)  # warm-up: kernels loaded
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        out = PW.cdist(x, y)
    x.mul_(0.5)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.allclose(out, PW.cdist(x, y), rtol=1e-6, atol=1e-6)


def test_cupy_arrays():
    cupy = pytest.importorskip("cupy")
    for model in MODELS:
        x = _points(model, (77, 12), 1.0, torch.float32, 11)
        y = _points(model, (50, 12), 1.0, torch.float32, 12)
        out = PW.cdist(cupy.from_dlpack(x), cupy.from_dlpack(y), 1.0, model)
        assert isinstance(out, cupy.ndarray) and out.shape == (77, 50)
        assert rel_err(torch.from_dlpack(out), PW.cdist(x, y, 1.0, model)) < 1e-6
        v, i = PW.knn(cupy.from_dlpack(x), cupy.from_dlpack(y), 4, 1.0, model)
        tv, ti = torch.topk(PW.cdist(x, y, 1.0, model), 4, largest=False)
        assert torch.equal(torch.from_dlpack(i), ti)
        assert rel_err(torch.from_dlpack(v), tv) < 1e-6
