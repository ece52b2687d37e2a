"""The tuner's bookkeeping: the cells of a run, the configurations worth timing,
the resumable record of measurements, the expected results a configuration is
checked against, and the tuned table made from them.

``scripts/tune_kernels.py`` drives it on a GPU; the table format it writes is
:mod:`xpu_stone.kernels.tuned_table`. The check's expected results come from the
independent float64 references of :mod:`xpu_stone.reference` (with autograd for
the gradients), never from the kernels' own maths or its CPU transcription, so a
formula wrong in the kernels cannot pass its own check.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from .._deps import torch
from ..errors import InvalidArgumentError
from ..reference import convert as _ref_convert
from ..reference import klein as _ref_klein
from ..reference import lorentz as _ref_lorentz
from ..reference import poincare as _ref_poincare
from .dispatcher import heuristic
from .registry import REGISTRY, VEC_WIDTH, LaunchConfig, OpKernels
from .tuned_table import Entry, TableFile, config_list, library_version, slug

__all__ = [
    "CACHE_FORMAT",
    "DEFAULT_MIN_MARGIN",
    "Cell",
    "candidates",
    "plan",
    "estimate_seconds",
    "record_key",
    "reference_outputs",
    "TuneCache",
    "cache_path",
    "default_cache_dir",
    "choose",
    "build_table",
    "summary",
    "geomean_gain",
]

CACHE_FORMAT = "xpu_stone.TuneCache/1"
DEFAULT_MIN_MARGIN = 0.03


@dataclasses.dataclass(frozen=True)
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
                aligned = aligned and width % VEC_WIDTH[dtype] == 0  # as the engine finds it
                heur = heuristic(kernels, dtype, width, aligned)
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


REFERENCES = {
    "poincare": _ref_poincare,
    "lorentz": _ref_lorentz,
    "klein": _ref_klein,
    "convert": _ref_convert,
}
FP16_MAX = 65504.0


def reference_outputs(op, vecs, grad, c: float, t: float, eps: float):
    """What a configuration of row op ``op`` must produce on the check data: the
    forward output and the gradients of the vector inputs ``vecs`` (rounded to the
    dtype under test) for the output gradient ``grad``, from the op's function in
    :mod:`xpu_stone.reference` (``family.name``, arguments in the order of its
    ``ARG_KINDS``, ``s`` being the per-row scalar ``t``) evaluated in float64 on
    float64 copies of the same inputs, gradients by autograd. For fp16 the results
    are clamped to +-65504: an exact value beyond fp16's range rounds to inf and
    the kernels store it saturated, so that is the right answer to compare with."""
    fn = getattr(REFERENCES[op.family], op.name)
    exact = [v.detach().double().requires_grad_() for v in vecs]
    pending = iter(exact)
    args = [t if k == "s" else next(pending) for k in REFERENCES[op.family].ARG_KINDS[op.name]]
    with torch.enable_grad():
        out = fn(*args, c=c, eps=eps) if op.uses_eps else fn(*args, c=c)
        grads = torch.autograd.grad(out, exact, grad.double(), allow_unused=True)
    grads = [torch.zeros_like(v) if g is None else g for g, v in zip(grads, exact)]
    out = out.detach()
    if vecs[0].dtype == torch.float16:
        out, grads = out.clamp(-FP16_MAX, FP16_MAX), [g.clamp(-FP16_MAX, FP16_MAX) for g in grads]
    return out, grads


def record_key(cell_key: str, variant: str, cfg: LaunchConfig) -> str:
    return f"{cell_key}|{variant}|{','.join(map(str, config_list(cfg)))}"


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
        rec = {"cell": cell.key, "variant": variant, "config": config_list(cfg), **result}
        self.records[record_key(cell.key, variant, cfg)] = rec
        self._append(rec)
        return rec

    def get_verified(self, cell: Cell, variant: str, cfg: LaunchConfig) -> dict | None:
        """The verification record of the cell's winner ``(variant, cfg)``, if made."""
        return self.verified.get(record_key(cell.key, variant, cfg))

    def add_verified(
        self, cell: Cell, variant: str, cfg: LaunchConfig, winner_ms: float, heuristic_ms: float
    ) -> dict:
        rec = {"cell": cell.key, "variant": variant, "config": config_list(cfg), "kind": "verify",
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
                        "config": config_list(cfg),
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


def merge(old: TableFile, new: TableFile) -> TableFile:
    """``new`` with ``old``'s entries and failures of the dtypes ``new`` did not tune: a
    run over some dtypes (``--dtypes float16 bfloat16``) completes a table tuned over the
    others. Both must be of one GPU, library version, problem and set of ops and buckets
    (a kept entry must not take a version it was not made by); the header (date,
    driver) is ``new``'s."""
    for what in ("gpu_name", "compute_capability", "library_version", "buckets", "problem", "variants"):
        if getattr(old, what) != getattr(new, what):
            raise InvalidArgumentError(
                f"cannot merge tuned tables that differ in {what}: {getattr(old, what)!r} and {getattr(new, what)!r}"
            )
    tuned = {dtype for _op, dtype, _b in new.entries} | {f["dtype"] for f in new.failed}
    entries = {k: e for k, e in old.entries.items() if k[1] not in tuned}
    entries.update(new.entries)
    failed = [f for f in old.failed if f["dtype"] not in tuned] + list(new.failed)
    return dataclasses.replace(new, entries=entries, failed=failed, path="")


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
