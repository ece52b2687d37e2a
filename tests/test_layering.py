"""Layering of the xpu_stone package, checked on its import graph.

Layers, lowest first. A module may import only modules of its own layer or a lower one:

  0 base     xpu_stone._version, _deps, errors, constants, config, reference(.*), data(.*)
  1 kernels  xpu_stone.kernels(.*)  (the old-path shim kernels.tuning included: it lives here)
  2 runtime  xpu_stone.runtime(.*)
  3 engine   xpu_stone.engine(.*)
  4 ops      xpu_stone.ops(.*)
  5 public   every other module: xpu_stone itself (__init__), poincare, lorentz, klein, convert,
             pairwise, linear, interop, manifolds, nn, compat, optim(.*), rbe(.*), examples(.*), __main__,
             and the old-path shims rowwise, torch_ops, policies, profiler

Further rules:

  - no import cycles (module-level and function-level imports both count);
  - no module imports the root package ``xpu_stone`` itself (``import xpu_stone``,
    ``from .. import __version__``), except the entry points ``__main__`` and ``examples(.*)``;
  - no function-level import of an xpu_stone module, except in those entry points (imports of
    optional third-party packages inside functions are fine);
  - the thin model modules poincare, lorentz, klein, convert import none of manifolds, nn,
    optim(.*), compat, which sit above them.

The graph comes from parsing every ``xpu_stone/**/*.py`` with ``ast``; the package is never
imported, so an import counts whichever branch (``if``, ``try``, function) it sits in. An edge
``a -> b`` means module ``a`` names module ``b`` in an import statement:

  - ``import xpu_stone.engine.rows``     -> xpu_stone.engine.rows
  - ``from .engine import call``         -> xpu_stone.engine, plus xpu_stone.engine.call if that is
                                            a module file
  - ``from ..kernels.registry import X`` -> xpu_stone.kernels.registry
  - ``from . import engine, pairwise``   -> xpu_stone.engine, xpu_stone.pairwise
  - ``from .. import __version__``       -> xpu_stone

A package the importer sits in (``xpu_stone`` for ``poincare``) is imported before the importer
runs, so ``from`` it gets an edge only when a name other than a submodule is taken from it.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import pytest

ROOT = "xpu_stone"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / ROOT

LAYER_NAMES = ("base", "kernels", "runtime", "engine", "ops", "public")
PUBLIC = 5
# Layers 0-4 by package prefix (a prefix covers the module and everything under it);
# layer 5 is every module none of these covers.
LAYER_PREFIXES: Mapping[int, tuple[str, ...]] = {
    0: (
        "xpu_stone._version",
        "xpu_stone._deps",
        "xpu_stone.errors",
        "xpu_stone.constants",
        "xpu_stone.config",
        "xpu_stone.reference",
        "xpu_stone.data",
    ),
    1: ("xpu_stone.kernels",),
    2: ("xpu_stone.runtime",),
    3: ("xpu_stone.engine",),
    4: ("xpu_stone.ops",),
}
ENTRY_POINTS = ("xpu_stone.__main__", "xpu_stone.examples")
THIN_MODELS = ("xpu_stone.poincare", "xpu_stone.lorentz", "xpu_stone.klein", "xpu_stone.convert")
ABOVE_MODELS = ("xpu_stone.manifolds", "xpu_stone.nn", "xpu_stone.optim", "xpu_stone.compat")


class Edge(NamedTuple):
    src: str
    dst: str
    line: int
    nested: bool  # the import sits inside a function or method body

    def __str__(self) -> str:
        return f"{self.src} -> {self.dst} (line {self.line})"


class Graph(NamedTuple):
    modules: frozenset[str]
    edges: list[Edge]


# --------------------------------------------------------------------------- the graph


def within(module: str, package: str) -> bool:
    """``module`` is ``package`` or sits under it."""
    return module == package or module.startswith(package + ".")


def module_name(path: str) -> tuple[str, bool]:
    """``xpu_stone/engine/__init__.py`` -> ("xpu_stone.engine", True); the bool: is a package."""
    parts = PurePosixPath(path).with_suffix("").parts
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target> import ...`` written in ``module``."""
    if level == 0:
        return target or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    keep = len(parts) - (level - 1)
    if keep < 1:
        raise ImportError(f"{module}: relative import of level {level} goes above the top package")
    return ".".join(parts[:keep] + ([target] if target else []))


class _Imports(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, known: frozenset[str]) -> None:
        self.module, self.is_package, self.known = module, is_package, known
        self.depth = 0  # functions entered
        self.edges: list[Edge] = []

    def _add(self, dst: str, node: ast.stmt) -> None:
        if within(dst, ROOT) and dst != self.module:
            self.edges.append(Edge(self.module, dst, node.lineno, self.depth > 0))

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = resolve(self.module, self.is_package, node.level, node.module)
        submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in self.known]
        for dst in submodules:
            self._add(dst, node)
        # Importing from `base` runs its __init__, unless `base` is a package the importer sits
        # in (already imported by then); a name other than a submodule is read from its namespace.
        if len(submodules) < len(node.names) or not within(self.module, base):
            self._add(base, node)


def graph_from_sources(sources: Mapping[str, str]) -> Graph:
    """The import graph of ``{"xpu_stone/engine/rows.py": source, ...}`` (paths from the
    directory above the package)."""
    names = {path: module_name(path) for path in sources}
    known = frozenset(name for name, _ in names.values())
    edges: list[Edge] = []
    for path, source in sorted(sources.items()):
        collector = _Imports(*names[path], known)
        collector.visit(ast.parse(source, filename=path))
        edges += collector.edges
    return Graph(known, edges)


def module_graph(root: Path = PACKAGE_DIR) -> Graph:
    """The import graph of the package in directory ``root``."""
    sources = {p.relative_to(root.parent).as_posix(): p.read_text("utf-8") for p in root.rglob("*.py")}
    return graph_from_sources(sources)


# --------------------------------------------------------------------------- the rules


def matching_layers(module: str, prefixes: Mapping[int, tuple[str, ...]] = LAYER_PREFIXES) -> list[int]:
    """The layers among 0-4 whose prefixes cover ``module`` (none: the public layer)."""
    return [layer for layer, pre in prefixes.items() if any(within(module, p) for p in pre)]


def layer_of(module: str) -> int:
    layers = matching_layers(module)
    if len(layers) > 1:
        raise ValueError(f"{module} is in layers {layers}")
    return layers[0] if layers else PUBLIC


def is_entry_point(module: str) -> bool:
    return any(within(module, p) for p in ENTRY_POINTS)


def goes_up(edge: Edge) -> bool:
    return layer_of(edge.dst) > layer_of(edge.src)


def imports_root(edge: Edge) -> bool:
    return edge.dst == ROOT and not is_entry_point(edge.src)


def nested_internal(edge: Edge) -> bool:
    return edge.nested and not is_entry_point(edge.src)


def model_imports_above(edge: Edge) -> bool:
    return edge.src in THIN_MODELS and any(within(edge.dst, p) for p in ABOVE_MODELS)


RULES: Mapping[str, Callable[[Edge], bool]] = {
    "upward": goes_up,
    "root": imports_root,
    "nested": nested_internal,
    "models": model_imports_above,
}


def violations(edges: Iterable[Edge], rule: str) -> list[Edge]:
    """The edges breaking ``rule`` (a key of RULES), in module and line order."""
    return sorted(e for e in edges if RULES[rule](e))


def find_cycle(edges: Iterable[Edge]) -> list[Edge] | None:
    """One import cycle as its edges (the first of each pair of modules by line), or None.

    Tarjan's strongly connected components; a cycle is then walked inside the first component
    with more than one module (or a module importing itself)."""
    out: dict[str, dict[str, Edge]] = {}
    for e in sorted(edges):
        out.setdefault(e.src, {}).setdefault(e.dst, e)
        out.setdefault(e.dst, {})

    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in out[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            components.append(component)

    for v in sorted(out):
        if v not in index:
            connect(v)

    for component in sorted(sorted(c) for c in components):
        start = component[0]
        if len(component) == 1 and start not in out[start]:
            continue
        # Breadth-first from `start` inside the component, back to `start`.
        members = set(component)
        came_from: dict[str, Edge] = {}
        frontier = [start]
        while frontier:
            nxt = []
            for v in frontier:
                for w, e in out[v].items():
                    if w == start:
                        path = [e]
                        while path[0].src != start:
                            path.insert(0, came_from[path[0].src])
                        return path
                    if w in members and w not in came_from:
                        came_from[w] = e
                        nxt.append(w)
            frontier = nxt
    return None


def report(title: str, edges: Iterable[Edge]) -> str:
    return title + ":\n" + "\n".join(f"  {e}" for e in edges)


# --------------------------------------------------------------------------- the package


@pytest.fixture(scope="module")
def graph() -> Graph:
    return module_graph()


def test_graph_is_read(graph):
    assert {ROOT, "xpu_stone.engine", "xpu_stone.kernels", "xpu_stone.poincare"} <= graph.modules
    assert any(e.dst.startswith("xpu_stone.kernels") for e in graph.edges)


def test_every_module_in_one_layer_and_no_upward_import(graph):
    several = {m: matching_layers(m) for m in sorted(graph.modules) if len(matching_layers(m)) > 1}
    assert not several, f"modules in more than one layer: {several}"
    up = violations(graph.edges, "upward")
    legend = ", ".join(f"{i} {name}" for i, name in enumerate(LAYER_NAMES))
    assert not up, report(f"imports of a higher layer ({legend})", up)


def test_no_import_cycle(graph):
    cycle = find_cycle(graph.edges)
    assert cycle is None, report("import cycle", cycle)


def test_no_import_of_the_root_package(graph):
    bad = violations(graph.edges, "root")
    assert not bad, report("imports of the root package xpu_stone (outside __main__ and examples)", bad)


def test_no_function_level_import_of_the_package(graph):
    bad = violations(graph.edges, "nested")
    assert not bad, report("function-level imports of xpu_stone modules (outside __main__, examples)", bad)


def test_thin_model_modules_do_not_import_above_them(graph):
    bad = violations(graph.edges, "models")
    assert not bad, report("model modules importing manifolds / nn / optim / compat", bad)


# --------------------------------------------------------------------------- the checker itself


def edges_of(sources: Mapping[str, str]) -> set[tuple[str, str, bool]]:
    return {(e.src, e.dst, e.nested) for e in graph_from_sources(sources).edges}


def test_relative_imports_resolve():
    sources = {
        "xpu_stone/__init__.py": "from . import engine\nfrom ._version import __version__\n",
        "xpu_stone/_version.py": "",
        "xpu_stone/config.py": "",
        "xpu_stone/pairwise.py": "",
        "xpu_stone/poincare.py": "from . import engine, pairwise\nfrom .engine import call\n",
        "xpu_stone/klein.py": "from .engine import rows\nimport xpu_stone.engine.rows as r\n",
        "xpu_stone/engine/__init__.py": "from .rows import f\nfrom . import rows\n",
        "xpu_stone/engine/rows.py": "from ..kernels.registry import X\nfrom .. import config\nimport numpy\n",
        "xpu_stone/engine/launch.py": "from .. import __version__\nfrom . import rows\n",
        "xpu_stone/runtime/__init__.py": "from .session import run\n",
        "xpu_stone/runtime/session.py": "from . import profiler\nfrom . import ENGINES\n",
        "xpu_stone/runtime/profiler.py": "",
        "xpu_stone/kernels/__init__.py": "",
        "xpu_stone/kernels/registry.py": "from __future__ import annotations\n",
    }
    assert edges_of(sources) == {
        ("xpu_stone", "xpu_stone.engine", False),
        ("xpu_stone", "xpu_stone._version", False),
        ("xpu_stone.poincare", "xpu_stone.engine", False),
        ("xpu_stone.poincare", "xpu_stone.pairwise", False),
        ("xpu_stone.klein", "xpu_stone.engine", False),  # from .engine import rows
        ("xpu_stone.klein", "xpu_stone.engine.rows", False),
        ("xpu_stone.engine", "xpu_stone.engine.rows", False),
        ("xpu_stone.engine.rows", "xpu_stone.kernels.registry", False),
        ("xpu_stone.engine.rows", "xpu_stone.config", False),
        ("xpu_stone.engine.launch", "xpu_stone", False),  # __version__ is no module
        ("xpu_stone.engine.launch", "xpu_stone.engine.rows", False),
        ("xpu_stone.runtime", "xpu_stone.runtime.session", False),
        ("xpu_stone.runtime.session", "xpu_stone.runtime.profiler", False),
        ("xpu_stone.runtime.session", "xpu_stone.runtime", False),  # ENGINES from the __init__
    }


def test_import_beyond_the_top_package_is_an_error():
    with pytest.raises(ImportError, match="above the top package"):
        graph_from_sources({"xpu_stone/engine/rows.py": "from ... import x\n"})


def test_nesting_is_recorded():
    source = """
import sys
if sys.version_info > (3,):
    from . import a
try:
    from . import b
except ImportError:
    pass
class K:
    from . import c
    def method(self):
        from . import d
def f():
    import cupy
    def g():
        from .e import x
    return lambda: 0
async def h():
    import xpu_stone.a
"""
    files = {f"xpu_stone/{m}.py": "" for m in "abcde"} | {"xpu_stone/m.py": source}
    got = {(e.dst, e.nested, e.line) for e in graph_from_sources(files).edges}
    assert got == {
        ("xpu_stone.a", False, 4),
        ("xpu_stone.b", False, 6),
        ("xpu_stone.c", False, 10),
        ("xpu_stone.d", True, 12),
        ("xpu_stone.e", True, 16),
        ("xpu_stone.a", True, 19),
    }


@pytest.mark.parametrize(
    ("module", "layer"),
    [
        ("xpu_stone", PUBLIC),
        ("xpu_stone._version", 0),
        ("xpu_stone.config", 0),
        ("xpu_stone.reference.poincare", 0),
        ("xpu_stone.data", 0),
        ("xpu_stone.kernels", 1),
        ("xpu_stone.kernels.tuning", 1),
        ("xpu_stone.runtime.policies", 2),
        ("xpu_stone.engine.rows", 3),
        ("xpu_stone.ops.poincare", 4),
        ("xpu_stone.poincare", PUBLIC),
        ("xpu_stone.policies", PUBLIC),
        ("xpu_stone.optim.optimizers", PUBLIC),
        ("xpu_stone.examples.digits_mlp", PUBLIC),
        ("xpu_stone.__main__", PUBLIC),
        ("xpu_stone.configs", PUBLIC),  # a prefix covers dotted children only
    ],
)
def test_layer_of(module, layer):
    assert layer_of(module) == layer


def test_overlapping_layers_are_found():
    overlapping = {**LAYER_PREFIXES, 4: ("xpu_stone.ops", "xpu_stone.kernels.tuning")}
    assert matching_layers("xpu_stone.kernels.tuning", overlapping) == [1, 4]
    assert matching_layers("xpu_stone.kernels.tuning") == [1]


def test_upward_imports_are_reported():
    graph = graph_from_sources(
        {
            "xpu_stone/kernels/launch.py": "from ..engine import rows\n",
            "xpu_stone/kernels/tuning.py": "from ..runtime.policies import P\n",
            "xpu_stone/reference/poincare.py": "from ..ops import poincare\n",
            "xpu_stone/errors.py": "from .kernels import launch\n",
            "xpu_stone/engine/rows.py": "from ..kernels import launch\nfrom ..errors import E\n",
            "xpu_stone/engine/__init__.py": "",
            "xpu_stone/kernels/__init__.py": "",
            "xpu_stone/runtime/policies.py": "",
            "xpu_stone/ops/poincare.py": "",
            "xpu_stone/poincare.py": "from .ops import poincare\n",
        }
    )
    assert [str(e) for e in violations(graph.edges, "upward")] == [
        "xpu_stone.errors -> xpu_stone.kernels (line 1)",
        "xpu_stone.errors -> xpu_stone.kernels.launch (line 1)",
        "xpu_stone.kernels.launch -> xpu_stone.engine (line 1)",
        "xpu_stone.kernels.launch -> xpu_stone.engine.rows (line 1)",
        "xpu_stone.kernels.tuning -> xpu_stone.runtime.policies (line 1)",
        "xpu_stone.reference.poincare -> xpu_stone.ops (line 1)",
        "xpu_stone.reference.poincare -> xpu_stone.ops.poincare (line 1)",
    ]


def test_cycles_are_found():
    graph = graph_from_sources(
        {
            "xpu_stone/a.py": "import os\nfrom . import b\n",
            "xpu_stone/b.py": "def f():\n    from . import a\n",
            "xpu_stone/c.py": "from . import a\n",
        }
    )
    assert [str(e) for e in find_cycle(graph.edges)] == [
        "xpu_stone.a -> xpu_stone.b (line 2)",
        "xpu_stone.b -> xpu_stone.a (line 2)",
    ]
    longer = [Edge("x", "y", 1, False), Edge("y", "z", 2, False), Edge("z", "x", 3, False)]
    assert [e.line for e in find_cycle(longer + [Edge("w", "x", 4, False)])] == [1, 2, 3]
    assert find_cycle([Edge("s", "s", 7, False)]) == [Edge("s", "s", 7, False)]
    assert find_cycle(longer[:2] + [Edge("x", "z", 5, False)]) is None


def test_package_and_its_submodule_make_no_cycle():
    graph = graph_from_sources(
        {
            "xpu_stone/runtime/__init__.py": "from .session import run\n",
            "xpu_stone/runtime/session.py": "from . import profiler\n",
            "xpu_stone/runtime/profiler.py": "",
        }
    )
    assert find_cycle(graph.edges) is None


def test_root_package_imports_are_reported():
    graph = graph_from_sources(
        {
            "xpu_stone/__init__.py": "from ._version import __version__\n",
            "xpu_stone/_version.py": "",
            "xpu_stone/kernels/tuned_table.py": "from .. import __version__\n",
            "xpu_stone/nn.py": "import xpu_stone\n",
            "xpu_stone/__main__.py": "import xpu_stone\n",
            "xpu_stone/examples/run.py": "from .. import __version__\n",
        }
    )
    assert [str(e) for e in violations(graph.edges, "root")] == [
        "xpu_stone.kernels.tuned_table -> xpu_stone (line 1)",
        "xpu_stone.nn -> xpu_stone (line 1)",
    ]


def test_nested_imports_are_reported():
    graph = graph_from_sources(
        {
            "xpu_stone/engine/__init__.py": "",
            "xpu_stone/compat.py": "def f():\n    import cupy\n    from xpu_stone import engine\n",
            "xpu_stone/ops/pairwise.py": "class C:\n    def m(self):\n        from ..engine import x\n",
            "xpu_stone/__main__.py": "def main():\n    from xpu_stone import engine\n",
            "xpu_stone/examples/run.py": "def main():\n    from ..engine import y\n",
        }
    )
    assert [str(e) for e in violations(graph.edges, "nested")] == [
        "xpu_stone.compat -> xpu_stone.engine (line 3)",
        "xpu_stone.ops.pairwise -> xpu_stone.engine (line 3)",
    ]


def test_model_modules_importing_above_them_are_reported():
    graph = graph_from_sources(
        {
            "xpu_stone/poincare.py": "from .manifolds import M\nfrom . import pairwise\n",
            "xpu_stone/klein.py": "from .optim.optimizers import A\n",
            "xpu_stone/lorentz.py": "def f():\n    from . import compat\n",
            "xpu_stone/nn.py": "from . import manifolds, poincare\n",
            "xpu_stone/manifolds.py": "",
            "xpu_stone/pairwise.py": "",
            "xpu_stone/compat.py": "",
            "xpu_stone/optim/__init__.py": "",
            "xpu_stone/optim/optimizers.py": "",
        }
    )
    assert [str(e) for e in violations(graph.edges, "models")] == [
        "xpu_stone.klein -> xpu_stone.optim.optimizers (line 1)",
        "xpu_stone.lorentz -> xpu_stone.compat (line 2)",
        "xpu_stone.poincare -> xpu_stone.manifolds (line 1)",
    ]
