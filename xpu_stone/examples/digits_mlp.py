"""A hyperbolic MLP classifier on scikit-learn's digits (8x8 images, 10 classes; shipped
with scikit-learn, no download), built from :mod:`xpu_stone.nn`:

    ToPoincare(clip) -> HypLinear -> HypAct(ReLU) -> PoincareLinear -> HypAct(ReLU) -> HypMLR

    python -m xpu_stone.examples.digits_mlp [--device cpu|cuda] [--epochs 40] [--seed 0]
    torchrun --nproc-per-node 2 -m xpu_stone.examples.digits_mlp --device cuda   # DDP, 2 GPUs
    ... --checkpoint digits.pt             # saved after every epoch; continue with --resume digits.pt

Trained with :class:`xpu_stone.optim.RiemannianAdam` (the bias of ``HypLinear`` is a point
of the ball and gets the Riemannian step, the other parameters Adam's) and a cosine
learning-rate schedule. Prints a progress bar per epoch (tqdm) and ends with one line
``test accuracy: 0.9xx (n/N) on <device> in <s> s``. Expected: >= 95 % on CPU and GPU.

Under torchrun (:mod:`xpu_stone.distributed`; gloo on CPU, NCCL on GPUs) every rank
draws the same order of the training set and takes its part of each batch of
``--batch`` images; the model is wrapped in DDP with summed gradients and each rank's
loss is its part of the batch's mean, so the run follows the loss curve of one process
(up to the order of fp sums), and the replicas are checked bit for bit at each epoch's
end (``--check-replicas N``: every N steps). Rank 0 writes the checkpoints (model,
optimizer, schedule and data order; atomically), which resume on any number of ranks.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn

from xpu_stone import distributed as xdist
from xpu_stone import nn as hnn
from xpu_stone.errors import InvalidArgumentError, UnsupportedOperationError
from xpu_stone.optim import RiemannianAdam


def load_digits(seed: int, device, test_size: float = 0.25):
    """Standardised features and labels, split stratified into train and test."""
    try:
        from sklearn.datasets import load_digits as _load
        from sklearn.model_selection import train_test_split
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise UnsupportedOperationError(
            "the digits example needs scikit-learn (pip install scikit-learn)"
        ) from e
    data = _load()
    xtr, xte, ytr, yte = train_test_split(
        data.data, data.target, test_size=test_size, random_state=seed, stratify=data.target
    )
    mean, std = xtr.mean(0), xtr.std(0) + 1e-6
    as_t = lambda a, dt: torch.as_tensor(a, dtype=dt, device=device)  # noqa: E731
    return (
        as_t((xtr - mean) / std, torch.float32),
        as_t(ytr, torch.long),
        as_t((xte - mean) / std, torch.float32),
        as_t(yte, torch.long),
    )


def build_model(in_features: int = 64, hidden: int = 64, classes: int = 10, c: float = 1.0) -> nn.Module:
    return nn.Sequential(
        hnn.ToPoincare(c, clip_r=2.0),
        hnn.HypLinear(in_features, hidden, c),
        hnn.HypAct(nn.ReLU(), c),
        hnn.PoincareLinear(hidden, hidden, c),
        hnn.HypAct(nn.ReLU(), c),
        hnn.HypMLR(hidden, classes, c),
    )


def _progress(iterable, desc: str, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # a plain loop without the bar
        return iterable
    return tqdm(iterable, desc=desc, leave=False, disable=not enabled, file=sys.stderr)


def train(
    device="cpu",
    epochs: int = 40,
    batch: int = 64,
    lr: float = 5e-3,
    seed: int = 0,
    progress: bool = True,
    *,
    checkpoint=None,
    resume=None,
    check_every: int = 0,
):
    """Trains the model; returns (test accuracy, correct, test size, model).

    ``checkpoint``: a path written after every epoch (by rank 0, atomically) with the
    model, optimizer, schedule, data-order generator and loss history; ``resume``: such
    a file to continue from (made on any number of ranks). ``check_every``: on several
    ranks, check the replicas every that many steps (0: at each epoch's end)."""
    rank, size = xdist.world()
    torch.manual_seed(seed)
    xtr, ytr, xte, yte = load_digits(seed, device)
    model = build_model(xtr.shape[1]).to(device)
    net = xdist.data_parallel(model, device)
    opt = RiemannianAdam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    start_epoch, history, steps = 0, [], 0
    if resume is not None:
        ck = torch.load(resume, map_location="cpu", weights_only=True)
        if ck["epoch"] >= epochs:
            raise InvalidArgumentError(f"resume {resume}: already {ck['epoch']} epochs; epochs is {epochs}")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        gen.set_state(ck["generator"])
        start_epoch, history, steps = ck["epoch"], ck["loss_history"], ck["steps"]
    params = list(model.named_parameters())
    bar = _progress(range(start_epoch, epochs), "epochs", progress and rank == 0)
    for epoch in bar:
        model.train()
        order = torch.randperm(len(xtr), generator=gen).to(device)
        total = torch.zeros((), device=device)
        for i in range(0, len(xtr), batch):
            idx = order[i : i + batch]
            part = xdist.rank_part(idx)
            opt.zero_grad(set_to_none=True)
            # this rank's part of the batch's mean: DDP sums the parts' gradients
            loss = nn.functional.cross_entropy(net(xtr[part]), ytr[part], reduction="sum") / len(idx)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
            steps += 1
            if check_every and steps % check_every == 0:
                xdist.check_replicas(params)
        sched.step()
        mean = float(xdist.all_sum(total)) / len(xtr)
        history.append(mean)
        if not check_every:
            xdist.check_replicas(params)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{mean:.4f}")
        if checkpoint is not None:
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "generator": gen.get_state(), "epoch": epoch + 1, "loss_history": history, "steps": steps}  # fmt: skip
            save_checkpoint(state, checkpoint)
    model.eval()
    with torch.no_grad():
        correct = int((model(xte).argmax(-1) == yte).sum())
    return correct / len(yte), correct, len(yte), model


def save_checkpoint(state, path) -> None:
    """Rank 0 writes ``state`` to ``path`` atomically (:func:`xpu_stone.distributed.save_on_rank0`)."""
    xdist.save_on_rank0(state, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Hyperbolic MLP on scikit-learn's digits")
    p.add_argument("--device", default="cpu", help="cpu, cuda (under torchrun: cuda:LOCAL_RANK) or cuda:N")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch", type=int, default=64, help="images a step (over all ranks together)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default=None, help="write the training state here after every epoch")
    p.add_argument("--resume", default=None, help="a --checkpoint file to continue from")
    p.add_argument("--check-replicas", type=int, default=0, metavar="N",
                   help="on several ranks, check the replicas every N steps (default: at each epoch's end)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        device = xdist.setup(args.device)
        if device.type == "cpu":
            torch.set_num_threads(1)  # a 64-wide model: more threads only add synchronisation
        start = time.perf_counter()
        acc, correct, total, _ = train(device, args.epochs, args.batch, seed=args.seed, checkpoint=args.checkpoint,
                                       resume=args.resume, check_every=args.check_replicas,
                                       progress=not args.no_progress)  # fmt: skip
        if xdist.world()[0] == 0:
            print(
                f"test accuracy: {acc:.4f} ({correct}/{total}) on {device} in {time.perf_counter() - start:.1f} s"
            )
    finally:
        xdist.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
