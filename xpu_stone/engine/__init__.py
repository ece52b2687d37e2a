"""The engine: what every op shares between its public function and its kernel.

=================  ===========================================================
module             what it holds
=================  ===========================================================
``rowop``          :class:`RowOp`, the description of a row-wise op (mirrors a
                   struct of ``cuda_src/*.cu``)
``scalars``        the one rule for the curvature and other scalars
``checks``         operand checks (torch and CuPy), the bad-row rule, the checked mode
``rows``           operands flattened to rows; the kernel's parameter fields
``launch``         launcher chores: dtype tables, stream, pointers, poisoning,
                   device properties, profiled launches
``rowwise_cuda``   the row-wise GPU launches (torch forward/backward, CuPy forward)
``rowwise_cpu``    the row-wise kernels' maths in torch (the CPU path)
``custom_op``      the one torch custom-op scaffold (every op uses it)
``rowwise``        :func:`row_op` (describe + register) and :func:`call`
=================  ===========================================================
"""

from .rowop import ALONE, E0, RowOp
from .rowwise import OPS, call, dtype_name, row_op
from .scalars import check_curvature, check_scalar

__all__ = [
    "ALONE",
    "E0",
    "OPS",
    "RowOp",
    "call",
    "check_curvature",
    "check_scalar",
    "dtype_name",
    "row_op",
]
