r"""A user's own training loop: Poincaré embeddings of the WordNet mammals, written
the way the README teaches, timed against the same loop with geoopt and with a
Euclidean distance, and with its step under ``torch.compile`` or one CUDA graph.

    python -m benchmarks.bench_user_loop --out $OUT              # CUDA, ~2-3 min on an H200
    python -m benchmarks.bench_user_loop --device cpu --epochs 2 --out /tmp/ul   # CPU, ~1 min
    OUT=... bash benchmarks/run.sh userloop                      # the same, through the runner

The loop (no helper of the example's trainer: the user's own indexing, sampling and
loss). Each epoch draws a permutation of the closure's edges ``(u, v)`` (``v`` an
ancestor of ``u``), cut into batches of ``--batch`` edges (the last one filled up
with edges from the start, so that every batch has one shape), and ``--negatives``
nodes drawn uniformly for each edge (not checked against the closure). One step on
the batch ``ids = [u, v, v'_1 .. v'_K]`` is

.. math::
    \ell = \sum_i -\log \frac{e^{-d(\theta_{u_i}, \theta_{v_i})}}
        {e^{-d(\theta_{u_i}, \theta_{v_i})} + \sum_k e^{-d(\theta_{u_i}, \theta_{v'_{ik}})}},

written as ``rows = emb[ids]; d = dist(rows[:, :1], rows[:, 1:]);
cross_entropy(-d, 0, reduction="sum")``, then ``loss.backward()`` and the optimizer's
step. The first ``--burnin`` epochs run at ``lr / --burnin-factor`` (Nickel & Kiela).

Variants (``--variants``, ``LIB:MODE``), each from the same initial table and seed:

* libraries: ``xpu_stone`` (``ManifoldParameter(PoincareBall)``, ``xpu_stone.poincare.dist``,
  ``xpu_stone.optim.RiemannianSGD(retraction="retr")``, Nickel & Kiela's update
  :math:`\operatorname{proj}(\theta - \eta\,\frac{(1-\|\theta\|^2)^2}{4}\nabla)`);
  ``geoopt`` (``geoopt.ManifoldParameter``, ``PoincareBall.dist``,
  ``geoopt.optim.RiemannianSGD``: the same update, but geoopt keeps float32 points at norm
  :math:`\le 1 - 4\cdot 10^{-3}` where xpu_stone allows :math:`1 - 10^{-5}`, so the two runs part
  once points reach geoopt's margin); ``euclid`` (``nn.Parameter``,
  :math:`\|x - y\|_2`, ``torch.optim.SGD``): the floor of the loop's own indexing,
  sampling and loss, not a model of the hierarchy (no reconstruction figures);
* modes: ``eager`` (the step as written); ``compile`` (the step function under
  ``torch.compile(mode="reduce-overhead")`` with inductor on CUDA; ``--compile-backend``);
  dynamo's graph breaks, recompiles and CUDA-graph skips are recorded, and
  ``torch._dynamo.explain`` of a twin model names each break and where;
  ``capture`` (the step captured once with ``xpu_stone.runtime.capture`` and replayed
  for every batch, re-captured when the learning rate changes; CUDA only).

Per variant: ms/epoch (the median of ``--time-epochs`` epochs after the training
epochs and ``--warmup-epochs`` more, each epoch wall-clocked between device
synchronisations), its ratio to the Euclidean floor and its speed-up over geoopt's
eager loop, the mean loss of every epoch, and the reconstruction (mean rank, MAP;
:func:`xpu_stone.examples.poincare_embeddings.reconstruction`) after ``--epochs``
epochs. JSON and markdown to ``--out`` as ``userloop-<gpu>-<date>.json``/``.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.harness import environment, result_stem, synced_wall_ms, synchronize
from xpu_stone import poincare
from xpu_stone.data import load_closure
from xpu_stone.examples.poincare_embeddings import Hierarchy, reconstruction
from xpu_stone.manifolds import ManifoldParameter, PoincareBall
from xpu_stone.optim import RiemannianSGD
from xpu_stone.runtime import capture

LIBS = ("xpu_stone", "geoopt", "euclid")
MODES = ("eager", "compile", "capture")
VARIANTS = ("xpu_stone:eager", "geoopt:eager", "euclid:eager", "xpu_stone:compile", "xpu_stone:capture")
FLOOR, GEOOPT = "euclid:eager", "geoopt:eager"
CUDAGRAPH_LOG = "torch._inductor.cudagraph_utils.__cudagraphs"  # inductor's "cudagraphs" log artifact
LIB_WITH = {
    "xpu_stone": "xpu_stone.poincare.dist + xpu_stone.optim.RiemannianSGD(retraction='retr') "
    "on an xpu_stone ManifoldParameter",
    "geoopt": "geoopt.PoincareBall.dist + geoopt.optim.RiemannianSGD on a geoopt.ManifoldParameter",
    "euclid": "torch.linalg.vector_norm(x - y) + torch.optim.SGD on an nn.Parameter",
}


def euclidean_dist(x, y):
    r""":math:`\|x - y\|_2` over the last dim."""
    return torch.linalg.vector_norm(x - y, dim=-1)


class UserModel:
    """What the user writes: the table as a parameter of ``lib``, its optimizer and
    its distance; :meth:`step` is the training step."""

    def __init__(self, lib: str, init: torch.Tensor, lr: float, c: float, batch: int):
        table = init.detach().clone()
        if lib == "xpu_stone":
            self.param = ManifoldParameter(table, PoincareBall(c))
            self.opt = RiemannianSGD([self.param], lr=lr, retraction="retr")
            self.dist = functools.partial(poincare.dist, c=c)
        elif lib == "geoopt":
            import geoopt

            ball = geoopt.PoincareBall(c=c)
            self.param = geoopt.ManifoldParameter(table, manifold=ball)
            self.opt = geoopt.optim.RiemannianSGD([self.param], lr=lr)
            self.dist = ball.dist
        elif lib == "euclid":
            self.param = torch.nn.Parameter(table)
            self.opt = torch.optim.SGD([self.param], lr=lr)
            self.dist = euclidean_dist
        else:
            raise ValueError(f"library must be one of {LIBS}, got {lib!r}")
        self.target = torch.zeros(batch, dtype=torch.int64, device=init.device)

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """One step on ``ids`` (``(batch, 2 + negatives)``: node, ancestor, negatives);
        returns the summed loss (detached)."""
        self.opt.zero_grad(set_to_none=True)
        rows = self.param[ids]
        d = self.dist(rows[:, :1], rows[:, 1:])
        loss = F.cross_entropy(-d, self.target, reduction="sum")
        loss.backward()
        self.opt.step()
        return loss.detach()

    def set_lr(self, lr: float) -> None:
        for group in self.opt.param_groups:
            group["lr"] = lr

    def weight(self) -> torch.Tensor:
        return self.param.detach().as_subclass(torch.Tensor)


class Runner:
    """``model.step`` as ``mode`` runs it: as written, under ``torch.compile``, or
    captured in a CUDA graph (one per learning rate: a captured step holds its rate)."""

    def __init__(self, model: UserModel, mode: str, backend: str):
        self.model, self.mode = model, mode
        self.lr, self.captures = None, 0
        self._graph = None
        if mode == "compile":
            kw = {"mode": "reduce-overhead"} if backend == "inductor" else {}
            self._compiled = torch.compile(model.step, backend=backend, **kw)
        self._mark_step = mode == "compile" and backend == "inductor" and model.target.is_cuda

    def set_lr(self, lr: float) -> None:
        if lr != self.lr:
            self.model.set_lr(lr)
            self.lr, self._graph = lr, None

    def __call__(self, ids):
        if self.mode == "eager":
            return self.model.step(ids)
        if self.mode == "compile":
            if self._mark_step:  # a new iteration for the CUDA-graph trees of reduce-overhead
                torch.compiler.cudagraph_mark_step_begin()
            return self._compiled(ids)
        if self._graph is None:
            self._graph = capture(self.model.step, ids)
            self.captures += 1
        return self._graph(ids)


def epoch(run, u_all, v_all, nodes: int, batch: int, negatives: int, max_steps: int | None):
    """One pass over the edges in random batches (the first ``max_steps`` only, when
    given); returns the mean loss an edge (a device scalar)."""
    e, device = u_all.numel(), u_all.device
    steps = -(-e // batch)
    perm = torch.randperm(e, device=device)
    perm = torch.cat([perm, perm[: steps * batch - e]])  # equal batches: a few edges twice
    steps = steps if max_steps is None else min(steps, max_steps)
    total = torch.zeros((), device=device)
    for s in range(steps):
        idx = perm[s * batch : (s + 1) * batch]
        neg = torch.randint(0, nodes, (batch, negatives), device=device)
        total += run(torch.cat([u_all[idx].unsqueeze(1), v_all[idx].unsqueeze(1), neg], 1))
    return total / (steps * batch)


def _first_line(text) -> str:
    return str(text).strip().splitlines()[0] if str(text).strip() else ""


def dynamo_counters() -> dict:
    """Graph breaks (first line of each reason -> count), frames, graphs, recompiles
    and inductor's CUDA-graph skips from ``torch._dynamo.utils.counters``."""
    from torch._dynamo.utils import counters

    def lines(d):
        out = {}
        for k, v in d.items():
            out[_first_line(k)] = out.get(_first_line(k), 0) + v
        return out

    return {
        "graph_breaks": sum(counters["graph_break"].values()),
        "graph_break_reasons": lines(counters["graph_break"]),
        "unimplemented": lines(counters["unimplemented"]),
        "frames": dict(counters["frames"]),
        "stats": dict(counters["stats"]),
        "recompiles": dict(counters["recompiles"]),
        "cudagraph": {k: v for k, v in counters["inductor"].items() if "cudagraph" in k},
    }


def explain_step(model: UserModel, ids) -> dict:
    """``torch._dynamo.explain`` of ``model.step`` on ``ids`` (it runs one step of
    ``model``: pass a twin): graphs, breaks and where each break is."""
    out = torch._dynamo.explain(model.step)(ids)
    where = []
    for r in out.break_reasons:
        frame = r.user_stack[-1] if r.user_stack else None
        at = f"{Path(frame.filename).name}:{frame.lineno} ({frame.line})" if frame else ""
        where.append({"reason": _first_line(r.reason), "at": at})
    return {"graph_count": out.graph_count, "graph_break_count": out.graph_break_count, "breaks": where}


def ran_with(lib: str, mode: str, backend: str) -> str:
    if mode == "eager":
        how = "eager"
    elif mode == "compile":
        how = "torch.compile(step" + (
            ', mode="reduce-overhead")' if backend == "inductor" else f", backend={backend!r})"
        )
    else:
        how = "CUDA graph: the step captured by xpu_stone.runtime.capture, replayed per batch"
    return f"{how}; {LIB_WITH[lib]}"


class LogMessages(logging.Handler):
    """The messages of the logger ``name`` while entered (``torch._logging`` artifacts
    ``artifacts`` switched on meanwhile)."""

    def __init__(self, name: str, **artifacts):
        super().__init__()
        self.logger, self.artifacts, self.messages = logging.getLogger(name), artifacts, []

    def emit(self, record) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self):
        torch._logging.set_logs(**self.artifacts)
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self)
        torch._logging.set_logs()


def train_and_time(rec: dict, model: UserModel, run: Runner, h: Hierarchy, args) -> None:
    """Trains ``--epochs`` epochs (the first ``--burnin`` at the burn-in rate), evaluates,
    then times ``--time-epochs`` epochs after ``--warmup-epochs``; fills ``rec``."""
    device = h.u.device
    go = functools.partial(epoch, run, h.u, h.v, h.n, args.batch, args.negatives, args.max_steps)
    losses = []
    t0 = time.perf_counter()
    for ep in range(args.epochs):
        run.set_lr(args.lr / args.burnin_factor if ep < args.burnin else args.lr)
        losses.append(go())
        if ep == 0:
            synchronize(device)
            rec["first_epoch_ms"] = (time.perf_counter() - t0) * 1e3
    synchronize(device)
    rec["train_seconds"] = time.perf_counter() - t0
    if rec["lib"] != "euclid":
        rec["mean_rank"], rec["map"] = reconstruction(model.weight(), h, c=args.c)
    run.set_lr(args.lr)
    for _ in range(args.warmup_epochs):
        losses.append(go())
    times = synced_wall_ms(lambda: losses.append(go()), args.time_epochs, device)
    rec.update(
        ms_per_epoch=statistics.median(times),
        ms_per_epoch_min=min(times),
        ms_per_epoch_max=max(times),
        epoch_ms=times,
        losses=[float(x) for x in losses],
    )


def run_variant(name: str, init, h: Hierarchy, args) -> dict:
    lib, mode = name.split(":")
    rec = {"variant": name, "lib": lib, "mode": mode, "ran_with": ran_with(lib, mode, args.compile_backend)}
    if mode == "capture" and init.device.type != "cuda":
        rec["skipped"] = "CUDA graphs need a CUDA device"
        return rec
    if mode == "compile":
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
    torch.manual_seed(args.seed)
    model = UserModel(lib, init, args.lr, args.c, args.batch)
    run = Runner(model, mode, args.compile_backend)
    skips = LogMessages(CUDAGRAPH_LOG, cudagraphs=True)
    try:
        with skips if mode == "compile" else contextlib.nullcontext():
            train_and_time(rec, model, run, h, args)
    except Exception as e:  # a variant that fails is reported as failed, not lost
        rec["error"] = f"{type(e).__name__}: {e}"[:2000]
    if mode == "compile":
        rec["dynamo"] = {**dynamo_counters(), "cudagraph_messages": sorted(set(skips.messages))[:20]}
        twin = UserModel(lib, init, args.lr, args.c, args.batch)
        neg = torch.randint(0, h.n, (args.batch, args.negatives), device=init.device)
        try:
            rec["explain"] = explain_step(
                twin, torch.cat([h.u[: args.batch, None], h.v[: args.batch, None], neg], 1)
            )
        except Exception as e:
            rec["explain"] = {"error": f"{type(e).__name__}: {e}"[:2000]}
    if mode == "capture":
        rec["captures"] = run.captures
    return rec


def add_ratios(variants: list[dict]) -> None:
    """Each timed variant's ms/epoch over the Euclidean floor's, and geoopt's eager
    ms/epoch over its own (its speed-up over geoopt)."""
    ms = {v["variant"]: v["ms_per_epoch"] for v in variants if "ms_per_epoch" in v}
    for v in variants:
        if "ms_per_epoch" not in v:
            continue
        if FLOOR in ms:
            v["ratio_to_euclid_eager"] = v["ms_per_epoch"] / ms[FLOOR]
        if GEOOPT in ms:
            v["speedup_vs_geoopt_eager"] = ms[GEOOPT] / v["ms_per_epoch"]


def _cell(v, key, fmt):
    return format(v[key], fmt) if v.get(key) is not None else "—"


def markdown(result: dict) -> str:
    m, cfg = result["meta"], result["config"]
    lines = [
        "# user loop: Poincaré embeddings, the user's own training loop",
        "",
        f"{m['gpu']} · {m['date']} · torch {m['torch']} · {cfg['data']} ({cfg['nodes']} nodes, {cfg['edges']} "
        f"edges), dim {cfg['dim']}, batch {cfg['batch']}, {cfg['negatives']} negatives, "
        f"{cfg['steps_per_epoch']} steps/epoch, lr {cfg['lr']}",
        "",
        f"| variant | ran with | ms/epoch (min–max) | × Euclidean floor | speed-up vs geoopt eager "
        f"| mean rank / MAP after {cfg['epochs']} epochs | loss first → last epoch | note |",
        "|---|---|---:|---:|---:|---|---|---|",
    ]
    for v in result["variants"]:
        note = v.get("skipped") or v.get("error", "")
        if "dynamo" in v:
            note = f"{v['dynamo']['graph_breaks']} graph breaks"
        ms = (
            f"{v['ms_per_epoch']:.2f} ({v['ms_per_epoch_min']:.2f}–{v['ms_per_epoch_max']:.2f})"
            if "ms_per_epoch" in v
            else "—"
        )
        quality = f"{v['mean_rank']:.2f} / {v['map']:.3f}" if v.get("map") is not None else "—"
        loss = f"{v['losses'][0]:.3f} → {v['losses'][-1]:.3f}" if v.get("losses") else "—"
        lines.append(
            f"| {v['variant']} | {v['ran_with']} | {ms} | {_cell(v, 'ratio_to_euclid_eager', '.2f')} | "
            f"{_cell(v, 'speedup_vs_geoopt_eager', '.2f')} | {quality} | {loss} | {note[:120]} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data", default="mammals", help="a closure xpu_stone.data.load_closure reads")
    p.add_argument(
        "--variants", nargs="+", default=list(VARIANTS), help=f"LIB:MODE, LIB in {LIBS}, MODE in {MODES}"
    )
    p.add_argument("--dim", type=int, default=10)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--negatives", type=int, default=50)
    p.add_argument("--lr", type=float, default=0.15)
    p.add_argument("--c", type=float, default=1.0)
    p.add_argument("--burnin", type=int, default=20, help="first epochs at lr / --burnin-factor")
    p.add_argument("--burnin-factor", type=float, default=10.0)
    p.add_argument("--epochs", type=int, default=300, help="training epochs before the reconstruction")
    p.add_argument("--warmup-epochs", type=int, default=2, help="untimed epochs at lr after the training")
    p.add_argument(
        "--time-epochs", type=int, default=None, help="timed epochs (default 20 on CUDA, 3 on the CPU)"
    )
    p.add_argument(
        "--max-steps", type=int, default=None, help="batches per epoch (default: all; for tiny runs)"
    )
    p.add_argument("--compile-backend", default=None, help="default inductor on CUDA, aot_eager on the CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for userloop-<gpu>-<date>.json and .md")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    for v in args.variants:
        lib, _, mode = v.partition(":")
        if lib not in LIBS or mode not in MODES:
            p.error(f"variant {v!r}: expected LIB:MODE with LIB in {LIBS} and MODE in {MODES}")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but torch sees no CUDA device")
    if args.time_epochs is None:
        args.time_epochs = 20 if device.type == "cuda" else 3
    if args.compile_backend is None:
        args.compile_backend = "inductor" if device.type == "cuda" else "aot_eager"
    if args.epochs < 1 or args.time_epochs < 1:
        p.error("--epochs and --time-epochs must be at least 1")
    start = time.perf_counter()
    names, edges = load_closure(args.data)
    h = Hierarchy(names, edges, device)
    if args.batch > h.u.numel():
        p.error(f"--batch {args.batch} is more than the {h.u.numel()} edges")
    init = torch.rand(h.n, args.dim, generator=torch.Generator().manual_seed(args.seed)) * 2e-3 - 1e-3
    init = init.to(device)
    steps = -(-h.u.numel() // args.batch)
    config = {k: v for k, v in vars(args).items() if k not in ("out", "variants")}
    config.update(
        nodes=h.n,
        edges=h.u.numel(),
        device=str(device),
        steps_per_epoch=steps if args.max_steps is None else min(steps, args.max_steps),
    )
    meta = {**environment(), "bench": "userloop"}
    if device.type != "cuda":
        meta["gpu"] = "cpu"  # the device that ran it, even on a machine with a GPU
    result = {"meta": meta, "config": config, "variants": []}
    for name in args.variants:
        rec = run_variant(name, init, h, args)
        result["variants"].append(rec)
        done = rec.get("skipped") or rec.get("error") or f"{rec['ms_per_epoch']:.2f} ms/epoch"
        print(f"[{time.perf_counter() - start:6.1f}s] {name:18s} {done}", file=sys.stderr, flush=True)
    add_ratios(result["variants"])
    result["seconds"] = time.perf_counter() - start
    md = markdown(result)
    print(md)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = result_stem("userloop", meta["gpu"], meta["date"])
        (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
        (out / f"{stem}.md").write_text(md)
        print(f"wrote {out / stem}.json and .md", file=sys.stderr)
    return 1 if any("error" in v for v in result["variants"]) else 0


if __name__ == "__main__":
    sys.exit(main())
