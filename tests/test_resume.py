"""A training run killed with SIGKILL and continued with ``--resume`` ends bit for bit
where the uninterrupted run ends (CPU, one thread: every step is deterministic).

The run is killed right after its second checkpoint, or half-way through writing its
third (the file then still holds the second: checkpoints are replaced atomically).
The killed process is the example's own ``main`` with ``save_checkpoint`` (or
``torch.save``) wrapped to send SIGKILL to itself at that moment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

from xpu_stone.examples import digits_mlp
from xpu_stone.examples import poincare_embeddings as pe

KILLER = """
import os, signal, sys
import torch
from xpu_stone.examples import {module} as m

when, k = sys.argv[1], int(sys.argv[2])
calls = [0]
if when == "after":  # right after the k-th checkpoint is written
    real = m.save_checkpoint

    def save(*args, **kwargs):
        real(*args, **kwargs)
        calls[0] += 1
        if calls[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)

    m.save_checkpoint = save
else:  # half-way through writing the k-th
    real = torch.save

    def save(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] == k:
            f.write(b"the first bytes of a checkpoint")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        real(obj, f, *args, **kwargs)

    torch.save = save
sys.exit(m.main(sys.argv[3:]))
"""


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _killed(module: str, when: str, k: int, argv: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", KILLER.format(module=module), when, str(k), *argv],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _same(a, b) -> bool:
    """Equal nested state (tensors bit for bit)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if torch.is_tensor(a):
        return torch.equal(a, b)
    return a == b


EMB = ["--data", "tree:200:3", "--dim", "4", "--batch", "64", "--negatives", "8", "--lr", "0.05",
       "--optimizer", "radam", "--burnin", "2", "--epochs", "5", "--log-every", "1", "--quiet",
       "--device", "cpu", "--checkpoint-every", "1"]  # fmt: skip
STEM = "poincare_tree_200_3_4d.pt"


@pytest.mark.parametrize("when", ["after", "during"])
def test_embeddings_resume_after_sigkill_is_bit_exact(tmp_path, one_thread, when):
    pe.main([*EMB, "--out", str(tmp_path / "whole")])
    run = tmp_path / "run"
    # after the 2nd write, or during the 3rd: either way the file holds epoch 2
    _killed("poincare_embeddings", when, 2 if when == "after" else 3, [*EMB, "--out", str(run)])
    assert _load(run / STEM)["result"]["epochs"] == 2
    # a write cut short leaves its temporary file beside the checkpoint, never in its place
    left = sorted(p.name for p in run.iterdir())
    assert left == [STEM] if when == "after" else (len(left) == 2 and left[0].endswith(".tmp"))
    pe.main([*EMB, "--out", str(run), "--resume", str(run / STEM)])
    whole, resumed = _load(tmp_path / "whole" / STEM), _load(run / STEM)
    assert torch.equal(whole["embeddings"], resumed["embeddings"])
    assert _same(whole["optimizer"], resumed["optimizer"])  # Adam's moments and step counts
    assert _same(whole["result"]["loss_history"], resumed["result"]["loss_history"])
    assert _same(whole["result"]["evaluations"], resumed["result"]["evaluations"])
    assert [leg["epochs"] for leg in resumed["result"]["legs"]] == [[0, 2], [2, 5]]


DIGITS = ["--epochs", "4", "--no-progress"]


def test_digits_resume_after_sigkill_is_bit_exact(tmp_path, one_thread):
    pytest.importorskip("sklearn")
    digits_mlp.main([*DIGITS, "--checkpoint", str(tmp_path / "whole.pt")])
    ck = tmp_path / "run.pt"
    _killed("digits_mlp", "after", 2, [*DIGITS, "--checkpoint", str(ck)])
    assert _load(ck)["epoch"] == 2
    digits_mlp.main([*DIGITS, "--checkpoint", str(ck), "--resume", str(ck)])
    whole, resumed = _load(tmp_path / "whole.pt"), _load(ck)
    assert resumed["epoch"] == 4 and resumed["steps"] == 4 * 22
    assert _same(whole, resumed)  # model, optimizer, schedule, data order, loss history
