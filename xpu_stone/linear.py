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

The GEMM runs in torch (cuBLAS); the epilogue kernels (``cuda_src/hyperbolic_linear.cu``,
launched by :mod:`xpu_stone.ops.hyperbolic_linear`)
compute the row norms, the per-row formula and the output in one pass, forward and
backward (the backward kernel writes the GEMM operands and the per-row / per-column
terms; two GEMMs finish it). Inputs are ``(*, D_in)``; fp32, fp64, fp16 and bf16,
with the per-row and per-element maths in fp64. ``c`` is a positive float or a
one-element tensor; :func:`mobius_matvec` also differentiates a tensor ``c``,
the HNN++ maps take a fixed ``c``. The checked mode (``config.check_finite``)
covers these maps; without it, unlike the row-wise ops, an ``x`` outside the
ball is clamped to its boundary, not turned into NaN.
"""

from __future__ import annotations

from ._deps import require_torch, torch
from .engine import check_curvature
from .engine.checks import BALL, check_values
from .engine.custom_op import eager
from .engine.launch import TORCH_DTYPES
from .engine.scalars import read_curvature
from .errors import InvalidArgumentError, ShapeMismatchError, UnsupportedOperationError
from .ops.hyperbolic_linear import FC, MLR, hnn_op, matvec_op

__all__ = ["mobius_matvec", "poincare_fc", "poincare_mlr"]


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


def _fixed_c(c, x) -> float:
    c_t, c_val = check_curvature(c, x)
    if c_t is not None:
        if c_t.requires_grad and torch.is_grad_enabled():
            raise UnsupportedOperationError(
                "the HNN++ maps take a fixed curvature: pass c as a float or a tensor that does not require grad"
            )
        c_val = read_curvature(c_t)
    return c_val


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
    check_values("linear.mobius_matvec", [("x", x, BALL), ("M", M, None)], c_val if c_t is None else c_t)
    out, _ = eager("linear_mobius_matvec", matvec_op, x)(_flatten(x), M.contiguous(), c_t, c_val)
    return out.reshape(*x.shape[:-1], M.shape[0])


def _hnn(x, z, r, c, mode):
    require_torch("xpu_stone.linear HNN++ maps")
    _check_input(x)
    _check_like(z, "z", x, z.dim() == 2 and z.shape[0] == x.shape[-1], f"({x.shape[-1]}, D_out)")
    _check_like(r, "r", x, r.dim() == 1 and r.shape[0] == z.shape[1], f"({z.shape[1]},)")
    c_val = _fixed_c(c, x)
    check_values(f"linear.{'poincare_fc' if mode == FC else 'poincare_mlr'}",
                 [("x", x, BALL), ("z", z, None), ("r", r[None], None)], c_val)  # fmt: skip
    out, _ = eager("linear_hnn", hnn_op, x)(_flatten(x), z.contiguous(), r.contiguous(), c_val, mode)
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
