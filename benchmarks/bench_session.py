"""Inference-session latency and profiler overhead.

    python -m benchmarks.bench_session [--out DIR] [--reps N]

1. A 4-layer hyperbolic MLP (width 256, fp32) at batch 1, run eagerly and through
   ``InferenceSession(engine="cuda_graph")``: end-to-end latency of one call (host
   launch to results ready: wall clock around call + synchronize, median), the
   steady-state host time per call, and whether the outputs are bit-identical.
   Target: the session >= 3x lower latency than eager.
2. The host time of one small xpu_stone call (mobius_add, 64x64 fp32) with no
   profile open, inside ``xpu_stone.profile(nvtx=False)``, ``profile()`` and
   ``profile(gpu_time=True)``, in interleaved rounds (:func:`bench_profiler`).
   Target: profiling without GPU timing <= 2 us extra.

Writes session-<gpu>-<date>.json and .md to ``--out`` (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from benchmarks.harness import host_time_us
from xpu_stone import poincare as P
from xpu_stone.runtime import InferenceSession
from xpu_stone.runtime.profiler import profile


class HyperbolicMLP(torch.nn.Module):
    r"""Layers of the hyperbolic neural networks of Ganea et al. (2018) on the
    Poincare ball: layer :math:`i` maps :math:`x \mapsto \mathrm{proj}\big(
    \exp_0(W_i\,\sigma_i(\log_0 x)) \oplus_c \exp_0(b_i)\big)`, with
    :math:`\sigma_i = \tanh` between layers (identity for the first). Each layer
    launches logmap0, (tanh), a matmul, expmap0 twice, mobius_add and project."""

    def __init__(self, width: int = 256, depth: int = 4, c: float = 1.0):
        super().__init__()
        self.c = c
        self.linears = torch.nn.ModuleList(torch.nn.Linear(width, width, bias=False) for _ in range(depth))
        self.biases = torch.nn.ParameterList(
            torch.nn.Parameter(torch.randn(width) * 0.01) for _ in range(depth)
        )

    def forward(self, x):
        c = self.c
        for i, (linear, bias) in enumerate(zip(self.linears, self.biases)):
            u = P.logmap0(x, c)
            if i:
                u = torch.tanh(u)
            x = P.project(P.mobius_add(P.expmap0(linear(u), c), P.expmap0(bias, c), c), c)
        return x


def mlp_and_input(width: int = 256, depth: int = 4, batch: int = 1, device="cuda", seed: int = 0):
    """The benchmark's model (weights scaled to keep activations inside the ball) and one input point."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = HyperbolicMLP(width, depth).to(device).eval()
    x = P.expmap0(torch.randn(batch, width, generator=gen).mul_(0.1).to(device))
    return model, x


def latency_us(fn, args, reps: int) -> float:
    """Median wall time of one call followed by a device synchronize (µs)."""
    for _ in range(20):
        fn(*args)
    torch.cuda.synchronize()
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(*args)
        torch.cuda.synchronize()
        samples.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(samples)


def bench_session(reps: int) -> dict:
    model, x = mlp_and_input()
    session = InferenceSession(model, (x,), engine="cuda_graph")
    with torch.no_grad():
        ref = model(x)
    out = session.run(x)
    x2 = P.expmap0(torch.randn_like(x) * 0.1)
    with torch.no_grad():
        ref2 = model(x2)
    out2 = session.run(x2)

    def eager(inp):
        with torch.no_grad():
            return model(inp)

    eager_lat = latency_us(eager, (x,), reps)
    graph_lat = latency_us(session.run, (x,), reps)
    return {
        "model": "HyperbolicMLP(width=256, depth=4), fp32, batch 1",
        "eager_latency_us": eager_lat,
        "cuda_graph_latency_us": graph_lat,
        "speedup": eager_lat / graph_lat,
        "eager_host_us": host_time_us(eager, (x,)),
        "cuda_graph_host_us": host_time_us(session.run, (x,)),
        "bit_identical": bool(torch.equal(out, ref) and torch.equal(out2, ref2)),
        "max_abs_diff": max((out - ref).abs().max().item(), (out2 - ref2).abs().max().item()),
        "session": session.describe(),
    }


PROFILES = {"on_no_nvtx": {"nvtx": False}, "on": {}, "on_gpu_time": {"gpu_time": True}}


def bench_profiler(rounds: int = 30, calls: int = 300) -> dict:
    """Host µs per small call with no profile open and inside each kind of profile.

    One call's host time drifts between batches by more than the profiler's cost (two
    unprofiled timings of one 2026-12-02 run: 36.7 and 18.0 µs), so the timings are
    interleaved: each of ``rounds`` rounds times the call unprofiled, inside each
    profile, and unprofiled again (:func:`host_time_us`, ``calls`` calls a batch). A
    profile's extra cost is the median over rounds of its time less the mean of its
    round's two unprofiled times; ``noise_us``, the median over rounds of the gap
    between those two, is the spread of timing one version twice."""
    gen = torch.Generator("cuda").manual_seed(0)
    a = P.expmap0(torch.randn(64, 64, device="cuda", generator=gen) * 0.1)
    b = P.expmap0(torch.randn(64, 64, device="cuda", generator=gen) * 0.1)
    args = (a, b)
    samples = {name: [] for name in ("off", *PROFILES, "off_again")}
    rows = {}
    for _ in range(rounds):
        samples["off"].append(host_time_us(P.mobius_add, args, calls))
        for name, kwargs in PROFILES.items():
            with profile(**kwargs) as p:
                samples[name].append(host_time_us(P.mobius_add, args, calls))
            rows[f"{name}_records"] = len(p.records)
        samples["off_again"].append(host_time_us(P.mobius_add, args, calls))
    base = [(x + y) / 2 for x, y in zip(samples["off"], samples["off_again"])]
    rows |= {name: statistics.median(v) for name, v in samples.items()}
    for name in PROFILES:
        rows[f"{name}_extra_us"] = statistics.median(t - b0 for t, b0 in zip(samples[name], base))
    rows["noise_us"] = statistics.median(abs(x - y) for x, y in zip(samples["off"], samples["off_again"]))
    rows["rounds"], rows["calls"], rows["samples"] = rounds, calls, samples
    return rows


def markdown(meta: dict, s: dict, p: dict) -> str:
    return "\n".join(
        [
            "# Inference session and profiler overhead",
            "",
            f"{meta['gpu']} · {meta['date']} · torch {meta['torch']} · CuPy {meta['cupy']} · CUDA {meta['cuda']}",
            "",
            f"## {s['model']}",
            "",
            "| engine | latency µs (call + sync, median) | host µs / call (pipelined) |",
            "|---|---:|---:|",
            f"| eager | {s['eager_latency_us']:.1f} | {s['eager_host_us']:.1f} |",
            f"| InferenceSession cuda_graph | {s['cuda_graph_latency_us']:.1f} | {s['cuda_graph_host_us']:.1f} |",
            "",
            f"Speed-up {s['speedup']:.2f}x (target >= 3x). Outputs bit-identical to eager: "
            f"{s['bit_identical']} (max abs diff {s['max_abs_diff']:.3g}).",
            "",
            "## Profiler overhead (mobius_add 64x64 fp32, host µs per call)",
            "",
            f"Medians over {p['rounds']} interleaved rounds; two unprofiled timings of one round differ by "
            f"{p['noise_us']:.2f} µs at the median (the noise).",
            "",
            "| profile | µs / call | extra µs |",
            "|---|---:|---:|",
            f"| none | {p['off']:.2f} (again: {p['off_again']:.2f}) | - |",
            f"| profile(nvtx=False) | {p['on_no_nvtx']:.2f} | {p['on_no_nvtx_extra_us']:.2f} |",
            f"| profile() (NVTX ranges) | {p['on']:.2f} | {p['on_extra_us']:.2f} |",
            f"| profile(gpu_time=True) | {p['on_gpu_time']:.2f} | {p['on_gpu_time_extra_us']:.2f} |",
            "",
            "Target: <= 2 µs extra without GPU timing.",
            "",
        ]
    )


def main(argv=None) -> int:
    from benchmarks.harness import environment, result_stem

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--reps", type=int, default=500)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_session needs a CUDA GPU")
        return 1
    meta = environment()
    s = bench_session(args.reps)
    p = bench_profiler()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = result_stem("session", meta["gpu"], meta["date"])
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "session": s, "profiler": p}, indent=1))
    md = markdown(meta, s, p)
    (out / f"{stem}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
