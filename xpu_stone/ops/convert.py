"""Conversions between the models as row descriptions: a line-for-line mirror
of the structs in ``cuda_src/convert.cu``."""

from __future__ import annotations

from .._deps import torch
from ..constants import MIN_DENOM
from ..engine.rowop import ALONE, E0
from ..engine.rowwise import row_op
from ..engine.rowwise_cpu import clamp_min

__all__ = [
    "POINCARE_TO_KLEIN",
    "KLEIN_TO_POINCARE",
    "POINCARE_TO_LORENTZ",
    "LORENTZ_TO_POINCARE",
    "LORENTZ_TO_KLEIN",
    "KLEIN_TO_LORENTZ",
]  # the row ops of this family

X = 0
_ONE = ((X, ALONE),)
_WITH_E0 = ((X, ALONE), (E0, ALONE))
_SQ = ((0, 0),)
_HEAD = ((0, 1),)  # <y, e0> = y_0


def _poincare_to_klein(dot, c, t, eps):
    return [2 / (1 + c * dot[0])]


def _klein_to_poincare(dot, c, t, eps):
    return [1 / (1 + torch.sqrt(clamp_min(1 - c * dot[0], MIN_DENOM)))]


def _poincare_to_lorentz(dot, c, t, eps):
    a = clamp_min(1 - c * dot[0], MIN_DENOM)
    return [(1 + c * dot[0]) / (torch.sqrt(c) * a), 2 / a]


def _lorentz_to_poincare(dot, c, t, eps):
    return [1 / clamp_min(1 + torch.sqrt(c) * dot[0], MIN_DENOM)]


def _lorentz_to_klein(dot, c, t, eps):
    return [1 / clamp_min(torch.sqrt(c) * dot[0], MIN_DENOM)]


def _klein_to_lorentz(dot, c, t, eps):
    g = 1 / torch.sqrt(clamp_min(1 - c * dot[0], MIN_DENOM))
    return [g / torch.sqrt(c), g]


def _op(name, struct, vectors, terms, dots, out, coeffs, **kw):
    return row_op("convert", name, struct, vectors, terms, dots, out, coeffs, **kw)


POINCARE_TO_KLEIN = _op(
    "poincare_to_klein", "ConvertPoincareToKlein", ("x",), _ONE, _SQ, (0,), _poincare_to_klein
)
KLEIN_TO_POINCARE = _op(
    "klein_to_poincare", "ConvertKleinToPoincare", ("k",), _ONE, _SQ, (0,), _klein_to_poincare
)
POINCARE_TO_LORENTZ = _op(
    "poincare_to_lorentz",
    "ConvertPoincareToLorentz",
    ("x",),
    _WITH_E0,
    _SQ,
    (1, 0),
    _poincare_to_lorentz,
    in_shift=1,
)
LORENTZ_TO_POINCARE = _op(
    "lorentz_to_poincare",
    "ConvertLorentzToPoincare",
    ("y",),
    _WITH_E0,
    _HEAD,
    (0,),
    _lorentz_to_poincare,
    out_shift=1,
)
LORENTZ_TO_KLEIN = _op(
    "lorentz_to_klein", "ConvertLorentzToKlein", ("y",), _WITH_E0, _HEAD, (0,), _lorentz_to_klein, out_shift=1
)
KLEIN_TO_LORENTZ = _op(
    "klein_to_lorentz",
    "ConvertKleinToLorentz",
    ("k",),
    _WITH_E0,
    _SQ,
    (1, 0),
    _klein_to_lorentz,
    in_shift=1,
)
