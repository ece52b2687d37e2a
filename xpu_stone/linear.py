r"""Hyperbolic linear maps on the Poincaré ball, each one GEMM plus one fused epilogue.

* :func:`mobius_matvec` (Ganea, Bécigneul & Hofmann, *Hyperbolic Neural Networks*, 2018):

  .. math::

      M \otimes_c x = \frac{1}{\sqrt c}\tanh\Big(\frac{\|Mx\|}{\|x\|}
          \operatorname{artanh}(\sqrt c\|x\|)\Big)\frac{Mx}{\|Mx\|}.

* :func:`poincare_mlr` and :func:`poincare_fc` (Shimizu, Mukuta & Harada,
  *Hyperbolic Neural Networks++*, 2021): with weight columns :math:`z_k`, biases
  :math:`r_k` and :math:`\lambda_x = 2/(1-c\|x\|^2)`,

  .. math::

      v_k(x) = \frac{2\|z_k\|}{\sqrt c}\operatorname{asinh}\Big(\sqrt c\,\lambda_x
          \Big\langle x, \frac{z_k}{\|z_k\|}\Big\rangle\cosh(2\sqrt c\,r_k)
          - (\lambda_x - 1)\sinh(2\sqrt c\,r_k)\Big),

  the unidirectional form of the Poincaré MLR logits of Ganea et al. (2018)
  (their hyperplane offset :math:`p_k = \exp_0(r_k z_k/\|z_k\|)`, normal
  :math:`a_k = \operatorname{sech}^2(\sqrt c\,r_k)\,z_k`); :func:`poincare_mlr`
  returns :math:`v(x)`, :func:`poincare_fc` the fully-connected layer
  :math:`y = w/(1+\sqrt{1+c\|w\|^2})`, :math:`w = \sinh(\sqrt c\,v(x))/\sqrt c`.

The GEMM runs in torch (cuBLAS); the epilogue kernels (``cuda_src/hyperbolic_linear.cu``)
compute the row norms, the per-row formula and the output in one pass, forward and
backward (the backward kernel writes the GEMM operands and the per-row / per-column
terms; two GEMMs finish it). Inputs are ``(*, D_in)``; fp32, fp64, fp16 and bf16,
with the per-row and per-element maths in fp64. ``c`` is a positive float or a
one-element tensor; :func:`mobius_matvec` also differentiates a tensor ``c``,
the HNN++ maps take a fixed ``c``.
"""

from __future__ import annotations

import math

import numpy

from . import config
from ._deps import require_torch, torch
from .errors import InvalidArgumentError, ShapeMismatchError, UnsupportedOperationError
from .kernels.launch import get_function, launch_kernel
from .kernels.registry import CXX_TYPE, DTYPES, REGISTRY, KernelList
from .pairwise import TORCH_DTYPES, check_curvature, compute_dtype

__all__ = ["mobius_matvec", "poincare_fc", "poincare_mlr"]

MIN_COL_NORM = 1e-15  # |z_k| below this counts as this (a zero column gives zero logits)
HYP_ARG_MAX = 50.0  # XS_HYP_ARG_MAX of hyperbolic_linear.cu
MLR, FC = 0, 1
BLOCK = 256


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


# ------------------------------------------------------------------ validation
def _check_input(x, name="x"):
    if not isinstance(x, torch.Tensor):
        raise InvalidArgumentError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in TORCH_DTYPES:
        raise InvalidArgumentError(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ShapeMismatchError(f"{name} must have shape (*, D) with D > 0, got {tuple(x.shape)}")


def _check_like(t, name, x, shape_ok, expected):
    if not isinstance(t, torch.Tensor):
        raise InvalidArgumentError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != x.dtype:
        raise InvalidArgumentError(f"{name} has dtype {t.dtype} but x has {x.dtype}; cast one of them")
    if t.device != x.device:
        raise InvalidArgumentError(f"{name} is on {t.device} but x is on {x.device}")
    if not shape_ok:
        raise ShapeMismatchError(f"{name} must have shape {expected}, got {tuple(t.shape)}")


def _fixed_c(c, x):
    c_t, c_val = check_curvature(c, x)
    if c_t is not None:
        if c_t.requires_grad and torch.is_grad_enabled():
            raise UnsupportedOperationError(
                "the HNN++ maps take a fixed curvature: pass c as a float or a tensor that does not require grad"
            )
        c_val = float(c_t.detach())
    return c_val


# ------------------------------------------------------------ the maths, in torch
def _sqnorm64(a):
    return a.double().square().sum(-1, keepdim=True)


def _clamp_sq(sq):
    return sq.clamp_min(1e-200)


def matvec_phi(vv, xx, c):
    r""":math:`\phi(\|v\|^2, \|x\|^2, c)` with out = phi v (fp64, clamped as the kernel)."""
    sc = torch.sqrt(c)
    r = torch.sqrt(_clamp_sq(vv))
    n = torch.sqrt(_clamp_sq(xx))
    art = torch.atanh((sc * n).clamp(-(1 - 1e-15), 1 - 1e-15))
    return torch.tanh((r / n * art).clamp(-15, 15)) / (sc * r)


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
    return 2 / (1 - c * xx).clamp_min(1e-15)


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
    clamped = (1 - c_val * xx) < 1e-15
    gamma = torch.where(clamped, torch.zeros_like(xx), (gv * d_lam).sum(-1, keepdim=True) * c_val * lam * lam)
    p = compute_dtype(x.dtype)
    return buf.to(p), gamma.squeeze(-1).to(p)


# ------------------------------------------------------------------ GPU launches
def _stream(dev):
    return torch._C._cuda_getCurrentRawStream(dev)


def _ptr(t):
    return numpy.uint64(t.data_ptr() if t is not None else 0)


def _poison(*ts):
    if config.poison_outputs:
        for t in ts:
            t.fill_(float("nan"))


def _matvec_fwd(x, v, c_val, c):
    if not x.is_cuda:
        return _matvec_fwd_torch(x, v, c_val, c)
    out = torch.empty_like(v)
    _poison(out)
    rows, din = x.shape
    cv = c_val if c is None else float(c)
    _launch(
        "matvec_fwd",
        TORCH_DTYPES[x.dtype],
        rows,
        (_ptr(x), _ptr(v), _ptr(out)),
        cv,
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
    _poison(gv, gamma, *([gc] if gc is not None else []))
    cv = c_val if c is None else float(c)
    args = (_ptr(x), _ptr(v), _ptr(g.contiguous()), _ptr(gv), _ptr(gamma), _ptr(gc))
    _launch("matvec_bwd", TORCH_DTYPES[x.dtype], rows, args, cv, x.device.index, din, v.shape[1])
    return gv, gamma, gc


def _launch(kind, dtype, rows, args, c_val, dev, din, dout):
    """One warp a row; every kernel of hyperbolic_linear.cu ends with (rows, din, dout, c)."""
    if rows == 0:
        return
    fn = get_function("hyperbolic_linear.cu", kernel_name(kind, dtype), dev, KERNELS.defines(dtype))
    launch_kernel(
        fn,
        -(-rows * 32 // BLOCK),
        BLOCK,
        tuple(args) + (numpy.int64(rows), numpy.int64(din), numpy.int64(dout), numpy.float64(c_val)),
        _stream(dev),
        dev,
        op=f"hyperbolic_linear.{kind}",
        shape=(rows, din, dout),
        dtype=dtype,
    )


def _hnn_fwd(x, pz, zn, r, c_val, mode):
    if not x.is_cuda:
        return _hnn_fwd_torch(x, pz, zn, r, c_val, mode)
    out = torch.empty_like(pz)
    _poison(out)
    rows, din = x.shape
    args = (_ptr(x), _ptr(pz), _ptr(out), _ptr(zn), _ptr(r))
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
    _poison(buf, gamma)
    args = (_ptr(x), _ptr(pz), _ptr(g.contiguous()), _ptr(zn), _ptr(r), _ptr(buf), _ptr(gamma))
    _launch(f"hnn_bwd_{mode}", TORCH_DTYPES[x.dtype], rows, args, c_val, x.device.index, din, dout)
    return buf, gamma


def _gemm(a, b):
    """a @ b in the compute dtype of a's storage (fp32 for fp16/bf16)."""
    e = compute_dtype(a.dtype) if a.dtype in (torch.float16, torch.bfloat16) else a.dtype
    return torch.matmul(a.to(e), b.to(e))


# ------------------------------------------------------------ torch.library
_LIB = None


def _register():
    global _LIB
    if _LIB is not None:
        return
    lib = torch.library.Library("xpu_stone", "FRAGMENT")
    lib.define("linear_mobius_matvec(Tensor x, Tensor weight, Tensor? c, float c_val) -> (Tensor, Tensor)")
    lib.define(
        "linear_mobius_matvec_backward(Tensor grad, Tensor x, Tensor weight, Tensor v, Tensor? c, float c_val, "
        "bool[] needs) -> Tensor[]"
    )
    lib.define("linear_hnn(Tensor x, Tensor z, Tensor r, float c_val, int mode) -> (Tensor, Tensor)")
    lib.define(
        "linear_hnn_backward(Tensor grad, Tensor x, Tensor z, Tensor r, Tensor pz, float c_val, int mode, "
        "bool[] needs) -> Tensor[]"
    )

    def matvec(x, weight, c, c_val):
        v = torch.matmul(x, weight.t())
        return _matvec_fwd(x, v, c_val, c), v

    def matvec_backward(grad, x, weight, v, c, c_val, needs):
        gv, gamma, gc = _matvec_bwd(x, v, grad, c_val, c, needs[2] and c is not None)
        empty = x.new_empty(0)
        gx = (
            torch.addcmul(_gemm(gv, weight), gamma[:, None], x.to(gamma.dtype)).to(x.dtype)
            if needs[0]
            else empty
        )
        gw = _gemm(gv.t(), x).to(weight.dtype) if needs[1] else empty
        gcs = gc.sum().to(c.dtype) if (needs[2] and c is not None) else empty
        return [gx, gw, gcs]

    def hnn(x, z, r, c_val, mode):
        zn = _col_norms(z)
        pz = torch.matmul(x, z)
        return _hnn_fwd(x, pz, zn, r.double(), c_val, mode), pz

    def hnn_backward(grad, x, z, r, pz, c_val, mode, needs):
        zn = _col_norms(z)
        buf, gamma = _hnn_bwd(x, pz, grad, zn, r.double(), c_val, mode)
        dout = z.shape[1]
        gpz = buf[:, :dout]
        empty = x.new_empty(0)
        gx = (
            torch.addcmul(_gemm(gpz, z.t()), gamma[:, None], x.to(gamma.dtype)).to(x.dtype)
            if needs[0]
            else empty
        )
        gz = gr = empty
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
        return [gx, gz, gr]

    for name, impl in (
        ("linear_mobius_matvec", matvec),
        ("linear_mobius_matvec_backward", matvec_backward),
        ("linear_hnn", hnn),
        ("linear_hnn_backward", hnn_backward),
    ):
        lib.impl(name, impl, "CompositeExplicitAutograd")

    @torch.library.register_fake("xpu_stone::linear_mobius_matvec", lib=lib)
    def _(x, weight, c, c_val):
        return x.new_empty((x.shape[0], weight.shape[0])), x.new_empty((x.shape[0], weight.shape[0]))

    @torch.library.register_fake("xpu_stone::linear_mobius_matvec_backward", lib=lib)
    def _(grad, x, weight, v, c, c_val, needs):
        return [
            torch.empty_like(x) if needs[0] else x.new_empty(0),
            torch.empty_like(weight) if needs[1] else x.new_empty(0),
            c.new_empty(()) if (needs[2] and c is not None) else x.new_empty(0),
        ]

    @torch.library.register_fake("xpu_stone::linear_hnn", lib=lib)
    def _(x, z, r, c_val, mode):
        return x.new_empty((x.shape[0], z.shape[1])), x.new_empty((x.shape[0], z.shape[1]))

    @torch.library.register_fake("xpu_stone::linear_hnn_backward", lib=lib)
    def _(grad, x, z, r, pz, c_val, mode, needs):
        return [
            torch.empty_like(x) if needs[0] else x.new_empty(0),
            torch.empty_like(z) if needs[1] else x.new_empty(0),
            torch.empty_like(r) if needs[2] else x.new_empty(0),
        ]

    def mv_setup(ctx, inputs, output):
        x, weight, c, c_val = inputs
        ctx.save_for_backward(x, weight, output[1], c)
        ctx.c_val = c_val

    def mv_backward(ctx, grad, _grad_v):
        x, weight, v, c = ctx.saved_tensors
        ng = ctx.needs_input_grad
        needs = [bool(ng[0]), bool(ng[1]), bool(ng[2]) and c is not None]
        gx, gw, gc = torch.ops.xpu_stone.linear_mobius_matvec_backward(
            grad, x, weight, v, c, ctx.c_val, needs
        )
        return (gx if needs[0] else None, gw if needs[1] else None, gc if needs[2] else None, None)

    def hnn_setup(ctx, inputs, output):
        x, z, r, c_val, mode = inputs
        ctx.save_for_backward(x, z, r, output[1])
        ctx.consts = (c_val, mode)

    def hnn_bwd(ctx, grad, _grad_pz):
        x, z, r, pz = ctx.saved_tensors
        ng = ctx.needs_input_grad
        needs = [bool(ng[0]), bool(ng[1]), bool(ng[2])]
        gx, gz, gr = torch.ops.xpu_stone.linear_hnn_backward(grad, x, z, r, pz, *ctx.consts, needs)
        return (gx if needs[0] else None, gz if needs[1] else None, gr if needs[2] else None, None, None)

    torch.library.register_autograd(
        "xpu_stone::linear_mobius_matvec", mv_backward, setup_context=mv_setup, lib=lib
    )
    torch.library.register_autograd("xpu_stone::linear_hnn", hnn_bwd, setup_context=hnn_setup, lib=lib)
    _LIB = lib


def _col_norms(z):
    return torch.linalg.vector_norm(z.double(), dim=0).clamp_min(MIN_COL_NORM)


# ------------------------------------------------------------------ public API
def _flatten(x):
    return x.reshape(-1, x.shape[-1]).contiguous()


def mobius_matvec(M, x, c=1.0):
    r"""Möbius matrix-vector product :math:`M \otimes_c x` (see the module docstring):
    ``M`` is ``(D_out, D_in)`` (the layout of ``nn.Linear.weight``), ``x`` is
    ``(*, D_in)`` inside the ball; returns ``(*, D_out)``. Rows with ``Mx = 0``
    map to 0."""
    require_torch("xpu_stone.linear.mobius_matvec")
    _check_input(x)
    _check_like(M, "M", x, M.dim() == 2 and M.shape[1] == x.shape[-1], f"(D_out, {x.shape[-1]})")
    c_t, c_val = check_curvature(c, x)
    if c_t is not None and c_t.device != x.device:
        c_t = c_t.to(x.device)
    _register()
    out, _ = torch.ops.xpu_stone.linear_mobius_matvec(_flatten(x), M.contiguous(), c_t, c_val)
    return out.reshape(*x.shape[:-1], M.shape[0])


def _hnn(x, z, r, c, mode):
    require_torch("xpu_stone.linear HNN++ maps")
    _check_input(x)
    _check_like(z, "z", x, z.dim() == 2 and z.shape[0] == x.shape[-1], f"({x.shape[-1]}, D_out)")
    _check_like(r, "r", x, r.dim() == 1 and r.shape[0] == z.shape[1], f"({z.shape[1]},)")
    c_val = _fixed_c(c, x)
    _register()
    out, _ = torch.ops.xpu_stone.linear_hnn(_flatten(x), z.contiguous(), r.contiguous(), c_val, mode)
    return out.reshape(*x.shape[:-1], z.shape[1])


def poincare_mlr(x, z, r, c=1.0):
    r"""Poincaré multinomial-logistic-regression logits :math:`v_k(x)` of HNN++
    (see the module docstring): ``x`` ``(*, D_in)`` in the ball, ``z`` ``(D_in, K)``,
    ``r`` ``(K,)``; returns ``(*, K)``."""
    return _hnn(x, z, r, c, MLR)


def poincare_fc(x, z, r, c=1.0):
    r"""The Poincaré fully-connected layer of HNN++:
    :math:`y = w/(1+\sqrt{1+c\|w\|^2})`, :math:`w_k = \sinh(\sqrt c\,v_k(x))/\sqrt c`
    (see the module docstring): ``z`` ``(D_in, D_out)``, ``r`` ``(D_out,)``."""
    return _hnn(x, z, r, c, FC)
