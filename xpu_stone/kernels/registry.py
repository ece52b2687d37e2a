"""Which kernels exist: ops, their variants, and the launch configurations of each.

An op registers the variants that can run it. A variant is a family of launch
configurations of one kernel template, with the constraints under which it is
valid. For the row-wise engine (``cuda_src/common/rowwise.cuh``):

==================  ===================================================  =====================
variant             layout                                               valid for
==================  ===================================================  =====================
``rows_per_warp``   G = 2, 4, 8 or 16 threads a row, 16-byte loads       aligned rows, short D
``warp_per_row``    one warp a row, 16-byte loads, row kept in registers aligned rows
``block_per_row``   256 threads a row, 16-byte loads, block reduction    aligned rows, long D
``generic``         4 or 32 threads a row, scalar strided loads          anything
==================  ===================================================  =====================

Ops whose rows change length (the conversions to and from the hyperboloid)
register ``rows_per_warp_scalar``, ``warp_per_row_scalar``,
``block_per_row_scalar`` (the same layouts, one element per access) and
``generic`` instead.

"Aligned" means unit element stride, 16-byte aligned base pointers, and D and
every row stride multiples of the vector width (16 bytes / element size).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..constants import ACCUM_DTYPE
from ..errors import InvalidArgumentError

# C++ spelling of the storage types, and the vector width (elements per 16 bytes).
CXX_TYPE = {"float32": "float", "float64": "double", "float16": "xs_half", "bfloat16": "xs_bf16"}
ITEMSIZE = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2}
VEC_WIDTH = {name: 16 // size for name, size in ITEMSIZE.items()}
DTYPES = tuple(CXX_TYPE)
# Elements of one row a thread keeps in registers, 32 registers' worth: 16 for fp32 and
# fp64 rows (held in fp64), 32 for 16-bit rows (held in fp32: xs_elem in dtype.cuh).
MAX_CACHED = {"float64": 16, "float32": 16, "float16": 32, "bfloat16": 32}


@dataclass(frozen=True)
class LaunchConfig:
    """One instantiation of a row-wise kernel template.

    ``threads`` per row (G), ``iters`` register-cached chunks per thread (0: loop
    over the row and read it again), ``vec`` elements per access (1 or the
    16-byte width), ``block`` threads per block.
    """

    threads: int
    iters: int
    vec: int
    block: int

    def covers(self, d: int) -> bool:
        """Whether the row fits in registers (looping configurations take any row)."""
        return self.iters == 0 or d <= self.threads * self.iters * self.vec

    def rows_per_block(self) -> int:
        return 1 if self.threads > 32 else self.block // self.threads


@dataclass(frozen=True)
class Variant:
    """A family of configurations. ``vectorized`` variants need aligned input."""

    name: str
    vectorized: bool
    shapes: tuple[tuple[int, int, int], ...]  # (threads, iters, block); vec from dtype

    def configs(self, dtype: str) -> tuple[LaunchConfig, ...]:
        """The configurations for ``dtype``: a thread keeps at most
        ``MAX_CACHED[dtype]`` elements of each row in registers."""
        vec = VEC_WIDTH[dtype] if self.vectorized else 1
        return tuple(LaunchConfig(g, n, vec, b) for g, n, b in self.shapes if n * vec <= MAX_CACHED[dtype])

    def pick(self, dtype: str, d: int, aligned: bool, cached_only: bool = False) -> LaunchConfig | None:
        """The smallest configuration of this variant that takes the input, if any
        (with ``cached_only``, only one that keeps the row in registers)."""
        if self.vectorized and not aligned:
            return None
        looping = None
        for cfg in self.configs(dtype):
            if cfg.iters > 0:
                if cfg.covers(d):
                    return cfg
            elif not cached_only:
                if cfg.threads * cfg.vec >= d:
                    return cfg  # the narrowest loop whose first pass spans the row
                looping = cfg
        return looping


ROWWISE_VARIANTS = (
    Variant("rows_per_warp", True, ((2, 1, 256), (4, 1, 256), (8, 1, 256), (16, 1, 256))),
    Variant("warp_per_row", True, ((32, 1, 256), (32, 2, 256), (32, 4, 256), (32, 8, 256), (32, 0, 256))),
    Variant(
        "block_per_row", True, ((256, 1, 256), (256, 2, 256), (256, 4, 256), (256, 8, 256), (256, 0, 256))
    ),
    Variant("generic", False, ((4, 0, 256), (32, 0, 256))),
)

# Ops whose rows change length (IN_SHIFT / OUT_SHIFT in rowwise.cuh) read one
# element at a time: the same layouts with scalar access.
SCALAR_ROW_VARIANTS = (
    Variant("rows_per_warp_scalar", False, ((4, 1, 256), (8, 1, 256), (16, 1, 256))),
    Variant(
        "warp_per_row_scalar", False, ((32, 1, 256), (32, 2, 256), (32, 4, 256), (32, 8, 256), (32, 16, 256))
    ),
    Variant(
        "block_per_row_scalar",
        False,
        ((256, 1, 256), (256, 2, 256), (256, 4, 256), (256, 8, 256), (256, 16, 256), (256, 0, 256)),
    ),
    Variant("generic", False, ((4, 0, 256), (32, 0, 256))),
)


def fast_transcendental_defines(dtype: str) -> tuple[str, ...]:
    """``XS_FAST_TRANSCENDENTALS=1`` for outputs stored in fp32 or narrower."""
    return () if dtype == "float64" else ("XS_FAST_TRANSCENDENTALS=1",)


@dataclass(frozen=True)
class OpKernels:
    """The kernels of one op: its source, C++ struct and variants."""

    op: str
    source: str
    struct: str
    variants: tuple[Variant, ...] = ROWWISE_VARIANTS
    directions: tuple[str, ...] = ("fwd", "bwd")
    fast_transcendentals: bool = True

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        known = ", ".join(v.name for v in self.variants)
        raise InvalidArgumentError(f"op {self.op!r} has no variant {name!r}; known: {known}")

    def kernel_name(self, direction: str, dtype: str, accum: str, cfg: LaunchConfig) -> str:
        return (
            f"xs_rowwise_{direction}<{self.struct}, {CXX_TYPE[dtype]}, {CXX_TYPE[accum]}, "
            f"{cfg.threads}, {cfg.iters}, {cfg.vec}, {cfg.block}>"
        )

    def defines(self, dtype: str) -> tuple[str, ...]:
        """Preprocessor switches of a kernel for rows of ``dtype``: outputs stored
        in fp32 or narrower take fp32-accurate transcendentals (see math.cuh), unless
        the op's ``fast_transcendentals`` is off (an op whose output terms cancel)."""
        return fast_transcendental_defines(dtype) if self.fast_transcendentals else ()

    def all_kernels(self, dtypes=DTYPES):
        """(name, defines) of every kernel this op can launch, for build and checks."""
        for dtype in dtypes:
            for variant in self.variants:
                for cfg in variant.configs(dtype):
                    for direction in self.directions:
                        yield self.kernel_name(direction, dtype, ACCUM_DTYPE[dtype], cfg), self.defines(dtype)


@dataclass(frozen=True)
class KernelList:
    """Kernels that are not row-wise templates (GEMM epilogues, fused optimizer
    steps, ...): an explicit list of ``(dtype, name expression)`` of ``source``.
    Registered like :class:`OpKernels`, so that :func:`xpu_stone.kernels.build`
    and ``scripts/check_kernels.py`` compile them too; launched through
    :func:`xpu_stone.kernels.launch.launch_kernel`."""

    op: str
    source: str
    kernels: tuple[tuple[str, str], ...]

    defines = staticmethod(fast_transcendental_defines)

    def name(self, dtype: str, index: int = 0) -> str:
        """The ``index``-th kernel listed for ``dtype``."""
        names = [n for d, n in self.kernels if d == dtype]
        if index >= len(names):
            raise InvalidArgumentError(f"op {self.op!r} has no kernel {index} for dtype {dtype}")
        return names[index]

    def all_kernels(self, dtypes=DTYPES):
        for dtype, name in self.kernels:
            if dtype in dtypes:
                yield name, self.defines(dtype)


@dataclass
class KernelRegistry:
    """Op name -> :class:`OpKernels`. Ops register themselves when their module loads."""

    ops: dict[str, OpKernels | KernelList] = field(default_factory=dict)

    def register(self, kernels: OpKernels | KernelList) -> OpKernels | KernelList:
        if kernels.op in self.ops and self.ops[kernels.op] != kernels:
            raise InvalidArgumentError(f"op {kernels.op!r} is already registered differently")
        self.ops[kernels.op] = kernels
        return kernels

    def get(self, op: str) -> OpKernels | KernelList:
        try:
            return self.ops[op]
        except KeyError:
            raise InvalidArgumentError(
                f"unknown op {op!r}; registered: {', '.join(sorted(self.ops))}"
            ) from None

    def __iter__(self):
        return iter(self.ops.values())


REGISTRY = KernelRegistry()
