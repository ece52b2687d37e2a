"""Numerical constants shared by the kernels and the torch code.

The clamping constants mirror ``xs_limits`` in ``cuda_src/common/math.cuh``:

* ``MIN_SQNORM``: squared norms below this count as this (``1e-200`` in float64
  arithmetic, ``1e-36`` in float32), so that a zero vector gets the finite limit
  of each formula (``tanh(n)/n -> 1``) while any representable nonzero row keeps
  its direction, and the gradient of a norm at a tiny row stays ``x/|x|``.
* ``MIN_DENOM = 1e-15``: denominators that are positive inside the ball
  (``1 - c|x|^2``, the Mobius denominators) are at least this.
* ``TANH_MAX = 15``: ``tanh``'s input is clamped to ``[-15, 15]``.
* ``ARTANH_MAX``: ``artanh``'s input is clamped to ``1 - 1e-15`` in float64
  arithmetic and ``1 - 1e-7`` in float32 arithmetic.
* ``COSH_MAX``: ``sinh``'s and ``cosh``'s input is clamped to ``[-700, 700]`` in
  float64 arithmetic (``[-88, 88]`` in float32), where they stay finite.

``BOUNDARY_EPS`` is the default margin of :func:`xpu_stone.poincare.project`: points
are pulled to norm at most ``(1 - eps) / sqrt(c)``. Each value is chosen so that
``1 - eps`` is representable and below 1 in its dtype (geoopt's 1e-5 for fp16/bf16
rounds ``1 - eps`` to 1.0 and so allows points on the boundary, where ``log(0)``
follows).
"""

from __future__ import annotations

MIN_SQNORM = {"float64": 1e-200, "float32": 1e-36}
MIN_DENOM = 1e-15
TANH_MAX = 15.0
ARTANH_MAX = {"float64": 1.0 - 1e-15, "float32": 1.0 - 1e-7}
COSH_MAX = {"float64": 700.0, "float32": 88.0}

BOUNDARY_EPS = {
    "float64": 1e-5,
    "float32": 1e-5,
    "float16": 1e-3,  # 1 - 1e-3 -> 0.99902 in fp16 (spacing below 1: 2^-11)
    "bfloat16": 8e-3,  # 1 - 8e-3 -> 0.99219 in bf16 (spacing below 1: 2^-8)
}

# Arithmetic type of the kernels for each storage dtype: the row reductions and the
# per-row formulas run in fp64; the elementwise sums too for fp32/fp64 rows, while
# fp16/bf16 rows combine their elements in fp32 (xs_elem in cuda_src/common/dtype.cuh);
# the result is rounded to the storage dtype once. Near the boundary 1 - c|x|^2 and the Mobius
# denominators cancel to a few digits; fp64 keeps fp32 outputs within 1e-5 of
# exact maths there. The kernels keep the type a template parameter (float works
# too), for GPUs whose fp64 rate would make this the bottleneck.
ACCUM_DTYPE = {"float64": "float64", "float32": "float64", "float16": "float64", "bfloat16": "float64"}
