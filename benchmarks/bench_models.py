"""Lorentz and Klein ops and the conversions: xpu_stone against torch eager,
torch.compile (of the textbook references in xpu_stone.reference) and geoopt's
Lorentz model.

    python -m benchmarks.bench_models [--ops lorentz.dist convert.poincare_to_lorentz] [--quick]

Forward and forward+backward, fp32 and bf16, D in {16, 64, 256, 1024, 4096},
each problem sized to move about 0.8 GB forward. Writes JSON and markdown.
"""

from __future__ import annotations

import sys

import torch

from benchmarks.harness import (
    Report,
    bench_impls,
    compiled,
    configure_dynamo,
    environment,
    finish,
    measure_copy,
    resume,
    rotations,
    rowwise_args,
    sweep,
)
from xpu_stone import convert, klein, lorentz
from xpu_stone.reference import convert as RC
from xpu_stone.reference import klein as RK
from xpu_stone.reference import lorentz as RL

C = 1.0
MODULES = {"lorentz": (lorentz, RL), "klein": (klein, RK), "convert": (convert, RC)}
ALL_OPS = tuple(
    [f"lorentz.{n}" for n in lorentz.__all__ if n not in ("cdist", "knn")]
    + [f"klein.{n}" for n in ("dist", "geodesic", "lorentz_factor")]
    + [f"convert.{n}" for n in convert.__all__]
)
COMPARE_OPS = ("lorentz.dist", "lorentz.expmap", "lorentz.logmap", "lorentz.geodesic", "klein.geodesic")
COMPARE_OPS += tuple(f"convert.{n}" for n in ("poincare_to_lorentz", "lorentz_to_poincare"))
GEOOPT = {  # geoopt.manifolds.lorentz.math with k = 1/c
    "inner": lambda m, k: lambda u, v: m.inner(u, v),
    "dist": lambda m, k: lambda x, y: m.dist(x, y, k=k),
    "dist0": lambda m, k: lambda x: m.dist0(x, k=k),
    "expmap": lambda m, k: lambda x, u: m.expmap(x, u, k=k),
    "expmap0": lambda m, k: lambda u: m.expmap0(u, k=k),
    "logmap": lambda m, k: lambda x, y: m.logmap(x, y, k=k),
    "logmap0": lambda m, k: lambda y: m.logmap0(y, k=k),
    "project": lambda m, k: lambda x: m.project(x, k=k),
    "proj_tan": lambda m, k: lambda x, u: m.project_u(x, u, k=k),
    "transp": lambda m, k: lambda x, y, v: m.parallel_transport(x, y, v, k=k),
}


def _hyperboloid(rows, d, dtype, gen):
    u = torch.randn(rows, d, device=gen.device, generator=gen) * 0.7
    u[:, 0] = 0
    return lorentz.expmap0(u, c=C).to(dtype)


def _ball(rows, d, dtype, gen):
    v = torch.randn(rows, d, device=gen.device, generator=gen)
    return (
        v / v.norm(dim=-1, keepdim=True) * torch.rand(rows, 1, device=gen.device, generator=gen) * 0.9
    ).to(dtype)


def _args(family, name, rows, d, dtype, gen):
    kinds = MODULES[family][1].ARG_KINDS[name]
    out = []
    for k in kinds:
        if k == "s":
            out.append(0.3)
        elif k == "p" and family in ("lorentz", "convert"):
            out.append(_hyperboloid(rows, d, dtype, gen))
        elif k in ("p", "b"):
            out.append(_ball(rows, d, dtype, gen))
        elif k == "v":  # tangent at the first point
            base = out[0] if out else _hyperboloid(rows, d, dtype, gen)
            w = torch.randn(rows, d, device=gen.device, generator=gen) * 0.3
            out.append(lorentz.proj_tan(base.float(), w, c=C).to(dtype))
        else:
            out.append((torch.randn(rows, d, device=gen.device, generator=gen) * 0.3).to(dtype))
    return tuple(out)


def _impls(family, name, compare):
    mod, ref = MODULES[family]
    xs, rf = getattr(mod, name), getattr(ref, name)
    impls = {"xpu_stone": lambda *a: xs(*a, c=C)}
    if compare:
        impls["torch_eager"] = lambda *a: rf(*a, c=C)
        impls["torch_compile"] = compiled(lambda *a: rf(*a, c=C))
        if family == "lorentz" and name in GEOOPT:
            try:
                from geoopt.manifolds.lorentz import math as gm

                impls["geoopt"] = GEOOPT[name](gm, torch.tensor(1 / C, device="cuda"))
            except ImportError:
                pass
    return impls


def bench_op(report, qual, dtype, d, target_bytes, compare, warm_only=False):
    family, name = qual.split(".")
    gen = torch.Generator(device="cuda").manual_seed(0)
    probe = _args(family, name, 4, d, dtype, gen)
    out = getattr(MODULES[family][0], name)(*probe, c=C)
    item = torch.tensor([], dtype=dtype).element_size()
    vecs = [a for a in probe if isinstance(a, torch.Tensor)]
    in_elems = sum(a.shape[-1] for a in vecs)
    out_elems = out.shape[-1] if out.dim() == 2 else 1
    per_row_fwd = (in_elems + out_elems) * item
    rows = max(1, int(target_bytes // per_row_fwd))
    fwd_bytes = rows * per_row_fwd
    bwd_bytes = rows * (2 * in_elems + out_elems) * item  # inputs and output grad read, input grads written
    sets = [_args(family, name, rows, d, dtype, gen) for _ in range(1 if warm_only else rotations(fwd_bytes))]
    dname = str(dtype).replace("torch.", "")
    impls = _impls(family, name, compare)
    bench_impls(report, qual, impls, sets, fwd_bytes, bwd_bytes, dname, (rows, d), warm_only=warm_only)
    del sets
    torch.cuda.empty_cache()


def main(argv=None):
    configure_dynamo()
    args = rowwise_args(
        argv, ALL_OPS, ["float32", "bfloat16"], [16, 256, 4096], quick=([64, 1024], ["float32"], [1024])
    )
    report = Report("models", meta={**environment(), "suffix": args.suffix, "args": vars(args)})
    report.copy_gbps = measure_copy()
    print(f"copy: {report.copy_gbps:.0f} GB/s", file=sys.stderr)
    done = resume(report, args.resume)
    compare_ops = ALL_OPS if args.compare_all else COMPARE_OPS
    sweep(report, args.ops, args.dtypes, args.dims, compare_ops, args.compare_dims, args.target_gb, bench_op,
          ("benchmarks.bench_models", args.precompile), lambda: report.write(args.out), done)  # fmt: skip
    finish(report, args.out)


if __name__ == "__main__":
    main()
