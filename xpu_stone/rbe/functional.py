r"""The RBE linear map as a torch custom op, ``xpu_stone::rbe_linear``:

.. math::

    y = x W^T + b,\qquad W = \text{generate}(\text{shadow}, \text{state}) + \sigma\,\ell_b[c]

(:mod:`xpu_stone.rbe.generator`). Its backward is the closed form of RBE.md:
``dL/dx = δ W``; per tile ``G = δᵀ x`` reduced against the atom derivatives
(:func:`~xpu_stone.rbe.generator.tile_grads`) for ``dL/d(u, θ, φ, ln A)``;
``dL/dσ = Σ_group G ℓ_b[c]``; ``dL/db = Σ δ``. The discrete inputs (state words,
residual bit planes) get no gradient.

CPU implementation (the oracle, what CI runs): the dense ``W`` is generated in the
compute dtype (float64 when ``x`` or the shadows are float64, float32 otherwise) and
multiplied by torch. CUDA: the fused kernels of ``cuda_src/rbe.cu``
(:mod:`xpu_stone.ops.rbe`), which never write ``W`` to memory, for float32 shadows
(every activation dtype; float64 activations computed in float64); float64 shadows
(gradcheck) run the torch maths on the device.

This op sits in the public ``rbe`` package rather than in ``ops/``: its CPU path is
the generator of :mod:`xpu_stone.rbe.generator`, which the ops layer may not import.
"""

from __future__ import annotations

import torch

from ..engine.custom_op import Impls, define_differentiable, eager, empty_if_none, none_unless
from ..errors import InvalidArgumentError, ShapeMismatchError
from ..ops import rbe as _ops
from .format import DELTA_OMEGA
from .generator import (
    GROUP,
    HYP_ARG_MAX,
    generate,
    lloyd_max_levels,
    matrix_to_tiles,
    polar_table,
    residual_levels,
    tile_grads,
)

__all__ = ["check_operands", "compute_dtype", "rbe_linear"]

FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def compute_dtype(x, shadow):
    """float64 when ``x`` or ``shadow`` is float64, float32 otherwise."""
    return torch.float64 if torch.float64 in (x.dtype, shadow.dtype) else torch.float32


def _weight(shadow, state, residual, scales, out, inp, tile, bits, e):
    return generate(shadow.to(e), state, out, inp, tile, residual, scales.to(e) if bits else None, bits)


def forward_cpu(x, shadow, state, residual, scales, bias, out_features, tile, residual_bits):
    e = compute_dtype(x, shadow)
    w = _weight(shadow, state, residual, scales, out_features, x.shape[1], tile, residual_bits, e)
    y = x.to(e) @ w.T
    if bias is not None:
        y = y + bias.to(e)
    return y.to(x.dtype)


def backward_cpu(grad, x, shadow, state, residual, scales, bias, out_features, tile, residual_bits, needs):
    """``(dL/dx, dL/dshadow, dL/dscales, dL/dbias)`` (None where not needed)."""
    e = compute_dtype(x, shadow)
    inp = x.shape[1]
    g, xe = grad.to(e), x.to(e)
    gx = gs = gsc = gb = None
    if needs[0]:
        w = _weight(shadow, state, residual, scales, out_features, inp, tile, residual_bits, e)
        gx = (g @ w).to(x.dtype)
    if needs[1] or needs[2]:
        big_g = g.T @ xe  # the CPU oracle forms G for the whole matrix; the kernels never do
        if needs[1]:
            gs = tile_grads(matrix_to_tiles(big_g, tile), shadow.to(e), state, tile).to(shadow.dtype)
        if needs[2]:
            lv = residual_levels(residual, residual_bits, inp, e)
            groups = scales.shape[1]
            gsc = torch.nn.functional.pad(big_g * lv, (0, groups * GROUP - inp))
            gsc = gsc.reshape(out_features, groups, GROUP).sum(-1).to(scales.dtype)
    if needs[3]:
        gb = g.sum(0).to(bias.dtype)
    return gx, gs, gsc, gb


# Lloyd–Max levels (by (device, bits)) and the polar tables (rho, psi) of a tile (by (device,
# tile)) as float64 tensors (the fp64 kernels need every digit): made once, outside any graph capture
_LEVELS: dict[tuple[str, int], torch.Tensor] = {}
_POLAR: dict[tuple[str, int], torch.Tensor] = {}


def _kernel_layer(shadow, state, residual, scales, out_features, inp, tile, residual_bits):
    """What the kernels of :mod:`xpu_stone.ops.rbe` take to generate the weight."""
    dev = str(shadow.device)
    key = (dev, residual_bits)
    if residual_bits and key not in _LEVELS:
        _LEVELS[key] = lloyd_max_levels(residual_bits, torch.float64, shadow.device)
    if (dev, tile) not in _POLAR:
        _POLAR[dev, tile] = torch.stack(polar_table(tile, torch.float64, shadow.device)).contiguous()
    scales = scales.to(torch.float32).contiguous() if residual_bits else None
    return (shadow.contiguous(), state.contiguous(), residual.contiguous(), scales, _LEVELS.get(key),
            _POLAR[dev, tile], out_features, inp, tile, residual_bits, DELTA_OMEGA, HYP_ARG_MAX)  # fmt: skip


def forward_cuda(x, shadow, state, residual, scales, bias, out_features, tile, residual_bits):
    """The fused kernels; float64 shadows (gradcheck) take the torch maths on the device."""
    if shadow.dtype != torch.float32:
        return forward_cpu(x, shadow, state, residual, scales, bias, out_features, tile, residual_bits)
    layer = _kernel_layer(shadow, state, residual, scales, out_features, x.shape[1], tile, residual_bits)
    return _ops.forward_cuda(x, bias, layer)


def backward_cuda(grad, x, shadow, state, residual, scales, bias, out_features, tile, residual_bits, needs):
    if shadow.dtype != torch.float32:
        return backward_cpu(
            grad, x, shadow, state, residual, scales, bias, out_features, tile, residual_bits, needs
        )
    layer = _kernel_layer(shadow, state, residual, scales, out_features, x.shape[1], tile, residual_bits)
    gx, gs, gsc = _ops.backward_cuda(grad, x, layer, needs[:3])
    gsc = gsc.to(scales.dtype) if needs[2] else None
    gb = grad.sum(0, dtype=compute_dtype(x, shadow)).to(bias.dtype) if needs[3] else None
    return gx, gs, gsc, gb


def _fake_fwd(x, shadow, state, residual, scales, bias, out_features, tile, residual_bits):
    return x.new_empty((x.shape[0], out_features))


def _bwd(impl):
    def run(grad, x, shadow, state, residual, scales, bias, out_features, tile, residual_bits, needs):
        grads = impl(grad, x, shadow, state, residual, scales, bias, out_features, tile, residual_bits, needs)
        return empty_if_none(list(grads), x)

    return run


def _fake_bwd(grad, x, shadow, state, residual, scales, bias, out_features, tile, residual_bits, needs):
    likes = (x, shadow, scales, bias)
    return empty_if_none([torch.empty_like(t) if n else None for t, n in zip(likes, needs)], x)


def _save(ctx, inputs, output):
    x, shadow, state, residual, scales, bias, out_features, tile, residual_bits = inputs
    ctx.save_for_backward(x, shadow, state, residual, scales, bias)
    ctx.consts = (out_features, tile, residual_bits)


def _backward(backward_op, ctx, grad):
    x, shadow, state, residual, scales, bias = ctx.saved_tensors
    ng = ctx.needs_input_grad
    bits = ctx.consts[2]
    needs = [bool(ng[0]), bool(ng[1]), bool(ng[4]) and bits > 0, bool(ng[5]) and bias is not None]
    grads = backward_op(grad.contiguous(), x, shadow, state, residual, scales, bias, *ctx.consts, needs)
    gx, gs, gsc, gb = none_unless(grads, needs)
    return gx, gs, None, None, gsc, gb, None, None, None


_op = None
if torch is not None:
    _op = define_differentiable(
        "rbe_linear",
        "(Tensor x, Tensor shadow, Tensor state, Tensor residual, Tensor scales, Tensor? bias, "
        "int out_features, int tile, int residual_bits) -> Tensor",
        Impls(_fake_fwd, cuda=forward_cuda, cpu=forward_cpu),
        "(Tensor grad, Tensor x, Tensor shadow, Tensor state, Tensor residual, Tensor scales, Tensor? bias, "
        "int out_features, int tile, int residual_bits, bool[] needs) -> Tensor[]",
        Impls(_fake_bwd, cuda=_bwd(backward_cuda), cpu=_bwd(backward_cpu)),
        _save,
        _backward,
    )


def check_operands(
    x, shadow, state, residual, scales, bias, out_features: int, tile: int, residual_bits: int
):
    """Raises a typed error unless the operands fit one RBE layer of shape
    ``(out_features, x.shape[-1])`` (nothing has run yet)."""
    if tile not in (32, 64):
        raise InvalidArgumentError(f"tile must be 32 or 64, got {tile!r}")
    if residual_bits not in range(5):
        raise InvalidArgumentError(f"residual_bits must be 0..4, got {residual_bits!r}")
    if not isinstance(x, torch.Tensor) or x.dtype not in FLOATS:
        raise InvalidArgumentError(f"x must be a floating tensor, got {getattr(x, 'dtype', type(x))}")
    if shadow.dtype not in (torch.float32, torch.float64) or state.dtype != torch.int32:
        raise InvalidArgumentError(
            f"shadow must be float32 or float64 and state int32, got {shadow.dtype}, {state.dtype}"
        )
    if shadow.dim() != 3 or not 1 <= shadow.shape[1] <= 8:
        raise InvalidArgumentError(
            f"shadow must have shape (tiles, atoms, 4) with 1..8 atoms a tile, got {tuple(shadow.shape)}"
        )
    inp, atoms = x.shape[-1], shadow.shape[1]
    tiles = -(-out_features // tile) * -(-inp // tile)
    groups = -(-inp // GROUP)
    want = {
        "shadow": (tiles, atoms, 4),
        "state": (tiles, atoms),
        "residual": (out_features, groups, residual_bits, 4),
    }
    got = {"shadow": tuple(shadow.shape), "state": tuple(state.shape), "residual": tuple(residual.shape)}
    if residual_bits:
        want["scales"], got["scales"] = (out_features, groups), tuple(scales.shape)
    if bias is not None:
        want["bias"], got["bias"] = (out_features,), tuple(bias.shape)
    bad = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    if bad:
        raise ShapeMismatchError(
            f"operands of an RBE layer ({out_features}, {inp}), tile {tile}: "
            + ", ".join(f"{k} has shape {g}, expected {w}" for k, (g, w) in bad.items())
        )
    devices = {t.device for t in (x, shadow, state, residual, scales, bias) if t is not None}
    if len(devices) > 1:
        raise InvalidArgumentError(f"operands on several devices: {sorted(map(str, devices))}")


def rbe_linear(x, shadow, state, residual, scales, bias, out_features: int, tile: int, residual_bits: int):
    """``y = x Wᵀ + b`` for ``x`` of shape ``(..., in)`` (see the module docstring);
    ``scales`` is ignored (any tensor) when ``residual_bits`` is 0."""
    check_operands(x, shadow, state, residual, scales, bias, out_features, tile, residual_bits)
    lead = x.shape[:-1]
    y = eager("rbe_linear", _op, x)(x.reshape(-1, x.shape[-1]).contiguous(), shadow, state, residual, scales, bias,
                                 out_features, tile, residual_bits)  # fmt: skip
    return y.reshape(*lead, out_features)
