"""Numerical constants shared by the kernels and the torch code.

The clamping constants mirror ``xs_limits`` in ``cuda_src/common/math.cuh``:

* ``MIN_SQNORM = 1e-30``: squared norms below this count as this, so that a zero
  vector has a finite direction-free limit (``tanh(n)/n -> 1``).
* ``MIN_DENOM = 1e-15``: denominators that are positive inside the ball
  (``1 - c|x|^2``, the Mobius denominators) are at least this.
* ``TANH_MAX = 15``: ``tanh``'s input is clamped to ``[-15, 15]``.
* ``ARTANH_MAX``: ``artanh``'s input is clamped to ``1 - 1e-15`` in float64
  arithmetic and ``1 - 1e-7`` in float32 arithmetic.

``BOUNDARY_EPS`` is the default margin of :func:`xpu_stone.poincare.project`: points
are pulled to norm at most ``(1 - eps) / sqrt(c)``. Each value is chosen so that
``1 - eps`` is representable and below 1 in its dtype (geoopt's 1e-5 for fp16/bf16
rounds ``1 - eps`` to 1.0 and so allows points on the boundary, where ``log(0)``
follows).
"""

from __future__ import annotations

MIN_SQNORM = 1e-30
MIN_DENOM = 1e-15
TANH_MAX = 15.0
ARTANH_MAX = {"float64": 1.0 - 1e-15, "float32": 1.0 - 1e-7}

BOUNDARY_EPS = {
    "float64": 1e-5,
    "float32": 1e-5,
    "float16": 1e-3,  # 1 - 1e-3 -> 0.99902 in fp16 (spacing below 1: 2^-11)
    "bfloat16": 8e-3,  # 1 - 8e-3 -> 0.99219 in bf16 (spacing below 1: 2^-8)
}

# Compute type of the per-row reductions and formulas for each storage dtype
# (fp32 rows are reduced in fp64: 1 - c|x|^2 near the boundary keeps its digits).
ACCUM_DTYPE = {"float64": "float64", "float32": "float64", "float16": "float32", "bfloat16": "float32"}
