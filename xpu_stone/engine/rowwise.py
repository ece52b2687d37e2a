"""Row-wise ops end to end: :func:`row_op` describes an op (and registers its
kernels and its torch custom op), :func:`call` runs it.

A call on torch tensors is checked (in the checked mode, ``config.check_finite``,
its values too: :func:`~xpu_stone.engine.checks.check_row_op_values`), then takes
the direct kernel launch (CUDA, no autograd, not tracing: the shortest host path), the
op's eager autograd.Function (:func:`~xpu_stone.engine.custom_op.eager`: not tracing,
no ``torch.func`` transform, no forward-mode AD) or the custom op
``torch.ops.xpu_stone.<family>_<name>`` (everywhere else),
whose implementations are the GPU launches of :mod:`~xpu_stone.engine.rowwise_cuda`
and the torch transcription of :mod:`~xpu_stone.engine.rowwise_cpu`. A call on
CuPy arrays is checked and launched on CuPy's current stream (no torch needed).
"""

from __future__ import annotations

from .. import config
from .._deps import is_cupy_array, require_torch, torch
from ..errors import InvalidArgumentError
from ..kernels.registry import REGISTRY
from .checks import batch_shape, check_row_op_values, validate_cupy, validate_torch
from .custom_op import Impls, define_differentiable, eager, empty_if_none, none_unless
from .launch import TORCH_DTYPES
from .rowop import RowOp
from .rowwise_cpu import FP16_MAX, cpu_backward, cpu_forward
from .rowwise_cuda import launch_backward, launch_forward, launch_forward_cupy

__all__ = ["OPS", "call", "dtype_name", "row_op"]

OPS: dict[str, object] = {}  # qualname -> torch.ops.xpu_stone.<qualname>.default


def row_op(family: str, name: str, struct: str, vectors, terms, dots, out, coeffs, **options) -> RowOp:
    """Describes one op of ``cuda_src/<family>.cu`` (see :class:`RowOp`), registers
    its kernels and, with torch installed, its custom op; returns the description."""
    op = RowOp(family, name, struct, tuple(vectors), tuple(terms), tuple(dots), tuple(out), coeffs, **options)
    REGISTRY.register(op.kernels)
    if torch is not None:
        OPS[op.qualname] = _define_custom_op(op)
    return op


def call(op: RowOp, vecs: tuple, c, t=None, eps: float = 0.0, keepdim: bool | None = None):
    """Runs ``op`` on torch tensors or CuPy arrays (see the module docstring);
    ``keepdim`` (scalar ops) keeps the feature dim as size 1. Everything is checked
    before anything runs. A row with a NaN or inf input, or with a point input
    outside its domain beyond rounding, gives NaN outputs (see
    :mod:`xpu_stone.engine.checks`), or raises in the checked mode."""
    if keepdim is not None and not isinstance(keepdim, bool):
        raise InvalidArgumentError(f"keepdim must be True or False, got {keepdim!r}")
    if is_cupy_array(vecs[0]):
        c, c_val, t, t_val, dtype, batch = validate_cupy(op, vecs, c, t)
        if config.check_finite:
            check_row_op_values(op, vecs, c, c_val)
        out = launch_forward_cupy(op, vecs, c, c_val, t, t_val, eps, dtype, batch)
    else:
        if torch is None:
            require_torch(f"xpu_stone.{op.family}.{op.name} on non-CuPy inputs")
        c, c_val, t, t_val, dtype, batch = validate_torch(op, vecs, c, t)
        if config.check_finite:  # one attribute read on the common path
            check_row_op_values(op, vecs, c, c_val)
        if vecs[0].is_cuda and not _needs_grad(vecs, c, t) and not torch.compiler.is_compiling():
            out = launch_forward(op, vecs, c, c_val, t, t_val, eps, dtype, batch)
        else:  # the op's eager autograd.Function where it may stand in, else the op
            out = eager(op.qualname, OPS[op.qualname], vecs[0])(*vecs, c, c_val, t, t_val, eps)
    return out[..., None] if keepdim else out


def dtype_name(x) -> str:
    """ "float32", ... for a torch tensor or CuPy array (float32 for anything else)."""
    if is_cupy_array(x):
        return str(x.dtype)
    return TORCH_DTYPES.get(getattr(x, "dtype", None), "float32")


def _needs_grad(vecs, c, t) -> bool:
    if torch.autograd.forward_ad._current_level >= 0:  # forward-mode AD: the custom op carries the tangent
        return True
    if not torch.is_grad_enabled():
        return False
    for v in vecs:
        if v.requires_grad:
            return True
    return (c is not None and c.requires_grad) or (t is not None and t.requires_grad)


# ------------------------------------------------------------ the custom op
def _reduce_to(g, like):
    """g summed down to like's shape, in like's dtype (fp16 saturating at its
    largest finite value, as the kernels' stores do)."""
    if g.shape != like.shape:
        g = g.sum_to_size(like.shape)
    if like.dtype == torch.float16 and g.dtype != torch.float16:
        g = g.clamp(-FP16_MAX, FP16_MAX)
    return g.to(like.dtype)


def _define_custom_op(op: RowOp):
    """``<qualname>(vectors..., c, c_val, t, t_val, eps)`` and its backward, through the scaffold."""
    nv = len(op.vectors)
    vec_args = ", ".join(f"Tensor {n}" for n in op.vectors)
    tail = "Tensor? c, float c_val, Tensor? t, float t_val, float eps"

    def out_shape(vecs, c, t):
        batch = batch_shape(vecs, c, t)
        return batch, (batch if op.scalar_out else (*batch, op.out_width(vecs[0].shape[-1])))

    def fwd_cuda(*args):
        vecs, (c, c_val, t, t_val, eps) = args[:nv], args[nv:]
        dtype = TORCH_DTYPES[vecs[0].dtype]
        return launch_forward(op, vecs, c, c_val, t, t_val, eps, dtype, batch_shape(vecs, c, t))

    def fwd_cpu(*args):
        vecs, (c, c_val, t, t_val, eps) = args[:nv], args[nv:]
        return cpu_forward(op, vecs, c, c_val, t, t_val, eps).expand(out_shape(vecs, c, t)[1]).contiguous()

    def fwd_fake(*args):
        vecs, (c, _, t, _, _) = args[:nv], args[nv:]
        return vecs[0].new_empty(out_shape(vecs, c, t)[1])

    def bwd_cuda(grad, *args):
        vecs, (c, c_val, t, t_val, eps, needs) = args[:nv], args[nv:]
        dtype = TORCH_DTYPES[vecs[0].dtype]
        batch = batch_shape(vecs, c, t)
        return empty_if_none(
            launch_backward(op, grad, vecs, c, c_val, t, t_val, eps, dtype, batch, needs), vecs[0]
        )

    def bwd_cpu(grad, *args):
        vecs, (c, c_val, t, t_val, eps, needs) = args[:nv], args[nv:]
        return empty_if_none(cpu_backward(op, grad, vecs, c, c_val, t, t_val, eps, needs), vecs[0])

    def bwd_fake(grad, *args):
        vecs, (c, _, t, _, _, needs) = args[:nv], args[nv:]
        batch = batch_shape(vecs, c, t)
        x = vecs[0]
        outs = [x.new_empty((*batch, x.shape[-1])) if needs[j] else None for j in range(nv)]
        pd = torch.float64  # the kernels' c and t gradients (see launch_backward)
        for s, need in ((c, needs[nv]), (t, needs[nv + 1])):
            outs.append(x.new_empty((*batch, 1), dtype=pd) if (need and s is not None) else None)
        return empty_if_none(outs, x)

    def save(ctx, inputs, output):
        vecs, (c, c_val, t, t_val, eps) = inputs[:nv], inputs[nv:]
        ctx.save_for_backward(*vecs, c, t)
        ctx.consts = (c_val, t_val, eps)

    def backward(backward_op, ctx, grad):
        *vecs, c, t = ctx.saved_tensors
        c_val, t_val, eps = ctx.consts
        ng = ctx.needs_input_grad
        needs = [bool(ng[j]) for j in range(nv)] + [bool(ng[nv]), bool(ng[nv + 2])]
        grads = backward_op(grad, *vecs, c, c_val, t, t_val, eps, needs)
        out = none_unless(
            [_reduce_to(g, like) if need else None for g, like, need in zip(grads, [*vecs, c, t], needs)],
            needs,
        )
        return (*out[:nv], out[nv], None, out[nv + 1], None, None)

    def save_backward(ctx, inputs, output):
        grad, vecs, (c, c_val, t, t_val, eps, needs) = inputs[0], inputs[1 : nv + 1], inputs[nv + 1 :]
        ctx.save_for_backward(grad, *vecs, c, t)
        ctx.consts = (c_val, t_val, eps, needs)

    def double_backward(ctx, grads):
        """The backward op's vector-Jacobian product. The backward op maps (g, v, c, t)
        to the per-row gradients ``B_k = (dF/dr_k)^T g`` of the forward ``F`` (``fwd_cpu``:
        torch ops, any device; float64 arithmetic for every dtype,
        the kernels' accumulation and bad-row rule), with ``r_k`` input ``k``
        broadcast to the batch. Here ``F`` is recomputed with the inputs in the graph,
        ``B`` taken by autograd with ``create_graph=True`` and differentiated again:
        ``sum_k grads_k . dB_k/d(g, v, c, t)``. Under ``create_graph=True`` the result
        stays differentiable (third and higher derivatives)."""
        grad, *vecs = ctx.saved_tensors
        vecs, (c, t) = vecs[:nv], vecs[nv:]
        c_val, t_val, eps, needs = ctx.consts
        ng = ctx.needs_input_grad
        wanted = (ng[0], *ng[1 : nv + 1], ng[nv + 1], ng[nv + 3])  # g, vectors, c, t
        create_graph = torch.is_grad_enabled()
        batch = batch_shape(vecs, c, t)
        with torch.enable_grad():
            rows = [v.expand(*batch, v.shape[-1]) for v in vecs]
            rows += [None if s is None else s.expand(*batch, 1) for s in (c, t)]
            out = fwd_cpu(*rows[:nv], rows[nv], c_val, rows[nv + 1], t_val, eps)
            ks = [k for k, need in enumerate(needs) if need]
            firsts = torch.autograd.grad(
                out, [rows[k] for k in ks], grad, create_graph=True, allow_unused=True
            )
            pairs = [
                (b, grads[k].to(b.dtype)) for b, k in zip(firsts, ks) if b is not None and b.requires_grad
            ]
            inputs = [x for x, w in zip((grad, *vecs, c, t), wanted) if w]
            found = iter(
                torch.autograd.grad(
                    [b for b, _ in pairs],
                    inputs,
                    [gg for _, gg in pairs],
                    allow_unused=True,
                    create_graph=create_graph,
                )
                if pairs  # none when the gradients are constants (an op linear in its inputs)
                else [None] * len(inputs)
            )
        res = [next(found) if w else None for w in wanted]
        return (*res[: nv + 1], res[nv + 1], None, res[nv + 2], None, None, None)

    return define_differentiable(
        op.qualname,
        f"({vec_args}, {tail}) -> Tensor",
        Impls(fwd_fake, cuda=fwd_cuda, cpu=fwd_cpu),
        f"(Tensor grad, {vec_args}, {tail}, bool[] needs) -> Tensor[]",
        Impls(bwd_fake, cuda=bwd_cuda, cpu=bwd_cpu),
        save,
        backward,
        differentiable_forward=fwd_cpu,
        save_backward=save_backward,
        double_backward=double_backward,
    )
