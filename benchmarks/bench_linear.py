"""Hyperbolic linear layers: xpu_stone against torch eager and torch.compile of the
reference layers (xpu_stone.reference.linear), fwd and fwd+bwd.

    python -m benchmarks.bench_linear [--batch 4096 --din 512 --dout 512] [--out DIR]

Layers: HypLinear (mobius_matvec + Mobius bias + project), PoincareLinear (HNN++ FC),
HypMLR (HNN++ logits, dout = --classes); plus the bare GEMM fwd+bwd (x @ W^T with
both gradients), the floor of every row. Target of issue 3: HypLinear and
PoincareLinear fwd+bwd >= 1.5x torch.compile of the reference layer.
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.harness import Report, Row, environment, fwd_bwd, measure_copy, time_calls
from xpu_stone import linear as L
from xpu_stone import poincare as P
from xpu_stone.reference import linear as RL
from xpu_stone.reference import poincare as RPo


def _layers(c):
    """name -> (xpu_stone fn, reference fn), each (x, weight, bias) -> output."""
    return {
        "HypLinear": (
            lambda x, w, b: P.project(P.mobius_add(L.mobius_matvec(w, x, c), b, c), c),
            lambda x, w, b: RL.hyp_linear(x, w, b, c),
        ),
        "PoincareLinear": (
            lambda x, z, r: P.project(L.poincare_fc(x, z, r, c), c),
            lambda x, z, r: RPo.project(RL.poincare_fc(x, z, r, c), c),
        ),
        "HypMLR": (lambda x, z, r: L.poincare_mlr(x, z, r, c), lambda x, z, r: RL.mlr_hnnpp(x, z, r, c)),
    }


def _params(name, din, dout, classes, gen):
    if name == "HypLinear":
        w = torch.randn(dout, din, device="cuda", generator=gen) / din**0.5
        return w, torch.randn(dout, device="cuda", generator=gen) * 0.01
    k = classes if name == "HypMLR" else dout
    z = torch.randn(din, k, device="cuda", generator=gen) / din**0.5
    return z, torch.randn(k, device="cuda", generator=gen) * 0.1


def main(argv=None):
    torch._dynamo.config.cache_size_limit = 64
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--din", type=int, default=512)
    p.add_argument("--dout", type=int, default=512)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--c", type=float, default=1.0)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = False
    report = Report("linear", meta=environment())
    report.copy_gbps = measure_copy()
    gen = torch.Generator(device="cuda").manual_seed(0)
    b, din, dout = args.batch, args.din, args.dout
    ratios = {}

    def x_set():
        x = torch.randn(b, din, device="cuda", generator=gen)
        return x / x.norm(dim=-1, keepdim=True) * torch.rand(b, 1, device="cuda", generator=gen) * 0.9

    w = torch.randn(dout, din, device="cuda", generator=gen)
    gsets = [(x_set().requires_grad_(), w.clone().requires_grad_()) for _ in range(4)]
    ms = time_calls(fwd_bwd(lambda x, m: x @ m.t()), gsets, warmup=3, reps=30)
    report.add(Row("gemm", "torch.mm", "fwd+bwd", "float32", (b, din, dout), 0, ms))
    print(f"gemm fwd+bwd {ms:.4f} ms", file=sys.stderr)
    for name, (ours, ref) in _layers(args.c).items():
        k = args.classes if name == "HypMLR" else dout
        shape = (b, din, k)
        sets = [(x_set(), *_params(name, din, dout, args.classes, gen)) for _ in range(4)]
        gsets = [tuple(t.clone().requires_grad_() for t in s) for s in sets]
        times = {}
        for impl, fn in (
            ("xpu_stone", ours),
            ("torch_eager", ref),
            ("torch_compile", torch.compile(ref, dynamic=False)),
        ):
            for mode, f, s in (("fwd", fn, sets), ("fwd+bwd", fwd_bwd(fn), gsets)):
                if impl == "torch_compile" and mode == "fwd":
                    continue  # one compile per layer: the fwd+bwd graph the target is about
                try:
                    with torch.no_grad() if mode == "fwd" else torch.enable_grad():
                        t = time_calls(f, s, warmup=3, reps=30)
                    note = ""
                except Exception as e:
                    t, note = 0.0, f"failed: {type(e).__name__}: {e}"[:200]
                times[(impl, mode)] = t
                report.add(Row(name, impl, mode, "float32", shape, 0, t, note=note))
                print(f"{name} {impl} {mode}: {t:.4f} ms {note}", file=sys.stderr, flush=True)
        if times.get(("xpu_stone", "fwd+bwd")):
            ratios[name] = times[("torch_compile", "fwd+bwd")] / times[("xpu_stone", "fwd+bwd")]
    for name, r in ratios.items():
        print(f"{name} fwd+bwd vs torch.compile of the reference: {r:.2f}x (target >= 1.5)", file=sys.stderr)
    js, md = report.write(args.out)
    print(report.markdown())
    print(f"wrote {js} and {md}", file=sys.stderr)


if __name__ == "__main__":
    main()
