"""Zero-copy exchange between torch tensors and CuPy arrays (DLPack protocol)."""

from __future__ import annotations

from ._deps import require_cupy, require_torch


def to_cupy(tensor):
    """A CuPy array sharing ``tensor``'s CUDA memory (no copy)."""
    cupy = require_cupy("to_cupy")
    return cupy.from_dlpack(tensor.detach())


def to_torch(array):
    """A torch tensor sharing ``array``'s memory (no copy)."""
    torch = require_torch("to_torch")
    return torch.from_dlpack(array)
