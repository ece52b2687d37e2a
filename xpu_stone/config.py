"""Process-wide switches.

``check_tensor_values``: when True (the default), a tensor curvature or
interpolation weight is checked to be finite (and positive, for ``c``) before
each launch. On CUDA that check synchronises the stream; set it to False in
training loops with a learnable curvature once the model is known to be sound.
It is skipped inside ``torch.compile`` tracing and CUDA-graph capture.

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

check_tensor_values = True

check_finite = os.environ.get("XPU_STONE_CHECK_FINITE", "").strip().lower() in ("1", "true", "yes", "on")

# Test switch: fill every kernel output with NaN before the launch, so that a
# test can see that each element was written. Costs one fill per output.
poison_outputs = False
