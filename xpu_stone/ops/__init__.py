"""The ops: one module per kernel source of ``cuda_src/`` (``poincare.cu`` ->
``ops/poincare.py``, ``hyperbolic_linear.cu`` -> ``ops/hyperbolic_linear.py``, ...).
An ops module holds what ties its kernels to Python: the kernel names and their
registration, the maths in torch (the CPU path and the oracle of the kernels'
assembly), the launchers, and the torch custom ops. The public functions live in
the thin modules above (:mod:`xpu_stone.poincare`, :mod:`xpu_stone.linear`, ...).

Adding a row-wise op (one output row from the matching input rows)
-------------------------------------------------------------------
1. ``cuda_src/<family>.cu``: a struct derived from ``xs_op_base`` with ``NVEC``,
   ``NTERM``, ``NDOT``, ``NOUT``, ``SCALAR_OUT``, the ``XS_TABLE`` term/dot/out
   tables and ``XS_COEFFS`` (the per-row formula; see ``common/rowwise.cuh``).
2. ``ops/<family>.py``: ``NAME = _op("name", "Struct", vectors, terms, dots, out,
   coeffs)`` with ``coeffs`` the same formula in torch, and ``"NAME"`` in the
   module's ``__all__``. That registers its kernels (every variant, forward and
   backward), its custom op ``xpu_stone::<family>_<name>`` and its CPU path.
   ``tests/test_cuda_layout.py`` checks the description against the struct.
3. ``xpu_stone/<family>.py``: the public function (``engine.call(_ops.NAME, ...)``),
   with the formula in its docstring, and its name in ``__all__``.
4. ``xpu_stone/reference/<family>.py``: the textbook formula in float64 and its
   argument kinds in ``ARG_KINDS`` (the independent oracle the tests, the GPU
   tests and ``python -m xpu_stone`` compare with).
5. The README's op table.
Nothing else: the kernel build, the compile check, the dispatcher, the tuner and
the tests find the op through ``__all__`` and the registry.

Adding a GEMM-style op (a GEMM plus fused epilogues, like ``pairwise`` and ``hyperbolic_linear``)
------------------------------------------------------------------------------------------------
1. ``cuda_src/<name>.cu``: the epilogue kernels (forward, backward), each a
   ``__global__`` template over the storage type.
2. ``ops/<name>.py``: ``KERNELS = REGISTRY.register(KernelList(...))`` listing every
   instantiation (so the build and the CI compile check cover them); the torch
   maths of the epilogues (the CPU path); launchers that take their stream,
   pointers, poisoning and profiled launch from :mod:`xpu_stone.engine.launch`;
   and the custom op through :func:`xpu_stone.engine.custom_op.define_differentiable`
   (schema, CUDA and CPU implementations or one for every device, fake, backward).
3. ``xpu_stone/<name>.py``: input checks (the curvature by
   :func:`xpu_stone.engine.check_curvature`) and the public functions.
4. ``xpu_stone/reference/<name>.py``, a test file ``tests/test_<name>.py`` (CPU) and
   ``tests/test_<name>_cuda.py`` (GPU), a benchmark ``benchmarks/bench_<name>.py``,
   and the README.
"""

from __future__ import annotations

from ..engine.rowop import RowOp
from . import convert, hyperbolic_linear, klein, lorentz, optim, pairwise, poincare, rbe

__all__ = ["KERNEL_MODULES", "ROW_FAMILIES", "row_ops"]

KERNEL_MODULES = (poincare, lorentz, klein, convert, pairwise, hyperbolic_linear, optim, rbe)
# the modules whose __all__ lists row ops, in the order of the README
ROW_FAMILIES = tuple(m for m in KERNEL_MODULES if any(isinstance(getattr(m, n), RowOp) for n in m.__all__))


def row_ops(families=ROW_FAMILIES) -> list[RowOp]:
    """Every row op of ``families``, from their modules' ``__all__``."""
    return [getattr(m, n) for m in families for n in m.__all__ if isinstance(getattr(m, n), RowOp)]
