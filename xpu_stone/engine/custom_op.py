"""The one scaffold that makes an op a torch custom op (``torch.ops.xpu_stone.<name>``).

Every op of the package, row-wise or GEMM-style, is defined here the same way:

* a schema and one implementation per dispatch key (``CUDA`` and ``CPU``, or
  one ``CompositeExplicitAutograd`` implementation for every device);
* a fake implementation (shapes only), so ``torch.compile`` traces through it;
* for a differentiable op, a second op ``<name>_backward`` defined likewise, and
  the autograd formula (``save`` = setup_context, ``backward`` calling the
  backward op), so that the backward is itself traceable and capturable;
* optionally, higher orders (:func:`define_differentiable`): the derivative of
  ``<name>_backward`` (second and higher derivatives through ``create_graph=True``)
  and forward-mode AD (``torch.func.jvp``, ``torch.autograd.forward_ad``); an op
  without them raises :class:`~xpu_stone.errors.UnsupportedOperationError` for
  either, never a wrong number.

Ops are defined at import of their ``xpu_stone.ops`` module. The library is
defined with ``torch.library.Library`` (about 4 µs less dispatch per call than
``torch.library.custom_op``). Custom ops return tensors only: a gradient that is
not needed comes back as an empty tensor (:func:`empty_if_none`) and is turned
into None again by the autograd formula (:func:`none_unless`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .._deps import torch
from ..errors import UnsupportedOperationError

__all__ = [
    "EAGER",
    "LIB",
    "Impls",
    "define",
    "define_differentiable",
    "eager",
    "empty_if_none",
    "none_unless",
]

NAMESPACE = "xpu_stone"
LIB = torch.library.Library(NAMESPACE, "DEF") if torch is not None else None
# name -> ``apply`` of the op's eager autograd.Function (:func:`define_differentiable`): a
# caller that is not tracing (torch.compile), not under a torch.func transform and not in
# forward-mode AD may call it instead of the op, with the op's arguments, for the same
# result and gradients at less host time; anywhere else the op itself must be called
# (:func:`eager` picks).
EAGER: dict[str, Callable] = {}


@dataclass(frozen=True)
class Impls:
    """An op's implementations: ``fake`` (shapes only), and either ``cuda`` and
    ``cpu`` or ``any_device`` (one implementation for every device)."""

    fake: Callable
    cuda: Callable | None = None
    cpu: Callable | None = None
    any_device: Callable | None = None

    def by_key(self) -> dict[str, Callable]:
        keys = {"CUDA": self.cuda, "CPU": self.cpu, "CompositeExplicitAutograd": self.any_device}
        return {k: fn for k, fn in keys.items() if fn is not None}


def define(name: str, schema: str, impls: Impls):
    """Defines ``xpu_stone::name`` with ``schema`` (the part after the name, e.g.
    ``"(Tensor x, float c) -> Tensor"``); returns its default overload."""
    LIB.define(f"{name}{schema}")
    for key, fn in impls.by_key().items():
        LIB.impl(name, fn, key)
    torch.library.register_fake(f"{NAMESPACE}::{name}", impls.fake, lib=LIB)
    return getattr(getattr(torch.ops, NAMESPACE), name).default


def define_differentiable(
    name: str,
    schema: str,
    impls: Impls,
    backward_schema: str,
    backward_impls: Impls,
    save: Callable,
    backward: Callable,
    differentiable_forward: Callable | None = None,
    save_backward: Callable | None = None,
    double_backward: Callable | None = None,
):
    """Defines ``name`` and ``name_backward`` and registers the autograd formula:
    ``save(ctx, inputs, output)`` keeps what the backward needs, and
    ``backward(backward_op, ctx, *grad_outputs)`` returns one gradient (or None)
    per input of ``name``. Returns the forward's default overload.

    Higher orders, each optional (without it, an :class:`UnsupportedOperationError`
    when it is asked for, never a wrong number):

    * ``differentiable_forward(*inputs)``: the op's output computed with torch ops
      (any device). Under forward-mode AD (an input holding a tangent) the op
      returns it, evaluated on the dual inputs, so torch's own derivative
      formulas give the tangent ``J t``.
    * ``save_backward(ctx, inputs, output)`` and ``double_backward(ctx, grads)``:
      setup_context and formula of the derivative of ``name_backward`` (inputs and
      output as that op's, ``grads`` the list of gradients of its outputs). Used
      when the backward runs with grad mode on, which autograd does only under
      ``create_graph=True``: the backward op is then called through
      :func:`_recorded_backward`. A first-order backward calls it as it is, with no
      autograd kernel: a registered one (``torch.library.register_autograd``) would
      run on every first-order backward: 8 µs of host time, 1.4 µs even with the
      autograd keys skipped (CPU, torch 2.13).
    """
    forward_op = define(name, schema, impls)
    backward_op = define(f"{name}_backward", backward_schema, backward_impls)
    recorded_backward = _recorded_backward(name, backward_op, save_backward, double_backward)
    forward_ad, grad_enabled = torch.autograd.forward_ad, torch.is_grad_enabled

    def autograd_backward(ctx, *grads):
        return backward(recorded_backward if grad_enabled() else backward_op, ctx, *grads)

    # The kernel torch.library.register_autograd would register, wrapped to see forward-mode AD,
    # which that kernel does not: it would run the op and return the output without a tangent.
    first_order = torch._library.autograd.make_autograd_impl(
        forward_op, torch._library.autograd.Info(autograd_backward, save)
    )

    def autograd_kernel(keyset, *args):
        if forward_ad._current_level >= 0 and _has_tangent(args, forward_ad):  # one read when off
            if differentiable_forward is None:
                raise UnsupportedOperationError(
                    f"forward-mode AD (torch.func.jvp, torch.autograd.forward_ad) through "
                    f"{NAMESPACE}::{name} is not supported; use reverse mode (torch.autograd.grad)"
                )
            return differentiable_forward(*args)
        return first_order(keyset, *args)

    LIB.impl(name, autograd_kernel, "Autograd", with_keyset=True)
    EAGER[name] = _eager_function(name, impls, save, autograd_backward).apply
    return forward_op


def eager(name: str, op, like):
    """``EAGER[name]`` where it may stand in for ``op``: ``like`` (the first tensor
    argument) on a CUDA device or the CPU, not tracing (``torch.compile``), no
    ``torch.func`` transform, no forward-mode AD, no torch dispatch mode (``make_fx``,
    FakeTensor, FLOP counters: they must see the op); ``op`` itself anywhere else."""
    if (
        like.device.type not in ("cuda", "cpu")
        or torch.compiler.is_compiling()
        or torch._C._functorch.peek_interpreter_stack() is not None
        or torch.autograd.forward_ad._current_level >= 0
        or torch._C._len_torch_dispatch_stack() > 0
    ):
        return op
    return EAGER[name]


def _eager_function(name: str, impls: Impls, save: Callable, autograd_backward: Callable):
    """The op's first-order autograd as a plain autograd.Function that calls the device's
    implementation directly: the same formula (``save``, ``autograd_backward``) as the
    registered Autograd kernel, without the dispatcher round trip and the generated
    Function of ``torch.library`` (default filling, keyset metadata, redispatch). For
    eager calls only (see :data:`EAGER`)."""

    def forward(ctx, *args):
        x = args[0]
        impl = impls.any_device or (impls.cuda if x.is_cuda else impls.cpu)
        out = impl(*args)
        save(ctx, args, out)
        return out

    return type(f"{name}_eager", (torch.autograd.Function,),
                {"forward": staticmethod(forward), "backward": staticmethod(autograd_backward)})  # fmt: skip


def _recorded_backward(name: str, backward_op, save_backward, double_backward) -> Callable:
    """``backward_op`` as an autograd.Function: same arguments, same outputs (a list),
    and ``double_backward`` as its derivative, or an UnsupportedOperationError
    raised when one is asked for (no ``double_backward``)."""

    def setup_context(ctx, inputs, output):
        if save_backward is not None:
            save_backward(ctx, inputs, list(output))

    def derivative(ctx, *grads):
        if double_backward is None:
            raise UnsupportedOperationError(
                f"second derivatives through {NAMESPACE}::{name} are not supported "
                f"(create_graph=True, then a backward through its gradient)"
            )
        return double_backward(ctx, list(grads))

    function = type(
        f"{name}_backward",
        (torch.autograd.Function,),
        {
            "forward": staticmethod(lambda *args: tuple(backward_op(*args))),
            "setup_context": staticmethod(setup_context),
            "backward": staticmethod(derivative),
        },
    )
    return lambda *args: list(function.apply(*args))


def _has_tangent(args, forward_ad) -> bool:
    """Whether a tensor argument holds a forward-mode tangent at the current level."""
    return any(isinstance(a, torch.Tensor) and forward_ad.unpack_dual(a).tangent is not None for a in args)


def empty_if_none(outs, like) -> list:
    """Not-needed gradients as empty tensors (the schema returns ``Tensor[]``)."""
    return [o if o is not None else like.new_empty(0) for o in outs]


def none_unless(grads, needs) -> list:
    """The gradients the autograd formula returns: None where not needed."""
    return [g if need else None for g, need in zip(grads, needs)]
