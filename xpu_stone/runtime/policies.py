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
from .torch_flags import TorchFlags

_state = threading.local()


def _exec_stack() -> list:
    if not hasattr(_state, "exec_stack"):
        _state.exec_stack = []
    return _state.exec_stack


def active_policy() -> KernelPolicy | None:
    """The innermost :class:`KernelPolicy` entered on this thread, if any (the owner of
    the dispatcher's innermost pins)."""
    pins = dispatcher.active_pins()
    return pins.owner if pins is not None and isinstance(pins.owner, KernelPolicy) else None


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


def _torch_or_raise(what: str):
    if _torch is None:
        raise UnsupportedOperationError(f"{what} needs PyTorch")
    return _torch


# ------------------------------------------------------------- KernelPolicy
class KernelPolicy:
    """Per-op variant choices (``{"poincare_dist": "warp_per_row", ...}``), pinned in
    the dispatcher while entered, and torch's kernel choices (a
    :class:`~xpu_stone.runtime.torch_flags.TorchFlags`, set while entered).

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
        self._flags = TorchFlags(matmul, attention)
        self.matmul = matmul if isinstance(matmul, str) else dict(matmul)
        self.attention = attention if isinstance(attention, str) else list(attention)
        # one pin (one cache token) per policy, so the dispatcher's caches stay bounded
        self._pin = dispatcher.pin(self.variants, owner=self)

    def variant_for(self, op: str) -> str:
        return self.variants.get(op, "auto")

    @property
    def torch_settings(self) -> dict:
        """What the policy sets in torch: ``{"tf32": bool, "reduced_precision_reduction":
        bool, "sdp_backends": [...]}``, only the keys it pins."""
        return self._flags.settings

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
            and self._flags == other._flags
        )

    def __repr__(self) -> str:
        return f"KernelPolicy({self.variants!r}, matmul={self.matmul!r}, attention={self.attention!r})"

    def __enter__(self) -> KernelPolicy:
        self._flags.__enter__()
        self._pin.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._pin.__exit__(*exc)
        self._flags.__exit__(*exc)


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
        reference_fallback: bool | None = None,
    ):
        if reference_fallback is not None:  # retired in 0.1.x: read by no op path
            warnings.warn(
                "ExecutionPolicy(reference_fallback=...) is retired and ignored", DeprecationWarning, 2
            )
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
