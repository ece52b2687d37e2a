r"""The baselines RBE is measured against, as ``nn.Module`` layers that store only their codes.

* :class:`SVDLinear`: truncated SVD :math:`W \approx P Q`, :math:`P = U_r S_r^{1/2}`
  ``(out, r)``, :math:`Q = S_r^{1/2} V_r^T` ``(r, in)``; factors in float16
  (``16 r (out + in)`` bits) or int8 with a float16 scale per row of ``P`` and of ``Q``
  (symmetric, :math:`s = \max|x| / 127`; ``8 r (out + in) + 16 (out + r)`` bits).
* :class:`GroupQuantLinear`: 4-bit group quantisation, groups of 128 consecutive input
  columns of one output row, symmetric codes ``q ∈ [-8, 7]`` with :math:`w = s q` and a
  float16 scale per group (``4 out in`` bits, rounded up to whole bytes a row, plus
  ``16 out ceil(in/128)``). The scale is :math:`\alpha \max|w| / 7` with the clipping
  ratio :math:`\alpha \in \{1, 0.95, \dots, 0.5\}` of least squared error per group. The
  forward dequantises in torch and multiplies (the CPU path; torch's int4 kernels need
  CUDA and their own packing).

They are post-training codecs: codes, scales and the bias (float16) are buffers, so a
``state_dict`` holds exactly the bits counted. Each reports its bits like
:class:`~xpu_stone.rbe.layer.RBELinear` (:meth:`stored_bits`, a
:class:`~xpu_stone.rbe.generator.BitCount`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InvalidArgumentError
from .generator import GROUP, BitCount

__all__ = ["GroupQuantLinear", "SVDLinear", "svd_bits"]

CLIP_RATIOS = tuple(1.0 - 0.05 * k for k in range(11))


def _half(t):
    return t.detach().to(torch.float16)


def _int8_rows(x):
    """Symmetric int8 codes of the rows of ``x`` and their float16 scales."""
    s = (x.abs().amax(1) / 127).to(torch.float16).to(x.dtype)
    safe = torch.where(s > 0, s, torch.ones_like(s))
    return torch.round(x / safe[:, None]).clamp(-127, 127).to(torch.int8), s.to(torch.float16)


def svd_bits(out: int, inp: int, rank: int, factors: str, bias: bool) -> BitCount:
    """Bits of an :class:`SVDLinear` (its factors counted as ``codes``, int8 scales as ``scales``)."""
    if factors == "float16":
        codes, scales = 16 * rank * (out + inp), 0
    else:
        codes, scales = 8 * rank * (out + inp), 16 * (out + rank)
    return BitCount(codes=codes, residual=0, scales=scales, bias=16 * out if bias else 0, weights=out * inp)


class SVDLinear(nn.Module):
    """A linear layer as two factors of a truncated SVD (module docstring).
    ``factors``: ``"float16"`` or ``"int8"``."""

    def __init__(self, weight, bias, rank: int, factors: str = "float16"):
        super().__init__()
        if factors not in ("float16", "int8"):
            raise InvalidArgumentError(f"factors must be 'float16' or 'int8', got {factors!r}")
        out, inp = weight.shape
        if not 1 <= rank <= min(out, inp):
            raise InvalidArgumentError(f"rank must be in [1, {min(out, inp)}], got {rank}")
        u, s, vh = torch.linalg.svd(weight.detach().to(torch.float64), full_matrices=False)
        root = s[:rank].sqrt()
        p, q = u[:, :rank] * root, root[:, None] * vh[:rank]
        self.out_features, self.in_features, self.rank, self.factors = out, inp, rank, factors
        if factors == "float16":
            self.register_buffer("p", _half(p))
            self.register_buffer("q", _half(q))
            self.p_scale = self.q_scale = None
        else:
            pc, ps = _int8_rows(p)
            qc, qs = _int8_rows(q)
            self.register_buffer("p", pc)
            self.register_buffer("q", qc)
            self.register_buffer("p_scale", ps)
            self.register_buffer("q_scale", qs)
        self.register_buffer("bias", _half(bias) if bias is not None else None)

    def _factors(self, dtype):
        p, q = self.p.to(dtype), self.q.to(dtype)
        if self.factors == "int8":
            p, q = p * self.p_scale.to(dtype)[:, None], q * self.q_scale.to(dtype)[:, None]
        return p, q

    def forward(self, x):
        p, q = self._factors(torch.float32 if x.dtype != torch.float64 else x.dtype)
        y = (x.to(p.dtype) @ q.T) @ p.T
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(x.dtype)

    def materialize(self, dtype=torch.float32):
        """The dense ``(out, in)`` weight ``P Q``."""
        p, q = self._factors(dtype)
        return p @ q

    def stored_bits(self) -> BitCount:
        return svd_bits(self.out_features, self.in_features, self.rank, self.factors, self.bias is not None)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, factors={self.factors}"


def group_quantise(weight, bits: int = 4):
    """``(codes int8 (out, in), scales float16 (out, G))`` of symmetric ``bits``-bit group
    quantisation (module docstring)."""
    out, inp = weight.shape
    groups = -(-inp // GROUP)
    qmax = 2 ** (bits - 1) - 1
    w = torch.nn.functional.pad(weight.detach().to(torch.float64), (0, groups * GROUP - inp))
    w = w.reshape(out, groups, GROUP)
    absmax = w.abs().amax(-1)
    best_err = torch.full_like(absmax, float("inf"))
    best_scale = torch.zeros_like(absmax)
    for ratio in CLIP_RATIOS:
        s = (ratio * absmax / qmax).to(torch.float16).to(torch.float64)
        safe = torch.where(s > 0, s, torch.ones_like(s))[..., None]
        q = torch.round(w / safe).clamp(-qmax - 1, qmax)
        err = ((q * s[..., None] - w) ** 2).sum(-1)
        better = err < best_err
        best_err, best_scale = torch.where(better, err, best_err), torch.where(better, s, best_scale)
    safe = torch.where(best_scale > 0, best_scale, torch.ones_like(best_scale))[..., None]
    codes = torch.round(w / safe).clamp(-qmax - 1, qmax).reshape(out, -1)[:, :inp]
    return codes.to(torch.int8), best_scale.to(torch.float16)


class GroupQuantLinear(nn.Module):
    """4-bit group quantisation of a linear layer (module docstring). The codes are
    kept as two nibbles a byte (``uint8 (out, ceil(in/2))``, the even column in the
    low nibble, two's complement)."""

    bits = 4

    def __init__(self, weight, bias):
        super().__init__()
        out, inp = weight.shape
        codes, scales = group_quantise(weight, self.bits)
        nib = torch.nn.functional.pad(codes.to(torch.int16) & 0xF, (0, inp % 2))
        self.register_buffer("packed", (nib[:, 0::2] | (nib[:, 1::2] << 4)).to(torch.uint8))
        self.register_buffer("scales", scales)
        self.out_features, self.in_features = out, inp
        self.register_buffer("bias", _half(bias) if bias is not None else None)

    def codes(self):
        """The signed codes ``(out, in)`` (int8)."""
        p = self.packed.to(torch.int16)
        nib = torch.stack([p & 0xF, p >> 4], -1).reshape(self.out_features, -1)[:, : self.in_features]
        return (nib - ((nib >> 3) & 1) * 16).to(torch.int8)

    def materialize(self, dtype=torch.float32):
        s = self.scales.to(dtype).repeat_interleave(GROUP, 1)[:, : self.in_features]
        return self.codes().to(dtype) * s

    def forward(self, x):
        w = self.materialize(torch.float64 if x.dtype == torch.float64 else torch.float32)
        y = x.to(w.dtype) @ w.T
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(x.dtype)

    def stored_bits(self) -> BitCount:
        out, inp = self.out_features, self.in_features
        return BitCount(codes=8 * out * -(-inp // 2), residual=0, scales=16 * out * -(-inp // GROUP),
                        bias=16 * out if self.bias is not None else 0, weights=out * inp)  # fmt: skip

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits=4, group={GROUP}"
