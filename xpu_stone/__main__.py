"""python -m xpu_stone: device report, kernel build, self-check, short benchmark.

On a machine with a CUDA GPU: compiles the kernels for it (cached on disk),
checks every Poincare op in fp32 against the float64 reference, and times
Mobius addition against a device-to-device copy. Without a GPU: checks the CPU
path of every op against the reference and, when NVRTC is installed, compiles
one kernel per op for sm_90 to show that the kernels build.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import time

import xpu_stone
from xpu_stone import kernels, ops
from xpu_stone.constants import BOUNDARY_EPS
from xpu_stone.kernels import REGISTRY


def _points(rows, d, c, device, gen, torch):
    """Ball points with norms log-uniform in [1e-15, 1 - 1e-7] of the radius, uniform, and zero."""
    direction = torch.randn(rows, d, generator=gen, dtype=torch.float64, device=device)
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    u = torch.rand(rows, 1, generator=gen, dtype=torch.float64, device=device)
    kind = torch.randint(0, 10, (rows, 1), generator=gen, device=device)
    r = torch.where(kind < 4, 10 ** (-15 * u), u).clamp_max(1 - 2e-7)
    r = torch.where(kind == 9, torch.zeros_like(r), r)
    return (direction * r / math.sqrt(c)).float()


def report(torch) -> int | None:
    print(f"xpu_stone {xpu_stone.__version__}, python {sys.version.split()[0]}")
    print(f"torch {torch.__version__}" if torch else "torch: not installed (the CuPy API works alone)")
    try:
        import cupy

        print(f"cupy {cupy.__version__}")
        from xpu_stone.kernels.compiler import nvrtc_version

        print(f"NVRTC {'.'.join(map(str, nvrtc_version()))}")
    except Exception as e:  # noqa: BLE001 - a report, not a failure
        print(f"cupy / NVRTC: unavailable ({type(e).__name__}: {e})")
    if torch is not None and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        print(
            f"GPU 0: {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB"
        )
        return 0
    if torch is not None:
        print("no CUDA GPU: checking the CPU path")
    return None


def build(arch: str, dtypes) -> None:
    start = time.perf_counter()
    cached = 0

    def progress(done, total, kernel):
        nonlocal cached
        cached += kernel.from_cache
        if done % 50 == 0 or done == total:
            elapsed = time.perf_counter() - start
            print(f"\r  kernels {done}/{total} ({cached} cached) {elapsed:5.1f} s", end="", flush=True)

    kernels.build(dtypes=dtypes, arch=arch, progress=progress)
    print()


SKIPPED: list[str] = []


def compile_check() -> bool:
    """One kernel of each op compiled for sm_90 by NVRTC (no GPU needed); True when
    it passed or could not run (NVRTC missing: said plainly and listed in
    ``SKIPPED``), False when a kernel failed."""
    from xpu_stone.errors import CompilationError, UnsupportedOperationError

    start = time.perf_counter()
    try:
        kernels.build(dtypes=["float32"], arch="sm_90", first_only=True)
    except CompilationError as e:
        print(f"kernel compile check FAILED: {e}")
        return False
    except (UnsupportedOperationError, ImportError, OSError, RuntimeError) as e:
        print(f"skipped: the kernel compile check ({type(e).__name__}: {e})")
        SKIPPED.append("the kernel compile check")
        return True
    print(
        f"compiled one kernel of each of the {len(REGISTRY.ops)} ops for sm_90 in {time.perf_counter() - start:.1f} s"
    )
    return True


def self_check(torch, device: str) -> bool:
    from xpu_stone import poincare as P
    from xpu_stone.reference import poincare as R

    gen = torch.Generator(device).manual_seed(0)
    ok = True
    for name in R.ARG_KINDS:
        worst = 0.0
        for d, c in ((3, 1e-3), (64, 1.0), (1000, 1e3)):
            x, y, z = (_points(2048, d, c, device, gen, torch) for _ in range(3))
            t = torch.rand(2048, 1, generator=gen, device=device) * 2 - 0.5
            args = R.arguments(name, (x, y, z), x * 3, t)
            kw = {"eps": BOUNDARY_EPS["float32"]} if name == "project" else {}
            out = getattr(P, name)(*args, c=c, **kw)
            ref = getattr(R, name)(*[a.double() for a in args], c=c, **kw)
            worst = max(worst, ((out.double() - ref).norm() / ref.norm().clamp_min(1e-300)).item())
        # A smoke check, looser than the test suite's 1e-5 (which settles the rows
        # where the float64 reference itself strays, near the boundary).
        good = math.isfinite(worst) and worst <= 1e-4
        ok &= good
        print(f"  {name:18s} fp32 vs float64 reference: rel err {worst:.1e} {'ok' if good else 'HIGH'}")
    return _check_models(torch, device, gen) and ok


def _check_models(torch, device: str, gen) -> bool:
    """Lorentz, Klein and the conversions, fp32 against the float64 textbook
    references on points well inside (distances up to ~3 from the origin)."""
    from xpu_stone.reference import lorentz as RL

    ok = True
    for family in (m.__name__.rsplit(".", 1)[1] for m in ops.ROW_FAMILIES if m is not ops.poincare):
        mod = importlib.import_module(f"xpu_stone.{family}")
        ref = importlib.import_module(f"xpu_stone.reference.{family}")
        for name, kinds in ref.ARG_KINDS.items():
            worst = 0.0
            for d, c in ((3, 0.1), (64, 1.0), (1000, 10.0)):
                args = []
                for k in kinds:
                    w = torch.randn(2048, d, generator=gen, device=device, dtype=torch.float64)
                    if k == "s":
                        args.append(torch.rand(2048, 1, generator=gen, device=device, dtype=torch.float64))
                    elif k == "p" and family != "klein":  # a hyperboloid point
                        w[:, 0] = 0
                        args.append(RL.expmap0(w / math.sqrt(d * c), c))
                    elif k in ("p", "b"):  # a ball point
                        args.append(w / w.norm(dim=-1, keepdim=True) * torch.rand(2048, 1, generator=gen,
                                    device=device, dtype=torch.float64) * 0.9 / math.sqrt(c))  # fmt: skip
                    elif k == "v":  # tangent at the first point
                        args.append(RL.proj_tan(args[0], w * 0.3, c) if args else RL.proj_tan(
                            RL.expmap0(w * 0, c), w * 0.3, c))  # fmt: skip
                    else:
                        args.append(w * 0.3 / math.sqrt(d * c))
                out = getattr(mod, name)(*[a.float() for a in args], c=c)
                want = getattr(ref, name)(*[a.float().double() for a in args], c=c)
                worst = max(worst, ((out.double() - want).norm() / want.norm().clamp_min(1e-300)).item())
            good = math.isfinite(worst) and worst <= 1e-4
            ok &= good
            label = f"{family}.{name}"
            print(f"  {label:30s} fp32 vs float64 reference: rel err {worst:.1e} {'ok' if good else 'HIGH'}")
    return ok


def bench(torch) -> None:
    from xpu_stone import poincare as P

    n = 1 << 26
    x, y = (torch.rand(n // 64, 64, device="cuda") * 0.01 for _ in range(2))
    copy_dst = torch.empty_like(x)
    for name, fn, nbytes in (
        ("copy", lambda: copy_dst.copy_(x), 2 * x.nbytes),
        ("mobius_add", lambda: P.mobius_add(x, y), 3 * x.nbytes),
        ("dist", lambda: P.dist(x, y), 2 * x.nbytes),
    ):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(20):
            fn()
        end.record()
        torch.cuda.synchronize()
        ms = start.elapsed_time(end) / 20
        print(f"  {name:11s} {ms:7.3f} ms  {nbytes / ms / 1e6:6.0f} GB/s   (fp32, {n // 64}x64)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xpu_stone", description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"], help="kernels to build")
    parser.add_argument(
        "--demo-epochs",
        type=int,
        default=None,
        help="epochs of the WordNet mammals embedding demo (default 100 on a GPU, 10 on the CPU; 0: skip)",
    )
    args = parser.parse_args(argv)
    from xpu_stone._deps import torch

    gpu = report(torch)
    if torch is None:
        ok = compile_check()
        print("skipped: the self-check against the float64 reference, the benchmark and the demo "
              "(they need torch: pip install torch)")  # fmt: skip
        print("the checks that ran passed" if ok else "SOME CHECKS FAILED")
        return 0 if ok else 1
    if gpu is not None:
        from xpu_stone.kernels.launch import device_arch

        arch = device_arch(gpu)
        print(f"building kernels for {arch} ({', '.join(args.dtypes)}):")
        build(arch, args.dtypes)
        print("self-check on the GPU:")
        ok = self_check(torch, "cuda")
        print("benchmark:")
        bench(torch)
    else:
        ok = compile_check()
        print("self-check of the CPU path:")
        ok = self_check(torch, "cpu") and ok
    epochs = args.demo_epochs if args.demo_epochs is not None else (100 if gpu is not None else 10)
    if epochs > 0:
        demo(epochs)
    if not ok:
        print("SOME CHECKS FAILED")
    elif SKIPPED:
        print(f"the checks that ran passed (skipped: {', '.join(SKIPPED)})")
    else:
        print("all checks passed")
    return 0 if ok else 1


def demo(epochs: int) -> None:
    """Poincaré embeddings of the shipped WordNet mammals closure (Nickel & Kiela 2017), dim 10."""
    from xpu_stone.examples import poincare_embeddings as pe

    print(f"WordNet mammals embedding demo ({epochs} epochs; 300 reach MAP ~0.94):", flush=True)
    pe.train(pe.parser().parse_args(["--epochs", str(epochs), "--out", "", "--quiet"]))


if __name__ == "__main__":
    sys.exit(main())
