"""RBE compressed layers (``shared/RBE.md``): weight matrices stored as 128-bit atom
codes plus a few-bit residual, generated inside the matmul.

* :mod:`~xpu_stone.rbe.format`: the Packed128 code (encode, decode, validation) and
  the file format of a compressed layer;
* :mod:`~xpu_stone.rbe.generator`: the generator, its closed-form gradients, the
  Lloyd–Max residual, the bit count;
* :mod:`~xpu_stone.rbe.functional`: the custom op ``xpu_stone::rbe_linear``;
* :mod:`~xpu_stone.rbe.fit`: matching pursuit for an existing matrix;
* :mod:`~xpu_stone.rbe.layer`: :class:`RBELinear`, :func:`save`, :func:`load`;
* :mod:`~xpu_stone.rbe.codecs`: the baselines (truncated SVD, 4-bit groups);
* :mod:`~xpu_stone.rbe.compress`: :func:`compress`, per-layer reports;
* :mod:`~xpu_stone.rbe.optim`: :class:`HybridOptimizer`.
"""

from __future__ import annotations

from . import codecs, fit, format, functional, generator, layer, optim
from .codecs import GroupQuantLinear, SVDLinear
from .compress import LayerReport, compress
from .format import decode, encode
from .functional import rbe_linear
from .generator import BitCount, stored_bits
from .layer import RBELinear, load, save
from .optim import HybridOptimizer

__all__ = [
    "BitCount",
    "GroupQuantLinear",
    "HybridOptimizer",
    "LayerReport",
    "RBELinear",
    "SVDLinear",
    "codecs",
    "compress",
    "decode",
    "encode",
    "fit",
    "format",
    "functional",
    "generator",
    "layer",
    "load",
    "optim",
    "rbe_linear",
    "save",
    "stored_bits",
]
