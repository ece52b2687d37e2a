"""Poincare-ball ops: xpu_stone against torch eager, torch.compile and geoopt.

    python -m benchmarks.bench_poincare [--ops mobius_add dist] [--quick]

Forward and forward+backward, fp32 and bf16, D in {16, 64, 256, 1024, 4096},
each problem sized to move about 0.8 GB forward; plus the host time of one
small call (64x64 fp32). Writes JSON and markdown to benchmarks/results/.
"""

from __future__ import annotations

import functools
import sys

import torch

from benchmarks.harness import (
    Report,
    Row,
    bench_impls,
    compiled,
    configure_dynamo,
    environment,
    finish,
    fwd_bwd,
    host_time_us,
    measure_copy,
    resume,
    rotations,
    rowwise_args,
    sweep,
)
from xpu_stone import poincare as P
from xpu_stone.reference import poincare as R

C = 1.0
# cdist and knn (also in P.__all__) are pairwise, not row-wise: benchmarks.bench_pairwise times them.
ALL_OPS = tuple(op for op in P.__all__ if op not in ("cdist", "knn"))
COMPARE_OPS = ("mobius_add", "dist", "expmap", "logmap", "geodesic", "transp")
# (number of vector inputs, vector output?) per op
SHAPE = {
    "mobius_add": (2, True),
    "mobius_sub": (2, True),
    "mobius_scalar_mul": (1, True),
    "expmap0": (1, True),
    "logmap0": (1, True),
    "expmap": (2, True),
    "logmap": (2, True),
    "dist": (2, False),
    "dist0": (1, False),
    "project": (1, True),
    "lambda_x": (1, False),
    "gyration": (3, True),
    "transp": (3, True),
    "geodesic": (2, True),
}


def _vectors(name, rows, d, dtype, gen):
    nvec, _ = SHAPE[name]
    out = []
    for _ in range(nvec):
        v = torch.randn(rows, d, device=gen.device, dtype=torch.float32, generator=gen)
        v = v / v.norm(dim=-1, keepdim=True) * torch.rand(rows, 1, device=gen.device, generator=gen) * 0.9
        out.append(v.to(dtype))
    return out


def _with_scalars(name, vecs):
    if name == "mobius_scalar_mul":
        return (0.7, *vecs)
    if name == "geodesic":
        return (*vecs, 0.3)
    return tuple(vecs)


def _geoopt_fn(name):
    try:
        from geoopt.manifolds.stereographic import math as gm
    except ImportError:
        return None
    k = torch.tensor(-C, device="cuda")
    # geoopt takes the scalar of mobius_scalar_mul and geodesic as a tensor: made once per
    # value, outside the timed call (a host-to-device copy in the call would wait for the GPU)
    scalar = functools.cache(lambda v: torch.tensor(v, device="cuda"))
    table = {
        "mobius_add": lambda x, y: gm.mobius_add(x, y, k=k),
        "mobius_sub": lambda x, y: gm.mobius_sub(x, y, k=k),
        "mobius_scalar_mul": lambda r, x: gm.mobius_scalar_mul(scalar(r), x, k=k),
        "expmap0": lambda u: gm.expmap0(u, k=k),
        "logmap0": lambda y: gm.logmap0(y, k=k),
        "expmap": lambda x, u: gm.expmap(x, u, k=k),
        "logmap": lambda x, y: gm.logmap(x, y, k=k),
        "dist": lambda x, y: gm.dist(x, y, k=k),
        "dist0": lambda x: gm.dist0(x, k=k),
        "project": lambda x: gm.project(x, k=k),
        "lambda_x": lambda x: gm.lambda_x(x, k=k),
        "gyration": lambda a, b, u: gm.gyration(a, b, u, k=k),
        "transp": lambda x, y, v: gm.parallel_transport(x, y, v, k=k),
        "geodesic": lambda u, v, t: gm.geodesic(scalar(t), u, v, k=k),
    }
    return table[name]


def _impls(name, compare):
    xs = getattr(P, name)
    ref = getattr(R, name)
    impls = {"xpu_stone": lambda *a: xs(*a, c=C)}
    if compare:
        impls["torch_eager"] = lambda *a: ref(*a, c=C)
        impls["torch_compile"] = compiled(lambda *a: ref(*a, c=C))
        g = _geoopt_fn(name)
        if g is not None:
            impls["geoopt"] = g
    return impls


def bench_op(report, name, dtype, d, target_bytes, compare, warm_only=False):
    nvec, vec_out = SHAPE[name]
    item = torch.tensor([], dtype=dtype).element_size()
    per_row_fwd = (nvec + (1 if vec_out else 0)) * d * item + (0 if vec_out else item)
    rows = max(1, int(target_bytes // per_row_fwd))
    fwd_bytes = rows * per_row_fwd
    # backward reads the inputs and the output gradient, writes one gradient per input
    bwd_bytes = rows * ((2 * nvec) * d * item + ((d * item) if vec_out else item))
    gen = torch.Generator(device="cuda").manual_seed(0)
    nsets = 1 if warm_only else rotations(fwd_bytes)
    sets = [_with_scalars(name, _vectors(name, rows, d, dtype, gen)) for _ in range(nsets)]
    dname = str(dtype).replace("torch.", "")
    bench_impls(
        report, name, _impls(name, compare), sets, fwd_bytes, bwd_bytes, dname, (rows, d), warm_only=warm_only
    )
    del sets
    torch.cuda.empty_cache()


HOST_MODES = ("fwd", "fwd_grad", "fwd+bwd")  # the small call's host-time modes (bench_host_overhead)


def bench_host_overhead(report):
    """Host time of one small call (64x64 fp32): autograd off (mode ``fwd``), with an
    input that requires grad (mode ``fwd_grad``: the call records its graph; no backward
    runs), and the call with its backward (mode ``fwd+bwd``: ``torch.autograd.grad`` of
    the output, the step of a training loop). The GPU work is tiny, so the host's time
    is the call's."""
    x = torch.rand(64, 64, device="cuda") * 0.01
    y = torch.rand(64, 64, device="cuda") * 0.01
    xg = x.clone().requires_grad_()
    g = _geoopt_fn("mobius_add")
    for mode, a in zip(HOST_MODES, (x, xg, xg)):
        wrap = fwd_bwd if mode == "fwd+bwd" else (lambda f: f)
        with torch.set_grad_enabled(mode != "fwd"):
            t_add = host_time_us(wrap(torch.add), (a, y))
            t_xs = host_time_us(wrap(lambda u, v: P.mobius_add(u, v)), (a, y))
            t_geo = host_time_us(wrap(g), (a, y), calls=300) if g else float("nan")
        for impl, us in (("torch.add", t_add), ("xpu_stone", t_xs), ("geoopt", t_geo)):
            note = f"{us:.1f} us/call host; ratio to torch.add {us / t_add:.2f}"
            report.add(Row("host_overhead_64x64", impl, mode, "float32", (64, 64), 0, us / 1000.0, note=note))


def main(argv=None):
    configure_dynamo()
    args = rowwise_args(argv, ALL_OPS, ["float32", "bfloat16"], [16, 256, 4096])
    report = Report("poincare", meta={**environment(), "suffix": args.suffix, "args": vars(args)})
    report.copy_gbps = measure_copy()
    print(f"copy: {report.copy_gbps:.0f} GB/s", file=sys.stderr)
    done = resume(report, args.resume)
    kept = {r.mode for r in report.rows if r.op.startswith("host_overhead")}
    if kept != set(HOST_MODES):  # a resumed file without every mode: measure them all again
        report.rows = [r for r in report.rows if not r.op.startswith("host_overhead")]
        bench_host_overhead(report)
    compare_ops = ALL_OPS if args.compare_all else COMPARE_OPS
    sweep(report, args.ops, args.dtypes, args.dims, compare_ops, args.compare_dims, args.target_gb, bench_op,
          ("benchmarks.bench_poincare", args.precompile), lambda: report.write(args.out), done)  # fmt: skip
    finish(report, args.out)


if __name__ == "__main__":
    main()
