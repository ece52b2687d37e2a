"""The op half of :mod:`xpu_stone.linear` (kernels in ``cuda_src/hyperbolic_linear.cu``):
kernel names, the epilogue maths in torch (the CPU path), the launchers, and the
custom ops ``xpu_stone::linear_mobius_matvec`` and ``xpu_stone::linear_hnn``.

Each map is one GEMM (torch, cuBLAS) plus one epilogue kernel, one warp a row,
that computes the row norms, the per-row formula and the output in one pass;
the backward kernel writes the GEMM operands and the per-row / per-column terms,
and two GEMMs finish it. The formulas are in :mod:`xpu_stone.linear`.
"""

from __future__ import annotations

import math

import numpy

from .._deps import torch
from ..constants import ARTANH_MAX, MIN_DENOM, MIN_SQNORM, TANH_MAX
from ..engine.custom_op import Impls, define_differentiable, empty_if_none, none_unless
from ..engine.launch import TORCH_DTYPES, allocates, compute_dtype, poison, ptr, torch_stream
from ..engine.scalars import read_curvature
from ..kernels.launch import get_function, launch_kernel
from ..kernels.registry import CXX_TYPE, DTYPES, REGISTRY, KernelList

__all__ = ["FC", "KERNELS", "MLR", "hnn_op", "matvec_op"]

MIN_COL_NORM = 1e-15  # |z_k| below this counts as this (a zero column gives zero logits)
HYP_ARG_MAX = 50.0  # XS_HYP_ARG_MAX of hyperbolic_linear.cu
MLR, FC = 0, 1  # the MODE template argument of xs_hnn_fwd / xs_hnn_bwd (hyperbolic_linear.cu)
BLOCK = 256
# The kernels' clamps, xs_limits<S> of math.cuh with S = double (kernel_name): the float64 ones.
PHI_MIN_SQNORM = MIN_SQNORM["float64"]  # xs_limits<S>::min_sqnorm: xs_norm_from_sq in xs_matvec_phi
PHI_ARTANH_MAX = ARTANH_MAX["float64"]  # xs_limits<S>::artanh_max: xs_artanh_c in xs_matvec_phi
PHI_TANH_MAX = TANH_MAX  # xs_limits<S>::tanh_max: xs_tanh_c in xs_matvec_phi
LAMBDA_MIN_DENOM = MIN_DENOM  # xs_limits<S>::min_denom: xs_lambda, and `clamped` of xs_hnn_bwd


def kernel_name(kind: str, dtype: str) -> str:
    t = CXX_TYPE[dtype]
    if kind in ("matvec_fwd", "matvec_bwd"):
        return f"xs_{kind}<{t}, double>"
    base, mode = kind.rsplit("_", 1)  # "hnn_fwd_0"
    return f"xs_{base}<{t}, double, {mode}>"


KINDS = ("matvec_fwd", "matvec_bwd", "hnn_fwd_0", "hnn_fwd_1", "hnn_bwd_0", "hnn_bwd_1")
KERNELS = REGISTRY.register(
    KernelList(
        "hyperbolic_linear",
        "hyperbolic_linear.cu",
        tuple((dtype, kernel_name(kind, dtype)) for dtype in DTYPES for kind in KINDS),
    )
)


# ------------------------------------------------------------ the maths, in torch
def _sqnorm64(a):
    return a.double().square().sum(-1, keepdim=True)


def _clamp_sq(sq):
    return sq.clamp_min(PHI_MIN_SQNORM)


def matvec_phi(vv, xx, c):
    r""":math:`\phi(\|v\|^2, \|x\|^2, c)` with out = phi v (fp64, clamped as the kernel)."""
    sc = torch.sqrt(c)
    r = torch.sqrt(_clamp_sq(vv))
    n = torch.sqrt(_clamp_sq(xx))
    art = torch.atanh((sc * n).clamp(-PHI_ARTANH_MAX, PHI_ARTANH_MAX))
    return torch.tanh((r / n * art).clamp(-PHI_TANH_MAX, PHI_TANH_MAX)) / (sc * r)


def hnn_v(p, lam, r, zn, c: float):
    sc = math.sqrt(c)
    two_r = (2 * sc * r).clamp(-HYP_ARG_MAX, HYP_ARG_MAX)
    q = sc * lam * p * torch.cosh(two_r) - (lam - 1) * torch.sinh(two_r)
    return 2 * zn / sc * torch.asinh(q)


def hnn_w(v, c: float):
    """(w, dw/dv) with sqrt(c) v clamped as the kernel does."""
    sc = math.sqrt(c)
    a = sc * v
    ac = a.clamp(-HYP_ARG_MAX, HYP_ARG_MAX)
    return torch.sinh(ac) / sc, torch.where(a == ac, torch.cosh(ac), torch.zeros_like(ac))


def hnn_lambda(xx, c: float):
    return 2 / (1 - c * xx).clamp_min(LAMBDA_MIN_DENOM)


def _matvec_fwd_torch(x, v, c_val, c):
    cc = torch.as_tensor(c_val if c is None else c, dtype=torch.float64, device=x.device)
    phi = matvec_phi(_sqnorm64(v), _sqnorm64(x), cc)
    return (phi * v.double()).to(x.dtype)


def _matvec_bwd_torch(x, v, g, c_val, c):
    """(dL/dv, gamma, dL/dc per row) as the kernel computes them."""
    vv, xx = _sqnorm64(v), _sqnorm64(x)
    gd = (g.double() * v.double()).sum(-1, keepdim=True)
    cc = torch.as_tensor(c_val if c is None else float(c), dtype=torch.float64, device=x.device)
    with torch.enable_grad():
        leaves = [vv.requires_grad_(), xx.requires_grad_(), cc.expand_as(vv).clone().requires_grad_()]
        phi = matvec_phi(*leaves)
        d_vv, d_xx, d_c = torch.autograd.grad(phi, leaves, torch.ones_like(phi))
    phi = phi.detach()
    gv = phi * g.double() + 2 * gd * d_vv * v.double()
    return gv.to(x.dtype), (2 * gd * d_xx).squeeze(-1), (gd * d_c).squeeze(-1)


def _hnn_fwd_torch(x, pz, zn, r, c_val, mode):
    lam = hnn_lambda(_sqnorm64(x), c_val)
    v = hnn_v(pz.double() / zn, lam, r, zn, c_val)
    if mode == MLR:
        return v.to(x.dtype)
    w, _ = hnn_w(v, c_val)
    return (w / (1 + torch.sqrt(1 + c_val * w.square().sum(-1, keepdim=True)))).to(x.dtype)


def _hnn_bwd_torch(x, pz, g, zn, r, c_val, mode):
    """([gpz | H | Rk] (rows x 3 dout), gamma) as the kernel computes them."""
    xx = _sqnorm64(x)
    lam = hnn_lambda(xx, c_val)
    rows, dout = pz.shape
    with torch.enable_grad():
        leaves = [
            (pz.double() / zn).requires_grad_(),
            lam.expand(rows, dout).clone().requires_grad_(),
            r.expand(rows, dout).clone().requires_grad_(),
            zn.expand(rows, dout).clone().requires_grad_(),
        ]
        v = hnn_v(*leaves, c_val)
        d_p, d_lam, d_r, d_zn = torch.autograd.grad(v, leaves, torch.ones_like(v))
    v = v.detach()
    gv = g.double()
    if mode == FC:
        w, dw = hnn_w(v, c_val)
        root = torch.sqrt(1 + c_val * w.square().sum(-1, keepdim=True))
        psi = 1 / (1 + root)
        dpsi = -c_val / (2 * root * (1 + root) ** 2)
        gv = (psi * gv + 2 * dpsi * (gv * w).sum(-1, keepdim=True) * w) * dw
    buf = torch.cat([gv * d_p / zn, gv * d_zn, gv * d_r], dim=-1)
    clamped = (1 - c_val * xx) < LAMBDA_MIN_DENOM
    gamma = torch.where(clamped, torch.zeros_like(xx), (gv * d_lam).sum(-1, keepdim=True) * c_val * lam * lam)
    p = compute_dtype(x.dtype)
    return buf.to(p), gamma.squeeze(-1).to(p)


# ------------------------------------------------------------------ GPU launches
def _launch(kind, dtype, rows, args, c_val, dev, din, dout):
    """One warp a row; every kernel of hyperbolic_linear.cu ends with (rows, din, dout, c)."""
    if rows == 0:
        return
    fn = get_function(KERNELS.source, kernel_name(kind, dtype), dev, KERNELS.defines(dtype))
    args = (*args, numpy.int64(rows), numpy.int64(din), numpy.int64(dout), numpy.float64(c_val))
    launch_kernel(fn, -(-rows * 32 // BLOCK), BLOCK, args, torch_stream(dev), dev, op=f"hyperbolic_linear.{kind}",
           shape=(rows, din, dout), dtype=dtype)  # fmt: skip


def _device_c(c):
    """A tensor c as the kernels read it (float64, on the device: no host read; the
    kernels give NaN for a value that is not finite and positive), or None."""
    return None if c is None else c.detach().reshape(()).to(torch.float64)


def _matvec_fwd(x, v, c_val, c):
    if not x.is_cuda:  # a CPU c is read on the host at no cost: checked here
        if c is not None:
            read_curvature(c)
        return _matvec_fwd_torch(x, v, c_val, c)
    out = torch.empty_like(v)
    poison(out)
    rows, din = x.shape
    c_dev = _device_c(c)
    _launch(
        "matvec_fwd",
        TORCH_DTYPES[x.dtype],
        rows,
        (ptr(x), ptr(v), ptr(out), ptr(c_dev)),
        c_val,
        x.device.index,
        din,
        v.shape[1],
    )
    return out


def _matvec_bwd(x, v, g, c_val, c, need_c):
    if not x.is_cuda:
        return _matvec_bwd_torch(x, v, g, c_val, c)
    rows, din = x.shape
    p = compute_dtype(x.dtype)
    gv = torch.empty_like(v)
    gamma = torch.empty(rows, dtype=p, device=x.device)
    gc = torch.empty(rows, dtype=p, device=x.device) if need_c else None
    poison(gv, gamma, gc)
    c_dev = _device_c(c)
    args = (ptr(x), ptr(v), ptr(g.contiguous()), ptr(gv), ptr(gamma), ptr(gc), ptr(c_dev))
    _launch("matvec_bwd", TORCH_DTYPES[x.dtype], rows, args, c_val, x.device.index, din, v.shape[1])
    return gv, gamma, gc


def _hnn_fwd(x, pz, zn, r, c_val, mode):
    if not x.is_cuda:
        return _hnn_fwd_torch(x, pz, zn, r, c_val, mode)
    out = torch.empty_like(pz)
    poison(out)
    rows, din = x.shape
    args = (ptr(x), ptr(pz), ptr(out), ptr(zn), ptr(r))
    _launch(f"hnn_fwd_{mode}", TORCH_DTYPES[x.dtype], rows, args, c_val, x.device.index, din, pz.shape[1])
    return out


def _hnn_bwd(x, pz, g, zn, r, c_val, mode):
    if not x.is_cuda:
        return _hnn_bwd_torch(x, pz, g, zn, r, c_val, mode)
    rows, din = x.shape
    dout = pz.shape[1]
    p = compute_dtype(x.dtype)
    buf = torch.empty((rows, 3 * dout), dtype=p, device=x.device)
    gamma = torch.empty(rows, dtype=p, device=x.device)
    poison(buf, gamma)
    args = (ptr(x), ptr(pz), ptr(g.contiguous()), ptr(zn), ptr(r), ptr(buf), ptr(gamma))
    _launch(f"hnn_bwd_{mode}", TORCH_DTYPES[x.dtype], rows, args, c_val, x.device.index, din, dout)
    return buf, gamma


def _gemm(a, b):
    """a @ b in the compute dtype of a's storage (fp32 for fp16/bf16)."""
    e = compute_dtype(a.dtype) if a.dtype in (torch.float16, torch.bfloat16) else a.dtype
    return torch.matmul(a.to(e), b.to(e))


def _col_norms(z):
    return torch.linalg.vector_norm(z.double(), dim=0).clamp_min(MIN_COL_NORM)


# ---------------------------------------------------- custom op: mobius_matvec
@allocates
def _matvec(x, weight, c, c_val):
    v = torch.matmul(x, weight.t())
    return _matvec_fwd(x, v, c_val, c), v


@allocates
def _matvec_backward_impl(grad, x, weight, v, c, c_val, needs):
    gv, gamma, gc = _matvec_bwd(x, v, grad, c_val, c, needs[2] and c is not None)
    gx = torch.addcmul(_gemm(gv, weight), gamma[:, None], x.to(gamma.dtype)).to(x.dtype) if needs[0] else None
    gw = _gemm(gv.t(), x).to(weight.dtype) if needs[1] else None
    gcs = gc.sum().to(c.dtype) if (needs[2] and c is not None) else None
    return empty_if_none([gx, gw, gcs], x)


def _matvec_fake(x, weight, c, c_val):
    return x.new_empty((x.shape[0], weight.shape[0])), x.new_empty((x.shape[0], weight.shape[0]))


def _matvec_backward_fake(grad, x, weight, v, c, c_val, needs):
    gc = c.new_empty(()) if (needs[2] and c is not None) else None
    return empty_if_none(
        [torch.empty_like(x) if needs[0] else None, torch.empty_like(weight) if needs[1] else None, gc], x
    )


def _matvec_save(ctx, inputs, output):
    x, weight, c, c_val = inputs
    ctx.save_for_backward(x, weight, output[1], c)
    ctx.c_val = c_val


def _matvec_backward(backward_op, ctx, grad, _grad_v):
    x, weight, v, c = ctx.saved_tensors
    ng = ctx.needs_input_grad
    needs = [bool(ng[0]), bool(ng[1]), bool(ng[2]) and c is not None]
    grads = backward_op(grad, x, weight, v, c, ctx.c_val, needs)
    return (*none_unless(grads, needs), None)


# ------------------------------------------------------- custom op: HNN++ maps
@allocates
def _hnn(x, z, r, c_val, mode):
    pz = torch.matmul(x, z)
    return _hnn_fwd(x, pz, _col_norms(z), r.double(), c_val, mode), pz


@allocates
def _hnn_backward_impl(grad, x, z, r, pz, c_val, mode, needs):
    zn = _col_norms(z)
    buf, gamma = _hnn_bwd(x, pz, grad, zn, r.double(), c_val, mode)
    dout = z.shape[1]
    gpz = buf[:, :dout]
    gx = torch.addcmul(_gemm(gpz, z.t()), gamma[:, None], x.to(gamma.dtype)).to(x.dtype) if needs[0] else None
    gz = gr = None
    if needs[1] or needs[2]:
        cols = buf[:, dout:].sum(0)
        if needs[1]:
            gz_p = _gemm(x.t(), gpz)
            zd = z.to(gz_p.dtype)
            zn_e = zn.to(gz_p.dtype)
            gzn = cols[:dout] - (zd * gz_p).sum(0) / zn_e
            gz = (gz_p + gzn * zd / zn_e).to(z.dtype)
        if needs[2]:
            gr = cols[dout:].to(r.dtype, copy=True)  # a fresh tensor, not a view into cols
    return empty_if_none([gx, gz, gr], x)


def _hnn_fake(x, z, r, c_val, mode):
    return x.new_empty((x.shape[0], z.shape[1])), x.new_empty((x.shape[0], z.shape[1]))


def _hnn_backward_fake(grad, x, z, r, pz, c_val, mode, needs):
    return empty_if_none([torch.empty_like(t) if need else None for t, need in zip((x, z, r), needs)], x)


def _hnn_save(ctx, inputs, output):
    x, z, r, c_val, mode = inputs
    ctx.save_for_backward(x, z, r, output[1])
    ctx.consts = (c_val, mode)


def _hnn_backward(backward_op, ctx, grad, _grad_pz):
    x, z, r, pz = ctx.saved_tensors
    needs = [bool(n) for n in ctx.needs_input_grad[:3]]
    grads = backward_op(grad, x, z, r, pz, *ctx.consts, needs)
    return (*none_unless(grads, needs), None, None)


matvec_op = hnn_op = None
if torch is not None:
    matvec_op = define_differentiable(
        "linear_mobius_matvec",
        "(Tensor x, Tensor weight, Tensor? c, float c_val) -> (Tensor, Tensor)",
        Impls(_matvec_fake, any_device=_matvec),
        "(Tensor grad, Tensor x, Tensor weight, Tensor v, Tensor? c, float c_val, bool[] needs) -> Tensor[]",
        Impls(_matvec_backward_fake, any_device=_matvec_backward_impl),
        _matvec_save,
        _matvec_backward,
    )
    hnn_op = define_differentiable(
        "linear_hnn",
        "(Tensor x, Tensor z, Tensor r, float c_val, int mode) -> (Tensor, Tensor)",
        Impls(_hnn_fake, any_device=_hnn),
        "(Tensor grad, Tensor x, Tensor z, Tensor r, Tensor pz, float c_val, int mode, bool[] needs) -> Tensor[]",
        Impls(_hnn_backward_fake, any_device=_hnn_backward_impl),
        _hnn_save,
        _hnn_backward,
    )
