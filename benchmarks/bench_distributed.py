"""Sharded Poincaré embeddings of a generated tree on every GPU of one host: the rows
split over the ranks (xpu_stone.distributed.ShardedEmbedding), trained for a time
budget; reports edges per second per GPU and the reconstruction (mean rank, MAP) of a
random sample of nodes, each ranked against all nodes.

    python benchmarks/bench_distributed.py --out benchmarks/results             # 10M nodes, every GPU
    python benchmarks/bench_distributed.py --world-size 1 --out benchmarks/results
    torchrun --nproc-per-node 2 benchmarks/bench_distributed.py --out ...   # launched by torchrun
    python benchmarks/bench_distributed.py --device cpu --nodes 20000 --world-size 2 --seconds 5  # gloo

Without torchrun the script starts ``--world-size`` processes itself (default: one per
visible GPU; one on CPU). Every rank generates the same tree (``--nodes``, ``--branching``;
xpu_stone/examples/synthetic_tree.py) and its closure; the batch (``--batch`` edges over
all ranks; default 32768 a rank) is split over the ranks; each rank holds 1/W of the
table and of the optimizer state. Training: ``--burnin-steps`` steps of the burn-in
(lr / 10, degree^0.75 negatives), then as many steps as fit in ``--seconds`` (counted from
the step time of a warm-up; at most ``--epochs`` epochs). One JSON per run under ``--out``.
On one H200 the default 10M-node run takes about four minutes, generation included.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from benchmarks.harness import environment, result_stem  # noqa: E402
from xpu_stone import distributed as xdist  # noqa: E402
from xpu_stone.examples import synthetic_tree  # noqa: E402
from xpu_stone.examples.poincare_embeddings import Trainer, TreeClosure, sampled_reconstruction  # noqa: E402


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _agreed(value: float, device) -> float:
    """Rank 0's ``value`` on every rank."""
    t = torch.tensor([value if xdist.world()[0] == 0 else 0.0], dtype=torch.float64, device=device)
    return float(xdist.all_sum(t))


def run(args) -> dict:
    device = xdist.setup(args.device)
    rank, size = xdist.world()
    say = print if rank == 0 else (lambda *a, **k: None)
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // size))
    t0 = time.perf_counter()
    tree = synthetic_tree.generate(args.nodes, args.branching, seed=args.seed)
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    h = TreeClosure(tree, device)
    _sync(device)
    closure_s = time.perf_counter() - t0
    edges = h.u.numel()
    batch = args.batch or 32768 * size
    say(f"{args.nodes} nodes, {edges} closure edges: generated in {gen_s:.1f} s, closure in {closure_s:.1f} s; "
        f"{size} rank(s) on {device.type}, batch {batch}", flush=True)  # fmt: skip
    torch.manual_seed(args.seed)
    t = Trainer(h, args.dim, 1.0, batch, args.negatives, args.lr, 10.0, args.optimizer, seed=args.seed,
                sharded=True)  # fmt: skip
    history = []
    # warm-up (compiles and loads the kernels), part of the burn-in
    history.append(("burnin", float(t.epoch(burnin=True, max_steps=args.burnin_steps))))
    _sync(device)
    t0 = time.perf_counter()
    probe = min(20, t.steps)
    history.append(("probe", float(t.epoch(burnin=False, max_steps=probe))))
    _sync(device)
    step_s = _agreed((time.perf_counter() - t0) / probe, device)
    budget = int(min(args.epochs * t.steps, max(0.0, args.seconds - step_s * probe) / step_s))
    done, start = probe, time.perf_counter() - step_s * probe
    while budget > 0:
        steps = min(budget, t.steps)
        history.append((done, float(t.epoch(burnin=False, max_steps=steps))))
        done += steps
        budget -= steps
    _sync(device)
    train_s = time.perf_counter() - start
    t0 = time.perf_counter()
    mean_rank, mean_ap = sampled_reconstruction(t, args.samples, seed=args.seed, max_block=args.eval_block)
    eval_s = time.perf_counter() - t0
    env = environment()
    result = {
        **env,
        "bench": "distributed",
        "world_size": size,
        "backend": torch.distributed.get_backend() if size > 1 else None,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "nodes": args.nodes,
        "branching": args.branching,
        "levels": synthetic_tree.level_sizes(args.nodes, args.branching),
        "edges": edges,
        "dim": args.dim,
        "batch": batch,
        "negatives": args.negatives,
        "optimizer": args.optimizer,
        "lr": args.lr,
        "generate_seconds": gen_s,
        "closure_seconds": closure_s,
        "train_seconds": train_s,
        "steps": done,
        "epochs": done * batch / edges,
        "edges_per_second": done * batch / train_s,
        "edges_per_second_per_gpu": done * batch / train_s / size,
        "loss_history": history,
        "eval_samples": args.samples,
        "eval_seconds": eval_s,
        "mean_rank": mean_rank,
        "map": mean_ap,
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
    }
    say(f"{done} steps ({result['epochs']:.2f} epochs) in {train_s:.1f} s: "
        f"{result['edges_per_second_per_gpu']:,.0f} edges/s per {'GPU' if device.type == 'cuda' else 'rank'}; "
        f"sampled mean rank {mean_rank:.2f}, MAP {mean_ap:.4f} ({args.samples} nodes, {eval_s:.1f} s)", flush=True)  # fmt: skip
    if rank == 0 and args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{result_stem('distributed', env['gpu'], env['date'])}-w{size}.json"
        path.write_text(json.dumps(result, indent=1))
        say(f"wrote {path}")
    return result


def _spawned(rank: int, size: int, port: int, argv: list[str]) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    try:
        run(parser().parse_args(argv))
    finally:
        xdist.teardown()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=lambda v: int(float(v)), default=10**7, help="nodes of the generated tree")
    p.add_argument("--branching", type=float, default=8.0)
    p.add_argument("--dim", type=int, default=10)
    p.add_argument("--batch", type=int, default=0, help="edges a step over all ranks (default 32768 a rank)")
    p.add_argument("--negatives", type=int, default=50)
    p.add_argument("--optimizer", choices=("rsgd", "radam"), default="radam")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--burnin-steps", type=int, default=50)
    p.add_argument("--epochs", type=float, default=100, help="at most this many epochs")
    p.add_argument("--seconds", type=float, default=150, help="training time budget")
    p.add_argument("--samples", type=int, default=1000, help="nodes of the sampled reconstruction")
    p.add_argument("--eval-block", type=int, default=1 << 27, help="distances per evaluation chunk")
    p.add_argument("--device", default=None, help="cuda (default with a GPU) or cpu")
    p.add_argument("--world-size", type=int, default=0, help="processes to start without torchrun")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for the JSON result")
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    size = args.world_size or (torch.cuda.device_count() if cuda else 1)
    if "RANK" in os.environ or size == 1:  # torchrun's worker, or one process
        try:
            run(args)
        finally:
            xdist.teardown()
        return 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_spawned, args=(size, port, argv), nprocs=size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
