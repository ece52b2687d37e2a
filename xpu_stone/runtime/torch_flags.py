"""torch's process-wide kernel flags as a context: the matmul precision (TF32,
reduced-precision reductions in fp16/bf16 GEMMs) and the attention backends
``torch.nn.functional.scaled_dot_product_attention`` may use. :class:`TorchFlags`
sets them on ``__enter__`` and puts back the values it found on ``__exit__``.
:class:`~xpu_stone.runtime.policies.KernelPolicy` carries one (its ``matmul`` and
``attention`` arguments); xpu_stone's own kernels never read these flags.
"""

from __future__ import annotations

from .._deps import torch as _torch
from ..errors import InvalidArgumentError, UnsupportedOperationError

__all__ = ["ATTENTION_BACKENDS", "MATMUL_KEYS", "MATMUL_PRESETS", "TorchFlags", "restore", "save"]

MATMUL_PRESETS = {
    "ieee": {"tf32": False, "reduced_precision_reduction": False},
    "tf32": {"tf32": True, "reduced_precision_reduction": False},
    "fast": {"tf32": True, "reduced_precision_reduction": True},
}
MATMUL_KEYS = ("tf32", "reduced_precision_reduction")
ATTENTION_BACKENDS = ("flash", "efficient", "cudnn", "math")


def _matmul_settings(matmul) -> dict:
    """``"auto"``, a preset name or a dict of MATMUL_KEYS -> bool, as a dict (empty for auto)."""
    if matmul == "auto":
        return {}
    if isinstance(matmul, str):
        if matmul not in MATMUL_PRESETS:
            raise InvalidArgumentError(
                f"matmul must be 'auto', one of {sorted(MATMUL_PRESETS)} or a dict of {MATMUL_KEYS}, "
                f"got {matmul!r}"
            )
        return dict(MATMUL_PRESETS[matmul])
    if not isinstance(matmul, dict):
        raise InvalidArgumentError(f"matmul must be a string or a dict, got {type(matmul).__name__}")
    for key, value in matmul.items():
        if key not in MATMUL_KEYS:
            raise InvalidArgumentError(f"unknown matmul setting {key!r}; known: {MATMUL_KEYS}")
        if not isinstance(value, bool):
            raise InvalidArgumentError(f"matmul setting {key!r} must be true or false, got {value!r}")
    return dict(matmul)


def _attention_backends(attention) -> tuple[str, ...]:
    """``"auto"`` (empty tuple: leave torch's choice), one backend, or a list of allowed ones."""
    if attention == "auto":
        return ()
    names = (attention,) if isinstance(attention, str) else attention
    if not isinstance(names, (list, tuple)) or not names:
        raise InvalidArgumentError(
            f"attention must be 'auto', one of {ATTENTION_BACKENDS} or a non-empty list of them, "
            f"got {attention!r}"
        )
    for name in names:
        if name not in ATTENTION_BACKENDS:
            raise InvalidArgumentError(f"unknown attention backend {name!r}; known: {ATTENTION_BACKENDS}")
    return tuple(names)


def _tf32_switches(torch) -> tuple:
    """(legacy object, new-API object) of each TF32 switch: cuBLAS matmul, cuDNN conv."""
    return (
        (torch.backends.cuda.matmul, torch.backends.cuda.matmul),
        (torch.backends.cudnn, torch.backends.cudnn.conv),
    )


def _get_tf32(legacy, new):
    """The switch's state in the API the process uses: torch refuses to read the
    legacy ``allow_tf32`` once the new ``fp32_precision`` was set, and vice versa
    keeps working; so try legacy first."""
    try:
        return ("legacy", legacy.allow_tf32)
    except RuntimeError:
        return ("new", new.fp32_precision)


def _set_tf32(legacy, new, api: str, value) -> None:
    if api == "legacy":
        legacy.allow_tf32 = value
    else:
        new.fp32_precision = value


def save(torch) -> dict:
    m = torch.backends.cuda.matmul
    b = torch.backends.cuda
    return {
        "tf32": [_get_tf32(legacy, new) for legacy, new in _tf32_switches(torch)],
        "fp16_rpr": m.allow_fp16_reduced_precision_reduction,
        "bf16_rpr": m.allow_bf16_reduced_precision_reduction,
        "sdp": (
            b.flash_sdp_enabled(),
            b.mem_efficient_sdp_enabled(),
            b.cudnn_sdp_enabled(),
            b.math_sdp_enabled(),
        ),
    }


def _apply(torch, matmul: dict, attention: tuple, saved: dict) -> None:
    m = torch.backends.cuda.matmul
    if "tf32" in matmul:
        on = matmul["tf32"]
        for (legacy, new), (api, _) in zip(_tf32_switches(torch), saved["tf32"]):
            _set_tf32(legacy, new, api, on if api == "legacy" else ("tf32" if on else "ieee"))
    if "reduced_precision_reduction" in matmul:
        on = matmul["reduced_precision_reduction"]
        m.allow_fp16_reduced_precision_reduction = on
        m.allow_bf16_reduced_precision_reduction = on
    if attention:
        _set_sdp(torch, tuple(name in attention for name in ATTENTION_BACKENDS))


def _set_sdp(torch, flags: tuple) -> None:
    b = torch.backends.cuda
    flash, efficient, cudnn, math = flags
    b.enable_flash_sdp(flash)
    b.enable_mem_efficient_sdp(efficient)
    b.enable_cudnn_sdp(cudnn)
    b.enable_math_sdp(math)


def restore(torch, saved: dict) -> None:
    m = torch.backends.cuda.matmul
    for (legacy, new), (api, value) in zip(_tf32_switches(torch), saved["tf32"]):
        _set_tf32(legacy, new, api, value)
    m.allow_fp16_reduced_precision_reduction = saved["fp16_rpr"]
    m.allow_bf16_reduced_precision_reduction = saved["bf16_rpr"]
    _set_sdp(torch, saved["sdp"])


class TorchFlags:
    """``matmul``: ``"auto"`` (leave torch's flags), ``"ieee"``, ``"tf32"``, ``"fast"``
    or a dict of :data:`MATMUL_KEYS`; ``attention``: ``"auto"`` or the SDPA backends
    allowed (the others are switched off). Validated when made; re-entrant."""

    def __init__(self, matmul="auto", attention="auto"):
        self.matmul = _matmul_settings(matmul)
        self.attention = _attention_backends(attention)
        self._saved: list[dict] = []

    def __bool__(self) -> bool:
        return bool(self.matmul or self.attention)

    def __eq__(self, other) -> bool:
        return isinstance(other, TorchFlags) and (self.matmul, self.attention) == (
            other.matmul,
            other.attention,
        )

    @property
    def settings(self) -> dict:
        """What is pinned: ``{"tf32": bool, "reduced_precision_reduction": bool,
        "sdp_backends": [...]}``, only the keys given."""
        out = dict(self.matmul)
        if self.attention:
            out["sdp_backends"] = list(self.attention)
        return out

    def __enter__(self) -> TorchFlags:
        if self:
            if _torch is None:
                raise UnsupportedOperationError("KernelPolicy(matmul=..., attention=...) needs PyTorch")
            saved = save(_torch)
            _apply(_torch, self.matmul, self.attention, saved)
            self._saved.append(saved)
        return self

    def __exit__(self, *exc) -> None:
        if self:
            restore(_torch, self._saved.pop())
