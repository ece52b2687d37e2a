"""Hypothesis strategies for the property tests (``tests/test_properties_*.py``).

Hypothesis draws the structure of a case, which is where the ops break: the
dtype's margin, the curvature (a float, a 0-d tensor or one value per row, from
1e-4 to 1e4), the batch shape (zero rows, one to three batch dims), the feature
dim (D = 1, odd, up to 1000), which operands broadcast, the memory layout of
each operand (contiguous, transposed, sliced with an offset, channels-last-like
permuted, expanded with zero strides), each row's distance from the origin or
from the boundary, and how the operands relate (independent, equal, nearby,
opposite). The vector entries themselves come from a torch generator seeded by
a drawn integer, so large D stays cheap to draw and examples still shrink.

Ball points (Poincare, Klein) have norms from 0 to ``1 - MARGIN[dtype]`` of the
radius ``1/sqrt(c)``: 1e-7 in float64 (the task's limit), 2e-7 in float32 (its
spacing below 1 is 6e-8), the projection margin ``BOUNDARY_EPS`` in fp16/bf16 (a
point exactly where :func:`xpu_stone.poincare.project` puts it; rounding the
coordinates to the dtype moves the norm by at most the unit roundoff, less than
the margin, so every stored point is inside). Hyperboloid points are made from
their space part, rounded to the dtype first, and the time coordinate
``sqrt(1/c + |x_s|^2)`` rounded once, at distances from the origin up to that
of the ball points closest to the boundary (``2 artanh(1 - MARGIN)``: 16.8 in
float64, 7.6 in fp16, 5.5 in bf16), at most ``MAX_DIST`` (helpers) and, for ops
that take tangent vectors, ``TANGENT_MAX_DIST`` (the bounds ``xpu_stone.lorentz``
documents); lower where the coordinates, or the Minkowski products of two
points, would not fit the dtype.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
from helpers import DTYPE_NAME, MAX_DIST, TANGENT_MAX_DIST
from hypothesis import strategies as st

from xpu_stone import config
from xpu_stone.constants import BOUNDARY_EPS

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# unit roundoff of each storage dtype
UNIT = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
MARGIN = {
    torch.float64: 1e-7,
    torch.float32: 2e-7,
    torch.float16: BOUNDARY_EPS["float16"],
    torch.bfloat16: BOUNDARY_EPS["bfloat16"],
}
C_RANGE = (-4.0, 4.0)  # log10 of the curvature
# fp16: -1/c and the products of two hyperboloid points must fit 65504, so its
# hyperboloid cases take c >= 1e-3 (coordinates >= 1/sqrt(c) at the origin).
C_RANGE_HYPERBOLOID_FP16 = (-3.0, 4.0)
LAYOUTS = ("contiguous", "transposed", "sliced", "channels_last", "expanded")
RELATIONS = ("independent", "same", "near", "opposite")
MAX_ROWS = 12


@dataclass
class Curvature:
    """The curvature as passed (``value``) and its float64 value per row."""

    value: object  # a float, a 0-d tensor or a (*batch, 1) tensor
    rows64: torch.Tensor  # float64, CPU, broadcasting to (*batch, 1): what each row sees
    kind: str

    def as_float64(self):
        """The same form in float64 on the CPU (for the references)."""
        return self.value if self.kind == "float" else self.value.detach().cpu().double()


@dataclass
class Operand:
    """One vector operand: its float64 values (what is stored, upcast) and the tensor passed."""

    values64: torch.Tensor  # CPU float64, the operand's own (maybe broadcast) shape
    tensor: torch.Tensor  # on the device, in the dtype, in the drawn layout
    layout: str


@dataclass
class Case:
    """A drawn call: operands, per-row scalar, curvature and what they were drawn from."""

    dtype: torch.dtype
    device: str
    batch: tuple
    d: int
    c: Curvature
    operands: list = field(default_factory=list)
    extra: list = field(default_factory=list)  # operands drawn for the identities only
    scalar: object = None  # t or r: a float or a (*, 1) tensor on the device
    scalar64: object = None  # the same as a float or a CPU float64 tensor
    kinds: str = ""  # the op's argument kinds (see draw_case)


# ------------------------------------------------------------------ shapes
@st.composite
def batch_shapes(draw, max_rows=MAX_ROWS):
    """(rows,), (a, b) or (a, b, e), zero rows included, at most max_rows rows."""
    ndim = draw(st.sampled_from((1, 1, 2, 3)))
    if ndim == 1:
        return (draw(st.integers(0, max_rows)),)
    dims = [draw(st.integers(0 if k == ndim - 1 else 1, 3)) for k in range(ndim)]
    while math.prod(dims) > max_rows:
        dims[dims.index(max(dims))] -= 1
    return tuple(dims)


def feature_dims(min_d=1, max_d=1000):
    """D: the small and odd ones the kernels special-case, and any up to max_d."""
    small = [d for d in (1, 2, 3, 4, 5, 7, 8, 16, 17, 31, 33, 64, 127, 128) if min_d <= d <= max_d]
    return st.one_of(st.sampled_from(small), st.integers(min_d, max_d))


@st.composite
def reduced_shape(draw, batch):
    """A batch shape that broadcasts to ``batch``: each dim kept or 1, leading dims maybe dropped."""
    shape = [n if draw(st.booleans()) else 1 for n in batch]
    drop = draw(st.integers(0, len(shape))) if shape and all(n == 1 for n in shape[:1]) else 0
    return tuple(shape[drop:])


def broadcast_batch(*shapes):
    return tuple(torch.broadcast_shapes(*shapes))


# ------------------------------------------------------------------ scalars
def _log_uniform(lo, hi):
    return st.floats(lo, hi).map(lambda e: 10.0**e)


@st.composite
def curvatures(draw, batch, dtype, device, log_range=C_RANGE):
    """c as a float, a 0-d tensor or one value per row (shape (*batch, 1)); a tensor in
    the inputs' dtype or in float64."""
    kind = draw(st.sampled_from(("float", "0d", "row")))
    cdt = draw(st.sampled_from((dtype, torch.float64)))
    if kind == "float":
        v = draw(_log_uniform(*log_range))
        return Curvature(v, torch.full((1,) * (len(batch) + 1), v, dtype=torch.float64), kind)
    if kind == "0d":
        t = torch.tensor(draw(_log_uniform(*log_range)), dtype=cdt)
        return Curvature(
            t.to(device), torch.full((1,) * (len(batch) + 1), float(t), dtype=torch.float64), kind
        )
    n = math.prod(batch)
    vals = draw(st.lists(st.floats(*log_range), min_size=n, max_size=n))
    t = (10.0 ** torch.tensor(vals, dtype=torch.float64)).reshape(*batch, 1).to(cdt)
    return Curvature(t.to(device), t.double(), kind)


@st.composite
def per_row_scalars(draw, batch, dtype, device, lo=-2.0, hi=3.0):
    """t or r: a float or one value per row, with 0, 1, -1 and 1/2 among them."""
    value = st.one_of(st.sampled_from((0.0, 1.0, -1.0, 0.5)), st.floats(lo, hi))
    if draw(st.booleans()):
        v = draw(value)
        return v, v
    n = math.prod(batch)
    t = torch.tensor(draw(st.lists(value, min_size=n, max_size=n)), dtype=torch.float64)
    t = t.reshape(*batch, 1).to(dtype)
    return t.to(device), t.double()


# ------------------------------------------------------------------ layouts
def lay_out(t, layout, full_shape=None):
    """``t`` (on its device) with the same values in ``layout``."""
    if layout == "transposed" and t.dim() >= 2:  # memory order reversed: feature stride = rows
        order = tuple(reversed(range(t.dim())))
        return t.permute(order).contiguous().permute(order)
    if layout == "channels_last" and t.dim() >= 2:  # memory (B0, D, B1, ...), features strided
        return t.movedim(-1, 1 if t.dim() > 2 else 0).contiguous().movedim(1 if t.dim() > 2 else 0, -1)
    if layout == "sliced":  # every other element of a wider buffer, at an offset of one
        buf = torch.zeros(*t.shape[:-1], 2 * t.shape[-1] + 1, dtype=t.dtype, device=t.device)
        buf[..., 1::2] = t
        return buf[..., 1::2]
    if layout == "expanded" and full_shape is not None and len(full_shape) >= t.dim() - 1:
        return t.expand(*full_shape, t.shape[-1])
    return t.contiguous()


def operand(values64, dtype, device, layout, full_shape):
    stored = values64.to(dtype)
    return Operand(stored.double(), lay_out(stored.to(device), layout, full_shape), layout)


# ------------------------------------------------------------------ points
def radius_fractions(dtype):
    """Norm of a ball point over the radius: zero, log-uniform from 1e-15, uniform,
    log-uniform distance to the boundary down to the dtype's margin, and the
    extremes: the margin and the projection margin."""
    m = MARGIN[dtype]
    proj = BOUNDARY_EPS[DTYPE_NAME[dtype]]
    return st.one_of(
        st.just(0.0),
        _log_uniform(-15.0, 0.0),
        st.floats(0.0, 1.0),
        st.floats(math.log10(m), 0.0).map(lambda e: 1.0 - 10.0**e),
        st.sampled_from((1.0 - m, 1.0 - proj)),
    ).map(lambda r: min(r, 1.0 - m))


def _directions(gen, n, d):
    v = torch.randn(n, d, generator=gen, dtype=torch.float64)
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-300)


@st.composite
def ball_values(draw, shape, c_rows, dtype, gen, like=None):
    """float64 points of the ball (Poincare or Klein) of shape ``shape``, each inside
    the ball of its row's c (the largest c of the rows it broadcasts over), rounded
    to ``dtype`` and back; ``like`` (values of the same shape) sets their relation."""
    *b, d = shape
    n = math.prod(b)
    c_max = _c_for(c_rows, tuple(b))  # (n, 1)
    relation = draw(st.sampled_from(RELATIONS)) if like is not None else "independent"
    m = MARGIN[dtype]
    if relation == "same":
        x = like.reshape(n, d).clone()
    elif relation == "opposite":
        x = -like.reshape(n, d)
    elif relation == "near":  # a step of 1e-12 to 1e-1 of the distance to the boundary
        base = like.reshape(n, d)
        room = (1 - (c_max.sqrt() * base.norm(dim=-1, keepdim=True))).clamp_min(0)
        gap = 10.0 ** torch.tensor(draw(st.lists(st.floats(-12, -1), min_size=n, max_size=n)))
        x = base + _directions(gen, n, d) * gap.reshape(n, 1).double() * room / c_max.sqrt()
    else:
        r = torch.tensor(draw(st.lists(radius_fractions(dtype), min_size=n, max_size=n)), dtype=torch.float64)
        x = _directions(gen, n, d) * r.reshape(n, 1) / c_max.sqrt()
    # the relations may leave the dtype's margin: pull back inside it
    limit = (1 - m) / c_max.sqrt()
    norm = x.norm(dim=-1, keepdim=True)
    x = torch.where(norm > limit, x / norm.clamp_min(1e-300) * limit, x)
    return x.reshape(*b, d).to(dtype).double()


def _c_for(c_rows, b):
    """The largest c over the rows an operand of batch shape ``b`` meets, as (prod(b), 1)
    (1 where it meets none: a zero-size batch)."""
    if c_rows.numel() == 0:
        return torch.ones(math.prod(b), 1, dtype=torch.float64)
    full = c_rows
    while full.dim() - 1 > len(b):
        full = full.amax(0)
    while full.dim() - 1 < len(b):
        full = full.unsqueeze(0)
    for k, n in enumerate(b):
        if n == 1 and full.shape[k] != 1:
            full = full.amax(k, keepdim=True)
    return full.expand(*b, 1).reshape(-1, 1)


def max_hyperboloid_dist(dtype, c_min, tangent=False, products=False):
    """Largest distance from the origin (times sqrt(c)) of the hyperboloid points: that of
    the ball points closest to the boundary, 2 artanh(1 - MARGIN[dtype]) (16.8 in
    float64), at most MAX_DIST (or TANGENT_MAX_DIST), and where the coordinates
    cosh(r)/sqrt(c) (``products``: the Minkowski products of two points, about
    cosh(r)^2/c) stay within 1/64 (1/4) of the dtype's largest value."""
    base = min((TANGENT_MAX_DIST if tangent else MAX_DIST)[dtype], 2 * math.atanh(1 - MARGIN[dtype]))
    top = torch.finfo(dtype).max
    cosh_max = math.sqrt(top / 4 * c_min) if products else top / 64 * math.sqrt(c_min)
    return min(base, math.acosh(max(1.0, cosh_max)))


@st.composite
def hyperboloid_values(draw, shape, c_rows, dtype, gen, rmax, like=None):
    """float64 points of the hyperboloid <x,x>_L = -1/c (time first) at distances up to
    ``rmax`` from the origin: space part rounded to ``dtype``, then the time
    coordinate from it, rounded once."""
    *b, d = shape
    n = math.prod(b)
    c = _c_for(c_rows, tuple(b))
    relation = draw(st.sampled_from(RELATIONS)) if like is not None else "independent"
    if relation == "same":
        xs = like.reshape(n, d)[:, 1:].clone()
    elif relation == "opposite":
        xs = -like.reshape(n, d)[:, 1:]
    elif relation == "near":
        base = like.reshape(n, d)[:, 1:]
        gap = 10.0 ** torch.tensor(draw(st.lists(st.floats(-12, -1), min_size=n, max_size=n)))
        xs = base + _directions(gen, n, d - 1) * gap.reshape(n, 1).double() / c.sqrt()
    else:
        r = st.one_of(
            st.just(0.0), _log_uniform(-15.0, math.log10(rmax)), st.floats(0.0, rmax), st.just(rmax)
        )
        r = torch.tensor(draw(st.lists(r, min_size=n, max_size=n)), dtype=torch.float64).reshape(n, 1)
        xs = _directions(gen, n, d - 1) * torch.sinh(r) / c.sqrt()
    # keep within rmax (the relations may leave it)
    lim = math.sinh(rmax) / c.sqrt()
    nrm = xs.norm(dim=-1, keepdim=True)
    xs = torch.where(nrm > lim, xs / nrm.clamp_min(1e-300) * lim, xs).to(dtype).double()
    x0 = torch.sqrt(1 / c + xs.square().sum(-1, keepdim=True))
    return torch.cat((x0, xs), -1).reshape(*b, d).to(dtype).double()


def lorentz_tangent_values(gen, base, c_rows, dtype, max_len):
    """Tangent vectors at the hyperboloid points ``base`` (float64): a random vector at the
    origin of Minkowski norm log-uniform in [1e-3, 10] / sqrt(c), at most max_len / sqrt(c),
    carried to each point by parallel transport (exact maths in float64; see
    helpers._lorentz_tangent), then rounded to ``dtype``."""
    *b, d = base.shape
    n = math.prod(b)
    c = _c_for(c_rows, tuple(b))
    x = base.reshape(n, d)
    w = torch.randn(n, d, generator=gen, dtype=torch.float64)
    w[:, 0] = 0
    mag = (10 ** (torch.rand(n, 1, generator=gen, dtype=torch.float64) * 4 - 3)).clamp_max(max_len) / c.sqrt()
    v = w / w.norm(dim=-1, keepdim=True).clamp_min(1e-300) * mag
    sc = c.sqrt()
    o = torch.zeros_like(x)
    o[:, 0] = 1 / sc[:, 0]
    vx = (x[:, 1:] * v[:, 1:]).sum(-1, keepdim=True) - x[:, :1] * v[:, :1]
    v = v + c * vx * (o + x) / (1 + sc * x[:, :1])
    return v.reshape(*b, d).to(dtype).double()


@st.composite
def any_vectors(draw, shape, c_rows, dtype, gen, lo=-8.0, hi=2.0):
    """Vectors of any direction with norms log-uniform in [10^lo, 10^hi] / sqrt(c), or zero."""
    *b, d = shape
    n = math.prod(b)
    c = _c_for(c_rows, tuple(b))
    mags = draw(st.lists(st.one_of(st.just(0.0), _log_uniform(lo, hi)), min_size=n, max_size=n))
    v = _directions(gen, n, d) * torch.tensor(mags, dtype=torch.float64).reshape(n, 1) / c.sqrt()
    return v.reshape(*b, d).to(dtype).double()


def seeds():
    return st.integers(0, 2**32 - 1)


# ------------------------------------------------------------------ a whole call
def draw_case(
    data,
    kinds,
    dtype,
    device,
    *,
    min_d=1,
    max_d=1000,
    c_range=C_RANGE,
    rmax=None,
    w_range=(-8.0, 2.0),
    s_range=(-2.0, 3.0),
    tangent_len=None,
    extra="",
):
    """Draws the arguments of an op whose arguments are of ``kinds``: b = a ball point,
    h = a hyperboloid point, t = a tangent vector at the first h, T = a tangent vector
    at a point of its own, w = any vector, s = a per-row scalar (t or r). ``rmax(c_min)``
    bounds the hyperboloid points' distance from the origin, ``tangent_len`` the
    tangent vectors' length sqrt(c) |v|_L. ``extra``: kinds of further operands, not
    passed to the op (a third point for the triangle inequality), in ``case.extra``."""
    batch = data.draw(batch_shapes(), label="batch")
    d = data.draw(feature_dims(min_d, max_d), label="D")
    c = data.draw(curvatures(batch, dtype, device, c_range), label="c")
    gen = torch.Generator().manual_seed(data.draw(seeds(), label="seed"))
    c_min = float(c.rows64.min()) if c.rows64.numel() else 1.0
    case = Case(dtype, device, batch, d, c, kinds=kinds)
    values, first = [], {}
    for k in kinds + extra:
        if k == "s":
            values.append(None)
            continue
        if k == "t":
            shape = first["h"].shape
        elif len(values) >= len(kinds):  # an extra operand: the first operand's shape
            shape = values[0].shape
        elif k in "hT" and c.kind == "row":  # a point lies on the hyperboloid of one c only
            shape = (*batch, d)
        else:
            shape = data.draw(st.one_of(st.just(batch), reduced_shape(batch)), label=f"shape of {k}")
            shape = (*shape, d)
        like = first.get(k)
        like = like if like is not None and like.shape == shape else None
        if k == "b":
            v = data.draw(ball_values(shape, c.rows64, dtype, gen, like), label="ball point")
        elif k == "h":
            v = data.draw(hyperboloid_values(shape, c.rows64, dtype, gen, rmax(c_min), like), label="point")
        elif k in "tT":
            if k == "t":
                base = first["h"]
            else:
                base = data.draw(
                    hyperboloid_values(shape, c.rows64, dtype, gen, rmax(c_min)), label="base point"
                )
            v = lorentz_tangent_values(gen, base, c.rows64, dtype, tangent_len)
        else:
            v = data.draw(any_vectors(shape, c.rows64, dtype, gen, *w_range), label="vector")
        first.setdefault(k, v)
        values.append(v)
    for j, (k, v) in enumerate(zip(kinds + extra, values)):
        if k == "s":
            t, t64 = data.draw(per_row_scalars(batch, dtype, device, *s_range), label="t")
            case.scalar, case.scalar64 = t, t64
            continue
        extra_operand = j >= len(kinds)  # not expanded: it must not widen the batch
        layout = data.draw(st.sampled_from(LAYOUTS[:-1] if extra_operand else LAYOUTS), label="layout")
        (case.extra if extra_operand else case.operands).append(operand(v, dtype, device, layout, batch))
    return case


def call_args(case):
    """The op's arguments in order: device tensors and the scalar."""
    ops = iter(case.operands)
    return [case.scalar if k == "s" else next(ops).tensor for k in case.kinds]


def call_args64(case):
    """The same as float64 CPU tensors (the scalar as a float or a float64 tensor)."""
    ops = iter(case.operands)
    return [case.scalar64 if k == "s" else next(ops).values64 for k in case.kinds]


def full(t, batch):
    """``t`` (a vector operand, or a (*, 1) scalar) broadcast to the batch: the references
    concatenate, so they take operands of one shape."""
    return t.expand(*batch, t.shape[-1]) if isinstance(t, torch.Tensor) else t


def result_batch(case):
    """The batch shape of the op's result: the operands', c's and t's broadcast."""
    shapes = [tuple(o.tensor.shape[:-1]) for o in case.operands]
    if case.c.kind == "row":
        shapes.append(tuple(case.c.value.shape[:-1]))
    if isinstance(case.scalar, torch.Tensor):
        shapes.append(tuple(case.scalar.shape[:-1]))
    return broadcast_batch(*shapes)


def c_rows(case, batch):
    """c of each result row, as a list of floats."""
    if case.c.kind == "row":
        return case.c.rows64.expand(*batch, 1).reshape(-1).tolist()
    return [float(case.c.rows64.reshape(-1)[0])] * math.prod(batch)


def reference_args(case):
    """The float64 arguments and c for the references, broadcast to the result's batch."""
    batch = result_batch(case)
    c = case.c.as_float64()
    if isinstance(c, torch.Tensor) and c.dim() > 0:
        c = c.expand(*batch, 1)
    return [full(a, batch) for a in call_args64(case)], c


@contextlib.contextmanager
def poisoned(device):
    """On the GPU, kernel outputs are filled with NaN before each launch (as the
    ``poisoned_outputs`` fixture does; a function-scoped fixture would outlive the
    examples of one Hypothesis test), so an element a kernel leaves unwritten fails."""
    old = config.poison_outputs
    config.poison_outputs = device == "cuda"
    try:
        yield
    finally:
        config.poison_outputs = old
