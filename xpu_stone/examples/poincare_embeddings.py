r"""Poincaré embeddings of the WordNet noun hierarchy (Nickel & Kiela, NeurIPS 2017).

    python -m xpu_stone.examples.poincare_embeddings                      # mammals, dim 10
    python -m xpu_stone.examples.poincare_embeddings --dim 2 --plot       # disk plot (PNG)
    python -m xpu_stone.examples.poincare_embeddings --data nouns --dtype float64 --boundary-eps 1e-8 \
        --epochs 2650 --lr 0.05 --lr-milestones 2100 2450 --lr-gamma 0.3   # after scripts/build_wordnet_closure.py
    ... --time-limit 450 --resume poincare_out/poincare_noun_closure_10d.pt  # the same run in legs
    torchrun --nproc-per-node 2 -m xpu_stone.examples.poincare_embeddings ...  # DDP, 2 processes
    torchrun --nproc-per-node 2 -m xpu_stone.examples.poincare_embeddings --sharded --data tree:1000000 \
        --eval-samples 1000                                                   # rows split over the ranks

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

Evaluation of a large graph (``--eval-samples S``): the same ranks and precisions for
``S`` nodes drawn at random, each still ranked against every node
(:func:`sampled_reconstruction`).

Several processes (``torchrun``; gloo on CPU, NCCL on GPUs, see :mod:`xpu_stone.distributed`):
every rank draws the same permutation and the same negatives (one seed) and takes its
part of each global batch of ``--batch`` edges. By default the table is replicated and
the step is data parallel: DDP sums the ranks' gradients in ``backward()``, every rank
applies the same fused Riemannian step, and the replicas are checked bit for bit at
each epoch's end (``--check-replicas N``: every N steps). With ``--sharded`` the rows
live on one rank each (:class:`xpu_stone.distributed.ShardedEmbedding`): a step fetches
the rows its edges and negatives name, and each owner applies the sparse Riemannian
update to its rows. Either way the loss curve is that of one process with the same
batch, up to the order of fp sums (with ``--optimizer radam`` a sharded table takes
sparse Adam steps, as ``torch.optim.SparseAdam`` does: rows outside a batch keep
their moments and do not move, so compare it with one process run ``--sharded``).
Checkpoints (``--checkpoint-every N`` epochs, and at the end) hold the whole table, the
optimizer state and the random state, are written by rank 0 atomically, and resume
(``--resume``) on any number of ranks; on one CPU process the resumed run is bit for
bit the uninterrupted one.

On CUDA, one training step is a handful of kernels (distance forward and backward
are xpu_stone's fused kernels, the update one fused optimizer launch); with
``--graphs`` (default on CUDA with rsgd) a whole epoch, negative sampling included,
is captured once per phase in a CUDA graph and replayed: one launch an epoch (one
process with a replicated table only).
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

from .. import distributed as xdist
from .. import poincare
from ..data import load_closure
from ..errors import InvalidArgumentError
from ..manifolds import ManifoldParameter, PoincareBall
from ..optim import RiemannianAdam, RiemannianSGD
from . import synthetic_tree


class Hierarchy:
    """A closure on a device: edges, their sorted keys (to reject positive negatives),
    and the degree^0.75 sampling table of the burn-in."""

    def __init__(self, names: list[str], edges: list[tuple[int, int]], device):
        e = torch.tensor(edges, dtype=torch.int64, device=device).reshape(-1, 2)
        self._set_edges(names, e[:, 0].contiguous(), e[:, 1].contiguous(), len(names))
        self.keys = torch.sort(self.u * self.n + self.v).values
        self._by_u = None

    def _set_edges(self, names, u, v, n: int) -> None:
        self.names, self.n, self.u, self.v = names, n, u, v
        degree = torch.bincount(torch.cat([u, v]), minlength=n).double() ** 0.75
        self.cdf = (torch.cumsum(degree, 0) / degree.sum()).float()

    def is_edge(self, u, v):
        key = u * self.n + v
        pos = torch.searchsorted(self.keys, key).clamp_max(self.keys.numel() - 1)
        return self.keys[pos] == key

    def ancestors(self, nodes: torch.Tensor) -> torch.Tensor:
        """``(len(nodes), A)``: the ``v`` of every edge ``(u, v)`` of each node ``u``,
        padded with -1 (``A`` the most any of them has)."""
        if self._by_u is None:
            order = torch.argsort(self.u)
            self._by_u = self.u[order], self.v[order]
        us, vs = self._by_u
        lo, hi = torch.searchsorted(us, nodes), torch.searchsorted(us, nodes, right=True)
        k = torch.arange(int((hi - lo).max()) if nodes.numel() else 0, device=nodes.device)
        at = lo.unsqueeze(1) + k
        return torch.where(at < hi.unsqueeze(1), vs[at.clamp_max(vs.numel() - 1)], -1)


class TreeClosure(Hierarchy):
    """The closure of a :class:`~xpu_stone.examples.synthetic_tree.Tree` (no names, no
    key table: the preorder numbering answers "is an edge" with two comparisons)."""

    def __init__(self, tree: synthetic_tree.Tree, device):
        self.tree = tree.to(device)
        self._set_edges(None, *self.tree.closure(), tree.nodes)

    def is_edge(self, u, v):
        return self.tree.is_ancestor(v, u)

    def ancestors(self, nodes: torch.Tensor) -> torch.Tensor:
        return self.tree.ancestors(nodes)


def load_hierarchy(data: str, device) -> Hierarchy:
    """``"tree:NODES[:BRANCHING]"`` (generated, :mod:`.synthetic_tree`), or a closure
    :func:`xpu_stone.data.load_closure` reads (``"mammals"``, ``"nouns"``, a file)."""
    if str(data).startswith("tree:"):
        return TreeClosure(synthetic_tree.load(data), device)
    return Hierarchy(*load_closure(data), device)


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


def sampled_reconstruction(t: Trainer, samples: int, seed: int = 0, max_block: int = 1 << 25):
    """``(mean_rank, map)`` as :func:`reconstruction` computes them, over ``samples``
    nodes with ancestors drawn at random (all of them when there are fewer), each
    ranked against every node of the graph. On several ranks each ranks the queries
    against the rows it holds (its shard, or its cyclic share of a replicated table),
    and the counts are summed; every rank gets the result."""
    h, (rank, size) = t.h, t.world
    with torch.no_grad():
        has = torch.nonzero(torch.bincount(h.u, minlength=h.n) > 0).flatten()
        pick = torch.randperm(has.numel(), generator=torch.Generator().manual_seed(seed))[:samples]
        pick = has[pick.to(has.device)]
        if t.table is not None:
            local = t.weight.detach()
        else:
            local = t.weight.detach()[rank::size]
        per_rank = -(-h.n // size)
        chunk = max(1, max_block // per_rank)  # the same on every rank: collectives stay in step
        rank_sum, n_ranks, ap_sum = 0.0, 0, 0.0
        for start in range(0, pick.numel(), chunk):
            q = pick[start : start + chunk]
            anc = h.ancestors(q)
            d = t.dist(t.rows(q).unsqueeze(1), local.unsqueeze(0))  # (queries, local rows)
            rows = torch.arange(q.numel(), device=q.device).unsqueeze(1).expand_as(anc)
            held = (anc >= 0) & (anc % size == rank)
            at = (rows[held], anc[held] // size)
            # an ancestor's distance is read where it is held (the same number that
            # ranks it there), then the ancestors and the node itself leave the ranking
            bound = torch.zeros(anc.shape, dtype=d.dtype, device=d.device)
            bound[held] = d[at]
            bound = xdist.all_sum(bound).masked_fill(anc < 0, math.inf).sort(1).values
            d[at] = math.inf
            own = q % size == rank
            d[torch.nonzero(own).flatten(), q[own] // size] = math.inf
            # non-ancestors closer than the k-th nearest ancestor: those with fewer than k + 1 bounds <= d
            a = anc.shape[1]
            below = torch.searchsorted(bound, d.contiguous(), right=True)
            flat = (below + torch.arange(q.numel(), device=q.device).unsqueeze(1) * (a + 1)).flatten()
            counts = xdist.all_sum(torch.bincount(flat, minlength=q.numel() * (a + 1)).view(q.numel(), a + 1))
            ahead = torch.cumsum(counts, 1)[:, :a].double()
            real = torch.isfinite(bound)
            rank_sum += float(((ahead + 1) * real).sum())
            n_ranks += int(real.sum())
            k = torch.arange(1, a + 1, device=q.device, dtype=torch.float64)
            ap_sum += float(((k / (k + ahead)) * real).sum(1).div(real.sum(1)).sum())
    return rank_sum / max(n_ranks, 1), ap_sum / max(pick.numel(), 1)


class _Rows(torch.nn.Module):
    """The table as a module (what DDP wraps): ``forward(ids)`` -> rows of ``ids``."""

    def __init__(self, weight):
        super().__init__()
        self.weight = weight

    def forward(self, ids):
        return _rows(self.weight, ids)


def _rows(weight, ids):
    return weight.index_select(0, ids.reshape(-1)).view(*ids.shape, weight.shape[-1])


class Trainer:
    """Holds the embedding, the optimizer and the (optionally graph-captured) epochs.

    On several ranks (:func:`xpu_stone.distributed.setup`) ``batch`` is the global
    batch, split over the ranks; the table is replicated (DDP) or, with ``sharded``,
    split (:class:`~xpu_stone.distributed.ShardedEmbedding`; :attr:`weight` is then this
    rank's rows). ``check_every``: check the replicas every that many steps (0: never)."""

    def __init__(self, h: Hierarchy, dim=10, c=1.0, batch=512, negatives=50, lr=0.15, burnin_factor=10.0,
                 optimizer="rsgd", graphs=None, seed=0, dtype=torch.float32, boundary_eps=None,
                 sharded=False, check_every=0):  # fmt: skip
        self.h, self.c, self.batch, self.negatives = h, c, batch, negatives
        self.dist = functools.partial(poincare.dist, c=c)  # (x, y) -> distances; replaceable
        self.world = rank, size = xdist.world()
        if batch % size:
            raise InvalidArgumentError(f"the batch ({batch} edges) must split evenly over {size} ranks")
        device = h.u.device
        if graphs and (size > 1 or sharded):
            raise InvalidArgumentError(
                "CUDA graphs capture the epochs of one process with a replicated table"
            )
        gen = torch.Generator(device="cpu").manual_seed(seed)
        ball = PoincareBall(c, eps=boundary_eps)
        ball.boundary_eps(dtype)  # a margin the dtype cannot hold: typed error before any launch
        init = torch.rand(h.n, dim, generator=gen) * 2e-3 - 1e-3
        self.table, self.ddp = None, None
        if sharded:
            self.table = xdist.ShardedEmbedding(h.n, dim, ball, device=device, dtype=dtype, init_scale=0)
            self.table.load_full(init)
            self.weight = self.table.weight
        else:
            self.weight = ManifoldParameter(init.to(device, dtype), ball)
            if size > 1:
                self.ddp = xdist.data_parallel(_Rows(self.weight), device)
        self.lr, self.burnin_factor, self.check_every = lr, burnin_factor, check_every
        if optimizer == "rsgd":
            self.opt = RiemannianSGD([self.weight], lr=lr, retraction="retr")
        elif optimizer == "radam":
            self.opt = RiemannianAdam([self.weight], lr=lr)
        else:
            raise ValueError(f"optimizer must be 'rsgd' or 'radam', got {optimizer!r}")
        self.steps = -(-h.u.numel() // batch)
        self.steps_done = 0
        self.target = torch.zeros(batch, dtype=torch.int64, device=device)
        self.total = torch.zeros((), device=device)
        # graphs capture the optimizer's records once per phase: only for SGD (Adam's bias
        # corrections change every step)
        if graphs is None:
            graphs = device.type == "cuda" and optimizer == "rsgd" and size == 1 and not sharded
        self.graphs = graphs
        self._graph = {}

    def rows(self, ids):
        """The embeddings of ``ids`` (any shape; rows in a new last dim), differentiable."""
        if self.table is not None:
            return self.table(ids)
        if self.ddp is not None:
            return self.ddp(ids)
        return _rows(self.weight, ids)

    def negatives_for(self, b: int, burnin: bool):
        """``(b, negatives)`` sampled node ids: by degree^0.75 in the burn-in, else uniform."""
        if burnin:
            r = torch.rand(b, self.negatives, device=self.h.u.device)
            return torch.searchsorted(self.h.cdf, r).clamp_max(self.h.n - 1)
        return torch.randint(0, self.h.n, (b, self.negatives), device=self.h.u.device)

    def loss(self, u, v, neg):
        """Summed softmax loss of the edges ``(u, v)`` against the negatives ``neg``."""
        rows = self.rows(torch.cat([u.unsqueeze(1), v.unsqueeze(1), neg], 1))
        d = self.dist(rows[:, :1], rows[:, 1:])
        logits = (-d).masked_fill(torch.cat([torch.zeros_like(v, dtype=torch.bool).unsqueeze(1),
                                             self.h.is_edge(u.unsqueeze(1), neg)], 1), -math.inf)  # fmt: skip
        return torch.nn.functional.cross_entropy(logits, self.target[: u.numel()], reduction="sum")

    def check_replicas(self) -> None:
        """Raises :class:`~xpu_stone.distributed.ReplicaMismatchError` unless every rank
        holds rank 0's table (a sharded table has no replicas)."""
        if self.table is None:
            xdist.check_replicas([("embeddings", self.weight)])

    def _epoch_body(self, burnin: bool, steps: int):
        h, b = self.h, self.batch
        e = h.u.numel()
        perm = torch.argsort(torch.rand(e, device=h.u.device))
        perm = torch.cat([perm, perm[: self.steps * b - e]])  # equal batches: a few edges twice
        self.total.zero_()
        for s in range(steps):
            # every rank draws the whole batch (one random stream) and trains on its part
            idx = xdist.rank_part(perm[s * b : (s + 1) * b])
            neg = xdist.rank_part(self.negatives_for(b, burnin))
            self.opt.zero_grad(set_to_none=self.table is not None)  # sparse gradients are new each step
            loss = self.loss(h.u[idx], h.v[idx], neg)
            loss.backward()
            self.opt.step()
            self.total += loss.detach()
            self.steps_done += 1
            if self.check_every and self.steps_done % self.check_every == 0:
                self.check_replicas()

    def epoch(self, burnin: bool, scale: float = 1.0, max_steps: int | None = None) -> torch.Tensor:
        """One pass over the edges in random batches at ``scale`` times the learning rate
        (its first ``max_steps`` batches only, when given); returns the mean loss an edge
        (a device scalar: reading it synchronises)."""
        lr = self.lr * scale / self.burnin_factor if burnin else self.lr * scale
        for group in self.opt.param_groups:
            group["lr"] = lr
        steps = self.steps if max_steps is None else min(self.steps, max_steps)
        key = (burnin, lr, steps)  # a captured epoch holds its learning rate
        if not self.graphs:
            self._epoch_body(burnin, steps)
        elif key not in self._graph:
            self._graph.clear()  # the phase or the rate moved on: free the old capture
            # this epoch runs eagerly on a side stream (compiling and loading every kernel
            # and creating the gradient); the capture then records the next one, which
            # is only replayed from the next call on
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._epoch_body(burnin, steps)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            try:
                # a capture stream of the current device (torch's default one is made once,
                # on whichever device was current then)
                with torch.cuda.graph(graph, stream=torch.cuda.Stream()):
                    self._epoch_body(burnin, steps)
            except RuntimeError as e:  # an op that cannot be captured: train eagerly from now on
                print(f"CUDA graph capture failed ({e}); continuing without graphs", file=sys.stderr)
                self.graphs = False
                return self.total / (steps * self.batch)
            self._graph[key] = graph
        else:
            self._graph[key].replay()
        return xdist.all_sum(self.total) / (steps * self.batch)

    def full_weight(self) -> torch.Tensor:
        """The whole table (gathered from every rank when sharded: a collective)."""
        return self.table.gather_full() if self.table is not None else self.weight.detach()

    def state_dict(self) -> dict:
        """The whole table, the optimizer state (per-row state of a sharded table
        gathered) and the random state: what a resumed run needs to continue this one."""
        opt = self.opt.state_dict()
        if self.table is not None:
            opt = _map_row_state(opt, self.weight.shape[0], self.table.gather_full)
        rng = {"cpu": torch.get_rng_state()}
        if self.weight.is_cuda:
            rng["cuda"] = torch.cuda.get_rng_state(self.weight.device)
        return {"embeddings": self.full_weight().cpu(), "optimizer": opt, "rng": rng}

    def load_state_dict(self, state: dict) -> None:
        """Continues from :meth:`state_dict` (made on any number of ranks)."""
        full = state["embeddings"]
        with torch.no_grad():
            if self.table is not None:
                self.table.load_full(full)
            else:
                self.weight.copy_(full.to(self.weight.device, self.weight.dtype))
        if "optimizer" in state:
            opt = state["optimizer"]
            if self.table is not None:
                opt = _map_row_state(opt, self.h.n, self.table.local_part)
            self.opt.load_state_dict(opt)
        if "rng" in state:
            torch.set_rng_state(state["rng"]["cpu"])
            if self.weight.is_cuda and "cuda" in state["rng"]:
                torch.cuda.set_rng_state(state["rng"]["cuda"], self.weight.device)


def _map_row_state(opt_state: dict, rows: int, fn) -> dict:
    """``opt_state`` with ``fn`` applied to every per-row state tensor (``rows`` rows)."""
    state = {
        k: {n: fn(t) if torch.is_tensor(t) and t.dim() and t.shape[0] == rows else t for n, t in st.items()}
        for k, st in opt_state["state"].items()
    }
    return {**opt_state, "state": state}


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


def _resume(path, names, t: Trainer, args) -> dict:
    """The progress record of the checkpoint ``path`` (a ``.pt`` this script saved), the
    trainer set to continue from it; typed errors if it belongs to another run."""
    ck = torch.load(path, map_location="cpu")
    done = ck["result"]
    if ck["names"] != names or (names is None and done["data"] != args.data):
        raise InvalidArgumentError(f"--resume {path}: made on other data ({done['data']})")
    if tuple(ck["embeddings"].shape) != (t.h.n, t.weight.shape[-1]) or ck["c"] != args.c:
        raise InvalidArgumentError(
            f"--resume {path}: embeddings {tuple(ck['embeddings'].shape)} with c={ck['c']}, "
            f"this run has {(t.h.n, t.weight.shape[-1])} with c={args.c}"
        )
    if done["epochs"] >= args.epochs:
        raise InvalidArgumentError(
            f"--resume {path}: already {done['epochs']} epochs; --epochs is {args.epochs}"
        )
    t.load_state_dict(ck)
    return done


def train(args) -> dict:
    device = xdist.setup(args.device)
    rank, size = xdist.world()
    torch.manual_seed(args.seed)
    h = load_hierarchy(args.data, device)
    t = Trainer(h, args.dim, args.c, args.batch, args.negatives, args.lr, args.burnin_factor, args.optimizer,
                graphs=args.graphs, seed=args.seed, dtype=getattr(torch, args.dtype), boundary_eps=args.boundary_eps,
                sharded=args.sharded, check_every=args.check_replicas)  # fmt: skip
    out = Path(args.out) if args.out else None
    if args.checkpoint_every and out is None:
        raise InvalidArgumentError("--checkpoint-every needs --out (the folder of the checkpoint)")
    stem = f"poincare_{Path(str(args.data)).name.split('.')[0].replace(':', '_')}_{args.dim}d"
    done = (
        _resume(args.resume, h.names, t, args)
        if args.resume
        else {"epochs": 0, "loss_history": [], "legs": []}
    )
    say = print if rank == 0 else (lambda *a, **k: None)
    history = [tuple(x) for x in done["loss_history"]]
    evaluations = [tuple(x) for x in done.get("evaluations", [])]  # (epoch, mean rank, MAP)
    bar = _progress(args.epochs, not args.quiet and rank == 0)
    bar.update(done["epochs"])
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    # what may change between the legs of a run: recorded in each leg, and at the top as the last leg's
    settings = {"batch": args.batch, "lr": args.lr, "lr_milestones": args.lr_milestones, "lr_gamma": args.lr_gamma,
                "dtype": args.dtype, "boundary_eps": args.boundary_eps, "world_size": size, "sharded": args.sharded}  # fmt: skip
    start = time.perf_counter()

    def progress(ep: int, **final) -> dict:
        """The record of the run up to epoch ``ep`` (this leg's seconds so far)."""
        leg = {"epochs": [done["epochs"], ep], "seconds": time.perf_counter() - start, "device": dev_name,
               "date": time.strftime("%Y-%m-%d"), **settings, **final}  # fmt: skip
        return {"data": args.data, "epochs": ep, "loss_history": history, "evaluations": evaluations,
                "legs": done["legs"] + [leg]}  # fmt: skip

    def evaluate():
        if args.eval_samples:
            return sampled_reconstruction(t, args.eval_samples, seed=args.seed)
        return reconstruction(t.full_weight(), h, args.c)

    ep = done["epochs"]
    while ep < args.epochs:
        loss = t.epoch(burnin=ep < args.burnin, scale=lr_scale(ep, args.lr_milestones, args.lr_gamma))
        bar.update(1)
        stop = xdist.agree(
            args.time_limit is not None and time.perf_counter() - start > args.time_limit, device
        )
        if ep % args.log_every == 0 or ep == args.epochs - 1 or stop:
            value = float(loss)
            history.append((ep, value))
            bar.set_postfix(loss=f"{value:.4f}")
        ep += 1
        if size > 1 and not args.check_replicas:
            t.check_replicas()  # an epoch's end: every rank holds rank 0's table, bit for bit
        if args.eval_every and ep % args.eval_every == 0 and ep < args.epochs and not stop:
            mr, mp = evaluate()
            evaluations.append((ep, mr, mp))
            say(f"epoch {ep}: mean rank {mr:.3f}  MAP {mp:.4f}", flush=True)
        if stop:
            say(f"--time-limit reached after epoch {ep}; resume with --resume <out>/<name>.pt", flush=True)
            break
        if args.checkpoint_every and ep % args.checkpoint_every == 0 and ep < args.epochs:
            save_checkpoint({"names": h.names, "c": args.c, "result": progress(ep), **t.state_dict()},
                            out / f"{stem}.pt")  # fmt: skip
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    bar.close()
    mean_rank, mean_ap = evaluate()
    evaluations.append((ep, mean_rank, mean_ap))
    record = progress(ep, mean_rank=mean_rank, map=mean_ap)
    record["legs"][-1]["seconds"] = wall
    legs = record["legs"]
    train_seconds = sum(leg["seconds"] for leg in legs)
    result = {
        "data": args.data, "nodes": h.n, "edges": h.u.numel(), "dim": args.dim, "epochs": ep,
        "epochs_planned": args.epochs, "negatives": args.negatives, "optimizer": args.optimizer, **settings,
        "device": dev_name, "graphs": t.graphs, "train_seconds": train_seconds,
        "ms_per_epoch": 1e3 * train_seconds / max(ep, 1), "mean_rank": mean_rank, "map": mean_ap,
        "eval_samples": args.eval_samples, "loss_history": history, "evaluations": evaluations, "legs": legs,
    }  # fmt: skip
    say(f"{h.n} nodes, {h.u.numel()} edges, dim {args.dim}: mean rank {mean_rank:.3f}, MAP {mean_ap:.4f} "
        f"after {ep} epochs in {train_seconds:.1f} s ({result['ms_per_epoch']:.2f} ms/epoch"
        f"{f', {len(legs)} legs' if len(legs) > 1 else ''}{f', {size} ranks' if size > 1 else ''})")  # fmt: skip
    if out is not None:
        state = t.state_dict()  # a collective when sharded: every rank takes part
        save_checkpoint({"names": h.names, "c": args.c, "result": result, **state}, out / f"{stem}.pt")
        if rank == 0:
            _write_text(out / f"{stem}.json", json.dumps(result, indent=1))
            if args.plot:
                if args.dim != 2:
                    print("--plot draws the first two coordinates; run with --dim 2 for a faithful disk")
                try:
                    plot_disk(state["embeddings"], h, out / f"{stem}.png", c=args.c)
                    print(f"wrote {out / (stem + '.png')}")
                except ImportError:
                    print("--plot needs matplotlib (pip install matplotlib)", file=sys.stderr)
            print(f"wrote {out / (stem + '.pt')}")
    return result


def save_checkpoint(obj, path) -> None:
    """Rank 0 writes ``obj`` to ``path`` atomically (:func:`xpu_stone.distributed.save_on_rank0`)."""
    xdist.save_on_rank0(obj, path)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Poincaré embeddings of a WordNet closure or a generated tree")
    p.add_argument(
        "--data", default="mammals",
        help="'mammals' (shipped), 'nouns' (built), a closure file, or tree:NODES[:BRANCHING] (generated)",
    )  # fmt: skip
    p.add_argument("--dim", type=int, default=10)
    p.add_argument("--c", type=float, default=1.0, help="curvature -c of the ball")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--burnin", type=int, default=20, help="burn-in epochs")
    p.add_argument("--burnin-factor", type=float, default=10.0, help="burn-in learning rate = lr / this")
    p.add_argument("--batch", type=int, default=512, help="edges a step (over all ranks together)")
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
                   help="capture epochs in CUDA graphs (default: on for one CUDA process with rsgd)")  # fmt: skip
    p.add_argument("--sharded", action="store_true",
                   help="split the rows over the ranks of a torchrun launch (default: replicate, DDP)")  # fmt: skip
    p.add_argument("--check-replicas", type=int, default=0, metavar="N",
                   help="on several ranks, check the replicas every N steps (default: at each epoch's end)")  # fmt: skip
    p.add_argument("--device", default=None, help="cpu, cuda (under torchrun: cuda:LOCAL_RANK) or cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=0, help="print reconstruction every N epochs")
    p.add_argument("--eval-samples", type=int, default=0,
                   help="evaluate on this many random nodes (ranked against all; default: every node)")  # fmt: skip
    p.add_argument("--log-every", type=int, default=10, help="read the loss every N epochs (a sync)")
    p.add_argument("--resume", default=None, help="a .pt this script saved: continue that run up to --epochs")
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="N",
                   help="also write <out>/<name>.pt every N epochs (resumable with --resume)")  # fmt: skip
    p.add_argument("--time-limit", type=_positive, default=None,
                   help="stop after the epoch that passes this many seconds, evaluate and save (resumable)")  # fmt: skip
    p.add_argument("--out", default="poincare_out", help="folder for embeddings, JSON and PNG ('' for none)")
    p.add_argument("--plot", action="store_true", help="write a PNG of the disk (use with --dim 2)")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv=None) -> int:
    try:
        train(parser().parse_args(argv))
    finally:
        xdist.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
