"""Picks the kernel variant and launch configuration for each call.

Order of authority: the active :class:`~xpu_stone.policies.KernelPolicy`, then a
per-GPU tuned table, then the heuristic below. The tuned table is, unless
:func:`set_tuned_table` installs another, :class:`xpu_stone.kernels.tuning.AutoTable`:
the shipped table of the current GPU plus a user table (``XPU_STONE_TUNED_TABLE``),
read on the first dispatch on each device. The answer is cached per (op, dtype,
D, alignment, device, policy), so the per-call cost is one dict lookup.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import policies
from ..errors import InvalidArgumentError
from .registry import DTYPES, REGISTRY, LaunchConfig


@dataclass(frozen=True)
class Choice:
    op: str
    variant: str
    config: LaunchConfig
    reason: str  # "policy", "table" or "heuristic" (with a note when a policy could not apply)
    detail: str = ""  # for "table": which table and cell


@dataclass(frozen=True)
class TableChoice:
    """A tuned table's answer: the variant, optionally its launch configuration
    (used when it is valid for the call, else the variant's smallest
    configuration that takes the input), and where the answer comes from."""

    variant: str
    config: LaunchConfig | None = None
    source: str = ""


class TunedTable:
    """Per-GPU tuned choices: ``lookup`` returns a variant name, a
    :class:`TableChoice`, or None (not covered: the heuristic decides).

    The plug-in point for tables written by ``scripts/tune_kernels.py``; the
    empty table leaves every choice to the heuristic.
    """

    def lookup(self, op: str, dtype: str, d: int, device) -> str | TableChoice | None:
        return None


_table: TunedTable | None = None  # None: the automatic table, made on the first dispatch
_cache: dict[tuple, Choice] = {}
_generation = [0]


def generation() -> int:
    """Bumped whenever cached choices become stale (a new tuned table)."""
    return _generation[0]


def set_tuned_table(table: TunedTable | None) -> None:
    """Installs ``table`` for every device; None goes back to the automatic
    table (shipped tables and ``XPU_STONE_TUNED_TABLE``, read again lazily)."""
    global _table
    _table = table
    _cache.clear()
    _generation[0] += 1


def tuned_table() -> TunedTable:
    """The table in use (made on first use: reading it touches no GPU)."""
    global _table
    if _table is None:
        from .tuning import AutoTable

        _table = AutoTable()
    return _table


def heuristic(kernels, dtype: str, d: int, aligned: bool) -> tuple[str, LaunchConfig]:
    """The first variant, in the op's order of preference (rows_per_warp,
    warp_per_row, block_per_row, then generic), with a configuration that keeps
    the whole row in registers; beyond that a looping configuration of the last
    non-generic variant; generic when nothing else takes the input (vectorized
    variants need aligned input)."""
    usable = [v for v in kernels.variants if aligned or not v.vectorized]
    for v in usable:
        cfg = v.pick(dtype, d, aligned, cached_only=True)
        if cfg is not None:
            return v.name, cfg
    for v in reversed(usable):
        if v.name != "generic":
            cfg = v.pick(dtype, d, aligned)
            if cfg is not None:
                return v.name, cfg
    return "generic", kernels.variant("generic").pick(dtype, d, aligned)


def fits(variant, cfg: LaunchConfig, dtype: str, d: int, aligned: bool) -> bool:
    """Whether ``cfg``, a configuration of ``variant`` for ``dtype``, takes rows of ``d``."""
    return (aligned or not variant.vectorized) and cfg in variant.configs(dtype) and cfg.covers(d)


def select(op: str, dtype: str, d: int, aligned: bool, device=0) -> Choice:
    key = (op, dtype, d, aligned, device, policies.policy_token())
    choice = _cache.get(key)
    if choice is None:
        choice = _cache[key] = _select(op, dtype, d, aligned, device)
    return choice


def _select(op: str, dtype: str, d: int, aligned: bool, device) -> Choice:
    kernels = REGISTRY.get(op)
    note = ""
    policy = policies.active_policy()
    wanted = policy.variant_for(op) if policy is not None else "auto"
    if wanted != "auto":
        cfg = kernels.variant(wanted).pick(dtype, d, aligned)
        if cfg is not None:
            return Choice(op, wanted, cfg, "policy")
        note = f" (policy asked for {wanted!r}, which cannot take this input)"
    tuned = tuned_table().lookup(op, dtype, d, device)
    if tuned is not None:
        if isinstance(tuned, str):
            tuned = TableChoice(tuned)
        variant = kernels.variant(tuned.variant)
        cfg = tuned.config
        if cfg is None or not fits(variant, cfg, dtype, d, aligned):
            cfg = variant.pick(dtype, d, aligned)
        if cfg is not None:
            return Choice(op, tuned.variant, cfg, "table" + note, tuned.source)
    name, cfg = heuristic(kernels, dtype, d, aligned)
    return Choice(op, name, cfg, "heuristic" + note)


def explain(op: str, shape, dtype="float32", aligned: bool = True, device=0) -> str:
    """Which variant runs ``op`` on an input of ``shape`` and ``dtype``, and why.

    ``shape`` is the input's shape (the kernels work on its last dimension, the
    row length D) or D itself; ``dtype`` a name (``"float16"``) or a torch, NumPy
    or CuPy dtype.
    """
    d = _row_length(shape)
    dtype = _dtype_name(dtype)
    c = select(op, dtype, d, aligned, device)
    cfg = c.config
    return (
        f"{op} [{dtype}, D={d}, {'aligned' if aligned else 'unaligned'}]: {c.variant} "
        f"(threads/row={cfg.threads}, iters={cfg.iters}, vec={cfg.vec}, block={cfg.block}) "
        f"chosen by {c.reason}" + (f" [{c.detail}]" if c.detail else "")
    )


def _row_length(shape) -> int:
    """D of ``shape``: its last entry, or ``shape`` itself when it is an int."""
    dims = (shape,) if isinstance(shape, int) else tuple(shape) if hasattr(shape, "__iter__") else ()
    if not dims or not all(isinstance(n, int) and not isinstance(n, bool) for n in dims):
        raise InvalidArgumentError(f"explain: shape must be an int or a sequence of ints, got {shape!r}")
    if dims[-1] < 1:
        raise InvalidArgumentError(f"explain: the row length (last dimension) must be >= 1, got {dims[-1]}")
    return dims[-1]


def _dtype_name(dtype) -> str:
    """``"float16"`` for ``"float16"``, ``torch.float16``, ``numpy.float16`` or ``numpy.dtype("float16")``."""
    if isinstance(dtype, str):
        name = dtype
    else:
        name = getattr(dtype, "name", None) or getattr(dtype, "__name__", None) or str(dtype)
        name = name.removeprefix("torch.")
    if name not in DTYPES:
        raise InvalidArgumentError(f"explain: dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return name
