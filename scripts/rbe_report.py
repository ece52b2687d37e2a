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

Then the GPU speed of the newest :data:`SPEED` file (``bench_rbe.py speed``; its rows'
``shape`` is ``[out, in]``): median ms a call of each implementation, the ratio
:math:`t_\\mathrm{RBE} / t_\\mathrm{cuBLAS}`, the bytes each layer keeps, and issue 17's
targets for ``RBELinear(768, 3072)``: fused forward at batch 1 no slower than dense
fp16 cuBLAS; at least 4x faster than generating the weight then multiplying
(:math:`t_\\mathrm{gen} / t_\\mathrm{RBE} \\ge 4`); backward at most
:data:`BACKWARD_TARGET_MS` at batch <= 32, estimated as
:math:`t_\\mathrm{fwd+bwd} - t_\\mathrm{fwd}` where both were timed at that batch
(the file times no backward alone).
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
SPEED = "rbe-speed-*.json"  # the newest by its environment's date
BEGIN, END = "<!-- rbe-table:begin -->", "<!-- rbe-table:end -->"
CODECS = ("rbe", "svd", "int4")  # the library's codecs, what "auto" chooses among
COLUMNS = (("rbe", "RBE (chooser's setting)"), ("residual_only", "residual only, no atoms"),
           ("svd", "SVD (best of fp16/int8 factors)"), ("int4", "int4 (group 128)"), ("auto", 'codec="auto"'))  # fmt: skip
NAMES = {"rbe": "RBE", "svd": "SVD", "int4": "int4", "auto": "auto", "residual_only": "residual only"}
IMPLS = {"rbe_fused": "RBE fused", "dense_fp16_cublas": "dense fp16 (cuBLAS)", "svd": "SVD pair (fp16)",
         "generate_then_matmul": "generate then matmul", "torch_int4": "torch int4"}  # fmt: skip
MEMORY = {"rbe_fused": "RBE on the device", "rbe_stored": "RBE stored", "dense_fp16_cublas": "dense fp16",
          "svd": "SVD pair (fp16)", "torch_int4": "torch int4"}  # fmt: skip
TARGET_SHAPE = (3072, 768)  # [out, in] of RBELinear(768, 3072), as bench_rbe.py writes "shape"
BACKWARD_TARGET_MS = 0.030


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


def _impl(name: str) -> str:
    """``svd_fp16_rank<r>`` is the SVD pair whatever its rank."""
    return "svd" if name.startswith("svd_") else name


def _layer(shape) -> str:
    out, inp = shape
    return f"{inp}→{out}"


def _timings(data, key: str = "ms") -> dict:
    """``{(shape, mode, batch, impl): ms}`` of the rows' ``key`` (``ms``: the eager call,
    ``graph_ms``: device time from a CUDA-graph replay); a float, or the ``"failed: ..."`` text."""
    return {(tuple(r["shape"]), r["mode"], r["batch"], _impl(r["impl"])): r[key] for r in data["rows"]
            if key in r}  # fmt: skip


TIMING = {
    "ms": "median ms a call (CUDA events around each eager call: host launch cost included)",
    "graph_ms": "device ms a call (20 calls captured in one CUDA graph, the replay timed with CUDA events: "
    "no host launch cost)",
}


def _ms(v) -> str:
    return "—" if v is None else f"{v:.3f}" if isinstance(v, float) else "failed"


def _ratio(a, b) -> float | None:
    return a / b if isinstance(a, float) and isinstance(b, float) else None


def newest_speed(results: Path) -> tuple[str, dict] | None:
    """``(file name, result)`` of the :data:`SPEED` file of the latest date, or None."""
    found = [(json.loads(p.read_text()), p.name) for p in results.glob(SPEED)]
    if not found:
        return None
    data, name = max(found, key=lambda dn: (dn[0]["environment"]["date"], dn[1]))
    return name, data


def speed_table(data, name: str, key: str = "ms") -> str:
    env, ms = data["environment"], _timings(data, key)
    impls = list(dict.fromkeys(k[3] for k in ms))
    cols = [i for i in IMPLS if i in impls] + [i for i in impls if i not in IMPLS]
    ran = [i for i in cols if any(isinstance(v, float) for k, v in ms.items() if k[3] == i)]
    failed = {_impl(r["impl"]): r[key] for r in data["rows"] if isinstance(r.get(key), str)}
    unavailable = {_impl(r["impl"]): r["unavailable"] for r in data["rows"] if "unavailable" in r}
    ranks = {tuple(r["shape"]): r["impl"].rsplit("rank", 1)[1] for r in data["rows"]
             if r.get("impl", "").startswith("svd_")}  # fmt: skip
    notes = [f"Implementations that ran: {', '.join(IMPLS.get(i, i) for i in ran)}."]
    if failed:
        notes.append(
            "Failed: "
            + "; ".join(f"{IMPLS.get(i, i)} ({m.removeprefix('failed: ')})" for i, m in failed.items())
            + "."
        )
    for i, why in unavailable.items():
        notes.append(f"{IMPLS.get(i, i)} did not run ({why.removeprefix('failed: ')}).")
    if "torch_int4" not in impls and "torch_int4" not in unavailable:
        notes.append(
            "torch's int4 kernel (`_weight_int4pack_mm`) has no row: `bench_rbe.py speed` leaves it out "
            "when it does not run on the device, and the file keeps no reason."
        )
    lines = [
        f"GPU speed of the default `RBELinear` (tile 32, 3 atoms, 1-bit residual), float16 input, on one "
        f"{env['gpu']}, torch {env['torch']}, CUDA {env['cuda']}, {env['date']} (`benchmarks/results/{name}`, "
        f"`bench_rbe.py speed`): {TIMING[key]}; forward without grad, forward + backward "
        f"of `y.sum()`; the SVD pair of float16 factors at rank RBE's stored bits / (16·(in + out)) "
        f"({', '.join(f'{ranks[s]} for {_layer(s)}' for s in ranks)}); generate then matmul: "
        f"`materialize()` then one GEMM. " + " ".join(notes),
        "",
        "| layer | pass | batch | " + " | ".join(IMPLS.get(i, i) for i in cols) + " | RBE / cuBLAS |",
        "|---|---|---" + "|---" * len(cols) + "|---|",
    ]
    for shape, mode, batch in dict.fromkeys(k[:3] for k in ms):
        row = [ms.get((shape, mode, batch, i)) for i in cols]
        r = _ratio(
            ms.get((shape, mode, batch, "rbe_fused")), ms.get((shape, mode, batch, "dense_fp16_cublas"))
        )
        lines.append(f"| {_layer(shape)} | {mode} | {batch} | " + " | ".join(map(_ms, row))
                     + f" | {'—' if r is None else f'{r:.2f}'} |")  # fmt: skip
    if key != "ms":
        return "\n".join(lines) + "\n"
    mem = {tuple(r["shape"]): {_impl(k): v for k, v in r["memory_bytes"].items()} for r in data["rows"]
           if "memory_bytes" in r}  # fmt: skip
    keys = list(dict.fromkeys(k for m in mem.values() for k in m))
    lines += [
        "",
        "Bytes a layer keeps (weight and bias; RBE on the device: its parameters and buffers; RBE stored: "
        "its state dict, every stored bit counted), in brackets the share of dense fp16:",
        "",
        "| layer | " + " | ".join(MEMORY.get(k, k) for k in keys) + " |",
        "|---" * (len(keys) + 1) + "|",
    ]
    for shape, m in mem.items():
        dense = m.get("dense_fp16_cublas")
        cells = [f"{m[k]:,} ({m[k] / dense:.1%})" if k in m and dense else f"{m[k]:,}" if k in m else "—"
                 for k in keys]  # fmt: skip
        lines.append(f"| {_layer(shape)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def speed_targets(data, key: str = "ms") -> str:
    """Issue 17's three speed targets for ``RBELinear(768, 3072)``, with met/missed, from
    the rows' ``key`` timings."""
    ms, s = _timings(data, key), TARGET_SHAPE
    rbe, cub, gen = (
        ms.get((s, "fwd", 1, i)) for i in ("rbe_fused", "dense_fp16_cublas", "generate_then_matmul")
    )
    lines = [
        f"Issue 17's speed targets for `RBELinear(768, 3072)` (rows of shape {list(s)}), from this file's "
        f"{'eager' if key == 'ms' else 'device (CUDA-graph)'} timings:",
        "",
    ]
    r = _ratio(rbe, cub)
    fwd = (
        "not measured"
        if r is None
        else f"{rbe:.3f} ms against {cub:.3f} ms, ratio {r:.2f} — {_verdict(r <= 1)}"
    )
    lines.append(f"- fused forward at batch 1 no slower than dense fp16 cuBLAS: {fwd}.")
    r = _ratio(gen, rbe)
    gain = "not measured" if r is None else f"{gen:.3f} / {rbe:.3f} ms = {r:.1f}× — {_verdict(r >= 4)}"
    lines.append(f"- fused forward at batch 1 at least 4× faster than generate then matmul: {gain}.")
    both = {b: v for (sh, mode, b, i), v in sorted(ms.items(), key=lambda kv: kv[0][2])
            if (sh, mode, i) == (s, "fwd+bwd", "rbe_fused") and b <= 32 and isinstance(v, float)}  # fmt: skip
    est = {b: v - ms[s, "fwd", b, "rbe_fused"] for b, v in both.items()
           if isinstance(ms.get((s, "fwd", b, "rbe_fused")), float)}  # fmt: skip
    limit = f"{BACKWARD_TARGET_MS * 1e3:g} µs"
    if not both:
        bwd = "not measured"
    else:
        if max(both.values()) <= BACKWARD_TARGET_MS:
            verdict = _verdict(True) + " (forward + backward itself within it)"
        elif any(v > BACKWARD_TARGET_MS for v in est.values()):
            verdict = _verdict(False) + " (by the estimate)"
        else:
            verdict = "not decided by this file"
        parts = [f"forward + backward {', '.join(f'{v:.3f}' for v in both.values())} ms at batch "
                 f"{', '.join(map(str, both))} (an upper bound of the backward)"]  # fmt: skip
        if est:
            parts.append(
                f"estimated backward = forward + backward − forward at the batches where both were timed: "
                f"{', '.join(f'{v:.3f}' for v in est.values())} ms at batch {', '.join(map(str, est))}"
            )
        bwd = "the file times no backward alone; " + "; ".join(parts) + f" — {verdict}"
    lines.append(f"- backward at most {limit} at batch ≤ 32: {bwd}.")
    return "\n".join(lines) + "\n"


def speed_part(results: Path) -> str:
    """The speed tables and targets of the newest :data:`SPEED` file; a line saying speed
    was not measured when there is none."""
    found = newest_speed(results)
    if found is None:
        return f"GPU speed: not measured (no `benchmarks/results/{SPEED}`).\n"
    name, data = found
    out = speed_table(data, name) + "\n" + speed_targets(data)
    if any("graph_ms" in r for r in data["rows"]):
        out += "\n" + speed_table(data, name, "graph_ms") + "\n" + speed_targets(data, "graph_ms")
    return out


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
        speed_part(results),
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
