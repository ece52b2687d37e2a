"""Picks the kernel variant and launch configuration for each call.

Order of authority: the innermost active variant pins (what a
:class:`~xpu_stone.runtime.policies.KernelPolicy` pushes with :func:`pin` while it
is entered), then a per-GPU tuned table, then the heuristic below. The tuned
table is, unless :func:`set_tuned_table` installs another,
:class:`xpu_stone.kernels.auto_table.AutoTable`:
the shipped table of the current GPU plus a user table (``XPU_STONE_TUNED_TABLE``),
read on the first dispatch on each device. The answer is cached per (op, dtype,
D, alignment, device, policy), so the per-call cost is one dict lookup.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidArgumentError
from .auto_table import AutoTable, TableChoice, TunedTable
from .registry import DTYPES, REGISTRY, LaunchConfig


@dataclass(frozen=True)
class Choice:
    op: str
    variant: str
    config: LaunchConfig
    reason: str  # "policy", "table" or "heuristic" (with a note when a policy could not apply)
    detail: str = ""  # for "table": which table and cell


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
        _table = AutoTable()
    return _table


def use_table(path: str | Path | None) -> None:
    """Serves every device from the table at ``path`` (if it matches the GPU),
    then the shipped tables; None goes back to the automatic choice."""
    set_tuned_table(None if path is None else AutoTable([path]))


# ---------------------------------------------------------------- variant pins
_pins = threading.local()
_pin_tokens = itertools.count(1)


def _pin_stack() -> list:
    stack = getattr(_pins, "stack", None)
    if stack is None:
        stack = _pins.stack = []
    return stack


class pin:  # noqa: N801 - used as a context manager, like a function
    """Pins variants per op on this thread while entered: ``{"poincare_dist":
    "warp_per_row"}`` (``"auto"`` leaves an op to the table and heuristic). Pins
    nest; the innermost wins. Names are not checked here:
    :class:`~xpu_stone.runtime.policies.KernelPolicy` validates them."""

    def __init__(self, variants: Mapping[str, str], owner=None):
        self.variants = dict(variants)
        self.owner = owner  # what pinned them (a KernelPolicy), for active_policy()
        self.token = next(_pin_tokens)

    def __enter__(self) -> pin:
        _pin_stack().append(self)
        return self

    def __exit__(self, *exc) -> None:
        stack = _pin_stack()
        stack.pop(len(stack) - 1 - stack[::-1].index(self))


def active_pins() -> pin | None:
    stack = _pin_stack()
    return stack[-1] if stack else None


def pin_token() -> int:
    """Identifies the active pins (0: none); part of every cache key of a choice."""
    stack = _pin_stack()
    return stack[-1].token if stack else 0


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
    key = (op, dtype, d, aligned, device, pin_token())
    choice = _cache.get(key)
    if choice is None:
        choice = _cache[key] = _select(op, dtype, d, aligned, device)
    return choice


def _select(op: str, dtype: str, d: int, aligned: bool, device) -> Choice:
    kernels = REGISTRY.get(op)
    note = ""
    pins = active_pins()
    wanted = pins.variants.get(op, "auto") if pins is not None else "auto"
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
