"""The tables the dispatcher reads: the :class:`TunedTable` plug-in point, and
:class:`AutoTable`, which finds, on the first dispatch on each device, the tuned
tables (:mod:`xpu_stone.kernels.tuned_table`) that serve it: user tables first
(``XPU_STONE_TUNED_TABLE``), then the shipped table of that GPU."""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidArgumentError
from .registry import LaunchConfig
from .tuned_table import ENV_VAR, OFF_VALUES, TABLES_DIR, TableFile, TunedTableWarning, device_identity

__all__ = ["AutoTable", "TableChoice", "TunedTable"]


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


class AutoTable(TunedTable):
    """The tables that serve each device, found on its first dispatch.

    ``paths``: user tables (tried first, in order); ``env``: also those of
    ``XPU_STONE_TUNED_TABLE`` (whose ``none`` turns the shipped tables off, not the
    ``paths`` given here); ``shipped``: the package's ``tables/*.json``.
    ``identify(device)`` gives the GPU's identity (default :func:`device_identity`).
    """

    def __init__(
        self,
        paths: Iterable[str | Path] = (),
        *,
        env: bool = True,
        shipped: bool = True,
        tables_dir: str | Path = TABLES_DIR,
        identify: Callable[[object], dict | None] | None = None,
    ):
        self.paths = [Path(p) for p in paths]
        raw = os.environ.get(ENV_VAR, "").strip() if env else ""
        self.off = raw.lower() in OFF_VALUES
        if raw and not self.off:
            self.paths += [Path(p) for p in raw.split(os.pathsep) if p]
        self.shipped = shipped and not self.off
        self.tables_dir = Path(tables_dir)
        self.identify = identify
        self._by_device: dict[object, list[TableFile]] = {}
        self._lock = threading.Lock()

    def tables(self, device) -> list[TableFile]:
        """The valid tables for ``device``, user tables first."""
        found = self._by_device.get(device)
        if found is None:
            with self._lock:
                found = self._by_device.get(device)
                if found is None:
                    found = self._by_device[device] = self._resolve(device)
        return found

    def _resolve(self, device) -> list[TableFile]:
        if not self.paths and not self.shipped:
            return []
        identity = (self.identify or device_identity)(device)
        if identity is None:
            if self.paths:
                _warn(f"tuned tables {[str(p) for p in self.paths]} ignored: no CUDA GPU to match them to")
            return []
        out = []
        for path in self.paths:
            table = _read(path)
            if table is not None:
                bad = table.problems(identity)
                if bad:
                    _warn(f"tuned table {path} ignored: {'; '.join(bad)}; the heuristic decides instead")
                else:
                    out.append(table)
        for path in sorted(self.tables_dir.glob("*.json")) if self.shipped else ():
            table = _read(path)
            if table is None:
                continue
            if (table.gpu_name, table.compute_capability) != (
                identity["gpu_name"],
                identity["compute_capability"],
            ):
                continue  # another GPU's table
            bad = table.problems(identity)
            if bad:
                _warn(f"shipped tuned table {path.name} ignored: {'; '.join(bad)}")
            else:
                out.append(table)
        return out

    def lookup(self, op: str, dtype: str, d: int, device) -> TableChoice | None:
        for table in self.tables(device):
            e = table.lookup(op, dtype, d)
            if e is not None:
                if e.changed and e.verified_margin is not None:
                    margin = f", {e.verified_margin:+.1%} vs heuristic (verified)"
                else:
                    margin = "" if e.margin is None else f", {e.margin:+.1%} vs heuristic"
                source = f"{table.label()}, bucket D={e.bucket}{margin}"
                return TableChoice(e.variant, e.config, source)
        return None


def _warn(message: str) -> None:
    warnings.warn(message, TunedTableWarning, stacklevel=4)


def _read(path: Path) -> TableFile | None:
    try:
        return TableFile.load(path)
    except InvalidArgumentError as e:
        _warn(f"tuned table ignored: {e}")
        return None
