r"""``HybridOptimizer``: Adam on the continuous shadows, first-order-scored discrete moves
on the codes every ``tau`` steps, each kept only if the loss goes down (RBE.md).

Every step: ``loss = closure()`` (the closure returns the loss tensor; the optimizer
clears the gradients and calls ``backward``), one Adam step on every parameter of the
model (the RBE shadows ``(u, θ, φ, ln A)``, residual scales, biases and any other
parameter), then the shadows are put back into the code's range (``0 <= u <= U_MAX``,
``ln A`` within its 16 bits, scales >= 0).

Every ``tau``-th step, a discrete phase: the closure runs once more with gradients,
and for each RBE layer ``G = dL/dW = δᵀ x`` is formed from its input and output
gradient (held for this one pass by hooks). Each atom's candidate moves — ``m_r ± 1``,
``m_ψ ± 1``, the two other tracks, the flip of ``s_h`` (hyperbolic atoms) and of
``σ`` — are scored to first order, :math:`\langle G, \Delta W\rangle` over the atom's
tile (:math:`\Delta W = s'A' g'(\mathrm{arg}') - s A g(\mathrm{arg})`), within a trust
region where the first order can hold: a move is a candidate only if it changes the tile
by no more than flipping the atom's sign does,
:math:`\|\Delta W\|_F \le` :data:`TRUST` :math:`\cdot \|s A g(\mathrm{arg})\|_F` (cells
inside the matrix; ``TRUST = 2`` up to a relative ``1e-9`` for rounding). Without it the
hyperbolic track, whose atoms reach :math:`A \cosh 20 = 2.4 \cdot 10^8 A`, took the most
negative scores and filled every phase: training the digits MLP of
``benchmarks/bench_rbe.py`` (880 steps) kept none of the 68 moves tried; with it, 31 of
204 over three seeds (``benchmarks/results/rbe-digits-cpu-2026-12-01.json``). The ``moves``
moves with the most negative scores, across all layers, are each tried alone (the loss
re-evaluated without gradients); the best move of each atom that lowered the loss is
then applied together with the others, and kept if the loss is no higher than with the
best single move; otherwise only that single move is kept.

Given the same model, data and ``seed``, the run is the same: the only random choice
is the subset of atoms scored when ``sample < 1`` (drawn from a generator seeded with
``seed``); ties are broken by order.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InvalidArgumentError
from .format import M_PSI_RANGE, U_MAX, ln_amplitude_range, pack_state, unpack_state
from .generator import LN_A, U, atom_contributions, matrix_to_tiles, tile_chunks
from .layer import RBELinear

__all__ = ["MOVES", "TRUST", "HybridOptimizer"]

TRUST = 2.0  # a move changes its tile by at most TRUST times its atom (a sign flip's change)

# the discrete moves of an atom (see _moved): m_r or m_psi one up or down, the track one or two
# further round (0 sine, 1 hyperbolic, 2 tanh), a flip of s_h or sigma
MOVES = ("m_r+1", "m_r-1", "m_psi+1", "m_psi-1", "trk+1", "trk+2", "s_h", "sigma")


def _moved(f: dict, move: str) -> tuple[dict, torch.Tensor]:
    """The fields after ``move`` and where the move applies (bool, per atom)."""
    g = dict(f)
    if move.startswith(("m_r", "m_psi")):
        name, step = move[:-2], 1 if move[-2] == "+" else -1
        lo, hi = (0, 1023) if name == "m_r" else M_PSI_RANGE
        g[name] = f[name] + step
        return g, (g[name] >= lo) & (g[name] <= hi)
    if move.startswith("trk"):
        g["trk"] = (f["trk"] + int(move[-1])) % 3
        return g, torch.ones_like(f["trk"], dtype=torch.bool)
    g[move] = 1 - f[move]
    applies = f["trk"] == 1 if move == "s_h" else torch.ones_like(f["trk"], dtype=torch.bool)
    return g, applies


class _Capture:
    """Holds each RBE layer's input and output gradient during one backward pass."""

    def __init__(self, layers):
        self.x, self.delta, self.handles = {}, {}, []
        for i, layer in enumerate(layers):
            self.handles.append(layer.register_forward_hook(self._forward(i)))

    def _forward(self, i):
        def hook(module, inputs, output):
            self.x[i] = inputs[0].detach().reshape(-1, module.in_features)
            output.register_hook(
                lambda g: self.delta.__setitem__(i, g.detach().reshape(-1, module.out_features))
            )

        return hook

    def close(self):
        for h in self.handles:
            h.remove()


class HybridOptimizer:
    """Adam plus discrete moves for models with :class:`~xpu_stone.rbe.layer.RBELinear`
    layers (module docstring). ``lr``, ``betas``, ``eps``, ``weight_decay``: Adam's;
    ``tau``: steps between discrete phases; ``moves``: moves tried a phase; ``sample``:
    the fraction of atoms scored a phase; ``seed``: the generator of that sample."""

    def __init__(self, model: nn.Module, lr: float = 1e-2, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, tau: int = 50, moves: int = 4, sample: float = 1.0, seed: int = 0):  # fmt: skip
        if not isinstance(model, nn.Module):
            raise InvalidArgumentError(
                f"HybridOptimizer takes the model (an nn.Module), got {type(model).__name__}"
            )
        for name, v, ok in (
            ("tau", tau, tau >= 1),
            ("moves", moves, moves >= 0),
            ("sample", sample, 0 < sample <= 1),
        ):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok:
                raise InvalidArgumentError(f"{name} out of range: {v!r}")
        self.model = model
        self.layers = [m for m in model.modules() if isinstance(m, RBELinear)]
        self.adam = torch.optim.Adam(
            model.parameters(), lr=lr, betas=betas, eps=eps, weight_decay=weight_decay
        )
        self.tau, self.moves, self.sample = tau, moves, sample
        self.generator = torch.Generator().manual_seed(seed)
        self.steps = 0
        self.accepted = 0  # moves kept so far
        self.tried = 0

    def zero_grad(self) -> None:
        self.adam.zero_grad(set_to_none=True)

    @torch.no_grad()
    def _project(self) -> None:
        lo, hi = ln_amplitude_range()
        for layer in self.layers:
            layer.shadow[..., U].clamp_(0.0, U_MAX)
            layer.shadow[..., LN_A].clamp_(lo, hi)
            if layer.scales is not None:
                layer.scales.clamp_(min=0.0)

    def step(self, closure) -> torch.Tensor:
        """One step; ``closure()`` returns the loss (a scalar tensor) of the model. Returns that loss."""
        self.zero_grad()
        with torch.enable_grad():
            loss = closure()
            loss.backward()
        self.adam.step()
        self._project()
        self.steps += 1
        if self.moves and self.layers and self.steps % self.tau == 0:
            self._discrete_phase(closure)
        return loss.detach()

    # ------------------------------------------------------------ discrete moves
    def _scores(self, layer: RBELinear, g_tiles):
        """``(score (T, J, M), valid (T, J, M))`` of every move of every atom of ``layer``."""
        t, j = layer.state.shape
        scores = torch.zeros(t, j, len(MOVES), dtype=torch.float64)
        valid = torch.zeros(t, j, len(MOVES), dtype=torch.bool)
        shadow = layer.shadow.detach().to(torch.float64)
        inside = matrix_to_tiles(shadow.new_ones(layer.out_features, layer.in_features), layer.tile)
        for t0, t1 in tile_chunks(t, j, layer.tile):
            sh, st, g = shadow[t0:t1], layer.state[t0:t1], g_tiles[t0:t1, None].to(torch.float64)
            f = unpack_state(st)
            now = atom_contributions(sh, st, layer.tile) * inside[t0:t1, None]
            radius = TRUST * (1 + 1e-9) * torch.linalg.vector_norm(now, dim=(-2, -1))
            for k, move in enumerate(MOVES):
                nf, applies = _moved(f, move)
                new_state = pack_state({n: torch.where(applies, nf[n], f[n]) for n in f})
                delta = atom_contributions(sh, new_state, layer.tile) * inside[t0:t1, None] - now
                scores[t0:t1, :, k] = (g * delta).sum((-2, -1)).cpu()
                within = torch.linalg.vector_norm(delta, dim=(-2, -1)) <= radius
                valid[t0:t1, :, k] = (applies & within).cpu()
        return scores, valid

    def _discrete_phase(self, closure) -> None:
        capture = _Capture(self.layers)
        try:
            self.zero_grad()
            with torch.enable_grad():
                best = closure()
                best.backward()
        finally:
            capture.close()
        self.zero_grad()
        best = best.item()
        candidates = []  # (score, layer index, tile, atom, move)
        for i, layer in enumerate(self.layers):
            if i not in capture.delta:
                continue
            g = capture.delta[i].to(torch.float64).T @ capture.x[i].to(torch.float64)
            scores, valid = self._scores(layer, matrix_to_tiles(g, layer.tile))
            keep = valid & (scores < 0)
            if self.sample < 1:
                keep &= (torch.rand(scores.shape[:2], generator=self.generator) < self.sample)[..., None]
            for t, k, m in keep.nonzero().tolist():
                candidates.append((scores[t, k, m].item(), i, t, k, m))
        candidates.sort()
        self._try(closure, best, candidates[: self.moves])

    def _set(self, moves) -> list:
        """Applies ``moves`` ``(layer index, tile, atom, move index)``; returns the old state words."""
        old = []
        for i, t, k, m in moves:
            state = self.layers[i].state
            old.append(state[t, k].clone())
            state[t, k] = pack_state(_moved(unpack_state(state[t, k]), MOVES[m])[0])
        return old

    def _unset(self, moves, old) -> None:
        for (i, t, k, _), w in zip(reversed(moves), reversed(old)):
            self.layers[i].state[t, k] = w

    @torch.no_grad()
    def _try(self, closure, base: float, candidates) -> None:
        """Each candidate alone against the loss ``base``; then the best improving move of
        each atom together, kept if that beats the best single move (else that one alone)."""
        best_of_atom = {}  # (layer, tile, atom) -> (loss, move)
        for _, i, t, k, m in candidates:
            old = self._set([(i, t, k, m)])
            loss = closure().item()
            self._unset([(i, t, k, m)], old)
            self.tried += 1
            if loss < base and loss < best_of_atom.get((i, t, k), (float("inf"),))[0]:
                best_of_atom[(i, t, k)] = (loss, m)
        if not best_of_atom:
            return
        chosen = [(*atom, m) for atom, (_, m) in sorted(best_of_atom.items())]
        single_loss, single = min((loss, (*atom, m)) for atom, (loss, m) in best_of_atom.items())
        old = self._set(chosen)
        if len(chosen) > 1 and closure().item() > single_loss:
            self._unset(chosen, old)
            self._set([single])
            chosen = [single]
        self.accepted += len(chosen)
