"""Inference sessions and the engines that run them.

    session = InferenceSession(model, (x,), engine="auto", policy=ExecutionPolicy(...))
    y = session.run(x)
    session.engine_name, session.reason      # what "auto" chose and why

An engine is a class registered in :data:`ENGINES` under a name: built in are
``"eager"`` (the model as written), ``"cuda_graph"`` (one captured CUDA graph per
input signature), ``"compile"`` (``torch.compile``) and, when onnxruntime is
installed, ``"onnxruntime"`` (an ``.onnx`` file). ``engine="auto"`` asks each
engine that takes part in the choice, by priority, whether it fits the model
and inputs, and takes the first that does (onnxruntime for an ONNX file, CUDA
graphs for CUDA inputs when the execution policy allows them, eager otherwise).
A new engine: subclass :class:`Engine` and ``@register_engine("name")``.
"""

from __future__ import annotations

import importlib.util
import logging
from contextlib import ExitStack
from pathlib import Path

from .._deps import cupy, is_cupy_array, torch
from ..errors import InvalidArgumentError, UnsupportedOperationError
from ..kernels.launch import cupy_stream
from . import profiler
from .devices import devices
from .graphs import CapturedGraph, input_device, map_arrays, signature
from .policies import ExecutionPolicy, KernelPolicy, active_execution_policy

log = logging.getLogger("xpu_stone.runtime")


class Engine:
    """One way to run a model. Subclasses set ``auto_priority`` (None: never
    chosen by "auto") and implement :meth:`run`; :meth:`fits` says, for "auto",
    why the engine suits the model and inputs (None when it does not)."""

    name = ""
    auto_priority: int | None = None

    def __init__(self, model, example_inputs: tuple, execution: ExecutionPolicy, options: dict):
        self.model = model
        self.example_inputs = example_inputs
        self.execution = execution
        self.options = options

    @classmethod
    def fits(cls, model, example_inputs: tuple, execution: ExecutionPolicy) -> str | None:
        return None

    def run(self, *inputs):
        raise NotImplementedError

    def describe(self) -> dict:
        """Engine-specific facts for :meth:`InferenceSession.describe`."""
        return {}


class EngineRegistry:
    """Engines by name."""

    def __init__(self):
        self._engines: dict[str, type[Engine]] = {}

    def register(self, name: str, engine: type[Engine] | None = None, *, replace: bool = False):
        """Registers ``engine`` under ``name``; without ``engine``, a class decorator."""

        def add(cls):
            if not (isinstance(cls, type) and issubclass(cls, Engine)):
                raise InvalidArgumentError(f"engine {name!r} must be a subclass of Engine, got {cls!r}")
            if name in self._engines and not replace:
                raise InvalidArgumentError(f"an engine named {name!r} is registered already")
            cls.name = name
            self._engines[name] = cls
            return cls

        return add if engine is None else add(engine)

    def unregister(self, name: str) -> None:
        self._engines.pop(name, None)

    def get(self, name: str) -> type[Engine]:
        cls = self._engines.get(name)
        if cls is None:
            raise InvalidArgumentError(f"no engine named {name!r}; registered: {self.names()}")
        return cls

    def names(self) -> list[str]:
        return sorted(self._engines)

    def __contains__(self, name: str) -> bool:
        return name in self._engines

    def choose(self, model, example_inputs: tuple, execution: ExecutionPolicy) -> tuple[str, str]:
        """(engine name, reason) of the highest-priority engine that fits."""
        ranked = sorted(
            (cls for cls in self._engines.values() if cls.auto_priority is not None),
            key=lambda cls: -cls.auto_priority,
        )
        for cls in ranked:
            reason = cls.fits(model, example_inputs, execution)
            if reason is not None:
                return cls.name, reason
        raise UnsupportedOperationError(f"no registered engine can run {type(model).__name__}")


ENGINES = EngineRegistry()
register_engine = ENGINES.register


def _no_grad():
    return torch.no_grad() if torch is not None else ExitStack()


def _is_onnx(model) -> bool:
    return isinstance(model, bytes) or (isinstance(model, (str, Path)) and str(model).endswith(".onnx"))


def _cuda_inputs(example_inputs) -> bool:
    arrays = [
        a for a in example_inputs if (torch is not None and isinstance(a, torch.Tensor)) or is_cupy_array(a)
    ]
    return bool(arrays) and all(is_cupy_array(a) or a.is_cuda for a in arrays)


@register_engine("eager")
class EagerEngine(Engine):
    """Calls the model as written (under ``torch.no_grad``)."""

    auto_priority = 0

    @classmethod
    def fits(cls, model, example_inputs, execution):
        return "runs the model as written" if callable(model) else None

    def run(self, *inputs):
        with _no_grad():
            return self.model(*inputs)


@register_engine("cuda_graph")
class CudaGraphEngine(Engine):
    """Replays a CUDA graph of the model, captured on the first input of each
    signature (shapes, dtypes, devices, non-array values); past
    ``ExecutionPolicy.max_graph_shapes`` signatures, new ones run eagerly.
    Options: ``warmup`` (runs before capture, default 2), ``copy_outputs``
    (default True: outputs are fresh tensors; False returns the graph's output
    buffers, overwritten by the next run)."""

    auto_priority = 20

    @classmethod
    def fits(cls, model, example_inputs, execution):
        if not callable(model) or torch is None or not torch.cuda.is_available():
            return None
        if not execution.cuda_graphs or not _cuda_inputs(example_inputs):
            return None
        dev = input_device(example_inputs)
        return f"inputs on cuda:{dev} and ExecutionPolicy.cuda_graphs is on"

    def __init__(self, model, example_inputs, execution, options):
        super().__init__(model, example_inputs, execution, options)
        if not execution.cuda_graphs:
            raise InvalidArgumentError(
                "engine 'cuda_graph' asked for, but ExecutionPolicy.cuda_graphs is off"
            )
        if torch is None or not torch.cuda.is_available() or not _cuda_inputs(example_inputs):
            raise UnsupportedOperationError("engine 'cuda_graph' needs CUDA tensors or CuPy arrays as inputs")
        self.warmup = options.get("warmup", 2)
        self.copy_outputs = options.get("copy_outputs", True)
        self.graphs: dict[tuple, CapturedGraph] = {}
        self.eager_calls = 0
        self._capture(example_inputs, signature(example_inputs))

    def _capture(self, inputs, key) -> CapturedGraph:
        with _no_grad():
            graph = self.graphs[key] = CapturedGraph(self.model, inputs, warmup=self.warmup)
        log.info("cuda_graph engine: captured a graph for %s", key)
        return graph

    def run(self, *inputs):
        key = signature(inputs)
        graph = self.graphs.get(key)
        if graph is None:
            if len(self.graphs) >= self.execution.max_graph_shapes:
                self.eager_calls += 1
                with _no_grad():
                    return self.model(*inputs)
            graph = self._capture(inputs, key)
        out = graph(*inputs)
        return map_arrays(_fresh_copy, out) if self.copy_outputs else out

    def describe(self) -> dict:
        return {"graphs": len(self.graphs), "eager_calls": self.eager_calls}


def _fresh_copy(a):
    """A copy of a graph output, queued on torch's current stream (the replay's)."""
    if isinstance(a, torch.Tensor):
        return a.clone()
    dev = a.device.id
    with cupy.cuda.Device(dev), cupy_stream(torch.cuda.current_stream(dev).cuda_stream):
        return a.copy()


@register_engine("compile")
class CompileEngine(Engine):
    """``torch.compile(model, **options)`` (e.g. ``{"mode": "reduce-overhead"}``),
    compiled and warmed up on the example inputs; new shapes recompile as torch
    decides."""

    def __init__(self, model, example_inputs, execution, options):
        super().__init__(model, example_inputs, execution, options)
        if torch is None:
            raise UnsupportedOperationError("engine 'compile' needs PyTorch")
        self.compiled = torch.compile(model, **options)
        self.run(*example_inputs)

    def run(self, *inputs):
        with _no_grad():
            return self.compiled(*inputs)


class OnnxRuntimeEngine(Engine):
    """An ``.onnx`` file (a path, or the model's bytes) run by onnxruntime: the
    CUDA execution provider when onnxruntime has it and a GPU is present, the
    CPU one otherwise (option ``providers`` to choose). Inputs are matched to
    the model's inputs by position; torch tensors in give torch tensors out (on
    the first input's device), NumPy arrays give NumPy arrays. A deterministic
    ExecutionPolicy turns on onnxruntime's deterministic compute."""

    auto_priority = 30

    @classmethod
    def fits(cls, model, example_inputs, execution):
        return "the model is an ONNX file" if _is_onnx(model) else None

    def __init__(self, model, example_inputs, execution, options):
        super().__init__(model, example_inputs, execution, options)
        import onnxruntime as ort

        if not _is_onnx(model):
            raise InvalidArgumentError("engine 'onnxruntime' takes a path to an .onnx file or its bytes")
        providers = options.get("providers")
        if providers is None:
            providers = ["CPUExecutionProvider"]
            if "CUDAExecutionProvider" in ort.get_available_providers() and devices():
                providers.insert(0, "CUDAExecutionProvider")
        so = ort.SessionOptions()
        so.use_deterministic_compute = execution.deterministic
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, sess_options=so, providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        if example_inputs:
            self.run(*example_inputs)

    def run(self, *inputs):
        if len(inputs) != len(self.input_names):
            raise InvalidArgumentError(
                f"the ONNX model takes {len(self.input_names)} inputs ({self.input_names}), got {len(inputs)}"
            )
        like = next((x for x in inputs if torch is not None and isinstance(x, torch.Tensor)), None)
        feed = {name: _to_numpy(x) for name, x in zip(self.input_names, inputs)}
        outs = self.session.run(None, feed)
        if like is not None:
            outs = [torch.from_numpy(o).to(like.device) for o in outs]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def describe(self) -> dict:
        return {"providers": self.session.get_providers(), "inputs": self.input_names}


def _to_numpy(x):
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if is_cupy_array(x):
        return x.get()
    return x


if importlib.util.find_spec("onnxruntime") is not None:
    register_engine("onnxruntime", OnnxRuntimeEngine)


def _policies(policy) -> tuple[KernelPolicy | None, ExecutionPolicy | None]:
    items = policy if isinstance(policy, (list, tuple)) else () if policy is None else (policy,)
    kernel = execution = None
    for p in items:
        if isinstance(p, KernelPolicy) and kernel is None:
            kernel = p
        elif isinstance(p, ExecutionPolicy) and execution is None:
            execution = p
        else:
            raise InvalidArgumentError(
                f"policy must be a KernelPolicy, an ExecutionPolicy or one of each, got {policy!r}"
            )
    return kernel, execution


class InferenceSession:
    """Runs ``model`` (a callable, or for the onnxruntime engine an ``.onnx``
    path or bytes) on inputs like ``example_inputs`` with an engine from
    :data:`ENGINES`.

    ``policy``: a :class:`~xpu_stone.runtime.policies.KernelPolicy`, an
    :class:`~xpu_stone.runtime.policies.ExecutionPolicy`, or one of each; entered
    around construction (capture, compilation) and every :meth:`run`. Without an
    ExecutionPolicy the one active at construction applies. ``options``: passed
    to the engine. The choice and the policies are logged on the
    ``xpu_stone.runtime`` logger and given by :meth:`describe`.

    With ``engine="auto"`` a CUDA-graph capture that fails (the model
    synchronises with the host, say) falls back to eager, and says so.
    """

    def __init__(
        self, model, example_inputs=(), engine: str = "auto", policy=None, options: dict | None = None
    ):
        if not isinstance(example_inputs, (tuple, list)):
            example_inputs = (example_inputs,)
        example_inputs = tuple(example_inputs)
        self.kernel_policy, execution = _policies(policy)
        self.execution_policy = execution or active_execution_policy()
        options = dict(options or {})
        with self._policies():
            if engine == "auto":
                name, reason = ENGINES.choose(model, example_inputs, self.execution_policy)
                reason = f"auto: {reason}"
            else:
                name, reason = engine, "asked for"
            try:
                self.engine = ENGINES.get(name)(model, example_inputs, self.execution_policy, options)
            except Exception as e:
                if engine != "auto" or name != "cuda_graph":
                    raise
                reason = f"auto: CUDA-graph capture failed ({type(e).__name__}: {e}); running eagerly"
                name = "eager"
                self.engine = ENGINES.get(name)(model, example_inputs, self.execution_policy, options)
        self.engine_name = name
        self.reason = reason
        log.info(
            "InferenceSession: engine %r (%s); %r; %r",
            name,
            reason,
            self.kernel_policy,
            self.execution_policy,
        )

    def _policies(self) -> ExitStack:
        stack = ExitStack()
        if self.kernel_policy is not None:
            stack.enter_context(self.kernel_policy)
        stack.enter_context(self.execution_policy)
        return stack

    def run(self, *inputs):
        """The model's output for ``inputs`` (positional, like the example inputs)."""
        with self._policies():
            if not profiler.ACTIVE:
                return self.engine.run(*inputs)
            dev, stream, shape, dtype = -1, 0, (), ""
            first = next((a for a in inputs if torch is not None and isinstance(a, torch.Tensor)), None)
            if first is not None:
                shape, dtype = tuple(first.shape), str(first.dtype).removeprefix("torch.")
                if first.is_cuda:
                    dev = first.device.index
                    stream = torch.cuda.current_stream(dev).cuda_stream
            return profiler.call(
                "session.run",
                self.engine_name,
                self.engine.run,
                *inputs,
                shape=shape,
                dtype=dtype,
                device=dev,
                stream_ptr=stream,
            )

    __call__ = run

    def describe(self) -> dict:
        """Engine, why it was chosen, the policies (as JSON documents) and engine facts."""
        return {
            "engine": self.engine_name,
            "reason": self.reason,
            "kernel_policy": self.kernel_policy.to_dict() if self.kernel_policy is not None else None,
            "execution_policy": self.execution_policy.to_dict(),
            **self.engine.describe(),
        }
