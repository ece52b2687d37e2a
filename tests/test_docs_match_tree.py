"""The architecture note (the package docstring) and the README's "Layout" section
name every folder and public module of the package, and name nothing that is not
there: a reorganisation that forgets its documentation fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "xpu_stone"
SHIMS = {"rowwise", "torch_ops", "policies", "profiler"}  # old import paths, named as such in the note


def tree_names(package: Path) -> tuple[set[str], set[str]]:
    """(sub-packages, public top-level modules) of ``package``."""
    folders = {p.parent.name for p in package.glob("*/__init__.py")}
    modules = {p.stem for p in package.glob("*.py") if not p.stem.startswith("_")}
    return folders, modules


def missing(text: str, folders: set[str], modules: set[str]) -> list[str]:
    """Folders (written ``name/``) and modules (written ``name``, in backquotes)
    that ``text`` does not name."""
    named = set(re.findall(r"`+([a-z_]+)/`+", text)) | set(re.findall(r"`+([a-z_]+)`+", text))
    return sorted(f"{f}/" for f in folders if f not in named and f"{f}/" not in text) + sorted(
        m for m in modules if m not in named
    )


def known_folders() -> set[str]:
    """Every folder of the repository and of the package, by name."""
    return {
        p.name for p in (*ROOT.iterdir(), *PACKAGE.rglob("*"), *(ROOT / "benchmarks").iterdir()) if p.is_dir()
    }


def stale(text: str, folders: set[str]) -> list[str]:
    """Folders the text names (``name/``) that are not in ``folders``."""
    return sorted({f for f in re.findall(r"`+([a-z_]+)/`+", text)} - folders)


def _layout_section(readme: str) -> str:
    return readme.split("## Layout", 1)[1].split("\n## ", 1)[0]


def test_package_docstring_names_every_folder_and_module():
    doc = ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text()))
    folders, modules = tree_names(PACKAGE)
    assert not missing(doc, folders, modules)
    assert not stale(doc, known_folders())


def test_readme_layout_names_every_folder():
    section = _layout_section((ROOT / "README.md").read_text())
    folders, modules = tree_names(PACKAGE)
    assert not missing(section, folders, modules - SHIMS - {"config", "constants", "errors"})
    assert not stale(section, known_folders())


def test_the_checks_can_fail():
    folders, modules = {"engine", "ops"}, {"poincare", "nn"}
    assert missing("``engine/`` and ``poincare``", folders, modules) == ["ops/", "nn"]
    assert stale("``engine/``, ``gone/``", folders) == ["gone"]
