r"""Isometries between the Poincaré ball, the hyperboloid and the Klein model,
all of curvature :math:`-c`. With the hyperboloid point :math:`y = (y_0, y_{1:})`:

.. math::

    x = \frac{y_{1:}}{1 + \sqrt c\, y_0}, \qquad
    k = \frac{y_{1:}}{\sqrt c\, y_0}, \qquad
    k = \frac{2x}{1 + c\|x\|^2}, \qquad
    x = \frac{k}{1 + \sqrt{1 - c\|k\|^2}},

    y = \frac{\big((1 + c\|x\|^2)/\sqrt c,\; 2x\big)}{1 - c\|x\|^2}, \qquad
    y = \frac{(1/\sqrt c,\; k)}{\sqrt{1 - c\|k\|^2}} .

Hyperboloid points have one more feature (the time coordinate, first) than
ball points. Each map preserves distances for every ``c`` (geoopt's
Poincaré-to-Lorentz map is only right for ``c = 1``). Inputs as in
:mod:`xpu_stone.poincare`; gradients flow through all six.
"""

from __future__ import annotations

from . import engine
from .ops import convert as _ops

__all__ = [
    "poincare_to_lorentz",
    "lorentz_to_poincare",
    "poincare_to_klein",
    "klein_to_poincare",
    "lorentz_to_klein",
    "klein_to_lorentz",
]

_call = engine.call


def poincare_to_lorentz(x, c=1.0):
    r"""Ball point ``x`` (D features) to the hyperboloid (D + 1):
    :math:`\big((1 + c\|x\|^2)/\sqrt c,\; 2x\big)/(1 - c\|x\|^2)`."""
    return _call(_ops.POINCARE_TO_LORENTZ, (x,), c)


def lorentz_to_poincare(y, c=1.0):
    r"""Hyperboloid point ``y`` (D + 1 features) to the ball (D):
    :math:`y_{1:}/(1 + \sqrt c\, y_0)`."""
    return _call(_ops.LORENTZ_TO_POINCARE, (y,), c)


def poincare_to_klein(x, c=1.0):
    r""":math:`2x/(1 + c\|x\|^2)`."""
    return _call(_ops.POINCARE_TO_KLEIN, (x,), c)


def klein_to_poincare(k, c=1.0):
    r""":math:`k/(1 + \sqrt{1 - c\|k\|^2})`."""
    return _call(_ops.KLEIN_TO_POINCARE, (k,), c)


def lorentz_to_klein(y, c=1.0):
    r"""Hyperboloid point (D + 1 features) to the Klein model (D): :math:`y_{1:}/(\sqrt c\, y_0)`."""
    return _call(_ops.LORENTZ_TO_KLEIN, (y,), c)


def klein_to_lorentz(k, c=1.0):
    r"""Klein point (D features) to the hyperboloid (D + 1):
    :math:`(1/\sqrt c,\; k)/\sqrt{1 - c\|k\|^2}`."""
    return _call(_ops.KLEIN_TO_LORENTZ, (k,), c)
