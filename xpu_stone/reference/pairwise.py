"""Pairwise distances and nearest neighbours written plainly in torch: every pair
formed by broadcasting (an ``N x M x D`` tensor), the distance from the
difference of the points (NaN for a row that is not a point of the model). The
oracle of the tests (run it in float64) and the "plain" baseline of the
benchmarks; ``c`` is a float or a 0-d tensor.
"""

from __future__ import annotations

import torch

from . import lorentz as L
from . import poincare as P


def cdist_poincare(x, y, c=1.0):
    r""":math:`d(x_i, y_j) = \frac{2}{\sqrt c}\operatorname{artanh}(\sqrt c\|(-x_i)\oplus_c y_j\|)`."""
    return P.dist(x.unsqueeze(-2), y.unsqueeze(-3), c)


def cdist_lorentz(x, y, c=1.0):
    r""":math:`d(x_i, y_j) = \frac{1}{\sqrt c}\operatorname{arcosh}(1 + \frac c2\langle x_i-y_j, x_i-y_j\rangle_L)`
    (equal to :math:`\operatorname{arcosh}(-c\langle x_i,y_j\rangle_L)/\sqrt c` on the hyperboloid,
    without its cancellation for nearby points)."""
    c = torch.as_tensor(c, dtype=x.dtype, device=x.device)
    diff = x.unsqueeze(-2) - y.unsqueeze(-3)
    sq = diff[..., 1:].square().sum(-1) - diff[..., 0].square()
    d = torch.acosh(1 + (0.5 * c * sq).clamp_min(0)) / c.sqrt()
    return L.nan_off(d.unsqueeze(-1), c, x.unsqueeze(-2), y.unsqueeze(-3)).squeeze(-1)  # NaN for non-points


def cdist_gemm(x, y, c=1.0, model="poincare"):
    """The same distances through one matmul, as a torch user would write them
    (the strong baseline of the benchmarks; no snapping of nearby pairs)."""
    c = torch.as_tensor(c, dtype=x.dtype, device=x.device)
    g = x @ y.transpose(-1, -2)
    if model == "poincare":
        xx = x.square().sum(-1, keepdim=True)
        yy = y.square().sum(-1).unsqueeze(-2)
        sq = (xx + yy - 2 * g).clamp_min(0)
        z = 1 + 2 * c * sq / ((1 - c * xx) * (1 - c * yy))
    else:
        z = -c * (g - 2 * x[..., :, :1] * y[..., :, 0].unsqueeze(-2))
    return torch.acosh(z.clamp_min(1 + 1e-7)) / c.sqrt()


def cdist(x, y, c=1.0, model="poincare"):
    return cdist_poincare(x, y, c) if model == "poincare" else cdist_lorentz(x, y, c)


def knn(x, y, k, c=1.0, model="poincare"):
    """Brute force: every distance, then the k smallest per row (sorted)."""
    return torch.topk(cdist(x, y, c, model), k, dim=-1, largest=False, sorted=True)


def lorentz_points(shape, c=1.0, dtype=torch.float64, gen=None, scale=1.0):
    """Points of the hyperboloid <x,x>_L = -1/c: random space part, time from the constraint."""
    space = torch.randn(*shape[:-1], shape[-1] - 1, generator=gen, dtype=torch.float64) * scale
    time = torch.sqrt(1 / c + space.square().sum(-1, keepdim=True))
    return torch.cat([time, space], dim=-1).to(dtype)
