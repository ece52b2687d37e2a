"""The distributed training paths on CUDA (skipped without a GPU).

One GPU: the sharded table's path (lookup, sparse gradient, fused sparse Riemannian
step) against the replicated one, CUDA-graph epochs against eager ones, the sampled
evaluation against the exact one, and a checkpoint resumed mid-run (the CUDA random
state restored, graphs recaptured). Two GPUs (skipped with fewer): the embedding
example under DDP and sharded with NCCL, and the digits example under DDP, each
against one GPU with the same global batch.

On CUDA the gradients of repeated rows are summed with atomic adds (index_add), in
no fixed order, so runs agree to fp32 rounding, not bit for bit. The learning rate
(LR) is small enough that training does not blow that rounding up: at lr 0.1 this
tree's training is chaotic (on the CPU, 1e-7 added to the initial table moves the
table after 3 epochs by 0.8, as much as other negatives would), at 0.005 the same
1e-7 gives 8e-6 while other negatives in the third epoch give 0.03.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_distributed import emb_file, launch, load

from xpu_stone.examples import poincare_embeddings as pe

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
pytest.importorskip("cupy")

TREE = "tree:3000:4"
CUDA = torch.device("cuda", 0)
LR = 0.005  # not chaotic: see the module docstring


def _trainer(**kw):
    torch.manual_seed(0)
    return pe.Trainer(pe.load_hierarchy(TREE, CUDA), dim=8, batch=256, negatives=10, lr=LR, **kw)


def _train(t, epochs=3):
    for ep in range(epochs):
        t.epoch(burnin=ep < 1)
    return t.full_weight()


def test_sharded_graphs_and_eager_tables_agree_on_one_gpu():
    eager = _train(_trainer(graphs=False))
    graphs = _train(_trainer())
    sharded = _train(_trainer(sharded=True))
    torch.testing.assert_close(graphs, eager, rtol=0, atol=2e-5)
    torch.testing.assert_close(sharded, eager, rtol=0, atol=2e-5)
    assert (eager - _trainer(graphs=False).full_weight()).abs().max() > 1e-2  # it trained


def test_sampled_evaluation_on_one_gpu():
    for sharded in (False, True):
        t = _trainer(sharded=sharded, dtype=torch.float64)
        _train(t, 1)
        exact = pe.reconstruction(t.full_weight(), t.h)
        assert pe.sampled_reconstruction(t, 10**9, max_block=1 << 20) == pytest.approx(exact, rel=1e-9)


def test_resume_restores_the_cuda_random_state():
    """Two epochs, a checkpoint, a fresh trainer, one more epoch: the third epoch
    draws the negatives the uninterrupted run draws (graphs recaptured on resume)."""
    whole = _trainer()
    _train(whole, 3)
    first = _trainer()
    _train(first, 2)
    state = first.state_dict()
    second = _trainer()
    second.load_state_dict(state)
    second.epoch(burnin=False)
    torch.testing.assert_close(second.full_weight(), whole.full_weight(), rtol=0, atol=2e-5)
    assert second.graphs and whole.graphs


# --------------------------------------------------------------------------- two GPUs, NCCL
EMB = ["--data", TREE, "--dim", "8", "--batch", "256", "--negatives", "10", "--lr", str(LR), "--burnin", "1",
       "--epochs", "3", "--log-every", "1", "--quiet", "--device", "cuda"]  # fmt: skip


def _emb_file(out) -> Path:
    return emb_file(out, "poincare_tree_3000_4_8d.pt")


@two_gpus
@pytest.mark.parametrize("mode", [[], ["--sharded"]], ids=["ddp", "sharded"])
def test_embeddings_on_two_gpus_match_one(tmp_path, mode):
    pe.main([*EMB, "--out", str(tmp_path / "one"), "--graphs" if not mode else "--no-graphs", *mode])
    launch([sys.executable, "-m", "xpu_stone.examples.poincare_embeddings", *EMB, *mode,
            "--out", str(tmp_path / "two"), "--check-replicas", "1"])  # fmt: skip
    one, two = load(_emb_file(tmp_path / "one")), load(_emb_file(tmp_path / "two"))
    assert two["result"]["world_size"] == 2 and two["result"]["device"] == one["result"]["device"]
    torch.testing.assert_close(two["embeddings"], one["embeddings"], rtol=0, atol=2e-5)
    losses = [v for _, v in one["result"]["loss_history"]]
    assert [v for _, v in two["result"]["loss_history"]] == pytest.approx(losses, rel=1e-4)


@two_gpus
def test_digits_on_two_gpus_match_one(tmp_path):
    pytest.importorskip("sklearn")
    argv = ["--device", "cuda", "--epochs", "5", "--no-progress"]
    digits = [sys.executable, "-m", "xpu_stone.examples.digits_mlp", *argv]
    launch([*digits, "--checkpoint", str(tmp_path / "two.pt"), "--check-replicas", "1"])
    subprocess.run([*digits, "--checkpoint", str(tmp_path / "one.pt")], check=True)
    one, two = load(tmp_path / "one.pt"), load(tmp_path / "two.pt")
    diff = max(float((one["model"][k] - two["model"][k]).abs().max()) for k in one["model"])
    assert diff < 5e-5
    assert two["loss_history"] == pytest.approx(one["loss_history"], rel=1e-4)
