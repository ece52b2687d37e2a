"""Per-GPU tuned tables: their format, validation, and the table the dispatcher reads.

``scripts/tune_kernels.py`` times every variant and launch configuration of the
row-wise ops on one GPU and writes a *tuned table*: for each (op, dtype,
feature-size bucket) the fastest configuration that computed the right answer,
its time, and its margin over the dispatcher's heuristic choice,

.. math:: \\text{margin} = t_\\text{heuristic} / t_\\text{winner} - 1,

with t the forward plus backward kernel time. A cell whose winner is not the
heuristic's configuration is timed again, both configurations alternating, after
the sweep (``verified_*``): the sweep's own times favour whichever configuration
was lucky, and a winner slower than the heuristic there is dropped. JSON, format ``xpu_stone.TunedTable/1``::

    {"format": "xpu_stone.TunedTable/1",
     "gpu_name": "NVIDIA H200", "compute_capability": "9.0", "driver": 13000,
     "library_version": "0.1.0", "date": "2026-11-23",
     "buckets": [16, 64, 256, 1024, 4096],
     "problem": {...},                         # what was timed (bytes a call, repetitions)
     "variants": {"poincare_dist": ["rows_per_warp", ...], ...},   # what was swept
     "entries": [{"op": "poincare_dist", "dtype": "float32", "bucket": 64,
                  "variant": "warp_per_row", "config": [32, 1, 4, 256],   # threads, iters, vec, block
                  "fwd_ms": ..., "bwd_ms": ..., "heuristic_variant": ..., "heuristic_config": [...],
                  "heuristic_ms": ..., "margin": 0.07,
                  "verified_ms": ..., "verified_heuristic_ms": ...}, ...],   # second timing
     "failed": [{"op": ..., "dtype": ..., "bucket": ..., "variant": ..., "config": [...],
                 "status": "wrong" or "failed", "error": ...}, ...]}

The dispatcher's :class:`~xpu_stone.kernels.auto_table.AutoTable` finds, on the first dispatch on a device,
the shipped table of that GPU (``xpu_stone/kernels/tables/*.json``, matched by
GPU name and compute capability) and the user tables named by
``XPU_STONE_TUNED_TABLE`` (paths separated by ``os.pathsep``; ``none`` switches
the automatic tables off, shipped ones included, leaving only a table given to
:func:`use_table`); user tables come first. A table made
on another GPU, by another library version, or over another set of ops and
variants than the registry's is ignored with a :class:`TunedTableWarning`
(shipped tables of other GPUs are skipped silently). A call of feature size D
uses the cell of the nearest bucket (in log2 D; ties go up); anything not
covered is left to the heuristic.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .._deps import cupy
from .._version import __version__
from ..errors import InvalidArgumentError
from .compiler import write_atomic
from .registry import DTYPES, REGISTRY, LaunchConfig, OpKernels

__all__ = [
    "FORMAT",
    "ENV_VAR",
    "OFF_VALUES",
    "TABLES_DIR",
    "DEFAULT_BUCKETS",
    "TunedTableWarning",
    "device_identity",
    "library_version",
    "slug",
    "bucket_of",
    "config_list",
    "Entry",
    "TableFile",
]

FORMAT = "xpu_stone.TunedTable/1"
ENV_VAR = "XPU_STONE_TUNED_TABLE"
OFF_VALUES = ("none", "off")
TABLES_DIR = Path(__file__).resolve().parent / "tables"
DEFAULT_BUCKETS = (16, 64, 256, 1024, 4096)
_FIELDS = (
    "gpu_name",
    "compute_capability",
    "driver",
    "library_version",
    "date",
    "buckets",
    "problem",
    "variants",
    "entries",
    "failed",
)


class TunedTableWarning(UserWarning):
    """A tuned table was ignored (made for another GPU or library version, stale, or malformed)."""


# ------------------------------------------------------------------ identity
def device_identity(device) -> dict | None:
    """``{"gpu_name", "compute_capability", "driver"}`` of CUDA device ``device``
    (an index), or None when there is no usable GPU. Initialises CUDA: called
    on the first dispatch on a device, never at import."""

    if cupy is None:
        return None
    try:
        props = cupy.cuda.runtime.getDeviceProperties(int(device or 0))
        driver = cupy.cuda.runtime.driverGetVersion()
    except (RuntimeError, OSError):  # no driver, no device
        return None
    name = props["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    return {"gpu_name": name, "compute_capability": f"{props['major']}.{props['minor']}", "driver": driver}


def library_version() -> str:
    return __version__


def slug(gpu_name: str) -> str:
    """File-name form of a GPU name: ``"NVIDIA H200"`` -> ``"nvidia-h200"``."""
    return "-".join("".join(ch if ch.isalnum() else " " for ch in gpu_name.lower()).split())


def bucket_of(d: int, buckets: Iterable[int]) -> int:
    """The bucket nearest to ``d`` in log2 (ties go to the larger bucket)."""
    ld = math.log2(max(d, 1))
    return min(buckets, key=lambda b: (abs(math.log2(b) - ld), -b))


def _config(value, what: str) -> LaunchConfig:
    if not (isinstance(value, list) and len(value) == 4 and all(isinstance(v, int) for v in value)):
        raise InvalidArgumentError(f"{what} must be [threads, iters, vec, block], got {value!r}")
    return LaunchConfig(*value)


def config_list(cfg: LaunchConfig) -> list[int]:
    return [cfg.threads, cfg.iters, cfg.vec, cfg.block]


# --------------------------------------------------------------- the format
def _float_or_none(value) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class Entry:
    """The winner of one (op, dtype, bucket) cell."""

    op: str
    dtype: str
    bucket: int
    variant: str
    config: LaunchConfig
    fwd_ms: float
    bwd_ms: float
    heuristic_variant: str | None = None
    heuristic_config: LaunchConfig | None = None
    heuristic_ms: float | None = None  # None when the heuristic's configuration failed its check
    # a second, independent timing of the winner and the heuristic (the tuner's
    # verification pass): the selection's own times favour whichever was lucky
    verified_ms: float | None = None
    verified_heuristic_ms: float | None = None

    @property
    def ms(self) -> float:
        return self.fwd_ms + self.bwd_ms

    @property
    def margin(self) -> float | None:
        """heuristic time / winner time - 1 (forward + backward)."""
        return None if self.heuristic_ms is None else self.heuristic_ms / self.ms - 1

    @property
    def changed(self) -> bool:
        """Whether the winner is not the heuristic's own configuration."""
        return (self.variant, self.config) != (self.heuristic_variant, self.heuristic_config)

    @property
    def verified_margin(self) -> float | None:
        """The margin of the verification pass; 0 for a cell the heuristic kept."""
        if not self.changed:
            return 0.0
        if self.verified_ms is None or self.verified_heuristic_ms is None:
            return None
        return self.verified_heuristic_ms / self.verified_ms - 1

    def to_dict(self) -> dict:
        return {
            "op": self.op,
            "dtype": self.dtype,
            "bucket": self.bucket,
            "variant": self.variant,
            "config": config_list(self.config),
            "fwd_ms": self.fwd_ms,
            "bwd_ms": self.bwd_ms,
            "heuristic_variant": self.heuristic_variant,
            "heuristic_config": None if self.heuristic_config is None else config_list(self.heuristic_config),
            "heuristic_ms": self.heuristic_ms,
            "margin": self.margin,
            "verified_ms": self.verified_ms,
            "verified_heuristic_ms": self.verified_heuristic_ms,
        }

    @classmethod
    def from_dict(cls, e: dict) -> Entry:
        try:
            hc = e.get("heuristic_config")
            return cls(
                op=str(e["op"]),
                dtype=str(e["dtype"]),
                bucket=int(e["bucket"]),
                variant=str(e["variant"]),
                config=_config(e["config"], "config"),
                fwd_ms=float(e["fwd_ms"]),
                bwd_ms=float(e["bwd_ms"]),
                heuristic_variant=e.get("heuristic_variant"),
                heuristic_config=None if hc is None else _config(hc, "heuristic_config"),
                heuristic_ms=_float_or_none(e.get("heuristic_ms")),
                verified_ms=_float_or_none(e.get("verified_ms")),
                verified_heuristic_ms=_float_or_none(e.get("verified_heuristic_ms")),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise InvalidArgumentError(f"bad tuned-table entry {e!r}: {err}") from None


@dataclass
class TableFile:
    """One tuned table (see the module docstring for the JSON form)."""

    gpu_name: str
    compute_capability: str
    driver: int | None
    library_version: str
    date: str
    buckets: tuple[int, ...]
    variants: dict[str, list[str]]
    entries: dict[tuple[str, str, int], Entry]
    problem: dict = field(default_factory=dict)
    failed: list[dict] = field(default_factory=list)
    path: str = ""

    def lookup(self, op: str, dtype: str, d: int) -> Entry | None:
        return self.entries.get((op, dtype, bucket_of(d, self.buckets)))

    def label(self) -> str:
        return f"{self.path or 'tuned table'} ({self.gpu_name}, {self.date})"

    # ------------------------------------------------------- validation
    def problems(self, identity: dict | None, version: str | None = None) -> list[str]:
        """Why the table cannot serve the GPU of ``identity`` under library
        ``version`` (default: this one) and the current registry; empty if it can."""
        out = []
        if identity is None:
            return ["no CUDA GPU to check it against"]
        if self.gpu_name != identity["gpu_name"]:
            out.append(f"made on {self.gpu_name!r}, this GPU is {identity['gpu_name']!r}")
        if self.compute_capability != identity["compute_capability"]:
            out.append(
                f"made for compute capability {self.compute_capability}, "
                f"this GPU has {identity['compute_capability']}"
            )
        version = version or library_version()
        if self.library_version != version:
            out.append(f"made by xpu_stone {self.library_version}, this is {version}: re-tune")
        return out + self.registry_problems()

    def registry_problems(self) -> list[str]:
        """Ops, variants or configurations of the table that the registry no longer has."""
        out = []
        for op, names in sorted(self.variants.items()):
            kernels = REGISTRY.ops.get(op)
            if not isinstance(kernels, OpKernels):
                out.append(f"op {op!r} is not a registered row-wise op")
                continue
            now = [v.name for v in kernels.variants]
            if list(names) != now:
                out.append(f"op {op!r} was tuned over variants {list(names)}, it now has {now}")
        for (op, dtype, bucket), e in sorted(self.entries.items()):
            if op not in self.variants:
                out.append(f"entry {op}/{dtype}/D={bucket}: op not among the table's variants")
                continue
            kernels = REGISTRY.ops.get(op)
            if not isinstance(kernels, OpKernels):
                continue  # reported above
            variant = next((v for v in kernels.variants if v.name == e.variant), None)
            if dtype not in DTYPES:
                out.append(f"entry {op}/{dtype}/D={bucket}: unknown dtype")
            elif variant is None:
                out.append(f"entry {op}/{dtype}/D={bucket}: unknown variant {e.variant!r}")
            elif e.config not in variant.configs(dtype):
                out.append(f"entry {op}/{dtype}/D={bucket}: {e.variant} has no configuration {e.config}")
        return out

    # ------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "gpu_name": self.gpu_name,
            "compute_capability": self.compute_capability,
            "driver": self.driver,
            "library_version": self.library_version,
            "date": self.date,
            "buckets": list(self.buckets),
            "problem": self.problem,
            "variants": {op: list(v) for op, v in sorted(self.variants.items())},
            "entries": [e.to_dict() for _, e in sorted(self.entries.items())],
            "failed": self.failed,
        }

    @classmethod
    def from_dict(cls, data, path: str = "") -> TableFile:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise InvalidArgumentError(f"{path or 'document'} is not a tuned table (format {FORMAT!r})")
        missing = [k for k in _FIELDS if k not in data]
        if missing:
            raise InvalidArgumentError(f"{path or 'tuned table'} lacks fields {missing}")
        entries = {}
        for raw in data["entries"]:
            e = Entry.from_dict(raw)
            entries[(e.op, e.dtype, e.bucket)] = e
        buckets = tuple(int(b) for b in data["buckets"])
        if not buckets or any(b < 1 for b in buckets):
            raise InvalidArgumentError(f"{path or 'tuned table'}: buckets must be positive, got {buckets}")
        return cls(
            gpu_name=str(data["gpu_name"]),
            compute_capability=str(data["compute_capability"]),
            driver=data["driver"],
            library_version=str(data["library_version"]),
            date=str(data["date"]),
            buckets=buckets,
            variants={str(k): list(v) for k, v in data["variants"].items()},
            entries=entries,
            problem=dict(data["problem"]),
            failed=list(data["failed"]),
            path=path,
        )

    def save(self, path: str | Path) -> None:
        write_atomic(Path(path), (json.dumps(self.to_dict(), indent=1) + "\n").encode())

    @classmethod
    def load(cls, path: str | Path) -> TableFile:
        """Reads a table; :class:`~xpu_stone.errors.InvalidArgumentError` if it is malformed."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InvalidArgumentError(f"cannot read tuned table {path}: {e}") from e
        return cls.from_dict(data, str(path))
