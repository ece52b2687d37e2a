"""Faults survived, GPU side (skipped without a CUDA GPU): an out-of-memory error
inside an op or an optimizer step, and a CUDA-graph capture that fails part-way.

Out of memory is provoked at once, without filling the device: a broadcast whose
output would take terabytes, a cdist of 2e6 x 2e6, or torch's allocator capped
(``set_per_process_memory_fraction``) just above what it already holds. Each case
checks the typed :class:`OutOfMemoryError`, inputs (and optimizer state) unchanged,
and that the next call gives what the same call gave before the fault.
(The CPU side is tests/test_faults.py.)
"""

from __future__ import annotations

import contextlib
import gc

import pytest
import torch
from helpers import assert_steps_reach_twin, fresh_twin

from xpu_stone import pairwise, to_cupy, to_torch
from xpu_stone import poincare as P
from xpu_stone.errors import CudaError, OutOfMemoryError
from xpu_stone.manifolds import ManifoldParameter, PoincareBall
from xpu_stone.optim import RiemannianAdam, RiemannianSGD
from xpu_stone.runtime import capture

pytestmark = pytest.mark.gpu
cupy = pytest.importorskip("cupy")

MiB = 1 << 20
HUGE = 200_000  # (HUGE, 1, D) with (1, HUGE, D) broadcasts to HUGE * HUGE rows: terabytes


def _ball(*shape, seed=0, scale=0.05):
    """Points well inside the unit ball (plain torch, norms about scale * sqrt(D))."""
    gen = torch.Generator("cuda").manual_seed(seed)
    return torch.randn(*shape, device="cuda", generator=gen) * scale


@contextlib.contextmanager
def _memory_cap(extra_bytes: int):
    """torch's allocator limited to what it holds now plus ``extra_bytes``."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, (torch.cuda.memory_reserved() + extra_bytes) / total))
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)


def _check_typed(info, cause):
    e = info.value
    assert isinstance(e.__cause__, cause) and e.name == "cudaErrorMemoryAllocation" and "GPU 0" in str(e)
    assert isinstance(e, MemoryError)


# ---------------------------------------------------------------- row-wise ops
def test_row_op_out_of_memory_is_typed_and_leaves_inputs_alone():
    gc.collect()  # an earlier test's garbage freed mid-test would move the allocation count below
    x, y = _ball(HUGE, 1, 16, seed=1), _ball(1, HUGE, 16, seed=2)
    keep = x.clone(), y.clone()
    before = P.mobius_add(x[:64, 0], y[0, :64])
    allocated = torch.cuda.memory_allocated()
    with pytest.raises(OutOfMemoryError) as info:  # the direct launch (no autograd)
        P.mobius_add(x, y)
    _check_typed(info, torch.OutOfMemoryError)
    xg = x.clone().requires_grad_()
    with pytest.raises(OutOfMemoryError) as info:  # through the custom op (autograd)
        P.mobius_add(xg, y)
    _check_typed(info, torch.OutOfMemoryError)
    assert xg.grad is None and torch.equal(xg.detach(), keep[0])
    del xg, info
    gc.collect()
    assert torch.equal(x, keep[0]) and torch.equal(y, keep[1])
    assert torch.cuda.memory_allocated() == allocated  # nothing held by the failed calls
    assert torch.equal(P.mobius_add(x[:64, 0], y[0, :64]), before)  # the next call works


def test_row_op_backward_out_of_memory_is_typed_and_the_next_backward_works():
    n, d = 1 << 22, 16  # 256 MiB a tensor
    x = _ball(n, d, seed=3).requires_grad_()
    y = _ball(n, d, seed=4)
    out = P.mobius_add(x, y)
    g = torch.ones_like(out)
    (reference,) = torch.autograd.grad(out, x, g, retain_graph=True)
    with _memory_cap(64 * MiB), pytest.raises(OutOfMemoryError) as info:  # the 256 MiB gradient
        torch.autograd.grad(out, x, g, retain_graph=True)
    _check_typed(info, torch.OutOfMemoryError)
    del info
    (again,) = torch.autograd.grad(out, x, g)
    assert torch.equal(again, reference) and x.grad is None


def test_cupy_row_op_out_of_memory_is_typed_with_the_size():
    x, y = cupy.asarray(_ball(HUGE, 1, 16, seed=5)), cupy.asarray(_ball(1, HUGE, 16, seed=6))
    keep = x.copy(), y.copy()
    before = P.mobius_add(x[:64, 0], y[0, :64])
    with pytest.raises(OutOfMemoryError) as info:
        P.mobius_add(x, y)
    e = info.value
    assert isinstance(e.__cause__, cupy.cuda.memory.OutOfMemoryError) and e.requested == HUGE * HUGE * 16 * 4
    assert bool((x == keep[0]).all()) and bool((y == keep[1]).all())
    assert bool((P.mobius_add(x[:64, 0], y[0, :64]) == before).all())


# --------------------------------------------------------------------- cdist
def test_cdist_out_of_memory_is_typed_and_leaves_inputs_alone():
    n = 2_000_000  # a (2e6, 2e6) float32 output: 16 TB
    x, y = _ball(n, 8, seed=7), _ball(n, 8, seed=8)
    keep = x.clone(), y.clone()
    before = pairwise.cdist(x[:100], y[:50])
    with pytest.raises(OutOfMemoryError) as info:
        pairwise.cdist(x, y)
    _check_typed(info, torch.OutOfMemoryError)
    del info
    assert torch.equal(x, keep[0]) and torch.equal(y, keep[1])
    assert torch.equal(pairwise.cdist(x[:100], y[:50]), before)


# ----------------------------------------------------------------- optimizers
@pytest.mark.parametrize(
    "make",
    [
        lambda ps: RiemannianAdam(ps, lr=1e-2),
        lambda ps: RiemannianSGD(ps, lr=1e-2, momentum=0.9),
    ],
    ids=["adam", "sgd_momentum"],
)
def test_optimizer_step_out_of_memory_leaves_parameters_and_state_alone(make):
    """The first step allocates the state (256 MiB of moments or momentum): capped
    out, it must raise the typed error with no parameter and no state changed, and
    then two steps must give what two steps of a fresh optimizer give."""
    n, d = 1 << 22, 16
    # every tensor below in a segment of its own: a block split from a larger cached one
    # (an earlier test's) would leave a free remainder that empty_cache cannot give back
    # and the capped allocation could land in it
    gc.collect()
    torch.cuda.empty_cache()
    ball = PoincareBall(c=1.0)
    p = ManifoldParameter(_ball(n, d, seed=9), ball)
    grads = [_ball(n, d, seed=10, scale=1.0), _ball(n, d, seed=11, scale=1.0)]
    twin, twin_opt = fresh_twin(make, p, grads)
    opt = make([p])
    p.grad = grads[0]
    start = p.detach().clone()
    with _memory_cap(64 * MiB), pytest.raises(OutOfMemoryError) as info:
        opt.step()
    _check_typed(info, torch.OutOfMemoryError)
    del info
    assert torch.equal(p.detach(), start) and not opt.state[p]  # no half-made state
    assert_steps_reach_twin(opt, p, grads, twin, twin_opt)


# ----------------------------------------------------------- failed capture
def test_failed_capture_puts_everything_back():
    """A capture that fails part-way (a host synchronisation inside) after it has
    allocated 256 MiB from the graph's pool and launched an xpu_stone kernel and a
    CuPy kernel: the typed error, then the caller's torch stream, CuPy's stream and
    allocator, the memory, torch's random generator are as they were, and the next
    capture works."""
    x = _ball(1024, 32, seed=12)

    def bad(x):
        scratch = torch.empty(64 * MiB, dtype=torch.float32, device="cuda")  # 256 MiB
        scratch.fill_(1.0)
        y = P.mobius_add(x, x)  # an xpu_stone kernel
        z = cupy.tanh(to_cupy(y)) * 2  # CuPy kernels and allocations
        return to_torch(z) * float(scratch[:1].sum().item())  # a host synchronisation: the capture fails

    def good(x):
        return P.mobius_add(x, x) * 2

    user = torch.cuda.Stream()
    with torch.cuda.stream(user):
        expected = good(x)
        torch.cuda.synchronize()
        gc.collect()
        torch.cuda.empty_cache()
        reserved = torch.cuda.memory_reserved()
        cupy_stream, cupy_allocator = cupy.cuda.get_current_stream().ptr, cupy.cuda.get_allocator()
        with pytest.raises(CudaError) as info:
            capture(bad, x)
        assert info.value.name is None or info.value.name.startswith("cudaErrorStreamCapture")
        del info
        assert torch.cuda.current_stream() == user and not torch.cuda.is_current_stream_capturing()
        assert cupy.cuda.get_current_stream().ptr == cupy_stream
        assert cupy.cuda.get_allocator() is cupy_allocator
        assert torch.randn(3, device="cuda").isfinite().all()
        torch.cuda.synchronize()
        gc.collect()
        torch.cuda.empty_cache()
        assert torch.cuda.memory_reserved() < reserved + 128 * MiB  # the graph pool's 256 MiB went back
        assert torch.equal(good(x), expected)
        g = capture(good, x)
        x2 = _ball(1024, 32, seed=13)
        assert torch.equal(g(x2), good(x2))


def test_typed_error_for_a_failed_launch():
    """A launch the driver refuses (a block of 4096 threads, above the 1024 limit)
    raises CudaError with the CUDA error name; the device keeps working."""
    from xpu_stone.engine.launch import torch_stream
    from xpu_stone.kernels.launch import get_function, launch_kernel
    from xpu_stone.ops.optim import KERNELS

    fn = get_function(KERNELS.source, KERNELS.name("float32", 0), 0, KERNELS.defines("float32"))
    with pytest.raises(CudaError) as info:
        launch_kernel(fn, 1, 4096, (), torch_stream(0), 0)
    assert not isinstance(info.value, OutOfMemoryError)
    assert info.value.name == "CUDA_ERROR_INVALID_VALUE", info.value.name
    x = _ball(8, 3)
    torch.testing.assert_close(P.dist(x, x), torch.zeros(8, device="cuda"), atol=1e-5, rtol=0)
