"""Poincaré embeddings of the mammal closure: epoch time and reconstruction of
xpu_stone's training (fused kernels, CUDA graphs) vs the same training written with
geoopt (PoincareBall + RiemannianSGD), same batch size, same loss, same run.

    python benchmarks/bench_embeddings.py --out benchmarks/results               # ~60 s on an H200
    python benchmarks/bench_embeddings.py --epochs 100 --batches 512 --out ...   # shorter

For each batch size: ``--time-epochs`` epochs of each implementation are timed after
warm-up (ms/epoch, wall, synchronised), then each trains ``--epochs`` epochs from the
same initialisation and is evaluated (mean rank, MAP). JSON + markdown to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from benchmarks.harness import environment, result_stem  # noqa: E402
from xpu_stone.data import load_closure  # noqa: E402
from xpu_stone.examples.poincare_embeddings import Hierarchy, Trainer, reconstruction  # noqa: E402


class GeooptTrainer(Trainer):
    """The same loss and schedule, with geoopt's PoincareBall distance and RiemannianSGD."""

    def __init__(self, h, **kw):
        import geoopt

        super().__init__(h, graphs=False, **kw)
        ball = geoopt.PoincareBall(c=self.c)
        self.weight = geoopt.ManifoldParameter(self.weight.detach().clone(), manifold=ball)
        self.opt = geoopt.optim.RiemannianSGD([self.weight], lr=self.lr)
        self.dist = ball.dist


def run(trainer, epochs, burnin, deadline):
    for ep in range(epochs):
        trainer.epoch(burnin=ep < burnin)
        if time.perf_counter() > deadline:
            print(f"  stopped at epoch {ep + 1}: --max-seconds reached", flush=True)
            return ep + 1
    return epochs


def time_epochs(trainer, n):
    trainer.epoch(burnin=False)  # warm-up / graph capture
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        trainer.epoch(burnin=False)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3 / n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="mammals")
    p.add_argument("--dim", type=int, default=10)
    p.add_argument("--batches", type=int, nargs="*", default=[512, 128])
    p.add_argument("--epochs", type=int, default=300, help="training epochs for the MAP / rank comparison")
    p.add_argument("--map-batch", type=int, default=512, help="batch size of the MAP comparison")
    p.add_argument("--burnin", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.15)
    p.add_argument("--time-epochs", type=int, default=20)
    p.add_argument("--no-geoopt", action="store_true")
    p.add_argument("--max-seconds", type=float, default=240, help="stop training runs past this budget")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_embeddings needs a CUDA GPU")
        return 1
    start = time.perf_counter()
    deadline = start + args.max_seconds
    names, edges = load_closure(args.data)
    h = Hierarchy(names, edges, torch.device("cuda"))
    impls = [("xpu_stone", Trainer)] + ([] if args.no_geoopt else [("geoopt", GeooptTrainer)])
    result = {"meta": environment(), "data": args.data, "nodes": h.n, "edges": h.u.numel(), "dim": args.dim,
              "timing": [], "training": []}  # fmt: skip
    for batch in args.batches:
        row = {"batch": batch, "steps_per_epoch": -(-h.u.numel() // batch)}
        for name, cls in impls:
            torch.manual_seed(0)
            t = cls(h, dim=args.dim, batch=batch, lr=args.lr)
            row[f"{name}_ms_per_epoch"] = time_epochs(t, args.time_epochs)
            print(f"[{time.perf_counter() - start:6.1f}s] batch {batch:5d} {name:10s} "
                  f"{row[f'{name}_ms_per_epoch']:8.2f} ms/epoch", flush=True)  # fmt: skip
        if "geoopt_ms_per_epoch" in row:
            row["speedup"] = row["geoopt_ms_per_epoch"] / row["xpu_stone_ms_per_epoch"]
            print(f"  speedup {row['speedup']:.1f}x", flush=True)
        result["timing"].append(row)
    for name, cls in impls:
        torch.manual_seed(0)
        t = cls(h, dim=args.dim, batch=args.map_batch, lr=args.lr)
        t0 = time.perf_counter()
        done = run(t, args.epochs, args.burnin, deadline)
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        mr, mp = reconstruction(t.weight, h)
        result["training"].append({"impl": name, "batch": args.map_batch, "epochs": done, "seconds": wall,
                                   "mean_rank": mr, "map": mp})  # fmt: skip
        print(f"[{time.perf_counter() - start:6.1f}s] {name:10s} {done} epochs in {wall:.1f} s: "
              f"mean rank {mr:.3f}, MAP {mp:.4f}", flush=True)  # fmt: skip
    lines = [f"# Poincaré embeddings ({args.data}, dim {args.dim})", "",
             f"{result['meta']['gpu']} · {result['meta']['date']} · torch {result['meta']['torch']} · "
             f"{h.n} nodes, {h.u.numel()} edges", "",
             "| batch | steps/epoch | xpu_stone ms/epoch | geoopt ms/epoch | speedup |", "|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in result["timing"]:
        lines.append(f"| {r['batch']} | {r['steps_per_epoch']} | {r['xpu_stone_ms_per_epoch']:.2f} | "
                     f"{r.get('geoopt_ms_per_epoch', float('nan')):.2f} | {r.get('speedup', float('nan')):.1f}x |")  # fmt: skip
    lines += ["", "| impl | batch | epochs | train s | mean rank | MAP |", "|---|---:|---:|---:|---:|---:|"]
    for r in result["training"]:
        lines.append(f"| {r['impl']} | {r['batch']} | {r['epochs']} | {r['seconds']:.1f} | {r['mean_rank']:.3f} | "
                     f"{r['map']:.4f} |")  # fmt: skip
    md = "\n".join(lines) + "\n"
    print(md)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = result_stem("embeddings", result["meta"]["gpu"], result["meta"]["date"])
        (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
        (out / f"{stem}.md").write_text(md)
        print(f"wrote {out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
