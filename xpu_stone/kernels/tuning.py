"""Per-GPU tuned tables: their format, validation, loading, and the tuner's bookkeeping.

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

The dispatcher's :class:`AutoTable` finds, on the first dispatch on a device,
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

import datetime as _dt
import hashlib
import json
import math
import os
import threading
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidArgumentError
from . import dispatcher
from .registry import REGISTRY, VEC_WIDTH, LaunchConfig, OpKernels

FORMAT = "xpu_stone.TunedTable/1"
CACHE_FORMAT = "xpu_stone.TuneCache/1"
ENV_VAR = "XPU_STONE_TUNED_TABLE"
OFF_VALUES = ("none", "off")
TABLES_DIR = Path(__file__).resolve().parent / "tables"
DEFAULT_BUCKETS = (16, 64, 256, 1024, 4096)
DEFAULT_MIN_MARGIN = 0.03
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
    from .._deps import cupy

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
    from .. import __version__

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


def _config_list(cfg: LaunchConfig) -> list[int]:
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
            "config": _config_list(self.config),
            "fwd_ms": self.fwd_ms,
            "bwd_ms": self.bwd_ms,
            "heuristic_variant": self.heuristic_variant,
            "heuristic_config": None
            if self.heuristic_config is None
            else _config_list(self.heuristic_config),
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
            if variant is None:
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
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> TableFile:
        """Reads a table; :class:`~xpu_stone.errors.InvalidArgumentError` if it is malformed."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InvalidArgumentError(f"cannot read tuned table {path}: {e}") from e
        return cls.from_dict(data, str(path))


# ------------------------------------------------------- the dispatcher's table
class AutoTable(dispatcher.TunedTable):
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

    def lookup(self, op: str, dtype: str, d: int, device) -> dispatcher.TableChoice | None:
        for table in self.tables(device):
            e = table.lookup(op, dtype, d)
            if e is not None:
                if e.changed and e.verified_margin is not None:
                    margin = f", {e.verified_margin:+.1%} vs heuristic (verified)"
                else:
                    margin = "" if e.margin is None else f", {e.margin:+.1%} vs heuristic"
                source = f"{table.label()}, bucket D={e.bucket}{margin}"
                return dispatcher.TableChoice(e.variant, e.config, source)
        return None


def _warn(message: str) -> None:
    warnings.warn(message, TunedTableWarning, stacklevel=4)


def _read(path: Path) -> TableFile | None:
    try:
        return TableFile.load(path)
    except InvalidArgumentError as e:
        _warn(f"tuned table ignored: {e}")
        return None


def use_table(path: str | Path | None) -> None:
    """Serves every device from the table at ``path`` (if it matches the GPU),
    then the shipped tables; None goes back to the automatic choice."""
    dispatcher.set_tuned_table(None if path is None else AutoTable([path]))


# ------------------------------------------------------- the tuner's bookkeeping
@dataclass(frozen=True)
class Cell:
    """One (op, dtype, bucket) of a tuning run. ``width``: the row length the
    dispatcher sees (``bucket`` plus the op's input shift); ``candidates``: the
    (variant, configuration) pairs to try; ``heuristic``: the dispatcher's choice."""

    op: str
    dtype: str
    bucket: int
    width: int
    aligned: bool
    candidates: tuple[tuple[str, LaunchConfig], ...]
    heuristic: tuple[str, LaunchConfig]

    @property
    def key(self) -> str:
        return f"{self.op}|{self.dtype}|{self.bucket}"


def candidates(kernels: OpKernels, dtype: str, width: int, aligned: bool) -> list[tuple[str, LaunchConfig]]:
    """The configurations worth timing for rows of ``width``: of each variant
    that takes the input, every looping configuration and, per thread layout,
    the register-cached one with the fewest chunks that holds the row (more
    chunks only hold more registers)."""
    out = []
    for v in kernels.variants:
        if v.vectorized and not aligned:
            continue
        smallest: dict[tuple[int, int, int], LaunchConfig] = {}
        for cfg in v.configs(dtype):
            if cfg.iters == 0:
                out.append((v.name, cfg))
            elif cfg.covers(width):
                layout = (cfg.threads, cfg.vec, cfg.block)
                if layout not in smallest or cfg.iters < smallest[layout].iters:
                    smallest[layout] = cfg
        out += [(v.name, cfg) for cfg in smallest.values()]
    return out


def plan(
    ops: Iterable[str],
    dtypes: Iterable[str],
    buckets: Iterable[int],
    row_width: Callable[[str, int], tuple[int, bool]] | None = None,
) -> list[Cell]:
    """The cells of a run. ``row_width(op, d)`` gives the dispatcher's row length
    and whether contiguous inputs of ``d`` features can be aligned (default
    ``(d, True)``); rows whose length is not a multiple of the vector width never are."""
    cells = []
    for op in ops:
        kernels = REGISTRY.get(op)
        if not isinstance(kernels, OpKernels):
            raise InvalidArgumentError(f"{op!r} is not a row-wise op; only those are tuned")
        for dtype in dtypes:
            for d in buckets:
                width, aligned = row_width(op, d) if row_width else (d, True)
                aligned = aligned and width % VEC_WIDTH[dtype] == 0  # as rowwise._prepare finds it
                heur = dispatcher.heuristic(kernels, dtype, width, aligned)
                cands = candidates(kernels, dtype, width, aligned)
                if heur not in cands:
                    cands.append(heur)
                cells.append(Cell(op, dtype, d, width, aligned, tuple(cands), heur))
    return cells


def estimate_seconds(
    cells: list[Cell], bytes_per_call: float, calls_per_config: int, gbps: float = 3000.0
) -> float:
    """Rough wall time of a run: kernel time (forward moves ``bytes_per_call``,
    backward about twice that, each timed ``calls_per_config`` times) plus
    measured fixed costs (kernel loads and the check: ~25 ms a configuration;
    inputs and the float64 reference: ~150 ms a cell)."""
    n = sum(len(c.candidates) for c in cells)
    kernel_s = n * calls_per_config * 3 * bytes_per_call / (gbps * 1e9)
    return kernel_s + 0.025 * n + 0.15 * len(cells)


def record_key(cell_key: str, variant: str, cfg: LaunchConfig) -> str:
    return f"{cell_key}|{variant}|{','.join(map(str, _config_list(cfg)))}"


class TuneCache:
    """The measurements of a run, one JSON line each, appended as they are made,
    so an interrupted run resumes where it stopped. The first line names the
    device and problem; a file made for another one is moved aside.

    A record: ``{"cell", "variant", "config", "status": "ok" | "wrong" | "failed",
    "fwd_ms", "bwd_ms", "fwd_err", "bwd_err", "error"}``. A verification record
    (a cell's winner timed again against the heuristic, see :meth:`add_verified`)
    has ``"kind": "verify"`` and ``"winner_ms", "heuristic_ms"``; a resumed run
    reuses it, so it writes the same table.
    """

    def __init__(self, path: str | Path, header: dict):
        self.path = Path(path)
        self.header = {"format": CACHE_FORMAT, **header}
        self.records: dict[str, dict] = {}
        self.verified: dict[str, dict] = {}
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        if lines and _parse(lines[0]) != self.header:
            self.path.replace(self.path.with_suffix(self.path.suffix + ".old"))
            lines = []
        for line in lines[1:]:
            rec = _parse(line)  # a line cut by an interruption parses to None
            if isinstance(rec, dict) and "cell" in rec:
                key = record_key(rec["cell"], rec["variant"], LaunchConfig(*rec["config"]))
                (self.verified if rec.get("kind") == "verify" else self.records)[key] = rec
        if not lines:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.header) + "\n")

    def get(self, cell: Cell, variant: str, cfg: LaunchConfig) -> dict | None:
        return self.records.get(record_key(cell.key, variant, cfg))

    def add(self, cell: Cell, variant: str, cfg: LaunchConfig, **result) -> dict:
        rec = {"cell": cell.key, "variant": variant, "config": _config_list(cfg), **result}
        self.records[record_key(cell.key, variant, cfg)] = rec
        self._append(rec)
        return rec

    def get_verified(self, cell: Cell, variant: str, cfg: LaunchConfig) -> dict | None:
        """The verification record of the cell's winner ``(variant, cfg)``, if made."""
        return self.verified.get(record_key(cell.key, variant, cfg))

    def add_verified(
        self, cell: Cell, variant: str, cfg: LaunchConfig, winner_ms: float, heuristic_ms: float
    ) -> dict:
        rec = {"cell": cell.key, "variant": variant, "config": _config_list(cfg), "kind": "verify",
               "winner_ms": winner_ms, "heuristic_ms": heuristic_ms}  # fmt: skip
        self.verified[record_key(cell.key, variant, cfg)] = rec
        self._append(rec)
        return rec

    def _append(self, rec: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")


def _parse(line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def cache_path(folder: str | Path, identity: dict, problem: dict) -> Path:
    """The cache file of one device and problem."""
    digest = hashlib.sha256(json.dumps([problem, library_version()], sort_keys=True).encode()).hexdigest()
    cc = identity["compute_capability"].replace(".", "")
    return Path(folder) / f"{slug(identity['gpu_name'])}-sm{cc}-{digest[:12]}.jsonl"


def default_cache_dir() -> Path:
    root = os.environ.get("XPU_STONE_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "xpu_stone") / "tuning"


def choose(cell: Cell, cache: TuneCache, min_margin: float = DEFAULT_MIN_MARGIN) -> Entry | None:
    """The cell's entry from its measurements: the fastest configuration whose
    output passed its check (forward + backward time), unless it beats the
    heuristic's choice by less than ``min_margin``, in which case the heuristic's
    stays (timing noise must not move a choice). None if nothing passed."""
    ok = []
    for variant, cfg in cell.candidates:
        rec = cache.get(cell, variant, cfg)
        if rec is not None and rec["status"] == "ok":
            ok.append((rec["fwd_ms"] + rec["bwd_ms"], variant, cfg, rec))
    if not ok:
        return None
    best = min(ok, key=lambda r: r[0])
    heur = next((r for r in ok if (r[1], r[2]) == cell.heuristic), None)
    if heur is not None and heur[0] <= best[0] * (1 + min_margin):
        best = heur
    _, variant, cfg, rec = best
    return Entry(
        cell.op,
        cell.dtype,
        cell.bucket,
        variant,
        cfg,
        rec["fwd_ms"],
        rec["bwd_ms"],
        cell.heuristic[0],
        cell.heuristic[1],
        None if heur is None else heur[0],
    )


def build_table(
    cells: list[Cell],
    cache: TuneCache,
    identity: dict,
    problem: dict,
    min_margin: float = DEFAULT_MIN_MARGIN,
    date: str | None = None,
) -> TableFile:
    """The tuned table of a finished (or replayed) run."""
    entries, failed = {}, []
    for cell in cells:
        e = choose(cell, cache, min_margin)
        if e is not None:
            entries[(e.op, e.dtype, e.bucket)] = e
        for variant, cfg in cell.candidates:
            rec = cache.get(cell, variant, cfg)
            if rec is not None and rec["status"] != "ok":
                failed.append(
                    {
                        "op": cell.op,
                        "dtype": cell.dtype,
                        "bucket": cell.bucket,
                        "variant": variant,
                        "config": _config_list(cfg),
                        "status": rec["status"],
                        "error": rec.get("error", ""),
                    }
                )
    ops = sorted({c.op for c in cells})
    return TableFile(
        gpu_name=identity["gpu_name"],
        compute_capability=identity["compute_capability"],
        driver=identity.get("driver"),
        library_version=library_version(),
        date=date or _dt.date.today().isoformat(),
        buckets=tuple(sorted({c.bucket for c in cells})),
        variants={op: [v.name for v in REGISTRY.get(op).variants] for op in ops},
        entries=entries,
        problem=problem,
        failed=failed,
    )


def summary(table: TableFile) -> str:
    """Cells, tuned cells, geometric-mean speed-up over the heuristic (of the
    selection's timings, and of the verification pass where it ran), the worst
    cell, failures."""
    entries = list(table.entries.values())
    margins = [e.margin for e in entries if e.margin is not None]
    changed = sum(1 for e in entries if e.changed)
    no_heur = sum(1 for e in entries if e.heuristic_ms is None)
    text = (
        f"{len(entries)} cells, {changed} differ from the heuristic; geometric-mean speed-up over "
        f"the heuristic {geomean_gain(margins):+.1%}, worst cell {min(margins, default=0.0):+.1%}"
    )
    verified = [e.verified_margin for e in entries if e.verified_margin is not None]
    if any(e.changed and e.verified_ms is not None for e in entries):
        text += (
            f"; verification pass over {len(verified)} cells: {geomean_gain(verified):+.1%}, "
            f"worst cell {min(verified, default=0.0):+.1%}"
        )
    text += f"; {len(table.failed)} configurations failed or were wrong"
    if no_heur:
        text += f"; in {no_heur} cells the heuristic's own configuration failed"
    return text


def geomean_gain(margins: Iterable[float]) -> float:
    """exp(mean(log(1 + m))) - 1 of speed-up margins ``m`` (0 for none)."""
    logs = [math.log1p(m) for m in margins]
    return math.exp(sum(logs) / len(logs)) - 1 if logs else 0.0
