"""xpu_stone: fused CUDA kernels for hyperbolic geometry, for torch and CuPy.

Importing works with no GPU and with no torch: the CuPy API needs only CuPy,
the CPU path only torch. Kernels compile on first use and are cached on disk;
:func:`xpu_stone.kernels.build` compiles them ahead of time.

Layers, top to bottom (a module imports only its own layer or lower ones;
``tests/test_layering.py`` checks it):

* public modules: ``poincare``, ``lorentz``, ``klein``, ``convert``, ``pairwise``,
  ``linear`` (functions), ``nn``, ``manifolds``, ``optim/``, ``compat``, ``interop``, ``distributed``, ``rbe/``,
  ``examples/``: checks and thin wrappers, formulas in the docstrings
* ``ops/``: one module per ``cuda_src/*.cu``: op descriptions, kernel names,
  torch maths, launchers, custom ops
* ``engine/``: what every op shares: the row-op description, the scalar rule,
  operand checks, rows, launcher chores, the CPU transcription, the custom-op scaffold
* ``runtime/``: devices, memory, streams, graphs, the launch profiler, policies, sessions
* ``kernels/``: NVRTC compile and disk cache, registry, dispatcher, tuned tables,
  launch, ahead-of-time build, the tuner's bookkeeping
* base: ``errors``, ``constants``, ``config``, ``_deps``, ``_version``, ``reference/``
  (float64 textbook formulas, the test oracles), ``data/`` (shipped data sets)

``rowwise``, ``torch_ops``, ``policies``, ``profiler`` and ``kernels.tuning`` are
the old import paths, kept as re-exports for one release.
"""

from __future__ import annotations

from . import (  # noqa: F401  (old import paths, kept for one release)
    config,
    constants,
    convert,
    errors,
    klein,
    linear,
    lorentz,
    pairwise,
    poincare,
    policies,
    profiler,
    rowwise,
    runtime,
)
from ._deps import torch as _torch
from ._version import __version__
from .convert import (
    klein_to_lorentz,
    klein_to_poincare,
    lorentz_to_klein,
    lorentz_to_poincare,
    poincare_to_klein,
    poincare_to_lorentz,
)
from .errors import (
    CompilationError,
    CudaError,
    DomainError,
    InvalidArgumentError,
    InvalidCurvatureError,
    KernelCacheWarning,
    NonFiniteError,
    OutOfMemoryError,
    ShapeMismatchError,
    UnsupportedOperationError,
    XpuRuntimeError,
    XpuStoneError,
)
from .interop import to_cupy, to_torch
from .runtime import ExecutionPolicy, InferenceSession, KernelPolicy, profile

if _torch is not None:
    from . import compat, manifolds, nn, optim  # noqa: F401  (need torch)

__all__ = [
    "CompilationError",
    "ExecutionPolicy",
    "InferenceSession",
    "CudaError",
    "DomainError",
    "InvalidArgumentError",
    "InvalidCurvatureError",
    "KernelCacheWarning",
    "NonFiniteError",
    "KernelPolicy",
    "OutOfMemoryError",
    "ShapeMismatchError",
    "UnsupportedOperationError",
    "XpuRuntimeError",
    "XpuStoneError",
    "__version__",
    "config",
    "constants",
    "convert",
    "errors",
    "klein",
    "linear",
    "lorentz",
    "pairwise",
    "poincare",
    "klein_to_lorentz",
    "klein_to_poincare",
    "lorentz_to_klein",
    "lorentz_to_poincare",
    "poincare_to_klein",
    "poincare_to_lorentz",
    "profile",
    "runtime",
    "to_cupy",
    "to_torch",
]
