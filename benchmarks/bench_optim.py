"""Optimizer step for many parameter tensors: xpu_stone's fused Riemannian steps vs
geoopt's RiemannianAdam and torch.optim.Adam(fused=True), in the same run.

    python benchmarks/bench_optim.py --out benchmarks/results          # ~30 s on an H200
    python benchmarks/bench_optim.py --shapes 256x64 --tensors 50       # shorter

Each row is the wall time of ``optimizer.step()`` (host work included: that is what a
training loop waits for), median over repeats of ``--reps`` back-to-back steps between
two synchronisations. Gradients are set once and kept. JSON + markdown to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from benchmarks.harness import Report, Row, environment, measure_copy  # noqa: E402
from xpu_stone.manifolds import ManifoldParameter, PoincareBall  # noqa: E402
from xpu_stone.optim import RiemannianAdam, RiemannianSGD  # noqa: E402


def _params(kind, n, shape, gen):
    out = []
    for _ in range(n):
        x = torch.randn(shape, generator=gen) * 0.01
        g = torch.randn(shape, generator=gen) * 0.01
        if kind == "geoopt":
            import geoopt

            p = geoopt.ManifoldParameter(x.cuda(), manifold=geoopt.PoincareBall())
        elif kind == "poincare":
            p = ManifoldParameter(x.cuda(), PoincareBall())
        else:
            p = torch.nn.Parameter(x.cuda())
        p.grad = g.cuda()
        out.append(p)
    return out


def time_steps(opt, reps: int, repeats: int) -> float:
    opt.step()  # state, kernel compilation
    opt.step()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(reps):
            opt.step()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3 / reps)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="*", default=["256x64", "1024x256"])
    p.add_argument("--tensors", type=int, default=200)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--geoopt-reps", type=int, default=2, help="geoopt steps are ~100x slower")
    p.add_argument("--no-geoopt", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_optim needs a CUDA GPU")
        return 1
    report = Report("optim", meta=environment())
    report.copy_gbps = measure_copy()
    gen = torch.Generator().manual_seed(0)
    t_start = time.perf_counter()
    for spec in args.shapes:
        shape = tuple(int(s) for s in spec.split("x"))
        n = args.tensors
        elems = n * shape[0] * shape[1]
        cases = [
            ("xpu_stone RiemannianAdam (Poincare)", "poincare", lambda ps: RiemannianAdam(ps, lr=1e-3), 5),
            ("xpu_stone RiemannianSGD (Poincare)", "poincare", lambda ps: RiemannianSGD(ps, lr=1e-3), 3),
            ("xpu_stone RiemannianAdam (Euclidean)", "plain", lambda ps: RiemannianAdam(ps, lr=1e-3), 7),
            ("torch Adam(fused=True)", "plain", lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True), 7),
        ]
        if not args.no_geoopt:
            import geoopt

            cases.append(
                ("geoopt RiemannianAdam", "geoopt", lambda ps: geoopt.optim.RiemannianAdam(ps, lr=1e-3), 5)
            )
        for label, kind, make, words in cases:
            params = _params(kind, n, shape, gen)
            opt = make(params)
            geo = kind == "geoopt"
            ms = time_steps(opt, args.geoopt_reps if geo else args.reps, 3 if geo else args.repeats)
            # bytes moved by an ideal step: `words` tensors of the parameters' size read or written
            row = report.add(Row("optimizer_step", label, "step", "float32", (n, *shape), 4 * words * elems, ms,
                                 note=f"{n} tensors"))  # fmt: skip
            print(
                f"[{time.perf_counter() - t_start:6.1f}s] {n}x{spec} {label:40s} {row.ms:9.3f} ms/step",
                flush=True,
            )
            del params, opt
            torch.cuda.empty_cache()
    by = {(r.shape, r.impl): r.ms for r in report.rows}
    summary = []
    for r in report.rows:
        if r.impl.startswith("xpu_stone RiemannianAdam (Poincare)"):
            fused = by.get((r.shape, "torch Adam(fused=True)"))
            geo = by.get((r.shape, "geoopt RiemannianAdam"))
            line = f"{'x'.join(map(str, r.shape))}: xpu_stone {r.ms:.3f} ms"
            if geo:
                line += f", {geo / r.ms:.0f}x faster than geoopt ({geo:.1f} ms)"
            if fused:
                line += f", {r.ms / fused:.2f}x torch fused Adam ({fused:.3f} ms)"
            summary.append(line)
    report.meta["summary"] = summary
    print("\n".join(summary))
    if args.out:
        js, md = report.write(args.out)
        with open(md, "a") as f:
            f.write("\n" + "\n".join(f"- {s}" for s in summary) + "\n")
        print(f"wrote {js} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
