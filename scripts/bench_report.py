"""Runs the benchmarks (or takes their JSON results), combines them and plots them.

    python scripts/bench_report.py                 # the newest results in benchmarks/results/
    python scripts/bench_report.py --run           # run every benchmark first (a GPU; ~15-25 min)
    python scripts/bench_report.py --run --only poincare models
    python scripts/bench_report.py --readme [PATH]       # the README's performance section (stdout)
    python scripts/bench_report.py --readme-into README.md   # ... written between its perf markers

Inputs are the ``<bench>-<gpu>-<date>[-suffix].json`` files the benchmarks
write. Results of one benchmark from several files are merged row by row, the
newer date winning for a row measured in both. Writes
``<results>/<gpu>-<date>.json`` (everything combined), PNG plots under
``<results>/plots/``:

* ``bandwidth-<bench>-<mode>-<dtype>.png``: GB/s against the feature size D, one
  panel per op, for xpu_stone, torch eager, torch.compile and geoopt, with the
  device-copy bandwidth of the same run (dashed);
* ``speedup-rowwise.png``: forward+backward speed-up of xpu_stone over each
  other implementation (geometric mean over the sizes compared);
* ``speedup-end-to-end.png``: layers, optimizer step, embedding training, inference session;
* ``host-overhead.png``: host time of one small call;
* ``tuning-speedup.png``: from the tuner's ``tuning-<gpu>-<date>.json`` reports (every
  GPU), the verified speed-up of the tuned table over the heuristic per dtype and D;

and a markdown snippet embedding them (``--markdown``), with the tuning summary.

``--readme`` writes the README's performance section (between its
``<!-- perf:begin -->`` and ``<!-- perf:end -->`` lines; ``tests/test_bench_report.py``
checks that the README holds exactly this text) from the newest result files of each
benchmark and nothing else: the row-wise tables, the layer / optimizer / training /
session table (each comparison says what each side ran with), the user's training
loop (``userloop-*.json``), the plots that exist, the newest ``gpu-tests-*`` and
``kernel-build-*`` records, and each target of issue 15 with the figure that meets or
misses it. A figure without a file is left out, not carried over.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import random
import re
import statistics
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHES = (
    "poincare",
    "models",
    "pairwise",
    "linear",
    "session",
    "optim",
    "embeddings",
    "userloop",
    "hostpath",
)
# benchmarks.bench_<module> of a benchmark, where the names differ
MODULES = {"userloop": "user_loop", "hostpath": "host_path"}
# the user loop's Euclidean floor and geoopt's loop, as benchmarks/bench_user_loop.py names them
USERLOOP_FLOOR = "euclid:eager"
USERLOOP_GEOOPT = "geoopt:eager"
ROWWISE = ("poincare", "models")
IMPLS = ("xpu_stone", "torch_eager", "torch_compile", "geoopt")
COLORS = {"xpu_stone": "#d62728", "torch_eager": "#1f77b4", "torch_compile": "#2ca02c", "geoopt": "#9467bd"}
NAME = re.compile(r"^(?P<bench>[a-z]+)-(?P<gpu>.+)-(?P<date>\d{4}-\d{2}-\d{2})(?P<suffix>-[\w-]+)?\.json$")
MAX_PNG_BYTES = 150_000


# ----------------------------------------------------------------- inputs
def find_inputs(folder: Path, gpu: str | None = None) -> tuple[str, dict[str, list[Path]]]:
    """(gpu, bench -> its result files, oldest first) of the GPU with the newest results."""
    found = defaultdict(list)
    for path in folder.glob("*.json"):
        m = NAME.match(path.name)
        if m and m["bench"] in BENCHES:
            found[m["gpu"]].append((m["date"], m["suffix"] or "", m["bench"], path))
    if not found:
        raise SystemExit(f"no benchmark results (<bench>-<gpu>-<date>.json) in {folder}")
    if gpu is None:  # a CPU run (a benchmark's smoke test) is never the default
        gpus = [g for g in found if g != "cpu"] or list(found)
        gpu = max(gpus, key=lambda g: max(f[0] for f in found[g]))
    elif gpu not in found:
        raise SystemExit(f"no results for GPU {gpu!r} in {folder}; found {sorted(found)}")
    by_bench = defaultdict(list)
    for _date, _suffix, bench, path in sorted(found[gpu]):
        by_bench[bench].append(path)
    return gpu, dict(by_bench)


def _row_key(r: dict) -> tuple:
    return (r["op"], r["impl"], r["mode"], r["dtype"], tuple(r["shape"]))


def combine(by_bench: dict[str, list[Path]]) -> dict:
    """One document: per benchmark, the merged rows (newer files win) or the newest document."""
    benches, sources, dates = {}, [], []
    for bench, paths in sorted(by_bench.items()):
        docs = [json.loads(p.read_text()) for p in paths]
        sources += [str(p.name) for p in paths]
        dates += [d.get("meta", {}).get("date", "") for d in docs]
        newest = docs[-1]
        if "rows" in newest:
            rows, every = {}, []
            for p, d in zip(paths, docs):
                for r in d["rows"]:
                    if str(r.get("note", "")).startswith("invalid"):
                        continue  # a measurement its own file marks as not what it claims
                    every.append({**r, "source": p.name})
                    rows[_row_key(r)] = every[-1]
            benches[bench] = {"meta": newest.get("meta", {}), "copy_gbps": newest.get("copy_gbps", 0.0)}
            benches[bench]["rows"] = list(rows.values())
            # every file's rows, for comparisons made within one file (one run): _same_run
            benches[bench]["all_rows"] = every
            benches[bench]["copy_by_source"] = {p.name: d.get("copy_gbps", 0.0) for p, d in zip(paths, docs)}
        else:
            benches[bench] = newest
    meta = next((b["meta"] for b in benches.values() if "meta" in b), {})
    return {
        "format": "xpu_stone.BenchReport/1",
        "gpu": meta.get("gpu", "unknown"),
        "date": max(d for d in dates if d) if any(dates) else _dt.date.today().isoformat(),
        "meta": meta,
        "sources": sources,
        "benches": benches,
    }


def run_benchmarks(names, results: Path) -> list[str]:
    """Runs each benchmark as ``python -m benchmarks.bench_<name> --out results``; returns the failures."""
    failed = []
    results.mkdir(parents=True, exist_ok=True)
    for name in names:
        log = results / f"{name}-run.log"
        print(f"running benchmarks.bench_{MODULES.get(name, name)} (log {log})", flush=True)
        with log.open("w") as f:
            rc = subprocess.call(
                [sys.executable, "-m", f"benchmarks.bench_{MODULES.get(name, name)}", "--out", str(results)],
                stdout=f,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        if rc:
            failed.append(name)
            print(f"  bench_{name} failed (exit {rc}); see {log}", flush=True)
    return failed


def find_tuning(folder: Path) -> list[dict]:
    """The newest tuner report (``scripts/tune_kernels.py``) of each GPU."""
    newest = {}
    for path in folder.glob("tuning-*.json"):
        m = NAME.match(path.name)
        if m and m["bench"] == "tuning" and (m["gpu"] not in newest or m["date"] > newest[m["gpu"]][0]):
            newest[m["gpu"]] = (m["date"], path)
    return [json.loads(path.read_text()) for _, (_, path) in sorted(newest.items())]


# ----------------------------------------------------------------- tables
def feature_size(r: dict) -> int:
    return int(r["shape"][-1])


def rowwise_rows(doc: dict):
    for bench in ROWWISE:
        for r in doc["benches"].get(bench, {}).get("rows", []):
            if r["ms"] > 0 and r["impl"] in IMPLS and not r["op"].startswith("host_overhead"):
                yield bench, r


def speedups(doc: dict, mode: str = "fwd+bwd") -> dict:
    """(bench, op, dtype, D) -> {impl: other ms / xpu_stone ms} where both were measured
    in one run (:func:`_same_run`)."""
    out = {}
    for bench in ROWWISE:
        for (op, dtype, shape), t in _same_run(doc, bench).items():
            xs = t.get(("xpu_stone", mode))
            others = (
                {i: r["ms"] / xs["ms"] for (i, m), r in t.items() if m == mode and i != "xpu_stone"}
                if xs
                else {}
            )
            if others:
                out[(bench, op, dtype, int(shape[-1]))] = others
    return out


def markdown(doc: dict, plots: list[Path], rel: str) -> str:
    gpu, date = doc["gpu"], doc["date"]
    m = doc["meta"]
    lines = [
        f"### Benchmarks ({gpu}, {date})",
        "",
        f"torch {m.get('torch')}, CuPy {m.get('cupy')}, CUDA {m.get('cuda')}. Bandwidth counts bytes read "
        "plus written; the dashed line is a device-to-device copy measured in the same run. Regenerate "
        "with `python scripts/bench_report.py --run`.",
        "",
    ]
    lines += plot_lines([p.name for p in plots], rel)
    sp = speedups(doc)
    if sp:
        lines += [
            "Forward+backward, float32: xpu_stone's bandwidth and its speed-up over each implementation",
            "",
            "| op | D | xpu_stone GB/s | % of copy | vs torch eager | vs torch.compile | vs geoopt |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        xs = {  # the xpu_stone row each speed-up was measured with (one file)
            (b, op, dtype, int(shape[-1])): t[("xpu_stone", "fwd+bwd")]
            for b in ROWWISE
            for (op, dtype, shape), t in _same_run(doc, b).items()
            if ("xpu_stone", "fwd+bwd") in t
        }
        for key in sorted(k for k in sp if k[2] == "float32"):
            r = xs[key]
            cells = [f"{sp[key][i]:.1f}x" if i in sp[key] else "" for i in IMPLS[1:]]
            lines.append(
                f"| {key[1]} | {key[3]} | {r['gbps']:.0f} | {r['pct_copy']:.0f} | " + " | ".join(cells) + " |"
            )
        lines.append("")
    return "\n".join(lines)


def plot_lines(names: list[str], rel: str) -> list[str]:
    """Markdown of the plots ``names`` under ``rel``: the bfloat16 ones as links, the rest as images."""
    shown = [n for n in names if "bfloat16" not in n]
    lines = [line for n in shown for line in (f"![{Path(n).stem}]({rel}/{n})", "")]
    more = [n for n in names if n not in shown]
    if more:
        lines += ["bfloat16: " + ", ".join(f"[{Path(n).stem}]({rel}/{n})" for n in more), ""]
    return lines


def tuning_markdown(reports: list[dict]) -> str:
    """Per GPU and dtype: cells, cells the table changes, the verified speed-up of the
    table over the heuristic, and how close the heuristic's forward already is to a copy."""
    if not reports:
        return ""
    lines = [
        "| GPU | date | dtype | cells | tuned | speed-up over heuristic (geomean, verified) | worst cell "
        "| heuristic forward, % of copy (geomean) | cells at >= 95 % of copy |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for rep in reports:
        for dtype, r in rep["per_dtype"].items():
            lines.append(
                f"| {rep['gpu_name']} | {rep['date']} | {dtype} | {r['cells']} | {r['changed']} | "
                f"{r['verified_geomean']:+.1%} | {r['verified_worst']:+.1%} | "
                f"{r['heuristic_fwd_of_copy_geomean']:.0%} | {r['heuristic_fwd_at_95pct_copy']} |"
            )
        gains = [c["verified_margin"] for c in rep["cells"] if c["verified_margin"] is not None]
        lines.append(f"| {rep['gpu_name']} | | all | {len(rep['cells'])} | | {_gain(gains):+.1%} | | | |")
    return "\n".join(lines + [""])


def _gain(margins) -> float:
    return _geomean([1 + m for m in margins]) - 1 if margins else 0.0


# ----------------------------------------------------------------- plots
def _save(fig, path: Path, plt) -> Path:
    for dpi in (80, 64, 50):
        fig.savefig(path, dpi=dpi)
        if path.stat().st_size < MAX_PNG_BYTES:
            break
    plt.close(fig)
    return path


def bandwidth_series(doc: dict) -> dict:
    """(bench, mode, dtype) -> (op, impl) -> [(D, GB/s)] of the row-wise benchmarks."""
    series = defaultdict(lambda: defaultdict(list))
    for bench, r in rowwise_rows(doc):
        series[(bench, r["mode"], r["dtype"])][(r["op"], r["impl"])].append((feature_size(r), r["gbps"]))
    return series


def bandwidth_name(bench: str, mode: str, dtype: str) -> str:
    return f"bandwidth-{bench}-{mode.replace('+', '_')}-{dtype}.png"


def plot_names(doc: dict) -> list[str]:
    """The files :func:`render` draws from ``doc`` (the tuning plot aside), in its order."""
    names = [bandwidth_name(*key) for key in sorted(bandwidth_series(doc))]
    names += ["speedup-rowwise.png"] if speedups(doc) else []
    names += ["speedup-end-to-end.png"] if end_to_end(doc) else []
    return names + (["host-overhead.png"] if host_overhead(doc) else [])


def plot_bandwidth(doc: dict, folder: Path, plt) -> list[Path]:
    out = []
    for (bench, mode, dtype), lines in sorted(bandwidth_series(doc).items()):
        ops = sorted({op for op, _ in lines}, key=lambda op: (-sum(o == op for o, _ in lines), op))
        ncol = min(5, len(ops))
        nrow = -(-len(ops) // ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(2.6 * ncol, 2.1 * nrow), squeeze=False, sharey=True)
        copy = doc["benches"][bench].get("copy_gbps", 0.0)
        for ax, op in zip(axes.flat, ops):
            for impl in IMPLS:
                pts = sorted(lines.get((op, impl), []))
                if pts:
                    ax.plot(*zip(*pts), marker="o", ms=3, lw=1.2, color=COLORS[impl], label=impl)
            if copy:
                ax.axhline(copy, ls="--", lw=0.8, color="gray", label="copy")
            ax.set_xscale("log", base=2)
            ax.set_title(op, fontsize=8)
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(ops) :]:
            ax.set_visible(False)
        for ax in axes[:, 0]:
            ax.set_ylabel("GB/s", fontsize=8)
        for ax in axes[-1, :]:
            ax.set_xlabel("D (features)", fontsize=8)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=8, frameon=False)
        fig.suptitle(f"{bench} ops, {mode}, {dtype}: bandwidth ({doc['gpu']})", fontsize=10)
        fig.tight_layout(rect=(0, 0.05, 1, 0.96))
        out.append(_save(fig, folder / bandwidth_name(bench, mode, dtype), plt))
    return out


def plot_speedups(doc: dict, folder: Path, plt) -> Path | None:
    sp = speedups(doc)
    if not sp:
        return None
    dtypes = sorted({k[2] for k in sp})
    fig, axes = plt.subplots(1, len(dtypes), figsize=(5.5 * len(dtypes), 5.5), squeeze=False)
    for ax, dtype in zip(axes[0], dtypes):
        per_op = defaultdict(lambda: defaultdict(list))
        dims = set()
        for (_bench, op, dt, d), s in sp.items():
            if dt == dtype:
                dims.add(d)
                for impl, v in s.items():
                    per_op[op][impl].append(v)
        ops = sorted(per_op)
        others = [i for i in IMPLS[1:] if any(i in per_op[op] for op in ops)]
        h = 0.8 / max(len(others), 1)
        for j, impl in enumerate(others):
            ys = [k + j * h for k, op in enumerate(ops) if impl in per_op[op]]
            vals = [_geomean(per_op[op][impl]) for op in ops if impl in per_op[op]]
            ax.barh(ys, vals, height=h, color=COLORS[impl], label=f"vs {impl}")
        ax.set_yticks([k + h * (len(others) - 1) / 2 for k in range(len(ops))], ops, fontsize=7)
        ax.set_xscale("log")
        ax.axvline(1, color="black", lw=0.8)
        ax.set_xlabel("speed-up of xpu_stone (x, log)", fontsize=8)
        ax.set_title(f"{dtype}, D in {sorted(dims)} (geometric mean)", fontsize=9)
        ax.legend(fontsize=7)
        ax.invert_yaxis()
    fig.suptitle(f"forward+backward speed-up of xpu_stone ({doc['gpu']})", fontsize=10)
    fig.tight_layout()
    return _save(fig, folder / "speedup-rowwise.png", plt)


def end_to_end(doc: dict) -> list[tuple[str, float]]:
    """(label, speed-up of xpu_stone) for layers, optimizers, embeddings and sessions."""
    out = []
    b = doc["benches"]
    lin = defaultdict(dict)
    for r in b.get("linear", {}).get("rows", []):
        if r["mode"] == "fwd+bwd" and r["ms"] > 0:
            lin[r["op"]][r["impl"]] = r["ms"]
    for op, t in sorted(lin.items()):
        for impl in ("torch_eager", "torch_compile"):
            if "xpu_stone" in t and impl in t:
                out.append((f"{op} fwd+bwd vs {impl}", t[impl] / t["xpu_stone"]))
    steps = defaultdict(dict)
    for r in b.get("optim", {}).get("rows", []):
        steps["x".join(map(str, r["shape"]))][r["impl"]] = r["ms"]
    for shape, t in sorted(steps.items()):
        xs = t.get("xpu_stone RiemannianAdam (Poincare)")
        for other in ("geoopt RiemannianAdam", "torch Adam(fused=True)"):
            if xs and other in t:
                out.append((f"RiemannianAdam step {shape} vs {other}", t[other] / xs))
    for row in b.get("embeddings", {}).get("timing", []):
        out.append((f"embedding epoch, batch {row['batch']} vs geoopt", row["speedup"]))
    s = b.get("session", {}).get("session", {})
    if s.get("speedup"):
        out.append(("InferenceSession cuda_graph vs eager", s["speedup"]))
    for v in b.get("userloop", {}).get("variants", []):
        if v["variant"] != USERLOOP_GEOOPT and v.get("speedup_vs_geoopt_eager"):
            out.append((f"user loop, {v['variant']} vs {USERLOOP_GEOOPT}", v["speedup_vs_geoopt_eager"]))
    return out


def plot_end_to_end(doc: dict, folder: Path, plt) -> Path | None:
    items = end_to_end(doc)
    if not items:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(items) + 1.2))
    labels, vals = zip(*items)
    ax.barh(range(len(items)), vals, color=COLORS["xpu_stone"])
    for k, v in enumerate(vals):
        ax.text(v, k, f" {v:.1f}x", va="center", fontsize=7)
    ax.set_yticks(range(len(items)), labels, fontsize=7)
    ax.set_xscale("log")
    ax.axvline(1, color="black", lw=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("speed-up of xpu_stone (x, log)", fontsize=8)
    ax.set_title(f"layers, optimizers, training, inference ({doc['gpu']})", fontsize=9)
    fig.tight_layout()
    return _save(fig, folder / "speedup-end-to-end.png", plt)


def host_overhead(doc: dict) -> list[tuple[str, float]]:
    """(label, host µs per call) of one small call, and of a small model's inference step."""
    out = []
    for r in doc["benches"].get("poincare", {}).get("rows", []):
        if r["op"].startswith("host_overhead") and r["ms"] > 0 and math.isfinite(r["ms"]):
            what = "torch.add" if r["impl"] == "torch.add" else f"{r['impl']} mobius_add"
            grad = {"fwd_grad": ", grad", "fwd+bwd": ", fwd+bwd"}.get(r["mode"], "")
            out.append((f"{what} {'x'.join(map(str, r['shape']))}{grad}", r["ms"] * 1000))
    s = doc["benches"].get("session", {}).get("session", {})
    for key, label in (("eager_host_us", "MLP step, eager"), ("cuda_graph_host_us", "MLP step, CUDA graph")):
        if s.get(key):
            out.append((label, s[key]))
    return out


def plot_host(doc: dict, folder: Path, plt) -> Path | None:
    items = host_overhead(doc)
    if not items:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 0.35 * len(items) + 1.2))
    labels, vals = zip(*items)
    colors = [COLORS["xpu_stone"] if "xpu_stone" in k or "MLP" in k else "gray" for k in labels]
    ax.barh(range(len(items)), vals, color=colors)
    for k, v in enumerate(vals):
        ax.text(v, k, f" {v:.1f} us", va="center", fontsize=7)
    ax.set_yticks(range(len(items)), labels, fontsize=7)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("host time per call (us, log)", fontsize=8)
    ax.set_title(f"small-call host overhead ({doc['gpu']})", fontsize=9)
    fig.tight_layout()
    return _save(fig, folder / "host-overhead.png", plt)


def plot_tuning(reports: list[dict], folder: Path, plt) -> Path | None:
    if not reports:
        return None
    fig, axes = plt.subplots(1, len(reports), figsize=(5.5 * len(reports), 4), squeeze=False, sharey=True)
    for ax, rep in zip(axes[0], reports):
        by = defaultdict(lambda: defaultdict(list))  # dtype -> D -> margins
        for c in rep["cells"]:
            if c["verified_margin"] is not None:
                by[c["dtype"]][c["bucket"]].append(c["verified_margin"])
        for dtype, per_d in sorted(by.items()):
            ds = sorted(per_d)
            ax.plot(ds, [100 * _gain(per_d[d]) for d in ds], marker="o", label=dtype)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{rep['gpu_name']} ({rep['date']}), geomean over ops", fontsize=9)
        ax.set_xlabel("feature size D")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("tuned vs heuristic: % faster, fwd+bwd")
    axes[0][0].legend(fontsize=8)
    return _save(fig, folder / "tuning-speedup.png", plt)


def _geomean(vals) -> float:
    return math.exp(sum(math.log(v) for v in vals) / len(vals))


def render(doc: dict, folder: Path, reports: list[dict] = ()) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    plots = plot_bandwidth(doc, folder, plt)
    plots += [p for p in (plot_speedups(doc, folder, plt), plot_end_to_end(doc, folder, plt)) if p]
    host = plot_host(doc, folder, plt)
    tuned = plot_tuning(list(reports), folder, plt)
    return plots + [p for p in (host, tuned) if p]


# ----------------------------------------------------------------- the README's performance section
README_BEGIN, README_END = "<!-- perf:begin -->", "<!-- perf:end -->"
RECORD_NAME = re.compile(
    r"^(?P<bench>gpu-tests|kernel-build)-(?P<gpu>.+?)-(?P<date>\d{4}-\d{2}-\d{2})(?P<suffix>-[\w-]+)?\.json$"
)
DTYPE_SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "float64": "fp64"}
ROWWISE_TITLES = {"poincare": "Poincaré ball", "models": "Lorentz, Klein, conversions"}
LABEL = {
    "xpu_stone": "xpu_stone",
    "torch_eager": "torch eager",
    "torch_compile": "torch.compile",
    "geoopt": "geoopt",
}
IMPL_WITH = {  # what each implementation of the row-wise and layer benchmarks runs
    "xpu_stone": "xpu_stone's kernels, called eagerly",
    "torch_eager": "the textbook formula of `xpu_stone.reference` in eager torch",
    "torch_compile": "`torch.compile(formula, dynamic=False)`, default mode, compiled fresh per shape",
    "geoopt": "geoopt's manifold, eager",
}

# The targets (issue 15; those of the optimizer, embedding, session, profiler and build rows from the
# issues that set them, as the README stated them).
T_FWD_COPY, T_CONVERT_COPY = 92.0, 85.0  # forward, % of copy: row-wise ops; conversions
T_FWD_COMPILE, T_COMPILE_LOW = 1.1, 85.0  # forward ahead of torch.compile; by 1.1x where it is under 85 %
T_FB_COMPILE, T_FB_GEOOPT = 1.6, 6.0  # fwd+bwd of these ops in both models, dtypes and D:
FB_OPS = ("mobius_add", "dist", "expmap", "logmap", "geodesic")
FB_DTYPES, FB_DIMS = ("float32", "bfloat16"), (64, 1024)
T_SMALL_CALL, T_SMALL_CALL_GRAD = 2.0, 3.0  # one small call over torch.add's host time: autograd off, on
T_LINEAR, T_CDIST_GEMM = 1.5, 1.15  # linear layers fwd+bwd over torch.compile; cdist over the GEMM alone
KNN_K = 10  # the k of benchmarks/bench_pairwise.py's knn rows
T_LOOP_FLOOR, T_LOOP_GEOOPT = 1.15, 10.0  # user loop: eager over its Euclidean floor; step over geoopt eager
T_ADAM_GEOOPT, T_ADAM_FUSED = 50.0, 2.0  # optimizer step over geoopt's; its time within 2x fused Adam's
T_EMBED_GEOOPT, T_SESSION, T_PROFILER_US, T_BUILD_S = 5.0, 3.0, 2.0, 20.0
REASONS = {  # why a target is missed, where it is known (no measured figures: those come from the files)
    "fwd": "a hypothesis from the kernel source and the per-op pattern, not profiled: fp32 rows do their element "
    "arithmetic in fp64, and each row's scalar formula (norms, divisions, square roots; the hyperbolic functions "
    "from one fp32 expm1 or log1p with an fp64 correction, except in expmap, which calls fp64 tanh and cosh) runs "
    "in fp64; at small D one 32-thread warp holds several rows and evaluates the formula for each, so fp64 "
    "arithmetic rather than memory may limit the ops with long per-row formulas (mobius_scalar_mul, expmap, "
    "logmap, dist, dist0, geodesic); at D = 1024 and 4096 half the Poincaré vector-output ops run with a launch "
    "setting that reads each row twice (expmap three times: one of its sums needs a value from an earlier one), "
    "but the ops that read it once are below the target there too, so the second read is at most part of the "
    "gap; fp16 and bf16 rows compute their elements in fp32 and use a built-in launch setting (the autotuner's "
    "table for this GPU, `xpu_stone/kernels/tables/nvidia-h200.json`, covers fp32 and fp64 only until "
    "re-tuned); the conversions to and from the hyperboloid change the row length (D + 1 elements) and so read "
    "one element at a time instead of 16-byte vectors",
    "compile": "where torch.compile is near the copy rate, both sides are bound by the GPU and its Triton code, "
    "fp32 throughout, moves its bytes faster than xpu_stone's kernels (previous item); where it is not, "
    "xpu_stone's own costs (previous item; most of those cells are fp16 or bf16) keep it below 1.1×; in a "
    "Poincaré-only run at 0.25 GB a forward (`poincare-NVIDIA_H200-2026-12-01-full.json`) xpu_stone was ahead "
    "on most cells, torch.compile then probably paced by its host time per call (not profiled)",
    "fb": "a memory-bound forward+backward cannot beat a rival by 1.6× once the rival moves its bytes at more "
    "than 1/1.6 of the copy rate; on the other cells xpu_stone's own costs decide: its backward recomputes each "
    "row's formula in fp64 with forward-mode (dual-number) derivatives, one per dot product of the formula, on "
    "top of the forward's costs (previous items); against geoopt: geoopt's Lorentz maths is lighter than its "
    "Poincaré maths, and the Poincaré misses are fp32 cells where xpu_stone's forward+backward is among its "
    "slowest against copy",
    "linear": "the GEMMs are cuBLAS's; the rest of xpu_stone's time is its own epilogue and backward kernels, "
    "which torch.compile fuses into its Triton code (not profiled)",
    "small": "each call checks its arguments in Python (types, dtypes, devices, shapes, the scalars), allocates "
    "its output, packs the kernel's argument struct and launches through CuPy, and with autograd on an "
    "autograd.Function records it",
    "loop": "the eager loop pays the CPU-side cost of each library call (argument checks, allocation, launch: "
    "the small-call item) on every op of its step and on the optimizer's step; under torch.compile the step "
    "breaks at `loss.backward()` and the optimizer's step runs eagerly (it is `torch.compiler.disable`d: dynamo "
    "failed to trace the optimizer's cache of launch arguments), so reduce-overhead's CUDA graphs cover only "
    "parts of the step; `xpu_stone.runtime.capture` (one CUDA graph of the whole step) is the path that meets "
    "the target",
    "profiler": "not profiled: with a profile open each launch appends one tuple to the profile's records, and "
    "`profile()` pushes an NVTX range around it",
    "build": "every variant and launch configuration of every op and dtype is compiled as a template "
    "instantiation of its own",
    "cdist": "the GEMM is cuBLAS's (through torch) and the distance epilogue a second kernel, run on each row block "
    "of the GEMM's output while it is still in L2, after one kernel a side for the row scalars; the epilogue is not "
    "fused into the GEMM",
    "knn": "knn forms the distances a block of query rows at a time (`KNN_CHUNK_BYTES`) and selects with "
    "`torch.topk`; there is no running top-k inside a GEMM epilogue",
}


TRIED = {  # what was done about each missed target so far (the reasons above say what is left)
    "fwd": "an autotuner that times every launch configuration of each op, dtype and D on the GPU and ships the "
    "verified winners per GPU (fp32 and fp64 for the H200 and H100); 16-bit rows computing their elements in fp32 "
    "(exact products summed a chunk at a time) with 32 cached elements a thread and a two-lanes-a-row layout; "
    "written on a side branch and lost with it before a GPU measured them (not in this release): a row spread over "
    "a block has its formula evaluated by one warp instead of by every warp, and launch layouts of 1, 2 or 4 "
    "threads a row let a warp evaluate up to 32 rows' formulas at once; dropped unmeasured: keeping the register "
    "row cache of fp32 rows in fp32 (NVRTC widens each chunk to fp64 at its load, so no registers were saved)",
    "compile": "the forward levers of the previous item; the table runs each cell at 0.8 GB a forward so that "
    "both sides are timed on the GPU rather than on their host path",
    "fb": "the backward is one kernel a call that reads the inputs and the output gradient and writes every "
    "input gradient (a scalar c's per-row gradients are summed by torch after it); the table's 0.8 GB a "
    "forward, so that the GPU and not the host path is timed; the forward levers of the first item",
    "small": "launches pack their arguments themselves and call `cuLaunchKernel` directly; plain-float scalars "
    "skip the type machinery of the checks; with autograd on, an eager `autograd.Function` replaced the "
    "custom-op dispatch; a tensor c on the GPU is no longer read on the host",
    "linear": "none beyond cuBLAS GEMMs and xpu_stone's own epilogue and backward kernels; the fused GEMM "
    "epilogue (tensor-core tiles) is not begun",
    "loop": "`xpu_stone.runtime.capture` of the whole step, fused optimizer included (met); the graph breaks of "
    "the compiled step are not removed",
    "profiler": "row launches read the profiler's recorder as every other launch does (one mechanism)",
    "build": "several kernels a NVRTC program (slower than one a program on a 2-core machine, dropped); the "
    "disk cache serves every later process",
    "cdist": "GEMM row blocks sized to half the L2 so that the epilogue reads them from the cache",
    "knn": "blocks of at most 256 MiB, each freed before the next; the neighbours' distances recomputed from "
    "the selected pairs",
}


def _why(key: str, lead: str = "", tail: str = "") -> str:
    """A missed target's reason and what was tried, as its shortfall line ends; ``lead`` and
    ``tail`` put measured facts before and after the fixed reason."""
    return f"Why: {lead}{REASONS[key]}{tail}. Tried: {TRIED[key]}."


def find_records(folder: Path, gpu: str) -> dict[str, list[Path]]:
    """``gpu-tests`` and ``kernel-build`` files of ``gpu``: each one's files of its newest date."""
    found = defaultdict(list)
    for path in folder.glob("*.json"):
        m = RECORD_NAME.match(path.name)
        if m and m["gpu"] == gpu:
            found[m["bench"]].append((m["date"], path))
    newest = {b: max(d for d, _ in fs) for b, fs in found.items()}
    # the plain file first, then the variants (``-xdist``, ...) of the same date
    return {
        b: sorted((p for d, p in fs if d == newest[b]), key=lambda p: (len(p.name), p.name))
        for b, fs in sorted(found.items())
    }


def _x(v: float) -> str:
    return f"{v:.2f}×" if v < 10 else f"{v:.1f}×" if v < 100 else f"{v:.0f}×"


def _ms(v: float) -> str:
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def _pct(v: float) -> str:
    return f"{v:.0f}"


def _span(vals, fmt) -> str:
    lo, hi = fmt(min(vals)), fmt(max(vals))
    return lo if lo == hi else f"{lo}–{hi}"


def _shares(vals) -> str:
    """``lo–hi % (median m %)`` of a list of % of copy."""
    return f"{_span(vals, _pct)} % (median {_pct(statistics.median(vals))} %)"


def _files(names) -> str:
    return ", ".join(f"`{n}`" for n in sorted(set(names)))


def _met(ok: bool) -> str:
    return "met" if ok else "missed"


def _rows(doc: dict, bench: str):
    for r in doc["benches"].get(bench, {}).get("rows", []):
        if r["ms"] > 0 and r["impl"] in IMPLS and not r["op"].startswith("host_overhead"):
            yield r


def _source_order(doc: dict) -> dict[str, int]:
    """File name -> its rank among the inputs, oldest first (the newer file wins)."""
    return {name: i for i, name in enumerate(doc["sources"])}


def pick(doc: dict, bench: str, impl: str, mode: str) -> dict:
    """(op, dtype, D) -> the row of ``impl`` in ``mode`` (the newest file's where several
    shapes of one D were measured), in the benchmark's order."""
    order = _source_order(doc)
    out = {}
    for r in _rows(doc, bench):
        key = (r["op"], r["dtype"], feature_size(r))
        if (
            r["impl"] == impl
            and r["mode"] == mode
            and (key not in out or order[r["source"]] >= order[out[key]["source"]])
        ):
            out[key] = r
    return out


def _same_run(doc: dict, bench: str) -> dict:
    """(op, dtype, shape) -> (impl, mode) -> row, for the problems some other
    implementation was measured on next to xpu_stone: the rows of one file (one run),
    the newest file that has such a pair. A newer file that timed xpu_stone alone
    does not pair its rows with an older file's alternatives."""
    order = _source_order(doc)
    by = defaultdict(lambda: defaultdict(dict))  # problem -> source -> (impl, mode) -> row
    for r in doc["benches"].get(bench, {}).get("all_rows", []):
        if r["ms"] > 0 and r["impl"] in IMPLS and not r["op"].startswith("host_overhead"):
            by[(r["op"], r["dtype"], tuple(r["shape"]))][r["source"]][(r["impl"], r["mode"])] = r
    out = {}
    for k, runs in by.items():
        paired = [
            src
            for src, t in runs.items()
            if {i for i, _ in t} - {"xpu_stone"} and any(i == "xpu_stone" for i, _ in t)
        ]
        if paired:
            out[k] = runs[max(paired, key=order.__getitem__)]
    return out


def _same_run_by_d(doc: dict, bench: str) -> dict:
    """(op, dtype, D) -> (impl, mode) -> row: of the problems :func:`_same_run` pairs, the
    newest file's where several files (several sizes) measured one D; what the targets
    are judged on, so that an older run of older code does not count twice."""
    order = _source_order(doc)
    out, rank = {}, {}
    for (op, dtype, shape), t in _same_run(doc, bench).items():
        key, src = (op, dtype, shape[-1]), order[next(iter(t.values()))["source"]]
        if key not in out or src >= rank[key]:
            out[key], rank[key] = t, src
    return out


def _rowwise_section(doc: dict, bench: str) -> list[str]:
    cells = pick(doc, bench, "xpu_stone", "fwd")
    if not cells:
        return []
    ops = list(dict.fromkeys(k[0] for k in cells))
    dtypes = [d for d in DTYPE_SHORT if any(k[1] == d for k in cells)]
    dims = sorted({k[2] for k in cells})
    head = [f"{DTYPE_SHORT[dt]} D={d}" if i == 0 else str(d) for dt in dtypes for i, d in enumerate(dims)]
    lines = [
        f"### {ROWWISE_TITLES[bench]}",
        "",
        f"Forward, % of copy bandwidth, xpu_stone ({_files(r['source'] for r in cells.values())}):",
        "",
        "| op | " + " | ".join(head) + " |",
        "|---|" + "---:|" * len(head),
    ]
    for op in ops:
        vals = [
            _pct(cells[(op, dt, d)]["pct_copy"]) if (op, dt, d) in cells else "—"
            for dt in dtypes
            for d in dims
        ]
        lines.append(f"| {op} | " + " | ".join(vals) + " |")
    # the newest run of each (op, dtype, D): older runs of other sizes stay in their files
    runs = {
        (k[0], k[1], tuple(next(iter(t.values()))["shape"])): t for k, t in _same_run_by_d(doc, bench).items()
    }
    if not runs:
        return lines + [""]
    others = [i for i in IMPLS[1:] if any(i == j for t in runs.values() for j, _ in t)]
    rank = {op: i for i, op in enumerate(dict.fromkeys(r["op"] for r in _rows(doc, bench)))}
    keys = sorted(runs, key=lambda k: (rank[k[0]], list(DTYPE_SHORT).index(k[1]), k[2][-1], k[2]))
    sources = _files(r["source"] for t in runs.values() for r in t.values())
    head = [
        f"{mode} {w}"
        for mode in ("fwd", "fwd+bwd")
        for w in ["xpu_stone ms"] + [f"vs {LABEL[i]}" for i in others]
    ]
    lines += [
        "",
        f"<details><summary>{ROWWISE_TITLES[bench]}: time per call against the alternatives, {len(keys)} "
        "cells</summary>",
        "",
        "Against the alternatives, measured on the same problem in the same run (the newest run of each op, "
        "dtype and D): xpu_stone's time and its "
        "speed-up over each (their time / xpu_stone's; — where not measured). "
        + "; ".join(f"{LABEL[i]}: {IMPL_WITH[i]}" for i in ("xpu_stone", *others))
        + f"; torch.compile cells its file marks invalid are left out ({sources}):",
        "",
        "| op | dtype | rows×D | " + " | ".join(head) + " |",
        "|---|---|---|" + "---:|" * len(head),
    ]
    for key in keys:
        t, vals = runs[key], []
        for mode in ("fwd", "fwd+bwd"):
            xs = t.get(("xpu_stone", mode))
            vals.append(_ms(xs["ms"]) if xs else "—")
            vals += [_x(t[(i, mode)]["ms"] / xs["ms"]) if xs and (i, mode) in t else "—" for i in others]
        lines.append(
            f"| {key[0]} | {DTYPE_SHORT[key[1]]} | {'×'.join(map(str, key[2]))} | " + " | ".join(vals) + " |"
        )
    return lines + ["", "</details>", ""]


def _linear_ratios(doc: dict) -> list[tuple[dict, dict]]:
    """(xpu_stone row, torch.compile row) of each layer, fwd+bwd, on one shape."""
    t = defaultdict(dict)
    for r in _rows(doc, "linear"):
        if r["mode"] == "fwd+bwd":
            t[(r["op"], r["dtype"], tuple(r["shape"]))][r["impl"]] = r
    return [
        (v["xpu_stone"], v["torch_compile"]) for v in t.values() if "xpu_stone" in v and "torch_compile" in v
    ]


def _pairwise(doc: dict) -> dict:
    """The figures of the newest ``pairwise`` file (one run): ``gemm``, ``cdist`` (the
    default chunking: the row without a chunk note), ``compile_fwd``, ``cdist_fb``,
    ``compile_fb`` rows of the cdist problem, and ``knn_memory`` rows; empty without a file."""
    rows = doc["benches"].get("pairwise", {}).get("all_rows", [])
    if not rows:
        return {}
    order = _source_order(doc)
    src = max({r["source"] for r in rows}, key=order.__getitem__)
    mine = [r for r in rows if r["source"] == src and not str(r.get("note", "")).startswith("failed")]

    def one(op, impl, mode, shape=None):
        for r in mine:
            if (r["op"], r["impl"], r["mode"], r["dtype"]) == (op, impl, mode, "float32") and r["ms"] > 0:
                if not str(r.get("note", "")).startswith("chunk=") and (shape is None or r["shape"] == shape):
                    return r
        return None

    gemm = one("gemm", "torch.mm", "fwd")
    shape = gemm["shape"] if gemm else None
    return {
        "source": src,
        "gemm": gemm,
        "cdist": one("cdist_poincare", "xpu_stone", "fwd", shape),
        "compile_fwd": one("cdist_poincare", "torch_compile_gemm", "fwd", shape),
        "cdist_fb": one("cdist_poincare", "xpu_stone", "fwd+bwd", shape),
        "compile_fb": one("cdist_poincare", "torch_compile_gemm", "fwd+bwd", shape),
        "knn_memory": [r for r in mine if r["op"] == f"knn_k{KNN_K}_memory"],
    }


def _knn_bound(r: dict) -> tuple[float, float]:
    """(peak extra MiB, the bound MiB) of a knn memory row: O(N k + tile) read as at most two
    knn tiles (``KNN_CHUNK_BYTES``, in its note) plus what is O(N k): the outputs (N k values
    and indices) and the N k selected rows of y (N k D fp32) the values are recomputed from.
    A row whose note names no tile has bound 0 (its verdict: missed)."""
    n, _m, d = r["shape"]
    found = re.search(r"knn chunk (\d+) MiB", str(r.get("note", "")))
    if not found:
        return r["bytes"] / 2**20, 0.0
    return r["bytes"] / 2**20, 2 * float(found[1]) + n * KNN_K * (12 + 4 * d) / 2**20


def _pairwise_rows(pw: dict) -> list[tuple]:
    """The end-to-end table's rows of the pairwise figures ``pw`` (:func:`_pairwise`)."""
    out = []
    if not pw:
        return out
    src = pw["source"]
    g, xs = pw["gemm"], pw["cdist"]
    if g and xs:
        n, m, d = xs["shape"]
        out.append(
            (
                f"cdist forward, {n}×{m}×{d}, fp32 (Poincaré)",
                f"{_ms(xs['ms'])} ms",
                f"the GEMM alone (torch.mm) {_ms(g['ms'])} ms",
                _x(g["ms"] / xs["ms"]),
                f"≤ {T_CDIST_GEMM}× the GEMM's time: {_met(xs['ms'] <= T_CDIST_GEMM * g['ms'])}",
                src,
            )  # fmt: skip
        )
    for mine, theirs, what in (
        (xs, pw["compile_fwd"], "forward"),
        (pw["cdist_fb"], pw["compile_fb"], "fwd+bwd"),
    ):
        if mine and theirs:
            out.append(
                (
                    f"cdist {what}, same problem",
                    f"{_ms(mine['ms'])} ms",
                    f"torch.compile of the GEMM formula {_ms(theirs['ms'])} ms",
                    _x(theirs["ms"] / mine["ms"]),
                    "—",
                    src,
                )  # fmt: skip
            )
    for r in pw["knn_memory"]:
        extra, bound = _knn_bound(r)
        n, m, _d = r["shape"]
        full = n * m * 4 / 2**20
        out.append(
            (
                f"knn k = {KNN_K} memory, {n} queries × {m} points",
                f"peak {extra:.0f} MiB above its inputs",
                f"the full N×M fp32 matrix {full:.0f} MiB",
                "—",
                f"O(N·k + tile) (≤ 2 tiles + N·k outputs and rows = {bound:.0f} MiB): {_met(extra <= bound)}",
                src,
            )  # fmt: skip
        )
    return out


def _end_to_end_section(doc: dict, files: dict) -> list[str]:
    pw = _pairwise(doc)
    b, rows = doc["benches"], _pairwise_rows(pw)
    for xs, tc in _linear_ratios(doc):
        n, din, dout = xs["shape"]
        ratio = tc["ms"] / xs["ms"]
        target = (
            f"≥ {T_LINEAR}×: {_met(ratio >= T_LINEAR)}"
            if xs["op"] in ("HypLinear", "PoincareLinear")
            else "—"
        )
        rows.append(
            (
                f"{xs['op']} fwd+bwd, batch {n}, {din}→{dout}, {DTYPE_SHORT[xs['dtype']]}",
                f"{_ms(xs['ms'])} ms (eager)",
                f"torch.compile of the reference layer {_ms(tc['ms'])} ms",
                _x(ratio),
                target,
                files["linear"],
            )
        )
    steps = defaultdict(dict)
    for r in b.get("optim", {}).get("rows", []):
        steps[tuple(r["shape"])][r["impl"]] = r["ms"]
    for shape, t in steps.items():
        xs, geo, fused = (
            t.get(k)
            for k in (
                "xpu_stone RiemannianAdam (Poincare)",
                "geoopt RiemannianAdam",
                "torch Adam(fused=True)",
            )
        )
        if xs and geo and fused:
            ok = geo / xs >= T_ADAM_GEOOPT and xs <= T_ADAM_FUSED * fused
            rows.append(
                (
                    f"RiemannianAdam step, {shape[0]} tensors of {shape[1]}×{shape[2]} (Poincaré)",
                    f"{_ms(xs)} ms (one fused launch)",
                    f"geoopt RiemannianAdam {_ms(geo)} ms; torch Adam(fused=True) {_ms(fused)} ms",
                    f"{_x(geo / xs)}; {_x(fused / xs)}",
                    f"≥ {T_ADAM_GEOOPT:.0f}× geoopt, within {T_ADAM_FUSED:.0f}× fused Adam's time: {_met(ok)}",
                    files["optim"],
                )
            )
    emb = b.get("embeddings", {})
    for row in emb.get("timing", []):
        if "speedup" in row:
            rows.append(
                (
                    f"Poincaré embeddings epoch, {emb['data']}, batch {row['batch']}",
                    f"{_ms(row['xpu_stone_ms_per_epoch'])} ms (the example's trainer: the whole epoch, "
                    "sampling included, one CUDA-graph replay)",
                    f"geoopt {_ms(row['geoopt_ms_per_epoch'])} ms (the same trainer with geoopt's distance "
                    "and RiemannianSGD, eager, no graph)",
                    f"{_x(row['speedup'])} (CUDA-graph epoch vs geoopt eager)",
                    f"≥ {T_EMBED_GEOOPT:.0f}×: {_met(row['speedup'] >= T_EMBED_GEOOPT)}",
                    files["embeddings"],
                )
            )
    train = {r["impl"]: r for r in emb.get("training", [])}
    if "xpu_stone" in train and "geoopt" in train:
        xs, geo = train["xpu_stone"], train["geoopt"]
        rows.append(
            (
                f"the same, reconstruction after {xs['epochs']} epochs (batch {xs['batch']})",
                f"mean rank {xs['mean_rank']:.2f}, MAP {xs['map']:.3f} in {xs['seconds']:.1f} s",
                f"geoopt after {geo['epochs']}: mean rank {geo['mean_rank']:.2f}, MAP {geo['map']:.3f} "
                f"in {geo['seconds']:.1f} s",
                "—",
                "—",
                files["embeddings"],
            )
        )
    s = b.get("session", {}).get("session", {})
    if s.get("speedup"):
        same = (
            "outputs bit-identical"
            if s.get("bit_identical")
            else f"outputs differ by {s.get('max_abs_diff')}"
        )
        rows.append(
            (
                f"{s['model']}, latency of one call",
                f"{s['cuda_graph_latency_us']:.1f} µs (InferenceSession, cuda_graph engine)",
                f"the same model eager {s['eager_latency_us']:.1f} µs",
                f"{_x(s['speedup'])} ({same})",
                f"≥ {T_SESSION:.0f}×: {_met(s['speedup'] >= T_SESSION)}",
                files["session"],
            )
        )
    prof = b.get("session", {}).get("profiler", {})
    if "on_no_nvtx_extra_us" in prof:
        figure, verdict, _ = _profiler_judged(prof)
        rows.append(
            (
                "profiler open, host time added to one small call",
                f"{figure} (`profile(nvtx=False)`); +{prof['on_extra_us']:.1f} µs (`profile()`); "
                f"+{prof['on_gpu_time_extra_us']:.1f} µs (`profile(gpu_time=True)`)",
                f"no profile open: {prof['off']:.1f} µs"
                + (
                    f" (two timings of it in one round differ by {prof['noise_us']:.1f} µs at the median)"
                    if "noise_us" in prof
                    else ""
                ),
                "—",
                f"≤ {T_PROFILER_US:.0f} µs without GPU timing: {verdict}",
                files["session"],
            )
        )
    if not rows:
        return []
    lines = [
        "### Layers, optimizer, training, sessions",
        "",
        "Ratios are the compared time over xpu_stone's (above 1: xpu_stone is faster).",
        "",
        "| what | xpu_stone | compared with | ratio | target | file |",
        "|---|---|---|---:|---|---|",
    ]
    lines += [f"| {w} | {x} | {o} | {r} | {t} | `{f}` |" for w, x, o, r, t, f in rows]
    if not pw:
        lines += [
            "",
            "cdist and knn: no result file of `benchmarks.bench_pairwise` is committed, so no figure is "
            "quoted (`bash benchmarks/run.sh pairwise`).",
        ]
    return lines + [""]


def _userloop_variants(doc: dict) -> dict:
    return {v["variant"]: v for v in doc["benches"].get("userloop", {}).get("variants", [])}


def _userloop_section(doc: dict, files: dict) -> list[str]:
    u = doc["benches"].get("userloop")
    if not u:
        return []
    m, cfg = u["meta"], u["config"]
    lines = [
        "### A user's own training loop",
        "",
        f"The WordNet {cfg['data']} Poincaré embedding ({cfg['nodes']:,} nodes, {cfg['edges']:,} edges, dim "
        f"{cfg['dim']}) trained by a plain loop written as this README teaches: index the table, the distance, "
        f"a softmax loss over {cfg['negatives']} uniform negatives, `loss.backward()`, the optimizer's step; batch "
        f"{cfg['batch']}, lr {cfg['lr']} ({cfg['burnin']} burn-in epochs at lr / {cfg['burnin_factor']:g}). "
        f"{m['gpu']}, {m['date']}, torch {m['torch']} (`benchmarks/bench_user_loop.py`, `{files['userloop']}`). "
        f"ms/epoch: the median of {cfg['time_epochs']} epochs (min–max), each timed between device "
        f"synchronisations; reconstruction after {cfg['epochs']} epochs.",
        "",
        f"| variant | ran with | ms/epoch | × the Euclidean floor ({USERLOOP_FLOOR}) | speed-up over "
        f"{USERLOOP_GEOOPT} | mean rank / MAP | graph breaks |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for name, v in _userloop_variants(doc).items():
        if "ms_per_epoch" not in v:
            lines.append(
                f"| {name} | {v['ran_with']} | {v.get('skipped') or 'failed: ' + v.get('error', '')[:80]} "
                "| — | — | — | — |"
            )
            continue
        ms = f"{_ms(v['ms_per_epoch'])} ({_ms(v['ms_per_epoch_min'])}–{_ms(v['ms_per_epoch_max'])})"
        q = (
            f"{v['mean_rank']:.2f} / {v['map']:.3f}"
            if v.get("map") is not None
            else "— (not a hyperbolic model)"
        )
        breaks = str(v["dynamo"]["graph_breaks"]) if "dynamo" in v else "—"
        ratio = v.get("ratio_to_euclid_eager")
        speed = v.get("speedup_vs_geoopt_eager")
        lines.append(
            f"| {name} | {v['ran_with']} | {ms} | {_x(ratio) if ratio else '—'} | "
            f"{_x(speed) if speed else '—'} | {q} | {breaks} |"
        )
    return lines + [""]


def _tests_section(doc: dict, records: dict) -> list[str]:
    lines = []
    for path in records.get("gpu-tests", []):
        r = json.loads(path.read_text())
        files = r.get("files", [])
        if 0 < len(files) <= 3:
            scope = f"only {', '.join(files)}"
        elif files:  # the GPU tests live in *_cuda.py files
            cpu = any(not f.endswith("_cuda.py") for f in files)
            scope = f"{len(files)} test files" + (", CPU tests included" if cpu else "")
        else:  # a record from before the files were listed: the whole suite
            scope = "CPU tests included"
        # why tests were skipped, so that none reads as passed: each reason with its count
        skips = Counter(t["message"] for t in r.get("not_passed", []) if t["outcome"] == "skipped")
        why = f" ({'; '.join(f'{n}: {msg}' for msg, n in skips.most_common())})" if skips else ""
        lines.append(
            f"- GPU test run, {r['gpu']}, {r['date']} (torch {r['torch']}, {scope}): "
            f"{r['passed']:,} passed, {r['failed']:,} failed, {r['errors']:,} errors, {r['skipped']:,} "
            f"skipped{why} in {r['seconds']:.0f} s (`{path.name}`; what the tests check: see Reliability)."
        )
    for path in records.get("kernel-build", []):
        r = json.loads(path.read_text())
        archs = ", ".join(sorted({k["arch"] for k in r["kernels"]}))
        cached = sum(k["cached"] for k in r["kernels"])
        cold = "not a cold build" if cached else _met(r["elapsed_s"] <= T_BUILD_S)
        spread = _build_spread(r)
        lines.append(
            f"- Kernel build: {len(r['kernels']):,} kernels for {archs} in {r['elapsed_s']:.1f} s, "
            f"{cached:,} of them from the disk cache (`{path.name}`; target ≤ {T_BUILD_S:.0f} s cold: "
            f"{cold})" + (f"; {spread}." if spread else ".")
        )
    for mode, what in (
        ("fwd", "autograd off"),
        ("fwd_grad", "autograd on: an input requires grad"),
        ("fwd+bwd", "with its backward: `torch.autograd.grad` of the output"),
    ):
        host = _host_call(doc, mode)
        if host:
            xs, add, geo, src = host
            more = f"; geoopt {geo:.1f} µs" if geo else ""
            lines.append(
                f"- One small call (64×64 fp32, {what}), host time: xpu_stone {xs:.1f} µs, `torch.add` "
                f"{add:.1f} µs ({_x(xs / add)}){more} (`{src}`)."
            )
    split = _host_split(doc)
    if split:
        lines.append(f"- One small call (`mobius_add`, 64×64 fp32): {split}.")
    return ["### GPU tests, kernel build, host costs", "", *lines, ""] if lines else []


HOST_STAGES = {  # the stages of benchmarks/bench_host_path.py, in the call's order
    "validate": "argument checks",
    "route": "autograd and tracing checks",
    "prepare": "row layout and kernel fields",
    "allocate": "output allocation",
    "kernel": "kernel lookup",
    "stream": "current stream",
    "launch": "argument packing and cuLaunchKernel",
    "glue": "the Python between them",
}


HOST_SAID = {"fwd": "autograd off", "fwd_grad": "autograd on"}  # the small call's modes, in words


def _host_paired(doc: dict, mode: str) -> tuple[float, int] | None:
    """(ratio, rounds): the median over the ``hostpath`` file's interleaved rounds of the
    call's time over ``torch.add``'s in the same round, for ``mode``; None without rounds."""
    t = doc["benches"].get("hostpath", {}).get("meta", {}).get("rounds", {}).get(mode)
    if not t:
        return None
    return statistics.median(xs / add for xs, add in zip(t["xpu_stone"], t["torch.add"])), len(t["xpu_stone"])


def _host_split(doc: dict, ratios: bool = True) -> str | None:
    """Where one small call's host time goes, naming its file: the newest ``hostpath``
    file's (``benchmarks/bench_host_path.py``), with its paired ratios to ``torch.add``
    when ``ratios``; None without one."""
    rows = {(r["impl"], r["mode"]): r for r in doc["benches"].get("hostpath", {}).get("rows", [])}
    whole, add = rows.get(("xpu_stone", "fwd")), rows.get(("torch.add", "fwd"))
    if not whole or not add:
        return None
    stages = ", ".join(
        f"{what} {rows[s, 'fwd']['ms'] * 1000:.1f}" for s, what in HOST_STAGES.items() if (s, "fwd") in rows
    )
    text = (
        f"where its host time goes, autograd off (each stage timed alone, µs): {stages}, of the "
        f"{whole['ms'] * 1000:.1f} µs call (`torch.add` {add['ms'] * 1000:.1f} µs)"
    )
    grad = rows.get(("xpu_stone", "fwd_grad"))
    if grad:
        text += (
            f"; with autograd on the call takes {grad['ms'] * 1000:.1f} µs "
            f"(+{(grad['ms'] - whole['ms']) * 1000:.1f} µs: the autograd.Function's record)"
        )
    paired = {m: p for m in HOST_SAID if (p := _host_paired(doc, m))}
    if ratios and paired:
        text += (
            f"; paired with `torch.add` round by round ({next(iter(paired.values()))[1]} rounds): "
            + ", ".join(f"{_x(r)} {HOST_SAID[m]}" for m, (r, _) in paired.items())
        )
    top = doc["benches"]["hostpath"].get("meta", {}).get("cprofile", {}).get("fwd", [])[:4]
    if top:
        text += "; cProfile's largest own-time shares: " + ", ".join(
            f"`{p['function']}` {100 * p['share']:.0f} %" for p in top
        )
    return text + f" (`{whole['source']}`)"


def _hostpath_file(doc: dict) -> str:
    """The newest ``hostpath`` file's name (its rows carry it)."""
    return doc["benches"]["hostpath"]["rows"][0]["source"]


def _profiler_interval(prof: dict, name: str, draws: int = 2000) -> tuple[float, float, int] | None:
    """(low, high, rounds): the 95 % bootstrap interval of a profile's extra host time, from
    the session file's interleaved rounds (``benchmarks/bench_session.py``): the median over
    rounds of the profiled time less the mean of its round's two unprofiled times. A fixed
    seed, so that the README does not move between runs of this script; None for a file
    without the rounds."""
    samples = prof.get("samples", {})
    if name not in samples:
        return None
    base = [(a + b) / 2 for a, b in zip(samples["off"], samples["off_again"])]
    extra = [t - b for t, b in zip(samples[name], base)]
    rng = random.Random(0)
    meds = sorted(statistics.median(rng.choices(extra, k=len(extra))) for _ in range(draws))
    return meds[int(0.025 * draws)], meds[int(0.975 * draws) - 1], len(extra)


def _profiler_judged(prof: dict) -> tuple[str, str, bool]:
    """(the extra host time of ``profile(nvtx=False)`` with its interval, the verdict, whether
    the shortfalls list it: missed, or met at the median with the interval above the target)."""
    extra, ci = prof["on_no_nvtx_extra_us"], _profiler_interval(prof, "on_no_nvtx")
    figure = f"+{extra:.1f} µs"
    if ci:
        figure += f" (95 % interval {ci[0]:.1f}–{ci[1]:.1f} µs, {ci[2]} interleaved rounds)"
    verdict = _met(extra <= T_PROFILER_US)
    unsure = bool(ci) and extra <= T_PROFILER_US < ci[1]
    if unsure:
        verdict += " at the median, its interval reaching above the target"
    return figure, verdict, extra > T_PROFILER_US or unsure


def _build_spread(record: dict) -> str | None:
    """How a kernel-build record's compile time spreads over its kernels (wall seconds of
    each on its worker thread, in records that have them); None otherwise."""
    timed = [k for k in record["kernels"] if "seconds" in k]
    if not timed or len(timed) < len(record["kernels"]):
        return None
    secs = sorted(k["seconds"] for k in timed)
    total = sum(secs) or 1.0
    tail = secs[-max(1, len(secs) // 20) :]
    slowest = max(timed, key=lambda k: k["seconds"])
    return (
        f"a kernel's compile takes {statistics.median(secs):.2f} s at the median on its worker thread, the "
        f"slowest 5 % of kernels take {100 * sum(tail) / total:.0f} % of the summed {total:.0f} s (slowest: "
        f"`{slowest['kernel']}`, {slowest['seconds']:.1f} s)"
    )


def _host_call(doc: dict, mode: str = "fwd"):
    """(xpu_stone µs, torch.add µs, geoopt µs or None, file) of the small-call host rows
    of ``mode`` (``fwd``: autograd off; ``fwd_grad``: an input requires grad; ``fwd+bwd``:
    the call and its backward), from one file."""
    by_src = defaultdict(dict)
    for r in doc["benches"].get("poincare", {}).get("all_rows", []):
        if (
            r["op"].startswith("host_overhead")
            and r["mode"] == mode
            and r["ms"] > 0
            and math.isfinite(r["ms"])
        ):
            by_src[r["source"]][r["impl"]] = r["ms"] * 1000
    order = _source_order(doc)
    for src in sorted(by_src, key=order.__getitem__, reverse=True):
        t = by_src[src]
        if "xpu_stone" in t and "torch.add" in t:
            return t["xpu_stone"], t["torch.add"], t.get("geoopt"), src
    return None


def _shortfalls(doc: dict, files: dict, records: dict | None = None) -> list[str]:
    out = [
        "A cell is one op × dtype × feature size D; % of copy is the bytes a call reads and writes per second "
        "over those of a device-to-device copy in the same run (a fused read-mostly kernel can pass 100 %); a "
        "ratio to a rival is the rival's time over xpu_stone's (below 1: xpu_stone is slower).",
        "",
    ]
    fwd = {(bench, *k): r for bench in ROWWISE for k, r in pick(doc, bench, "xpu_stone", "fwd").items()}
    parts, conv = [], [r for (_b, op, *_), r in fwd.items() if op.startswith("convert.")]
    for dtype in ("float32", "bfloat16", "float16"):
        cells = [(k, r) for k, r in fwd.items() if k[2] == dtype and not k[1].startswith("convert.")]
        if not cells:
            parts.append(f"{DTYPE_SHORT[dtype]}: not measured (no {dtype} rows in the files)")
            continue
        ok = sum(r["pct_copy"] >= T_FWD_COPY for _, r in cells)
        (_, op, _, d), low = min(cells, key=lambda kr: kr[1]["pct_copy"])
        parts.append(
            f"{DTYPE_SHORT[dtype]}: {ok} of {len(cells)} cells, {_span([r['pct_copy'] for _, r in cells], _pct)} % "
            f"(lowest: {op}, D = {d})"
        )
    if fwd:
        by_file = defaultdict(int)
        for r in fwd.values():
            by_file[r["source"]] += 1
        text = (
            f"- Row-wise forward ≥ {T_FWD_COPY:.0f} % of copy on every cell: "
            + "; ".join(parts)
            + " (cells by file: "
            + ", ".join(f"`{f}` {n}" for f, n in sorted(by_file.items()))
            + ")"
        )
        if conv:
            ok = sum(r["pct_copy"] >= T_CONVERT_COPY for r in conv)
            text += (
                f". The conversions ≥ {T_CONVERT_COPY:.0f} %: {ok} of {len(conv)} cells, "
                f"{_span([r['pct_copy'] for r in conv], _pct)} %"
            )
        out.append(f"{text}. {_why('fwd')}")
    ratios, low, sources, shares = [], [], [], {"xpu_stone": [], "torch_compile": []}
    for bench in ROWWISE:
        for t in _same_run_by_d(doc, bench).values():
            xs, tc = t.get(("xpu_stone", "fwd")), t.get(("torch_compile", "fwd"))
            if xs and tc:
                ratios.append(tc["ms"] / xs["ms"])
                sources.append(xs["source"])
                low += [tc["ms"] / xs["ms"]] if tc["pct_copy"] < T_COMPILE_LOW else []
                shares["xpu_stone"].append(xs["pct_copy"])
                shares["torch_compile"].append(tc["pct_copy"])
    if ratios:
        out.append(
            f"- Forward ahead of torch.compile on every cell (≥ {T_FWD_COMPILE}× where it is under "
            f"{T_COMPILE_LOW:.0f} % of copy): ahead on {sum(r > 1 for r in ratios)} of {len(ratios)} cells, "
            f"{_span(ratios, _x)}"
            + (
                f"; where torch.compile is under {T_COMPILE_LOW:.0f} %: {sum(r >= T_FWD_COMPILE for r in low)} "
                f"of {len(low)} at ≥ {T_FWD_COMPILE}×"
                if low
                else ""
            )
            + f"; on these cells xpu_stone runs at {_shares(shares['xpu_stone'])} of copy, torch.compile at "
            f"{_shares(shares['torch_compile'])} ({_files(sources)}). {_why('compile')}"
        )
    want, vs = 0, {"torch_compile": [], "geoopt": []}
    fb_shares = {"xpu_stone": [], "torch_compile": []}
    unmeasured = {"torch_compile": [], "geoopt": []}
    for bench in ROWWISE:
        runs = _same_run_by_d(doc, bench)
        for op, dtype, d in pick(doc, bench, "xpu_stone", "fwd+bwd"):
            if (
                op.split(".")[-1] in FB_OPS
                and not op.startswith(("klein.", "convert."))
                and dtype in FB_DTYPES
                and d in FB_DIMS
            ):
                want += 1
                t = runs.get((op, dtype, d), {})
                mine = t.get(("xpu_stone", "fwd+bwd"))  # the xpu_stone time of that run
                for impl in vs:
                    if mine and (impl, "fwd+bwd") in t:
                        vs[impl].append(t[(impl, "fwd+bwd")]["ms"] / mine["ms"])
                    else:
                        unmeasured[impl].append(f"{op} {DTYPE_SHORT[dtype]} D = {d}")
                if mine and ("torch_compile", "fwd+bwd") in t:
                    fb_shares["xpu_stone"].append(mine["pct_copy"])
                    fb_shares["torch_compile"].append(t[("torch_compile", "fwd+bwd")]["pct_copy"])
    if want:
        got = [
            f"{len(vs[i])} of {want} cells measured against {LABEL[i]}, {_span(vs[i], _x)}, "
            f"{sum(v >= tgt for v in vs[i])} at ≥ {tgt:g}×"
            if vs[i]
            else f"none measured against {LABEL[i]}"
            for i, tgt in (("torch_compile", T_FB_COMPILE), ("geoopt", T_FB_GEOOPT))
        ]
        out.append(
            f"- Forward + backward ≥ {T_FB_COMPILE}× torch.compile and ≥ {T_FB_GEOOPT:.0f}× geoopt for "
            f"{', '.join(FB_OPS)} (Poincaré and Lorentz; {', '.join(DTYPE_SHORT[d] for d in FB_DTYPES)}; "
            f"D = {' and '.join(map(str, FB_DIMS))}): "
            + "; ".join(got)
            + (
                f"; forward+backward moves its bytes at {_shares(fb_shares['xpu_stone'])} of copy in "
                f"xpu_stone, {_shares(fb_shares['torch_compile'])} in torch.compile, which is above 1/"
                f"{T_FB_COMPILE} of copy on {sum(v > 100 / T_FB_COMPILE for v in fb_shares['torch_compile'])} "
                f"of these cells"
                if fb_shares["xpu_stone"]
                else ""
            )
            + "".join(
                f"; not measured against {LABEL[i]}: {', '.join(cells)}"
                for i, cells in unmeasured.items()
                if cells
            )
            + f". {_why('fb')}"
        )
    # the judged ratio: paired round by round in the hostpath file where it has its rounds
    # (the host's speed drifts between batches), else the table's unpaired host rows
    hosts = {m: _host_call(doc, m) for m in HOST_SAID}
    paired = {m: _host_paired(doc, m) for m in HOST_SAID}
    judged = {
        m: paired[m][0] if paired[m] else hosts[m][0] / hosts[m][1] if hosts[m] else None for m in HOST_SAID
    }
    targets = {"fwd": T_SMALL_CALL, "fwd_grad": T_SMALL_CALL_GRAD}
    if any(r is not None for r in judged.values()):
        parts = [
            f"≤ {targets[m]:.0f}× `torch.add` with {HOST_SAID[m]}: "
            + (f"{_x(r)}, {_met(r <= targets[m])}" if r is not None else "not measured in the files")
            for m, r in judged.items()
        ]
        srcs = []
        if any(paired.values()):
            n = next(p[1] for p in paired.values() if p)
            srcs.append(f"medians of {n} rounds pairing the two, `{_hostpath_file(doc)}`")
        if any(hosts.values()) and "poincare" in files:
            table = " and ".join(_x(h[0] / h[1]) for h in hosts.values() if h)
            srcs.append(
                f"the table's unpaired run: {table}, `{files['poincare']}`" if any(paired.values()) else
                f"`{files['poincare']}`"
            )  # fmt: skip
        missed = any(r is not None and r > targets[m] for m, r in judged.items())
        split = _host_split(doc, ratios=False)
        why = _why("small", tail=f"; {split or 'the split is not in a result file'}")
        out.append(
            "- Small call " + "; ".join(parts) + (f" ({'; '.join(srcs)})" if srcs else "")
            + (f". {why}" if missed else ".")
        )  # fmt: skip
    pw = _pairwise(doc)
    if not pw:
        out.append(
            f"- cdist ≤ {T_CDIST_GEMM}× the GEMM alone, knn memory O(N·k + tile): no committed JSON result; knn's "
            "memory has never been recorded."
        )
    else:
        part, missed = [], []
        if pw["gemm"] and pw["cdist"]:
            r = pw["cdist"]["ms"] / pw["gemm"]["ms"]
            part.append(f"cdist {_x(r)} the GEMM alone, {_met(r <= T_CDIST_GEMM)}")
            missed += ["cdist"] if r > T_CDIST_GEMM else []
        for row in pw["knn_memory"]:
            extra, bound = _knn_bound(row)
            part.append(f"knn peak {extra:.0f} MiB for {row['shape'][0]}×{row['shape'][1]} (bound {bound:.0f} MiB), "
                        f"{_met(extra <= bound)}")  # fmt: skip
            missed += ["knn"] if extra > bound and "knn" not in missed else []
        if part:
            out.append(f"- cdist ≤ {T_CDIST_GEMM}× the GEMM alone, knn memory O(N·k + tile) (`{pw['source']}`): "
                       + "; ".join(part) + "." + "".join(f" {key}: {_why(key)}" for key in missed))  # fmt: skip
    lin = _linear_ratios(doc)
    if lin:
        r = {xs["op"]: tc["ms"] / xs["ms"] for xs, tc in lin}
        met = all(v >= T_LINEAR for v in r.values())
        out.append(
            f"- Linear layers forward + backward ≥ {T_LINEAR}× torch.compile: "
            + ", ".join(f"{op} {_x(v)}" for op, v in r.items())
            + f", {_met(met)} (`{files['linear']}`)"
            + ("." if met else f". {_why('linear')}")
        )
    loop = _userloop_variants(doc)
    if loop:
        eager = loop.get("xpu_stone:eager", {})
        steps = [v for k, v in loop.items() if k.startswith("xpu_stone:") and v.get("mode") != "eager"]
        part = [
            f"eager at most {T_LOOP_FLOOR}× its Euclidean floor: "
            + (
                f"{_x(eager['ratio_to_euclid_eager'])}, {_met(eager['ratio_to_euclid_eager'] <= T_LOOP_FLOOR)}"
                if eager.get("ratio_to_euclid_eager")
                else "not measured"
            )
        ]
        best = max(steps, key=lambda v: v.get("speedup_vs_geoopt_eager") or 0.0, default=None)
        if best is not None and best.get("speedup_vs_geoopt_eager"):
            sp = best["speedup_vs_geoopt_eager"]
            part.append(
                f"its step compiled or captured ≥ {T_LOOP_GEOOPT:.0f}× geoopt's eager loop: {_x(sp)} "
                f"({best['variant']}), {_met(sp >= T_LOOP_GEOOPT)}"
            )
        for v in steps:
            if v is best:
                continue
            sp = v.get("speedup_vs_geoopt_eager")
            text = f"{v['variant']} {_x(sp)}" if sp else f"{v['variant']} {v.get('skipped') or 'failed'}"
            breaks = v.get("dynamo", {}).get("graph_break_reasons")
            if breaks:
                text += f" ({sum(breaks.values())} graph-break events: " + ", ".join(breaks) + ")"
            part.append(text)
        maps = {k: v["map"] for k, v in loop.items() if v.get("map") is not None}
        if maps:
            part.append(
                "same reconstruction quality, MAP: " + ", ".join(f"{k} {m:.3f}" for k, m in maps.items())
            )
        out.append(f"- The user's loop (`{files['userloop']}`): " + "; ".join(part) + f". {_why('loop')}")
    else:
        out.append("- The user's loop: no committed `userloop-*.json` (`bash benchmarks/run.sh userloop`).")
    prof = doc["benches"].get("session", {}).get("profiler", {})
    if "on_no_nvtx_extra_us" in prof and (judged := _profiler_judged(prof))[2]:
        out.append(
            f"- Profiler open without GPU timing ≤ {T_PROFILER_US:.0f} µs a call: {judged[0]}, {judged[1]} "
            f"(`{files['session']}`). {_why('profiler')}"
        )
    # the cold builds of the newest date, one target line: each build's time, one reason
    builds = [(path, json.loads(path.read_text())) for path in (records or {}).get("kernel-build", [])]
    cold = [(path, r) for path, r in builds if not any(k["cached"] for k in r["kernels"])]
    if any(r["elapsed_s"] > T_BUILD_S for _, r in cold):
        times = " and ".join(f"{r['elapsed_s']:.1f} s (`{path.name}`)" for path, r in cold)
        spread = next((sp for _, r in reversed(cold) if (sp := _build_spread(r))), "not investigated")
        out.append(
            f"- Kernel build ≤ {T_BUILD_S:.0f} s cold: {len(cold[-1][1]['kernels']):,} kernels in {times}, missed. "
            f"{_why('build', lead=f'{spread}; ')}"
        )
    return ["### Where this falls short of the targets", "", *out, ""]


def readme_section(results: Path, gpu: str | None = None, rel: str = "benchmarks/results/plots") -> str:
    """The README's performance section, from the newest result files of each
    benchmark in ``results`` (merged as :func:`combine` merges them) and nothing else."""
    gpu, by_bench = find_inputs(results, gpu)
    doc = combine(by_bench)
    records = find_records(results, gpu)
    files = {b: paths[-1].name for b, paths in by_bench.items()}
    metas = [b["meta"] for b in doc["benches"].values() if "meta" in b]
    metas += [json.loads(p.read_text()) for p in records.get("gpu-tests", [])]
    versions = sorted(
        {f"torch {m['torch']}, CuPy {m['cupy']}, CUDA {m['cuda']}" for m in metas if m.get("torch")}
    )
    names = doc["sources"] + [p.name for paths in records.values() for p in paths]
    dates = sorted(
        {m["date"] for m in map(RECORD_NAME.match, names) if m}
        | {m["date"] for m in map(NAME.match, names) if m}
    )
    copies = [c for b in doc["benches"].values() for c in b.get("copy_by_source", {}).values() if c]
    lines = [
        "## Performance",
        "",
        "Generated by `python scripts/bench_report.py --readme` from the newest result files of each benchmark "
        "in `benchmarks/results/` (a CPU test checks that this section is what the script writes: change the "
        "files or the script, not this text). Every figure names its file; a figure without a file is not "
        "quoted. Every benchmark is `python -m benchmarks.bench_<name>` (`bash benchmarks/run.sh --help`).",
        "",
        f"{doc['gpu']}; {'; '.join(versions)}; runs of {dates[0]} to {dates[-1]}. Bandwidth counts bytes read plus "
        "written; % of copy is against a device-to-device copy measured in the same run"
        + (f" ({_span(copies, _pct)} GB/s)." if copies else "."),
        "",
    ]
    lines += _shortfalls(doc, files, records)  # the verdicts first, the figures behind them after
    for bench in ROWWISE:
        lines += _rowwise_section(doc, bench)
    lines += _end_to_end_section(doc, files)
    lines += _userloop_section(doc, files)
    plots = [n for n in plot_names(doc) if (results / "plots" / n).exists()]
    if plots:
        lines += [f"### Plots ({doc['gpu']})", "", *plot_lines(plots, rel)]
    lines += _tests_section(doc, records)
    return "\n".join(lines) + "\n"


def between_markers(text: str) -> str:
    """The text between the README's ``<!-- perf:begin -->`` line and ``<!-- perf:end -->``."""
    begin = text.find(README_BEGIN + "\n")
    end = text.find(README_END, max(begin, 0))
    if begin < 0 or end < begin:
        raise ValueError(f"the README has no '{README_BEGIN}' line followed by '{README_END}'")
    return text[begin + len(README_BEGIN) + 1 : end]


def write_readme(results: Path, gpu, rel: str, out: str | None, into: str | None) -> int:
    """``--readme`` / ``--readme-into``: the section to ``out`` (``-``: stdout) and/or
    spliced between the markers of the file ``into``."""
    section = readme_section(results, gpu, rel)
    if out == "-":
        sys.stdout.write(section)
    elif out:
        Path(out).write_text(section)
    if into:
        text = Path(into).read_text()
        try:
            old = between_markers(text)
        except ValueError as e:
            print(f"{into}: {e}", file=sys.stderr)
            return 2
        start = text.index(README_BEGIN) + len(README_BEGIN) + 1
        Path(into).write_text(text[:start] + section + text[start + len(old) :])
        print(
            f"{into}: performance section {'unchanged' if old == section else 'rewritten'}", file=sys.stderr
        )
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--plots", default=None, help="default: <results>/plots")
    p.add_argument("--run", action="store_true", help="run the benchmarks first (needs a GPU)")
    p.add_argument("--only", nargs="*", default=list(BENCHES), choices=BENCHES)
    p.add_argument("--gpu", default=None, help="GPU tag of the inputs (default: the newest results')")
    p.add_argument("--markdown", default=None, help="write the README snippet here")
    p.add_argument("--readme-path", default="benchmarks/results/plots", help="image path in the snippet")
    p.add_argument(
        "--readme",
        nargs="?",
        const="-",
        default=None,
        metavar="PATH",
        help="only write the README's performance section (to PATH; - or none: stdout)",
    )
    p.add_argument(
        "--readme-into",
        default=None,
        metavar="README",
        help="only replace the text between README's perf markers with that section",
    )
    args = p.parse_args(argv)
    results = Path(args.results)
    if args.readme or args.readme_into:
        return write_readme(results, args.gpu, args.readme_path, args.readme, args.readme_into)
    failed = run_benchmarks(args.only, results) if args.run else []
    gpu, by_bench = find_inputs(results, args.gpu)
    by_bench = {k: v for k, v in by_bench.items() if k in args.only}
    doc = combine(by_bench)
    combined = results / f"{gpu}-{doc['date']}.json"
    combined.write_text(json.dumps(doc, indent=1))
    reports = find_tuning(results)
    plots = render(doc, Path(args.plots) if args.plots else results / "plots", reports)
    for path in plots:
        print(f"{path} ({path.stat().st_size // 1024} KB)")
    text = markdown(doc, [p for p in plots if p.stem != "tuning-speedup"], args.readme_path)
    if reports:
        text += f"\n### Tuned tables\n\n![tuning-speedup]({args.readme_path}/tuning-speedup.png)\n\n"
        text += tuning_markdown(reports)
    if args.markdown:
        Path(args.markdown).write_text(text)
        print(f"wrote {args.markdown}")
    print(f"wrote {combined} from {len(doc['sources'])} files: {', '.join(doc['sources'])}")
    if failed:
        print(f"benchmarks that failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
