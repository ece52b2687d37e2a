"""Data sets shipped with xpu_stone.

* ``mammal_closure.tsv.gz``: the transitive closure of the WordNet 3.0 noun
  hierarchy below ``mammal.n.01`` (``hyponym<TAB>hypernym`` per line), built by
  ``scripts/build_wordnet_closure.py`` from Debian's ``wordnet-base``. WordNet 3.0
  Copyright 2006 by Princeton University, under the WordNet licence in
  ``WORDNET_LICENSE`` (shipped beside it).
* The full noun closure (≈82k nodes, ≈740k edges) is not shipped; the same
  script writes it to :func:`default_closure_dir`, where :func:`load_closure`
  finds it as ``"nouns"``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InvalidArgumentError
from .wordnet import read_closure

DATA_DIR = Path(__file__).resolve().parent
SHIPPED = {"mammals": DATA_DIR / "mammal_closure.tsv.gz"}


def default_closure_dir() -> Path:
    """``$XPU_STONE_DATA_DIR`` or ``~/.cache/xpu_stone/data``."""
    root = os.environ.get("XPU_STONE_DATA_DIR")
    return Path(root) if root else Path.home() / ".cache" / "xpu_stone" / "data"


def closure_path(name: str) -> Path:
    """The file of closure ``name``: ``"mammals"`` (shipped), ``"nouns"`` (built by
    ``scripts/build_wordnet_closure.py``) or a path."""
    if name in SHIPPED:
        return SHIPPED[name]
    if name == "nouns":
        path = default_closure_dir() / "noun_closure.tsv.gz"
        if not path.exists():
            raise InvalidArgumentError(
                f"the noun closure is not built: run scripts/build_wordnet_closure.py (expected {path})"
            )
        return path
    path = Path(name)
    if not path.exists():
        raise InvalidArgumentError(f"closure {name!r}: not 'mammals', 'nouns' or an existing file")
    return path


def load_closure(name: str = "mammals") -> tuple[list[str], list[tuple[int, int]]]:
    """``(names, edges)``: node names (sorted) and ``(hyponym, hypernym)`` index pairs."""
    pairs = read_closure(closure_path(name))
    names = sorted({u for pair in pairs for u in pair})
    index = {n: i for i, n in enumerate(names)}
    return names, [(index[u], index[v]) for u, v in pairs]
