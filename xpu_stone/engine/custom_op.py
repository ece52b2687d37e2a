"""The one scaffold that makes an op a torch custom op (``torch.ops.xpu_stone.<name>``).

Every op of the package, row-wise or GEMM-style, is defined here the same way:

* a schema and one implementation per dispatch key (``CUDA`` and ``CPU``, or
  one ``CompositeExplicitAutograd`` implementation for every device);
* a fake implementation (shapes only), so ``torch.compile`` traces through it;
* for a differentiable op, a second op ``<name>_backward`` defined likewise, and
  the autograd formula (``save`` = setup_context, ``backward`` calling the
  backward op), so that the backward is itself traceable and capturable.

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

__all__ = ["LIB", "Impls", "define", "define_differentiable", "empty_if_none", "none_unless"]

NAMESPACE = "xpu_stone"
LIB = torch.library.Library(NAMESPACE, "DEF") if torch is not None else None


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
):
    """Defines ``name`` and ``name_backward`` and registers the autograd formula:
    ``save(ctx, inputs, output)`` keeps what the backward needs, and
    ``backward(backward_op, ctx, *grad_outputs)`` returns one gradient (or None)
    per input of ``name``. Returns the forward's default overload."""
    forward_op = define(name, schema, impls)
    backward_op = define(f"{name}_backward", backward_schema, backward_impls)

    def autograd_backward(ctx, *grads):
        return backward(backward_op, ctx, *grads)

    torch.library.register_autograd(f"{NAMESPACE}::{name}", autograd_backward, setup_context=save, lib=LIB)
    return forward_op


def empty_if_none(outs, like) -> list:
    """Not-needed gradients as empty tensors (the schema returns ``Tensor[]``)."""
    return [o if o is not None else like.new_empty(0) for o in outs]


def none_unless(grads, needs) -> list:
    """The gradients the autograd formula returns: None where not needed."""
    return [g if need else None for g, need in zip(grads, needs)]
