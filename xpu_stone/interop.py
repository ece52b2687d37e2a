"""Zero-copy exchange between torch tensors and CuPy arrays (DLPack protocol)."""

from __future__ import annotations

from ._deps import is_cupy_array, require_cupy, require_torch
from .errors import InvalidArgumentError


def to_cupy(tensor):
    """A CuPy array sharing ``tensor``'s CUDA memory (no copy)."""
    cupy = require_cupy("to_cupy")
    torch = require_torch("to_cupy")
    if not isinstance(tensor, torch.Tensor):
        raise InvalidArgumentError(f"to_cupy takes a CUDA torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_cuda:
        raise InvalidArgumentError(
            f"to_cupy takes a CUDA tensor (CuPy arrays live on the GPU), got one on {tensor.device}"
        )
    return cupy.from_dlpack(tensor.detach())


def to_torch(array):
    """A torch tensor sharing ``array``'s memory (no copy)."""
    torch = require_torch("to_torch")
    if not (is_cupy_array(array) or hasattr(array, "__dlpack__")):
        raise InvalidArgumentError(
            f"to_torch takes a cupy.ndarray (or a DLPack array), got {type(array).__name__}"
        )
    return torch.from_dlpack(array)
