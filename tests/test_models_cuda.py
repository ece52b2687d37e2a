"""GPU tests of the Lorentz and Klein kernels and the conversions (skipped
without a CUDA GPU).

The oracle is ``tests/mp_reference_models.py``: each op's textbook formula,
written independently of the kernels and of their CPU transcription. Its float64
evaluation (``xpu_stone.reference``, or the oracle's own float64 evaluation for
the Lorentz ops where that reference is a different function off the
hyperboloid: ``OWN_FAST_PATH``) is the fast path; rows on which it and the kernel
disagree beyond the tolerance are settled at 60 digits (mpmath).

Every op x dtype (fp32, fp64, fp16, bf16) x D x rows on the stress grid forward,
outputs poisoned with NaN before each launch; gradients (every input and a
per-row c) in every dtype; fp16 values whose exact value overflows compare with
the reference clamped to +-65504 (``helpers.saturate_fp16``); the fp64 kernels
against the textbook references on well-conditioned inputs; opcheck; strided
input; CuPy arrays.
"""

from __future__ import annotations

import mp_reference_models as MR
import pytest
import torch
from helpers import (
    FWD_TOL,
    GRAD_TOL,
    MODEL_MODULES,
    MODEL_OPS,
    model_args,
    model_call,
    model_eps,
    rel_err,
    saturate_fp16,
    settled_error,
    settled_grad_errors,
)

from xpu_stone import convert as C
from xpu_stone import klein as K
from xpu_stone import lorentz as L
from xpu_stone.engine import OPS as TORCH_OPS
from xpu_stone.ops import convert as OC
from xpu_stone.ops import klein as OK
from xpu_stone.ops import lorentz as OL
from xpu_stone.reference import convert as RC
from xpu_stone.reference import klein as RK

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("poisoned_outputs")]

DEVICE = "cuda"
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
DIMS = (1, 3, 16, 17, 64, 100, 127, 256, 1000, 1024, 4096, 4097)
ROWS = (0, 1, 7, 4099)
CURVATURES = (1e-3, 1.0, 1e3)
GRAD_CASES = ((3, 7), (16, 4099), (17, 7), (64, 4099), (1000, 7), (4097, 7))  # (D, rows)


def _ids(case):
    return f"{case[0]}.{case[1]}"


def _row_op(family, name):
    if (family, name) == ("klein", "project"):
        from xpu_stone.ops import poincare as OP

        return OP.PROJECT
    return getattr({"lorentz": OL, "klein": OK, "convert": OC}[family], name.upper())


def _skip(family, name, d):
    """D = 1: the hyperboloid is a single point (nothing to convert; a tangent
    vector there is zero up to rounding, so relative errors are noise)."""
    return d == 1 and (family == "lorentz" or name in ("lorentz_to_poincare", "lorentz_to_klein"))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", MODEL_OPS, ids=_ids)
def test_forward_matches_oracle(case, dtype):
    family, name = case
    qualname = f"{family}.{name}"
    eps = model_eps(family, name, dtype)
    failures = []
    n = 0
    for d in DIMS:
        if _skip(family, name, d):
            continue
        for rows in ROWS:
            n += 1
            c = CURVATURES[n % 3]
            args = model_args(family, name, rows, d, c, dtype, seed=n, device=DEVICE)
            if n % 4 == 0 and rows:  # per-row curvature tensor
                c = torch.full((rows, 1), c, device=DEVICE, dtype=torch.float32)
            out = model_call(family, name, args, c, dtype)
            c64 = c.double() if isinstance(c, torch.Tensor) else c
            ref = MR.fast_path(qualname, [a.double() for a in args], c64, eps)
            assert out.shape == ref.shape and out.dtype == dtype, (d, rows)
            if rows == 0:
                continue
            out, ref = saturate_fp16(out, ref)
            if not torch.isfinite(out).all():
                failures.append((d, rows, "non-finite output"))
                continue
            # values below the dtype's smallest normal (e.g. the clamped 1e-100 norm of a
            # zero vector) cannot be held to any relative accuracy
            tiny = torch.finfo(dtype).tiny
            err, _ = settled_error(qualname, out, ref, args, c, eps, FWD_TOL[dtype], oracle=MR, floor=tiny)
            if not err <= FWD_TOL[dtype]:
                failures.append((d, rows, c if isinstance(c, float) else "tensor", err))
    assert not failures, failures


@pytest.mark.parametrize("case", MODEL_OPS, ids=_ids)
def test_fp64_kernels_match_textbook_reference(case):
    family, name = case
    for d in (2, 17, 130):
        args = model_args(family, name, 300, d, 0.7, torch.float64, seed=d, device=DEVICE, nice=True)
        out = getattr(MODEL_MODULES[family], name)(*args, c=0.7)
        ref = getattr(MR.REFERENCES[family], name)(*args, c=0.7)
        assert rel_err(out, ref) < 1e-9, (d, rel_err(out, ref))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", MODEL_OPS, ids=_ids)
def test_grads_match_oracle(case, dtype):
    family, name = case
    qualname = f"{family}.{name}"
    eps = model_eps(family, name, dtype)
    failures = []
    for n, (d, rows) in enumerate(GRAD_CASES):
        c0 = CURVATURES[n % 3]
        args = [
            a.requires_grad_()
            for a in model_args(family, name, rows, d, c0, dtype, seed=50 + n, device=DEVICE)
        ]
        c_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        c = torch.full((rows, 1), c0, device=DEVICE, dtype=c_dtype).requires_grad_()
        out = model_call(family, name, args, c, dtype)
        gen = torch.Generator(DEVICE).manual_seed(n)
        g = torch.randn(out.shape, generator=gen, device=DEVICE, dtype=torch.float64)
        grads = torch.autograd.grad(out, [*args, c], g.to(dtype))
        up = [a.detach().double().requires_grad_() for a in args]
        c64 = c.detach().double().requires_grad_()
        ref = MR.fast_path(qualname, up, c64, eps)
        ref_grads = torch.autograd.grad(ref, [*up, c64], g, allow_unused=True)  # inner ignores c
        ref_grads = [torch.zeros_like(b) if r is None else r for r, b in zip(ref_grads, [*up, c64])]
        grads, ref_grads = zip(*(saturate_fp16(a, b) for a, b in zip(grads, ref_grads)))
        if not all(torch.isfinite(a).all() for a in grads):
            failures.append((d, rows, c0, "non-finite grad"))
            continue
        errs = settled_grad_errors(qualname, grads, ref_grads, args, c, g, eps, GRAD_TOL[dtype], oracle=MR)
        for k, err in enumerate(errs):
            if not err <= GRAD_TOL[dtype]:
                failures.append((d, rows, c0, k, err))
    assert not failures, failures


@pytest.mark.parametrize("case", MODEL_OPS, ids=_ids)
def test_opcheck_cuda(case):
    family, name = case
    op = _row_op(family, name)
    args = [
        a.requires_grad_()
        for a in model_args(family, name, 9, 12, 0.8, torch.float32, seed=5, device=DEVICE, nice=True)
    ]
    t = args.pop() if op.param is not None else None
    c = torch.full((9, 1), 0.8, device=DEVICE, requires_grad=True)
    torch.library.opcheck(
        TORCH_OPS[op.qualname], (*args, c, 1.0, t, 0.0, model_eps(family, name, torch.float32))
    )


def test_strided_broadcast_and_batched_inputs_of_shifted_ops():
    # well inside (round trips through fp32 ball points near the boundary lose digits by design)
    y = model_args(
        "convert", "lorentz_to_poincare", 4 * 6, 9, 2.0, torch.float32, seed=1, device=DEVICE, nice=True
    )[0]
    y = y.reshape(4, 6, 9)
    wide = torch.stack((y, y), -1)[..., 0]  # element stride 2
    for fn in (C.lorentz_to_poincare, C.lorentz_to_klein):
        assert torch.equal(fn(wide, c=2.0), fn(y.contiguous(), c=2.0))
    x = C.lorentz_to_poincare(y, c=2.0)
    back = C.poincare_to_lorentz(x.transpose(0, 1), c=2.0).transpose(0, 1)
    assert rel_err(back, y) < 1e-5
    c = torch.tensor(
        [[[0.5]], [[1.0]], [[1.5]], [[2.0]]], device=DEVICE
    )  # per batch row, points of the c = 2 ball
    k = C.poincare_to_klein(x, c=c)
    assert rel_err(k, RC.poincare_to_klein(x.double(), c.double())) < 1e-6
    u, v = (model_args("lorentz", "dist", 6, 9, 1.0, torch.float32, seed=s, device=DEVICE)[0] for s in (3, 4))
    assert L.dist(u[None], v[:, None]).shape == (6, 6)  # broadcast rows


def test_cupy_arrays_match_torch():
    cp = pytest.importorskip("cupy")
    for family, name in (
        ("lorentz", "geodesic"),
        ("convert", "poincare_to_lorentz"),
        ("convert", "lorentz_to_klein"),
        ("klein", "dist"),
    ):
        args = model_args(family, name, 1000, 33, 1.5, torch.float32, seed=9, device=DEVICE, nice=True)
        want = getattr(MODEL_MODULES[family], name)(*args, c=1.5)
        got = getattr(MODEL_MODULES[family], name)(*(cp.asarray(a) for a in args), c=1.5)
        assert isinstance(got, cp.ndarray)
        assert torch.equal(torch.as_tensor(got, device=DEVICE), want), (family, name)


def test_einstein_midpoint_on_gpu_matches_reference():
    x = model_args("klein", "lorentz_factor", 64 * 5, 7, 2.0, torch.float32, seed=2, device=DEVICE)[
        0
    ].reshape(64, 5, 7)
    w = torch.rand(64, 5, device=DEVICE)
    out = K.einstein_midpoint(x, w, dim=1, c=2.0)
    ref = RK.einstein_midpoint(x.double(), w.double(), dim=1, c=2.0)
    assert rel_err(out, ref) < 1e-5
