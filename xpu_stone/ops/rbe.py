r"""The op half of the RBE layers (kernels in ``cuda_src/rbe.cu``): kernel names, their
registration, and the CUDA launchers of ``xpu_stone::rbe_linear``. The custom op itself
and its CPU path live in :mod:`xpu_stone.rbe.functional` (its CPU maths is the generator
of :mod:`xpu_stone.rbe.generator`, above this layer); the format constants
(``Δω``, the hyperbolic clamp, the Lloyd–Max levels) come in as arguments.

Forward ``y = x Wᵀ + b`` and data gradient ``δ W`` (MODE 0 / 1): one block per tile row
(column), batch block and split of the tile walk. Batches of at most 16 rows take
``xs_rbe_gemv`` (4 warps a block, each generating whole tiles in registers and
multiplying them with 4 or 16 staged input rows, no block barrier in the walk). Larger
batches stage each tile in shared memory once per block: fp16/bf16 in ``xs_rbe_mma``,
128 rows a block on the tensor cores (``mma.m16n8k16``, the tile rounded to the
activation dtype); fp32 (64 rows) and fp64 (16 rows) in ``xs_rbe_mm`` on the CUDA cores.
Splits of the walk fill the GPU (``BLOCKS_PER_SM``); with more than one, the partial
sums go to a workspace ``(splits, rows, cols)`` which ``xs_rbe_finish`` adds up (bias
and rounding included). The GEMV's workspace stays under a 32nd of the fp16 weight's
bytes (or 1 MiB); the tensor-core kernel walks at most ``MMA_MAX_WALK`` tiles a block,
so a layer more than 32 tiles long in the walked dimension is split at least
``ceil(walk / 32)`` ways whatever the batch, and its workspace grows with the batch
(``splits x rows x cols`` fp32: 256 MiB at 4096 rows of a 4096 x 4096 layer).
Atom and scale gradients (``xs_rbe_grad``): one block per tile forms the tile's
``G = δᵀ x`` in registers and reduces it against the atom derivatives; its row sums
of ``G ℓ[c]`` are added atomically into the scales' gradient ``(out, ceil(in/128))``
(the ``128 / B`` tiles of a group in any order: the last bits of that gradient may
vary between runs). No buffer of the weight's size, nor of ``out x in / B``, is
allocated on any path.
"""

from __future__ import annotations

import numpy

from .._deps import torch
from ..engine.launch import TORCH_DTYPES, device_props, poison, ptr, torch_stream
from ..kernels.launch import get_function, launch_kernel
from ..kernels.registry import CXX_TYPE, DTYPES, REGISTRY, KernelList

__all__ = [
    "BLOCK",
    "GROUP",
    "KERNELS",
    "MODES",
    "SMALL_BATCH",
    "TILES",
    "backward_cuda",
    "forward_cuda",
    "kernel_name",
]

BLOCK = 256  # threads of the mm, mma, grad and finish kernels of rbe.cu
GEMV_BLOCK = 128  # threads of xs_rbe_gemv (4 warps)
TILES = (32, 64)
SMALL_BATCH = 16  # the most rows of the GEMV-like kernel
GEMV_ROWS = (4, 16)  # its batch blocks (NB)
LARGE_BATCH = {"float32": 64, "float64": 16}  # rows a block of xs_rbe_mm beyond SMALL_BATCH
MMA_BATCH = 128  # fp16/bf16 rows a tensor-core block beyond SMALL_BATCH (rbe.cu: BM)
MMA_DTYPES = ("float16", "bfloat16")
MMA_MAX_WALK = 32  # tiles a tensor-core block walks at most (rbe.cu: XS_RBE_MAX_WALK)
BLOCKS_PER_SM = {
    "gemv": 8,
    "mm": 2,
    "mma": 2,
}  # the walk is split until the grid has about this many blocks an SM
WORKSPACE_MIN = 1 << 20  # bytes of split partial sums allowed whatever the layer's size
MODES = {"forward": 0, "data_grad": 1}
GROUP = 128  # columns of a residual group (rbe.cu: k >> 7; xpu_stone.rbe.generator.GROUP)


def _compute(dtype: str) -> str:
    return "double" if dtype == "float64" else "float"


def kernel_name(kind: str, dtype: str, tile: int = 0, bn: int = 0, mode: int = 0) -> str:
    t, s = CXX_TYPE[dtype], _compute(dtype)
    if kind in ("mm", "gemv"):
        return f"xs_rbe_{kind}<{t}, {s}, {tile}, {bn}, {mode}>"
    if kind == "mma":
        return f"xs_rbe_mma<{t}, {tile}, {mode}>"
    if kind == "grad":
        return f"xs_rbe_grad<{t}, {s}, {tile}>"
    return f"xs_rbe_finish<{t}, {s}>"


def _all_kernels():
    out = []
    for dtype in DTYPES:
        out.append((dtype, kernel_name("finish", dtype)))
        for tile in TILES:
            out.append((dtype, kernel_name("grad", dtype, tile)))
            for m in MODES.values():
                out += [(dtype, kernel_name("gemv", dtype, tile, nb, m)) for nb in GEMV_ROWS]
                if dtype in MMA_DTYPES:
                    out.append((dtype, kernel_name("mma", dtype, tile, 0, m)))
                else:
                    out.append((dtype, kernel_name("mm", dtype, tile, LARGE_BATCH[dtype], m)))
    return tuple(out)


KERNELS = REGISTRY.register(KernelList("rbe_linear", "rbe.cu", _all_kernels()))


def _fn(name: str, dtype: str, dev: int):
    return get_function(KERNELS.source, name, dev, KERNELS.defines(dtype))


def _s_dtype(t):
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _mm(inp, layer, mode: int, bias=None):
    """``x Wᵀ (+ b)`` (mode 0) or ``δ W`` (mode 1) for the rows of ``inp``."""
    shadow, state, planes, scales, levels, polar, out_f, in_f, tile, bits, delta_omega, hyp_max = layer
    dtype, s = TORCH_DTYPES[inp.dtype], _s_dtype(inp)
    n = inp.shape[0]
    dev = inp.device.index
    tile_rows, tile_cols = -(-out_f // tile), -(-in_f // tile)
    fixed, walk = (tile_rows, tile_cols) if mode == 0 else (tile_cols, tile_rows)
    out_dim = out_f if mode == 0 else in_f
    out = torch.empty((n, out_dim), dtype=inp.dtype, device=inp.device)
    if n == 0:
        return out
    if n <= SMALL_BATCH:
        kind, threads, bn = "gemv", GEMV_BLOCK, GEMV_ROWS[0] if n <= GEMV_ROWS[0] else SMALL_BATCH
    elif dtype in MMA_DTYPES:
        kind, threads, bn = "mma", BLOCK, MMA_BATCH
    else:
        kind, threads, bn = "mm", BLOCK, LARGE_BATCH[dtype]
    name = kernel_name(kind, dtype, tile, bn, mode)
    yb = -(-n // bn)
    sms = device_props(dev)[0]
    # the GEMV's partial sums of all splits stay under a 32nd of the fp16 weight (or WORKSPACE_MIN)
    item = 8 if s == torch.float64 else 4
    cap = max(1, max(out_f * in_f // 16, WORKSPACE_MIN) // (n * out_dim * item)) if kind == "gemv" else walk
    splits = max(1, min(walk, cap, -(-BLOCKS_PER_SM[kind] * sms // (fixed * yb))))
    if kind == "mma":
        splits = max(splits, -(-walk // MMA_MAX_WALK))
    per = -(-walk // splits)
    splits = -(-walk // per)
    ws = torch.empty((splits, n, out_dim), dtype=s, device=inp.device) if splits > 1 else None
    b = bias.to(s).contiguous() if bias is not None else None
    poison(out, ws)
    stream = torch_stream(dev)
    args = (ptr(inp), ptr(shadow), ptr(state), ptr(planes), ptr(scales), ptr(levels), ptr(polar), ptr(b), ptr(ws), ptr(out),
            numpy.int64(n), numpy.int64(out_f), numpy.int64(in_f), numpy.int32(shadow.shape[1]),
            numpy.int32(bits), numpy.int32(per), numpy.float64(delta_omega), numpy.float64(hyp_max))  # fmt: skip
    label = "rbe_linear.fwd" if mode == 0 else "rbe_linear.bwd_data"
    launch_kernel(_fn(name, dtype, dev), (fixed, yb, splits), threads, args,
                  stream, dev, op=label, shape=(n, out_f, in_f), dtype=dtype)  # fmt: skip
    if ws is not None:
        total = n * out_dim
        grid = max(1, min(-(-total // BLOCK), sms * 8))
        fargs = (ptr(ws), ptr(b), ptr(out), numpy.int64(n), numpy.int64(out_dim), numpy.int32(splits))
        launch_kernel(_fn(kernel_name("finish", dtype), dtype, dev), grid, BLOCK, fargs, stream, dev,
                      op=label + ".finish", shape=(n, out_dim), dtype=dtype)  # fmt: skip
    return out


def forward_cuda(x, bias, layer):
    """``y = x Wᵀ + b`` for contiguous CUDA ``x`` ``(N, in)``; ``layer``: ``(shadow float32,
    state, planes, scales float32, levels float64, polar table float64 (2, tile, tile), out,
    in, tile, bits, Δω, hyperbolic clamp)``."""
    return _mm(x, layer, MODES["forward"], bias)


def backward_cuda(grad, x, layer, needs):
    """``(dL/dx, dL/dshadow, dL/dscales)`` (None where ``needs`` says not needed; ``needs``
    for x, shadow, scales), without a buffer of the weight's size; ``dL/dσ_{o,g} =
    Σ_{j ∈ g} G_oj ℓ[c_oj]`` ``(out, ceil(in/128))`` in the compute dtype."""
    shadow, state, planes, scales, levels, polar, out_f, in_f, tile, bits, delta_omega, hyp_max = layer
    gx = _mm(grad, layer, MODES["data_grad"]) if needs[0] else None
    if not (needs[1] or needs[2]):
        return gx, None, None
    dtype, s = TORCH_DTYPES[x.dtype], _s_dtype(x)
    n = x.shape[0]
    dev = x.device.index
    g_shadow = torch.zeros(shadow.shape, dtype=s, device=x.device)
    # accumulated into by the tiles of each group: zeros, not poisoned
    g_scale = torch.zeros((out_f, -(-in_f // GROUP)), dtype=s, device=x.device) if needs[2] else None
    if n:
        poison(g_shadow)
        args = (ptr(x), ptr(grad), ptr(shadow), ptr(state), ptr(planes), ptr(levels), ptr(polar), ptr(g_shadow),
                ptr(g_scale), numpy.int64(n), numpy.int64(out_f), numpy.int64(in_f), numpy.int32(shadow.shape[1]),
                numpy.int32(bits), numpy.float64(delta_omega), numpy.float64(hyp_max))  # fmt: skip
        launch_kernel(_fn(kernel_name("grad", dtype, tile), dtype, dev), shadow.shape[0], BLOCK, args,
                      torch_stream(dev), dev, op="rbe_linear.bwd_codes", shape=(n, out_f, in_f), dtype=dtype)  # fmt: skip
    return gx, (g_shadow.to(shadow.dtype) if needs[1] else None), g_scale
