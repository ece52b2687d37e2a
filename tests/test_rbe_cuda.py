"""GPU tests of the RBE kernels (cuda_src/rbe.cu, skipped without a CUDA GPU): forward and
backward against the CPU oracle (xpu_stone.rbe.functional's torch path, evaluated in
float64 from the same float32 codes) at odd shapes and partial tiles, both tile sizes,
every residual width, batches on both sides of the 16-row switch and split or unsplit
tile walks, every activation dtype; every output written (NaN-poisoned first); the
allocator's peak showing that no buffer of the weight's size is allocated; CUDA-graph
capture and torch.compile around the layer."""

from __future__ import annotations

import pytest
import torch

from xpu_stone import rbe
from xpu_stone.rbe.format import pack_state
from xpu_stone.rbe.functional import backward_cpu, forward_cpu

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("poisoned_outputs")]

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# relative Frobenius error against the float64 oracle (fp32: the fp32 argument of sin,
# |arg| up to ~150, carries ~1e-5 absolute; fp16/bf16: the output's rounding)
TOL = {torch.float64: 1e-10, torch.float32: 2e-4, torch.float16: 3e-3, torch.bfloat16: 2e-2}
GTOL = {torch.float64: 1e-9, torch.float32: 5e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}
# (out, in, tile, atoms, residual bits): partial tiles and groups, both tiles, 0..4 bits
LAYERS = (
    (70, 45, 32, 3, 2),
    (257, 129, 32, 1, 1),
    (33, 1000, 64, 4, 4),
    (130, 200, 64, 8, 0),
    (3072, 768, 32, 4, 1),
    (96, 300, 32, 2, 3),
)
BATCHES = (1, 5, 16, 17, 200, 300)  # 300: the unsplit tensor-core walk of the 3072-row layer


def rel(a, b) -> float:
    """Relative Frobenius error of ``a`` (the GPU result) against ``b`` (the CPU oracle),
    both brought to the CPU in float64."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def make_layer(out, inp, tile, atoms, bits, seed, tracks=(0, 1, 2)):
    """A layer with random atoms on every track (hyperbolic ones inside the clamp's
    reach: small frequencies) and a random residual, on the GPU."""
    torch.manual_seed(seed)
    layer = rbe.RBELinear(inp, out, tile, atoms, bits)
    t = layer.shadow.shape[0]
    gen = torch.Generator().manual_seed(seed)
    trk = torch.tensor(tracks)[torch.randint(0, len(tracks), (t, atoms), generator=gen)]
    hyper = trk == 1
    fields = {
        "trk": trk,
        "s_h": torch.randint(0, 2, (t, atoms), generator=gen),
        "sigma": torch.randint(0, 2, (t, atoms), generator=gen),
        "m_r": torch.where(hyper, torch.randint(0, 20, (t, atoms), generator=gen),
                           torch.randint(0, 1024, (t, atoms), generator=gen)),
        "m_psi": torch.where(hyper, torch.zeros(t, atoms, dtype=torch.int64),
                             torch.randint(-32, 32, (t, atoms), generator=gen)),
    }  # fmt: skip
    with torch.no_grad():
        layer.state.copy_(pack_state(fields))
        layer.shadow[..., 0] = torch.rand(t, atoms, generator=gen) * 0.6
        layer.shadow[..., 1] = torch.randn(t, atoms, generator=gen)
        layer.shadow[..., 3] = torch.randn(t, atoms, generator=gen) * 0.3 - 3
        layer.shadow[..., 2] = torch.where(hyper, torch.rand(t, atoms, generator=gen), layer.shadow[..., 2])
    return layer.cuda()


def oracle_forward(layer, x):
    """The CPU path in float64 from the layer's float32 parameters."""
    p = [t.cpu() if t is not None else None for t in (layer.shadow, layer.state, layer.residual, layer._scales(),
                                                        layer.bias)]  # fmt: skip
    return forward_cpu(x.double().cpu(), *p, layer.out_features, layer.tile, layer.residual_bits)


@pytest.mark.parametrize("shape", LAYERS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_matches_the_cpu_oracle(shape, dtype):
    layer = make_layer(*shape, seed=sum(shape))
    for n in BATCHES:
        x = torch.randn(n, shape[1], device="cuda").to(dtype)
        with torch.no_grad():
            y = layer(x)
        assert y.dtype == dtype and y.shape == (n, shape[0])
        assert torch.isfinite(y).all()
        assert rel(y, oracle_forward(layer, x)) < TOL[dtype], (shape, n)


@pytest.mark.parametrize("shape", LAYERS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_matches_the_cpu_oracle(shape, dtype):
    layer = make_layer(*shape, seed=7 + sum(shape))
    out, inp, tile, atoms, bits = shape
    for n in (1, 17, 64):
        x = torch.randn(n, inp, device="cuda").to(dtype).requires_grad_(True)
        g = torch.randn(n, out, device="cuda").to(dtype)
        layer.zero_grad()
        layer(x).backward(g)
        p = [t.cpu() if t is not None else None for t in (layer.shadow, layer.state, layer.residual,
                                                            layer._scales(), layer.bias)]  # fmt: skip
        want = backward_cpu(g.double().cpu(), x.detach().double().cpu(), *p, out, tile, bits,
                            [True, True, bits > 0, True])  # fmt: skip
        got = (x.grad, layer.shadow.grad, layer.scales.grad if bits else None, layer.bias.grad)
        for name, a, b in zip(("x", "shadow", "scales", "bias"), got, want):
            if b is None:
                continue
            assert a.dtype == (dtype if name == "x" else torch.float32)
            assert torch.isfinite(a).all() and rel(a, b) < GTOL[dtype], (name, shape, n)


def test_zero_rows_and_leading_dims():
    layer = make_layer(70, 45, 32, 3, 2, seed=3)
    x = torch.randn(0, 45, device="cuda", requires_grad=True)
    y = layer(x)
    assert y.shape == (0, 70)
    y.sum().backward()
    assert torch.equal(layer.shadow.grad, torch.zeros_like(layer.shadow))
    x3 = torch.randn(2, 3, 45, device="cuda")
    assert rel(layer(x3).reshape(6, 70), oracle_forward(layer, x3.reshape(6, 45))) < TOL[torch.float32]


def test_no_buffer_of_the_weights_size():
    """Peak allocation of a forward and backward through a 4096 x 4096 layer (a dense fp16
    weight: 32 MiB) stays below a sixteenth of that; generating the weight on the device
    (the torch path) does exceed it, so the measurement can see one."""
    layer = make_layer(4096, 4096, 32, 4, 1, seed=11)
    dense_fp16 = 4096 * 4096 * 2
    x = torch.randn(8, 4096, device="cuda", dtype=torch.float16, requires_grad=True)
    layer(x).sum().backward()  # compile, load, make the levels
    torch.cuda.synchronize()
    for step in ("forward", "backward"):
        layer.zero_grad()
        x.grad = None
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        y = layer(x)
        if step == "backward":
            y.sum().backward()
        torch.cuda.synchronize()
        assert torch.cuda.max_memory_allocated() - base < dense_fp16 / 16, step
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.no_grad():
        layer.materialize()
    assert torch.cuda.max_memory_allocated() - base >= dense_fp16


def test_cuda_graph_capture_of_forward_and_backward():
    layer = make_layer(257, 129, 32, 2, 1, seed=12)
    x = torch.randn(5, 129, device="cuda", requires_grad=True)
    gy = torch.randn(5, 257, device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):  # warm-up: compile, load, levels
            layer.zero_grad()
            x.grad = None
            layer(x).backward(gy)
    torch.cuda.current_stream().wait_stream(s)
    want_y = layer(x).detach().clone()
    want_gs = layer.shadow.grad.clone()
    graph = torch.cuda.CUDAGraph()
    layer.zero_grad(set_to_none=False)
    x.grad.zero_()
    with torch.cuda.graph(graph):
        y = layer(x)
        y.backward(gy)
    layer.shadow.grad.zero_()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, want_y)
    torch.testing.assert_close(layer.shadow.grad, want_gs, rtol=1e-6, atol=1e-6)


def test_torch_compile_around_the_layer():
    layer = make_layer(96, 300, 32, 2, 3, seed=13)
    model = torch.nn.Sequential(layer, torch.nn.GELU(), torch.nn.Linear(96, 10).cuda())
    x = torch.randn(7, 300, device="cuda")
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    compiled(x).sum().backward()
    assert torch.isfinite(layer.shadow.grad).all()
