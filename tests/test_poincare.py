"""CPU tests of the Poincare ops: the reference against geoopt and closed forms,
geometry identities, the kernels' maths (CPU transcription) against the
reference over the stress grid, float64 gradcheck of the backward assembly,
finiteness near the boundary, and bad-input errors."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import (
    DTYPE_NAME,
    FWD_TOL,
    GRAD_TOL,
    OPS,
    ball_points,
    op_args,
    row_inputs,
    settled_error,
    settled_grad_errors,
    tangent_vectors,
)

import xpu_stone
from xpu_stone import poincare as P
from xpu_stone.constants import BOUNDARY_EPS
from xpu_stone.errors import InvalidArgumentError, InvalidCurvatureError, ShapeMismatchError
from xpu_stone.reference import poincare as R

geoopt = pytest.importorskip("geoopt")
from geoopt.manifolds.stereographic import math as gm  # noqa: E402

CURVATURES = (1e-3, 1.0, 1e3)


def _eps(name, dtype):
    return {"eps": BOUNDARY_EPS[DTYPE_NAME[dtype]]} if name == "project" else {}


# ------------------------------------------------------------ the reference
GEOOPT = {
    "mobius_add": lambda x, y, k: gm.mobius_add(x, y, k=k),
    "mobius_sub": lambda x, y, k: gm.mobius_sub(x, y, k=k),
    "mobius_scalar_mul": lambda r, x, k: gm.mobius_scalar_mul(r, x, k=k),
    "expmap0": lambda u, k: gm.expmap0(u, k=k),
    "logmap0": lambda y, k: gm.logmap0(y, k=k),
    "expmap": lambda x, u, k: gm.expmap(x, u, k=k),
    "logmap": lambda x, y, k: gm.logmap(x, y, k=k),
    "dist": lambda x, y, k: gm.dist(x, y, k=k),
    "dist0": lambda x, k: gm.dist0(x, k=k),
    "lambda_x": lambda x, k: gm.lambda_x(x, k=k),
    "gyration": lambda a, b, u, k: gm.gyration(a, b, u, k=k),
    "transp": lambda x, y, v, k: gm.parallel_transport(x, y, v, k=k),
    "geodesic": lambda u, v, t, k: gm.geodesic(t, u, v, k=k),
}


@pytest.mark.parametrize("name", sorted(GEOOPT))
@pytest.mark.parametrize("c", (0.5, 2.0))
def test_reference_matches_geoopt(name, c):
    gen = torch.Generator().manual_seed(3)
    x, y, z = (ball_points((50, 7), c, torch.float64, "cpu", gen) * 0.9 for _ in range(3))
    u = tangent_vectors((50, 7), torch.float64, "cpu", gen)
    t = torch.rand(50, 1, generator=gen, dtype=torch.float64)
    args = op_args(name, x, y, z, u, t)
    ours = getattr(R, name)(*args, c=c)
    theirs = GEOOPT[name](*args, torch.tensor(-c, dtype=torch.float64))
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)


def test_reference_closed_forms_in_one_dimension():
    # On a line the Mobius sum is the relativistic velocity sum (x + y) / (1 + c x y).
    x = torch.tensor([[0.3], [-0.6]], dtype=torch.float64)
    y = torch.tensor([[0.5], [0.2]], dtype=torch.float64)
    c = 2.0
    torch.testing.assert_close(R.mobius_add(x, y, c), (x + y) / (1 + c * x * y))
    torch.testing.assert_close(
        R.dist0(x, c), (2 / math.sqrt(c)) * torch.atanh(math.sqrt(c) * x.abs()).squeeze(-1)
    )
    expected = (2 / math.sqrt(c)) * torch.atanh(math.sqrt(c) * ((y - x) / (1 - c * x * y)).abs())
    torch.testing.assert_close(R.dist(x, y, c), expected.squeeze(-1))


# ------------------------------------------------- identities (xpu_stone)
@pytest.mark.parametrize("c", CURVATURES)
def test_identities(c):
    x, y, z, u, t = row_inputs(200, 9, c, torch.float64, seed=4)
    x, y = x * 0.999, y * 0.999  # away from the boundary, where identities are well-conditioned
    tol = dict(rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(P.mobius_add(-x, P.mobius_add(x, y, c), c), y, **tol)  # left cancellation
    torch.testing.assert_close(P.expmap(x, P.logmap(x, y, c), c), y, rtol=1e-7, atol=1e-10)
    w = u * 0.1 / math.sqrt(c)  # sqrt(c)|w| < 4: tanh far from saturation
    torch.testing.assert_close(P.logmap0(P.expmap0(w, c), c), w, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(P.dist(x, y, c), P.dist(y, x, c), **tol)  # symmetry
    assert (P.dist(x, z, c) <= P.dist(x, y, c) + P.dist(y, z, c) + 1e-9).all()  # triangle inequality
    torch.testing.assert_close(P.geodesic(x, y, 0.0, c), x, **tol)
    torch.testing.assert_close(P.geodesic(x, y, 1.0, c), y, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(
        P.dist(x, P.geodesic(x, y, 0.25, c), c), 0.25 * P.dist(x, y, c), rtol=1e-6, atol=1e-9
    )
    torch.testing.assert_close(P.mobius_sub(x, y, c), P.mobius_add(x, -y, c), **tol)
    torch.testing.assert_close(P.dist0(x, c), P.dist(torch.zeros_like(x), x, c), **tol)
    # gyrations are isometries; transport preserves the Riemannian norm lambda |v|
    torch.testing.assert_close(P.gyration(x, y, z, c).norm(dim=-1), z.norm(dim=-1), rtol=1e-8, atol=1e-12)
    v = P.transp(x, y, u, c)
    torch.testing.assert_close(
        P.lambda_x(y, c) * v.norm(dim=-1), P.lambda_x(x, c) * u.norm(dim=-1), rtol=1e-7, atol=1e-9
    )
    p = P.project(u, c)
    assert (p.norm(dim=-1) * math.sqrt(c) <= 1 - BOUNDARY_EPS["float64"] + 1e-12).all()


# ------------------------------------- the kernels' maths against the oracle
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64, torch.bfloat16, torch.float16), ids=str)
@pytest.mark.parametrize("name", OPS)
def test_kernel_maths_matches_reference(name, dtype):
    """The CPU path runs the kernels' formulas (xpu_stone.engine.rowwise_cpu): forward within
    the dtype's tolerance of the reference over the stress grid, every row the
    float64 reference gets wrong settled at 60 digits."""
    failures = []
    for d in (1, 3, 17, 64):
        for k, c in enumerate(CURVATURES):
            x, y, z, u, t = row_inputs(300, d, c, dtype, seed=10 * d + k)
            args = op_args(name, x, y, z, u, t)
            out = getattr(P, name)(*args, c=c, **_eps(name, dtype))
            ref = getattr(R, name)(*[a.double() for a in args], c=c, **_eps(name, dtype))
            eps = BOUNDARY_EPS[DTYPE_NAME[dtype]]
            err, _ = settled_error(name, out, ref, args, c, eps, FWD_TOL[dtype])
            if not err <= FWD_TOL[dtype]:
                failures.append((d, c, err))
    assert not failures, failures


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("name", OPS)
def test_kernel_grads_match_reference(name, dtype):
    failures = []
    for d in (1, 17, 64):
        for k, c0 in enumerate(CURVATURES):
            x, y, z, u, t = row_inputs(200, d, c0, dtype, seed=100 + 10 * d + k)
            c = torch.full((200, 1), c0, requires_grad=True)
            args = [a.detach().requires_grad_() for a in op_args(name, x, y, z, u, t)]
            out = getattr(P, name)(*args, c=c, **_eps(name, dtype))
            g = torch.randn(out.shape, generator=torch.Generator().manual_seed(d), dtype=torch.float64)
            grads = torch.autograd.grad(out, [*args, c], g.to(dtype))
            up = [a.detach().double().requires_grad_() for a in args]
            c64 = c.detach().double().requires_grad_()
            ref = getattr(R, name)(*up, c=c64, **_eps(name, dtype))
            ref_grads = torch.autograd.grad(ref, [*up, c64], g)
            eps = BOUNDARY_EPS[DTYPE_NAME[dtype]]
            for j, err in enumerate(
                settled_grad_errors(name, grads, ref_grads, args, c, g, eps, GRAD_TOL[dtype])
            ):
                if not err <= GRAD_TOL[dtype]:
                    failures.append((d, c0, j, err))
    assert not failures, failures


@pytest.mark.parametrize("name", OPS)
def test_gradcheck_of_backward_formulas(name):
    """float64 gradcheck of the backward the kernels use (dual-number adjoints and
    the term/dot assembly), for every input including a per-row c and t."""
    gen = torch.Generator().manual_seed(0)
    x, y, z = ((torch.randn(4, 5, generator=gen, dtype=torch.float64) * 0.2) for _ in range(3))
    u = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    t = torch.rand(4, 1, generator=gen, dtype=torch.float64)
    args = [a.requires_grad_() for a in op_args(name, x, y, z, u, t)]
    c = torch.tensor([[0.7], [1.3], [2.0], [0.2]], dtype=torch.float64, requires_grad=True)
    fn = getattr(P, name)
    assert torch.autograd.gradcheck(lambda *a: fn(*a[:-1], c=a[-1]), (*args, c))


def test_gradcheck_broadcast_operands_and_scalar_c():
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(3, 4, 5, generator=gen, dtype=torch.float64) * 0.15).requires_grad_()
    y = (torch.randn(1, 5, generator=gen, dtype=torch.float64) * 0.15).requires_grad_()
    c = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    t = torch.rand(4, 1, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, cc: P.dist(a, b, cc), (x, y, c))
    assert torch.autograd.gradcheck(lambda a, b, tt, cc: P.geodesic(a, b, tt, cc), (x, y, t, c))


def test_opcheck_cpu():
    from xpu_stone.engine import OPS as TORCH_OPS

    x, y, z, u, t = row_inputs(6, 4, 1.0, torch.float64, seed=2)
    for name in OPS:
        args = [a.requires_grad_() for a in op_args(name, x, y, z, u, t)]
        vecs = [a for a in args if a is not t]
        tt = t if name in ("geodesic", "mobius_scalar_mul") else None
        c = torch.full((6, 1), 0.8, dtype=torch.float64, requires_grad=True)
        eps = 1e-5 if name == "project" else 0.0
        torch.library.opcheck(TORCH_OPS[f"poincare_{name}"], (*vecs, c, 1.0, tt, 0.0, eps))


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64, torch.bfloat16, torch.float16), ids=str)
def test_no_nan_near_the_boundary_or_at_zero(dtype):
    for c in CURVATURES:
        x, y, z, u, t = row_inputs(500, 8, c, dtype, seed=7, boundary=True)
        x[:5] = 0  # zero vectors
        for name in OPS:
            args = [a.detach().requires_grad_() for a in op_args(name, x, y, z, u, t)]
            out = getattr(P, name)(*args, c=c)
            assert torch.isfinite(out).all(), (name, c)
            grads = torch.autograd.grad(out.float().sum(), args)
            assert all(torch.isfinite(g).all() for g in grads), (name, c)


def test_inputs_are_not_modified():
    x, y, *_ = row_inputs(10, 6, 1.0, torch.float32, seed=8)
    before = (x.clone(), y.clone())
    P.project(x * 10)
    P.mobius_add(x, y)
    assert torch.equal(x, before[0]) and torch.equal(y, before[1])


def test_keepdim_and_batch_shapes():
    x = torch.rand(2, 3, 4) * 0.1
    y = torch.rand(3, 4) * 0.1
    assert P.dist(x, y).shape == (2, 3)
    assert P.dist(x, y, keepdim=True).shape == (2, 3, 1)
    assert P.mobius_add(x, y).shape == (2, 3, 4)
    assert P.lambda_x(x, keepdim=True).shape == (2, 3, 1)
    assert P.mobius_add(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, 4)
    assert P.dist(torch.zeros(2, 0, 4), torch.zeros(1, 4)).shape == (2, 0)


# ----------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: P.mobius_add(torch.zeros(3, 4), torch.zeros(3, 5)), ShapeMismatchError, "features"),
        (lambda: P.mobius_add(torch.zeros(3, 4), torch.zeros(2, 4)), ShapeMismatchError, "broadcast"),
        (
            lambda: P.mobius_add(torch.zeros(3, 4, dtype=torch.int64), torch.zeros(3, 4)),
            InvalidArgumentError,
            "x must be",
        ),
        (
            lambda: P.mobius_add(torch.zeros(3, 4, dtype=torch.complex64), torch.zeros(3, 4)),
            InvalidArgumentError,
            "x must be",
        ),
        (
            lambda: P.mobius_add(torch.zeros(3, 4), torch.zeros(3, 4, dtype=torch.float64)),
            InvalidArgumentError,
            "dtype",
        ),
        (lambda: P.mobius_add(torch.zeros(3, 4), [0.0] * 4), InvalidArgumentError, "y must be"),
        (lambda: P.dist(torch.zeros(3, 0), torch.zeros(3, 0)), ShapeMismatchError, "empty feature"),
        (lambda: P.dist0(torch.zeros(())), ShapeMismatchError, "0-d"),
        (lambda: P.expmap0(torch.zeros(3, 4), c=0.0), InvalidCurvatureError, "c must be"),
        (lambda: P.expmap0(torch.zeros(3, 4), c=-1.0), InvalidCurvatureError, "c must be"),
        (lambda: P.expmap0(torch.zeros(3, 4), c=float("nan")), InvalidCurvatureError, "c must be"),
        (lambda: P.expmap0(torch.zeros(3, 4), c=float("inf")), InvalidCurvatureError, "c must be"),
        (lambda: P.expmap0(torch.zeros(3, 4), c=True), InvalidCurvatureError, "c must be"),
        (
            lambda: P.expmap0(torch.zeros(3, 4), c=torch.tensor([[1.0], [-1.0], [1.0]])),
            InvalidCurvatureError,
            "positive",
        ),
        (lambda: P.expmap0(torch.zeros(3, 4), c=torch.ones(3)), ShapeMismatchError, "one value per row"),
        (lambda: P.expmap0(torch.zeros(3, 4), c=torch.ones(2, 1)), ShapeMismatchError, "broadcast"),
        (
            lambda: P.geodesic(torch.zeros(3, 4), torch.zeros(3, 4), float("nan")),
            InvalidArgumentError,
            "t must be",
        ),
        (
            lambda: P.geodesic(torch.zeros(3, 4), torch.zeros(3, 4), torch.tensor([[float("inf")]] * 3)),
            InvalidArgumentError,
            "finite",
        ),
        (lambda: P.mobius_scalar_mul("2", torch.zeros(3, 4)), InvalidArgumentError, "r must be"),
    ],
)
def test_bad_input_raises_typed_error(call, error, words):
    with pytest.raises(error, match=words):
        call()
    assert issubclass(error, xpu_stone.XpuStoneError)


def test_cpu_and_cuda_mix_is_rejected():
    x = torch.zeros(3, 4)
    y = torch.zeros(3, 4, device="meta")
    with pytest.raises(InvalidArgumentError, match="is on meta"):
        P.mobius_add(x, y)


def test_bad_keepdim_and_eps_raise_before_anything_runs():
    from xpu_stone import klein

    x = torch.rand(3, 4, dtype=torch.float32) * 0.1
    for fn in (
        lambda: P.dist(x, x, keepdim="yes"),
        lambda: P.lambda_x(x, keepdim=1),
        lambda: klein.dist(x, x, keepdim="no"),
    ):
        with pytest.raises(xpu_stone.InvalidArgumentError, match="keepdim"):
            fn()
    for eps in (2, -0.5, float("nan"), 0.0, True, "1e-3"):
        with pytest.raises(xpu_stone.InvalidArgumentError, match="eps"):
            P.project(x, eps=eps)
    with pytest.raises(xpu_stone.InvalidArgumentError, match="rounds to 1"):
        P.project(x, eps=1e-8)  # 1 - 1e-8 is 1.0 in float32
    with pytest.raises(xpu_stone.InvalidArgumentError, match="rounds to 1"):
        klein.project(x.half(), eps=1e-5)
    assert P.project(x.double(), eps=1e-8).shape == x.shape  # float64 holds it
    assert P.dist(x, x, keepdim=True).shape == (3, 1)


def test_interop_rejects_wrong_types():
    pytest.importorskip("cupy")
    with pytest.raises(xpu_stone.InvalidArgumentError, match="torch.Tensor"):
        xpu_stone.to_cupy([1.0, 2.0])
    with pytest.raises(xpu_stone.InvalidArgumentError, match="CUDA tensor"):
        xpu_stone.to_cupy(torch.zeros(2))
    with pytest.raises(xpu_stone.InvalidArgumentError, match="cupy.ndarray"):
        xpu_stone.to_torch([1.0, 2.0])
