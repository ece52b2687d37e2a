"""Where the host time of one small call goes: ``poincare.mobius_add`` on two 64x64
fp32 CUDA tensors (the GPU work is a few microseconds, so the host's time is the call's).

    python -m benchmarks.bench_host_path [--calls 2000] [--out DIR]

Rows (µs per call on the host, the median of 5 batches of ``--calls`` calls):

* ``torch.add`` and the whole ``mobius_add`` call, autograd off (mode ``fwd``) and
  with an input that requires grad (mode ``fwd_grad``: the eager autograd.Function
  records the call; no backward runs): the median over ``--rounds`` rounds in which
  the two alternate, since the host's speed drifts between batches; each round's
  times are in ``meta["rounds"]``, so that a ratio can pair the times of one round;
* each stage of the autograd-off call on its own, made as the call makes it
  (:func:`xpu_stone.engine.rowwise.call`, :func:`xpu_stone.engine.rowwise_cuda.launch_forward`):
  ``validate`` (argument checks), ``route`` (autograd and tracing checks), ``prepare``
  (the rows' layout and the kernel's fields), ``allocate`` (the output tensor),
  ``kernel`` (the loaded function and launch setting, a cached lookup), ``stream``
  (torch's current stream), ``launch`` (packing the argument struct and cuLaunchKernel);
  the ``glue`` row is the whole call less the stages' sum: the Python between them.

``meta["cprofile"]`` holds cProfile's functions with the most own time over the
autograd-off and autograd-on calls (its own overhead inflates every function, so the
shares, not the times, are what it says). Writes ``hostpath-<GPU>-<date>.json`` and
``.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys

import torch

from benchmarks.harness import Report, Row, environment, finish, host_time_us
from xpu_stone import poincare as P
from xpu_stone.engine import rowwise, rowwise_cuda
from xpu_stone.engine.checks import validate_torch
from xpu_stone.engine.launch import launch_rows, torch_stream
from xpu_stone.engine.rows import prepare_contiguous
from xpu_stone.ops.poincare import MOBIUS_ADD

SHAPE = (64, 64)
PROFILE_TOP = 15


def stage_calls(x, y):
    """{stage: (fn, args)}: each stage of the autograd-off call, with the inputs the call
    gives it (computed once here, from the same functions)."""
    op, vecs = MOBIUS_ADD, (x, y)
    c, c_val, t, t_val, dtype, batch = validate_torch(op, vecs, 1.0, None)
    d, rows, _, fields, aligned = prepare_contiguous(vecs, c_val, t_val, dtype, batch)
    dev = x.device.index
    fn, choice = rowwise_cuda._kernel(op, "fwd", dtype, d, aligned, dev)
    shape = (*batch, op.out_width(d))
    out = torch.empty(shape, dtype=x.dtype, device=x.device)
    full = (*fields, 0.0, out.data_ptr(), 0, 0, 0, 0, 0, 0, 0, 0)
    grid = -(-rows // choice.config.rows_per_block())
    stream = torch_stream(dev)

    def route(vecs, c, t):
        return rowwise._needs_grad(vecs, c, t) or torch.compiler.is_compiling()

    return {
        "validate": (validate_torch, (op, vecs, 1.0, None)),
        "route": (route, (vecs, c, t)),
        "prepare": (prepare_contiguous, (vecs, c_val, t_val, dtype, batch)),
        "allocate": (lambda: torch.empty(shape, dtype=x.dtype, device=x.device), ()),
        "kernel": (rowwise_cuda._kernel, (op, "fwd", dtype, d, aligned, dev)),
        "stream": (torch_stream, (dev,)),
        "launch": (
            launch_rows,
            (op.labels["fwd"], choice.variant, fn, grid, choice.config.block, full, d, dtype, stream, dev),
        ),
    }


def profile_top(fn, args, calls: int) -> list[dict]:
    """cProfile's ``PROFILE_TOP`` functions by own time over ``calls`` calls of ``fn``:
    each one's calls per call of ``fn`` and share of the profiled time."""
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn(*args)
    prof.disable()
    torch.cuda.synchronize()
    stats = pstats.Stats(prof)
    total = stats.total_tt
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:PROFILE_TOP]
    return [
        {
            "function": f"{file.split('site-packages/')[-1].split('xpu_stone/')[-1]}:{line}({name})",
            "calls_per_call": round(nc / calls, 2),
            "share": round(tt / total, 4),
        }
        for (file, line, name), (_cc, nc, tt, _ct, _callers) in rows
    ]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds of the whole-call timings")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_host_path needs a CUDA GPU")
    report = Report("hostpath", meta=environment())
    x = torch.rand(*SHAPE, device="cuda") * 0.01
    y = torch.rand(*SHAPE, device="cuda") * 0.01
    xg = x.clone().requires_grad_()
    timings, rounds = {}, {}
    for mode, a in (("fwd", x), ("fwd_grad", xg)):
        # the host's speed drifts between batches (up to 2x on an H200 host): torch.add and
        # the call alternate, round by round, and each round's ratio pairs the two
        samples = rounds[mode] = {"torch.add": [], "xpu_stone": []}
        with torch.set_grad_enabled(mode != "fwd"):
            for _ in range(args.rounds):
                for impl, fn in (("torch.add", torch.add), ("xpu_stone", P.mobius_add)):
                    samples[impl].append(host_time_us(fn, (a, y), args.calls))
        for impl, times in samples.items():
            us = timings[impl, mode] = statistics.median(times)
            report.add(Row("host_path", impl, mode, "float32", SHAPE, 0, us / 1000, note="the whole call"))
    report.meta["rounds"] = rounds
    with torch.no_grad():
        stage_sum = 0.0
        for stage, (fn, fargs) in stage_calls(x, y).items():
            us = host_time_us(fn, fargs, args.calls)
            stage_sum += us
            report.add(Row("host_path", stage, "fwd", "float32", SHAPE, 0, us / 1000, note="one stage alone"))
        glue = timings["xpu_stone", "fwd"] - stage_sum
        report.add(
            Row("host_path", "glue", "fwd", "float32", SHAPE, 0, glue / 1000, note="the call less its stages")
        )
        report.meta["cprofile"] = {"fwd": profile_top(P.mobius_add, (x, y), 20 * args.calls)}
    report.meta["cprofile"]["fwd_grad"] = profile_top(P.mobius_add, (xg, y), 20 * args.calls)
    for r in report.rows:
        print(f"{r.impl:10s} {r.mode:9s} {r.ms * 1000:7.2f} us  {r.note}", file=sys.stderr)
    finish(report, args.out)


if __name__ == "__main__":
    main()
