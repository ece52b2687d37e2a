"""CPU tests of the Lorentz and Klein models and the conversions: the kernels'
maths (their torch transcription) against the textbook references and geoopt,
geometric identities, float64 gradcheck of the backward formulas, the stress
grid without NaN, bad input."""

from __future__ import annotations

import geoopt
import pytest
import torch
from helpers import MODEL_OPS, hyperboloid_points, model_args, rel_err

import xpu_stone
from xpu_stone import convert as C
from xpu_stone import klein as K
from xpu_stone import lorentz as L
from xpu_stone import poincare as P
from xpu_stone.errors import InvalidArgumentError, ShapeMismatchError
from xpu_stone.reference import convert as RC
from xpu_stone.reference import klein as RK
from xpu_stone.reference import lorentz as RL

MODULES = {"lorentz": L, "klein": K, "convert": C}
REFERENCES = {"lorentz": RL, "klein": RK, "convert": RC}
SHIFTED = {"lorentz_to_poincare", "lorentz_to_klein"}  # need two features or more


def _ids(case):
    return f"{case[0]}.{case[1]}"


@pytest.mark.parametrize("case", MODEL_OPS, ids=_ids)
@pytest.mark.parametrize("c", (0.5, 2.0))
def test_kernel_maths_matches_textbook_reference(case, c):
    family, name = case
    for d in (2, 5, 33):
        args = model_args(family, name, 64, d, c, torch.float64, seed=d, nice=True)
        out = getattr(MODULES[family], name)(*args, c=c)
        ref = getattr(REFERENCES[family], name)(*args, c=c)
        assert out.shape == ref.shape
        assert rel_err(out, ref) < 1e-9, (d, rel_err(out, ref))


GEOOPT_LORENTZ = {
    "inner": "inner",
    "norm": "norm",
    "dist": "dist",
    "dist0": "dist0",
    "expmap": "expmap",
    "logmap": "logmap",
    "logmap0": "logmap0",
    "project": "projx",
    "proj_tan": "proju",
    "transp": "transp",
}


@pytest.mark.parametrize("name", sorted(GEOOPT_LORENTZ))
@pytest.mark.parametrize("c", (0.5, 2.0))
def test_lorentz_matches_geoopt(name, c):
    """geoopt.Lorentz(k) has <x,x>_L = -k: k = 1/c. Its clamps (eps 1e-7 and
    the like) bound the agreement."""
    args = model_args("lorentz", name, 64, 6, c, torch.float64, seed=3, nice=True)
    ours = getattr(L, name)(*args, c=c)
    if name == "inner":  # geoopt's inner takes the base point first
        args = (args[0], *args)
    theirs = getattr(geoopt.Lorentz(k=1 / c), GEOOPT_LORENTZ[name])(*args)
    assert rel_err(ours, theirs.reshape(ours.shape)) < 1e-5


@pytest.mark.parametrize("c", (0.01, 1.0, 4.0, 100.0))
def test_conversions_are_isometries(c):
    x, y = (model_args("convert", "poincare_to_klein", 200, 7, c, torch.float64, seed=s)[0] for s in (1, 2))
    d = P.dist(x, y, c=c)
    lx, ly = C.poincare_to_lorentz(x, c=c), C.poincare_to_lorentz(y, c=c)
    kx, ky = C.poincare_to_klein(x, c=c), C.poincare_to_klein(y, c=c)
    assert lx.shape == (200, 8) and kx.shape == (200, 7)
    assert rel_err(L.dist(lx, ly, c=c), d) < 1e-7
    assert rel_err(K.dist(kx, ky, c=c), d) < 1e-7
    # every path between the models agrees
    assert rel_err(C.lorentz_to_klein(lx, c=c), kx) < 1e-9
    assert rel_err(C.klein_to_lorentz(kx, c=c), lx) < 1e-7
    assert rel_err(C.lorentz_to_poincare(lx, c=c), x) < 1e-9
    assert rel_err(C.klein_to_poincare(kx, c=c), x) < 1e-7
    # hyperboloid points land on the hyperboloid
    assert rel_err(L.inner(lx, lx), torch.full((200,), -1 / c, dtype=torch.float64)) < 1e-9


@pytest.mark.parametrize("c", (0.3, 1.0, 7.0))
def test_lorentz_identities(c):
    x, y, z = (
        hyperboloid_points((300, 5), c, gen=torch.Generator().manual_seed(s), max_dist=4) for s in range(3)
    )
    dxy, dyz, dxz = L.dist(x, y, c=c), L.dist(y, z, c=c), L.dist(x, z, c=c)
    assert torch.allclose(dxy, L.dist(y, x, c=c), rtol=1e-10, atol=1e-12)
    assert bool((dxz <= dxy + dyz + 1e-9).all())
    v = L.logmap(x, y, c=c)
    assert rel_err(L.expmap(x, v, c=c), y) < 1e-9
    assert L.inner(x, v).abs().max() < 1e-8 * (1 + v.abs().max())  # tangent at x
    assert rel_err(L.norm(v), dxy) < 1e-9
    u = L.logmap0(y, c=c)
    assert rel_err(L.expmap0(u, c=c), y) < 1e-10
    assert rel_err(L.dist0(y, c=c), L.norm(u)) < 1e-10
    for t in (0.0, 0.25, 1.0):
        g = L.geodesic(x, y, t, c=c)
        assert torch.allclose(L.dist(x, g, c=c), t * dxy, rtol=1e-8, atol=1e-12)
    assert rel_err(L.geodesic(x, y, 1.0, c=c), y) < 1e-9
    w = L.proj_tan(x, torch.randn(300, 5, dtype=torch.float64), c=c)
    moved = L.transp(x, y, w, c=c)
    assert rel_err(L.inner(moved, moved), L.inner(w, w)) < 1e-8  # an isometry of tangent spaces
    assert L.inner(moved, y).abs().max() < 1e-7 * (1 + moved.abs().max() * y.abs().max())
    p = L.project(torch.randn(300, 5, dtype=torch.float64), c=c)
    assert rel_err(L.inner(p, p), torch.full((300,), -1 / c, dtype=torch.float64)) < 1e-12


@pytest.mark.parametrize("c", (0.3, 1.0, 7.0))
def test_klein_geodesic_and_midpoint(c):
    u, v = (model_args("klein", "dist", 100, 4, c, torch.float64, seed=s, nice=True)[0] for s in (5, 6))
    d = K.dist(u, v, c=c)
    for t in (0.0, 0.3, 1.0):
        g = K.geodesic(u, v, t, c=c)
        assert torch.allclose(K.dist(u, g, c=c), t * d, rtol=1e-8, atol=1e-12)
        # on the chord from u to v
        along = ((g - u) * (v - u)).sum(-1) / ((v - u) ** 2).sum(-1)
        assert rel_err(g, u + along[:, None] * (v - u)) < 1e-9
    lu, lv = C.klein_to_lorentz(u, c=c), C.klein_to_lorentz(v, c=c)
    assert rel_err(K.geodesic(u, v, 0.3, c=c), C.lorentz_to_klein(L.geodesic(lu, lv, 0.3, c=c), c=c)) < 1e-9
    pts = torch.stack((u, v), dim=1)  # (100, 2, 4)
    mid = K.einstein_midpoint(pts, dim=1, c=c)
    assert rel_err(K.dist(u, mid, c=c), K.dist(mid, v, c=c)) < 1e-8  # the midpoint of two points
    w = torch.rand(100, 2, dtype=torch.float64)
    assert rel_err(K.einstein_midpoint(pts, w, dim=1, c=c), RK.einstein_midpoint(pts, w, dim=1, c=c)) < 1e-12
    assert K.einstein_midpoint(pts, w, dim=1, c=c, keepdim=True).shape == (100, 1, 4)


@pytest.mark.parametrize("case", MODEL_OPS, ids=_ids)
def test_gradcheck_of_backward_formulas(case):
    """float64 gradcheck of the backward kernels' maths (the CPU transcription),
    for every input, a per-row c and a per-row t."""
    family, name = case
    args = model_args(family, name, 5, 4, 0.7, torch.float64, seed=11, nice=True)
    args = [a.clone().requires_grad_() for a in args]
    c = torch.full((5, 1), 0.7, dtype=torch.float64, requires_grad=True)
    fn = getattr(MODULES[family], name)
    assert torch.autograd.gradcheck(lambda *a: fn(*a[:-1], c=a[-1]), (*args, c), atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64, torch.bfloat16, torch.float16), ids=str)
def test_stress_grid_has_no_nan_in_outputs_or_grads(dtype):
    for family, name in MODEL_OPS:
        for c in (1e-3, 1.0, 1e3):
            d = 17
            args = [a.requires_grad_() for a in model_args(family, name, 300, d, c, dtype, seed=7)]
            out = getattr(MODULES[family], name)(*args, c=c)
            assert torch.isfinite(out).all(), (family, name, c)
            grads = torch.autograd.grad(out.float().sum(), args, allow_unused=True)
            for g in grads:
                assert g is None or torch.isfinite(g).all(), (family, name, c)


def test_inputs_are_not_modified_and_batch_shapes():
    y = hyperboloid_points((3, 4, 6))
    keep = y.clone()
    assert C.lorentz_to_poincare(y).shape == (3, 4, 5)
    assert C.poincare_to_lorentz(C.lorentz_to_poincare(y)).shape == (3, 4, 6)
    assert L.dist(y, y[:1]).shape == (3, 4)
    assert L.inner(y, y, keepdim=True).shape == (3, 4, 1)
    assert torch.equal(y, keep)
    ync = torch.stack((y, y), -1)[..., 0]  # non-contiguous
    assert rel_err(C.lorentz_to_klein(ync), C.lorentz_to_klein(ync.contiguous())) == 0


def test_bad_input_raises_typed_errors():
    with pytest.raises(ShapeMismatchError, match="time coordinate"):
        C.lorentz_to_poincare(torch.ones(3, 1))
    with pytest.raises(ShapeMismatchError, match="space coordinate"):
        L.dist(torch.ones(3, 1), torch.ones(3, 1))
    with pytest.raises(ShapeMismatchError, match="features"):
        L.dist(torch.ones(3, 4), torch.ones(3, 5))
    with pytest.raises(InvalidArgumentError, match="feature dim"):
        K.einstein_midpoint(torch.zeros(3, 4), dim=-1)
    with pytest.raises(xpu_stone.InvalidCurvatureError):
        L.expmap0(torch.zeros(2, 3), c=-1.0)
    with pytest.raises(InvalidArgumentError, match="dtype"):
        K.geodesic(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.float64), 0.5)


def test_einstein_midpoint_bad_input():
    x = torch.rand(4, 3) * 0.1
    with pytest.raises(ShapeMismatchError, match="broadcast"):
        K.einstein_midpoint(x, torch.ones(5))
    for w in (torch.zeros(4), torch.tensor([1.0, -1.0, 1.0, 1.0]), torch.tensor([1.0, float("nan"), 1, 1])):
        with pytest.raises(InvalidArgumentError, match="non-negative"):
            K.einstein_midpoint(x, w)
    with pytest.raises(InvalidArgumentError, match="dtype"):
        K.einstein_midpoint(x, torch.ones(4, dtype=torch.float64))
    with pytest.raises(InvalidArgumentError, match="torch tensor"):
        K.einstein_midpoint(x, [1.0, 1.0, 1.0, 1.0])
    with pytest.raises(InvalidArgumentError, match="x must be"):
        K.einstein_midpoint(x.tolist())
    with pytest.raises(InvalidArgumentError, match="dim"):
        K.einstein_midpoint(x, dim=5)
    # one point with all the weight is that point
    torch.testing.assert_close(K.einstein_midpoint(x, torch.tensor([0.0, 2.0, 0.0, 0.0])), x[1])


def test_opcheck_cpu():
    from xpu_stone.engine import OPS

    for family, name in (
        ("lorentz", "geodesic"),
        ("convert", "poincare_to_lorentz"),
        ("convert", "lorentz_to_klein"),
    ):
        args = [
            a.requires_grad_() for a in model_args(family, name, 6, 5, 1.3, torch.float64, seed=2, nice=True)
        ]
        t = args.pop() if name == "geodesic" else None
        c = torch.full((6, 1), 1.3, dtype=torch.float64, requires_grad=True)
        torch.library.opcheck(OPS[f"{family}_{name}"], (*args, c, 1.0, t, 0.0, 0.0))
