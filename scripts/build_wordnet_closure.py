"""Builds the transitive closures of the WordNet 3.0 noun hierarchy and of its mammal subtree.

Input: the WordNet database files of Debian's ``wordnet-base`` package
(``data.noun``, ``index.noun``), e.g.::

    apt-get download wordnet-base && dpkg-deb -x wordnet-base_*.deb wn
    python scripts/build_wordnet_closure.py --wordnet-dir wn/usr/share/wordnet

Writes ``noun_closure.tsv.gz`` and ``mammal_closure.tsv.gz`` (``hyponym<TAB>hypernym``
per line) to ``--out`` (default: the xpu_stone cache, where
``python -m xpu_stone.examples.poincare_embeddings --data nouns`` finds the noun
closure). ``--package`` also refreshes the mammal closure shipped in
``xpu_stone/data/``. WordNet is under the WordNet 3.0 licence
(``xpu_stone/data/WORDNET_LICENSE``), which goes with every copy of the data.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from xpu_stone.data import DATA_DIR, default_closure_dir  # noqa: E402
from xpu_stone.data.wordnet import build_closures, write_closure  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wordnet-dir", required=True, help="folder holding data.noun (and index.noun)")
    p.add_argument("--out", default=None, help="output folder (default: %(default)s -> xpu_stone cache)")
    p.add_argument("--root", default="mammal.n.01", help="root synset of the subtree closure")
    p.add_argument("--package", action="store_true", help="also write xpu_stone/data/mammal_closure.tsv.gz")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    nouns, sub = build_closures(args.wordnet_dir, args.root)
    out = Path(args.out) if args.out else default_closure_dir()
    stem = args.root.split(".")[0]
    write_closure(out / "noun_closure.tsv.gz", nouns)
    write_closure(out / f"{stem}_closure.tsv.gz", sub)
    if args.package:
        write_closure(DATA_DIR / f"{stem}_closure.tsv.gz", sub)
    for name, edges in (("nouns", nouns), (stem, sub)):
        nodes = {u for e in edges for u in e}
        print(f"{name}: {len(nodes)} nodes, {len(edges)} edges")
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
