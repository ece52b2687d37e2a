"""The README's table of errors is true: every row's example raises exactly that
class, every error class of the package has a row, and a row whose example needs a
GPU (or several processes) names the test that raises it there.

A row is ``| `Class` | raised for | `example` |``: the example is Python run with
``torch``, ``xpu_stone`` and its public modules in scope, after ``x`` (a few points
of the unit ball) is made; ``config`` is restored afterwards. Instead of an
example, a row may name a test, ``test: tests/file.py::name``.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest
import torch

import xpu_stone
from xpu_stone import config, errors

README = Path(__file__).resolve().parents[1] / "README.md"
ROW = re.compile(r"^\|\s*`(\w+)`\s*\|(.*)\|\s*(?:`(.+)`|test: `([\w/.]+)::(\w+)`)\s*\|\s*$")


def _table() -> list[tuple[str, str | None, tuple[str, str] | None]]:
    text = README.read_text()
    start = text.index("### Errors")
    end = text.index("\n#", start + 1)
    rows = []
    for line in text[start:end].splitlines():
        m = ROW.match(line)
        if m:
            name, _, example, test_file, test_name = m.groups()
            rows.append((name, example, (test_file, test_name) if test_file else None))
    return rows


def _error_classes() -> set[type]:
    for mod in pkgutil.walk_packages(xpu_stone.__path__, "xpu_stone."):
        if mod.name.startswith(("xpu_stone.examples", "xpu_stone.__main__")):
            continue
        importlib.import_module(mod.name)
    found, todo = set(), [errors.XpuStoneError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub.__module__.startswith("xpu_stone") and sub not in found:
                found.add(sub)
                todo.append(sub)
    return found


def _namespace() -> dict:
    from xpu_stone import (
        compat,
        convert,
        interop,
        kernels,
        klein,
        linear,
        lorentz,
        manifolds,
        nn,
        optim,
        pairwise,
        poincare,
        rbe,
        runtime,
    )

    ns = dict(torch=torch, xpu_stone=xpu_stone, config=config)
    for m in (compat, convert, interop, kernels, klein, linear, lorentz, manifolds, nn, optim, pairwise, poincare, rbe,
              runtime):  # fmt: skip
        ns[m.__name__.rsplit(".", 1)[1]] = m
    ns["x"] = torch.tensor([[0.1, 0.2, 0.0], [0.0, -0.3, 0.4]])
    return ns


ROWS = _table()


def test_the_table_has_rows():
    assert len(ROWS) >= 8, ROWS


def test_every_error_class_has_a_row():
    named = {name for name, _, _ in ROWS}
    missing = sorted(cls.__name__ for cls in _error_classes() if cls.__name__ not in named)
    assert not missing, f"error classes missing from the README's table: {missing}"


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r[0])
def test_each_row_raises_its_class(row):
    name, example, test = row
    cls = next((c for c in _error_classes() if c.__name__ == name), None)
    assert cls is not None, f"{name} is not an error class of xpu_stone"
    if test is not None:
        path = README.parent / test[0]
        assert re.search(rf"^def {test[1]}\(", path.read_text(), re.M), f"{test} does not exist"
        assert name in path.read_text(), f"{test[0]} does not mention {name}"
        return
    saved = {k: v for k, v in vars(config).items() if not k.startswith("_")}
    try:
        with pytest.raises(errors.XpuStoneError) as info:
            exec(example, _namespace())
    finally:
        for key, value in saved.items():
            setattr(config, key, value)
    assert type(info.value) is cls, f"{example!r} raised {type(info.value).__name__}, not {name}"
