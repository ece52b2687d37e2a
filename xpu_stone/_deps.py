"""Optional dependencies: torch and CuPy are each imported only if installed."""

from __future__ import annotations

from .errors import UnsupportedOperationError

try:
    import torch
except ImportError:  # the CuPy API works without torch
    torch = None

try:
    import cupy
except ImportError:  # the torch API on CPU works without CuPy
    cupy = None


def require_torch(feature: str):
    """Returns the torch module, or raises a clear error naming ``feature``."""
    if torch is None:
        raise UnsupportedOperationError(
            f"{feature} needs PyTorch; install it with `pip install xpu-stone[torch]`"
        )
    return torch


def require_cupy(feature: str):
    """Returns the cupy module, or raises a clear error naming ``feature``."""
    if cupy is None:
        raise UnsupportedOperationError(
            f"{feature} needs CuPy; install it with `pip install xpu-stone[cu12]` or `[cu13]`"
        )
    return cupy


def is_cupy_array(x) -> bool:
    return cupy is not None and isinstance(x, cupy.ndarray)
