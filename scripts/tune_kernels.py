"""Tunes the row-wise kernels for the current GPU and writes its tuned table.

    python scripts/tune_kernels.py --dry-run                 # the plan and time estimate (no GPU needed)
    python scripts/tune_kernels.py                           # every row-wise op, fp32/bf16/fp16/fp64
    python scripts/tune_kernels.py --ops poincare_dist --dtypes float32 --buckets 64 1024
    python scripts/tune_kernels.py --dtypes float16 bfloat16 --merge-into xpu_stone/kernels/tables/nvidia-h200.json

For each (op, dtype, feature size D in the buckets) every variant and launch
configuration that takes rows of D (see ``xpu_stone.kernels.tuner.candidates``)
is forced through the dispatcher's tuned-table hook and run through the
library's own launch path. Each configuration is first checked: its forward
output and its input gradients on a few thousand rows (outputs poisoned with
NaN) against the independent float64 reference (``xpu_stone.reference`` with
autograd, on float64 copies of the same rounded inputs:
``tuner.reference_outputs``); a wrong or failing configuration is recorded and
never chosen.
Then forward and backward are timed with CUDA events (median of ``--reps``
calls over input sets rotated past the L2 cache; ``benchmarks/harness.py``).
Every measurement is appended to a cache file per device and problem, so an
interrupted run resumes where it stopped. The table goes to
``xpu_stone/kernels/tables/<gpu>.json`` (``--out``) and its summary to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import statistics
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import xpu_stone  # noqa: E402,F401  (registers the ops)
from xpu_stone import config, ops  # noqa: E402
from xpu_stone.constants import BOUNDARY_EPS  # noqa: E402
from xpu_stone.engine.launch import TORCH_OF  # noqa: E402
from xpu_stone.engine.rowwise_cuda import launch_backward, launch_forward  # noqa: E402
from xpu_stone.kernels import REGISTRY, dispatcher, tuned_table, tuner  # noqa: E402
from xpu_stone.kernels.registry import DTYPES, ITEMSIZE, OpKernels  # noqa: E402

C_VAL = 1.0
T_VAL = 0.6  # the per-row scalar of ops that take one (geodesic t, scalar-mul r)
CHECK_ELEMS = 1 << 18  # elements of one input of the correctness check
# Elementwise check |out - ref| <= tol * (|ref| + rms of ref's row): output rounding
# and fp32-accurate transcendentals pass; an element left out or a wrong reduction fails.
FWD_TOL = {"float64": 1e-9, "float32": 2e-5, "float16": 1e-2, "bfloat16": 4e-2}
BWD_TOL = {"float64": 1e-8, "float32": 2e-4, "float16": 3e-2, "bfloat16": 8e-2}


def row_ops() -> dict:
    """qualname -> RowOp of every row-wise op."""
    return {op.qualname: op for op in ops.row_ops()}


def arg_kinds(op) -> str:
    """One letter per vector input (the reference module's ARG_KINDS without the
    per-row scalar): p a point, b a ball point, v a tangent vector, w any vector."""
    ref = importlib.import_module(f"xpu_stone.reference.{op.family}")
    kinds = getattr(ref, "ARG_KINDS", {}).get(op.name, "").replace("s", "")
    return kinds if len(kinds) == len(op.vectors) else "b" * len(op.vectors)


def op_inputs(op, rows: int, d: int, torch, gen, device, dtype):
    """Well-conditioned inputs of ``op`` (c = 1): ball points of norm in [0.05, 0.9],
    hyperboloid points at distance in [0.05, 2.5] from the origin, tangent vectors
    (at the first point, or at a fresh one) or free vectors of norm in [0.05, 2];
    computed in ``dtype``."""

    def radius(lo, hi):
        return lo + (hi - lo) * torch.rand(rows, 1, generator=gen, device=device, dtype=dtype)

    def direction(n):
        v = torch.randn(rows, n, generator=gen, device=device, dtype=dtype)
        return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-30)

    def hyperboloid_point():
        r = radius(0.05, 2.5)
        return torch.cat((torch.cosh(r), torch.sinh(r) * direction(d - 1)), -1)

    hyperboloid = op.family in ("lorentz", "convert")
    out = []
    for k in arg_kinds(op):
        if k == "p" and hyperboloid:
            a = hyperboloid_point()
        elif k in ("p", "b"):
            a = direction(d) * radius(0.05, 0.9)
        elif k == "v" and op.family == "lorentz":
            x = out[0] if out else hyperboloid_point()  # the tangent space at x: w + <x, w>_L x
            w = direction(d) * radius(0.05, 2.0)
            inner = (x[:, 1:] * w[:, 1:]).sum(-1, keepdim=True) - x[:, :1] * w[:, :1]
            a = w + inner * x
        else:
            a = direction(d) * radius(0.05, 2.0)
        out.append(a)
    return out


def elementwise_error(out, ref, dtype: str, torch) -> float:
    """max |out - ref| / (|ref| + rms of the row of ref); inf for a NaN or inf where ref is finite."""
    out, ref = out.double().reshape(ref.shape[0], -1), ref.double().reshape(ref.shape[0], -1)
    if bool((~torch.isfinite(out) & torch.isfinite(ref)).any()):
        return math.inf
    floor = 6.2e-5 if dtype == "float16" else 1e-30  # fp16 holds nothing smaller to any accuracy
    rms = ref.pow(2).mean(-1, keepdim=True).sqrt()
    return float(((out - ref).abs() / (ref.abs() + rms + floor)).max())


class Forced(dispatcher.TunedTable):
    """A table that answers one configuration for one op."""

    def __init__(self, op: str, variant: str, cfg):
        self.op, self.choice = op, dispatcher.TableChoice(variant, cfg, "forced by tune_kernels")

    def lookup(self, op, dtype, d, device):
        return self.choice if op == self.op else None


class CellBench:
    """The check data (with its float64 reference) and the timing sets of one cell."""

    def __init__(self, op, cell, target_bytes: float, torch, harness, dev: int):
        self.torch, self.harness, self.op, self.cell, self.dev = torch, harness, op, cell, dev
        tdt = TORCH_OF[cell.dtype]
        d, nv = cell.bucket, len(op.vectors)
        self.eps = BOUNDARY_EPS[cell.dtype] if op.uses_eps else 0.0
        self.needs = [True] * nv + [False, False]
        gen = torch.Generator().manual_seed(zlib.crc32(cell.key.encode()))
        rows = 3 + max(64, CHECK_ELEMS // d)  # odd: partial blocks
        vecs = [v.to(tdt) for v in op_inputs(op, rows, d, torch, gen, "cpu", torch.float64)]
        shape = (rows,) if op.scalar_out else (rows, op.out_width(d))
        grad = torch.randn(shape, generator=gen, dtype=torch.float64).to(tdt)
        self.ref_out, self.ref_grads = tuner.reference_outputs(op, vecs, grad, C_VAL, T_VAL, self.eps)
        self.check = (grad.cuda(dev), *(v.cuda(dev) for v in vecs))
        self.check_rows = rows
        # timing: one forward moves about target_bytes
        per_row = row_bytes(op, cell)
        self.rows = max(1, int(target_bytes // per_row))
        gpu_gen = torch.Generator(device=f"cuda:{dev}").manual_seed(0)
        self.sets = []
        for _ in range(harness.rotations(self.rows * per_row)):
            v = [a.to(tdt) for a in op_inputs(op, self.rows, d, torch, gpu_gen, f"cuda:{dev}", torch.float32)]
            shape = (self.rows,) if op.scalar_out else (self.rows, op.out_width(d))
            g = torch.randn(shape, generator=gpu_gen, device=f"cuda:{dev}", dtype=torch.float32).to(tdt)
            self.sets.append((g, *v))

    def forward(self, grad, *vecs):
        batch = (vecs[0].shape[0],)
        return launch_forward(self.op, vecs, None, C_VAL, None, T_VAL, self.eps, self.cell.dtype, batch)

    def backward(self, grad, *vecs):
        batch = (vecs[0].shape[0],)
        return launch_backward(
            self.op, grad, vecs, None, C_VAL, None, T_VAL, self.eps, self.cell.dtype, batch, self.needs
        )

    def force(self, variant: str, cfg) -> bool:
        """Routes the op's dispatches to one configuration; False if the dispatcher refuses it."""
        dispatcher.set_tuned_table(Forced(self.cell.op, variant, cfg))
        got = dispatcher.select(self.cell.op, self.cell.dtype, self.cell.width, self.cell.aligned, self.dev)
        return (got.variant, got.config) == (variant, cfg)

    def time(self, warmup: int, reps: int) -> tuple[float, float]:
        """Forward and backward ms of the forced configuration."""
        with self.torch.no_grad():
            fwd_ms = self.harness.time_calls(self.forward, self.sets, warmup, reps)
            bwd_ms = self.harness.time_calls(self.backward, self.sets, warmup, reps)
        return fwd_ms, bwd_ms

    def run(self, variant: str, cfg, warmup: int, reps: int) -> dict:
        """Checks, then times, one configuration; the cache record's fields."""
        torch, cell = self.torch, self.cell
        if not self.force(variant, cfg):
            return {"status": "failed", "error": "the dispatcher ran another configuration"}
        try:
            config.poison_outputs = True
            out = self.forward(*self.check)
            grads = self.backward(*self.check)[: len(self.op.vectors)]
            torch.cuda.synchronize(self.dev)
        except Exception as e:  # a kernel that cannot launch or crashes is recorded, not chosen
            return {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        finally:
            config.poison_outputs = False
        fwd_err = elementwise_error(out.cpu(), self.ref_out, cell.dtype, torch)
        bwd_err = max(elementwise_error(g.cpu(), r, cell.dtype, torch) for g, r in zip(grads, self.ref_grads))
        errs = {"fwd_err": fwd_err if math.isfinite(fwd_err) else None}
        errs["bwd_err"] = bwd_err if math.isfinite(bwd_err) else None
        if not (fwd_err <= FWD_TOL[cell.dtype] and bwd_err <= BWD_TOL[cell.dtype]):
            return {"status": "wrong", "error": f"max error fwd {fwd_err:.3g}, bwd {bwd_err:.3g}", **errs}
        fwd_ms, bwd_ms = self.time(warmup, reps)
        return {"status": "ok", "fwd_ms": fwd_ms, "bwd_ms": bwd_ms, **errs}

    def verify(self, entry, warmup: int, reps: int, rounds: int = 3) -> tuple[float, float]:
        """(winner ms, heuristic ms), forward + backward: each the median of ``rounds``
        timings, the two configurations alternating."""
        times = {"winner": [], "heuristic": []}
        pair = {"winner": (entry.variant, entry.config),
                "heuristic": (entry.heuristic_variant, entry.heuristic_config)}  # fmt: skip
        for _ in range(rounds):
            for name, (variant, cfg) in pair.items():
                self.force(variant, cfg)
                times[name].append(sum(self.time(warmup, reps)))
        return statistics.median(times["winner"]), statistics.median(times["heuristic"])


def row_bytes(op, cell) -> int:
    """Bytes a forward call reads and writes for one row of the cell."""
    d = cell.bucket
    return (len(op.vectors) * d + (1 if op.scalar_out else op.out_width(d))) * ITEMSIZE[cell.dtype]


def verify_table(table, cells, cache, bench_of, warmup: int, reps: int) -> list[str]:
    """Times every changed cell's winner against the heuristic again (in place); a
    winner not faster there gives way to the heuristic. The timings go to the cache,
    so a resumed run takes the same decisions. Returns the cells reverted."""
    import torch
    from tqdm import tqdm

    reverted = []
    changed = [c for c in cells if (e := table.entries.get((c.op, c.dtype, c.bucket))) and e.changed]
    for cell in tqdm(changed, desc="verifying", unit="cell"):
        key = (cell.op, cell.dtype, cell.bucket)
        entry = table.entries[key]
        if entry.heuristic_ms is None:
            continue  # the heuristic's own configuration failed: nothing to compare with
        rec = cache.get_verified(cell, entry.variant, entry.config)
        if rec is None:
            rec = cache.add_verified(
                cell, entry.variant, entry.config, *bench_of(cell).verify(entry, warmup, reps)
            )
        win_ms, heur_ms = rec["winner_ms"], rec["heuristic_ms"]
        if win_ms < heur_ms:
            table.entries[key] = dataclasses.replace(entry, verified_ms=win_ms, verified_heuristic_ms=heur_ms)
        else:
            reverted.append(f"{cell.key} ({heur_ms / win_ms - 1:+.1%})")
            rec = cache.get(cell, *cell.heuristic)
            table.entries[key] = dataclasses.replace(
                entry, variant=cell.heuristic[0], config=cell.heuristic[1], fwd_ms=rec["fwd_ms"],
                bwd_ms=rec["bwd_ms"], verified_ms=None, verified_heuristic_ms=None,
            )  # fmt: skip
        torch.cuda.empty_cache()
    return reverted


def report(table, cells, cache, ops_by_name, target_bytes: float, copy_gbps: float) -> dict:
    """Per cell: heuristic and tuned configuration, times, margins, and the heuristic
    forward's bandwidth against the device copy; per dtype: their summary."""
    rows = []
    for cell in cells:
        e = table.entries.get((cell.op, cell.dtype, cell.bucket))
        rec = cache.get(cell, *cell.heuristic)
        per_row = row_bytes(ops_by_name[cell.op], cell)
        nbytes = max(1, int(target_bytes // per_row)) * per_row
        heur_gbps = nbytes / (rec["fwd_ms"] * 1e-3) / 1e9 if rec and rec["status"] == "ok" else None
        rows.append({
            "op": cell.op, "dtype": cell.dtype, "bucket": cell.bucket,
            "heuristic": [cell.heuristic[0], tuned_table.config_list(cell.heuristic[1])],
            "tuned": None if e is None else [e.variant, tuned_table.config_list(e.config)],
            "heuristic_ms": None if e is None else e.heuristic_ms, "tuned_ms": None if e is None else e.ms,
            "margin": None if e is None else e.margin,
            "verified_margin": None if e is None else e.verified_margin,
            "heuristic_fwd_gbps": heur_gbps,
            "heuristic_fwd_of_copy": None if heur_gbps is None else heur_gbps / copy_gbps,
        })  # fmt: skip
    per_dtype = {}
    for dtype in sorted({r["dtype"] for r in rows}):
        mine = [r for r in rows if r["dtype"] == dtype]
        verified = [r["verified_margin"] for r in mine if r["verified_margin"] is not None]
        of_copy = [r["heuristic_fwd_of_copy"] for r in mine if r["heuristic_fwd_of_copy"] is not None]
        per_dtype[dtype] = {
            "cells": len(mine),
            "changed": sum(1 for r in mine if r["tuned"] and r["tuned"] != r["heuristic"]),
            "verified_geomean": tuner.geomean_gain(verified),
            "verified_worst": min(verified, default=0.0),
            "heuristic_fwd_of_copy_geomean": math.exp(sum(map(math.log, of_copy)) / len(of_copy)) if of_copy else None,
            "heuristic_fwd_at_95pct_copy": sum(1 for f in of_copy if f >= 0.95),
        }  # fmt: skip
    return {"gpu_name": table.gpu_name, "date": table.date, "copy_gbps": copy_gbps, "per_dtype": per_dtype,
            "cells": rows}  # fmt: skip


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ops", nargs="*", default=None, help="default: every row-wise op in the registry")
    p.add_argument("--dtypes", nargs="*", default=list(DTYPES))
    p.add_argument("--buckets", nargs="*", type=int, default=list(tuned_table.DEFAULT_BUCKETS))
    p.add_argument("--target-mb", type=float, default=256, help="MB one forward call moves")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--min-margin", type=float, default=tuner.DEFAULT_MIN_MARGIN)
    p.add_argument("--cache-dir", default=str(tuner.default_cache_dir()))
    p.add_argument(
        "--out", default=None, help="default: xpu_stone/kernels/tables/<gpu>.json (or --merge-into)"
    )
    p.add_argument(
        "--merge-into",
        default=None,
        help="a tuned table of this GPU to complete: its entries of the dtypes not tuned now are kept "
        "(tuner.merge); written to --out, default this path",
    )
    p.add_argument("--device", type=int, default=0)
    p.add_argument("--no-verify", action="store_true", help="skip timing the changed cells a second time")
    p.add_argument(
        "--report",
        default=None,
        help="per-cell report JSON (default: benchmarks/results/tuning-<gpu>-<date>.json; '' for none)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan and estimate, run nothing")
    return p.parse_args(argv)


def summary_lines(table) -> str:
    """One line per tuned cell: op, dtype, bucket, winner and its margin over the heuristic."""
    lines = []
    for e in sorted(table.entries.values(), key=lambda e: (e.op, e.dtype, e.bucket)):
        margin = "heuristic failed" if e.margin is None else f"{e.margin:+.1%}"
        cfg = str(tuple(tuned_table.config_list(e.config)))
        lines.append(f"{e.op:32s} {e.dtype:9s} D={e.bucket:<5d} {e.variant:22s} {cfg:22s} {margin}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse(argv)
    ops_by_name = row_ops()
    ops = args.ops or [k.op for k in REGISTRY if isinstance(k, OpKernels)]

    def row_width(name, d):
        op = ops_by_name[name]
        return op.width(d), not op.shifted  # shifted ops run unaligned (launch_forward)

    cells = tuner.plan(ops, args.dtypes, args.buckets, row_width)
    n = sum(len(c.candidates) for c in cells)
    calls = 2 * (args.warmup + args.reps)
    est = tuner.estimate_seconds(cells, args.target_mb * 1e6, args.warmup + args.reps)
    print(
        f"{len(ops)} ops x {len(args.dtypes)} dtypes x {len(args.buckets)} buckets = {len(cells)} cells, "
        f"{n} configurations, {calls} timed calls each; estimate {est / 60:.1f} min on a 3 TB/s GPU "
        f"plus compiling the kernels not yet cached (about 2 min for all of them on 16 cores)",
        flush=True,
    )
    if args.dry_run:
        return 0

    import torch
    from tqdm import tqdm

    from benchmarks import harness
    from xpu_stone.kernels import build

    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to tune (--dry-run prints the plan)", file=sys.stderr)
        return 2
    dev = args.device
    torch.cuda.set_device(dev)
    identity = tuned_table.device_identity(dev)
    problem = {"target_bytes": int(args.target_mb * 1e6), "warmup": args.warmup, "reps": args.reps}
    header = {
        "gpu_name": identity["gpu_name"],
        "compute_capability": identity["compute_capability"],
        "library_version": tuned_table.library_version(),
        "problem": problem,
    }
    cache = tuner.TuneCache(tuner.cache_path(args.cache_dir, identity, problem), header)
    print(f"{identity['gpu_name']} (cc {identity['compute_capability']}); cache {cache.path}", flush=True)

    start = time.perf_counter()
    with tqdm(total=1, desc="compiling", unit="kernel") as bar:

        def progress(done, total, _kernel):
            bar.total = total
            bar.n = done
            bar.refresh()

        build(ops, args.dtypes, progress=progress, workers=os.cpu_count())
    print(f"kernels ready in {time.perf_counter() - start:.0f} s", flush=True)

    def bench_of(cell):
        return CellBench(ops_by_name[cell.op], cell, args.target_mb * 1e6, torch, harness, dev)

    done = sum(1 for c in cells for v, cfg in c.candidates if cache.get(c, v, cfg) is not None)
    try:
        with tqdm(total=n, initial=done, desc="tuning", unit="config") as bar:
            for cell in cells:
                todo = [(v, cfg) for v, cfg in cell.candidates if cache.get(cell, v, cfg) is None]
                if not todo:
                    continue
                bar.set_postfix_str(cell.key)
                bench = bench_of(cell)
                for variant, cfg in todo:
                    rec = bench.run(variant, cfg, args.warmup, args.reps)
                    if rec["status"] == "failed" and not _context_alive(torch, dev):
                        cache.add(cell, variant, cfg, **rec)
                        print(f"\nthe CUDA context died at {cell.key} {variant} {cfg}: {rec['error']}")
                        print("recorded; run the same command again to resume", file=sys.stderr)
                        return 3
                    cache.add(cell, variant, cfg, **rec)
                    bar.update(1)
                del bench
                torch.cuda.empty_cache()
    finally:
        dispatcher.set_tuned_table(None)

    table = tuner.build_table(cells, cache, identity, problem, args.min_margin)
    if not args.no_verify:
        try:
            reverted = verify_table(table, cells, cache, bench_of, args.warmup, args.reps)
        finally:
            dispatcher.set_tuned_table(None)
        if reverted:
            print(f"verification: {len(reverted)} winners were not faster again and gave way to the heuristic: "
                  + ", ".join(reverted))  # fmt: skip
    if args.merge_into:
        table = tuner.merge(tuned_table.TableFile.load(args.merge_into), table)
    out = (
        args.out
        or args.merge_into
        or str(tuned_table.TABLES_DIR / f"{tuned_table.slug(identity['gpu_name'])}.json")
    )
    table.save(out)
    print(summary_lines(table))
    if args.report != "":
        copy_gbps = harness.measure_copy()
        rep = report(table, cells, cache, ops_by_name, args.target_mb * 1e6, copy_gbps)
        stem = harness.result_stem("tuning", identity["gpu_name"], table.date)
        path = Path(args.report or ROOT / "benchmarks" / "results" / f"{stem}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rep, indent=1) + "\n")
        print(f"device copy {copy_gbps:.0f} GB/s; per dtype:")
        for dtype, r in rep["per_dtype"].items():
            print(f"  {dtype:9s} {r['cells']} cells, {r['changed']} tuned, verified geomean {r['verified_geomean']:+.1%}, "
                  f"worst {r['verified_worst']:+.1%}; heuristic forward at {r['heuristic_fwd_of_copy_geomean']:.0%} of copy "
                  f"(geomean), {r['heuristic_fwd_at_95pct_copy']} cells at >= 95%")  # fmt: skip
        print(f"wrote {path}")
    wrong_heuristics = [c.key for c in cells if _heuristic_not_ok(c, cache)]
    if wrong_heuristics:
        print(f"WARNING: the heuristic's configuration did not pass in {wrong_heuristics}")
    print(tuner.summary(table))
    print(f"wrote {out} in {(time.perf_counter() - start) / 60:.1f} min")
    return 0


def _heuristic_not_ok(cell, cache) -> bool:
    rec = cache.get(cell, *cell.heuristic)
    return rec is not None and rec["status"] != "ok"


def _context_alive(torch, dev: int) -> bool:
    try:
        torch.cuda.synchronize(dev)
        return True
    except Exception:  # a sticky CUDA error: this process can launch nothing more
        return False


if __name__ == "__main__":
    sys.exit(main())
