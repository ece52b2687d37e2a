"""WordNet 3.0 noun hierarchy: parsing ``data.noun`` / ``index.noun`` and transitive closures.

``data.noun`` (format: wndb(5WN)) has one synset a line::

    offset lex_filenum n w_cnt word lex_id [word lex_id ...] p_cnt [sym offset pos src/tgt ...] | gloss

with ``w_cnt`` in hexadecimal; lines starting with a space are the licence
header. The hierarchy is given by the hypernym (``@``) and instance-hypernym
(``@i``) pointers. Synsets are named like NLTK (``dog.n.01``): the first word of
the synset, lower-cased, and its sense number, i.e. the synset's position in that
word's line of ``index.noun`` (without ``index.noun``: the order in which the
word's synsets appear in ``data.noun``).

The closure holds ``(u, v)`` for every synset ``u`` and every ancestor ``v`` of
``u`` (one or more hypernym / instance-hypernym steps up).
"""

from __future__ import annotations

import gzip
from collections import defaultdict
from pathlib import Path

from ..errors import InvalidArgumentError

HYPERNYM_POINTERS = ("@", "@i")


def parse_data_noun(path) -> tuple[dict[str, str], dict[str, list[str]], dict[str, list[str]]]:
    """``(first_word, parents, words)`` keyed by synset offset: the synset's first word, the
    offsets its ``@`` / ``@i`` pointers name, and all its words (for sense numbering)."""
    first, parents, words = {}, {}, {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip() or line.startswith(" "):
                continue
            fields = line.split("|", 1)[0].split()
            try:
                offset, pos, w_cnt = fields[0], fields[2], int(fields[3], 16)
                ws = [fields[4 + 2 * i].lower() for i in range(w_cnt)]
                at = 4 + 2 * w_cnt
                p_cnt = int(fields[at])
                ptrs = [fields[at + 1 + 4 * i : at + 5 + 4 * i] for i in range(p_cnt)]
            except (IndexError, ValueError):
                raise InvalidArgumentError(f"{path}:{lineno}: not a data.noun synset line") from None
            if pos != "n":
                continue
            first[offset] = ws[0]
            words[offset] = ws
            parents[offset] = [p[1] for p in ptrs if p[0] in HYPERNYM_POINTERS and p[2] == "n"]
    return first, parents, words


def parse_index_noun(path) -> dict[str, list[str]]:
    """word -> its synset offsets in sense order."""
    senses = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip() or line.startswith(" "):
                continue
            fields = line.split()
            p_cnt = int(fields[3])
            synset_cnt = int(fields[2])
            senses[fields[0].lower()] = fields[6 + p_cnt : 6 + p_cnt + synset_cnt]
    return senses


def synset_names(first, words, senses=None) -> dict[str, str]:
    """offset -> NLTK-style name ``word.n.NN``."""
    if senses is None:
        senses = defaultdict(list)
        for offset, ws in words.items():
            for w in ws:
                senses[w].append(offset)
    names = {}
    for offset, w in first.items():
        order = senses.get(w, [])
        number = order.index(offset) + 1 if offset in order else 1
        names[offset] = f"{w}.n.{number:02d}"
    return names


def transitive_closure(parents: dict[str, list[str]]) -> dict[str, set[str]]:
    """node -> all its ancestors (iterative post-order walk; raises on a cycle)."""
    ancestors: dict[str, set[str]] = {}
    for start in parents:
        if start in ancestors:
            continue
        stack, on_path = [(start, iter(parents.get(start, ())))], {start}
        while stack:
            node, pending = stack[-1]
            nxt = next((p for p in pending if p not in ancestors), None)
            if nxt is not None:
                if nxt in on_path:
                    raise InvalidArgumentError(f"hypernym cycle through synset {nxt}")
                on_path.add(nxt)
                stack.append((nxt, iter(parents.get(nxt, ()))))
                continue
            stack.pop()
            on_path.discard(node)
            out = set()
            for p in parents.get(node, ()):
                out.add(p)
                out |= ancestors[p]
            ancestors[node] = out
    return ancestors


def build_closures(wordnet_dir, root: str = "mammal.n.01"):
    """``(noun_edges, subtree_edges)``: sorted ``(hyponym, hypernym)`` name pairs of the noun
    closure and of its restriction to ``root`` and its descendants."""
    wordnet_dir = Path(wordnet_dir)
    first, parents, words = parse_data_noun(wordnet_dir / "data.noun")
    index = wordnet_dir / "index.noun"
    names = synset_names(first, words, parse_index_noun(index) if index.exists() else None)
    anc = transitive_closure(parents)
    edges = sorted({(names[u], names[v]) for u, vs in anc.items() for v in vs})
    by_name = {n: o for o, n in names.items()}
    if root not in by_name:
        raise InvalidArgumentError(f"root synset {root!r} is not in {wordnet_dir / 'data.noun'}")
    root_off = by_name[root]
    keep = {names[u] for u, vs in anc.items() if root_off in vs} | {root}
    sub = [(u, v) for u, v in edges if u in keep and v in keep]
    return edges, sub


def write_closure(path, edges) -> None:
    """Writes ``hyponym<TAB>hypernym`` lines (gzip when the name ends in ``.gz``)."""
    text = "".join(f"{u}\t{v}\n" for u, v in edges)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8", compresslevel=9) as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")


def read_closure(path) -> list[tuple[str, str]]:
    """The ``(hyponym, hypernym)`` pairs of a closure file written by :func:`write_closure`."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    for i, row in enumerate(rows, 1):
        if len(row) != 2:
            raise InvalidArgumentError(f"{path}:{i}: expected 'hyponym<TAB>hypernym', got {row!r}")
    return [(u, v) for u, v in rows]
