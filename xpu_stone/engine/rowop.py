"""The description of a row-wise op, mirroring one op struct of ``cuda_src/*.cu``.

See the header of ``cuda_src/common/rowwise.cuh`` for the model: an op names the
vector inputs of a row, the *terms* built from them, the *dots* (inner products
of terms) reduced over the row, the output terms, and ``coeffs``, the per-row
formula written in torch exactly as the C++ one is. ``tests/test_cuda_layout.py``
parses the structs and checks every description against its struct.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from ..kernels.registry import ROWWISE_VARIANTS, SCALAR_ROW_VARIANTS, OpKernels

__all__ = ["ALONE", "E0", "RowOp", "term_flags"]

E0 = -2  # the term index of e_0, the unit vector of element 0 (XS_E0 in rowwise.cuh)
ALONE = -1  # second entry of a term that is one input, not a difference


def term_flags(term: tuple) -> tuple[bool, bool]:
    """``(spatial, sum)`` of a term ``(a, b[, spatial[, sum]])`` (absent flags are False),
    the ``spatial`` and ``sum`` fields of ``xs_ij`` in rowwise.cuh."""
    return bool(len(term) > 2 and term[2]), bool(len(term) > 3 and term[3])


@dataclass(frozen=True, eq=False)
class RowOp:
    """One row-wise op. ``terms``: (a, b) for v_a - v_b, (a, ALONE) for v_a alone,
    (E0, ALONE) for e_0, a third entry True to zero element 0 (the space part
    of a Lorentz vector), and (a, b, False, True) for the sum v_a + v_b (formed
    elementwise, so that nearly opposite rows keep their digits); ``dots``: pairs of term indices; ``out``: the terms of
    a vector output. ``in_shift`` / ``out_shift``: the inputs / the output hold
    the logical row from that element on (see rowwise.cuh). ``late``: the last dot
    (a, b) is not <t_a, t_b> but |w|^2 with w = t_a + s t_b, summed from the elements
    in a second pass once the other dots give s = ``late(dots, c)`` (``LATE`` and
    ``late_scale`` of the C++ struct)."""

    family: str
    name: str
    struct: str
    vectors: tuple[str, ...]
    terms: tuple[tuple[int, ...], ...]
    dots: tuple[tuple[int, int], ...]
    out: tuple[int, ...]
    coeffs: Callable
    scalar_out: bool = False
    param: str | None = None  # name of the per-row scalar passed as t ("t", "r")
    uses_eps: bool = False
    in_shift: int = 0
    out_shift: int = 0
    min_features: int = 1  # 2 for hyperboloid points: the time coordinate and a space one
    late: Callable | None = None

    @property
    def summed_dots(self) -> tuple[tuple[int, int], ...]:
        """The dots summed in the first pass over the row (all but a late one)."""
        return self.dots[:-1] if self.late else self.dots

    @property
    def qualname(self) -> str:
        return f"{self.family}_{self.name}"

    @functools.cached_property
    def kernels(self) -> OpKernels:
        """The op's entry of the kernel registry (its source, struct and variants)."""
        variants = SCALAR_ROW_VARIANTS if self.shifted else ROWWISE_VARIANTS
        # a late dot marks an op whose output terms cancel (expmap near the boundary with
        # x + z ~ 0): its per-row tanh and cosh must be fp64-accurate for every dtype
        fast = self.late is None
        return OpKernels(self.qualname, f"{self.family}.cu", self.struct, variants, fast_transcendentals=fast)

    @functools.cached_property
    def labels(self) -> dict[str, str]:
        """Profiler names of the forward and backward launches."""
        return {d: f"{self.qualname}.{d}" for d in ("fwd", "bwd")}

    @property
    def shifted(self) -> bool:
        return bool(self.in_shift or self.out_shift)

    def width(self, d: int) -> int:
        """Length of the logical row for inputs of ``d`` features."""
        return d + self.in_shift

    def out_width(self, d: int) -> int:
        """Features of the output for inputs of ``d`` features."""
        return d + self.in_shift - self.out_shift
