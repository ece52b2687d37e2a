"""Kernel and execution choices as data.

A :class:`KernelPolicy` names, per op, the variant the dispatcher must use (or
``"auto"``), and the torch-side kernel choices of a run: matmul precision
(TF32, reduced-precision reductions) and the attention backends that
``torch.nn.functional.scaled_dot_product_attention`` may use. An
:class:`ExecutionPolicy` says how a run executes: deterministic algorithms,
CUDA graphs for sessions, how many shapes a session captures.
Both save to and load from JSON and work as context manager::

    with KernelPolicy({"poincare_mobius_add": "generic"}, matmul="ieee", attention="flash"):
        y = model(x)

Unknown ops, variants, fields and values are errors, raised when the policy is
made or loaded. When the named variant cannot take an input (a vectorized
variant on strided data, say), the dispatcher falls back to its heuristic for
that call, and :func:`xpu_stone.kernels.explain` says so.

The variant choices are per thread: an entered policy pushes its pins onto the
dispatcher's stack (:class:`xpu_stone.kernels.dispatcher.pin`). The torch-side
settings are torch's process-wide flags: a policy sets them on ``__enter__`` and
puts back the values it found on ``__exit__``.
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from pathlib import Path

from .._deps import torch as _torch
from ..errors import InvalidArgumentError, UnsupportedOperationError
from ..kernels import dispatcher
from ..kernels.registry import REGISTRY

_state = threading.local()


def _stack() -> list:
    if not hasattr(_state, "stack"):
        _state.stack = []
    return _state.stack


def _exec_stack() -> list:
    if not hasattr(_state, "exec_stack"):
        _state.exec_stack = []
    return _state.exec_stack


def active_policy() -> KernelPolicy | None:
    """The innermost :class:`KernelPolicy` entered on this thread, if any."""
    stack = _stack()
    return stack[-1] if stack else None


def active_execution_policy() -> ExecutionPolicy:
    """The innermost :class:`ExecutionPolicy` entered on this thread, else the default one."""
    stack = _exec_stack()
    return stack[-1] if stack else DEFAULT_EXECUTION


def _load_json(cls, path: str | Path):
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise InvalidArgumentError(f"{path} is not valid JSON: {e}") from e
    return cls.from_dict(data)


def _check_document(cls, data, fields: set) -> None:
    if not isinstance(data, dict) or data.get("format") != cls.FORMAT:
        raise InvalidArgumentError(f"not a {cls.__name__} document (expected format {cls.FORMAT!r})")
    unknown = set(data) - fields - {"format"}
    if unknown:
        raise InvalidArgumentError(f"unknown {cls.__name__} fields: {sorted(unknown)}")


# ------------------------------------------------------- torch-side settings
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


def _torch_settings_save(torch) -> dict:
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


def _torch_settings_apply(torch, matmul: dict, attention: tuple, saved: dict) -> None:
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


def _torch_settings_restore(torch, saved: dict) -> None:
    m = torch.backends.cuda.matmul
    for (legacy, new), (api, value) in zip(_tf32_switches(torch), saved["tf32"]):
        _set_tf32(legacy, new, api, value)
    m.allow_fp16_reduced_precision_reduction = saved["fp16_rpr"]
    m.allow_bf16_reduced_precision_reduction = saved["bf16_rpr"]
    _set_sdp(torch, saved["sdp"])


def _torch_or_raise(what: str):
    if _torch is None:
        raise UnsupportedOperationError(f"{what} needs PyTorch")
    return _torch


# ------------------------------------------------------------- KernelPolicy
class KernelPolicy:
    """Per-op variant choices (``{"poincare_dist": "warp_per_row", ...}``) and
    torch's kernel choices.

    ``matmul``: ``"auto"`` (leave torch's flags), ``"ieee"`` (no TF32, no
    reduced-precision reductions in fp16/bf16 GEMMs), ``"tf32"`` (TF32 for fp32
    matmuls and cuDNN convolutions), ``"fast"`` (TF32 and reduced-precision
    reductions), or a dict with any of ``tf32`` and ``reduced_precision_reduction``.

    ``attention``: ``"auto"``, or the SDPA backends allowed inside the policy
    (one of or a list of ``"flash"``, ``"efficient"``, ``"cudnn"``, ``"math"``);
    the others are switched off.
    """

    FORMAT = "xpu_stone.KernelPolicy/1"

    def __init__(self, variants: dict[str, str] | None = None, *, matmul="auto", attention="auto"):
        self.variants = dict(variants or {})
        for op, variant in self.variants.items():
            if not isinstance(variant, str):
                raise InvalidArgumentError(f"variant for {op!r} must be a string, got {variant!r}")
            kernels = REGISTRY.get(op)
            if variant != "auto":
                kernels.variant(variant)
        self._matmul = _matmul_settings(matmul)
        self._attention = _attention_backends(attention)
        self.matmul = matmul if isinstance(matmul, str) else dict(matmul)
        self.attention = attention if isinstance(attention, str) else list(attention)
        self._saved: list[dict] = []
        self._pins: list[dispatcher.pin] = []

    def variant_for(self, op: str) -> str:
        return self.variants.get(op, "auto")

    @property
    def torch_settings(self) -> dict:
        """What the policy sets in torch: ``{"tf32": bool, "reduced_precision_reduction":
        bool, "sdp_backends": [...]}``, only the keys it pins."""
        out = dict(self._matmul)
        if self._attention:
            out["sdp_backends"] = list(self._attention)
        return out

    def to_dict(self) -> dict:
        return {
            "format": self.FORMAT,
            "variants": dict(sorted(self.variants.items())),
            "matmul": self.matmul,
            "attention": self.attention,
        }

    @classmethod
    def from_dict(cls, data: dict) -> KernelPolicy:
        _check_document(cls, data, {"variants", "matmul", "attention"})
        return cls(
            data.get("variants", {}),
            matmul=data.get("matmul", "auto"),
            attention=data.get("attention", "auto"),
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> KernelPolicy:
        return _load_json(cls, path)

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, KernelPolicy)
            and self.variants == other.variants
            and self._matmul == other._matmul
            and self._attention == other._attention
        )

    def __repr__(self) -> str:
        return f"KernelPolicy({self.variants!r}, matmul={self.matmul!r}, attention={self.attention!r})"

    def __enter__(self) -> KernelPolicy:
        if self._matmul or self._attention:
            torch = _torch_or_raise("KernelPolicy(matmul=..., attention=...)")
            saved = _torch_settings_save(torch)
            _torch_settings_apply(torch, self._matmul, self._attention, saved)
            self._saved.append(saved)
        pins = dispatcher.pin(self.variants)
        pins.__enter__()
        self._pins.append(pins)
        _stack().append(self)
        return self

    def __exit__(self, *exc) -> None:
        stack = _stack()
        stack.pop(len(stack) - 1 - stack[::-1].index(self))
        self._pins.pop().__exit__(*exc)
        if self._matmul or self._attention:
            _torch_settings_restore(_torch, self._saved.pop())


# ---------------------------------------------------------- ExecutionPolicy
class ExecutionPolicy:
    """How a run executes.

    ``deterministic``: bit-identical results across runs of the same inputs on
    the same device: inside the policy torch runs deterministic algorithms only
    (``torch.use_deterministic_algorithms``; cuDNN deterministic, no autotuning;
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` when unset). xpu_stone's own reductions
    never use atomics (a shared curvature's gradient is summed per row, then by
    a torch reduction), so they are deterministic under any policy.

    ``cuda_graphs``: whether an :class:`~xpu_stone.runtime.InferenceSession` may
    replay CUDA graphs (``engine="auto"`` picks them on GPU only when True;
    asking for ``engine="cuda_graph"`` when False is an error).
    ``max_graph_shapes``: input shapes a CUDA-graph session captures before it
    runs new shapes eagerly.

    ``notes``: free-text precision notes (``{"mlp": "bf16 storage, fp32 accumulate"}``),
    kept in the JSON and logged by sessions.
    """

    FORMAT = "xpu_stone.ExecutionPolicy/1"
    FIELDS = ("deterministic", "cuda_graphs", "max_graph_shapes", "notes")
    # read by no op path (every kernel takes every input it accepts); still accepted
    # in documents written by 0.1.0, ignored with a warning
    RETIRED_FIELDS = ("reference_fallback",)

    def __init__(
        self,
        *,
        deterministic: bool = False,
        cuda_graphs: bool = True,
        max_graph_shapes: int = 8,
        notes: dict[str, str] | None = None,
    ):
        for name, value in (
            ("deterministic", deterministic),
            ("cuda_graphs", cuda_graphs),
        ):
            if not isinstance(value, bool):
                raise InvalidArgumentError(f"ExecutionPolicy.{name} must be true or false, got {value!r}")
        if (
            isinstance(max_graph_shapes, bool)
            or not isinstance(max_graph_shapes, int)
            or max_graph_shapes < 1
        ):
            raise InvalidArgumentError(
                f"ExecutionPolicy.max_graph_shapes must be an integer >= 1, got {max_graph_shapes!r}"
            )
        notes = dict(notes or {})
        for key, value in notes.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise InvalidArgumentError(f"ExecutionPolicy.notes must map strings to strings, got {key!r}")
        self.deterministic = deterministic
        self.cuda_graphs = cuda_graphs
        self.max_graph_shapes = max_graph_shapes
        self.notes = notes
        self._saved: list[tuple] = []

    def to_dict(self) -> dict:
        return {"format": self.FORMAT, **{name: getattr(self, name) for name in self.FIELDS}}

    @classmethod
    def from_dict(cls, data: dict) -> ExecutionPolicy:
        _check_document(cls, data, {*cls.FIELDS, *cls.RETIRED_FIELDS})
        retired = [k for k in cls.RETIRED_FIELDS if k in data]
        if retired:
            warnings.warn(f"ExecutionPolicy fields {retired} are retired and ignored", DeprecationWarning, 2)
        return cls(**{k: v for k, v in data.items() if k in cls.FIELDS})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ExecutionPolicy:
        return _load_json(cls, path)

    def __eq__(self, other) -> bool:
        return isinstance(other, ExecutionPolicy) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return "ExecutionPolicy(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in self.FIELDS) + ")"

    def __enter__(self) -> ExecutionPolicy:
        if self.deterministic:
            torch = _torch_or_raise("ExecutionPolicy(deterministic=True)")
            saved = (
                torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.deterministic,
                torch.backends.cudnn.benchmark,
                os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
            )
            # cuBLAS is deterministic only with a fixed workspace; torch refuses
            # to run cuBLAS under deterministic algorithms without this setting.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
            self._saved.append(saved)
        _exec_stack().append(self)
        return self

    def __exit__(self, *exc) -> None:
        stack = _exec_stack()
        stack.pop(len(stack) - 1 - stack[::-1].index(self))
        if self.deterministic:
            torch = _torch
            algos, warn_only, cudnn_det, bench, cublas = self._saved.pop()
            torch.use_deterministic_algorithms(algos, warn_only=warn_only)
            torch.backends.cudnn.deterministic = cudnn_det
            torch.backends.cudnn.benchmark = bench
            if cublas is None:
                os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
            else:
                os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas


DEFAULT_EXECUTION = ExecutionPolicy()
