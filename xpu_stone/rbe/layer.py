r"""``RBELinear``: a linear layer whose weight is generated from RBE codes.

.. math::

    y = x W^T + b,\qquad W = \sum_k s_k A_k g_k(\mathrm{arg}_k) + R
    \quad\text{(per tile, :mod:`xpu_stone.rbe.generator`)}

The module holds what the custom op :func:`xpu_stone.rbe.functional.rbe_linear`
reads: ``shadow`` (parameter, ``(T, J, 4)`` rows ``(u, θ, φ, ln A)``), ``state``
(buffer, int32 state words of the discrete fields), ``residual`` (buffer, int32 bit
planes ``(out, G, b, 4)``), ``scales`` (parameter ``(out, G)``, when b > 0) and
``bias``. Its ``state_dict`` is the stored form: ``codes`` (int64 ``(T, J, 2)``, the
Packed128 words ``hi, lo``), ``residual``, ``scales`` and ``bias`` as float16; loading
it validates the codes (:class:`~xpu_stone.errors.RBEFormatError`). Saving quantises
φ and ln A to their code grids and the scales and bias to float16, so a state dict
saved, loaded and saved again is bit-identical. :func:`save` / :func:`load` write and
read the file format of :mod:`xpu_stone.rbe.format`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy
import torch
from torch import nn

from ..errors import InvalidArgumentError, RBEFormatError, ShapeMismatchError
from .fit import fit_matrix
from .format import M_PSI_RANGE, LayerFile, pack_atoms, pack_state, read_layer, unpack_atoms, write_layer
from .functional import rbe_linear
from .generator import GROUP, LN_A, PHI, BitCount, U, generate, quantise_residual, stored_bits

__all__ = ["RBELinear", "load", "save"]


def _check_int(value, name: str, allowed) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        raise InvalidArgumentError(f"{name} must be one of {list(allowed)}, got {value!r}")
    return value


class RBELinear(nn.Module):
    r"""``RBELinear(in_features, out_features, tile=32, atoms=3, residual_bits=1, bias=True)``.

    ``tile`` B (32 or 64), ``atoms`` J per tile (1..8), ``residual_bits`` b (0..4).
    Stores :math:`128 J/B^2 + b + 16/128` bits a weight (+ 16 a bias), see
    :meth:`stored_bits`. The default stores at most a tenth of the float16 weight and
    bias: for 768 -> 3072, :math:`128 \cdot 3/32^2 + 1 + 16/128 + 16/768 = 1.521` bits
    a weight, 9.5 % of 16. Of the settings within 1.6 bits a weight it fitted six
    all-MiniLM-L6-v2 layers best (mean relative error 0.613; 2 atoms 0.616, 1 atom
    0.620, 64-tiles with 8 atoms 0.617, 8 atoms without residual 0.96; 4 atoms, 1.646
    bits, 0.609: ``benchmarks/results/rbe-default-cpu-2026-12-01.json``).

    A fresh layer draws random sine atoms (``m_r``, ``m_ψ``, ``φ`` uniform, ``u = 0.5``)
    and a random residual, scaled so that ``W`` has the variance of ``nn.Linear``'s
    initialisation (:math:`1/(3\,\mathrm{in})`), half from the atoms and half from the
    residual when b > 0. :meth:`from_linear` fits an existing layer.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        tile: int = 32,
        atoms: int = 3,
        residual_bits: int = 1,
        bias: bool = True,
        device=None,
    ):
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidArgumentError(f"{name} must be a positive int, got {v!r}")
        self.in_features, self.out_features = in_features, out_features
        self.tile = _check_int(tile, "tile", (32, 64))
        self.atoms = _check_int(atoms, "atoms", range(1, 9))
        self.residual_bits = _check_int(residual_bits, "residual_bits", range(5))
        tiles = -(-out_features // tile) * -(-in_features // tile)
        groups = -(-in_features // GROUP)
        self.shadow = nn.Parameter(torch.empty(tiles, atoms, 4, device=device))
        self.register_buffer("state", torch.zeros(tiles, atoms, dtype=torch.int32, device=device))
        planes = torch.zeros(out_features, groups, residual_bits, 4, dtype=torch.int32, device=device)
        self.register_buffer("residual", planes)
        self.scales = (
            nn.Parameter(torch.empty(out_features, groups, device=device)) if residual_bits else None
        )
        self.bias = nn.Parameter(torch.empty(out_features, device=device)) if bias else None
        self.reset_parameters()

    # ------------------------------------------------------------- set-up
    def reset_parameters(self) -> None:
        """Random atoms and residual (class docstring), from torch's global generator."""
        var = 1.0 / (3 * self.in_features)
        atom_var = var / 2 if self.residual_bits else var
        t, j = self.shadow.shape[:2]
        dev = self.shadow.device
        with torch.no_grad():
            self.shadow[..., U] = 0.5
            self.shadow[..., 1] = 0.0
            self.shadow[..., PHI].uniform_(0, 2 * math.pi)
            self.shadow[..., LN_A] = 0.5 * math.log(
                2 * atom_var / j
            )  # a sine of amplitude A has variance A²/2
            lo, hi = M_PSI_RANGE
            zeros = torch.zeros(t, j, dtype=torch.int64, device=dev)
            fields = {"trk": zeros, "s_h": zeros, "sigma": zeros}
            fields["m_r"] = torch.randint(0, 1024, (t, j), device=dev)
            fields["m_psi"] = torch.randint(lo, hi + 1, (t, j), device=dev)
            self.state.copy_(pack_state(fields))
            if self.residual_bits:
                noise = torch.randn(self.out_features, self.in_features) * math.sqrt(var / 2)
                planes, scales = quantise_residual(noise, self.residual_bits)
                self.residual.copy_(planes)
                self.scales.copy_(scales)
            if self.bias is not None:
                bound = 1 / math.sqrt(self.in_features)
                self.bias.uniform_(-bound, bound)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, tile: int = 32, atoms: int = 3, residual_bits: int = 1, **fit_options
    ) -> RBELinear:
        """An ``RBELinear`` fitted to ``linear``'s weight by matching pursuit
        (:func:`xpu_stone.rbe.fit.fit_matrix`; ``fit_options``: ``radial_step``,
        ``m_psi_max``, ``refine_steps``, ``lr``), with its bias copied."""
        if not isinstance(linear, nn.Linear):
            raise InvalidArgumentError(f"from_linear takes an nn.Linear, got {type(linear).__name__}")
        layer = cls(
            linear.in_features, linear.out_features, tile, atoms, residual_bits, linear.bias is not None
        )
        fit = fit_matrix(linear.weight, tile, atoms, residual_bits, **fit_options)
        with torch.no_grad():
            layer.shadow.copy_(fit.shadow)
            layer.state.copy_(fit.state)
            layer.residual.copy_(fit.residual)
            if residual_bits:
                layer.scales.copy_(fit.scales)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias.detach().to(torch.float16))
        return layer.to(linear.weight.device)

    # ------------------------------------------------------------ compute
    def forward(self, x):
        return rbe_linear(x, self.shadow, self.state, self.residual, self._scales(), self.bias,
                          self.out_features, self.tile, self.residual_bits)  # fmt: skip

    def _scales(self):
        return self.scales if self.scales is not None else self.shadow.new_empty(0)

    def materialize(self, dtype=torch.float32):
        """The dense ``(out, in)`` weight (torch maths, differentiable), for checking."""
        s = self._scales()
        return generate(self.shadow.to(dtype), self.state, self.out_features, self.in_features, self.tile,
                        self.residual, s.to(dtype), self.residual_bits)  # fmt: skip

    def stored_bits(self) -> BitCount:
        """The bits the layer stores (codes, residual, scales, bias)."""
        return stored_bits(self.out_features, self.in_features, self.tile, self.atoms, self.residual_bits,
                           self.bias is not None)  # fmt: skip

    def codes(self):
        """The Packed128 codes ``(hi, lo)``, int64 ``(T, J)`` each."""
        return pack_atoms(self.shadow, self.state)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, tile={self.tile}, "
            f"atoms={self.atoms}, residual_bits={self.residual_bits}, bias={self.bias is not None}, "
            f"bits_per_weight={self.stored_bits().per_weight:.3f}"
        )

    # ---------------------------------------------------- stored form
    def to_file(self) -> LayerFile:
        """The stored form as a :class:`~xpu_stone.rbe.format.LayerFile` (numpy arrays)."""
        hi, lo = self.codes()
        half = lambda t: t.detach().to(torch.float16).cpu().numpy()  # noqa: E731
        return LayerFile(
            self.out_features, self.in_features, self.tile, self.atoms, self.residual_bits,
            torch.stack([hi, lo], -1).cpu().numpy(), self.residual.cpu().numpy(),
            half(self.scales) if self.scales is not None else numpy.zeros(0, numpy.float16),
            half(self.bias) if self.bias is not None else None,
        )  # fmt: skip

    def load_file(self, f: LayerFile) -> None:
        """Sets the layer from a :class:`~xpu_stone.rbe.format.LayerFile` of the same shape and setting."""
        mine = (
            self.out_features,
            self.in_features,
            self.tile,
            self.atoms,
            self.residual_bits,
            self.bias is not None,
        )
        theirs = (f.out_features, f.in_features, f.tile, f.atoms, f.residual_bits, f.bias is not None)
        if mine != theirs:
            raise ShapeMismatchError(
                f"layer (out, in, tile, atoms, residual_bits, bias) = {mine}, file has {theirs}"
            )
        self._load_arrays(f.codes, f.residual, f.scales, f.bias)

    def _load_arrays(self, codes, residual, scales, bias) -> None:
        codes = torch.as_tensor(codes)
        shadow, state = unpack_atoms(codes[..., 0], codes[..., 1])
        with torch.no_grad():
            self.shadow.copy_(shadow)
            self.state.copy_(state)
            self.residual.copy_(torch.as_tensor(residual))
            if self.scales is not None:
                self.scales.copy_(torch.as_tensor(scales).to(torch.float32))
            if self.bias is not None:
                self.bias.copy_(torch.as_tensor(bias).to(torch.float32))

    def _stored_names(self) -> tuple[str, ...]:
        return (
            ("codes", "residual")
            + ("scales",) * (self.scales is not None)
            + ("bias",) * (self.bias is not None)
        )

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        f = self.to_file()
        arrays = {"codes": f.codes, "residual": f.residual, "scales": f.scales, "bias": f.bias}
        for name in self._stored_names():
            destination[prefix + name] = torch.from_numpy(arrays[name]).to(self.shadow.device)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):  # fmt: skip
        names = self._stored_names()
        f = self.to_file()
        want = {"codes": f.codes.shape, "residual": f.residual.shape, "scales": f.scales.shape,
                "bias": None if f.bias is None else f.bias.shape}  # fmt: skip
        got = {}
        for name in names:
            key = prefix + name
            if key not in state_dict:
                missing_keys.append(key)
            elif tuple(state_dict[key].shape) != tuple(want[name]):
                error_msgs.append(
                    f"size mismatch for {key}: copying a param with shape {tuple(state_dict[key].shape)}, "
                    f"the shape in the current model is {tuple(want[name])}."
                )
            else:
                got[name] = state_dict[key].detach().cpu()
        if strict:
            for key in state_dict:
                if key.startswith(prefix) and key[len(prefix) :].split(".", 1)[0] not in (
                    *names,
                    *self._modules,
                ):
                    unexpected_keys.append(key)
        if len(got) == len(names):
            if got["codes"].dtype != torch.int64:
                raise RBEFormatError(f"{prefix}codes must be int64, got {got['codes'].dtype}")
            self._load_arrays(got["codes"], got["residual"], got.get("scales"), got.get("bias"))


def save(layer: RBELinear, path) -> int:
    """Writes ``layer`` to ``path`` in the file format of :mod:`xpu_stone.rbe.format`;
    returns the number of bytes written."""
    if not isinstance(layer, RBELinear):
        raise InvalidArgumentError(f"save takes an RBELinear, got {type(layer).__name__}")
    data = write_layer(layer.to_file())
    Path(path).write_bytes(data)
    return len(data)


def load(path, device=None) -> RBELinear:
    """The ``RBELinear`` stored in ``path`` (validated: :class:`~xpu_stone.errors.RBEFormatError`)."""
    f = read_layer(Path(path).read_bytes())
    layer = RBELinear(f.in_features, f.out_features, f.tile, f.atoms, f.residual_bits, f.bias is not None)
    layer.load_file(f)
    return layer.to(device) if device is not None else layer
