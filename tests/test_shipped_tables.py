"""The shipped tuned tables (xpu_stone/kernels/tables/*.json) against the registry,
on CPU. Every H100/H200 user gets them by default, and the dispatcher ignores a
table (with a warning) or falls back entry by entry when it no longer matches:
these tests make such drift fail here instead.

Each table: named after its GPU, made by this library version, swept over each
op's current variants; every entry names a registered row-wise op, a dtype, one
of the table's buckets, a variant of that op and one of that variant's launch
configurations for the dtype that holds the bucket's row (the heuristic's
configuration recorded with it too); every (op, dtype, bucket) cell of the table
has a winner or the records of the configurations that failed it. The checks
are written here from the registry, and the package's own validation
(``TableFile.problems``) must agree. A corrupted copy of a table fails each check.
"""

from __future__ import annotations

import copy
import json

import pytest

import xpu_stone  # noqa: F401  (registers the ops)
from xpu_stone.kernels import REGISTRY
from xpu_stone.kernels.registry import DTYPES, LaunchConfig, OpKernels
from xpu_stone.kernels.tuned_table import TABLES_DIR, TableFile, library_version, slug

SHIPPED = sorted(TABLES_DIR.glob("*.json"))
# dtypes whose entries were taken out of the shipped tables and not yet re-tuned (see
# xpu_stone/kernels/tables/README.md): their cells run the heuristic's choice
WITHDRAWN = {"float16", "bfloat16"}


def _config_problem(op, dtype, bucket, variant_name, config, what):
    kernels = REGISTRY.ops.get(op)
    variant = next((v for v in kernels.variants if v.name == variant_name), None)
    if variant is None:
        return f"{op}/{dtype}/D={bucket}: {what} variant {variant_name!r} is not one of {op}'s"
    cfg = LaunchConfig(*config)
    if cfg not in variant.configs(dtype):
        return f"{op}/{dtype}/D={bucket}: {what} {variant_name} has no configuration {config} for {dtype}"
    if not cfg.covers(bucket):
        return f"{op}/{dtype}/D={bucket}: {what} {variant_name} {config} does not hold a row of {bucket}"
    return None


def table_problems(data: dict, name: str) -> list[str]:
    """What in the tuned table ``data`` (its JSON, file ``name``) the registry and
    this library no longer match; empty when it serves as made."""
    out = []
    if name != f"{slug(data['gpu_name'])}.json":
        out.append(f"{name}: the dispatcher looks for {slug(data['gpu_name'])}.json")
    if data["library_version"] != library_version():
        out.append(f"made by xpu_stone {data['library_version']}, this is {library_version()}")
    buckets = set(data["buckets"])
    for op, names in data["variants"].items():
        kernels = REGISTRY.ops.get(op)
        if not isinstance(kernels, OpKernels):
            out.append(f"op {op!r} is not a registered row-wise op")
        elif names != [v.name for v in kernels.variants]:
            out.append(f"op {op!r} was swept over {names}, it has {[v.name for v in kernels.variants]}")
    cells = set()
    for e in data["entries"]:
        op, dtype, bucket = e["op"], e["dtype"], e["bucket"]
        cells.add((op, dtype, bucket))
        if op not in data["variants"] or not isinstance(REGISTRY.ops.get(op), OpKernels):
            out.append(f"entry {op}/{dtype}/D={bucket}: not a swept, registered row-wise op")
            continue
        if dtype not in DTYPES or bucket not in buckets:
            out.append(f"entry {op}/{dtype}/D={bucket}: dtype or bucket outside {DTYPES} x {sorted(buckets)}")
            continue
        out.append(_config_problem(op, dtype, bucket, e["variant"], e["config"], "winner"))
        if e.get("heuristic_variant") is not None:
            out.append(
                _config_problem(op, dtype, bucket, e["heuristic_variant"], e["heuristic_config"], "heuristic")
            )
    failed = {(f["op"], f["dtype"], f["bucket"]) for f in data["failed"]}
    dtypes = {e["dtype"] for e in data["entries"]}
    for op in data["variants"]:
        for dtype in sorted(dtypes):
            for bucket in sorted(buckets):
                if (op, dtype, bucket) not in cells | failed:
                    out.append(f"cell {op}/{dtype}/D={bucket}: neither a winner nor a failure")
    return [p for p in out if p]


def _load(path):
    return json.loads(path.read_text())


def test_tables_are_shipped():
    assert {p.name for p in SHIPPED} >= {"nvidia-h100-80gb-hbm3.json", "nvidia-h200.json"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_table_matches_the_registry(path):
    data = _load(path)
    assert table_problems(data, path.name) == []
    table = TableFile.load(path)
    identity = {"gpu_name": table.gpu_name, "compute_capability": table.compute_capability, "driver": None}
    assert table.problems(identity) == []  # the dispatcher's own check agrees
    assert len(table.entries) == len(data["entries"])  # no duplicate cells
    assert {e["dtype"] for e in data["entries"]} == set(DTYPES) - WITHDRAWN


def _corruptions(data):
    """(what, corrupted copy) pairs: one fault each."""
    entry = next(i for i, e in enumerate(data["entries"]) if e["variant"] == "warp_per_row")
    e0 = data["entries"][entry]
    vec = e0["config"][2]

    def change(fn):
        d = copy.deepcopy(data)
        fn(d)
        return d

    def entry_set(**kv):
        return change(lambda d: d["entries"][entry].update(kv))

    return [
        ("unknown op", entry_set(op="lorentz_nope")),
        ("unknown variant", entry_set(variant="fastest")),
        ("config of no variant", entry_set(config=[32, 3, vec, 256])),
        ("config of another dtype", entry_set(config=[32, 1, 2 if vec != 2 else 8, 256])),
        ("row too long for the config", entry_set(config=[32, 1, vec, 256], bucket=4096)),
        ("heuristic config", entry_set(heuristic_config=[3, 1, 1, 256])),
        ("dtype", entry_set(dtype="int8")),
        ("bucket", entry_set(bucket=17)),
        ("variants swept", change(lambda d: d["variants"][e0["op"]].reverse())),
        ("op gone", change(lambda d: d["variants"].update(poincare_gone=["generic"]))),
        ("version", change(lambda d: d.update(library_version="0.0.1"))),
        ("missing cell", change(lambda d: d["entries"].pop(entry))),
    ]


RUNTIME_CHECKED = ("unknown op", "unknown variant", "config of no variant", "config of another dtype",
                   "variants swept", "op gone", "version")  # fmt: skip


@pytest.mark.parametrize("path", SHIPPED[:1], ids=lambda p: p.name)
def test_corrupted_copies_fail(path, tmp_path):
    data = _load(path)
    for what, bad in _corruptions(data):
        problems = table_problems(bad, path.name)
        assert problems, what
        copy_path = tmp_path / path.name
        copy_path.write_text(json.dumps(bad))
        if what in RUNTIME_CHECKED:  # the dispatcher's own check catches these too
            table = TableFile.load(copy_path)
            ident = {"gpu_name": table.gpu_name, "compute_capability": table.compute_capability}
            assert table.problems(ident), what
    assert table_problems(data, "renamed.json")
