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

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import xpu_stone  # noqa: E402,F401  (registers the ops)
from xpu_stone.kernels.build import compile_all  # noqa: E402
from xpu_stone.kernels.launch import device_arch  # noqa: E402
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
    archs = [device_arch(0)] if args.arch == ["native"] else args.arch
    start = time.perf_counter()
    report, failures, spills = [], 0, 0

    def progress(i, total, r):
        nonlocal failures, spills
        if r.error is not None:
            failures += 1
            print(f"FAIL {r.arch} {r.name}\n{r.error.log}", flush=True)
            return
        k = r.kernel
        report.append(
            {
                "arch": r.arch,
                "source": r.source,
                "kernel": r.name,
                "registers": k.registers,
                "spill_bytes": k.spill_bytes,
                "stack_bytes": k.stack_bytes,
                "smem_bytes": k.smem_bytes,
                "cached": k.from_cache,
                "seconds": round(r.seconds, 3),
            }
        )
        spills += k.spill_bytes > 0
        if not args.quiet or k.spill_bytes > 0:
            print(
                f"[{i}/{total}] {r.arch} regs={k.registers:3d} spill={k.spill_bytes}B "
                f"stack={k.stack_bytes}B {r.name}",
                flush=True,
            )

    compile_all(
        args.ops, args.dtypes, archs, args.workers, progress, use_cache=not args.no_cache, raise_errors=False
    )
    elapsed = time.perf_counter() - start
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"elapsed_s": elapsed, "failed": failures, "kernels": report}, f, indent=1)
    cached = sum(r["cached"] for r in report)
    print(
        f"{len(report)} kernels compiled ({cached} from cache) for {', '.join(archs)} in {elapsed:.1f} s "
        f"with {args.workers} workers; {failures} failed, {spills} spill registers"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
