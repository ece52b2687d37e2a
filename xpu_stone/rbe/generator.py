r"""The RBE generator, its closed-form gradients, the residual, and the bit count (torch).

A weight matrix of shape ``(out, in)`` is cut into ``B x B`` tiles (B = 32 or 64),
``ceil(out/B)`` rows of ``ceil(in/B)`` tiles, numbered row-major; the last row and
column of tiles are partial: their elements outside the matrix are generated and
dropped. Inside a tile, row ``i`` and column ``j`` (0-based, cell-centred):

.. math::

    u_j = \frac{2j+1}{B} - 1,\quad v_i = \frac{2i+1}{B} - 1,\quad
    \rho_{ij} = \min(\sqrt{u_j^2 + v_i^2}, 1),\quad \psi_{ij} = \operatorname{atan2}(v_i, u_j)

    \mathrm{arg}_{ijk} = \omega_k \rho_{ij} d(r_k) + m_{\psi,k} (\psi_{ij} + \theta_k) + \varphi_k,
    \qquad d(r) = 2 \operatorname{artanh} r = 2u

    W_{ij} = \sum_k s_k A_k g_k(\mathrm{arg}_{ijk}) + R_{ij}

with ``g`` = sin (track 0), sinh / cosh (track 1, by ``s_h``), tanh (track 2). The
hyperbolic track's argument is clamped to ``[-HYP_ARG_MAX, HYP_ARG_MAX]`` (RBE.md leaves
it open; ``cosh(20) = 2.4e8`` keeps every weight finite in float32), with derivative 0
outside. Atoms are given as shadows ``(u, θ, φ, ln A)`` and state words
(:mod:`xpu_stone.rbe.format`).

Gradients per atom from ``G = dL/dW`` of its tile (RBE.md), with
:math:`c_{ijk} = s_k A_k g'_k(\mathrm{arg}_{ijk})`:

.. math::

    \partial L/\partial\varphi_k = \sum_{ij} G_{ij} c_{ijk},\quad
    \partial L/\partial\theta_k = m_{\psi,k}\,\partial L/\partial\varphi_k,\quad
    \partial L/\partial u_k = \sum_{ij} G_{ij} c_{ijk}\, 2\omega_k\rho_{ij},\quad
    \partial L/\partial \ln A_k = \sum_{ij} G_{ij} s_k A_k g_k(\mathrm{arg}_{ijk})

Residual (``b`` bits, 0..4): per output row and group of ``GROUP = 128`` consecutive
input columns, a scale ``σ`` (stored as float16) and codes ``c`` with
:math:`R_{ij} = \sigma\,\ell_b[c_{ij}]`, :math:`\ell_b` the ``2^b`` levels of the
Lloyd–Max quantiser of the standard normal (:data:`LLOYD_MAX`). Codes are stored as
``b`` bit planes per group: plane ``p`` is 128 bits (four little-endian 32-bit words,
column ``c`` of the group at bit ``c % 32`` of word ``c // 32``) holding bit ``p`` of
every code. :math:`\partial L/\partial\sigma = \sum_{j \in \text{group}} G_{ij}\ell_b[c_{ij}]`.

Stored bits (:func:`stored_bits`): ``128`` per atom (every tile, partial ones
included), ``128 b`` per row and group (bit planes, the last group padded), ``16``
per row and group for the scales when ``b > 0``, ``16`` per output for the bias.
Dividing by ``out * in``: :math:`128 J/B^2 + b + 16/128` (+ bias) for shapes that are
multiples of B and 128, more otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InvalidArgumentError
from .format import DELTA_OMEGA, unpack_state

__all__ = [
    "GROUP",
    "HYP_ARG_MAX",
    "LLOYD_MAX",
    "PHI",
    "LN_A",
    "atom_contributions",
    "THETA",
    "U",
    "BitCount",
    "basis",
    "dequantise_residual",
    "generate",
    "generate_tiles",
    "kinds",
    "lloyd_max_levels",
    "matrix_to_tiles",
    "pack_planes",
    "polar_table",
    "quantise_residual",
    "residual_levels",
    "stored_bits",
    "tile_chunks",
    "tile_grads",
    "tiles_to_matrix",
    "unpack_planes",
]

HYP_ARG_MAX = 20.0
GROUP = 128
U, THETA, PHI, LN_A = range(4)  # the columns of a shadow row
# Positive half of the Lloyd–Max levels of N(0, 1) for 1..4 bits (the levels are
# symmetric). Computed once by Lloyd's iteration in 40-digit mpmath arithmetic to a
# change below 1e-30; tests/test_rbe.py recomputes them.
LLOYD_MAX = {
    1: (0.7978845608028654,),
    2: (0.452780034636492, 1.5104176084990955),
    3: (0.24509417894422167, 0.7560052812058773, 1.343909278505, 2.1519457045369874),
    4: (0.128395029851147, 0.3880482994902902, 0.6567591185324634, 0.9423404564869614,
        1.2562311973471771, 1.6180463860218826, 2.0690172265313866, 2.732589570995163),
}  # fmt: skip
# elements of arg evaluated at once (bounds the CPU path's memory)
_CHUNK = 1 << 22
SIN, SINH, COSH, TANH = range(4)  # kinds of basis function


def lloyd_max_levels(bits: int, dtype=None, device=None):
    """The ``2^bits`` levels of the ``bits``-bit Lloyd–Max quantiser of N(0, 1), ascending."""
    half = LLOYD_MAX[bits]
    return torch.tensor(
        [-v for v in reversed(half)] + list(half), dtype=dtype or torch.float64, device=device
    )


def polar_table(tile: int, dtype=None, device=None):
    """``(rho, psi)``, each ``(B, B)`` indexed ``[i, j]`` (row, column), computed in float64."""
    c = (2 * torch.arange(tile, dtype=torch.float64) + 1) / tile - 1
    v, u = c[:, None], c[None, :]
    rho = torch.sqrt(u * u + v * v).clamp_max(1.0)
    psi = torch.atan2(v.expand(tile, tile), u.expand(tile, tile))
    return rho.to(dtype or torch.float64).to(device), psi.to(dtype or torch.float64).to(device)


def kinds(state):
    """The basis of each atom: 0 sin, 1 sinh, 2 cosh, 3 tanh (int64, from the state words)."""
    f = unpack_state(state)
    trk = f["trk"]
    return torch.where(trk == 0, SIN, torch.where(trk == 2, TANH, SINH + f["s_h"]))


def basis(arg, kind, derivative: bool = False):
    """``g(arg)`` (or ``g'(arg)``) for atoms of ``kind`` (broadcast against ``arg``)."""
    out = torch.zeros_like(arg)
    for k in kind.unique().tolist():
        sel = kind == k
        a = arg
        if k == SIN:
            v = torch.cos(a) if derivative else torch.sin(a)
        elif k == TANH:
            t = torch.tanh(a)
            v = 1 - t * t if derivative else t
        else:
            a = a.clamp(-HYP_ARG_MAX, HYP_ARG_MAX)
            use_cosh = (k == COSH) != derivative
            v = torch.cosh(a) if use_cosh else torch.sinh(a)
            if derivative:
                v = torch.where(arg.abs() <= HYP_ARG_MAX, v, torch.zeros_like(v))
        out = torch.where(sel, v, out)
    return out


def _atom_terms(shadow, state, rho, psi):
    """``(arg, s A, kind, 2 ω)`` of every atom: arg ``(T, J, B, B)``, the others ``(T, J, 1, 1)``."""
    u, theta, phi, ln_a = (c[..., None, None] for c in shadow.unbind(-1))
    f = unpack_state(state)
    two_omega = f["m_r"].to(shadow.dtype)[..., None, None] * (2 * DELTA_OMEGA)
    m = f["m_psi"].to(shadow.dtype)[..., None, None]
    arg = two_omega * u * rho + m * (psi + theta) + phi
    amp = (1 - 2 * f["sigma"]).to(shadow.dtype)[..., None, None] * torch.exp(ln_a)
    return arg, amp, kinds(state)[..., None, None], two_omega


def tile_chunks(n_tiles: int, atoms: int, tile: int) -> list[tuple[int, int]]:
    """Ranges of tiles whose ``(t, J, B, B)`` atom terms hold at most ``2^22`` elements."""
    per = max(1, _CHUNK // (atoms * tile * tile))
    return [(t0, min(t0 + per, n_tiles)) for t0 in range(0, n_tiles, per)]


def _chunks(shadow, tile: int):
    return tile_chunks(shadow.shape[0], shadow.shape[1], tile)


def atom_contributions(shadow, state, tile: int):
    r"""Each atom's part :math:`s A g(\mathrm{arg})` of its tile, ``(T, J, B, B)``."""
    rho, psi = polar_table(tile, shadow.dtype, shadow.device)
    arg, amp, kind, _ = _atom_terms(shadow, state, rho, psi)
    return amp * basis(arg, kind)


def generate_tiles(shadow, state, tile: int):
    """The atoms' part of every tile, ``(T, B, B)``, from shadows ``(T, J, 4)`` and
    state words ``(T, J)``, in the shadows' dtype."""
    parts = [atom_contributions(shadow[t0:t1], state[t0:t1], tile).sum(1) for t0, t1 in _chunks(shadow, tile)]
    return torch.cat(parts) if parts else shadow.new_zeros((0, tile, tile))


def tiles_to_matrix(tiles, out: int, inp: int):
    """``(T, B, B)`` tiles (row-major, ``ceil(in/B)`` a row) -> the ``(out, in)`` matrix."""
    b = tiles.shape[-1]
    tr, tc = -(-out // b), -(-inp // b)
    return tiles.reshape(tr, tc, b, b).permute(0, 2, 1, 3).reshape(tr * b, tc * b)[:out, :inp]


def matrix_to_tiles(w, tile: int):
    """``(out, in)`` -> ``(T, B, B)`` tiles, zero outside the matrix."""
    out, inp = w.shape
    tr, tc = -(-out // tile), -(-inp // tile)
    padded = torch.nn.functional.pad(w, (0, tc * tile - inp, 0, tr * tile - out))
    return padded.reshape(tr, tile, tc, tile).permute(0, 2, 1, 3).reshape(tr * tc, tile, tile)


def generate(shadow, state, out: int, inp: int, tile: int, residual=None, scales=None, bits: int = 0):
    """The dense ``(out, in)`` weight: the atoms, plus the residual when ``bits > 0``."""
    w = tiles_to_matrix(generate_tiles(shadow, state, tile), out, inp)
    if bits:
        w = w + dequantise_residual(residual, scales.to(w.dtype), bits, inp)
    return w


def tile_grads(g_tiles, shadow, state, tile: int):
    """``dL/d(u, θ, φ, ln A)`` ``(T, J, 4)`` from ``G = dL/dW`` cut into tiles ``(T, B, B)``
    (the closed forms of the module docstring)."""
    rho, psi = polar_table(tile, shadow.dtype, shadow.device)
    out = torch.empty_like(shadow)
    for t0, t1 in _chunks(shadow, tile):
        arg, amp, kind, two_omega = _atom_terms(shadow[t0:t1], state[t0:t1], rho, psi)
        g = g_tiles[t0:t1, None]
        gc = g * amp * basis(arg, kind, derivative=True)
        d_phi = gc.sum((-2, -1))
        m = unpack_state(state[t0:t1])["m_psi"].to(shadow.dtype)
        out[t0:t1, :, PHI] = d_phi
        out[t0:t1, :, THETA] = m * d_phi
        out[t0:t1, :, U] = (gc * rho).sum((-2, -1)) * two_omega[..., 0, 0]
        out[t0:t1, :, LN_A] = (g * amp * basis(arg, kind)).sum((-2, -1))
    return out


# ---------------------------------------------------------------- residual
def pack_planes(codes, bits: int):
    """Codes ``(out, G, 128)`` (integers below ``2^bits``) -> int32 bit planes ``(out, G, bits, 4)``."""
    c = codes.to(torch.int64)
    weights = torch.ones(32, dtype=torch.int64, device=c.device) << torch.arange(32, device=c.device)
    planes = [(((c >> p) & 1).reshape(*c.shape[:-1], 4, 32) * weights).sum(-1) for p in range(bits)]
    words = torch.stack(planes, -2) if planes else c.new_zeros((*c.shape[:-1], 0, 4))
    return (words - ((words >> 31) & 1) * (1 << 32)).to(torch.int32)


def unpack_planes(planes, bits: int):
    """int32 bit planes ``(out, G, bits, 4)`` -> int64 codes ``(out, G, 128)``."""
    shifts = torch.arange(32, device=planes.device)
    bits_ = (planes.to(torch.int64)[..., None] >> shifts) & 1  # (out, G, bits, 4, 32)
    bits_ = bits_.reshape(*planes.shape[:-2], bits, GROUP)
    place = torch.ones(bits, dtype=torch.int64, device=planes.device) << torch.arange(
        bits, device=planes.device
    )
    return (bits_ * place[:, None]).sum(-2)


def residual_levels(planes, bits: int, inp: int, dtype=None):
    """The unscaled residual ``ℓ_b[c]`` as an ``(out, in)`` matrix."""
    levels = lloyd_max_levels(bits, dtype, planes.device)
    lv = levels[unpack_planes(planes, bits)]
    return lv.reshape(lv.shape[0], -1)[:, :inp]


def dequantise_residual(planes, scales, bits: int, inp: int):
    """``R = σ ℓ_b[c]`` as an ``(out, in)`` matrix in the scales' dtype."""
    lv = residual_levels(planes, bits, inp, scales.dtype)
    return lv * scales.repeat_interleave(GROUP, 1)[:, :inp]


def _as_float16(scales):
    """Scales rounded to float16 (and kept in float32), saturating at its largest value."""
    return scales.clamp(0.0, 65504.0).to(torch.float16).to(torch.float32)


def quantise_residual(r, bits: int, iters: int = 4):
    """``(planes, scales)`` of an ``(out, in)`` residual: per row and group of 128
    columns, the scale starts at the group's RMS and alternates ``iters`` times
    between the nearest codes and the least-squares scale :math:`\\langle R,\\ell\\rangle
    / \\langle\\ell,\\ell\\rangle`; the scale is then rounded to float16 and the codes
    chosen for it. Scales come back as float32 holding float16 values."""
    if bits not in LLOYD_MAX:
        raise InvalidArgumentError(f"residual_bits must be 1..4 here, got {bits}")
    out, inp = r.shape
    groups = -(-inp // GROUP)
    rp = torch.nn.functional.pad(r.to(torch.float64), (0, groups * GROUP - inp)).reshape(out, groups, GROUP)
    valid = (torch.arange(groups * GROUP) < inp).reshape(groups, GROUP).to(torch.float64)
    levels = lloyd_max_levels(bits)
    edges = (levels[1:] + levels[:-1]) / 2

    def nearest(scale):
        z = torch.where(scale > 0, rp / torch.where(scale > 0, scale, 1.0), torch.zeros_like(rp))
        return torch.bucketize(z, edges)

    scale = torch.sqrt((rp * rp).sum(-1, keepdim=True) / valid.sum(-1)[:, None])
    for _ in range(iters):
        lv = levels[nearest(scale)] * valid
        den = (lv * lv).sum(-1, keepdim=True)
        scale = torch.where(den > 0, (rp * lv).sum(-1, keepdim=True) / torch.where(den > 0, den, 1.0), scale)
    scale = _as_float16(scale.clamp_min(0.0))
    codes = nearest(scale.to(torch.float64))
    return pack_planes(codes, bits), scale[..., 0]


# ------------------------------------------------------------- bit count
@dataclass(frozen=True)
class BitCount:
    """Bits stored for one compressed layer, by part (see the module docstring)."""

    codes: int
    residual: int
    scales: int
    bias: int
    weights: int  # out * in

    @property
    def total(self) -> int:
        return self.codes + self.residual + self.scales + self.bias

    @property
    def per_weight(self) -> float:
        """Every stored bit (bias included) over the number of weights."""
        return self.total / self.weights


def stored_bits(out: int, inp: int, tile: int, atoms: int, residual_bits: int, bias: bool) -> BitCount:
    """The bits a compressed layer stores (its file's payload, :mod:`xpu_stone.rbe.format`)."""
    tiles = -(-out // tile) * -(-inp // tile)
    groups = -(-inp // GROUP)
    return BitCount(
        codes=128 * atoms * tiles,
        residual=GROUP * residual_bits * out * groups,
        scales=16 * out * groups if residual_bits else 0,
        bias=16 * out if bias else 0,
        weights=out * inp,
    )
