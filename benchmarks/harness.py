"""The benchmark harness every xpu_stone benchmark uses.

Timing follows the device METHOD: CUDA events around each call, warm-up
first, the median of many calls, and inputs rotated over enough sets that their
bytes exceed the L2 cache several times. A device-to-device copy is measured in
the same run, so every bandwidth figure is also given as a share of what the
device's memory moved in that run.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from xpu_stone.kernels.compiler import write_atomic


def result_stem(bench: str, gpu: str, date: str) -> str:
    """``<bench>-<gpu with underscores>-<date>``: the name of a result file under
    ``benchmarks/results/`` (what ``scripts/bench_report.py`` reads back)."""
    return f"{bench}-{gpu.replace(' ', '_')}-{date}"


@dataclass
class Row:
    op: str
    impl: str  # "xpu_stone", "torch_eager", "torch_compile", "geoopt", "copy"
    mode: str  # "fwd" or "fwd+bwd"
    dtype: str
    shape: tuple
    bytes: int
    ms: float
    gbps: float = 0.0
    pct_copy: float = 0.0
    note: str = ""


@dataclass
class Report:
    name: str
    rows: list[Row] = field(default_factory=list)
    copy_gbps: float = 0.0
    meta: dict = field(default_factory=dict)
    # seconds per implementation and mode of the cell being measured (sweep prints them)
    cell_seconds: dict = field(default_factory=dict, repr=False)

    def add(self, row: Row) -> Row:
        row.gbps = row.bytes / (row.ms * 1e-3) / 1e9 if row.ms > 0 else 0.0
        row.pct_copy = 100.0 * row.gbps / self.copy_gbps if self.copy_gbps else 0.0
        self.rows.append(row)
        return row

    def write(self, folder: str | Path) -> tuple[Path, Path]:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        stem = result_stem(self.name, self.meta.get("gpu", "cpu"), self.meta.get("date", "undated"))
        stem += f"-{self.meta['suffix']}" if self.meta.get("suffix") else ""
        js = folder / f"{stem}.json"
        doc = {"meta": self.meta, "copy_gbps": self.copy_gbps, "rows": [asdict(r) for r in self.rows]}
        # atomic: a run killed by its time limit mid-write leaves the previous file whole for --resume
        write_atomic(js, json.dumps(doc, indent=1).encode())
        md = folder / f"{stem}.md"
        write_atomic(md, self.markdown().encode())
        return js, md

    def markdown(self) -> str:
        m = self.meta
        copy = (
            f"copy {self.copy_gbps:.0f} GB/s (read + write)"
            if self.copy_gbps
            else "copy bandwidth not measured"
        )
        lines = [
            f"# {self.name}",
            "",
            f"{m.get('gpu')} · {m.get('date')} · torch {m.get('torch')} · CuPy {m.get('cupy')} · "
            f"CUDA {m.get('cuda')} · {copy}",
            "",
            "| op | mode | dtype | shape | impl | ms | GB/s | % copy | note |",
            "|---|---|---|---|---|---:|---:|---:|---|",
        ]
        for r in self.rows:
            # a row that moves no counted bytes (a host-time stage), or a run without a copy
            # figure, has no bandwidth to state: a dash, not 0
            gbps = f"{r.gbps:.0f}" if r.bytes else "—"
            pct = f"{r.pct_copy:.1f}" if r.bytes and self.copy_gbps else "—"
            lines.append(
                f"| {r.op} | {r.mode} | {r.dtype} | {'x'.join(map(str, r.shape))} | {r.impl} | "
                f"{r.ms:.4f} | {gbps} | {pct} | {r.note} |"
            )
        return "\n".join(lines) + "\n"


def environment() -> dict:
    try:
        import cupy

        cupy_version = cupy.__version__
    except ImportError:
        cupy_version = None
    props = torch.cuda.get_device_properties(0) if torch.cuda.is_available() else None
    return {
        "gpu": props.name if props else "cpu",
        "sm_count": props.multi_processor_count if props else None,
        "date": _dt.date.today().isoformat(),
        "torch": torch.__version__,
        "cupy": cupy_version,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }


def time_calls(fn, inputs: list, warmup: int = 5, reps: int = 40, budget_ms: float | None = None) -> float:
    """Median ms of ``fn(*inputs[i % len(inputs)])`` over ``reps`` calls, CUDA events.
    ``budget_ms``: a slow ``fn`` gets fewer calls, about ``budget_ms`` of them in all
    but never under 10 (the last warm-up call, timed alone, gives the estimate: it needs
    two warm-up calls, the first of which may compile)."""
    if budget_ms is not None and warmup < 2:
        raise ValueError(f"budget_ms needs at least 2 warm-up calls, got warmup={warmup}")
    for i in range(warmup):
        if budget_ms is not None and i == warmup - 1:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(*inputs[i % len(inputs)])
            end.record()
            end.synchronize()
            reps = max(min(reps, 10), min(reps, int(budget_ms / max(start.elapsed_time(end), 1e-3))))
        else:
            fn(*inputs[i % len(inputs)])
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        args = inputs[i % len(inputs)]
        starts[i].record()
        fn(*args)
        ends[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def synchronize(device) -> None:
    """Waits for the work queued on ``device`` (a CPU has none queued)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def synced_wall_ms(fn, reps: int, device) -> list[float]:
    """Wall-clock ms of each of ``reps`` calls of ``fn()``, the device synchronised
    before and after each: for units of work long enough that the clock's
    resolution and the synchronisation do not matter (a whole training epoch), on
    a GPU or the CPU. Warm up before calling this."""
    out = []
    for _ in range(reps):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def rotations(set_bytes: int, l2_bytes: int | None = None) -> int:
    """How many input sets to rotate so that they exceed the L2 cache 4 times over."""
    if l2_bytes is None:
        l2_bytes = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 64 << 20)
    return max(2, min(16, -(-4 * l2_bytes // max(set_bytes, 1))))


def measure_copy(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in GB/s, counting bytes read plus written."""
    src = [torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_() for _ in range(2)]
    dst = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    ms = time_calls(lambda s: dst.copy_(s), [(s,) for s in src], warmup=3, reps=20)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def host_time_us(fn, args, calls: int = 2000) -> float:
    """Median host time per call in microseconds (the GPU work is tiny)."""
    for _ in range(100):
        fn(*args)
    torch.cuda.synchronize()
    samples = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn(*args)
        samples.append((time.perf_counter() - t0) / calls * 1e6)
        torch.cuda.synchronize()
    return statistics.median(samples)


def fwd_bwd(fn):
    """fn followed by the gradients of its output (ones) with respect to its tensor inputs
    that require grad."""

    def run(*args):
        tensors = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
        out = fn(*args)
        return torch.autograd.grad(out, tensors, torch.ones_like(out))

    return run


def configure_dynamo() -> None:
    """Room for one compiled graph per benchmarked shape. Every compiled reference is a
    fresh ``torch.compile`` of the same function; without this, dynamo stops compiling
    after 8 shapes of it and silently runs the rest eagerly."""
    torch._dynamo.config.cache_size_limit = 1024
    torch._dynamo.config.accumulated_cache_size_limit = 4096


def compiled(fn):
    """``torch.compile(fn, dynamic=False, fullgraph=True)``: one graph per shape, and a
    graph break raises (the benchmark records the cell as failed) instead of running
    part of the formula eagerly."""
    return torch.compile(fn, dynamic=False, fullgraph=True)


def _graphs_captured() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def bench_impls(
    report,
    op,
    impls,
    sets,
    fwd_bytes,
    bwd_bytes,
    dtype_name,
    shape,
    reps=25,
    warm_only=False,
    budget_ms=250.0,
):
    """Times each implementation forward (no grad) and forward+backward over the
    rotating argument ``sets``; a failing one is reported as failed, not lost. A
    ``torch_compile`` implementation whose first call captured no new graph ran
    eagerly: its row is marked invalid. A slow implementation (torch eager, geoopt) gets
    fewer timed calls, about ``budget_ms`` of them, at least 10 (:func:`time_calls`).
    ``warm_only``: call each implementation once per mode and time nothing (what
    :func:`precompile`'s workers do; ``report`` unused)."""
    grad_sets = [
        tuple(a.detach().requires_grad_() if isinstance(a, torch.Tensor) else a for a in s) for s in sets
    ]
    for impl, fn in impls.items():
        for mode, f, args, nbytes in (
            ("fwd", fn, sets, fwd_bytes),
            ("fwd+bwd", fwd_bwd(fn), grad_sets, fwd_bytes + bwd_bytes),
        ):
            t0 = time.perf_counter()
            try:
                with torch.no_grad() if mode == "fwd" else torch.enable_grad():
                    if warm_only:
                        f(*args[0])
                        continue
                    graphs = _graphs_captured()
                    ms = time_calls(f, args, warmup=3, reps=reps, budget_ms=budget_ms)
                note = ""
                if impl == "torch_compile" and _graphs_captured() == graphs:
                    note = "invalid: torch.compile captured no graph for this shape (ran eagerly)"
                report.add(Row(op, impl, mode, dtype_name, shape, nbytes, ms, note=note))
            except Exception as e:
                if warm_only:
                    print(f"warm-up of {op} {impl} {mode} failed: {type(e).__name__}: {e}", file=sys.stderr)
                    continue
                report.add(
                    Row(op, impl, mode, dtype_name, shape, nbytes, 0.0, note=f"failed: {type(e).__name__}")
                )
            if report is not None:  # wall seconds of this implementation and mode, compiling included
                report.cell_seconds[f"{impl} {mode}"] = round(time.perf_counter() - t0, 2)


def _warm_cell(module: str, cell: tuple, target_bytes: float) -> tuple:
    import importlib

    op, dtype, d = cell
    importlib.import_module(module).bench_op(
        None, op, getattr(torch, dtype), d, target_bytes, True, warm_only=True
    )
    return cell


def precompile(module: str, cells: list[tuple], workers: int, target_bytes: float) -> float:
    """Compiles the graphs of every cell ``(op, dtype name, D)`` of ``module``'s
    ``bench_op`` in ``workers`` processes before anything is timed: each worker calls
    every implementation once per mode (``bench_impls(warm_only=True)``), so that
    torch.compile's caches on disk (FX graph, AOTAutograd and Triton caches) and the
    kernel cache hold them and the timed run's fresh compiles are cache hits. Nothing is
    timed while the workers run. Returns the seconds taken; prints progress."""
    import concurrent.futures as cf
    import multiprocessing as mp

    t0 = time.perf_counter()
    # each worker compiles with one thread: `workers` processes already fill the CPUs
    before = os.environ.get("TORCHINDUCTOR_COMPILE_THREADS")
    os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
    try:
        with cf.ProcessPoolExecutor(
            workers, mp_context=mp.get_context("spawn"), initializer=configure_dynamo
        ) as ex:
            futures = {ex.submit(_warm_cell, module, cell, target_bytes): cell for cell in cells}
            for i, fut in enumerate(cf.as_completed(futures), 1):
                op, dtype, d = futures[fut]
                try:
                    fut.result()
                    what = "precompiled"
                except Exception as e:  # the timed run compiles that cell itself (and records a failure)
                    what = f"precompile failed ({type(e).__name__}: {str(e)[:120]})"
                print(f"{what} {i}/{len(cells)}: {op} {dtype} D={d} ({time.perf_counter() - t0:.0f} s)",
                      file=sys.stderr, flush=True)  # fmt: skip
    finally:
        if before is None:
            os.environ.pop("TORCHINDUCTOR_COMPILE_THREADS", None)
        else:
            os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = before
    return time.perf_counter() - t0


def sweep(
    report,
    ops,
    dtypes,
    dims,
    compare_ops,
    compare_dims,
    target_gb,
    bench_op,
    precompile_in=None,
    checkpoint=None,
    done=frozenset(),
) -> None:
    """``bench_op(report, op, dtype, d, target_bytes, compare)`` over every op x dtype x D
    (each once), comparing against the alternatives for ``compare_ops`` at ``compare_dims``.
    ``precompile_in``: ``(module, workers)``: first compile the compared cells' graphs in
    that many processes (:func:`precompile`; the seconds go to ``report.meta``).
    ``checkpoint()`` runs after each cell (write what is measured so far: a run stopped by a
    time limit keeps every finished cell). ``done``: cells ``(op, dtype name, D)`` already measured
    (:func:`resume`), skipped. Each cell's wall seconds, and those of each implementation
    and mode, go to its log line and to ``report.meta["cell_seconds"]``."""
    ops, dtypes, dims = (list(dict.fromkeys(v)) for v in (ops, dtypes, dims))
    cells = [(op, dt, d) for op in ops for dt in dtypes for d in dims if (op, dt, d) not in done]
    if precompile_in and precompile_in[1] > 0:
        wanted = [c for c in cells if c[0] in compare_ops and c[2] in compare_dims]
        if wanted:
            secs = precompile(precompile_in[0], wanted, precompile_in[1], target_gb * 1e9)
            report.meta["precompile"] = {
                "cells": len(wanted),
                "workers": precompile_in[1],
                "seconds": round(secs, 1),
            }
    for i, (op, dt, d) in enumerate(cells, 1):
        compare = op in compare_ops and d in compare_dims
        report.cell_seconds, t0 = {}, time.perf_counter()
        bench_op(report, op, getattr(torch, dt), d, target_gb * 1e9, compare)
        total = time.perf_counter() - t0
        report.meta.setdefault("cell_seconds", {})[f"{op} {dt} {d}"] = {
            "total": round(total, 2),
            **report.cell_seconds,
        }
        parts = ", ".join(f"{k} {v:.1f}" for k, v in report.cell_seconds.items())
        print(
            f"{op} {dt} D={d} done ({i}/{len(cells)}) in {total:.1f} s: {parts}", file=sys.stderr, flush=True
        )
        if checkpoint is not None:
            checkpoint()


def resume(report, path: str | None) -> set[tuple]:
    """Continues the table in ``path``: a result file this benchmark wrote on the same GPU
    model, torch version, ``--suffix`` and ``--target-gb`` in an earlier call cut short by
    a time limit (the sweep writes it after each cell, so the cells it holds are whole). Its
    rows stay as measured (each with the % of copy of its own call), the report takes the
    file's date (written to ``--out`` under the file's name: give the file's folder to
    update it in place), and ``meta["parts"]`` lists each call's date and copy bandwidth
    (the first one also its cells). Returns the cells ``(op, dtype, D)`` it holds (none
    when ``path`` is empty)."""
    if not path:
        return set()
    doc = json.loads(Path(path).read_text())
    meta = doc.get("meta", {})
    if not Path(path).name.startswith(f"{report.name}-"):
        raise SystemExit(f"--resume {path}: not a result file of benchmark {report.name!r}")
    mine = {**report.meta, "target_gb": report.meta.get("args", {}).get("target_gb")}
    theirs = {**meta, "target_gb": meta.get("args", {}).get("target_gb")}
    for key in ("gpu", "torch", "suffix", "target_gb"):
        if theirs.get(key) != mine.get(key):
            raise SystemExit(
                f"--resume {path}: its {key} is {theirs.get(key)!r}, this run's {mine.get(key)!r}"
                " (a table continues only on the same GPU model, torch, --suffix and problem size)"
            )
    rows = [Row(**{**r, "shape": tuple(r["shape"])}) for r in doc["rows"]]
    cells = {(r.op, r.dtype, r.shape[-1]) for r in rows if not r.op.startswith("host_overhead")}
    first = {"date": meta.get("date"), "copy_gbps": doc.get("copy_gbps"), "cells": len(cells)}
    report.meta["parts"] = [
        *meta.get("parts", [first]),
        {"date": report.meta.get("date"), "copy_gbps": report.copy_gbps},
    ]
    report.meta["date"] = meta.get("date")
    report.meta["cell_seconds"] = {**meta.get("cell_seconds", {}), **report.meta.get("cell_seconds", {})}
    report.rows = rows + report.rows
    print(f"resuming {path}: {len(cells)} cells kept", file=sys.stderr)
    return cells


def finish(report, out: str) -> None:
    """Writes the report's JSON and markdown to ``out`` and prints the table."""
    js, md = report.write(out)
    print(report.markdown())
    print(f"wrote {js} and {md}", file=sys.stderr)


FULL_DTYPES = ["float32", "bfloat16", "float16"]
FULL_DIMS = [16, 64, 256, 1024, 4096]


def rowwise_args(argv, all_ops, dtypes, compare_dims, quick=None):
    """The command line of a row-wise benchmark (bench_poincare, bench_models). ``--full``:
    the whole table of issue 15: every op x fp32/bf16/fp16 x every D, each against
    torch eager, torch.compile and geoopt, the compiled graphs built first in parallel
    (``--precompile``, default: the CPU count less two, at most 14), at ``--target-gb``
    (0.8 GB a forward, as the other runs: the first whole-table run, at 0.25 GB, timed the
    host path in forward+backward, several times its two kernels' time).
    ``quick``: (dims, dtypes, compare_dims) of ``--quick``."""
    import argparse
    import re

    p = argparse.ArgumentParser()
    p.add_argument("--ops", nargs="*", default=list(all_ops))
    p.add_argument("--dims", nargs="*", type=int, default=list(FULL_DIMS))
    p.add_argument("--dtypes", nargs="*", default=list(dtypes))
    p.add_argument("--compare-dims", nargs="*", type=int, default=list(compare_dims))
    p.add_argument(
        "--compare-all", action="store_true", help="compare every op (default: the benchmark's list)"
    )
    p.add_argument("--target-gb", type=float, default=0.8)
    p.add_argument(
        "--precompile",
        type=int,
        default=None,
        help="processes compiling the graphs first (0: none; --full: CPUs - 2)",
    )
    p.add_argument(
        "--full", action="store_true", help="the whole table (see benchmarks/harness.rowwise_args)"
    )
    if quick:
        p.add_argument(
            "--quick", action="store_true", help=f"D in {quick[0]}, {quick[1]}, compare at {quick[2]}"
        )
    p.add_argument("--suffix", default="", help="appended to the result file's name (-<suffix>)")
    p.add_argument(
        "--resume", default=None, help="a result file of an earlier call cut short: keep its cells"
    )
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    if args.suffix and not re.fullmatch(r"[A-Za-z0-9_-]+", args.suffix):
        p.error(f"--suffix must be letters, digits, '_' or '-' (a result file's name), got {args.suffix!r}")
    if quick and args.quick:
        args.dims, args.dtypes, args.compare_dims = (list(v) for v in quick)
    if args.full:
        args.dims, args.dtypes, args.compare_dims = list(FULL_DIMS), list(FULL_DTYPES), list(FULL_DIMS)
        args.compare_all = True
        if args.precompile is None:
            args.precompile = max(1, min(14, (os.cpu_count() or 4) - 2))
    args.precompile = args.precompile or 0
    return args
