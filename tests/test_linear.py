"""CPU tests of xpu_stone.linear (mobius_matvec, poincare_mlr, poincare_fc): the
GEMM-plus-epilogue maths against the papers' formulas in float64, HNN++'s MLR
against Ganea et al.'s (p, a) form, identities, float64 gradcheck of the
hand-written backward, torch.library registration, and bad-input errors."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import ball_points, rel_err

from xpu_stone import linear as L
from xpu_stone import poincare as P
from xpu_stone.errors import InvalidArgumentError, ShapeMismatchError, UnsupportedOperationError
from xpu_stone.ops import hyperbolic_linear as OL
from xpu_stone.reference import linear as RL

CURVATURES = (0.01, 1.0, 4.0, 100.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _ball(shape, c, gen, max_norm=0.9, dtype=torch.float64):
    d = torch.randn(*shape, generator=gen, dtype=torch.float64)
    d = d / d.norm(dim=-1, keepdim=True)
    r = torch.rand(*shape[:-1], 1, generator=gen, dtype=torch.float64) * max_norm
    return (d * r / math.sqrt(c)).to(dtype)


def _params(din, dout, gen, dtype=torch.float64):
    z = torch.randn(din, dout, generator=gen, dtype=torch.float64) / math.sqrt(din)
    r = torch.randn(dout, generator=gen, dtype=torch.float64) * 0.3
    return z.to(dtype), r.to(dtype)


@pytest.mark.parametrize("c", CURVATURES)
def test_float64_matches_reference(c):
    gen = torch.Generator().manual_seed(1)
    x = ball_points((64, 12), c, torch.float64, gen=gen)  # stress grid: zeros, tiny, boundary
    M = torch.randn(7, 12, generator=gen, dtype=torch.float64)
    z, r = _params(12, 7, gen)
    assert rel_err(L.mobius_matvec(M, x, c), RL.mobius_matvec(M, x, c)) < 1e-9
    xi = _ball((64, 12), c, gen)
    assert rel_err(L.poincare_mlr(xi, z, r, c), RL.mlr_hnnpp(xi, z, r, c)) < 1e-10
    assert rel_err(L.poincare_fc(xi, z, r, c), RL.poincare_fc(xi, z, r, c)) < 1e-10


@pytest.mark.parametrize("c", CURVATURES)
def test_mlr_equals_ganea_form(c):
    """HNN++'s (z, r) logits equal Ganea et al.'s with p = exp0(r z/|z|), a = sech^2(sqrt(c) r) z."""
    gen = torch.Generator().manual_seed(2)
    x = _ball((40, 5), c, gen)
    z, r = _params(5, 4, gen)
    p, a = RL.hnnpp_to_ganea(z, r, c)
    assert rel_err(L.poincare_mlr(x, z, r, c), RL.mlr_ganea(x, p, a, c)) < 1e-9


def test_matvec_identities():
    gen = torch.Generator().manual_seed(3)
    x = _ball((30, 6), 2.0, gen)
    M = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    # M (x) x = exp0(M log0(x)); the identity matrix is the identity map
    ref = P.expmap0(P.logmap0(x, 2.0) @ M.t(), 2.0)
    assert rel_err(L.mobius_matvec(M, x, 2.0), ref) < 1e-12
    assert rel_err(L.mobius_matvec(torch.eye(6, dtype=torch.float64), x, 2.0), x) < 1e-12
    # zero input rows and rows with Mx = 0 give 0
    x[0] = 0
    M2 = M.clone()
    M2[:, 0] = 0
    x[1] = 0
    x[1, 0] = 0.3
    out = L.mobius_matvec(M2, x, 2.0)
    assert torch.all(out[0] == 0) and torch.all(out[1] == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_low_precision(dtype):
    gen = torch.Generator().manual_seed(4)
    x = _ball((3, 10, 8), 1.0, gen, dtype=dtype)
    M = torch.randn(5, 8, generator=gen).to(dtype)
    z, r = _params(8, 5, gen, dtype)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for ours, ref in (
        (L.mobius_matvec(M, x), RL.mobius_matvec(M.double(), x.double())),
        (L.poincare_mlr(x, z, r), RL.mlr_hnnpp(x.double(), z.double(), r.double())),
        (L.poincare_fc(x, z, r), RL.poincare_fc(x.double(), z.double(), r.double())),
    ):
        assert ours.shape == (3, 10, 5) and ours.dtype == dtype
        assert rel_err(ours, ref) < tol


def test_boundary_and_large_biases_stay_finite():
    gen = torch.Generator().manual_seed(5)
    for c in CURVATURES:
        x = ball_points((40, 9), c, torch.float32, gen=gen, boundary=True).requires_grad_()
        M = torch.randn(9, 9, generator=gen).requires_grad_()
        z = torch.randn(9, 9, generator=gen).requires_grad_()
        r = (torch.randn(9, generator=gen) * 50).requires_grad_()
        for out in (L.mobius_matvec(M, x, c), L.poincare_mlr(x, z, r, c), L.poincare_fc(x, z, r, c)):
            assert torch.isfinite(out).all()
            grads = torch.autograd.grad(out.sum(), [t for t in (x, M, z, r)], allow_unused=True)
            assert all(g is None or torch.isfinite(g).all() for g in grads)


def test_gradcheck():
    gen = torch.Generator().manual_seed(6)
    for c in (0.5, 3.0):
        x = _ball((2, 3, 5), c, gen).requires_grad_()
        M = torch.randn(4, 5, generator=gen, dtype=torch.float64).requires_grad_()
        ct = torch.tensor(c, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda a, b, k: L.mobius_matvec(b, a, k), (x, M, ct))
        z, r = (t.requires_grad_() for t in _params(5, 4, gen))
        assert torch.autograd.gradcheck(lambda a, b, s, c=c: L.poincare_mlr(a, b, s, c), (x, z, r))
        assert torch.autograd.gradcheck(lambda a, b, s, c=c: L.poincare_fc(a, b, s, c), (x, z, r))


def test_gradients_match_reference_autograd():
    gen = torch.Generator().manual_seed(7)
    x = _ball((25, 6), 2.0, gen).requires_grad_()
    M = torch.randn(5, 6, generator=gen, dtype=torch.float64).requires_grad_()
    z, r = (t.requires_grad_() for t in _params(6, 5, gen))
    ct = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    g = torch.randn(25, 5, generator=gen, dtype=torch.float64)
    cases = (
        ((M, x, ct), L.mobius_matvec, RL.mobius_matvec),
        ((x, z, r, 2.0), L.poincare_mlr, RL.mlr_hnnpp),
        ((x, z, r, 2.0), L.poincare_fc, RL.poincare_fc),
    )
    for args, ours, ref in cases:
        wrt = [a for a in args if isinstance(a, torch.Tensor)]
        go = torch.autograd.grad(ours(*args), wrt, g)
        gr = torch.autograd.grad(ref(*args), wrt, g)
        for a, b in zip(go, gr):
            assert rel_err(a, b) < 1e-9


def test_opcheck_and_compile():
    gen = torch.Generator().manual_seed(8)
    x = _ball((4, 3), 1.0, gen).requires_grad_()
    M = torch.randn(2, 3, generator=gen, dtype=torch.float64).requires_grad_()
    z, r = (t.requires_grad_() for t in _params(3, 2, gen))
    c = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.xpu_stone.linear_mobius_matvec.default, (x, M, c, 1.0))
    for mode in (OL.MLR, OL.FC):
        torch.library.opcheck(torch.ops.xpu_stone.linear_hnn.default, (x, z, r, 1.5, mode))

    sq = torch.randn(3, 3, generator=gen, dtype=torch.float64)

    def f(a):
        return L.poincare_mlr(L.poincare_fc(L.mobius_matvec(sq, a, 1.5), z, r, 1.5), z[:2].t(), r, 1.5).sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    (g,) = torch.autograd.grad(compiled(x), x)
    (g_ref,) = torch.autograd.grad(f(x), x)
    assert torch.allclose(g, g_ref)


def test_bad_inputs():
    x = torch.rand(4, 3) * 0.1
    M = torch.randn(2, 3)
    z, r = torch.randn(3, 2), torch.zeros(2)
    with pytest.raises(ShapeMismatchError, match="M must have shape"):
        L.mobius_matvec(torch.randn(2, 4), x)
    with pytest.raises(InvalidArgumentError, match="dtype"):
        L.mobius_matvec(M.double(), x)
    with pytest.raises(ShapeMismatchError, match="z must have shape"):
        L.poincare_mlr(x, torch.randn(4, 2), r)
    with pytest.raises(ShapeMismatchError, match="r must have shape"):
        L.poincare_fc(x, z, torch.zeros(3))
    with pytest.raises(InvalidArgumentError, match="torch.Tensor"):
        L.poincare_fc(x.numpy(), z, r)
    with pytest.raises(UnsupportedOperationError, match="fixed curvature"):
        L.poincare_fc(x, z, r, torch.tensor(1.0, requires_grad=True))
    before = x.clone()
    L.poincare_fc(x, z, r)
    assert torch.equal(x, before)


def test_checked_mode_names_the_bad_row(monkeypatch):
    from xpu_stone import config
    from xpu_stone.errors import DomainError, NonFiniteError

    x = torch.rand(4, 3, dtype=torch.float64) * 0.1
    z, r = torch.rand(3, 2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    L.mobius_matvec(torch.eye(3, dtype=torch.float64), x.clone().fill_(2.0))  # off: no check
    monkeypatch.setattr(config, "check_finite", True)
    bad = x.clone()
    bad[2] = 2.0
    with pytest.raises(DomainError, match=r"row \(2,\) of x"):
        L.mobius_matvec(torch.eye(3, dtype=torch.float64), bad)
    bad[2] = float("nan")
    for fn in (L.poincare_fc, L.poincare_mlr):
        with pytest.raises(NonFiniteError, match=r"x has a NaN or inf in row \(2,\)"):
            fn(bad, z, r)
    with pytest.raises(NonFiniteError, match="z has"):
        L.poincare_fc(x, z.clone().fill_(float("inf")), r)
