"""Shared test data: points on the stress grid of DESIGN.md, op call tables."""

from __future__ import annotations

import math

import torch

from xpu_stone.constants import BOUNDARY_EPS

LOW_PRECISION = (torch.float16, torch.bfloat16)
DTYPE_NAME = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
}
FWD_TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
GRAD_TOL = {torch.float64: 1e-8, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def ball_points(shape, c=1.0, dtype=torch.float64, device="cpu", gen=None, boundary=True):
    """Random points of the ball of radius 1/sqrt(c) with norms spread over the
    stress grid: log-uniform in [1e-15, 1), 1 - log-uniform in [1e-7, 1]
    (close to the boundary), exact zeros, and uniform. For fp16/bf16 the points
    are kept within the dtype's boundary margin so that they stay inside after
    rounding. Returned in ``dtype``."""
    gen = gen or torch.Generator().manual_seed(0)
    *batch, d = shape
    n = math.prod(batch)
    direction = torch.randn(n, d, generator=gen, dtype=torch.float64)
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    kind = torch.randint(0, 10, (n,), generator=gen)
    log_small = 10 ** (-15 * u)  # (1e-15, 1]
    near = 1 - 10 ** (-7 * u)  # [0, 1 - 1e-7]
    r = torch.where(kind < 4, log_small, torch.where(kind < 7, near, u))
    if not boundary:
        r = r * 0.9
    r = torch.where(kind == 9, torch.zeros_like(r), r)
    # fp32 rounding moves norms by ~6e-8: keep 2e-7 so rounded points stay inside.
    margin = {torch.float64: 1e-7, torch.float32: 2e-7}.get(dtype, BOUNDARY_EPS[DTYPE_NAME[dtype]] * 2)
    r = r.clamp_max(1 - margin)
    x = direction * r[:, None]
    c_t = torch.as_tensor(c, dtype=torch.float64)
    x = x.reshape(*batch, d) / torch.sqrt(c_t)
    return x.to(dtype).to(device)


def tangent_vectors(shape, dtype=torch.float64, device="cpu", gen=None, scale=1.0):
    gen = gen or torch.Generator().manual_seed(1)
    n = math.prod(shape[:-1])
    mag = 10 ** (torch.rand(n, 1, generator=gen, dtype=torch.float64) * 4 - 3) * scale
    v = torch.randn(*shape, generator=gen, dtype=torch.float64) * mag.reshape(*shape[:-1], 1)
    return v.to(dtype).to(device)


def rel_err(out, ref) -> float:
    out = out.double()
    ref = ref.double()
    den = ref.norm().item()
    num = (out - ref).norm().item()
    if den == 0:
        return num
    return num / den


# Each op: (arguments built from (x, y, z, u, t) where x, y, z are ball points,
# u a tangent vector, t a per-row weight), and whether its first vector argument
# may be far outside (project).
def op_args(name, x, y, z, u, t):
    return {
        "mobius_add": (x, y),
        "mobius_sub": (x, y),
        "mobius_scalar_mul": (t, x),
        "expmap0": (u,),
        "logmap0": (x,),
        "expmap": (x, u),
        "logmap": (x, y),
        "dist": (x, y),
        "dist0": (x,),
        "project": (u,),
        "lambda_x": (x,),
        "gyration": (x, y, z),
        "transp": (x, y, u),
        "geodesic": (x, y, t),
    }[name]


OPS = (
    "mobius_add",
    "mobius_sub",
    "mobius_scalar_mul",
    "expmap0",
    "logmap0",
    "expmap",
    "logmap",
    "dist",
    "dist0",
    "project",
    "lambda_x",
    "gyration",
    "transp",
    "geodesic",
)
