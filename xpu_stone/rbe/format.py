r"""The Packed128 code of one RBE atom, and the file format of a compressed layer.

One atom is 128 bits, two int64 words ``(hi, lo)`` (``hi`` first; bit 0 the least
significant; in numpy and torch the words are signed int64, two's complement):

=========  =====  ==========  =====================================================================
``hi``     width  field       meaning
=========  =====  ==========  =====================================================================
63:62      2      ``trk``     basis: 0 sine, 1 hyperbolic (sinh / cosh by ``s_h``), 2 tanh, 3 reserved
61:42      20     ``q``       phase :math:`\varphi = 2\pi q / 2^{20}`
41:32      10     ``m_r``     radial frequency :math:`\omega = m_r \Delta\omega`, :math:`\Delta\omega = \pi/64`
31:26      6      ``m_psi``   angular wavenumber, two's complement: :math:`-32 \le m_\psi \le 31`
25         1      ``s_h``     hyperbolic track: 0 sinh, 1 cosh
24         1      ``sigma``   sign :math:`s = (-1)^\sigma`
23:8       16     ``a``       log-amplitude :math:`A = 2^{(a - 32768)/2048}`
7:0        8      ``ver``     format version, 1
=========  =====  ==========  =====================================================================

``lo``: bits 63:32 the float32 bits of the radius :math:`0 \le r < 1`, bits 31:0 the
float32 bits of :math:`\theta` (finite). :func:`decode` rejects a reserved track, a
version byte other than :data:`VERSION`, ``r`` outside ``[0, 1)`` or NaN, a non-finite
``θ`` (:class:`~xpu_stone.errors.RBEFormatError`); :func:`encode` also rejects fields
out of their width. Both take numpy arrays or torch tensors, any shape, and return the
same kind.

Training uses continuous *shadows* (see ``shared/RBE.md``): per atom a float row
``(u, θ, φ, ln A)`` with :math:`r = \tanh u`, and a discrete *state* word (int32)
holding ``trk`` (bits 19:18) above bits 41:24 of ``hi`` (``m_r``, ``m_psi``, ``s_h``,
``sigma``, same positions shifted down by 24). :func:`pack_atoms` quantises shadows to
codes (φ to the 20-bit grid, ln A to the 16-bit grid, ``u`` clamped to
``[0, U_MAX]`` so that ``r`` stays below 1 in float32); :func:`unpack_atoms` is its
inverse on the grid (``pack(unpack(c)) == c``).

The file of a compressed layer (:func:`write_layer`, :func:`read_layer`), little-endian:

======  ==========  ===================================================================
offset  size        content
======  ==========  ===================================================================
0       4           magic ``b"RBEL"``
4       1           version byte, 1 (the codes' ``ver``)
5       1           tile size B (32 or 64)
6       1           atoms per tile J (1..8)
7       1           residual bits b (0..4)
8       1           flags: bit 0 set when a bias follows
9       3           zero
12      4           out_features (uint32)
16      4           in_features (uint32)
20      16 T J      codes: tiles row-major (``ceil(out/B)`` rows of ``ceil(in/B)``), J atoms
                    each, every atom ``hi`` then ``lo`` (int64)
..      16 b out G  residual bit planes (:mod:`xpu_stone.rbe.generator`), G = ceil(in/128)
..      2 out G     residual scales, float16 (only when b > 0)
..      2 out       bias, float16 (only when flag bit 0)
======  ==========  ===================================================================

The payload after the 20-byte header is exactly the stored bits that
:func:`xpu_stone.rbe.generator.stored_bits` counts.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import numpy

from .._deps import torch
from ..errors import RBEFormatError

__all__ = [
    "AMP_BIAS",
    "AMP_STEP",
    "DELTA_OMEGA",
    "FIELDS",
    "HEADER",
    "MAGIC",
    "M_PSI_RANGE",
    "PHASE_BITS",
    "TRACKS",
    "U_MAX",
    "VERSION",
    "LayerFile",
    "amplitude",
    "check_codes",
    "decode",
    "encode",
    "ln_amplitude_range",
    "omega",
    "pack_atoms",
    "pack_state",
    "phase",
    "read_layer",
    "unpack_atoms",
    "unpack_state",
    "write_layer",
]

VERSION = 1
PHASE_BITS = 20
DELTA_OMEGA = math.pi / 64
AMP_BIAS = 32768
AMP_STEP = 2048  # a = AMP_BIAS + AMP_STEP * log2(A)
M_PSI_RANGE = (-32, 31)
TRACKS = {"sine": 0, "hyperbolic": 1, "tanh": 2}  # 3 is reserved
# u = artanh(r) is kept in [0, U_MAX]: tanh(8) = 1 - 2.3e-7 stays below 1 in float32
# (tanh(9) rounds to 1.0, a radius the format rejects).
U_MAX = 8.0

# field -> (lowest bit of hi, width)
FIELDS: Mapping[str, tuple[int, int]] = {
    "trk": (62, 2),
    "q": (42, 20),
    "m_r": (32, 10),
    "m_psi": (26, 6),
    "s_h": (25, 1),
    "sigma": (24, 1),
    "a": (8, 16),
    "ver": (0, 8),
}
STATE_SHIFT = 24  # the state word holds hi bits 41:24 at bits 17:0 ...
STATE_TRK = 18  # ... and trk at bits 19:18
MAGIC = b"RBEL"
HEADER = struct.Struct("<4sBBBBB3xII")  # magic, version, B, J, b, flags, out, in


# ------------------------------------------------------------ array helpers
def _is_torch(a) -> bool:
    return torch is not None and isinstance(a, torch.Tensor)


def _int64(a, like):
    """``a`` as an int64 array of the kind of ``like`` (numpy or torch)."""
    if _is_torch(like):
        return torch.as_tensor(a, device=like.device).to(torch.int64)
    return numpy.asarray(a).astype(numpy.int64)


def _float32_bits(x, like):
    """The float32 bit patterns of ``x`` as int64 in [0, 2^32)."""
    if _is_torch(like):
        return torch.as_tensor(x, device=like.device).to(torch.float32).view(torch.int32).to(torch.int64) & (
            0xFFFFFFFF
        )
    return numpy.asarray(x, dtype=numpy.float32).view(numpy.uint32).astype(numpy.int64)


def _bits_float32(bits):
    """int64 values in [0, 2^32) read as float32 bit patterns."""
    if _is_torch(bits):
        signed = bits - ((bits >> 31) & 1) * (1 << 32)
        return signed.to(torch.int32).view(torch.float32)
    return numpy.asarray(bits).astype(numpy.uint32).view(numpy.float32)


def _first(mask) -> int | None:
    """The flat index of the first True of ``mask``, or None."""
    flat = mask.reshape(-1)
    if _is_torch(flat):
        idx = flat.nonzero()
        return int(idx[0, 0]) if idx.numel() else None
    idx = numpy.flatnonzero(flat)
    return int(idx[0]) if idx.size else None


def _reject(mask, what: str) -> None:
    i = _first(mask)
    if i is not None:
        raise RBEFormatError(f"atom {i} (flat index) {what}")


def _isfinite(x):
    return x.isfinite() if _is_torch(x) else numpy.isfinite(x)


# -------------------------------------------------------- encode / decode
def check_codes(trk, ver, r, theta) -> None:
    """Raises :class:`~xpu_stone.errors.RBEFormatError` for a reserved track, a version
    byte other than 1, ``r`` outside ``[0, 1)`` or NaN, or a non-finite ``theta``."""
    _reject(trk == 3, "has the reserved track trk = 3")
    _reject(ver != VERSION, f"has a version byte other than {VERSION}")
    # written so that NaN fails: not (0 <= r < 1)
    _reject(~((r >= 0) & (r < 1)), "has a radius r outside [0, 1) (or NaN)")
    _reject(~_isfinite(theta), "has a non-finite theta")


def encode(fields: Mapping[str, object]):
    """``(hi, lo)`` int64 arrays from the fields ``trk, q, m_r, m_psi, s_h, sigma, a, r,
    theta`` (and ``ver``, default 1), arrays of one kind (numpy or torch) that broadcast.
    ``m_psi`` is signed. Raises :class:`~xpu_stone.errors.RBEFormatError` for a value
    outside its field or a code :func:`check_codes` rejects."""
    missing = (set(FIELDS) - {"ver"} | {"r", "theta"}) - set(fields)
    if missing:
        raise RBEFormatError(f"encode: missing fields {sorted(missing)}")
    like = fields["r"]
    f = {k: _int64(fields[k], like) for k in FIELDS if k != "ver"}
    f["ver"] = _int64(fields.get("ver", VERSION), like)
    lo_psi, hi_psi = M_PSI_RANGE
    for name, (_, width) in FIELDS.items():
        lo, hi = (lo_psi, hi_psi) if name == "m_psi" else (0, (1 << width) - 1)
        _reject((f[name] < lo) | (f[name] > hi), f"has {name} outside [{lo}, {hi}]")
    r, theta = fields["r"], fields["theta"]
    check_codes(f["trk"], f["ver"], r, theta)
    hi = 0
    for name, (shift, width) in FIELDS.items():
        hi = hi | ((f[name] & ((1 << width) - 1)) << shift)
    lo = (_float32_bits(r, like) << 32) | _float32_bits(theta, like)
    return hi, lo


def decode(hi, lo, validate: bool = True) -> dict:
    """The fields of codes ``(hi, lo)`` (int64 arrays, numpy or torch): int64 arrays
    ``trk, q, m_r, m_psi`` (signed), ``s_h, sigma, a, ver`` and float32 ``r, theta``.
    With ``validate``, :func:`check_codes` first."""
    hi, lo = _int64(hi, hi), _int64(lo, hi)
    out = {name: (hi >> shift) & ((1 << width) - 1) for name, (shift, width) in FIELDS.items()}
    out["m_psi"] = out["m_psi"] - ((out["m_psi"] >> 5) & 1) * 64
    out["r"] = _bits_float32((lo >> 32) & 0xFFFFFFFF)
    out["theta"] = _bits_float32(lo & 0xFFFFFFFF)
    if validate:
        check_codes(out["trk"], out["ver"], out["r"], out["theta"])
    return out


def phase(q):
    """:math:`\\varphi = 2\\pi q / 2^{20}`."""
    return q * (2 * math.pi / (1 << PHASE_BITS))


def omega(m_r):
    """:math:`\\omega = m_r \\pi / 64`."""
    return m_r * DELTA_OMEGA


def amplitude(a, sigma):
    """:math:`s A = (-1)^\\sigma 2^{(a - 32768)/2048}`."""
    return (1 - 2 * sigma) * 2.0 ** ((a - AMP_BIAS) / AMP_STEP)


def ln_amplitude_range() -> tuple[float, float]:
    """The ln A that 16-bit ``a`` can hold: ``a = 0`` and ``a = 65535``."""
    return (-AMP_BIAS / AMP_STEP * math.log(2), (0xFFFF - AMP_BIAS) / AMP_STEP * math.log(2))


# ----------------------------------------------- shadows and state (torch)
def pack_state(fields: Mapping[str, object]):
    """The int32 state word of the discrete fields (torch): ``trk`` at bits 19:18 and
    ``m_r, m_psi, s_h, sigma`` at the bits they hold in ``hi``, shifted down by 24."""
    like = fields["trk"]
    word = _int64(fields["trk"], like) << STATE_TRK
    for name in ("m_r", "m_psi", "s_h", "sigma"):
        shift, width = FIELDS[name]
        word = word | ((_int64(fields[name], like) & ((1 << width) - 1)) << (shift - STATE_SHIFT))
    return word.to(torch.int32)


def unpack_state(state) -> dict:
    """``trk, m_r, m_psi`` (signed), ``s_h, sigma`` (int64) of an int32 state word."""
    w = state.to(torch.int64)
    out = {"trk": (w >> STATE_TRK) & 3}
    for name in ("m_r", "m_psi", "s_h", "sigma"):
        shift, width = FIELDS[name]
        out[name] = (w >> (shift - STATE_SHIFT)) & ((1 << width) - 1)
    out["m_psi"] = out["m_psi"] - ((out["m_psi"] >> 5) & 1) * 64
    return out


def pack_atoms(shadow, state):
    """Codes ``(hi, lo)`` of atoms given as shadows ``(..., 4)`` = ``(u, θ, φ, ln A)``
    and state words ``(...)`` (torch). Quantises: ``q = round(φ 2^20 / 2π) mod 2^20``,
    ``a = round(2048 log2 A) + 32768`` clamped to 16 bits, ``r = tanh(clamp(u, 0,
    U_MAX))`` rounded to float32."""
    s = shadow.detach().to(torch.float64)
    u, theta, phi, ln_a = s.unbind(-1)
    fields = unpack_state(state)
    fields["q"] = torch.round(phi * ((1 << PHASE_BITS) / (2 * math.pi))).to(torch.int64) % (1 << PHASE_BITS)
    a = torch.round(ln_a / math.log(2) * AMP_STEP).to(torch.int64) + AMP_BIAS
    fields["a"] = a.clamp(0, 0xFFFF)
    fields["r"] = torch.tanh(u.clamp(0.0, U_MAX)).to(torch.float32)
    fields["theta"] = theta.to(torch.float32)
    return encode(fields)


def unpack_atoms(hi, lo, dtype=None):
    """``(shadow, state)`` of codes (torch int64 ``hi``, ``lo``): shadow rows
    ``(artanh r, θ, φ, ln A)`` in ``dtype`` (default float32), validated."""
    f = decode(hi, lo)
    u = torch.atanh(f["r"].to(torch.float64))
    ln_a = (f["a"] - AMP_BIAS).to(torch.float64) * (math.log(2) / AMP_STEP)
    shadow = torch.stack([u, f["theta"].to(torch.float64), phase(f["q"].to(torch.float64)), ln_a], -1)
    return shadow.to(dtype or torch.float32), pack_state(f)


# ----------------------------------------------------------- the layer file
@dataclass(frozen=True)
class LayerFile:
    """The content of a compressed-layer file, as numpy arrays: ``codes`` int64
    ``(T, J, 2)``, ``residual`` int32 bit planes ``(out, G, b, 4)``, ``scales`` float16
    ``(out, G)`` (empty when b = 0), ``bias`` float16 ``(out,)`` or None."""

    out_features: int
    in_features: int
    tile: int
    atoms: int
    residual_bits: int
    codes: numpy.ndarray
    residual: numpy.ndarray
    scales: numpy.ndarray
    bias: numpy.ndarray | None

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """The array shapes this header implies."""
        b, out, g = self.residual_bits, self.out_features, -(-self.in_features // 128)
        tiles = -(-self.out_features // self.tile) * -(-self.in_features // self.tile)
        return {
            "codes": (tiles, self.atoms, 2),
            "residual": (out, g, b, 4),
            "scales": (out, g) if b else (0,),
            "bias": (out,),
        }


def _check_header(tile: int, atoms: int, bits: int, out: int, inp: int) -> None:
    if tile not in (32, 64) or not 1 <= atoms <= 8 or not 0 <= bits <= 4 or out < 1 or inp < 1:
        raise RBEFormatError(
            f"header: tile {tile} (32 or 64), atoms {atoms} (1..8), residual bits {bits} (0..4), "
            f"shape ({out}, {inp}) (positive)"
        )


def write_layer(f: LayerFile) -> bytes:
    """The bytes of a compressed-layer file (layout in the module docstring)."""
    _check_header(f.tile, f.atoms, f.residual_bits, f.out_features, f.in_features)
    want = f.shapes()
    arrays = [("codes", f.codes, "<i8"), ("residual", f.residual, "<i4"), ("scales", f.scales, "<f2")]
    if f.bias is not None:
        arrays.append(("bias", f.bias, "<f2"))
    for name, a, _ in arrays:
        if tuple(a.shape) != want[name]:
            raise RBEFormatError(f"{name} has shape {tuple(a.shape)}, the header implies {want[name]}")
    decode(f.codes[..., 0], f.codes[..., 1])
    head = HEADER.pack(
        MAGIC,
        VERSION,
        f.tile,
        f.atoms,
        f.residual_bits,
        int(f.bias is not None),
        f.out_features,
        f.in_features,
    )
    return head + b"".join(numpy.ascontiguousarray(a, dtype=t).tobytes() for _, a, t in arrays)


def read_layer(data: bytes) -> LayerFile:
    """A :class:`LayerFile` from bytes of :func:`write_layer`; raises
    :class:`~xpu_stone.errors.RBEFormatError` for a bad magic, version, header, length or code."""
    if len(data) < HEADER.size:
        raise RBEFormatError(f"file of {len(data)} bytes is shorter than the {HEADER.size}-byte header")
    magic, ver, tile, atoms, bits, flags, out, inp = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise RBEFormatError(f"bad magic {magic!r} (expected {MAGIC!r})")
    if ver != VERSION:
        raise RBEFormatError(f"file version byte {ver}; format version {VERSION} is the only one")
    if flags & ~1:
        raise RBEFormatError(f"unknown flag bits {flags:#x}")
    _check_header(tile, atoms, bits, out, inp)
    proto = LayerFile(out, inp, tile, atoms, bits, *(numpy.empty(0),) * 3, None)
    shapes = proto.shapes()
    layout = [("codes", "<i8"), ("residual", "<i4"), ("scales", "<f2")] + ([("bias", "<f2")] if flags else [])
    arrays, pos = {}, HEADER.size
    for name, t in layout:
        n = math.prod(shapes[name]) * numpy.dtype(t).itemsize
        if pos + n > len(data):
            raise RBEFormatError(f"file truncated in {name}: {len(data)} bytes, needs at least {pos + n}")
        arrays[name] = numpy.frombuffer(data, t, math.prod(shapes[name]), pos).reshape(shapes[name]).copy()
        pos += n
    if pos != len(data):
        raise RBEFormatError(f"file has {len(data) - pos} bytes after its last array")
    decode(arrays["codes"][..., 0], arrays["codes"][..., 1])
    return LayerFile(out, inp, tile, atoms, bits, arrays["codes"], arrays["residual"], arrays["scales"],
                     arrays.get("bias"))  # fmt: skip
