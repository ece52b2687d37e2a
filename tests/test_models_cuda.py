"""GPU tests of the Lorentz and Klein kernels and the conversions (skipped
without a CUDA GPU).

Every op x dtype x D x rows on the stress grid against the float64 evaluation
of the same maths (the CPU transcription, run in float64), outputs poisoned
with NaN before each launch; the fp64 kernels against the textbook references
on well-conditioned inputs; gradients against autograd of the float64
transcription; opcheck; strided input; CuPy arrays.
"""

from __future__ import annotations

import pytest
import torch
from helpers import DTYPE_NAME, FWD_TOL, GRAD_TOL, MODEL_OPS, model_args, rel_err

from xpu_stone import convert as C
from xpu_stone import klein as K
from xpu_stone import lorentz as L
from xpu_stone.constants import BOUNDARY_EPS
from xpu_stone.engine import OPS as TORCH_OPS
from xpu_stone.engine import checks, rowwise_cpu
from xpu_stone.ops import convert as OC
from xpu_stone.ops import klein as OK
from xpu_stone.ops import lorentz as OL
from xpu_stone.reference import convert as RC
from xpu_stone.reference import klein as RK
from xpu_stone.reference import lorentz as RL

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("poisoned_outputs")]

MODULES = {"lorentz": L, "klein": K, "convert": C}
REFERENCES = {"lorentz": RL, "klein": RK, "convert": RC}
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
DIMS = (1, 3, 16, 17, 64, 100, 127, 256, 1000, 1024, 4096, 4097)
ROWS = (0, 1, 7, 4099)
CURVATURES = (1e-3, 1.0, 1e3)


def _ids(case):
    return f"{case[0]}.{case[1]}"


def _row_op(family, name):
    if (family, name) == ("klein", "project"):
        from xpu_stone.ops import poincare as OP

        return OP.PROJECT
    return getattr({"lorentz": OL, "klein": OK, "convert": OC}[family], name.upper())


def _eps(family, name, dtype):
    return BOUNDARY_EPS[DTYPE_NAME[dtype]] if name == "project" and family == "klein" else 0.0


def _call(family, name, args, c, dtype):
    fn = getattr(MODULES[family], name)
    if name == "project" and family == "klein":
        return fn(*args, c=c, eps=_eps(family, name, dtype))
    return fn(*args, c=c)


def _transcription(family, name, args, c, dtype):
    """The kernel's maths in float64 torch (differentiable)."""
    op = _row_op(family, name)
    up = [a.double() for a in args]
    t = up.pop() if op.param is not None else None
    cc = c.double() if isinstance(c, torch.Tensor) else None
    c_val = 0.0 if cc is not None else float(c)
    out = rowwise_cpu.cpu_forward(op, up, cc, c_val, t, 0.0, _eps(family, name, dtype))
    batch = checks.batch_shape(up, cc, t)
    return out.expand(batch if op.scalar_out else (*batch, out.shape[-1]))


def _skip(family, name, d):
    """D = 1: the hyperboloid is a single point (nothing to convert; a tangent
    vector there is zero up to rounding, so relative errors are noise)."""
    return d == 1 and (family == "lorentz" or name in ("lorentz_to_poincare", "lorentz_to_klein"))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", MODEL_OPS, ids=_ids)
def test_forward_matches_float64(case, dtype):
    family, name = case
    failures = []
    n = 0
    for d in DIMS:
        if _skip(family, name, d):
            continue
        for rows in ROWS:
            n += 1
            c = CURVATURES[n % 3]
            args = model_args(family, name, rows, d, c, dtype, seed=n, device="cuda")
            if n % 4 == 0 and rows:  # per-row curvature tensor
                c = torch.full((rows, 1), c, device="cuda", dtype=torch.float32)
            out = _call(family, name, args, c, dtype)
            ref = _transcription(family, name, args, c, dtype)
            assert out.shape == ref.shape and out.dtype == dtype, (d, rows)
            if rows == 0:
                continue
            if not torch.isfinite(out).all():
                failures.append((d, rows, "non-finite output"))
                continue
            if dtype == torch.float16:
                ref = ref.clamp(-65504, 65504)
            # values below the dtype's smallest normal (e.g. the clamped 1e-100 norm of a
            # zero vector) cannot be held to any relative accuracy
            err = rel_err(out, ref, torch.finfo(dtype).tiny)
            if not err <= FWD_TOL[dtype]:
                failures.append((d, rows, err))
    assert not failures, failures


@pytest.mark.parametrize("case", MODEL_OPS, ids=_ids)
def test_fp64_kernels_match_textbook_reference(case):
    family, name = case
    for d in (2, 17, 130):
        args = model_args(family, name, 300, d, 0.7, torch.float64, seed=d, device="cuda", nice=True)
        out = getattr(MODULES[family], name)(*args, c=0.7)
        ref = getattr(REFERENCES[family], name)(*args, c=0.7)
        assert rel_err(out, ref) < 1e-9, (d, rel_err(out, ref))


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64, torch.bfloat16), ids=str)
@pytest.mark.parametrize("case", MODEL_OPS, ids=_ids)
def test_grads_match_float64(case, dtype):
    family, name = case
    failures = []
    for n, (d, rows) in enumerate(((3, 7), (17, 4099), (64, 7), (1000, 7), (4097, 7))):
        c0 = CURVATURES[n % 3]
        args = [
            a.requires_grad_()
            for a in model_args(family, name, rows, d, c0, dtype, seed=50 + n, device="cuda")
        ]
        c = torch.full(
            (rows, 1), c0, device="cuda", dtype=torch.float64 if dtype == torch.float64 else torch.float32
        )
        c.requires_grad_()
        out = _call(family, name, args, c, dtype)
        g = torch.randn(
            out.shape, generator=torch.Generator("cuda").manual_seed(n), device="cuda", dtype=torch.float64
        )
        grads = torch.autograd.grad(out, [*args, c], g.to(dtype))
        up = [a.detach().double().requires_grad_() for a in args]
        c64 = c.detach().double().requires_grad_()
        ref = _transcription(family, name, up, c64, dtype)
        ref_grads = torch.autograd.grad(ref, [*up, c64], g, allow_unused=True)  # inner ignores c
        ref_grads = [torch.zeros_like(b) if r is None else r for r, b in zip(ref_grads, [*up, c64])]
        floor = g.norm().item() / g.numel() ** 0.5
        for k, (a, b) in enumerate(zip(grads, ref_grads)):
            if not torch.isfinite(a).all():
                failures.append((d, k, "non-finite"))
            elif not rel_err(a, b, floor) <= GRAD_TOL[dtype]:
                failures.append((d, k, rel_err(a, b, floor)))
    assert not failures, failures


@pytest.mark.parametrize("case", MODEL_OPS, ids=_ids)
def test_opcheck_cuda(case):
    family, name = case
    op = _row_op(family, name)
    args = [
        a.requires_grad_()
        for a in model_args(family, name, 9, 12, 1.0, torch.float32, seed=5, device="cuda", nice=True)
    ]
    t = args.pop() if op.param is not None else None
    c = torch.full((9, 1), 0.8, device="cuda", requires_grad=True)
    torch.library.opcheck(TORCH_OPS[op.qualname], (*args, c, 1.0, t, 0.0, _eps(family, name, torch.float32)))


def test_strided_broadcast_and_batched_inputs_of_shifted_ops():
    # well inside (round trips through fp32 ball points near the boundary lose digits by design)
    y = model_args(
        "convert", "lorentz_to_poincare", 4 * 6, 9, 2.0, torch.float32, seed=1, device="cuda", nice=True
    )[0]
    y = y.reshape(4, 6, 9)
    wide = torch.stack((y, y), -1)[..., 0]  # element stride 2
    for fn in (C.lorentz_to_poincare, C.lorentz_to_klein):
        assert torch.equal(fn(wide, c=2.0), fn(y.contiguous(), c=2.0))
    x = C.lorentz_to_poincare(y, c=2.0)
    back = C.poincare_to_lorentz(x.transpose(0, 1), c=2.0).transpose(0, 1)
    assert rel_err(back, y) < 1e-5
    c = torch.tensor([[[1.0]], [[2.0]], [[3.0]], [[4.0]]], device="cuda")  # per batch row
    k = C.poincare_to_klein(x, c=c)
    assert rel_err(k, RC.poincare_to_klein(x.double(), c.double())) < 1e-6
    u, v = (model_args("lorentz", "dist", 6, 9, 1.0, torch.float32, seed=s, device="cuda")[0] for s in (3, 4))
    assert L.dist(u[None], v[:, None]).shape == (6, 6)  # broadcast rows


def test_cupy_arrays_match_torch():
    cp = pytest.importorskip("cupy")
    for family, name in (
        ("lorentz", "geodesic"),
        ("convert", "poincare_to_lorentz"),
        ("convert", "lorentz_to_klein"),
        ("klein", "dist"),
    ):
        args = model_args(family, name, 1000, 33, 1.5, torch.float32, seed=9, device="cuda", nice=True)
        want = getattr(MODULES[family], name)(*args, c=1.5)
        got = getattr(MODULES[family], name)(*(cp.asarray(a) for a in args), c=1.5)
        assert isinstance(got, cp.ndarray)
        assert torch.equal(torch.as_tensor(got, device="cuda"), want), (family, name)


def test_einstein_midpoint_on_gpu_matches_reference():
    x = model_args("klein", "lorentz_factor", 64 * 5, 7, 2.0, torch.float32, seed=2, device="cuda")[
        0
    ].reshape(64, 5, 7)
    w = torch.rand(64, 5, device="cuda")
    out = K.einstein_midpoint(x, w, dim=1, c=2.0)
    ref = RK.einstein_midpoint(x.double(), w.double(), dim=1, c=2.0)
    assert rel_err(out, ref) < 1e-5
