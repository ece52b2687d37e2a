"""Compiles every registered kernel with NVRTC and reports its resources.

    python scripts/check_kernels.py                   # sm_80 and sm_90, no GPU needed
    python scripts/check_kernels.py --arch native     # the current GPU's target
    python scripts/check_kernels.py --ops poincare_dist --dtypes float32

Prints registers, spill bytes and stack bytes per kernel and a summary line;
exits 1 if any kernel fails to compile (its NVRTC log is printed). Spills are
listed (they cost speed, not correctness).
Needs only the NVRTC library (``pip install nvidia-cuda-nvrtc cupy-cuda13x``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import xpu_stone  # noqa: E402,F401  (registers the ops)
from xpu_stone.errors import CompilationError  # noqa: E402
from xpu_stone.kernels import REGISTRY  # noqa: E402
from xpu_stone.kernels.compiler import compile_kernel  # noqa: E402
from xpu_stone.kernels.registry import DTYPES  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", nargs="*", default=["sm_80", "sm_90"])
    p.add_argument("--ops", nargs="*", default=None)
    p.add_argument("--dtypes", nargs="*", default=list(DTYPES))
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--no-cache", action="store_true", help="compile even if a cubin is cached")
    p.add_argument("--json", help="write the per-kernel report here")
    p.add_argument("--quiet", action="store_true", help="print only failures and the summary")
    args = p.parse_args(argv)
    archs = args.arch
    if archs == ["native"]:
        from xpu_stone.kernels.launch import device_arch

        archs = [device_arch(0)]
    jobs = [
        (kernels.source, name, defines, arch)
        for arch in archs
        for kernels in REGISTRY
        if args.ops is None or kernels.op in args.ops
        for name, defines in kernels.all_kernels(args.dtypes)
    ]
    start = time.perf_counter()
    failures, report, spills = [], [], 0

    def run(job):
        src, name, defines, arch = job
        try:
            return job, compile_kernel(src, name, arch, use_cache=not args.no_cache, defines=defines), None
        except CompilationError as e:
            return job, None, e

    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        for i, (job, k, err) in enumerate(pool.map(run, jobs), 1):
            src, name, _, arch = job
            if err is not None:
                failures.append(err)
                print(f"FAIL {arch} {name}\n{err.log}", flush=True)
                continue
            spill = k.spill_bytes > 0
            report.append(
                {
                    "arch": arch,
                    "source": src,
                    "kernel": name,
                    "registers": k.registers,
                    "spill_bytes": k.spill_bytes,
                    "stack_bytes": k.stack_bytes,
                    "smem_bytes": k.smem_bytes,
                    "cached": k.from_cache,
                }
            )
            spills += spill
            if not args.quiet or spill:
                print(
                    f"[{i}/{len(jobs)}] {arch} regs={k.registers:3d} spill={k.spill_bytes}B "
                    f"stack={k.stack_bytes}B {name}",
                    flush=True,
                )
    elapsed = time.perf_counter() - start
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"elapsed_s": elapsed, "kernels": report}, f, indent=1)
    cached = sum(r["cached"] for r in report)
    print(
        f"{len(report)} kernels compiled ({cached} from cache) for {', '.join(archs)} in {elapsed:.1f} s "
        f"with {args.workers} workers; {len(failures)} failed, {spills} spill registers"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
