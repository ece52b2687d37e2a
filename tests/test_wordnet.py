"""WordNet closure builder, shipped data, reconstruction metrics and a short CPU training run."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from xpu_stone.data import DATA_DIR, load_closure
from xpu_stone.data.wordnet import build_closures, read_closure, write_closure
from xpu_stone.errors import InvalidArgumentError
from xpu_stone.examples import poincare_embeddings as pe

ROOT = Path(__file__).resolve().parents[1]

# offset lex n w_cnt(hex) words... p_cnt pointers... | gloss  (two-space lines: licence header)
DATA_NOUN = """\
  1 This is a licence header line, skipped.
00000001 03 n 01 entity 0 000 | that which exists
00000002 03 n 02 Animal 0 beast 0 002 @ 00000001 n 0000 ~ 00000004 n 0000 | a living organism
00000003 03 n 01 plant 0 001 @ 00000001 n 0000 | flora
00000004 05 n 01 dog 0 002 @ 00000002 n 0000 + 00000099 v 0101 | a canine
00000005 05 n 01 dog 1 001 @ 00000003 n 0000 | a plant also called dog (second sense)
00000006 05 n 01 cat 0 001 @ 00000002 n 0000 | a feline
00000007 18 n 01 Lassie 0 001 @i 00000004 n 0000 | a famous dog
00000008 05 n 0a puppy 0 a 0 b 0 c 0 d 0 e 0 f 0 g 0 h 0 i 0 001 @ 00000004 n 0000 | ten words, w_cnt in hex
"""
INDEX_NOUN = """\
  1 licence header
animal n 1 1 @ 1 0 00000002
dog n 2 1 @ 2 0 00000005 00000004
"""


def _write_db(tmp_path, index=True):
    (tmp_path / "data.noun").write_text(DATA_NOUN)
    if index:
        (tmp_path / "index.noun").write_text(INDEX_NOUN)
    return tmp_path


def test_closure_of_synthetic_database(tmp_path):
    nouns, sub = build_closures(_write_db(tmp_path), root="animal.n.01")
    # index.noun lists dog's plant sense first: the canine is dog.n.02
    expected = {
        ("animal.n.01", "entity.n.01"), ("plant.n.01", "entity.n.01"), ("dog.n.02", "animal.n.01"),
        ("dog.n.02", "entity.n.01"), ("dog.n.01", "plant.n.01"), ("dog.n.01", "entity.n.01"),
        ("cat.n.01", "animal.n.01"), ("cat.n.01", "entity.n.01"), ("lassie.n.01", "dog.n.02"),
        ("lassie.n.01", "animal.n.01"), ("lassie.n.01", "entity.n.01"), ("puppy.n.01", "dog.n.02"),
        ("puppy.n.01", "animal.n.01"), ("puppy.n.01", "entity.n.01"),
    }  # fmt: skip
    assert set(nouns) == expected and len(nouns) == len(expected)
    assert set(sub) == {
        (u, v) for u, v in expected if v != "entity.n.01" and u not in ("plant.n.01", "dog.n.01")
    }


def test_sense_numbers_without_index(tmp_path):
    nouns, _ = build_closures(_write_db(tmp_path, index=False), root="animal.n.01")
    assert ("dog.n.01", "animal.n.01") in nouns and ("dog.n.02", "plant.n.01") in nouns


def test_builder_errors(tmp_path):
    (tmp_path / "data.noun").write_text("00000001 03 n zz entity\n")
    with pytest.raises(InvalidArgumentError, match="data.noun"):
        build_closures(tmp_path)
    (tmp_path / "data.noun").write_text(
        "00000001 03 n 01 a 0 001 @ 00000002 n 0000 | x\n00000002 03 n 01 b 0 001 @ 00000001 n 0000 | y\n"
    )
    with pytest.raises(InvalidArgumentError, match="cycle"):
        build_closures(tmp_path, root="a.n.01")
    _write_db(tmp_path)
    with pytest.raises(InvalidArgumentError, match="root"):
        build_closures(tmp_path, root="unicorn.n.01")


def test_build_script_and_round_trip(tmp_path):
    spec = importlib.util.spec_from_file_location("bwc", ROOT / "scripts" / "build_wordnet_closure.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "out"
    assert (
        script.main(["--wordnet-dir", str(_write_db(tmp_path)), "--out", str(out), "--root", "animal.n.01"])
        == 0
    )
    nouns = read_closure(out / "noun_closure.tsv.gz")
    assert len(nouns) == 14 and len(read_closure(out / "animal_closure.tsv.gz")) == 6
    write_closure(tmp_path / "plain.tsv", nouns)
    assert read_closure(tmp_path / "plain.tsv") == nouns


def test_shipped_mammal_closure():
    names, edges = load_closure("mammals")
    assert 1100 < len(names) < 1300 and 6000 < len(edges) < 7000
    root = names.index("mammal.n.01")
    has_root = {u for u, v in edges if v == root}
    assert has_root == set(range(len(names))) - {root}  # every other node is a mammal
    assert "Princeton University" in (DATA_DIR / "WORDNET_LICENSE").read_text()
    with pytest.raises(InvalidArgumentError):
        load_closure("no_such_closure")


def _brute_force_metrics(w, edges, n):
    d = torch.stack([torch.stack([_dist(w[i], w[j]) for j in range(n)]) for i in range(n)])
    ranks, aps = [], []
    for u in range(n):
        pos = {v for a, v in edges if a == u}
        if not pos:
            continue
        others = sorted((float(d[u, j]), j) for j in range(n) if j != u)
        hits = 0
        precisions = []
        for place, (_, j) in enumerate(others, 1):
            if j in pos:
                hits += 1
                precisions.append(hits / place)
                ranks.append(1 + place - hits)  # non-neighbours ahead, plus one
        aps.append(sum(precisions) / len(pos))
    return sum(ranks) / len(ranks), sum(aps) / len(aps)


def _dist(x, y):
    sq = ((x - y) ** 2).sum()
    return torch.acosh(1 + 2 * sq / ((1 - (x * x).sum()) * (1 - (y * y).sum())))


def test_reconstruction_metrics_match_brute_force():
    gen = torch.Generator().manual_seed(0)
    n = 12
    edges = [(u, v) for u in range(n) for v in range(n) if u != v and torch.rand(1, generator=gen) < 0.25]
    h = pe.Hierarchy([str(i) for i in range(n)], edges, torch.device("cpu"))
    w = torch.randn(n, 3, dtype=torch.float64, generator=gen)
    w = w / (1 + w.norm(dim=-1, keepdim=True))
    mr, mp = pe.reconstruction(w, h, max_block=40)  # several chunks
    bmr, bmp = _brute_force_metrics(w, edges, n)
    assert math.isclose(mr, bmr, rel_tol=1e-12) and math.isclose(mp, bmp, rel_tol=1e-12)


def _tree(depth=3, arity=2):
    parents, nodes = {}, [0]
    for level in range(depth):
        for p in [x for x in nodes if _depth(x, parents) == level]:
            for _ in range(arity):
                parents[len(nodes)] = p
                nodes.append(len(nodes))
    edges = []
    for u in nodes:
        a = u
        while a in parents:
            a = parents[a]
            edges.append((u, a))
    return [f"n{i}" for i in nodes], edges


def _depth(x, parents):
    d = 0
    while x in parents:
        x, d = parents[x], d + 1
    return d


def test_tiny_hierarchy_is_embedded_exactly():
    # a root and 8 leaves. (Deeper trees: the paper's directed reconstruction also ranks a
    # node's own descendants as non-ancestors, which short runs do not get exactly right.)
    names, edges = _tree(depth=1, arity=8)
    torch.manual_seed(0)
    h = pe.Hierarchy(names, edges, torch.device("cpu"))
    t = pe.Trainer(h, dim=5, batch=4, negatives=10, lr=0.15, optimizer="rsgd", seed=0)
    for ep in range(60):
        t.epoch(burnin=ep < 5)
    mr, mp = pe.reconstruction(t.weight, h)
    assert mp == 1.0 and mr == 1.0
    assert (t.weight.detach().norm(dim=-1) < 1).all()


def test_learning_rate_milestones():
    assert [pe.lr_scale(ep, [3, 5], 0.1) for ep in range(7)] == pytest.approx([1, 1, 1, 0.1, 0.1, 0.01, 0.01])
    assert pe.lr_scale(100, [], 0.1) == 1.0
    h = pe.Hierarchy(*_tree(depth=1, arity=4), torch.device("cpu"))
    t = pe.Trainer(h, dim=2, batch=2, negatives=2, lr=0.2, burnin_factor=10.0, seed=0)
    t.epoch(burnin=True, scale=0.5)
    assert t.opt.param_groups[0]["lr"] == pytest.approx(0.01)
    t.epoch(burnin=False, scale=0.5)
    assert t.opt.param_groups[0]["lr"] == pytest.approx(0.1)
    with pytest.raises(SystemExit):  # argparse's error: gamma must be positive
        pe.parser().parse_args(["--lr-gamma", "0"])


def test_float64_with_a_small_boundary_margin():
    h = pe.Hierarchy(*_tree(depth=2, arity=3), torch.device("cpu"))
    t = pe.Trainer(h, dim=3, batch=4, negatives=5, lr=5.0, seed=0, dtype=torch.float64, boundary_eps=1e-8)
    for ep in range(30):
        t.epoch(burnin=ep < 2)
    w = t.weight.detach()
    assert w.dtype == torch.float64 and t.weight.manifold.boundary_eps(w.dtype) == 1e-8
    norm = w.norm(dim=-1)
    assert norm.max() > 1 - 1e-5  # past the default margin: the leaves use the room
    assert norm.max() <= 1 - 1e-8 + 1e-15
    with pytest.raises(InvalidArgumentError, match="rounds to 1"):
        pe.Trainer(h, dim=3, dtype=torch.float32, boundary_eps=1e-8)


def test_short_cpu_training_run(tmp_path):
    names, edges = load_closure("mammals")
    # the closure below canine.n.02 (dogs, wolves, foxes...): a few hundred edges
    root = names.index("canine.n.02")
    keep = {u for u, v in edges if v == root} | {root}
    sub = [(names[u], names[v]) for u, v in edges if u in keep and v in keep]
    path = tmp_path / "canines.tsv"
    write_closure(path, sub)
    out = tmp_path / "run"
    res = pe.train(pe.parser().parse_args(
        ["--data", str(path), "--dim", "2", "--epochs", "20", "--burnin", "5", "--batch", "64", "--lr", "0.15",
         "--negatives", "20", "--lr-milestones", "15", "--out", str(out), "--plot", "--quiet", "--log-every", "1"]))  # fmt: skip
    assert res["edges"] == len(sub) and res["loss_history"][-1][1] < 0.85 * res["loss_history"][0][1]
    assert res["map"] > 0.1 and res["mean_rank"] < 60  # random placement: MAP ~0.03, mean rank ~110
    saved = torch.load(out / "poincare_canines_2d.pt")
    assert saved["embeddings"].shape == (res["nodes"], 2) and (saved["embeddings"].norm(dim=-1) < 1).all()
    assert json.loads((out / "poincare_canines_2d.json").read_text())["map"] == res["map"]
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "poincare_canines_2d.png").stat().st_size > 1000


def test_training_stops_at_the_time_limit_and_resumes(tmp_path):
    names, edges = _tree(depth=2, arity=3)
    path = tmp_path / "tree.tsv"
    write_closure(path, [(names[u], names[v]) for u, v in edges])
    common = ["--data", str(path), "--dim", "3", "--batch", "8", "--negatives", "5", "--burnin", "2",
              "--lr-milestones", "6", "--quiet", "--log-every", "1", "--out", str(tmp_path / "run")]  # fmt: skip
    first = pe.train(pe.parser().parse_args([*common, "--epochs", "10", "--time-limit", "1e-9"]))
    assert first["epochs"] == 1 and first["epochs_planned"] == 10 and len(first["legs"]) == 1
    ckpt = tmp_path / "run" / "poincare_tree_3d.pt"
    rest = pe.train(pe.parser().parse_args([*common, "--epochs", "10", "--resume", str(ckpt)]))
    assert rest["epochs"] == 10 and [leg["epochs"] for leg in rest["legs"]] == [[0, 1], [1, 10]]
    assert [ep for ep, _ in rest["loss_history"]] == list(range(10))
    assert [ev[0] for ev in rest["evaluations"]] == [1, 10]
    assert rest["evaluations"][-1][1] == rest["mean_rank"]
    assert rest["train_seconds"] == pytest.approx(sum(leg["seconds"] for leg in rest["legs"]))
    with pytest.raises(InvalidArgumentError, match="already 10 epochs"):
        pe.train(pe.parser().parse_args([*common, "--epochs", "10", "--resume", str(ckpt)]))
    with pytest.raises(InvalidArgumentError, match="embeddings"):
        pe.train(pe.parser().parse_args([*common, "--epochs", "20", "--dim", "4", "--resume", str(ckpt)]))
    other = tmp_path / "other.tsv"
    write_closure(other, [("a.n.01", "b.n.01")])
    with pytest.raises(InvalidArgumentError, match="other data"):
        pe.train(
            pe.parser().parse_args([*common, "--epochs", "20", "--data", str(other), "--resume", str(ckpt)])
        )
