"""Float64 oracle of the Riemannian SGD / Adam steps, written directly from the
definitions (Riemannian gradient, exponential map or retraction, projection,
parallel transport) with xpu_stone.reference.poincare and the Lorentz
descriptor; shared by test_optim.py and test_optim_cuda.py."""

from __future__ import annotations

import torch

from xpu_stone.manifolds import Euclidean, Lorentz, ManifoldParameter, PoincareBall
from xpu_stone.reference import poincare as ref


def rgrad(m, x, g):
    if isinstance(m, PoincareBall):
        return g / ref.lambda_x(x, m.c, keepdim=True) ** 2
    return m.egrad2rgrad(x, g)


def rnorm2(m, x, r):
    if isinstance(m, PoincareBall):
        return ref.lambda_x(x, m.c, keepdim=True) ** 2 * (r * r).sum(-1, keepdim=True)
    return m.inner(x, r)


def move(m, x, u, retraction):
    if isinstance(m, PoincareBall):
        y = x + u if retraction == "retr" else ref.expmap(x, u, m.c)
        return ref.project(y, m.c, m.boundary_eps(torch.float32))
    return m.projx(x + u) if retraction == "retr" else m.expmap(x, u)


def transport(m, x, y, v):
    return ref.transp(x, y, v, m.c) if isinstance(m, PoincareBall) else m.transp(x, y, v)


class Oracle:
    """Steps one parameter ``x`` (float64 copy) like the optimizer under test. ``opt``
    is ``"sgd"`` or ``"adam"``; ``rows``: None (all rows) or the updated row indices."""

    def __init__(self, manifold, x, opt, retraction="expmap", **hp):
        self.m, self.x, self.opt, self.retraction, self.hp = manifold, x.double().clone(), opt, retraction, hp
        self.t = 0
        self.buf = torch.zeros_like(self.x)
        per_row = not isinstance(manifold, Euclidean)
        self.v = torch.zeros((*self.x.shape[:-1], 1) if per_row else self.x.shape, dtype=torch.float64)
        self.vmax = torch.zeros_like(self.v)

    def step(self, g, rows=None):
        hp, m = self.hp, self.m
        self.t += 1
        sel = slice(None) if rows is None else rows
        x, buf, v, vmax = self.x[sel], self.buf[sel], self.v[sel], self.vmax[sel]
        g = g.double() + hp.get("weight_decay", 0.0) * x
        euclid = isinstance(m, Euclidean)
        r = g if euclid else rgrad(m, x, g)
        if self.opt == "adam":
            b1, b2 = hp.get("betas", (0.9, 0.999))
            buf = b1 * buf + (1 - b1) * r
            v = b2 * v + (1 - b2) * (r * r if euclid else rnorm2(m, x, r))
            vh = v
            if hp.get("amsgrad", False):
                vmax = torch.maximum(vmax, v)
                vh = vmax
            u = -hp["lr"] * (buf / (1 - b1**self.t)) / ((vh / (1 - b2**self.t)).sqrt() + hp.get("eps", 1e-8))
        else:
            mu, damp = hp.get("momentum", 0.0), hp.get("dampening", 0.0)
            if mu > 0:
                buf = r.clone() if self.t == 1 else mu * buf + (1 - damp) * r
                u = -hp["lr"] * (r + mu * buf if hp.get("nesterov", False) else buf)
            else:
                u = -hp["lr"] * r
        if euclid:
            y = x + u
        else:
            y = move(m, x, u, self.retraction)
            buf = transport(m, x, y, buf)
        self.x[sel], self.buf[sel], self.v[sel], self.vmax[sel] = y, buf, v, vmax


def grad_scale(m, x):
    r"""Per-row factor that gives a random test gradient at ``x`` the size a real loss
    gives it: 1, except on the hyperboloid, where it is :math:`1/x_0`. There a unit-normal
    Euclidean gradient has a Riemannian norm that grows with :math:`x_0`, so plain SGD takes
    steps of length ~100 and carries points to :math:`\cosh(\text{distance})` beyond float
    range within two steps (the oracle to inf / NaN), whereas the gradient of a loss of
    distances falls like :math:`1/x_0` in hyperboloid coordinates."""
    if not isinstance(m, Lorentz):
        return torch.ones((*x.shape[:-1], 1), dtype=torch.float64)
    return 1.0 / x[..., :1].double()


def random_point(manifold, shape, gen, dtype=torch.float64, device="cpu"):
    z = torch.randn(shape, dtype=torch.float64, generator=gen)
    if isinstance(manifold, PoincareBall):
        r = torch.rand((*shape[:-1], 1), dtype=torch.float64, generator=gen) * 0.95
        z = z / z.norm(dim=-1, keepdim=True) * r / manifold.c**0.5
    elif isinstance(manifold, Lorentz):
        z = manifold.projx(z * 0.7)
    return ManifoldParameter(z.to(device=device, dtype=dtype), manifold)


CASES = [
    ("adam", dict(lr=0.05)),
    ("adam", dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, amsgrad=True)),
    ("sgd", dict(lr=0.1)),
    ("sgd", dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
    ("sgd", dict(lr=0.05, momentum=0.8, dampening=0.3)),
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True)),
]
MANIFOLDS = [PoincareBall(1.0), PoincareBall(0.3), Lorentz(1.0), Lorentz(2.5), Euclidean()]
