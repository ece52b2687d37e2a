r"""Poincaré embeddings of the WordNet noun hierarchy (Nickel & Kiela, NeurIPS 2017).

    python -m xpu_stone.examples.poincare_embeddings                      # mammals, dim 10
    python -m xpu_stone.examples.poincare_embeddings --dim 2 --plot       # disk plot (PNG)
    python -m xpu_stone.examples.poincare_embeddings --data nouns --dtype float64 --boundary-eps 1e-8 \
        --epochs 2650 --lr 0.05 --lr-milestones 2100 2450 --lr-gamma 0.3   # after scripts/build_wordnet_closure.py
    ... --time-limit 450 --resume poincare_out/poincare_noun_closure_10d.pt  # the same run in legs

Model: one point :math:`\theta_u` of the Poincaré ball per synset. For a closure edge
:math:`(u, v)` (``v`` an ancestor of ``u``) and ``K`` sampled negatives
:math:`v'_k` with :math:`(u, v'_k)` not an edge, the loss is the softmax over
distances

.. math::
    \ell(u, v) = -\log \frac{e^{-d(\theta_u, \theta_v)}}{e^{-d(\theta_u, \theta_v)} +
    \sum_k e^{-d(\theta_u, \theta_{v'_k})}},

summed over a batch of edges. Embeddings start uniform in :math:`[-10^{-3},
10^{-3}]^D`; a burn-in phase (``--burnin`` epochs) uses the learning rate divided by
``--burnin-factor`` and negatives drawn in proportion to degree\ :sup:`0.75`;
afterwards negatives are uniform. Optimizer: :class:`xpu_stone.optim.RiemannianSGD`
with the paper's retraction :math:`\operatorname{proj}(\theta - \eta\,
\frac{(1-\|\theta\|^2)^2}{4}\nabla)` (``--optimizer rsgd``, default) or
:class:`~xpu_stone.optim.RiemannianAdam`.

Evaluation (reconstruction, as in the paper and its reference code): for every
node ``u`` with ancestors, all other nodes are ranked by distance to ``u``; the rank
of each ancestor counts the non-ancestors ranked before it, plus one (mean rank
over all edges), and the average precision of the ranking of ``u``'s ancestors is
averaged over the nodes (MAP).

Precision and the boundary margin (``--dtype``, ``--boundary-eps``): points are kept
at norm :math:`\le 1-\epsilon`, i.e. at most about :math:`\ln(2/\epsilon)` from the origin.
The default :math:`\epsilon = 10^{-5}` (12.2) is enough for the mammals, but on the noun
closure it held 29 % of the points on the margin; ``--dtype float64 --boundary-eps 1e-8``
(19.1; float32 cannot represent that margin) leaves every point free and brings the
noun mean rank under 5 (see the README).

On CUDA, one training step is a handful of kernels (distance forward and backward
are xpu_stone's fused kernels, the update one fused optimizer launch); with
``--graphs`` (default on CUDA with rsgd) a whole epoch, negative sampling included,
is captured once per phase in a CUDA graph and replayed: one launch an epoch.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from pathlib import Path

import torch

from .. import poincare
from ..data import load_closure
from ..errors import InvalidArgumentError
from ..manifolds import ManifoldParameter, PoincareBall
from ..optim import RiemannianAdam, RiemannianSGD


class Hierarchy:
    """A closure on a device: edges, their sorted keys (to reject positive negatives),
    and the degree^0.75 sampling table of the burn-in."""

    def __init__(self, names: list[str], edges: list[tuple[int, int]], device):
        self.names, self.n = names, len(names)
        e = torch.tensor(edges, dtype=torch.int64, device=device).reshape(-1, 2)
        self.u, self.v = e[:, 0].contiguous(), e[:, 1].contiguous()
        self.keys = torch.sort(self.u * self.n + self.v).values
        degree = torch.bincount(e.flatten(), minlength=self.n).double() ** 0.75
        self.cdf = (torch.cumsum(degree, 0) / degree.sum()).float()

    def is_edge(self, u, v):
        key = u * self.n + v
        pos = torch.searchsorted(self.keys, key).clamp_max(self.keys.numel() - 1)
        return self.keys[pos] == key


def reconstruction(weight, h: Hierarchy, c: float = 1.0, max_block: int = 1 << 25):
    """``(mean_rank, map)`` of the embedding ``weight`` (see the module docstring)."""
    w = weight.detach()
    n = w.shape[0]
    order = torch.argsort(h.u)
    us, vs = h.u[order], h.v[order]
    rank_sum, n_ranks, ap_sum, n_nodes = 0.0, 0, 0.0, 0
    chunk = max(1, min(n, max_block // n))
    for start in range(0, n, chunk):
        rows = torch.arange(start, min(start + chunk, n), device=w.device)
        d = poincare.dist(w[rows].unsqueeze(1), w.unsqueeze(0), c).double()
        d[torch.arange(rows.numel(), device=w.device), rows] = math.inf  # the node itself
        lo, hi = torch.searchsorted(us, torch.tensor([start, start + rows.numel()], device=w.device)).tolist()
        pos = torch.zeros(rows.numel(), n, dtype=torch.bool, device=w.device)
        pos[us[lo:hi] - start, vs[lo:hi]] = True
        npos = pos.sum(1)
        sorted_pos = torch.gather(pos, 1, torch.argsort(d, dim=1))
        ahead_neg = torch.cumsum(~sorted_pos, 1)
        ahead_pos = torch.cumsum(sorted_pos, 1)
        place = torch.arange(1, n + 1, device=w.device, dtype=torch.float64)
        rank_sum += float(((ahead_neg + 1) * sorted_pos).sum())
        n_ranks += int(npos.sum())
        has = npos > 0
        ap = ((ahead_pos / place) * sorted_pos).sum(1)[has] / npos[has]
        ap_sum += float(ap.sum())
        n_nodes += int(has.sum())
    return rank_sum / max(n_ranks, 1), ap_sum / max(n_nodes, 1)


class Trainer:
    """Holds the embedding, the optimizer and the (optionally graph-captured) epochs."""

    def __init__(self, h: Hierarchy, dim=10, c=1.0, batch=512, negatives=50, lr=0.15, burnin_factor=10.0,
                 optimizer="rsgd", graphs=None, seed=0, dtype=torch.float32, boundary_eps=None):  # fmt: skip
        self.h, self.c, self.batch, self.negatives = h, c, batch, negatives
        self.dist = functools.partial(poincare.dist, c=c)  # (x, y) -> distances; replaceable
        device = h.u.device
        gen = torch.Generator(device="cpu").manual_seed(seed)
        ball = PoincareBall(c, eps=boundary_eps)
        ball.boundary_eps(dtype)  # a margin the dtype cannot hold: typed error before any launch
        init = (torch.rand(h.n, dim, generator=gen) * 2e-3 - 1e-3).to(device, dtype)
        self.weight = ManifoldParameter(init, ball)
        self.lr, self.burnin_factor = lr, burnin_factor
        if optimizer == "rsgd":
            self.opt = RiemannianSGD([self.weight], lr=lr, retraction="retr")
        elif optimizer == "radam":
            self.opt = RiemannianAdam([self.weight], lr=lr)
        else:
            raise ValueError(f"optimizer must be 'rsgd' or 'radam', got {optimizer!r}")
        self.steps = -(-h.u.numel() // batch)
        self.target = torch.zeros(batch, dtype=torch.int64, device=device)
        self.total = torch.zeros((), device=device)
        # graphs capture the optimizer's records once per phase: only for SGD (Adam's bias
        # corrections change every step)
        self.graphs = (device.type == "cuda" and optimizer == "rsgd") if graphs is None else graphs
        self._graph = {}

    def loss(self, u, v, burnin: bool):
        """Summed softmax loss of the edges ``(u, v)`` against freshly sampled negatives."""
        b, k = u.numel(), self.negatives
        if burnin:
            r = torch.rand(b, k, device=u.device)
            neg = torch.searchsorted(self.h.cdf, r).clamp_max(self.h.n - 1)
        else:
            neg = torch.randint(0, self.h.n, (b, k), device=u.device)
        cand = torch.cat([v.unsqueeze(1), neg], 1)
        w = self.weight
        d = self.dist(w.index_select(0, u).unsqueeze(1), w.index_select(0, cand.flatten()).view(b, k + 1, -1))
        logits = (-d).masked_fill(torch.cat([torch.zeros_like(v, dtype=torch.bool).unsqueeze(1),
                                             self.h.is_edge(u.unsqueeze(1), neg)], 1), -math.inf)  # fmt: skip
        return torch.nn.functional.cross_entropy(logits, self.target[:b], reduction="sum")

    def _epoch_body(self, burnin: bool):
        h, b = self.h, self.batch
        e = h.u.numel()
        perm = torch.argsort(torch.rand(e, device=h.u.device))
        perm = torch.cat([perm, perm[: self.steps * b - e]])  # equal batches: a few edges twice
        self.total.zero_()
        for s in range(self.steps):
            idx = perm[s * b : (s + 1) * b]
            self.opt.zero_grad(set_to_none=False)
            loss = self.loss(h.u[idx], h.v[idx], burnin)
            loss.backward()
            self.opt.step()
            self.total += loss.detach()

    def epoch(self, burnin: bool, scale: float = 1.0) -> torch.Tensor:
        """One pass over the edges in random batches at ``scale`` times the learning rate;
        returns the mean loss an edge (a device scalar: reading it synchronises)."""
        lr = self.lr * scale / self.burnin_factor if burnin else self.lr * scale
        for group in self.opt.param_groups:
            group["lr"] = lr
        key = (burnin, lr)  # a captured epoch holds its learning rate
        if not self.graphs:
            self._epoch_body(burnin)
        elif key not in self._graph:
            self._graph.clear()  # the phase or the rate moved on: free the old capture
            # this epoch runs eagerly on a side stream (compiling and loading every kernel
            # and creating the gradient); the capture then records the next one, which
            # is only replayed from the next call on
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._epoch_body(burnin)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    self._epoch_body(burnin)
            except RuntimeError as e:  # an op that cannot be captured: train eagerly from now on
                print(f"CUDA graph capture failed ({e}); continuing without graphs", file=sys.stderr)
                self.graphs = False
                return self.total / (self.steps * self.batch)
            self._graph[key] = graph
        else:
            self._graph[key].replay()
        return self.total / (self.steps * self.batch)


def plot_disk(weight, h: Hierarchy, path, labels: int = 20, c: float = 1.0):
    """Scatter of the first two coordinates on the disk of radius 1/sqrt(c), the ``labels``
    nodes with the most descendants named."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = weight.detach().float().cpu()[:, :2] * math.sqrt(c)
    descendants = torch.bincount(h.v.cpu(), minlength=h.n)
    top = torch.argsort(descendants, descending=True)[:labels]
    fig, ax = plt.subplots(figsize=(9, 9))
    ax.add_patch(plt.Circle((0, 0), 1.0, fill=False, color="black", lw=1))
    ax.scatter(w[:, 0], w[:, 1], s=4, alpha=0.5, color="tab:blue")
    for i in top.tolist():
        ax.scatter(w[i, 0], w[i, 1], s=14, color="tab:red")
        ax.annotate(h.names[i].split(".")[0], (w[i, 0], w[i, 1]), fontsize=8)
    ax.set_xlim(-1.05, 1.05)
    ax.set_ylim(-1.05, 1.05)
    ax.set_aspect("equal")
    ax.axis("off")
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)


def _progress(total, enabled):
    try:
        from tqdm import tqdm

        return tqdm(total=total, disable=not enabled, unit="epoch", dynamic_ncols=True)
    except ImportError:  # tqdm is optional: a plain counter line instead

        class Plain:
            def __init__(self):
                self.i = 0

            def update(self, k=1):
                self.i += k

            def set_postfix(self, **kw):
                if enabled and (self.i % 10 == 0 or self.i == total):
                    print(
                        f"epoch {self.i}/{total} " + " ".join(f"{k}={v}" for k, v in kw.items()), flush=True
                    )

            def close(self):
                pass

        return Plain()


def lr_scale(epoch: int, milestones, gamma: float) -> float:
    """``gamma ** k`` with ``k`` the milestones reached by ``epoch`` (as MultiStepLR)."""
    return gamma ** sum(1 for m in milestones if epoch >= m)


def _resume(path, names: list[str], t: Trainer, args) -> dict:
    """The result record of the checkpoint ``path`` (a ``.pt`` this script saved), its
    embeddings copied into the trainer; typed errors if it belongs to another run."""
    ck = torch.load(path, map_location="cpu")
    done = ck["result"]
    if ck["names"] != names:
        raise InvalidArgumentError(f"--resume {path}: made on other data ({done['data']})")
    if tuple(ck["embeddings"].shape) != tuple(t.weight.shape) or ck["c"] != args.c:
        raise InvalidArgumentError(
            f"--resume {path}: embeddings {tuple(ck['embeddings'].shape)} with c={ck['c']}, "
            f"this run has {tuple(t.weight.shape)} with c={args.c}"
        )
    if done["epochs"] >= args.epochs:
        raise InvalidArgumentError(
            f"--resume {path}: already {done['epochs']} epochs; --epochs is {args.epochs}"
        )
    with torch.no_grad():
        t.weight.copy_(ck["embeddings"].to(t.weight.device, t.weight.dtype))
    return done


def train(args) -> dict:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(args.seed)
    names, edges = load_closure(args.data)
    h = Hierarchy(names, edges, device)
    t = Trainer(h, args.dim, args.c, args.batch, args.negatives, args.lr, args.burnin_factor, args.optimizer,
                graphs=args.graphs, seed=args.seed, dtype=getattr(torch, args.dtype), boundary_eps=args.boundary_eps)  # fmt: skip
    done = (
        _resume(args.resume, names, t, args) if args.resume else {"epochs": 0, "loss_history": [], "legs": []}
    )
    history = [tuple(x) for x in done["loss_history"]]
    evaluations = [tuple(x) for x in done.get("evaluations", [])]  # (epoch, mean rank, MAP)
    bar = _progress(args.epochs, not args.quiet)
    bar.update(done["epochs"])
    start = time.perf_counter()
    ep = done["epochs"]
    while ep < args.epochs:
        loss = t.epoch(burnin=ep < args.burnin, scale=lr_scale(ep, args.lr_milestones, args.lr_gamma))
        bar.update(1)
        stop = args.time_limit is not None and time.perf_counter() - start > args.time_limit
        if ep % args.log_every == 0 or ep == args.epochs - 1 or stop:
            value = float(loss)
            history.append((ep, value))
            bar.set_postfix(loss=f"{value:.4f}")
        ep += 1
        if args.eval_every and ep % args.eval_every == 0 and ep < args.epochs and not stop:
            mr, mp = reconstruction(t.weight, h, args.c)
            evaluations.append((ep, mr, mp))
            print(f"epoch {ep}: mean rank {mr:.3f}  MAP {mp:.4f}", flush=True)
        if stop:
            print(f"--time-limit reached after epoch {ep}; resume with --resume <out>/<name>.pt", flush=True)
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    bar.close()
    mean_rank, mean_ap = reconstruction(t.weight, h, args.c)
    evaluations.append((ep, mean_rank, mean_ap))
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    # what may change between the legs of a run: recorded in each leg, and at the top as the last leg's
    settings = {"batch": args.batch, "lr": args.lr, "lr_milestones": args.lr_milestones, "lr_gamma": args.lr_gamma,
                "dtype": args.dtype, "boundary_eps": args.boundary_eps}  # fmt: skip
    legs = done["legs"] + [{"epochs": [done["epochs"], ep], "seconds": wall, "device": dev_name,
                            "date": time.strftime("%Y-%m-%d"), **settings, "mean_rank": mean_rank, "map": mean_ap}]  # fmt: skip
    train_seconds = sum(leg["seconds"] for leg in legs)
    result = {
        "data": args.data, "nodes": h.n, "edges": h.u.numel(), "dim": args.dim, "epochs": ep,
        "epochs_planned": args.epochs, "negatives": args.negatives, "optimizer": args.optimizer, **settings,
        "device": dev_name, "graphs": t.graphs, "train_seconds": train_seconds,
        "ms_per_epoch": 1e3 * train_seconds / max(ep, 1), "mean_rank": mean_rank, "map": mean_ap,
        "loss_history": history, "evaluations": evaluations, "legs": legs,
    }  # fmt: skip
    print(f"{h.n} nodes, {h.u.numel()} edges, dim {args.dim}: mean rank {mean_rank:.3f}, MAP {mean_ap:.4f} "
          f"after {ep} epochs in {train_seconds:.1f} s ({result['ms_per_epoch']:.2f} ms/epoch"
          f"{f', {len(legs)} legs' if len(legs) > 1 else ''})")  # fmt: skip
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"poincare_{Path(str(args.data)).name.split('.')[0]}_{args.dim}d"
        torch.save({"names": names, "embeddings": t.weight.detach().cpu(), "c": args.c, "result": result},
                   out / f"{stem}.pt")  # fmt: skip
        (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
        if args.plot:
            if args.dim != 2:
                print("--plot draws the first two coordinates; run with --dim 2 for a faithful disk")
            try:
                plot_disk(t.weight, h, out / f"{stem}.png", c=args.c)
                print(f"wrote {out / (stem + '.png')}")
            except ImportError:
                print("--plot needs matplotlib (pip install matplotlib)", file=sys.stderr)
        print(f"wrote {out / (stem + '.pt')}")
    return result


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Poincaré embeddings of a WordNet closure")
    p.add_argument(
        "--data", default="mammals", help="'mammals' (shipped), 'nouns' (built), or a closure file"
    )
    p.add_argument("--dim", type=int, default=10)
    p.add_argument("--c", type=float, default=1.0, help="curvature -c of the ball")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--burnin", type=int, default=20, help="burn-in epochs")
    p.add_argument("--burnin-factor", type=float, default=10.0, help="burn-in learning rate = lr / this")
    p.add_argument("--batch", type=int, default=512, help="edges a step")
    p.add_argument("--negatives", type=int, default=50)
    p.add_argument("--lr", type=float, default=0.15, help="learning rate (loss summed over the batch)")
    p.add_argument("--lr-milestones", type=int, nargs="*", default=[],
                   help="epochs at which the learning rate is multiplied by --lr-gamma")  # fmt: skip
    p.add_argument("--lr-gamma", type=_positive, default=0.1, help="factor at each milestone (> 0)")
    p.add_argument("--optimizer", choices=("rsgd", "radam"), default="rsgd")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="storage of the embeddings (float64 allows a --boundary-eps below 6e-8)")  # fmt: skip
    p.add_argument("--boundary-eps", type=_positive, default=None,
                   help="points are kept at norm <= 1 - this (default: the dtype's, 1e-5 for float32/64)")  # fmt: skip
    p.add_argument("--graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="capture epochs in CUDA graphs (default: on for CUDA with rsgd)")  # fmt: skip
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=0, help="print reconstruction every N epochs")
    p.add_argument("--log-every", type=int, default=10, help="read the loss every N epochs (a sync)")
    p.add_argument("--resume", default=None, help="a .pt this script saved: continue that run up to --epochs")
    p.add_argument("--time-limit", type=_positive, default=None,
                   help="stop after the epoch that passes this many seconds, evaluate and save (resumable)")  # fmt: skip
    p.add_argument("--out", default="poincare_out", help="folder for embeddings, JSON and PNG ('' for none)")
    p.add_argument("--plot", action="store_true", help="write a PNG of the disk (use with --dim 2)")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv=None) -> int:
    train(parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
