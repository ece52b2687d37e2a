r"""Training on several processes through ``torch.distributed``: what a DDP run of an
xpu_stone model needs, and an embedding table whose rows are split over the ranks.

Launch with PyTorch's own launcher, ``torchrun --nproc-per-node N script.py`` (NCCL on
GPUs, gloo on CPU); :func:`setup` joins the process group torchrun describes and picks
this rank's device. Without torchrun every helper here sees one process (rank 0 of 1)
and makes no collective call, so the same script runs alone unchanged.

**Data parallel** (:func:`data_parallel`): ``torch.nn.parallel.DistributedDataParallel``
with a communication hook that *sums* the ranks' gradients instead of averaging them.
Each rank's loss is its part of the global loss, :math:`L = \sum_r L_r` (a mean over
the global batch :math:`B` is :math:`L_r = \frac1B\sum_{i\in\text{part}_r}\ell_i`), so the
all-reduced gradient is :math:`\nabla L` whatever the number of ranks: the run gives the
loss curve of one process with the same global batch, up to the order of the fp sums.
The gradients are all-reduced during ``backward()``, before the optimizer's (fused
Riemannian) step; :class:`~xpu_stone.manifolds.ManifoldParameter` objects survive the wrap
with their manifolds. :func:`check_replicas` verifies, bit for bit, that every rank holds
the parameters of rank 0.

**Sharded table** (:class:`ShardedEmbedding`): row :math:`i` of an :math:`N\times D`
table lives on rank :math:`i \bmod W` only (cyclic split: the low ids of a breadth-first
numbering, the hubs of a hierarchy, spread over all ranks). A lookup of a batch of ids
sends each owner the ids it holds (``all_to_all_single`` of the counts, then of the ids),
gets the rows back (a second all-to-all), and in ``backward()`` sends each owner the
summed gradients of its rows (a third), which arrive as a *sparse* gradient of the
local shard: the fused sparse Riemannian step (:mod:`xpu_stone.optim`) then updates the
rows where they live. Only the table and its optimizer state are split; the ids of a
batch can name any row, so negatives are sampled across every shard. Plain
``torch.distributed`` collectives were chosen over TorchRec's sharded embeddings: those
store Euclidean tables and apply their own fused optimizers, which cannot keep rows on
a manifold.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from .errors import InvalidArgumentError, ShapeMismatchError, UnsupportedOperationError, XpuStoneError
from .manifolds import ManifoldParameter

__all__ = [
    "ReplicaMismatchError",
    "ShardedEmbedding",
    "agree",
    "all_sum",
    "check_replicas",
    "data_parallel",
    "rank_part",
    "save_on_rank0",
    "setup",
    "teardown",
    "world",
]


class ReplicaMismatchError(XpuStoneError, RuntimeError):
    """Ranks of a data-parallel run hold different parameters; ``names`` lists the
    tensors that differ from rank 0's, ``ranks`` the ranks where they do."""

    def __init__(self, names: list[str], ranks: list[int]):
        super().__init__(f"parameters differ from rank 0's on ranks {ranks}: {', '.join(names)}")
        self.names, self.ranks = names, ranks


def world(group=None) -> tuple[int, int]:
    """``(rank, world size)`` in ``group`` (default: the default group); ``(0, 1)`` when
    no process group is initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def setup(device: str | torch.device | None = None, backend: str | None = None) -> torch.device:
    """Joins the process group that torchrun describes (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``, ``LOCAL_RANK`` in the environment) and returns this
    rank's device: ``device`` (default ``"cuda"`` when a GPU is present, else ``"cpu"``),
    with the index ``LOCAL_RANK`` for a CUDA device given without one. The backend is
    NCCL for CUDA and gloo for CPU unless ``backend`` says otherwise. Outside torchrun
    (no ``WORLD_SIZE``) nothing is joined."""
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    launched = "WORLD_SIZE" in os.environ and "RANK" in os.environ
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UnsupportedOperationError(f"device {dev} needs a CUDA GPU")
        if dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) if launched else 0)
        if dev.index >= torch.cuda.device_count():
            raise InvalidArgumentError(
                f"device {dev}: this host has {torch.cuda.device_count()} GPUs (torchrun's "
                "--nproc-per-node must not exceed it)"
            )
        torch.cuda.set_device(dev)
    if launched and not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if dev.type == "cuda" else "gloo"))
    return dev


def teardown() -> None:
    """Leaves the default process group, if one is initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_part(batch: torch.Tensor, group=None) -> torch.Tensor:
    """This rank's part of a global batch (split along dim 0 into near-equal
    consecutive parts, ``torch.tensor_split``); the whole batch on one process."""
    rank, size = world(group)
    return batch if size == 1 else batch.tensor_split(size)[rank]


def all_sum(t: torch.Tensor, group=None) -> torch.Tensor:
    """``t`` summed over the ranks, in place (nothing to do on one process)."""
    if world(group)[1] > 1:
        dist.all_reduce(t, group=group)
    return t


def agree(flag: bool, device=None, group=None) -> bool:
    """True on every rank when ``flag`` is true on any one (a time limit that ranks
    reach at different moments must stop them all at the same step)."""
    if world(group)[1] == 1:
        return bool(flag)
    t = torch.tensor([int(bool(flag))], device=device or _collective_device(group))
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return bool(t.item())


def _collective_device(group=None) -> torch.device:
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _sum_hook(group, bucket):
    """DDP communication hook: the bucket's gradients summed over the ranks (DDP's
    default hook divides them by the world size first)."""
    fut = dist.all_reduce(bucket.buffer(), group=group, async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


def data_parallel(module: torch.nn.Module, device=None, group=None, **ddp_options):
    """``module`` wrapped in ``DistributedDataParallel`` (``device_ids=[device]`` on CUDA),
    its gradients summed over the ranks (see the module docstring); on one process,
    ``module`` itself. ``ddp_options`` go to DDP."""
    if world(group)[1] == 1:
        return module
    dev = torch.device(device) if device is not None else next(module.parameters()).device
    ddp = torch.nn.parallel.DistributedDataParallel(
        module, device_ids=[dev] if dev.type == "cuda" else None, process_group=group, **ddp_options
    )
    ddp.register_comm_hook(group, _sum_hook)
    return ddp


def check_replicas(named_tensors, group=None) -> None:
    """Checks that every rank holds, bit for bit, the tensors rank 0 holds (a
    broadcast of each and a comparison of the bytes: NaNs and signed zeros count).
    ``named_tensors``: ``(name, tensor)`` pairs, e.g. ``module.named_parameters()``.
    Raises :class:`ReplicaMismatchError` on every rank when any rank differs."""
    rank, size = world(group)
    if size == 1:
        return
    named = [(n, t.detach()) for n, t in named_tensors]
    differs = []
    for _, t in named:
        ref = t.clone(memory_format=torch.contiguous_format)
        dist.broadcast(ref, dist.get_global_rank(group, 0) if group is not None else 0, group=group)
        differs.append(not torch.equal(_bytes(ref), _bytes(t)))
    dev = named[0][1].device if named else _collective_device(group)
    flags = torch.tensor(differs + [False], dtype=torch.int32, device=dev)
    every = [torch.empty_like(flags) for _ in range(size)]
    dist.all_gather(every, flags, group=group)
    table = torch.stack(every).cpu()
    if table.any():
        bad = table[:, :-1].any(0).nonzero().flatten().tolist()
        ranks = table.any(1).nonzero().flatten().tolist()
        raise ReplicaMismatchError([named[i][0] for i in bad], ranks)


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def save_on_rank0(obj, path, group=None) -> None:
    """``torch.save(obj, path)`` on rank 0 only, atomically: written to a temporary
    file beside ``path``, flushed to disk, then renamed over it, so a process killed
    at any moment leaves either the previous file or the new one, never a torn one."""
    if world(group)[0] != 0:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- sharded table
def _all_to_all(x: torch.Tensor, out_splits: list[int], in_splits: list[int], group) -> torch.Tensor:
    """Rows of ``x`` (consecutive parts of ``in_splits`` rows, one part per rank) sent
    to their ranks; returns the parts received (``out_splits`` rows from each rank)."""
    out = x.new_empty((sum(out_splits), *x.shape[1:]))
    dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
    return out


class _Plan:
    """Who holds which row of one lookup. ``uniq[inverse]`` are the ids looked up;
    ``uniq[order]`` groups them by owner (``mine`` of them asked of each rank); ``asked``
    are the local rows of this rank that the others asked for (``theirs`` from each)."""

    def __init__(self, ids: torch.Tensor, size: int, group):
        self.uniq, self.inverse = torch.unique(ids.reshape(-1), return_inverse=True)
        self.size, self.group = size, group
        if size == 1:
            self.asked = self.uniq
            return
        owner = self.uniq % size
        self.order = torch.argsort(owner, stable=True)
        mine = torch.bincount(owner, minlength=size)
        theirs = torch.empty_like(mine)
        dist.all_to_all_single(theirs, mine, group=group)
        counts = torch.stack([mine, theirs]).tolist()  # one copy to the host
        self.mine, self.theirs = counts
        self.asked = _all_to_all(self.uniq[self.order] // size, self.theirs, self.mine, group)

    def fetch(self, shard: torch.Tensor) -> torch.Tensor:
        """The rows of ``uniq`` (gathered from their owners)."""
        rows = shard.index_select(0, self.asked)
        if self.size == 1:
            return rows
        got = _all_to_all(rows, self.mine, self.theirs, self.group)
        out = torch.empty_like(got)
        out[self.order] = got
        return out

    def send_back(self, grad_uniq: torch.Tensor) -> torch.Tensor:
        """Gradients of ``uniq`` sent to their owners; returns those of ``asked``."""
        if self.size == 1:
            return grad_uniq
        return _all_to_all(grad_uniq[self.order], self.theirs, self.mine, self.group)


class _Lookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, shard, ids, size, group):
        plan = _Plan(ids, size, group)
        ctx.plan, ctx.shard_shape, ctx.ids_shape = plan, shard.shape, ids.shape
        return plan.fetch(shard).index_select(0, plan.inverse).view(*ids.shape, shard.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        plan = ctx.plan
        d = ctx.shard_shape[-1]
        summed = grad.new_zeros((plan.uniq.numel(), d)).index_add_(0, plan.inverse, grad.reshape(-1, d))
        values = plan.send_back(summed)
        sparse = torch.sparse_coo_tensor(
            plan.asked.unsqueeze(0), values, ctx.shard_shape, check_invariants=False
        )
        return sparse, None, None, None


class ShardedEmbedding(torch.nn.Module):
    r"""An ``(num_embeddings, embedding_dim)`` table on ``manifold`` whose rows are split
    over the ranks of ``group``: row :math:`i` is row :math:`\lfloor i/W\rfloor` of the
    local :attr:`weight` (a :class:`~xpu_stone.manifolds.ManifoldParameter`) of rank
    :math:`i \bmod W`. ``table(ids)`` returns the rows of ``ids`` (any shape; rows in a
    new last dim) from whichever ranks hold them, and ``backward()`` gives :attr:`weight`
    a sparse gradient of the rows this rank holds (summed over every rank's use of them):
    step it with :class:`xpu_stone.optim.RiemannianSGD` / ``RiemannianAdam``. Every rank
    must call each lookup and each ``backward()`` together (they are collectives).

    The local rows start uniform in :math:`[-s, s]^D` (``init_scale`` :math:`s`), drawn
    from ``generator`` (default: torch's global one), or at zero with ``init_scale=0``;
    :meth:`load_full` copies them from a whole table.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, manifold=None, *, device=None, dtype=None,
                 group=None, init_scale: float = 1e-3, generator=None):  # fmt: skip
        super().__init__()
        if num_embeddings < 1 or embedding_dim < 1:
            raise InvalidArgumentError(
                f"a table needs at least one row and one column, got ({num_embeddings}, {embedding_dim})"
            )
        self.rank, self.size = world(group)
        self.group = group
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        local = len(range(self.rank, num_embeddings, self.size))
        if init_scale:
            on = generator.device if generator is not None else "cpu"
            init = (torch.rand(local, embedding_dim, generator=generator, device=on) * 2 - 1) * init_scale
        else:  # no random draw: rows to be loaded (load_full)
            init = torch.zeros(local, embedding_dim)
        self.weight = ManifoldParameter(init.to(device, dtype or torch.get_default_dtype()), manifold)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dtype not in (torch.int32, torch.int64) or ids.device != self.weight.device:
            raise InvalidArgumentError(
                f"ids must be an int32/int64 tensor on {self.weight.device}, got {ids.dtype} on {ids.device}"
            )
        return _Lookup.apply(self.weight, ids.long(), self.size, self.group)

    def global_ids(self) -> torch.Tensor:
        """The ids of this rank's rows, in local order."""
        return torch.arange(self.rank, self.num_embeddings, self.size, device=self.weight.device)

    def local_part(self, full: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a tensor with one row per id (a whole table, or an
        optimizer state of one)."""
        return full[self.rank :: self.size]

    def load_full(self, table: torch.Tensor) -> None:
        """Copies this rank's rows from a whole ``(num_embeddings, embedding_dim)`` table."""
        if tuple(table.shape) != (self.num_embeddings, self.embedding_dim):
            raise ShapeMismatchError(
                f"table of shape {tuple(table.shape)}, expected ({self.num_embeddings}, {self.embedding_dim})"
            )
        with torch.no_grad():
            self.weight.copy_(self.local_part(table).to(self.weight.device, self.weight.dtype))

    def gather_full(self, local: torch.Tensor | None = None) -> torch.Tensor:
        """The whole table (or, for ``local`` with one row per local row, that tensor for
        every id), assembled on every rank (an all-gather)."""
        local = (self.weight if local is None else local).detach()
        if self.size == 1:
            return local.clone()
        rows = -(-self.num_embeddings // self.size)
        padded = local.new_zeros((rows, *local.shape[1:]))
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded, group=self.group)
        # row k of rank r is id k * W + r: interleave the parts, drop the padding at the end
        return torch.stack(parts, 1).reshape(rows * self.size, *local.shape[1:])[: self.num_embeddings]

    def extra_repr(self) -> str:
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, rank {self.rank} of {self.size} "
            f"({self.weight.shape[0]} rows here)"
        )
