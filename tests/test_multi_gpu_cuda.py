"""Every device of a host: work on ``cuda:1`` while ``cuda:0`` is the current device
(torch's and CuPy's) gives what the same work gives on ``cuda:0``, launches on the
tensor's device and on that device's current stream, allocates nothing on ``cuda:0``,
and leaves ``cuda:0`` current. Skipped unless two GPUs are visible.

Covered: row-wise ops forward and backward (Poincaré, Lorentz, the hyperbolic linear
layers), CuPy arrays on the second GPU, cdist and knn, the fused Riemannian optimizers
(dense and sparse gradients, parameters of both GPUs in one optimizer), a training
step captured in a CUDA graph (``xpu_stone.runtime.capture``) and replayed, the
profiler's per-device records and ``memory_stats`` per device. On two GPUs of the same
model the results are bit for bit those of ``cuda:0`` (the same kernel variants run).
"""

from __future__ import annotations

import pytest
import torch

from xpu_stone import linear, lorentz, pairwise, to_cupy, to_torch
from xpu_stone import poincare as P
from xpu_stone.kernels import launch as kernel_launch
from xpu_stone.manifolds import Euclidean, Lorentz, ManifoldParameter, PoincareBall
from xpu_stone.optim import RiemannianAdam, RiemannianSGD
from xpu_stone.runtime import capture, memory_stats, profile

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two CUDA GPUs"
    ),
]
cupy = pytest.importorskip("cupy")

D0, D1 = torch.device("cuda", 0), torch.device("cuda", 1)


def _same_model() -> bool:
    a, b = torch.cuda.get_device_properties(0), torch.cuda.get_device_properties(1)
    return (a.name, a.major, a.minor) == (b.name, b.major, b.minor)


def _agree(on1, on0) -> None:
    assert on1.device == D1 and on0.device == D0
    if _same_model():
        assert torch.equal(on1.cpu(), on0.cpu())
    else:  # other kernels (cuBLAS, the tuned variant) may be chosen on another GPU model
        torch.testing.assert_close(on1.cpu(), on0.cpu(), rtol=1e-5, atol=1e-6)


@pytest.fixture(autouse=True)
def cuda0_current():
    """cuda:0 current for torch and CuPy; afterwards still current, and cuda:0's
    memory untouched by what ran on cuda:1 (checked by the tests that say so)."""
    torch.cuda.set_device(0)
    cupy.cuda.Device(0).use()
    yield
    assert torch.cuda.current_device() == 0 and cupy.cuda.runtime.getDevice() == 0


def _allocations(index: int) -> int:
    """How many allocations torch's caching allocator has made on cuda:index so far (a
    count that only grows: a free, e.g. of an earlier test's tensor, cannot hide one)."""
    return torch.cuda.memory_stats(index).get("allocation.all.allocated", 0)


def _run_on(device, fn):
    """``fn(device)`` with cuda:0 current; for cuda:1 checks that cuda:0 gets no allocation."""
    torch.cuda.synchronize(0)
    before = _allocations(0)
    out = fn(device)
    torch.cuda.synchronize(device)
    if device == D1:
        assert _allocations(0) == before, "work on cuda:1 allocated on cuda:0"
    assert torch.cuda.current_device() == 0
    return out


def _ball(n, d, device, seed, scale=0.4):
    gen = torch.Generator().manual_seed(seed)
    return P.expmap0(torch.randn(n, d, generator=gen, dtype=torch.float64) * scale).float().to(device)


# --------------------------------------------------------------------------- row ops
def _row_ops(device):
    x, y = _ball(333, 17, device, 1), _ball(333, 17, device, 2)
    u = torch.randn(333, 17, generator=torch.Generator().manual_seed(3)).to(device) * 0.3
    x.requires_grad_(True)
    y.requires_grad_(True)
    outs = [P.mobius_add(x, y), P.expmap(x, u), P.logmap(x, y), P.dist(x, y), P.project(y * 3)]
    h = lorentz.expmap0(torch.cat([torch.zeros(333, 1, device=device), u], 1))
    outs.append(lorentz.dist(h, lorentz.expmap0(torch.cat([torch.zeros(333, 1, device=device), u * 2], 1))))
    w = torch.randn(9, 17, generator=torch.Generator().manual_seed(4)).to(device) * 0.2
    outs.append(linear.mobius_matvec(w, x))
    sum(o.sum() for o in outs).backward()
    return [o.detach() for o in outs] + [x.grad, y.grad]


def test_row_ops_on_the_second_gpu():
    for a, b in zip(_run_on(D1, _row_ops), _run_on(D0, _row_ops), strict=True):
        _agree(a, b)
    # the kernels were compiled per architecture and loaded per device
    devices = {key[0] for key in kernel_launch._functions}
    assert {0, 1} <= devices


def test_launch_follows_the_tensors_current_stream():
    """On cuda:1 a side stream is made current (cuda:0 stays the current device) and
    held back by a sleep before it writes x; the op must queue behind that write."""
    x, y = _ball(4096, 64, D1, 5), _ball(4096, 64, D1, 6)
    fresh = _ball(4096, 64, D1, 7)
    P.mobius_add(x, y)  # compile and load first
    side = torch.cuda.Stream(D1)
    with torch.cuda.device(1):
        torch.cuda.set_stream(side)
    try:
        assert torch.cuda.current_device() == 0 and torch.cuda.current_stream(1) == side
        torch.cuda._sleep(50_000_000)  # on cuda:0's stream: unrelated
        with torch.cuda.device(1):
            torch.cuda._sleep(200_000_000)  # ~0.1 s on the side stream
        x.copy_(fresh)  # queued on cuda:1's current stream: the side stream
        out = P.mobius_add(x, y)
        side.synchronize()
    finally:
        with torch.cuda.device(1):
            torch.cuda.set_stream(torch.cuda.default_stream(1))
    torch.cuda.synchronize(1)
    assert torch.equal(out, P.mobius_add(fresh, y))


def test_cupy_arrays_on_the_second_gpu():
    def run(device):
        x, y = _ball(500, 33, device, 8), _ball(500, 33, device, 9)
        with cupy.cuda.Device(0):
            out = P.mobius_add(to_cupy(x), to_cupy(y))
            d = pairwise.cdist(to_cupy(x), to_cupy(y))
        assert out.device.id == device.index and d.device.id == device.index
        return to_torch(out), to_torch(d)

    for a, b in zip(_run_on(D1, run), _run_on(D0, run), strict=True):
        _agree(a, b)


# --------------------------------------------------------------------------- pairwise
def _pairwise(device):
    x, y = _ball(300, 24, device, 10), _ball(1000, 24, device, 11)
    x.requires_grad_(True)
    d = pairwise.cdist(x, y)
    d.sum().backward()
    values, idx = pairwise.knn(x.detach(), y, k=5)
    return d.detach(), x.grad, values, idx


def test_cdist_and_knn_on_the_second_gpu():
    for a, b in zip(_run_on(D1, _pairwise), _run_on(D0, _pairwise), strict=True):
        _agree(a, b)


# --------------------------------------------------------------------------- optimizers
def _params(device, seed):
    gen = torch.Generator().manual_seed(seed)
    ball = ManifoldParameter(_ball(50, 10, "cpu", seed).to(device), PoincareBall(1.0))
    hyp = ManifoldParameter(lorentz.expmap0(torch.randn(20, 6, generator=gen) * 0.3).to(device), Lorentz(1.0))
    flat = ManifoldParameter(torch.randn(301, generator=gen).to(device), Euclidean())
    return [ball, hyp, flat]


def _grads(params, step):
    gen = torch.Generator().manual_seed(1000 + step)
    for p in params:
        p.grad = (torch.randn(p.shape, generator=gen) * 0.1).to(p.device)


def _optimize(device, opt_cls, kw, steps=4):
    params = _params(device, 12)
    opt = opt_cls(params, fused=True, **kw)
    for s in range(steps):
        _grads(params, s)
        opt.step()
    return [p.detach() for p in params]


@pytest.mark.parametrize(
    "opt_cls,kw",
    [
        (RiemannianSGD, {"lr": 0.05, "momentum": 0.9}),
        (RiemannianSGD, {"lr": 0.05, "retraction": "retr"}),
        (RiemannianAdam, {"lr": 0.01, "amsgrad": True}),
    ],
    ids=["sgd-momentum", "sgd-retr", "adam-amsgrad"],
)
def test_fused_optimizers_on_the_second_gpu(opt_cls, kw):
    on1 = _run_on(D1, lambda dev: _optimize(dev, opt_cls, kw))
    on0 = _run_on(D0, lambda dev: _optimize(dev, opt_cls, kw))
    for a, b in zip(on1, on0, strict=True):
        _agree(a, b)


def test_one_optimizer_over_both_gpus_and_sparse_gradients():
    """Parameters of both devices in one optimizer (one fused launch per device) step
    as they do alone; sparse rows on cuda:1 as on cuda:0."""

    def both(_):
        p0, p1 = _params(D0, 13), _params(D1, 13)
        emb = ManifoldParameter(_ball(40, 8, D1, 14), PoincareBall(1.0))
        opt = RiemannianAdam([*p0, *p1, emb], lr=0.02, fused=True)
        for s in range(3):
            _grads(p0, s)
            _grads(p1, s)
            rows = torch.tensor([3, 7, 7, 39], device=D1)
            emb.grad = torch.sparse_coo_tensor(
                rows.unsqueeze(0), torch.ones(4, 8, device=D1) * 0.1, emb.shape
            )
            opt.step()
        return [p.detach() for p in (*p0, *p1, emb)]

    out = _run_on(D0, both)
    for a, b in zip(out[3:6], out[:3], strict=True):
        _agree(a, b)
    emb0 = ManifoldParameter(_ball(40, 8, D0, 14), PoincareBall(1.0))
    opt = RiemannianAdam([emb0], lr=0.02, fused=True)
    for _ in range(3):
        rows = torch.tensor([3, 7, 7, 39], device=D0)
        emb0.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), torch.ones(4, 8, device=D0) * 0.1, emb0.shape)
        opt.step()
    _agree(out[6], emb0.detach())


# --------------------------------------------------------------------------- a captured step
def _captured_training(device, replays=5):
    """A Poincaré-embedding step (distances, backward, fused RiemannianSGD) captured in
    a CUDA graph on ``device`` and replayed; returns the table."""
    table = ManifoldParameter(_ball(200, 10, device, 15, scale=0.05), PoincareBall(1.0))
    opt = RiemannianSGD([table], lr=0.05, retraction="retr")
    # distinct rows: the gradient of a row then has one term (no order of atomic adds to differ)
    pairs = torch.randperm(200, generator=torch.Generator().manual_seed(16))[:128].view(64, 2).to(device)

    def step(ids):
        opt.zero_grad(set_to_none=False)
        P.dist(table[ids[:, 0]], table[ids[:, 1]]).sum().backward()
        opt.step()
        return table

    g = capture(step, pairs, warmup=2)
    for _ in range(replays):
        g.replay()
    return table.detach()


def test_captured_step_on_the_second_gpu():
    _agree(_run_on(D1, _captured_training), _run_on(D0, _captured_training))


# --------------------------------------------------------------------------- runtime helpers
def test_profiler_and_memory_stats_per_device():
    x, y = _ball(2048, 64, D1, 17), _ball(2048, 64, D1, 18)
    P.mobius_add(x, y)
    with profile(gpu_time=True) as p:
        P.mobius_add(x, y)
    (rec,) = p.records
    assert rec.device == 1 and rec.stream == torch.cuda.current_stream(1).cuda_stream
    assert rec.gpu_ns is not None and rec.gpu_ns > 0
    s1, s0 = memory_stats(1), memory_stats(0)
    assert s1.device == 1 and s0.device == 0
    assert s1.torch_allocated == torch.cuda.memory_allocated(1) >= x.nbytes + y.nbytes
    assert s0.torch_allocated == torch.cuda.memory_allocated(0)
