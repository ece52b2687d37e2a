"""GPU tests of xpu_stone.linear and the xpu_stone.nn layers (skipped without a
CUDA GPU): the epilogue kernels against the float64 reference and the CPU path,
every output written (NaN-poisoned first), odd shapes, backward and dL/dc in
every dtype (fp16 included), the layers in fp16/bf16, torch.compile (inductor),
and the layers on CUDA."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import ball_points, rel_err, saturate_fp16

from xpu_stone import linear as L
from xpu_stone import nn as hnn
from xpu_stone.ops import hyperbolic_linear as OL
from xpu_stone.reference import linear as RL

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("poisoned_outputs")]

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
SHAPES = ((1, 1, 1), (7, 3, 5), (4099, 17, 33), (300, 512, 512), (64, 1000, 10), (0, 8, 8))
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 3e-2}
GTOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 5e-2, torch.bfloat16: 5e-2}


def _inputs(rows, din, dout, c, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(rows, din, generator=gen, dtype=torch.float64)
    d = d / d.norm(dim=-1, keepdim=True)
    x = d * torch.rand(rows, 1, generator=gen, dtype=torch.float64) * 0.9 / math.sqrt(c)
    M = torch.randn(dout, din, generator=gen, dtype=torch.float64) / math.sqrt(din)
    z = torch.randn(din, dout, generator=gen, dtype=torch.float64) / math.sqrt(din)
    r = torch.randn(dout, generator=gen, dtype=torch.float64) * 0.3
    return [t.to(dtype).cuda() for t in (x, M, z, r)]


def _cases(x, M, z, r, c):
    return (
        (
            "mobius_matvec",
            lambda a, b, cc: L.mobius_matvec(b, a, cc),
            lambda a, b, cc: RL.mobius_matvec(b, a, cc),
            (x, M),
        ),
        (
            "poincare_mlr",
            lambda a, b, s: L.poincare_mlr(a, b, s, c),
            lambda a, b, s: RL.mlr_hnnpp(a, b, s, c),
            (x, z, r),
        ),
        (
            "poincare_fc",
            lambda a, b, s: L.poincare_fc(a, b, s, c),
            lambda a, b, s: RL.poincare_fc(a, b, s, c),
            (x, z, r),
        ),
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forward_matches_reference(dtype):
    for k, (rows, din, dout) in enumerate(SHAPES):
        c = (0.01, 1.0, 4.0, 100.0)[k % 4]
        x, M, z, r = _inputs(rows, din, dout, c, dtype, k)
        for name, ours, ref, args in _cases(x, M, z, r, c):
            extra = (c,) if name == "mobius_matvec" else ()
            out = ours(*args, *extra) if extra else ours(*args)
            assert out.shape == (rows, dout) and out.dtype == dtype
            if rows == 0:
                continue
            assert torch.isfinite(out).all(), (name, rows, din, dout)
            up = [a.double() for a in args]
            want = ref(*up, *extra) if extra else ref(*up)
            assert rel_err(out, want) < TOL[dtype], (name, rows, din, dout, c)
            cpu = ours(*[a.cpu() for a in args], *extra) if extra else ours(*[a.cpu() for a in args])
            assert rel_err(out.cpu(), cpu) < TOL[dtype]


def test_boundary_rows_and_zero_rows():
    x = ball_points((2000, 64), 1.0, torch.float32, device="cuda", boundary=True).requires_grad_()
    M = torch.randn(32, 64, device="cuda", requires_grad=True)
    z = torch.randn(64, 32, device="cuda", requires_grad=True)
    r = (torch.randn(32, device="cuda") * 30).requires_grad_()
    for out in (L.mobius_matvec(M, x), L.poincare_mlr(x, z, r), L.poincare_fc(x, z, r)):
        assert torch.isfinite(out).all()
        grads = torch.autograd.grad(out.square().sum(), (x, M, z, r), allow_unused=True)
        assert all(g is None or torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_backward_matches_reference(dtype):
    """Gradients of every input and of c against autograd of the float64 reference on
    the same rounded inputs and output gradient (fp16: the reference saturated at
    +-65504 like the kernels' stores). dL/dc = sum_ij g_ij dout_ij/dc is one sum of
    rows x dout terms that can cancel: its error is measured against sum_ij |g_ij
    dout_ij/dc| (the forward-mode derivative of the reference), not against the sum."""
    for rows, din, dout in ((5, 4, 3), (1000, 64, 48), (4096, 512, 512), (33, 1, 7)):
        x, M, z, r = (t.requires_grad_() for t in _inputs(rows, din, dout, 2.0, dtype, rows))
        gen = torch.Generator(device="cuda").manual_seed(rows)
        g = torch.randn(rows, dout, device="cuda", dtype=torch.float64, generator=gen).to(dtype).double()
        c = torch.tensor(2.0, device="cuda", dtype=torch.float64, requires_grad=True)
        for name, ours, ref, args in _cases(x, M, z, r, 2.0):
            extra = (c,) if name == "mobius_matvec" else ()
            wrt = (*args, *extra)
            got = torch.autograd.grad(ours(*args, *extra), wrt, g.to(dtype))
            up = [a.detach().double().requires_grad_() for a in args]
            cc = [c.detach().clone().requires_grad_()] if extra else []
            want = torch.autograd.grad(ref(*up, *cc), (*up, *cc), g)
            for a, b in zip(got[: len(args)], want[: len(args)]):
                a, b = saturate_fp16(a, b)
                assert torch.isfinite(a).all()
                assert rel_err(a, b, floor=1e-3) < GTOL[dtype], (name, rows, din, dout)
            if extra:
                fixed = [u.detach() for u in up]
                _, dout_dc = torch.func.jvp(
                    lambda k, ref=ref, fixed=fixed: ref(*fixed, k), (c.detach(),), (torch.ones_like(c),)
                )
                scale = max((g * dout_dc).abs().sum().item(), 1e-3)
                err = abs(got[-1].item() - want[-1].item()) / scale
                assert math.isfinite(got[-1].item()) and err < GTOL[dtype], (
                    name,
                    "dL/dc",
                    rows,
                    din,
                    dout,
                    err,
                )
                # where the terms cannot cancel (g2 takes the sign of dout/dc), dL/dc = sum |g2 dout/dc|
                # is judged by its plain relative error: a dropped block or a wrong sign fails here
                g2 = (g.abs() * dout_dc.sign()).to(dtype)
                (got_c,) = torch.autograd.grad(ours(*args, c), (c,), g2)
                want_c = (g2.double() * dout_dc).sum().item()
                assert abs(got_c.item() - want_c) <= GTOL[dtype] * abs(want_c), (
                    name,
                    "dL/dc without cancellation",
                    rows,
                    din,
                    dout,
                    got_c.item(),
                    want_c,
                )


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=str)
def test_layers_in_16_bits_match_reference(dtype):
    """xpu_stone.nn's HypLinear, PoincareLinear and HypMLR converted to fp16/bf16 on
    CUDA: outputs and the gradients of the input and of every parameter against
    autograd of the float64 reference layers (xpu_stone.reference.linear) with the
    same (rounded) parameters."""
    torch.manual_seed(4)
    c = 0.5
    x, *_ = _inputs(512, 48, 32, c, dtype, 9)
    layers = (
        (hnn.HypLinear(48, 32, c=c), lambda a, w, b: RL.hyp_linear(a, w, b, c)),
        (hnn.PoincareLinear(48, 32, c=c), lambda a, w, b: RL.poincare_fc(a, w, b, c)),
        (hnn.HypMLR(48, 10, c=c), lambda a, w, b: RL.mlr_hnnpp(a, w, b, c)),
    )
    for layer, ref in layers:
        with torch.no_grad():
            layer.bias.copy_(torch.randn(layer.bias.shape) * 0.05)  # inside the ball, off zero
        layer = layer.to(device="cuda", dtype=dtype)
        xi = x.detach().requires_grad_()
        out = layer(xi)
        g = torch.randn(out.shape, device="cuda", dtype=torch.float64)
        got = torch.autograd.grad(out, (xi, layer.weight, layer.bias), g.to(dtype))
        up = [a.detach().double().requires_grad_() for a in (xi, layer.weight, layer.bias)]
        want_out = ref(*up)
        want = torch.autograd.grad(want_out, up, g)
        assert rel_err(out, want_out) < TOL[dtype], type(layer).__name__
        for a, b in zip(got, want):
            a, b = saturate_fp16(a, b)
            assert torch.isfinite(a).all(), type(layer).__name__
            assert rel_err(a, b, floor=1e-3) < GTOL[dtype], type(layer).__name__


def test_backward_kernels_equal_cpu_path():
    x, M, z, r = _inputs(300, 40, 24, 1.5, torch.float64, 3)
    v = x @ M.t()
    g = torch.randn_like(v)
    for a, b in zip(
        OL._matvec_bwd(x, v, g, 1.5, None, True), OL._matvec_bwd_torch(x.cpu(), v.cpu(), g.cpu(), 1.5, None)
    ):
        assert rel_err(a.cpu(), b) < 1e-12
    zn, pz = OL._col_norms(z), x @ z
    for mode in (L.MLR, L.FC):
        gpu = OL._hnn_bwd(x, pz, g, zn, r.double(), 1.5, mode)
        cpu = OL._hnn_bwd_torch(x.cpu(), pz.cpu(), g.cpu(), zn.cpu(), r.double().cpu(), 1.5, mode)
        for a, b in zip(gpu, cpu):
            assert rel_err(a.cpu(), b) < 1e-12


def test_torch_compile_inductor_layers():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        hnn.ToPoincare(1.0, clip_r=2.0),
        hnn.HypLinear(64, 64),
        hnn.HypAct(torch.nn.ReLU()),
        hnn.PoincareLinear(64, 64),
        hnn.HypMLR(64, 10),
    ).cuda()
    x = torch.randn(256, 64, device="cuda")
    compiled = torch.compile(model, fullgraph=True)
    got = compiled(x)
    want = model(x)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)
    got.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    want.sum().backward()
    for a, p in zip(grads, model.parameters()):
        assert torch.allclose(a, p.grad, rtol=1e-4, atol=1e-5)
