"""The conversions between the models, written plainly in torch (each from its
textbook definition). ``c`` is a float or a tensor broadcasting against ``x[..., :1]``.
A row whose input is not a point of its model (outside the closed ball or disk, off
the hyperboloid: the rules of :mod:`.poincare`, :mod:`.klein` and :mod:`.lorentz`)
gives NaN."""

from __future__ import annotations

import torch

from .klein import nan_outside as _klein_point
from .lorentz import nan_off as _hyperboloid_point
from .poincare import nan_outside as _ball_point

ARG_KINDS = {
    "poincare_to_lorentz": "b",
    "lorentz_to_poincare": "p",
    "poincare_to_klein": "b",
    "klein_to_poincare": "b",
    "lorentz_to_klein": "p",
    "klein_to_lorentz": "b",
}  # b = a ball point (Poincare or Klein), p = a hyperboloid point


def _c(c, like):
    return torch.as_tensor(c, dtype=like.dtype, device=like.device)


def _sq(x):
    return (x * x).sum(-1, keepdim=True)


def poincare_to_lorentz(x, c=1.0):
    c = _c(c, x)
    den = 1 - c * _sq(x)
    return _ball_point(torch.cat(((1 + c * _sq(x)) / (c.sqrt() * den), 2 * x / den), -1), c, x)


def lorentz_to_poincare(y, c=1.0):
    return _hyperboloid_point(y[..., 1:] / (1 + _c(c, y).sqrt() * y[..., :1]), c, y)


def poincare_to_klein(x, c=1.0):
    return _ball_point(2 * x / (1 + _c(c, x) * _sq(x)), c, x)


def klein_to_poincare(k, c=1.0):
    return _klein_point(k / (1 + (1 - _c(c, k) * _sq(k)).sqrt()), c, k)


def lorentz_to_klein(y, c=1.0):
    return _hyperboloid_point(y[..., 1:] / (_c(c, y).sqrt() * y[..., :1]), c, y)


def klein_to_lorentz(k, c=1.0):
    c = _c(c, k)
    g = 1 / (1 - c * _sq(k)).sqrt()
    return _klein_point(torch.cat((g / c.sqrt(), g * k), -1), c, k)
