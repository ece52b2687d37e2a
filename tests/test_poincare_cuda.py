"""GPU tests of the Poincare kernels (skipped without a CUDA GPU).

Every op x dtype x D x rows against the float64 reference, outputs poisoned
with NaN before each launch; gradients against autograd of the reference;
opcheck, torch.compile, CUDA graphs, side streams, strided and broadcast
inputs, CuPy arrays.
"""

from __future__ import annotations

import pytest
import torch
from helpers import (
    DTYPE_NAME,
    FWD_TOL,
    GRAD_TOL,
    OPS,
    ball_points,
    op_args,
    rel_err,
    row_inputs,
    settled_error,
    settled_grad_errors,
)

import xpu_stone
from xpu_stone import config
from xpu_stone import poincare as P
from xpu_stone.constants import BOUNDARY_EPS
from xpu_stone.engine import OPS as TORCH_OPS
from xpu_stone.reference import poincare as R

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("poisoned_outputs")]

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
DIMS = (1, 3, 16, 17, 64, 100, 127, 256, 1000, 1024, 4096, 4097)
ROWS = (0, 1, 7, 4099)
CURVATURES = (1e-3, 1.0, 1e3)


def _call(fn, name, args, c, dtype):
    if name == "project":
        return fn(*args, c=c, eps=BOUNDARY_EPS[DTYPE_NAME[dtype]])
    return fn(*args, c=c)


def _reference(name, args, c, dtype):
    up = [a.double() if isinstance(a, torch.Tensor) else a for a in args]
    c64 = c.double() if isinstance(c, torch.Tensor) else c
    return _call(getattr(R, name), name, up, c64, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", OPS)
def test_forward_matches_reference(name, dtype):
    failures = []
    case = 0
    for d in DIMS:
        for rows in ROWS:
            case += 1
            c = CURVATURES[case % 3]
            x, y, z, u, t = row_inputs(rows, d, c, dtype, seed=case, device="cuda")
            if case % 4 == 0 and rows:  # per-row curvature tensor
                c = torch.full((rows, 1), c, device="cuda", dtype=torch.float32)
            args = op_args(name, x, y, z, u, t)
            out = _call(getattr(P, name), name, args, c, dtype)
            ref = _reference(name, args, c, dtype)
            assert out.shape == ref.shape and out.dtype == dtype
            if rows == 0:
                continue
            if not torch.isfinite(out).all():
                failures.append((d, rows, c if isinstance(c, float) else "tensor", "non-finite output"))
                continue
            eps = BOUNDARY_EPS[DTYPE_NAME[dtype]]
            err, _ = settled_error(name, out, ref, args, c, eps, FWD_TOL[dtype])
            if not err <= FWD_TOL[dtype]:
                failures.append((d, rows, c if isinstance(c, float) else "tensor", err))
    assert not failures, failures


GRAD_DIMS = (1, 17, 64, 1000, 4097)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", OPS)
def test_grads_match_reference(name, dtype):
    failures = []
    case = 0
    for d in GRAD_DIMS:
        for rows in (7, 4099) if d <= 64 else (7,):
            case += 1
            c0 = CURVATURES[case % 3]
            x, y, z, u, t = row_inputs(rows, d, c0, dtype, seed=100 + case, device="cuda")
            c_dtype = torch.float64 if dtype == torch.float64 else torch.float32
            c = torch.full((rows, 1), c0, device="cuda", dtype=c_dtype)
            args = [a.detach().requires_grad_() for a in op_args(name, x, y, z, u, t)]
            c.requires_grad_()
            out = _call(getattr(P, name), name, args, c, dtype)
            gen = torch.Generator("cuda").manual_seed(case)
            g = torch.randn(out.shape, generator=gen, dtype=torch.float64, device="cuda")
            grads = torch.autograd.grad(out, [*args, c], g.to(dtype))

            up = [a.detach().double().requires_grad_() for a in args]
            c64 = c.detach().double().requires_grad_()
            ref = _call(getattr(R, name), name, up, c64, dtype)
            ref_grads = torch.autograd.grad(ref, [*up, c64], g)
            if dtype == torch.float16:  # fp16 stores saturate at its largest finite value
                ref_grads = [r.clamp(-65504, 65504) for r in ref_grads[:-1]] + [ref_grads[-1]]
            if not all(torch.isfinite(a).all() for a in grads):
                failures.append((d, rows, c0, "non-finite grad"))
                continue
            eps = BOUNDARY_EPS[DTYPE_NAME[dtype]]
            errs = settled_grad_errors(name, grads, ref_grads, args, c, g, eps, GRAD_TOL[dtype])
            for k, err in enumerate(errs):
                if not err <= GRAD_TOL[dtype]:
                    failures.append((d, rows, c0, k, err))
    assert not failures, failures


@pytest.mark.parametrize("name", OPS)
def test_opcheck_cuda(name):
    x, y, z, u, t = row_inputs(9, 12, 1.0, torch.float32, seed=5, device="cuda")
    args = [a.requires_grad_() for a in op_args(name, x, y, z, u, t)]
    op = TORCH_OPS[f"poincare_{name}"]
    vecs = [a for a in args if a is not t]
    c = torch.full((9, 1), 0.8, device="cuda", requires_grad=True)
    tt = t if name in ("geodesic", "mobius_scalar_mul") else None
    eps = BOUNDARY_EPS["float32"] if name == "project" else 0.0
    torch.library.opcheck(op, (*vecs, c, 1.0, tt, 0.0, eps))


def _model(x, y, t):
    a = P.mobius_add(x, y, c=0.5)
    b = P.geodesic(a, y, t, c=0.5)
    return P.dist(b, x, c=0.5).sum() + P.logmap0(P.project(P.expmap(x, b, c=0.5), c=0.5), c=0.5).sum()


def test_compile_fullgraph_no_graph_break():
    x, y, _, _, t = row_inputs(64, 32, 0.5, torch.float32, seed=7, device="cuda")
    x.requires_grad_()
    compiled = torch.compile(_model, fullgraph=True)
    out = compiled(x, y, t)
    ref = _model(x, y, t)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    (g1,) = torch.autograd.grad(out, x)
    (g2,) = torch.autograd.grad(_model(x, y, t), x)
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-5)


def test_cuda_graph_capture_and_replay():
    x, y, _, _, t = row_inputs(256, 64, 1.0, torch.float32, seed=8, device="cuda")
    config.poison_outputs = False  # a fill inside capture is fine, but keep the graph minimal
    static_x, static_y = x.clone(), y.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        P.geodesic(static_x, static_y, 0.3)  # warm-up: compile and load outside capture
        P.dist(static_x, static_y)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out_geo = P.geodesic(static_x, static_y, 0.3)
        out_dist = P.dist(out_geo, static_y)
    x2, y2, _, _, _ = row_inputs(256, 64, 1.0, torch.float32, seed=9, device="cuda")
    static_x.copy_(x2)
    static_y.copy_(y2)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out_geo, P.geodesic(x2, y2, 0.3))
    torch.testing.assert_close(out_dist, P.dist(P.geodesic(x2, y2, 0.3), y2))


def test_side_stream_ordering():
    x, y, *_ = row_inputs(4099, 256, 1.0, torch.float32, seed=10, device="cuda")
    side = torch.cuda.Stream()
    expected = P.mobius_add(x, y)
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        x2 = x * 1.0  # produced on the side stream
        out = P.mobius_add(x2, y)
    torch.cuda.current_stream().wait_stream(side)
    torch.testing.assert_close(out, expected)


def test_strided_broadcast_and_batched_inputs():
    gen = torch.Generator("cuda").manual_seed(11)
    # points of the c = 1.5 ball: inside every ball of the per-row curvatures in [0.5, 1.5)
    base = ball_points((6, 5, 64), 1.5, torch.float32, "cuda", gen)
    y = ball_points((1, 64), 1.5, torch.float32, "cuda", gen)
    views = {
        "contiguous": base,
        "strided features": ball_points((6, 5, 128), 1.5, torch.float32, "cuda", gen)[..., ::2],
        "transposed batch": base.transpose(0, 1),
        "offset by one element": ball_points((6 * 5 * 64 + 1,), 1.5, torch.float32, "cuda", gen)[1:].view(
            6, 5, 64
        ),
        "expanded": y.expand(6, 5, 64),
    }
    for label, x in views.items():
        c = torch.rand(x.shape[-2], 1, device="cuda") + 0.5  # one curvature per row of the last batch dim
        for name in ("mobius_add", "dist", "geodesic"):
            args = {"mobius_add": (x, y), "dist": (x, y), "geodesic": (x, y, 0.7)}[name]
            out = getattr(P, name)(*args, c=c)
            ref = getattr(R, name)(
                *[a.double() if isinstance(a, torch.Tensor) else a for a in args], c=c.double()
            )
            assert rel_err(out, ref, floor=1e-6) < 1e-5, (label, name)  # dist(y, y) = 0: floored
    x = base.clone()
    before = x.clone()
    P.project(x * 3)
    assert torch.equal(x, before)


def test_single_vector_inputs_forward_and_backward():
    """1-D inputs: an empty batch shape, scalar outputs of shape ()."""
    x = (torch.rand(33, device="cuda", dtype=torch.float64) * 0.05).requires_grad_()
    y = torch.rand(33, device="cuda", dtype=torch.float64) * 0.05
    for name in ("dist", "mobius_add", "dist0"):
        args = (x, y) if name != "dist0" else (x,)
        out = getattr(P, name)(*args)
        (g,) = torch.autograd.grad(out.sum(), x)
        xr = x.detach().requires_grad_()
        ref = getattr(R, name)(*((xr, y) if name != "dist0" else (xr,)))
        (gr,) = torch.autograd.grad(ref.sum(), xr)
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref.detach())
        torch.testing.assert_close(g, gr)


def test_cupy_arrays_match_torch():
    cupy = pytest.importorskip("cupy")
    x, y, _, _, t = row_inputs(333, 100, 2.0, torch.float32, seed=12, device="cuda")
    xc, yc = xpu_stone.to_cupy(x), xpu_stone.to_cupy(y)
    for name, args_t, args_c in [
        ("mobius_add", (x, y), (xc, yc)),
        ("dist", (x, y), (xc, yc)),
        ("geodesic", (x, y, 0.25), (xc, yc, 0.25)),
        ("expmap0", (x,), (xc,)),
    ]:
        out_c = getattr(P, name)(*args_c, c=2.0)
        assert isinstance(out_c, cupy.ndarray)
        torch.testing.assert_close(xpu_stone.to_torch(out_c), getattr(P, name)(*args_t, c=2.0))
    with cupy.cuda.Stream(non_blocking=True) as s:
        out = P.mobius_add(xc, yc, c=2.0)
        s.synchronize()
    torch.testing.assert_close(xpu_stone.to_torch(out), P.mobius_add(x, y, c=2.0))


def test_stress_grid_no_nan_in_outputs_or_grads():
    """Points crowding the boundary (1 - |x| down to 1e-7 of the radius)."""
    for dtype in DTYPES:
        for c in (1e-3, 1.0, 1e3):
            x, y, z, u, t = row_inputs(4099, 33, c, dtype, seed=13, device="cuda", boundary=True)
            for name in OPS:
                args = [a.detach().requires_grad_() for a in op_args(name, x, y, z, u, t)]
                out = _call(getattr(P, name), name, args, c, dtype)
                assert torch.isfinite(out).all(), (name, dtype, c)
                grads = torch.autograd.grad(out.float().sum(), args)
                for g in grads:
                    assert torch.isfinite(g).all(), (name, dtype, c)
