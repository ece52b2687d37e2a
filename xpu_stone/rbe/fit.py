r"""Codes for an existing weight matrix: greedy matching pursuit per tile (RBE.md).

For each of the J atoms of every tile, on the sine track with ``θ = 0``
(``θ`` only adds ``m_ψ θ`` to the phase, which ``φ`` already covers) and
``u = B/64`` (so ``d(r) = B/32`` and the radial frequencies ``ω d`` of ``m_r =
0..1023`` reach the tile's Nyquist frequency ``π B/2``):

1. a coarse grid of ``(m_r, m_ψ)`` (``m_r`` a multiple of ``radial_step``,
   ``|m_ψ| <= m_psi_max``) is scored at once for every tile by one GEMM of the
   tiles' residuals against the pairs ``sin(base), cos(base)``, ``base = ω d ρ +
   m_ψ ψ``: the energy a candidate captures is :math:`b^T \Gamma^+ b`, ``b`` the
   two correlations and :math:`\Gamma` the pair's Gram matrix over the tile's
   cells inside the matrix;
2. ``m_r`` is refined to every value within ``radial_step`` of the best;
3. ``A`` and ``φ`` solve the least-squares fit on the pair in closed form:
   :math:`(\alpha, \beta) = \Gamma^+ b`, :math:`A \sin(\mathrm{base} + \varphi) =
   \alpha \sin(\mathrm{base}) + \beta \cos(\mathrm{base})`, so :math:`A =
   \sqrt{\alpha^2 + \beta^2}`, :math:`\varphi = \operatorname{atan2}(\beta, \alpha)`;
4. the atom is subtracted and the next one searched.

The hyperbolic and tanh tracks have no such closed form (``tanh(base + φ)`` is not
linear in a pair); they are reached by the discrete moves of
:class:`~xpu_stone.rbe.optim.HybridOptimizer`. Optionally ``refine_steps`` steps of
Adam on the shadows ``(u, θ, φ, ln A)`` then lower the tiles' squared error, with the
closed-form gradient of :func:`~xpu_stone.rbe.generator.tile_grads`. The atoms are then
quantised to their codes, and the residual of the quantised atoms is coded
(:func:`~xpu_stone.rbe.generator.quantise_residual`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .format import DELTA_OMEGA, U_MAX, ln_amplitude_range, pack_atoms, pack_state, unpack_atoms
from .generator import (
    LN_A,
    U,
    generate_tiles,
    matrix_to_tiles,
    polar_table,
    quantise_residual,
    tile_grads,
    tiles_to_matrix,
)

__all__ = ["Fit", "fit_matrix", "matching_pursuit"]

_BATCH = 128  # tiles fitted at once


@dataclass
class Fit:
    """What :func:`fit_matrix` returns: the layer's shadows, state words, residual bit
    planes and scales (empty when ``residual_bits`` is 0)."""

    shadow: torch.Tensor
    state: torch.Tensor
    residual: torch.Tensor
    scales: torch.Tensor


def _pinv2(g):
    """Pseudo-inverses of ``(..., 2, 2)`` symmetric positive semi-definite matrices: the
    inverse, or ``g / tr(g)²`` when ``det(g) <= 1e-6 tr(g)²`` (rank one, e.g. the pair
    ``sin 0, cos 0``), or 0 when ``g`` is 0."""
    a, b, c = g[..., 0, 0], g[..., 0, 1], g[..., 1, 1]
    tr2 = (a + c) ** 2
    det = a * c - b * b
    full = det > 1e-6 * tr2
    inv = torch.stack([torch.stack([c, -b], -1), torch.stack([-b, a], -1)], -2)
    scale = torch.where(full, 1 / torch.where(full, det, 1.0), 0.0)
    rank1 = torch.where(tr2 > 0, 1 / torch.where(tr2 > 0, tr2, 1.0), 0.0)
    return torch.where(full[..., None, None], inv * scale[..., None, None], g * rank1[..., None, None])


def _pair(base, mask):
    """``(sin, cos)`` of ``base`` times ``mask`` stacked on a new axis -2."""
    return torch.stack([torch.sin(base), torch.cos(base)], -2) * mask


def _pursue(resid, mask, rho, psi, cand, sc, gram_pinv, atoms, radial_step, d):
    """Matching pursuit on one batch of tiles: ``resid`` ``(t, B^2)`` (float64, zero outside
    ``mask``), ``gram_pinv`` ``(t, C, 2, 2)``. Returns ``m_r, m_psi, φ, A`` ``(t, J)``."""
    t = resid.shape[0]
    rows = torch.arange(t)
    mr_c, m_c = cand
    offsets = torch.arange(-radial_step + 1, radial_step)
    out = [torch.zeros(t, atoms, dtype=dt) for dt in (torch.int64, torch.int64, resid.dtype, resid.dtype)]
    for k in range(atoms):
        b = (resid @ sc).reshape(t, -1, 2)  # (t, C, 2)
        best = torch.einsum("tci,tcij,tcj->tc", b, gram_pinv, b).argmax(-1)
        # refine m_r around the coarse choice, m_psi fixed
        cand_r = (mr_c[best][:, None] + offsets).clamp(0, 1023)  # (t, R)
        cand_m = m_c[best][:, None].expand_as(cand_r)
        base = (cand_r * DELTA_OMEGA * d).to(resid.dtype)[..., None] * rho + cand_m.to(resid.dtype)[
            ..., None
        ] * psi
        pr = _pair(base, mask[:, None, None, :])  # (t, R, 2, B^2)
        corr = torch.einsum("trip,tp->tri", pr, resid)
        coef = torch.einsum("trij,trj->tri", _pinv2(torch.einsum("trip,trjp->trij", pr, pr)), corr)
        pick = torch.einsum("tri,tri->tr", coef, corr).argmax(-1)
        alpha, beta = coef[rows, pick].unbind(-1)
        amp = torch.hypot(alpha, beta)
        phi = torch.atan2(beta, alpha) % (2 * math.pi)
        for o, v in zip(out, (cand_r[rows, pick], cand_m[rows, pick], phi, amp)):
            o[:, k] = v
        resid = resid - amp[:, None] * torch.sin(base[rows, pick] + phi[:, None]) * mask
    return out


def matching_pursuit(weight, tile: int, atoms: int, radial_step: int = 16, m_psi_max: int = 16):
    """``(shadow, state)`` of ``atoms`` sine atoms per tile fitted greedily to ``weight``
    ``(out, in)`` (the module docstring); float32 shadows ``(T, J, 4)``, int32 states ``(T, J)``."""
    out, inp = weight.shape
    e = torch.float32  # the search; the residual of the quantised atoms is coded in float64 later
    resid = matrix_to_tiles(weight.detach().to(e).cpu(), tile).reshape(-1, tile * tile)
    mask = matrix_to_tiles(torch.ones(out, inp, dtype=e), tile).reshape(-1, tile * tile)
    n = resid.shape[0]
    rho, psi = (a.reshape(-1) for a in polar_table(tile, torch.float64))
    d = tile / 32
    radial = torch.arange(0, 1024, radial_step)
    ms = torch.arange(-m_psi_max, m_psi_max + 1)
    mr_c, m_c = (a.reshape(-1) for a in torch.meshgrid(radial, ms, indexing="ij"))
    keep = (mr_c > 0) | (m_c >= 0)  # at m_r = 0, m_psi and -m_psi span the same pair
    mr_c, m_c = mr_c[keep], m_c[keep]
    base = mr_c.to(torch.float64)[:, None] * (DELTA_OMEGA * d) * rho + m_c[:, None] * psi  # (C, B^2)
    pair = _pair(base, 1.0).to(e)  # (C, 2, B^2)
    rho, psi = rho.to(e), psi.to(e)
    sc = pair.reshape(-1, tile * tile).T.contiguous()  # (B^2, 2C)
    masks, inverse = torch.unique(mask, dim=0, return_inverse=True)
    gram_pinv = torch.stack([_pinv2(torch.einsum("cip,p,cjp->cij", pair, mk, pair)) for mk in masks])
    parts = []
    for t0 in range(0, n, _BATCH):
        t1 = min(n, t0 + _BATCH)
        parts.append(_pursue(resid[t0:t1], mask[t0:t1], rho, psi, (mr_c, m_c), sc, gram_pinv[inverse[t0:t1]],
                             atoms, radial_step, d))  # fmt: skip
    m_r, m_psi, phi, amp = (torch.cat(p) for p in zip(*parts))
    ln_lo, ln_hi = ln_amplitude_range()
    shadow = torch.stack(
        [torch.full_like(phi, d / 2), torch.zeros_like(phi), phi, torch.log(amp.clamp_min(math.exp(ln_lo)))],
        -1,
    )
    shadow[..., LN_A].clamp_(ln_lo, ln_hi)
    zeros = torch.zeros_like(m_r)
    state = pack_state({"trk": zeros, "s_h": zeros, "sigma": zeros, "m_r": m_r, "m_psi": m_psi})
    return shadow.to(torch.float32), state


def _refine(weight, shadow, state, tile: int, steps: int, lr: float):
    """``steps`` Adam steps on ``½ Σ (W_atoms - weight)²`` over the shadows (closed-form
    gradient; cells outside the matrix do not count)."""
    target = matrix_to_tiles(weight, tile)
    mask = matrix_to_tiles(torch.ones_like(weight), tile)
    p = shadow.clone().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=lr)
    ln_lo, ln_hi = ln_amplitude_range()
    for _ in range(steps):
        with torch.no_grad():
            p.grad = tile_grads((generate_tiles(p, state, tile) - target) * mask, p, state, tile)
        opt.step()
        with torch.no_grad():
            p[..., U].clamp_(0.0, U_MAX)
            p[..., LN_A].clamp_(ln_lo, ln_hi)
    return p.detach()


def fit_matrix(
    weight,
    tile: int,
    atoms: int,
    residual_bits: int,
    radial_step: int = 16,
    m_psi_max: int = 16,
    refine_steps: int = 0,
    lr: float = 1e-2,
) -> Fit:
    """Codes of every part of one layer for ``weight`` ``(out, in)``: matching pursuit,
    optional refinement, quantisation to the Packed128 grid, then the residual."""
    out, inp = weight.shape
    w = weight.detach().to(torch.float32).cpu()
    shadow, state = matching_pursuit(w, tile, atoms, radial_step, m_psi_max)
    if refine_steps:
        shadow = _refine(w, shadow, state, tile, refine_steps, lr)
    shadow, state = unpack_atoms(*pack_atoms(shadow, state))  # exactly what the codes hold
    groups = -(-inp // 128)
    if residual_bits:
        atoms_w = tiles_to_matrix(generate_tiles(shadow.to(torch.float64), state, tile), out, inp)
        planes, scales = quantise_residual(w.to(torch.float64) - atoms_w, residual_bits)
    else:
        planes = torch.zeros(out, groups, 0, 4, dtype=torch.int32)
        scales = torch.zeros(0)
    return Fit(shadow, state, planes, scales)
