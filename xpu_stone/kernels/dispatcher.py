"""Picks the kernel variant and launch configuration for each call.

Order of authority: the active :class:`~xpu_stone.policies.KernelPolicy`, then a
per-GPU tuned table (:func:`set_tuned_table`; the tuning scripts write them),
then the heuristic below. The answer is cached per (op, dtype, D, alignment,
device, policy), so the per-call cost is one dict lookup.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import policies
from .registry import REGISTRY, LaunchConfig


@dataclass(frozen=True)
class Choice:
    op: str
    variant: str
    config: LaunchConfig
    reason: str  # "policy", "table" or "heuristic" (with a note when a policy could not apply)


class TunedTable:
    """Per-GPU tuned choices: ``lookup`` returns a variant name or None.

    The plug-in point for tables written by the tuning scripts; the empty table
    leaves every choice to the heuristic.
    """

    def lookup(self, op: str, dtype: str, d: int, device: str) -> str | None:
        return None


_table: TunedTable = TunedTable()
_cache: dict[tuple, Choice] = {}


def set_tuned_table(table: TunedTable) -> None:
    global _table
    _table = table
    _cache.clear()


def heuristic_variant(dtype: str, d: int, aligned: bool) -> str:
    """Several rows per warp while a row fits in 16 threads' vectors, a warp
    per row up to 128 vectors, a block per row beyond; generic when unaligned."""
    from .registry import VEC_WIDTH

    if not aligned:
        return "generic"
    chunks = -(-d // VEC_WIDTH[dtype])
    if chunks <= 16:
        return "rows_per_warp"
    if chunks <= 128:
        return "warp_per_row"
    return "block_per_row"


def select(op: str, dtype: str, d: int, aligned: bool, device: str = "cuda") -> Choice:
    key = (op, dtype, d, aligned, device, policies.policy_token())
    choice = _cache.get(key)
    if choice is None:
        choice = _cache[key] = _select(op, dtype, d, aligned, device)
    return choice


def _select(op: str, dtype: str, d: int, aligned: bool, device: str) -> Choice:
    kernels = REGISTRY.get(op)
    note = ""
    policy = policies.active_policy()
    wanted = policy.variant_for(op) if policy is not None else "auto"
    if wanted != "auto":
        cfg = kernels.variant(wanted).pick(dtype, d, aligned)
        if cfg is not None:
            return Choice(op, wanted, cfg, "policy")
        note = f" (policy asked for {wanted!r}, which cannot take this input)"
    tuned = _table.lookup(op, dtype, d, device)
    if tuned is not None:
        cfg = kernels.variant(tuned).pick(dtype, d, aligned)
        if cfg is not None:
            return Choice(op, tuned, cfg, "table" + note)
    name = heuristic_variant(dtype, d, aligned)
    return Choice(op, name, kernels.variant(name).pick(dtype, d, aligned), "heuristic" + note)


def explain(op: str, d: int, dtype: str = "float32", aligned: bool = True, device: str = "cuda") -> str:
    """Which variant runs ``op`` on rows of ``d`` elements of ``dtype``, and why."""
    c = select(op, dtype, d, aligned, device)
    cfg = c.config
    return (
        f"{op} [{dtype}, D={d}, {'aligned' if aligned else 'unaligned'}]: {c.variant} "
        f"(threads/row={cfg.threads}, iters={cfg.iters}, vec={cfg.vec}, block={cfg.block}) "
        f"chosen by {c.reason}"
    )
