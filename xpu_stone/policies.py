"""Kernel choices as data.

A :class:`KernelPolicy` names, per op, the variant the dispatcher must use (or
``"auto"``). It saves to and loads from JSON, and works as a context manager::

    with KernelPolicy({"poincare_mobius_add": "generic"}):
        y = xpu_stone.poincare.mobius_add(a, b)

Unknown ops and variants are errors, raised when the policy is made or loaded.
When the named variant cannot take an input (a vectorized variant on strided
data, say), the dispatcher falls back to its heuristic for that call, and
:func:`xpu_stone.kernels.explain` says so.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from .errors import InvalidArgumentError

_state = threading.local()
_generation = [0]  # bumped on every policy change: part of the dispatcher's cache key


def _stack() -> list:
    if not hasattr(_state, "stack"):
        _state.stack = []
    return _state.stack


def active_policy() -> KernelPolicy | None:
    stack = _stack()
    return stack[-1] if stack else None


def policy_token() -> int:
    stack = _stack()
    return stack[-1]._token if stack else 0


class KernelPolicy:
    """Per-op variant choices: ``{"poincare_dist": "warp_per_row", ...}``."""

    FORMAT = "xpu_stone.KernelPolicy/1"

    def __init__(self, variants: dict[str, str] | None = None):
        from .kernels.registry import REGISTRY

        self.variants = dict(variants or {})
        for op, variant in self.variants.items():
            if not isinstance(variant, str):
                raise InvalidArgumentError(f"variant for {op!r} must be a string, got {variant!r}")
            kernels = REGISTRY.get(op)
            if variant != "auto":
                kernels.variant(variant)
        _generation[0] += 1
        self._token = _generation[0]

    def variant_for(self, op: str) -> str:
        return self.variants.get(op, "auto")

    def to_dict(self) -> dict:
        return {"format": self.FORMAT, "variants": dict(sorted(self.variants.items()))}

    @classmethod
    def from_dict(cls, data: dict) -> KernelPolicy:
        if not isinstance(data, dict) or data.get("format") != cls.FORMAT:
            raise InvalidArgumentError(f"not a KernelPolicy document (expected format {cls.FORMAT!r})")
        unknown = set(data) - {"format", "variants"}
        if unknown:
            raise InvalidArgumentError(f"unknown KernelPolicy fields: {sorted(unknown)}")
        return cls(data.get("variants", {}))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> KernelPolicy:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def __eq__(self, other) -> bool:
        return isinstance(other, KernelPolicy) and self.variants == other.variants

    def __repr__(self) -> str:
        return f"KernelPolicy({self.variants!r})"

    def __enter__(self) -> KernelPolicy:
        _stack().append(self)
        return self

    def __exit__(self, *exc) -> None:
        stack = _stack()
        stack.pop(len(stack) - 1 - stack[::-1].index(self))
