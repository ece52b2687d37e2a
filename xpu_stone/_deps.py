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
        raise UnsupportedOperationError(f"{feature} needs PyTorch; install it with `pip install torch`")
    return torch


def require_cupy(feature: str):
    """Returns the cupy module, or raises a clear error naming ``feature``."""
    if cupy is None:
        raise UnsupportedOperationError(
            f"{feature} needs CuPy and NVRTC; install them with `pip install cupy-cuda13x nvidia-cuda-nvrtc` (CUDA 13 drivers) or `pip install cupy-cuda12x nvidia-cuda-nvrtc-cu12`"
        )
    return cupy


def is_cupy_array(x) -> bool:
    return cupy is not None and isinstance(x, cupy.ndarray)
