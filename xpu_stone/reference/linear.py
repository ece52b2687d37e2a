r"""Hyperbolic linear maps written plainly in torch, from the papers' formulas:
the oracle of the tests (run it in float64) and the baseline of the benchmarks.

* Ganea, Bécigneul & Hofmann, *Hyperbolic Neural Networks* (NeurIPS 2018):
  Möbius matrix-vector product, Poincaré MLR with offsets :math:`p_k` and normals :math:`a_k`.
* Shimizu, Mukuta & Harada, *Hyperbolic Neural Networks++* (ICLR 2021):
  unidirectional MLR and the Poincaré fully-connected layer.
"""

from __future__ import annotations

import torch

from . import poincare as P

EPS = 1e-15


def _c(c, like):
    return torch.as_tensor(c, dtype=like.dtype, device=like.device)


def _norm(x):
    return x.norm(dim=-1, keepdim=True).clamp_min(EPS)


def mobius_matvec(M, x, c=1.0):
    r""":math:`\frac{1}{\sqrt c}\tanh(\frac{\|Mx\|}{\|x\|}\operatorname{artanh}(\sqrt c\|x\|))\frac{Mx}{\|Mx\|}`."""
    sc = _c(c, x).sqrt()
    mx = x @ M.transpose(-1, -2)
    xn, mxn = _norm(x), _norm(mx)
    art = torch.atanh((sc * xn).clamp(-1 + EPS, 1 - EPS))
    return torch.tanh((mxn / xn * art).clamp(-15, 15)) * mx / (mxn * sc)


def mlr_ganea(x, p, a, c=1.0):
    r"""Ganea et al. (2018), eq. (25): for classes with offsets ``p`` ``(K, D)`` in the
    ball and normals ``a`` ``(K, D)``,
    :math:`\frac{\lambda_{p_k}\|a_k\|}{\sqrt c}\operatorname{asinh}\Big(\frac{2\sqrt c
    \langle(-p_k)\oplus_c x, a_k\rangle}{(1-c\|(-p_k)\oplus_c x\|^2)\|a_k\|}\Big)`."""
    c = _c(c, x)
    sc = c.sqrt()
    diff = P.mobius_add(-p, x.unsqueeze(-2), c)  # (*, K, D)
    lam_p = 2 / (1 - c * p.square().sum(-1))
    an = a.norm(dim=-1)
    num = 2 * sc * (diff * a).sum(-1)
    den = (1 - c * diff.square().sum(-1)) * an
    return lam_p * an / sc * torch.asinh(num / den)


def mlr_hnnpp(x, z, r, c=1.0):
    r"""HNN++ unidirectional MLR: :math:`\frac{2\|z_k\|}{\sqrt c}\operatorname{asinh}(\sqrt c
    \lambda_x\langle x, z_k/\|z_k\|\rangle\cosh(2\sqrt c r_k) - (\lambda_x-1)\sinh(2\sqrt c r_k))`,
    ``z`` ``(D, K)``, ``r`` ``(K,)``."""
    c = _c(c, x)
    sc = c.sqrt()
    lam = 2 / (1 - c * x.square().sum(-1, keepdim=True))
    zn = z.norm(dim=0)
    q = sc * lam * (x @ (z / zn)) * torch.cosh(2 * sc * r) - (lam - 1) * torch.sinh(2 * sc * r)
    return 2 * zn / sc * torch.asinh(q)


def hnnpp_to_ganea(z, r, c=1.0):
    r"""The Ganea (p, a) of HNN++'s (z, r): :math:`p_k = \exp_0(r_k z_k/\|z_k\|)`,
    :math:`a_k = \operatorname{sech}^2(\sqrt c\,r_k)\,z_k` (rows of the results are classes)."""
    c = _c(c, z)
    zt = z.transpose(0, 1)
    unit = zt / zt.norm(dim=-1, keepdim=True)
    p = P.expmap0(r[:, None] * unit, c)
    a = zt / torch.cosh(c.sqrt() * r[:, None]) ** 2
    return p, a


def poincare_fc(x, z, r, c=1.0):
    r"""HNN++ Poincaré FC layer: :math:`w = \sinh(\sqrt c\,v(x))/\sqrt c`,
    :math:`y = w/(1+\sqrt{1+c\|w\|^2})`."""
    c = _c(c, x)
    sc = c.sqrt()
    w = torch.sinh(sc * mlr_hnnpp(x, z, r, c)) / sc
    return w / (1 + torch.sqrt(1 + c * w.square().sum(-1, keepdim=True)))


def hyp_linear(x, weight, bias, c=1.0):
    r"""The hyperbolic linear layer of HNN / hyptorch / HGCN:
    :math:`\operatorname{proj}((W\otimes_c x)\oplus_c b)`, ``bias`` a point of the ball."""
    return P.project(P.mobius_add(mobius_matvec(weight, x, c), bias, c), c)
