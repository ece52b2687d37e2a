r"""Random trees of any size (tens of millions of nodes), generated in a few vectorised
passes, with their transitive closures (what :mod:`.poincare_embeddings` trains on).

    python -m xpu_stone.examples.poincare_embeddings --data tree:100000 --eval-samples 500

Shape (:func:`generate`): level :math:`k` holds :math:`\lceil b^k\rceil` nodes (``branching``
:math:`b`) until ``nodes`` are placed (the last level takes the rest); each node of a level
gets a parent drawn uniformly from the level above, so a node has about :math:`b`
children (Poisson-like) and some inner nodes are leaves. A 10-million-node tree with
:math:`b = 8` has 9 levels and about 78 million closure edges.

Nodes are numbered in depth-first preorder, so the subtree of :math:`v` is the id range
:math:`[v, v + s_v)` (:math:`s_v` its size) and ":math:`v` is an ancestor of :math:`u`" is
:math:`v < u < v + s_v`: rejecting sampled negatives needs no edge table. The tree is
drawn on the CPU from ``seed`` alone (the same on every device and every rank); the
closure is built on the training device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import InvalidArgumentError


@dataclass(frozen=True)
class Tree:
    """A rooted tree in preorder numbering: ``parent`` (-1 at the root, id 0), subtree
    ``size`` and ``depth`` of every node, int64 tensors."""

    parent: torch.Tensor
    size: torch.Tensor
    depth: torch.Tensor

    @property
    def nodes(self) -> int:
        return self.parent.numel()

    def to(self, device) -> Tree:
        return Tree(self.parent.to(device), self.size.to(device), self.depth.to(device))

    def closure(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(u, v)``: an edge for every node ``u`` and each of its proper ancestors ``v``
        (parents first, then grandparents...), on the tree's device."""
        us, vs = [], []
        u, a = torch.arange(self.nodes, device=self.parent.device), self.parent
        while u.numel():  # one pass per level of ancestors
            keep = a >= 0
            u, a = u[keep], a[keep]
            us.append(u)
            vs.append(a)
            a = self.parent[a]
        return torch.cat(us), torch.cat(vs)

    def is_ancestor(self, v: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Whether ``v`` is a proper ancestor of ``u`` (elementwise): :math:`v < u < v + s_v`."""
        return (v < u) & (u < v + self.size[v])

    def ancestors(self, nodes: torch.Tensor) -> torch.Tensor:
        """``(len(nodes), A)``: the proper ancestors of each node, nearest first, padded
        with -1 (``A`` the largest depth among ``nodes``)."""
        out, a = [], self.parent[nodes]
        for _ in range(int(self.depth[nodes].max()) if nodes.numel() else 0):
            out.append(a)
            a = torch.where(a >= 0, self.parent[a.clamp_min(0)], a)
        return torch.stack(out, 1) if out else nodes.new_empty((nodes.numel(), 0))


def level_sizes(nodes: int, branching: float) -> list[int]:
    """Nodes per level: 1, then each level ``branching`` times the last (rounded up),
    the last level cut to make ``nodes`` in all."""
    sizes = [1]
    while sum(sizes) < nodes:
        sizes.append(min(math.ceil(sizes[-1] * branching), nodes - sum(sizes)))
    return sizes


def generate(nodes: int, branching: float = 8.0, seed: int = 0) -> Tree:
    """The tree of ``nodes`` nodes described in the module docstring (on the CPU)."""
    if nodes < 2 or not branching > 1:
        raise InvalidArgumentError(f"a tree needs nodes >= 2 and branching > 1, got {nodes}, {branching}")
    gen = torch.Generator().manual_seed(seed)
    sizes = level_sizes(nodes, branching)
    # parents[k][i]: the parent (index within level k - 1) of node i of level k, sorted, so
    # that the children of a node are consecutive
    parents = [torch.empty(0, dtype=torch.int64)]
    for k in range(1, len(sizes)):
        counts = torch.bincount(
            torch.randint(0, sizes[k - 1], (sizes[k],), generator=gen), minlength=sizes[k - 1]
        )
        parents.append(torch.repeat_interleave(torch.arange(sizes[k - 1]), counts))
    subtree = [torch.ones(s, dtype=torch.int64) for s in sizes]
    for k in range(len(sizes) - 1, 0, -1):  # bottom-up: a node's size is 1 plus its children's
        subtree[k - 1].index_add_(0, parents[k], subtree[k])
    parent = torch.full((nodes,), -1, dtype=torch.int64)
    size = torch.empty(nodes, dtype=torch.int64)
    depth = torch.empty(nodes, dtype=torch.int64)
    pre = torch.zeros(1, dtype=torch.int64)  # preorder ids of the level above
    size[0], depth[0] = subtree[0], 0
    for k in range(1, len(sizes)):
        # a child's subtree starts after its parent and after the subtrees of its earlier siblings
        before = torch.cumsum(subtree[k], 0) - subtree[k]
        first = torch.searchsorted(parents[k], parents[k])  # the first sibling of each node
        ids = pre[parents[k]] + 1 + before - before[first]
        parent[ids], size[ids], depth[ids] = pre[parents[k]], subtree[k], k
        pre = ids
    return Tree(parent, size, depth)


def load(spec: str) -> Tree:
    """``"tree:NODES"`` or ``"tree:NODES:BRANCHING"`` (seed 0) -> that tree."""
    parts = spec.split(":")
    try:
        nodes = int(float(parts[1]))
        branching = float(parts[2]) if len(parts) > 2 else 8.0
    except (IndexError, ValueError):
        raise InvalidArgumentError(f"--data {spec!r}: expected tree:NODES[:BRANCHING]") from None
    return generate(nodes, branching)
