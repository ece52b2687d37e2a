r"""``compress(model, bits_per_weight, codec, layers)``: replaces ``nn.Linear`` modules in
place by compressed layers and reports, per layer, the stored bits and the error.

Budget: every stored bit of a layer (codes, residual, scales, factors, bias as float16)
divided by its number of weights is at most ``bits_per_weight``. Per codec:

* ``"rbe"``: :class:`~xpu_stone.rbe.layer.RBELinear` fitted by
  :meth:`~xpu_stone.rbe.layer.RBELinear.from_linear`, with the setting of
  :func:`rbe_setting` (the most residual bits that leave room for at least one atom,
  then 32-tiles before 64-tiles, then the most atoms: on real weights the residual
  carries most of the accuracy, see ``benchmarks/bench_rbe.py``) unless ``setting`` is
  given;
* ``"svd"``: :class:`~xpu_stone.rbe.codecs.SVDLinear` with the largest rank that fits,
  float16 and int8 factors both tried, the lower error kept;
* ``"int4"``: :class:`~xpu_stone.rbe.codecs.GroupQuantLinear` (fixed at about
  ``4.125`` bits plus the bias; an error when the budget is smaller);
* ``"auto"``: each of these that fits, the lowest error kept, per layer.

The error is the relative Frobenius error :math:`\|W - \hat W\|_F / \|W\|_F` of the
weight matrix (``materialize()`` of the new layer).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InvalidArgumentError, UnsupportedOperationError
from .codecs import GroupQuantLinear, SVDLinear, svd_bits
from .generator import stored_bits
from .layer import RBELinear

__all__ = ["CODECS", "LayerReport", "compress", "rbe_setting"]

CODECS = ("rbe", "svd", "int4", "auto")


@dataclass(frozen=True)
class LayerReport:
    """One replaced layer: ``name`` in the model, the codec and its setting, the shape
    ``(out, in)``, every stored bit, bits a weight (all stored bits over ``out * in``) and
    the relative Frobenius error of the weight."""

    name: str
    codec: str
    setting: str
    shape: tuple[int, int]
    stored_bits: int
    bits_per_weight: float
    rel_error: float


def rbe_setting(out: int, inp: int, bits_per_weight: float, bias: bool) -> dict:
    """The ``RBELinear`` setting ``{"tile", "atoms", "residual_bits"}`` used for a budget
    (module docstring). Raises :class:`~xpu_stone.errors.UnsupportedOperationError` when
    not even one atom of a 64-tile fits."""
    budget = bits_per_weight * out * inp
    for b in (4, 3, 2, 1, 0):
        for tile in (32, 64):
            for j in range(8, 0, -1):
                if stored_bits(out, inp, tile, j, b, bias).total <= budget:
                    return {"tile": tile, "atoms": j, "residual_bits": b}
    raise UnsupportedOperationError(
        f"no RBE setting of a ({out}, {inp}) layer fits {bits_per_weight} bits a weight"
    )


def _rel_error(layer, weight) -> float:
    w = weight.detach().to(torch.float64)
    with torch.no_grad():
        return ((layer.materialize(torch.float64).cpu() - w.cpu()).norm() / w.norm()).item()


def _svd_candidates(lin: nn.Linear, budget_bits: float):
    out, inp = lin.weight.shape
    bias = lin.bias is not None
    for factors in ("float16", "int8"):
        rank = 0
        while rank < min(out, inp) and svd_bits(out, inp, rank + 1, factors, bias).total <= budget_bits:
            rank += 1
        if rank:
            yield f"{factors} factors, rank {rank}", SVDLinear(lin.weight, lin.bias, rank, factors)


def _candidates(lin: nn.Linear, codec: str, bits_per_weight, rbe_options: dict):
    """``(codec, setting text, layer)`` of every layer the codec may use within the budget."""
    out, inp = lin.weight.shape
    budget = None if bits_per_weight is None else bits_per_weight * out * inp
    if codec in ("rbe", "auto"):
        opts = dict(rbe_options)
        setting = opts.pop("setting", None) or rbe_setting(out, inp, bits_per_weight, lin.bias is not None)
        layer = RBELinear.from_linear(lin, **setting, **opts)
        if budget is None or layer.stored_bits().total <= budget:
            text = (
                f"tile {setting['tile']}, {setting['atoms']} atoms, {setting['residual_bits']}-bit residual"
            )
            yield "rbe", text, layer
    if codec in ("svd", "auto"):
        for text, layer in _svd_candidates(lin, budget):
            yield "svd", text, layer
    if codec in ("int4", "auto"):
        layer = GroupQuantLinear(lin.weight, lin.bias)
        if budget is None or layer.stored_bits().total <= budget:
            yield "int4", "group 128, float16 scales", layer


def _select(model: nn.Module, layers) -> list[tuple[str, nn.Linear]]:
    if isinstance(model, nn.Linear):
        raise InvalidArgumentError(
            "model is an nn.Linear itself: compress replaces the linear modules inside a model"
        )
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if layers is None:
        return found
    if callable(layers):
        return [(n, m) for n, m in found if layers(n)]
    names = list(layers)
    known = dict(found)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InvalidArgumentError(f"layers {unknown} are not nn.Linear modules of the model")
    return [(n, known[n]) for n in names]


def compress(
    model: nn.Module,
    bits_per_weight: float | None = None,
    codec: str = "rbe",
    layers: Iterable[str] | Callable[[str], bool] | None = None,
    **rbe_options,
) -> list[LayerReport]:
    """Replaces the ``nn.Linear`` modules of ``model`` (all, the names in ``layers``, or
    those ``layers(name)`` accepts) by compressed ones, in place, and returns one
    :class:`LayerReport` each. ``rbe_options`` go to :meth:`RBELinear.from_linear`
    (``setting={"tile": .., "atoms": .., "residual_bits": ..}`` overrides
    :func:`rbe_setting`). Everything is checked before a layer is replaced."""
    if codec not in CODECS:
        raise InvalidArgumentError(f"codec must be one of {CODECS}, got {codec!r}")
    if bits_per_weight is None and (
        codec in ("svd", "auto") or (codec == "rbe" and "setting" not in rbe_options)
    ):
        raise InvalidArgumentError(f"codec {codec!r} needs bits_per_weight")
    if bits_per_weight is not None and (isinstance(bits_per_weight, bool) or not bits_per_weight > 0):
        raise InvalidArgumentError(f"bits_per_weight must be a positive number, got {bits_per_weight!r}")
    chosen = []
    for name, lin in _select(model, layers):
        best = None
        for c, text, layer in _candidates(lin, codec, bits_per_weight, rbe_options):
            err = _rel_error(layer, lin.weight)
            if best is None or err < best[3]:
                best = (c, text, layer, err)
        if best is None:
            raise UnsupportedOperationError(
                f"layer {name!r} {tuple(lin.weight.shape)}: codec {codec!r} cannot meet {bits_per_weight} bits a weight"
            )
        chosen.append((name, lin, best))
    reports = []
    for name, lin, (c, text, layer, err) in chosen:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, layer.to(lin.weight.device))
        bits = layer.stored_bits()
        reports.append(LayerReport(name, c, text, tuple(lin.weight.shape), bits.total, bits.per_weight, err))
    return reports
