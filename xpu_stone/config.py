"""Process-wide switches.

``check_tensor_values``: where the values of a tensor curvature ``c`` or per-row
scalar (``t``, ``r``, the Klein midpoint's weights) given to a row-wise op are
checked on the host, raising a typed error before anything runs. ``None`` (the
default): where that costs no synchronisation (values held on the CPU) or where the
call synchronises anyway (the checked mode below); a GPU tensor otherwise goes to
the kernels unread, and the row-wise kernels give NaN for every row whose ``c`` is
not finite and positive or whose ``t`` is not finite (outputs and gradients).
``True``: every tensor, on the host (on a GPU one synchronisation per tensor).
``False``: none (bad rows give NaN on the CPU too). Values that are read on the host
anyway are checked whatever this says: a manifold's, an optimizer's or a fixed-``c``
layer's curvature, and the one ``c`` of ``cdist``, ``knn`` and the HNN++ maps,
which their kernels take by value (a GPU tensor ``c`` there costs one
synchronisation a call). ``mobius_matvec`` follows the row-wise rule (its kernels
read a GPU tensor ``c`` on the device; a bad one makes the whole call NaN). Set by the environment
variable ``XPU_STONE_CHECK_TENSOR_VALUES`` at import (``1``/``true``/``yes``/``on``
or ``0``/``false``/``no``/``off``; anything else leaves None), or this attribute
at run time. Skipped inside ``torch.compile`` tracing and CUDA-graph capture.

``check_finite``: the checked mode, off by default (set the environment variable
``XPU_STONE_CHECK_FINITE=1`` before the import, or this attribute at run time).
Without it, an input row with a NaN or inf, or a point input outside its model's
domain beyond rounding, gives NaN in the outputs that depend on it (see
:mod:`xpu_stone.engine.checks`). With it, the row-wise ops, ``cdist`` / ``knn``
(and any entry point calling :func:`xpu_stone.engine.checks.check_values`) raise
:class:`~xpu_stone.errors.NonFiniteError` or :class:`~xpu_stone.errors.DomainError`
naming the op, the argument and its first bad row, before anything runs. It costs
one pass over the inputs and one synchronisation a call; it is skipped inside
``torch.compile`` tracing and CUDA-graph capture.
"""

import os

_FLAG = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}


def _env_flag(name: str):
    """True, False or None (unset or not a flag word) from environment variable ``name``."""
    return _FLAG.get(os.environ.get(name, "").strip().lower())


check_tensor_values = _env_flag("XPU_STONE_CHECK_TENSOR_VALUES")

check_finite = _env_flag("XPU_STONE_CHECK_FINITE") is True

# Test switch: fill every kernel output with NaN before the launch, so that a
# test can see that each element was written. Costs one fill per output.
poison_outputs = False
