"""Runs the benchmarks (or takes their JSON results), combines them and plots them.

    python scripts/bench_report.py                 # the newest results in benchmarks/results/
    python scripts/bench_report.py --run           # run every benchmark first (a GPU; ~15-25 min)
    python scripts/bench_report.py --run --only poincare models

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
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHES = ("poincare", "models", "pairwise", "linear", "session", "optim", "embeddings")
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
    if gpu is None:
        gpu = max(found, key=lambda g: max(f[0] for f in found[g]))
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
            rows = {}
            for p, d in zip(paths, docs):
                for r in d["rows"]:
                    if str(r.get("note", "")).startswith("invalid"):
                        continue  # a measurement its own file marks as not what it claims
                    rows[_row_key(r)] = {**r, "source": p.name}
            benches[bench] = {"meta": newest.get("meta", {}), "copy_gbps": newest.get("copy_gbps", 0.0)}
            benches[bench]["rows"] = list(rows.values())
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
        print(f"running benchmarks.bench_{name} (log {log})", flush=True)
        with log.open("w") as f:
            rc = subprocess.call(
                [sys.executable, "-m", f"benchmarks.bench_{name}", "--out", str(results)],
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
    """(bench, op, dtype, D) -> {impl: other ms / xpu_stone ms} where both were measured."""
    times = defaultdict(dict)
    for bench, r in rowwise_rows(doc):
        if r["mode"] == mode:
            times[(bench, r["op"], r["dtype"], feature_size(r))][r["impl"]] = r["ms"]
    out = {}
    for key, t in times.items():
        if "xpu_stone" in t and len(t) > 1:
            out[key] = {impl: ms / t["xpu_stone"] for impl, ms in t.items() if impl != "xpu_stone"}
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
    shown = [p for p in plots if "bfloat16" not in p.name]
    for p in shown:
        lines += [f"![{p.stem}]({rel}/{p.name})", ""]
    more = [p for p in plots if p not in shown]
    if more:
        lines += ["bfloat16: " + ", ".join(f"[{p.stem}]({rel}/{p.name})" for p in more), ""]
    sp = speedups(doc)
    if sp:
        lines += [
            "Forward+backward, float32: xpu_stone's bandwidth and its speed-up over each implementation",
            "",
            "| op | D | xpu_stone GB/s | % of copy | vs torch eager | vs torch.compile | vs geoopt |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        xs = {
            (b, r["op"], r["dtype"], feature_size(r)): r
            for b, r in rowwise_rows(doc)
            if r["impl"] == "xpu_stone" and r["mode"] == "fwd+bwd"
        }
        for key in sorted(k for k in sp if k[2] == "float32"):
            r = xs[key]
            cells = [f"{sp[key][i]:.1f}x" if i in sp[key] else "" for i in IMPLS[1:]]
            lines.append(
                f"| {key[1]} | {key[3]} | {r['gbps']:.0f} | {r['pct_copy']:.0f} | " + " | ".join(cells) + " |"
            )
        lines.append("")
    return "\n".join(lines)


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


def plot_bandwidth(doc: dict, folder: Path, plt) -> list[Path]:
    series = defaultdict(lambda: defaultdict(list))  # (bench, mode, dtype) -> (op, impl) -> [(D, GB/s)]
    for bench, r in rowwise_rows(doc):
        series[(bench, r["mode"], r["dtype"])][(r["op"], r["impl"])].append((feature_size(r), r["gbps"]))
    out = []
    for (bench, mode, dtype), lines in sorted(series.items()):
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
        out.append(_save(fig, folder / f"bandwidth-{bench}-{mode.replace('+', '_')}-{dtype}.png", plt))
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
            out.append((f"{what} {'x'.join(map(str, r['shape']))}", r["ms"] * 1000))
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--plots", default=None, help="default: <results>/plots")
    p.add_argument("--run", action="store_true", help="run the benchmarks first (needs a GPU)")
    p.add_argument("--only", nargs="*", default=list(BENCHES), choices=BENCHES)
    p.add_argument("--gpu", default=None, help="GPU tag of the inputs (default: the newest results')")
    p.add_argument("--markdown", default=None, help="write the README snippet here")
    p.add_argument("--readme-path", default="benchmarks/results/plots", help="image path in the snippet")
    args = p.parse_args(argv)
    results = Path(args.results)
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
