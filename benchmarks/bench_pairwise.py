"""Pairwise distances and knn: xpu_stone against cuBLAS alone and torch.compile.

    python -m benchmarks.bench_pairwise [--n 65536 --m 4096 --d 128] [--out DIR] [--quick]

Rows (fp32 unless noted; the targets of issue 3 are the first two ratios):
* ``gemm`` -- torch.mm(x, y.T) alone, the floor of the forward;
* cdist fwd, Poincare and Lorentz, with the default L2-sized GEMM chunks and with
  other chunk sizes (``chunk=0``: one GEMM, then one epilogue pass);
* ``torch_compile_gemm`` -- torch.compile of the same maths written with one matmul
  (xpu_stone.reference.pairwise.cdist_gemm), fwd and fwd+bwd;
* ``torch_compile_plain`` -- torch.compile of the plain reference (every pair
  broadcast, as geoopt users write it), fwd+bwd, at a smaller N (--plain-n);
* bf16 fwd; knn (k = 10) over M = --knn-m points.
Writes JSON and markdown to --out; prints the ratios.
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.harness import Report, Row, environment, fwd_bwd, measure_copy, time_calls
from xpu_stone import pairwise as PW
from xpu_stone.ops import pairwise as OPW
from xpu_stone.reference import pairwise as RP


def _ball(n, d, dtype, gen):
    v = torch.randn(n, d, device="cuda", generator=gen)
    v = v / v.norm(dim=-1, keepdim=True) * torch.rand(n, 1, device="cuda", generator=gen) * 0.9
    return v.to(dtype)


def _lorentz(n, d, gen):
    space = torch.randn(n, d - 1, device="cuda", generator=gen) * 0.5
    return torch.cat([torch.sqrt(1 + space.square().sum(-1, keepdim=True)), space], dim=-1)


def _time(report, op, impl, mode, dtype, shape, nbytes, fn, sets, reps=20, note=""):
    try:
        ctx = torch.no_grad() if mode == "fwd" else torch.enable_grad()
        with ctx:
            ms = time_calls(fn, sets, warmup=3, reps=reps)
        row = report.add(Row(op, impl, mode, dtype, shape, nbytes, ms, note=note))
    except Exception as e:  # keep the run going and say what failed
        row = report.add(
            Row(op, impl, mode, dtype, shape, nbytes, 0.0, note=f"failed: {type(e).__name__}: {e}"[:200])
        )
    print(f"{op} {impl} {mode} {dtype} {shape}: {row.ms:.3f} ms {row.note}", file=sys.stderr, flush=True)
    torch.cuda.empty_cache()
    return row.ms


def _ratio(a: float, b: float) -> str:
    """a / b to three digits, or "n/a" when either timing failed (recorded as 0 ms)."""
    return f"{a / b:.3f}" if a > 0 and b > 0 else "n/a"


def knn_peak_extra_bytes(x, y, k: int) -> int:
    """Bytes allocated at the peak of one ``knn(x, y, k)`` call above what was allocated
    when it began (its outputs included)."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = PW.knn(x, y, k)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del out
    return peak - base


def main(argv=None):
    torch._dynamo.config.cache_size_limit = 64
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=65536)
    p.add_argument("--m", type=int, default=4096)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--plain-n", type=int, default=4096)
    p.add_argument("--knn-m", type=int, default=65536)
    p.add_argument(
        "--quick", action="store_true", help="skip the chunk sweep, Lorentz fwd+bwd and the plain reference"
    )
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = False
    report = Report("pairwise", meta=environment())
    report.copy_gbps = measure_copy()
    n, m, d = args.n, args.m, args.d
    gen = torch.Generator(device="cuda").manual_seed(0)
    shape = (n, m, d)
    out_bytes = n * m * 4
    sets = [(_ball(n, d, torch.float32, gen), _ball(m, d, torch.float32, gen)) for _ in range(2)]
    grad_sets = [(a.clone().requires_grad_(), b.clone().requires_grad_()) for a, b in sets]
    lsets = [(_lorentz(n, d, gen), _lorentz(m, d, gen)) for _ in range(2)]
    lgrad = [(a.clone().requires_grad_(), b.clone().requires_grad_()) for a, b in lsets]
    f32 = "float32"

    gemm = _time(
        report, "gemm", "torch.mm", "fwd", f32, shape, out_bytes, lambda a, b: torch.mm(a, b.t()), sets
    )
    ours = _time(report, "cdist_poincare", "xpu_stone", "fwd", f32, shape, out_bytes, PW.cdist, sets)
    lor = _time(
        report,
        "cdist_lorentz",
        "xpu_stone",
        "fwd",
        f32,
        shape,
        out_bytes,
        lambda a, b: PW.cdist(a, b, 1.0, "lorentz"),
        lsets,
    )
    if not args.quick:
        old = OPW.GEMM_CHUNK_BYTES
        for chunk in (0, 8 << 20, 16 << 20, 48 << 20):
            OPW.GEMM_CHUNK_BYTES = chunk
            _time(
                report,
                "cdist_poincare",
                "xpu_stone",
                "fwd",
                f32,
                shape,
                out_bytes,
                PW.cdist,
                sets,
                note=f"chunk={chunk >> 20} MiB",
            )
        OPW.GEMM_CHUNK_BYTES = old
    ref_gemm = torch.compile(RP.cdist_gemm, dynamic=False)
    comp_fwd = _time(
        report, "cdist_poincare", "torch_compile_gemm", "fwd", f32, shape, out_bytes, ref_gemm, sets, reps=10
    )
    ours_fb = _time(
        report,
        "cdist_poincare",
        "xpu_stone",
        "fwd+bwd",
        f32,
        shape,
        4 * out_bytes,
        fwd_bwd(PW.cdist),
        grad_sets,
    )
    comp_fb = _time(
        report,
        "cdist_poincare",
        "torch_compile_gemm",
        "fwd+bwd",
        f32,
        shape,
        4 * out_bytes,
        fwd_bwd(ref_gemm),
        grad_sets,
        reps=10,
    )
    if not args.quick:
        _time(
            report,
            "cdist_lorentz",
            "xpu_stone",
            "fwd+bwd",
            f32,
            shape,
            4 * out_bytes,
            fwd_bwd(lambda a, b: PW.cdist(a, b, 1.0, "lorentz")),
            lgrad,
        )
        pn = args.plain_n
        psets = [
            (a[:pn].detach().clone().requires_grad_(), b.detach().clone().requires_grad_()) for a, b in sets
        ]
        pshape = (pn, m, d)
        ref_plain = torch.compile(RP.cdist_poincare, dynamic=False)
        plain = _time(
            report,
            "cdist_poincare",
            "torch_compile_plain",
            "fwd+bwd",
            f32,
            pshape,
            4 * pn * m * 4,
            fwd_bwd(ref_plain),
            psets,
            reps=5,
        )
        small = _time(
            report,
            "cdist_poincare",
            "xpu_stone",
            "fwd+bwd",
            f32,
            pshape,
            4 * pn * m * 4,
            fwd_bwd(PW.cdist),
            psets,
        )
        print(f"fwd+bwd vs compiled plain reference (N={pn}): {_ratio(plain, small)}x", file=sys.stderr)
    bsets = [(a.bfloat16(), b.bfloat16()) for a, b in sets]
    _time(report, "cdist_poincare", "xpu_stone", "fwd", "bfloat16", shape, out_bytes // 2, PW.cdist, bsets)
    km = args.knn_m
    ksets = [(a[:16384], _ball(km, d, torch.float32, gen)) for a, _ in sets]
    _time(
        report,
        "knn_k10",
        "xpu_stone",
        "fwd",
        f32,
        (16384, km, d),
        0,
        lambda a, b: PW.knn(a, b, 10),
        ksets,
        reps=5,
    )

    # knn's memory (issue 15: O(N k + tile), never the N x M matrix): the peak allocated above
    # what was allocated before the call, on the cdist problem's shape
    for q, pts in ((sets[0][0], sets[0][1]), ksets[0]):
        extra = knn_peak_extra_bytes(q, pts, 10)
        full = q.shape[0] * pts.shape[0] * 4
        report.add(
            Row(
                "knn_k10_memory",
                "xpu_stone",
                "fwd",
                f32,
                (q.shape[0], pts.shape[0], d),
                extra,
                0.0,
                note=f"peak extra {extra / 2**20:.1f} MiB; the full N x M fp32 matrix {full / 2**20:.0f} MiB; "
                f"knn chunk {PW.KNN_CHUNK_BYTES / 2**20:.0f} MiB",
            )  # fmt: skip
        )
        print(f"knn k=10 {tuple(q.shape)} x {tuple(pts.shape)}: peak extra {extra / 2**20:.1f} MiB "
              f"(N x M: {full / 2**20:.0f} MiB)", file=sys.stderr)  # fmt: skip
    print(
        f"cdist fwd / GEMM alone: {_ratio(ours, gemm)} (target <= 1.3); Lorentz {_ratio(lor, gemm)}",
        file=sys.stderr,
    )
    print(f"cdist fwd vs compiled GEMM formula: {_ratio(comp_fwd, ours)}x", file=sys.stderr)
    print(
        f"cdist fwd+bwd vs compiled GEMM formula: {_ratio(comp_fb, ours_fb)}x (target >= 2)", file=sys.stderr
    )
    js, md = report.write(args.out)
    print(report.markdown())
    print(f"wrote {js} and {md}", file=sys.stderr)


if __name__ == "__main__":
    main()
