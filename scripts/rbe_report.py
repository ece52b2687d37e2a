"""The README's RBE tables, generated from the committed result files.

    python scripts/rbe_report.py                   # prints the block for README.md
    python scripts/rbe_report.py --check README.md # exit 1 when README's block differs

Reads, under ``benchmarks/results/``: :data:`QUALITY` (``bench_rbe.py quality`` on every
linear layer, with the whole model), :data:`DEFAULT` (settings of ``RBELinear`` within
1.6 bits a weight) and :data:`DIGITS` (``bench_rbe.py digits``). Writes one markdown
block between :data:`BEGIN` and :data:`END`: the per-layer error table (mean over
layers of the relative Frobenius error :math:`\\|W - \\hat W\\|_F / \\|W\\|_F`, with the
mean stored bits a weight), the whole-model table, the from-scratch table, the default
setting's table, and the recommendation that follows the per-layer table: at each
budget the codec of lowest mean error among ``rbe``, ``svd``, ``int4``. The
recommendation is checked against what ``codec="auto"`` picked for each layer (the
``auto`` rows): :class:`ValueError` when a pick is not the lowest error of that layer.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from xpu_stone.rbe.generator import stored_bits  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
QUALITY = "rbe-quality-cpu-2026-12-01-all.json"
DEFAULT = "rbe-default-cpu-2026-12-01.json"
DIGITS = "rbe-digits-cpu-2026-12-01.json"
BEGIN, END = "<!-- rbe-table:begin -->", "<!-- rbe-table:end -->"
CODECS = ("rbe", "svd", "int4")  # the library's codecs, what "auto" chooses among
COLUMNS = (("rbe", "RBE (chooser's setting)"), ("residual_only", "residual only, no atoms"),
           ("svd", "SVD (best of fp16/int8 factors)"), ("int4", "int4 (group 128)"), ("auto", 'codec="auto"'))  # fmt: skip
NAMES = {"rbe": "RBE", "svd": "SVD", "int4": "int4", "auto": "auto", "residual_only": "residual only"}


def _bits(b: float) -> str:
    return f"{b:g}"


def _by(rows, *keys) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def _layers(data) -> list[str]:
    return sorted({r["layer"] for r in data["layers"]})


def _check_auto(data) -> None:
    """Every ``auto`` row's error is the lowest of the ``rbe``/``svd``/``int4`` rows of its
    layer and budget, and its ``chosen`` codec is the one that reached it."""
    ok = _by([r for r in data["layers"] if "rel_error" in r], "layer", "budget")
    for (layer, budget), rows in ok.items():
        auto = [r for r in rows if r["codec"] == "auto"]
        rivals = [r for r in rows if r["codec"] in CODECS]
        if not auto or not rivals:
            continue
        best = min(rivals, key=lambda r: r["rel_error"])
        if auto[0]["rel_error"] != best["rel_error"] or auto[0]["chosen"] != best["codec"]:
            raise ValueError(
                f"{layer} at {budget} bits: auto chose {auto[0]['chosen']} ({auto[0]['rel_error']}), "
                f"the lowest error is {best['codec']} ({best['rel_error']})"
            )


def mean_errors(data) -> dict:
    """``{(budget, codec): (mean error, mean bits a weight, layers measured)}`` over the
    layers where the codec met the budget."""
    out = {}
    for (budget, codec), rows in _by(data["layers"], "budget", "codec").items():
        ok = [r for r in rows if "rel_error" in r]
        if ok:
            out[budget, codec] = (statistics.fmean(r["rel_error"] for r in ok),
                                  statistics.fmean(r["bits_per_weight"] for r in ok), len(ok))  # fmt: skip
    return out


def winners(data) -> dict:
    """``{budget: codec}``: the library codec of lowest mean error among those that met
    the budget on every layer."""
    means, n = mean_errors(data), len(_layers(data))
    budgets = sorted({b for b, _ in means})
    out = {}
    for b in budgets:
        full = [(means[b, c][0], c) for c in CODECS if (b, c) in means and means[b, c][2] == n]
        if full:
            out[b] = min(full)[1]
    return out


def _picks(data, budget) -> str:
    c = Counter(r["chosen"] for r in data["layers"] if r["codec"] == "auto" and r["budget"] == budget
                and "chosen" in r)  # fmt: skip
    return ", ".join(f"{NAMES[k]} {v}" for k, v in sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def quality_table(data) -> str:
    means, n = mean_errors(data), len(_layers(data))
    env = data["environment"]
    lines = [
        f"Relative Frobenius error ‖W − Ŵ‖/‖W‖ on all {n} linear layers of {data['model']}, mean over "
        f"layers (in brackets the mean stored bits a weight: codes, residual, scales and float16 bias "
        f"counted; a partial count when the codec met the budget on fewer layers); "
        f"CPU, torch {env['torch']}, {env['date']}, {data['refine_steps']} refinement steps "
        f"(`benchmarks/results/{QUALITY}`, plot beside it):",
        "",
        "| bits budget | " + " | ".join(h for _, h in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for b in sorted({b for b, _ in means}):
        cells = []
        for codec, _ in COLUMNS:
            if (b, codec) not in means:
                cells.append("—")
                continue
            err, bits, k = means[b, codec]
            part = "" if k == n else f", {k} of {n} layers"
            picks = f"; {_picks(data, b)}" if codec == "auto" else ""
            cells.append(f"{err:.3f} ({bits:.2f} b{part}{picks})")
        lines.append(f"| {_bits(b)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def whole_model_table(data) -> str:
    rows = [r for r in data["whole_model"] if r["scope"] != "none"]
    ref = next(r for r in data["whole_model"] if r["scope"] == "none")
    codecs = list(dict.fromkeys(r["codec"] for r in rows))
    lines = [
        f"Whole model, the feed-forward (`ffn`) or all linear layers compressed by each codec at the "
        f"budget: mean cosine of the embeddings of {data['sentences']} sentences to the original's / "
        f"share of sentences whose nearest neighbour among them is unchanged (dense: the same topic "
        f"for {ref['nn_same_topic']:.3f}); — where the codec cannot meet the budget:",
        "",
        "| layers | bits budget | " + " | ".join(NAMES.get(c, c) for c in codecs) + " |",
        "|---|---" + "|---" * len(codecs) + "|",
    ]
    cell = {(r["scope"], r["budget"], r["codec"]): r for r in rows}
    for scope, budget in dict.fromkeys((r["scope"], r["budget"]) for r in rows):
        out = []
        for c in codecs:
            r = cell.get((scope, budget, c))
            out.append(
                f"{r['mean_cosine']:.3f} / {r['nn_agreement']:.3f}" if r and "mean_cosine" in r else "—"
            )
        lines.append(f"| {scope} | {_bits(budget)} | " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def default_table(data) -> str:
    lines = [
        "Settings of `RBELinear` near the default, fitted to "
        f"{len(_layers(data))} layers ({', '.join(_layers(data))}); bits a weight of a 768→3072 layer "
        f"with bias (`benchmarks/results/{DEFAULT}`):",
        "",
        "| tile, atoms, residual bits | bits a weight (768→3072) | share of fp16 | mean error |",
        "|---|---|---|---|",
    ]
    for (codec,), rows in _by(data["layers"], "codec").items():
        tile, atoms, b = (int(v) for v in codec[4:].split("x"))
        bw = stored_bits(3072, 768, tile, atoms, b, True).per_weight
        err = statistics.fmean(r["rel_error"] for r in rows)
        lines.append(f"| {tile}, {atoms}, {b} | {bw:.3f} | {bw / 16:.1%} | {err:.4f} |")
    return "\n".join(lines) + "\n"


def digits_table(data) -> str:
    a = data["args"]
    lines = [
        f"From scratch on scikit-learn's digits ({data['train']} training, {data['test']} test images), the MLP "
        f"{' → '.join(map(str, data['sizes']))} (ReLU; the two layers into the hidden width compressed, the "
        f"classifier dense float16 in every model), {a['epochs']} epochs of batch {a['batch']}, "
        f"`rbe.HybridOptimizer` (Adam with a cosine schedule, its learning rate picked per model from "
        f"{', '.join(f'{lr:g}' for lr in a['lrs'])} on a validation fifth of the training images; "
        f"{a['moves']} discrete moves tried every {a['tau']} steps), seeds {', '.join(map(str, a['seeds']))}; "
        f"bytes and bits a weight of the whole stored model, test accuracy of the stored model (mean, "
        f"min–max), training time on 1 CPU thread (median), discrete moves kept of those tried (all seeds); "
        f"CPU, torch {data['environment']['torch']}, {data['environment']['date']} "
        f"(`benchmarks/results/{DIGITS}`):",
        "",
        "| model | stored bytes | bits a weight | lr | test accuracy | training time | moves kept |",
        "|---|---|---|---|---|---|---|",
    ]
    for (model,), rows in _by(data["rows"], "model").items():
        acc = [r["test_accuracy_stored"] for r in rows]
        tried = sum(r["moves_tried"] for r in rows)
        moves = f"{sum(r['moves_accepted'] for r in rows)} of {tried}" if tried else "—"
        lines.append(
            f"| {model} | {rows[0]['stored_bytes']:,.0f} | {rows[0]['bits_per_weight']:.2f} | {rows[0]['lr']:g} | "
            f"{statistics.fmean(acc):.3f} ({min(acc):.3f}–{max(acc):.3f}) | "
            f"{statistics.median(r['train_seconds'] for r in rows):.1f} s | {moves} |"
        )
    return "\n".join(lines) + "\n"


def recommendation(data) -> str:
    """One clause a budget: the codec of lowest mean error and what ``auto`` picked; then
    what RBE's atoms add over its residual coder alone, where both met every layer."""
    _check_auto(data)
    parts = [f"{_bits(b)} bit{'s' * (b != 1)}: **{NAMES[c]}** (auto: {_picks(data, b)})"
             for b, c in winners(data).items()]  # fmt: skip
    means, n = mean_errors(data), len(_layers(data))
    both = [b for b in sorted({b for b, _ in means})
            if all((b, c) in means and means[b, c][2] == n for c in ("rbe", "residual_only"))]  # fmt: skip
    atoms = ""
    if both:
        rise = ", ".join(f"{means[b, 'residual_only'][0] - means[b, 'rbe'][0]:.3f}" for b in both)
        saved = ", ".join(f"{means[b, 'rbe'][1] - means[b, 'residual_only'][1]:.2f}" for b in both)
        atoms = (
            f" Without its atoms (the residual coder alone, not a library codec) RBE's mean error rises by "
            f"{rise} at {', '.join(map(_bits, both))} bits, with {saved} fewer bits a weight stored."
        )
    return (
        '**Recommendation (follows the per-layer table; `codec="auto"` picks the lowest error layer '
        "by layer):** " + "; ".join(parts) + "." + atoms + "\n"
    )


def render(results: Path = RESULTS) -> str:
    """The whole block, markers included."""
    quality = json.loads((results / QUALITY).read_text())
    parts = [
        quality_table(quality),
        recommendation(quality),
        whole_model_table(quality),
        default_table(json.loads((results / DEFAULT).read_text())),
        digits_table(json.loads((results / DIGITS).read_text())),
    ]
    return BEGIN + "\n" + "\n".join(parts) + END


def block_in(text: str) -> str:
    """The block of ``text`` from :data:`BEGIN` to :data:`END`, markers included; raises
    :class:`ValueError` unless each marker is there once, in that order."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"expected one {BEGIN} followed by one {END}")
    return text[text.index(BEGIN) : text.index(END) + len(END)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--check", type=Path, help="a README: exit 1 when its block differs from the results")
    args = p.parse_args(argv)
    block = render(args.results)
    if args.check is None:
        print(block)
        return 0
    try:
        same = block_in(args.check.read_text()) == block
    except ValueError as e:
        print(f"{args.check}: {e}", file=sys.stderr)
        return 1
    if not same:
        print(f"{args.check}: the RBE block differs from `python scripts/rbe_report.py`", file=sys.stderr)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
