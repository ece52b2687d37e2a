"""torch.distributed training on CPU (gloo): two processes against one.

One launch of two ranks (this file run as a script, with the environment torchrun
gives its workers) runs, with the same global batch as the one-process references
run here afterwards:

* the digits MLP under DDP (110 steps, replicas checked bit for bit after every step);
* the Poincaré embedding of a generated tree under DDP (126 steps, checked every step),
  and sharded over the two ranks (rows fetched and updated where they live);
* resumption across world sizes: a one-process checkpoint continued on two ranks
  (sharded), a two-rank checkpoint continued on one process;
* the sharded table against a dense one (rows, sparse gradients, a step), the
  distributed sampled evaluation against the exact one, and a replica that differs
  being reported on every rank.

Parameters must agree within fp32 rounding after 100+ steps (the sums of the ranks'
gradients are added in another order than one process adds them).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xpu_stone import distributed as xdist
from xpu_stone.errors import InvalidArgumentError, ShapeMismatchError
from xpu_stone.examples import digits_mlp
from xpu_stone.examples import poincare_embeddings as pe
from xpu_stone.examples import synthetic_tree as st
from xpu_stone.manifolds import ManifoldParameter, PoincareBall
from xpu_stone.optim import RiemannianSGD

TREE = "tree:300:3"  # 300 nodes, 1321 closure edges
EMB = ["--data", TREE, "--dim", "5", "--batch", "32", "--negatives", "10", "--lr", "0.1", "--burnin", "1",
       "--log-every", "1", "--quiet", "--device", "cpu"]  # fmt: skip
EMB_EPOCHS = 3  # 42 steps an epoch
DIGITS_EPOCHS = 5  # 22 steps an epoch
# fp32 parameters after 100+ steps of two processes vs one: the embeddings (SGD) move by
# a few ulps of their size; Adam (digits) divides by sqrt of its second moment, which
# magnifies the first steps' rounding differences about tenfold
EMB_ATOL, DIGITS_ATOL = 2e-6, 5e-5


def _emb_args(out, *extra, epochs=EMB_EPOCHS):
    return pe.parser().parse_args([*EMB, "--epochs", str(epochs), "--out", str(out), *extra])


def emb_file(out, stem: str = "poincare_tree_300_3_5d.pt") -> Path:
    return Path(out) / stem


# ------------------------------------------------------------------ the two-rank worker
def _worker(out: Path) -> None:
    """Runs on each of the two ranks; writes what it saw to ``out/rank<r>.json``."""
    torch.set_num_threads(1)
    device = xdist.setup("cpu")
    rank, size = xdist.world()
    seen = {"world": size}
    digits_mlp.train(device, DIGITS_EPOCHS, progress=False, checkpoint=out / "digits2.pt", check_every=1)
    pe.train(_emb_args(out / "ddp2", "--check-replicas", "1"))
    pe.train(_emb_args(out / "sharded2", "--sharded"))
    pe.train(_emb_args(out / "ddp2_part", "--checkpoint-every", "1", epochs=2))
    pe.train(_emb_args(out / "from1", "--sharded", "--resume", str(emb_file(out / "part1"))))
    seen["table"] = _table_checks(rank, size)
    seen["evaluation"] = _evaluation_checks()
    seen["mismatch"] = _mismatch_check(rank)
    try:
        pe.Trainer(pe.load_hierarchy(TREE, device), batch=33)
    except InvalidArgumentError as e:
        seen["odd_batch"] = str(e)
    (out / f"rank{rank}.json").write_text(json.dumps(seen))
    xdist.teardown()


def _table_checks(rank: int, size: int) -> dict:
    """The sharded table against a dense one: rows looked up on each rank, the sparse
    gradients each owner receives, the whole table gathered, one Riemannian step."""
    n, d = 11, 3
    full = torch.rand(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 0.5 - 0.25
    table = xdist.ShardedEmbedding(n, d, PoincareBall(1.0), dtype=torch.float64, init_scale=0)
    table.load_full(full)
    draws = [_draw(r, n) for r in range(size)]  # what every rank looks up, known to all
    ids, coef = draws[rank]
    rows = table(ids)
    (rows * coef).sum().backward()
    dense = torch.zeros(n, d, dtype=torch.float64)
    for i, w in draws:
        dense.index_add_(0, i.flatten(), w.reshape(-1, d))
    got = table.weight.grad.to_dense()
    opt_full = full.clone().requires_grad_()
    opt_full.grad = dense.clone()
    RiemannianSGD([table.weight], lr=0.3).step()
    ref = RiemannianSGD([_on_ball(opt_full)], lr=0.3)
    ref.step()
    return {
        "rows": torch.equal(rows, full[ids]),
        "local_rows": table.weight.shape[0] == len(range(rank, n, size)),
        "grad_err": float((got - dense[rank::size]).abs().max()),
        "step_err": float((table.gather_full() - ref.param_groups[0]["params"][0].detach()).abs().max()),
    }


def _draw(rank: int, n: int):
    gen = torch.Generator().manual_seed(100 + rank)
    return torch.randint(0, n, (4, 5), generator=gen), torch.randn(
        4, 5, 3, dtype=torch.float64, generator=gen
    )


def _on_ball(t):
    p = ManifoldParameter(t.detach().clone(), PoincareBall(1.0))
    p.grad = t.grad
    return p


def _evaluation_checks() -> dict:
    """The sampled evaluation summed over two ranks equals the exact reconstruction of
    the gathered table, for a sharded table and for a replicated one."""
    out = {}
    h = pe.load_hierarchy(TREE, torch.device("cpu"))
    for sharded in (True, False):
        torch.manual_seed(0)
        t = pe.Trainer(h, dim=4, batch=64, negatives=5, lr=0.1, sharded=sharded, dtype=torch.float64)
        t.epoch(burnin=True)
        exact = pe.reconstruction(t.full_weight(), h)
        out["sharded" if sharded else "replicated"] = [
            exact,
            pe.sampled_reconstruction(t, 10**9, max_block=500),
        ]
    return out


def _mismatch_check(rank: int) -> dict:
    p = torch.ones(5)
    q = torch.ones(3)
    if rank == 1:
        q[2] = 1 + 2**-20
    try:
        xdist.check_replicas([("p", p), ("q", q)])
    except xdist.ReplicaMismatchError as e:
        return {"names": e.names, "ranks": e.ranks}
    return {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(command: list[str], size: int = 2) -> None:
    """``size`` processes of ``command`` with the environment torchrun gives its workers."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "WORLD_SIZE": str(size), "OMP_NUM_THREADS": "1"}  # fmt: skip
    procs = [
        subprocess.Popen(
            command,
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(size)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=240)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), "\n----\n".join(logs)[-6000:]


# ------------------------------------------------------------------ one launch, many checks
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The two-rank launch and the one-process references (run one after the other:
    never more than two processes at once)."""
    out = tmp_path_factory.mktemp("dist")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pe.train(_emb_args(out / "part1", "--checkpoint-every", "1", epochs=2))
        launch([sys.executable, __file__, str(out)])
        digits_mlp.train("cpu", DIGITS_EPOCHS, progress=False, checkpoint=out / "digits1.pt")
        pe.train(_emb_args(out / "one"))
        pe.train(_emb_args(out / "to1", "--resume", str(emb_file(out / "ddp2_part"))))
    finally:
        torch.set_num_threads(threads)
    return out


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def test_digits_ddp_matches_one_process(runs):
    one, two = load(runs / "digits1.pt"), load(runs / "digits2.pt")
    assert one["steps"] == two["steps"] == DIGITS_EPOCHS * 22
    diff = max(float((one["model"][k] - two["model"][k]).abs().max()) for k in one["model"])
    assert diff < DIGITS_ATOL
    assert two["loss_history"] == pytest.approx(one["loss_history"], rel=1e-5)


@pytest.mark.parametrize("run", ["ddp2", "sharded2", "to1", "from1"])
def test_embeddings_on_two_ranks_match_one_process(runs, run):
    """DDP, sharded, a two-rank checkpoint resumed on one process, and a one-process
    checkpoint resumed sharded on two ranks: all end where one process ends."""
    one, other = load(emb_file(runs / "one")), load(emb_file(runs / run))
    assert other["result"]["epochs"] == EMB_EPOCHS
    diff = float((one["embeddings"] - other["embeddings"]).abs().max())
    assert diff < EMB_ATOL
    assert [ep for ep, _ in other["result"]["loss_history"]] == list(range(EMB_EPOCHS))
    losses = [v for _, v in other["result"]["loss_history"]]
    assert losses == pytest.approx([v for _, v in one["result"]["loss_history"]], rel=1e-5)
    sizes = [leg["world_size"] for leg in other["result"]["legs"]]
    assert sizes == {"ddp2": [2], "sharded2": [2], "to1": [2, 1], "from1": [1, 2]}[run]
    assert other["optimizer"]["state"][0]["step"] == EMB_EPOCHS * 42


def test_every_rank_saw_the_same(runs):
    seen = [json.loads((runs / f"rank{r}.json").read_text()) for r in range(2)]
    for s in seen:
        assert s["world"] == 2
        t = s["table"]
        assert t["rows"] and t["local_rows"] and t["grad_err"] < 1e-15 and t["step_err"] < 1e-15
        for exact, sampled in s["evaluation"].values():
            assert sampled == pytest.approx(exact, rel=1e-12)
        assert s["mismatch"] == {"names": ["q"], "ranks": [1]}
        assert "split evenly over 2 ranks" in s["odd_batch"]
    assert seen[0]["evaluation"] == seen[1]["evaluation"]


# ------------------------------------------------------------------ one process
@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("optimizer", ["rsgd", "radam"])
def test_sharded_table_on_one_process_is_the_replicated_one(one_thread, optimizer):
    """With one rank the sharded path (lookup, sparse gradient, sparse step) gives
    the replicated path's table bit for bit with SGD. Adam differs, as it should: a
    sparse gradient moves only its rows (torch.optim.SparseAdam's rule), a dense one
    moves every row with a moment."""
    h = pe.load_hierarchy(TREE, torch.device("cpu"))
    weights = []
    for sharded in (False, True):
        torch.manual_seed(0)
        t = pe.Trainer(h, dim=5, batch=128, negatives=10, lr=0.05, optimizer=optimizer, sharded=sharded)
        t.epoch(burnin=True)
        t.epoch(burnin=False, max_steps=3)
        weights.append(t.full_weight())
    assert torch.equal(*weights) == (optimizer == "rsgd")


def test_helpers_on_one_process_make_no_collective():
    assert xdist.world() == (0, 1) and xdist.setup("cpu") == torch.device("cpu")
    x = torch.arange(6)
    assert xdist.rank_part(x) is x and xdist.all_sum(x) is x and xdist.agree(True)
    module = torch.nn.Linear(2, 2)
    assert xdist.data_parallel(module) is module
    xdist.check_replicas([("w", module.weight)])  # nothing to compare with


def test_sharded_table_checks_its_input():
    table = xdist.ShardedEmbedding(4, 2, init_scale=0.1, generator=torch.Generator().manual_seed(0))
    assert table.weight.shape == (4, 2) and table.weight.abs().max() <= 0.1
    assert torch.equal(table(torch.tensor([[3, 0]])), table.weight.detach()[[3, 0]].unsqueeze(0))
    with pytest.raises(InvalidArgumentError, match="ids"):
        table(torch.tensor([0.0]))
    with pytest.raises(ShapeMismatchError):
        table.load_full(torch.zeros(3, 2))
    with pytest.raises(InvalidArgumentError):
        xdist.ShardedEmbedding(0, 2)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A write that fails half-way leaves the previous file whole and no temporary file."""
    path = tmp_path / "ck.pt"
    xdist.save_on_rank0({"v": 1}, path)

    def broken(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError):
        xdist.save_on_rank0({"v": 2}, path)
    monkeypatch.undo()
    assert torch.load(path) == {"v": 1} and [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def _brute_tree(tree):
    """Parent, subtree size and depth from the parent array alone, by walking it."""
    parent = tree.parent.tolist()
    n = len(parent)
    size, depth = [1] * n, [0] * n
    for u in range(n):
        a = parent[u]
        while a >= 0:
            size[a] += 1
            depth[u] += 1
            a = parent[a]
    return size, depth


@pytest.mark.parametrize("nodes,branching", [(2, 2.0), (57, 2.5), (400, 6.0)])
def test_generated_tree_is_in_preorder(nodes, branching):
    tree = st.generate(nodes, branching, seed=3)
    size, depth = _brute_tree(tree)
    assert tree.size.tolist() == size and tree.depth.tolist() == depth
    parent = tree.parent.tolist()
    assert parent[0] == -1 and all(0 <= parent[u] < u for u in range(1, nodes))
    # preorder: a node's subtree is the id range [v, v + size), so the next id after
    # a node is its first child, or (a leaf) the next child of one of its ancestors
    for u in range(1, nodes):
        assert parent[u] == u - 1 or size[u - 1] == 1
    levels = st.level_sizes(nodes, branching)
    assert sum(levels) == nodes and torch.bincount(tree.depth).tolist() == levels
    u, v = tree.closure()
    pairs = {(a, b) for a, b in zip(u.tolist(), v.tolist(), strict=True)}
    brute = set()
    for a in range(nodes):
        b = parent[a]
        while b >= 0:
            brute.add((a, b))
            b = parent[b]
    assert pairs == brute and len(pairs) == u.numel() == sum(depth)
    everything = torch.cartesian_prod(torch.arange(nodes), torch.arange(nodes))
    marked = tree.is_ancestor(everything[:, 1], everything[:, 0])
    assert {tuple(p) for p in everything[marked].tolist()} == brute
    anc = tree.ancestors(torch.arange(nodes))
    assert all(
        {b for b in row if b >= 0} == {b for a, b in brute if a == i} for i, row in enumerate(anc.tolist())
    )


def test_tree_data_spec_errors():
    with pytest.raises(InvalidArgumentError, match="tree:NODES"):
        pe.load_hierarchy("tree:many", torch.device("cpu"))
    with pytest.raises(InvalidArgumentError):
        st.generate(1)
    assert st.generate(10_000, seed=1).parent.tolist() == st.generate(10_000, seed=1).parent.tolist()


def test_sampled_reconstruction_samples_and_matches_exact(one_thread):
    h = pe.load_hierarchy("mammals", torch.device("cpu"))
    torch.manual_seed(0)
    t = pe.Trainer(h, dim=5, batch=1024, negatives=5, dtype=torch.float64)
    t.epoch(burnin=True)
    exact = pe.reconstruction(t.weight, h)
    assert pe.sampled_reconstruction(t, 10**9, max_block=50_000) == pytest.approx(exact, rel=1e-12)
    some = pe.sampled_reconstruction(t, 200, seed=1)
    assert some != pytest.approx(exact, rel=1e-9) and some[0] == pytest.approx(exact[0], rel=0.25)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
