"""Parsers and comparers for the layouts that ``cuda_src/`` and ``xpu_stone/`` mirror by hand.

Three things are written twice, once in CUDA C++ and once in Python:

* the row-op descriptions: each op struct of ``cuda_src/*.cu`` derived from
  ``xs_op_base`` (``NVEC``, ``NTERM``, ``NDOT``, ``NOUT``, ``SCALAR_OUT``,
  ``IN_SHIFT``, ``OUT_SHIFT`` and the ``XS_TABLE`` tables ``term``, ``dot``,
  ``out``) and its ``RowOp`` (``xpu_stone/engine/rowop.py``);
* the kernel parameter struct ``xs_row_args`` (``cuda_src/common/rowwise.cuh``)
  and the ``struct.Struct`` the host packs it with;
* the optimizer record ``xs_opt_meta`` (``cuda_src/optim.cu``) and the int64 /
  float64 record the host fills.

Nothing checks these at compile time: a table or a field that drifts on one
side still compiles and runs, and gives wrong numbers that only the GPU tests
would notice. This module reads the C++ text (no compiler needed) and compares
it with the Python objects. Every function is pure: text in, descriptions out;
descriptions and Python objects in, a list of human-readable mismatches out
(empty: they agree). The parsers raise ``ValueError`` on C++ they do not
understand rather than guess.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

# ---------------------------------------------------------------- C++ text


_COMMENT_OR_LITERAL = re.compile(
    r"//[^\n]*|/\*.*?\*/|\"(?:\\.|[^\"\\\n])*\"|'(?:\\.|[^'\\\n])*'",
    re.S,
)


def strip_comments(text: str) -> str:
    """``text`` with ``//`` and ``/* */`` comments blanked (string and character
    literals kept; block comments keep their line breaks)."""

    def repl(m: re.Match) -> str:
        s = m.group(0)
        if s.startswith("//"):
            return ""
        if s.startswith("/*"):
            return "\n" * s.count("\n") or " "
        return s

    return _COMMENT_OR_LITERAL.sub(repl, text)


def _matching(text: str, start: int, open_: str, close: str) -> int:
    """Index of the bracket closing the one at ``start``."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == open_:
            depth += 1
        elif text[i] == close:
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced {open_!r} at offset {start}")


def _split_top(text: str) -> list[str]:
    """``text`` split at the commas outside any (), {} or []; items stripped, empty ones dropped."""
    items, depth, cur = [], 0, []
    for ch in text:
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
        if ch == "," and depth == 0:
            items.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    items.append("".join(cur).strip())
    return [s for s in items if s]


_STRUCT_HEAD = re.compile(
    r"\bstruct\s+(?:__align__\s*\(\s*\d+\s*\)\s*)?(\w+)\s*(?::\s*(?:public\s+)?(\w+)\s*)?\{"
)


def struct_bodies(text: str) -> dict[str, tuple[str | None, str]]:
    """``{name: (base or None, body)}`` for every ``struct name [: base] { body };``
    of ``text`` (comments must be stripped already)."""
    out = {}
    for m in _STRUCT_HEAD.finditer(text):
        open_ = m.end() - 1
        close = _matching(text, open_, "{", "}")
        if m.group(1) in out:
            raise ValueError(f"struct {m.group(1)} is defined twice")
        out[m.group(1)] = (m.group(2), text[open_ + 1 : close])
    return out


def _value(token: str, symbols: dict[str, int], where: str) -> int | bool:
    """An int literal, ``true`` / ``false``, or a name in ``symbols``."""
    token = token.strip()
    if token in ("true", "false"):
        return token == "true"
    if re.fullmatch(r"[+-]?\d+", token):
        return int(token)
    if token in symbols:
        return symbols[token]
    raise ValueError(f"{where}: cannot evaluate {token!r} (only literals and {sorted(symbols)})")


def int_constant(text: str, name: str) -> int:
    """The value of ``constexpr int name = <literal>;`` in ``text``."""
    m = re.search(rf"\bconstexpr\s+int\s+{name}\s*=\s*([+-]?\d+)\s*;", strip_comments(text))
    if m is None:
        raise ValueError(f"no 'constexpr int {name} = <literal>;'")
    return int(m.group(1))


def _constants(body: str, symbols: dict[str, int], where: str) -> dict[str, int | bool]:
    """The ``static constexpr int|bool A = .., B = ..;`` members of a struct body."""
    out = {}
    for m in re.finditer(r"\bstatic\s+constexpr\s+(?:int|bool)\s+([^;(]+);", body):
        for decl in _split_top(m.group(1)):
            name, eq, value = decl.partition("=")
            if not eq:
                raise ValueError(f"{where}: constant without a value: {decl!r}")
            out[name.strip()] = _value(value, symbols, f"{where}.{name.strip()}")
    return out


# ------------------------------------------------------------------ row ops


@dataclass(frozen=True)
class RowStruct:
    """One op struct as the C++ declares it. ``terms`` and ``dots`` hold tuples
    ``(a, b)``, or ``(a, b, True)`` for a term with the spatial flag (a trailing
    ``false`` is dropped); ``reads_t`` / ``reads_eps``: whether the body of
    ``XS_COEFFS`` uses the per-row scalar ``t`` / the argument ``eps``."""

    name: str
    file: str
    nvec: int
    nterm: int
    ndot: int
    nout: int
    scalar_out: bool
    in_shift: int
    out_shift: int
    terms: tuple[tuple, ...]
    dots: tuple[tuple, ...]
    out: tuple[int, ...]
    reads_t: bool
    reads_eps: bool


OP_BASE = "xs_op_base"
_REQUIRED = ("NVEC", "NTERM", "NDOT", "NOUT", "SCALAR_OUT")


def op_base_defaults(rowwise_cuh: str) -> dict[str, int | bool]:
    """The constants ``xs_op_base`` gives every op (``IN_SHIFT``, ``OUT_SHIFT``)."""
    bodies = struct_bodies(strip_comments(rowwise_cuh))
    if OP_BASE not in bodies:
        raise ValueError(f"no struct {OP_BASE}")
    return _constants(bodies[OP_BASE][1], {}, OP_BASE)


def _xs_ij(entry: str, symbols: dict[str, int], where: str) -> tuple:
    if not (entry.startswith("{") and entry.endswith("}")):
        raise ValueError(f"{where}: expected {{a, b[, spatial]}}, got {entry!r}")
    vals = tuple(_value(v, symbols, where) for v in _split_top(entry[1:-1]))
    if len(vals) == 3 and vals[2] is False:
        vals = vals[:2]
    return vals


def _tables(body: str, symbols: dict[str, int], where: str) -> dict[str, tuple]:
    """The ``XS_TABLE(name, type, entries...)`` tables of a struct body."""
    tables = {}
    for m in re.finditer(r"\bXS_TABLE\s*\(", body):
        open_ = m.end() - 1
        args = _split_top(body[open_ + 1 : _matching(body, open_, "(", ")")])
        name, ctype, entries = args[0], args[1], args[2:]
        if name in tables:
            raise ValueError(f"{where}: table {name} declared twice")
        if ctype == "int":
            tables[name] = tuple(_value(e, symbols, f"{where}.{name}") for e in entries)
        elif ctype == "xs_ij":
            tables[name] = tuple(_xs_ij(e, symbols, f"{where}.{name}") for e in entries)
        else:
            raise ValueError(f"{where}: table {name} of unknown type {ctype!r}")
    return tables


def _coeffs_body(body: str, where: str) -> str:
    m = re.search(r"\bXS_COEFFS\s*\{", body)
    if m is None:
        raise ValueError(f"{where}: no XS_COEFFS body")
    return body[m.end() - 1 : _matching(body, m.end() - 1, "{", "}") + 1]


def parse_row_structs(
    text: str, file: str, defaults: dict[str, int | bool], symbols: dict[str, int]
) -> dict[str, RowStruct]:
    """The op structs (those derived from ``xs_op_base``) of the source ``text``
    of ``file``. ``defaults``: :func:`op_base_defaults`; ``symbols``: names that
    may appear in tables and constants (``{"XS_E0": -2}``)."""
    out = {}
    for name, (base, body) in struct_bodies(strip_comments(text)).items():
        if base != OP_BASE:
            continue
        where = f"{file}:{name}"
        consts = {**defaults, **_constants(body, symbols, where)}
        missing = [k for k in (*_REQUIRED, "IN_SHIFT", "OUT_SHIFT") if k not in consts]
        tables = _tables(body, symbols, where)
        missing += [f"XS_TABLE({k})" for k in ("term", "dot", "out") if k not in tables]
        if missing:
            raise ValueError(f"{where}: no {', '.join(missing)}")
        coeffs = _coeffs_body(body, where)
        out[name] = RowStruct(
            name=name,
            file=file,
            nvec=consts["NVEC"],
            nterm=consts["NTERM"],
            ndot=consts["NDOT"],
            nout=consts["NOUT"],
            scalar_out=consts["SCALAR_OUT"],
            in_shift=consts["IN_SHIFT"],
            out_shift=consts["OUT_SHIFT"],
            terms=tables["term"],
            dots=tables["dot"],
            out=tables["out"],
            reads_t=re.search(r"\bt\b", coeffs) is not None,
            reads_eps=re.search(r"\beps\b", coeffs) is not None,
        )
    return out


def row_struct_problems(s: RowStruct, e0: int) -> list[str]:
    """Inconsistencies inside one C++ op struct. ``XS_TABLE`` reads a plain array,
    so a count larger than its table reads past the end: no compile error."""
    p = []
    for what, count, table in (
        ("NTERM", s.nterm, s.terms),
        ("NDOT", s.ndot, s.dots),
        ("NOUT", s.nout, s.out),
    ):
        if count != len(table):
            p.append(f"{s.name}: {what} = {count} but its table has {len(table)} entries")
    for k, t in enumerate(s.terms):
        a, b = (t[0], t[1]) if len(t) in (2, 3) else (None, None)
        ok_a = a == e0 or (a is not None and 0 <= a < s.nvec)
        if not ok_a or b is None or not -1 <= b < s.nvec or (a == e0 and b != -1):
            p.append(f"{s.name}: term {k} = {t} is not a valid term of {s.nvec} vectors")
    for k, d in enumerate(s.dots):
        if len(d) != 2 or not all(0 <= i < len(s.terms) for i in d):
            p.append(f"{s.name}: dot {k} = {d} is not a pair of term indices")
    for k, i in enumerate(s.out):
        if not 0 <= i < len(s.terms):
            p.append(f"{s.name}: out {k} = {i} is not a term index")
    if s.scalar_out and s.nout != 1:
        p.append(f"{s.name}: SCALAR_OUT with NOUT = {s.nout} (a scalar op writes coef[0] only)")
    return p


def _norm_term(t) -> tuple:
    """A Python term as the parser spells it: ints, and True only when spatial."""
    base = (int(t[0]), int(t[1]))
    return base + (True,) if len(t) > 2 and t[2] else base


def compare_row_op(s: RowStruct, op, e0: int) -> list[str]:
    """Mismatches between the C++ struct ``s`` and its ``RowOp`` ``op`` (plus the
    struct's own inconsistencies). Compared: the source file (``op.family``.cu:
    the registry compiles the struct from there), NVEC against ``vectors``, the
    term / dot / out tables, SCALAR_OUT, IN_SHIFT, OUT_SHIFT, and whether
    ``coeffs`` in C++ reads ``t`` (``op.param`` set: the host passes t, else 0)
    and ``eps`` (``op.uses_eps``). ``coeffs`` itself is not compared."""
    p = row_struct_problems(s, e0)
    n = s.name
    if f"{op.family}.cu" != s.file:
        p.append(f"{n}: declared in {s.file} but RowOp family {op.family!r} compiles it from {op.family}.cu")
    if len(op.vectors) != s.nvec:
        p.append(
            f"{n}: NVEC = {s.nvec} but RowOp {op.family}.{op.name} takes {len(op.vectors)} vectors {op.vectors}"
        )
    pairs = (
        ("term", s.terms, tuple(_norm_term(t) for t in op.terms)),
        ("dot", s.dots, tuple((int(a), int(b)) for a, b in op.dots)),
        ("out", s.out, tuple(int(i) for i in op.out)),
    )
    for what, cpp, py in pairs:
        if cpp != py:
            p.append(f"{n}: {what} table differs: C++ {cpp}, Python {py}{_first_diff(cpp, py)}")
    for what, cpp, py in (
        ("SCALAR_OUT", s.scalar_out, bool(op.scalar_out)),
        ("IN_SHIFT", s.in_shift, op.in_shift),
        ("OUT_SHIFT", s.out_shift, op.out_shift),
    ):
        if cpp != py:
            p.append(f"{n}: {what} is {cpp} in C++ but {py} in Python")
    if s.reads_t != (op.param is not None):
        p.append(
            f"{n}: coeffs {'reads' if s.reads_t else 'does not read'} t in C++ "
            f"but RowOp {op.family}.{op.name} has param={op.param!r}"
        )
    if s.reads_eps != bool(op.uses_eps):
        p.append(
            f"{n}: coeffs {'reads' if s.reads_eps else 'does not read'} eps in C++ "
            f"but RowOp {op.family}.{op.name} has uses_eps={op.uses_eps}"
        )
    return p


def _first_diff(a: tuple, b: tuple) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f" (entry {i}: {x} vs {y})"
    return f" ({len(a)} vs {len(b)} entries)"


def pair_row_ops(structs: dict[str, RowStruct], ops) -> tuple[list[tuple[RowStruct, object]], list[str]]:
    """Pairs every C++ op struct with the ``RowOp`` naming it (``op.struct``).
    Returns the pairs and the problems: a struct without a RowOp, a RowOp whose
    struct does not exist, two RowOps for one struct."""
    by_struct: dict[str, list] = {}
    for op in ops:
        by_struct.setdefault(op.struct, []).append(op)
    pairs, problems = [], []
    for name in sorted(structs):
        found = by_struct.get(name, [])
        if not found:
            problems.append(f"{name} ({structs[name].file}): no RowOp mirrors it")
        elif len(found) > 1:
            names = ", ".join(f"{o.family}.{o.name}" for o in found)
            problems.append(f"{name}: mirrored by {len(found)} RowOps ({names})")
        else:
            pairs.append((structs[name], found[0]))
    for name in sorted(set(by_struct) - set(structs)):
        for op in by_struct[name]:
            problems.append(f"RowOp {op.family}.{op.name}: struct {name} is not an op struct in cuda_src")
    return pairs, problems


# ------------------------------------------------------- plain C structs


@dataclass(frozen=True)
class CField:
    """One scalar member of a C struct (arrays expanded: ``v[3]`` -> ``v0, v1, v2``)."""

    name: str
    ctype: str  # "long long", "double", "pointer", ...
    size: int
    offset: int


@dataclass(frozen=True)
class CStruct:
    name: str
    fields: tuple[CField, ...]
    size: int  # sizeof, with the padding to the largest alignment


# C type -> (size = alignment, struct codes that pack it with the same bytes)
_CTYPES = {
    "long long": (8, "qQ"),
    "unsigned long long": (8, "qQ"),
    "pointer": (8, "qQ"),
    "double": (8, "d"),
    "float": (4, "f"),
    "int": (4, "iI"),
    "unsigned int": (4, "iI"),
    "bool": (1, "?"),
}


def array_element_name(name: str, i: int) -> str:
    """The Python name of element ``i`` of the C array ``name``: the index goes
    after the first ``_``-separated word (``v`` -> ``v0``, ``v_rs`` -> ``v0_rs``,
    ``gv`` -> ``gv0``), as ``ROW_ARG_FIELDS`` spells them."""
    head, sep, tail = name.partition("_")
    return f"{head}{i}{sep}{tail}"


def parse_c_struct(text: str, name: str) -> CStruct:
    """The plain-data struct ``name`` of ``text``: its scalar fields in order,
    their C offsets (natural alignment) and ``sizeof``."""
    bodies = struct_bodies(strip_comments(text))
    if name not in bodies:
        raise ValueError(f"no struct {name}")
    fields, offset, align = [], 0, 1
    for decl in bodies[name][1].split(";"):
        decl = " ".join(decl.split())
        if not decl:
            continue
        m = re.fullmatch(
            r"((?:(?:const|volatile|unsigned|signed)\s+)*)(long long|double|float|int|bool|void)\b(.*)", decl
        )
        if m is None:
            raise ValueError(f"{name}: cannot read the declaration {decl!r}")
        base = ("unsigned " if "unsigned" in m.group(1) else "") + m.group(2)
        for d in _split_top(m.group(3)):
            dm = re.fullmatch(r"(\*?)\s*(?:const\s+)?(\w+)\s*(?:\[\s*(\d+)\s*\])?", d)
            if dm is None:
                raise ValueError(f"{name}: cannot read the declarator {d!r}")
            ctype = "pointer" if dm.group(1) else base
            if ctype not in _CTYPES:
                raise ValueError(f"{name}.{dm.group(2)}: unsupported type {ctype!r}")
            size = _CTYPES[ctype][0]
            align = max(align, size)
            count = int(dm.group(3)) if dm.group(3) else None
            names = [array_element_name(dm.group(2), i) for i in range(count)] if count else [dm.group(2)]
            for n in names:
                offset = -(-offset // size) * size
                fields.append(CField(n, ctype, size, offset))
                offset += size
    return CStruct(name, tuple(fields), -(-offset // align) * align)


def format_fields(fmt: str) -> list[tuple[str, int]]:
    """``(code, offset)`` of each field packed by the ``struct`` format ``fmt``
    (repeat counts expanded; pad bytes ``x`` skipped)."""
    order = fmt[0] if fmt and fmt[0] in "@=<>!" else ""
    out, prefix = [], order
    for count, code in re.findall(r"(\d*)([a-zA-Z?])", fmt[len(order) :]):
        if code in "sp":
            raise ValueError(f"format {fmt!r}: byte strings are not fields of these records")
        for _ in range(int(count) if count else 1):
            prefix += code
            if code != "x":
                out.append((code, struct.calcsize(prefix) - struct.calcsize(order + code)))
    return out


def compare_c_struct(c: CStruct, names, fmt: str) -> list[str]:
    """Mismatches between the C struct ``c`` and the host record that packs it:
    field ``names`` in order and the ``struct`` format ``fmt``. Checked: the
    names and their order, each field's type (8-byte integers and pointers as
    ``q``/``Q``, ``double`` as ``d``...), each field's offset (C pads to natural
    alignment) and the total size."""
    names = tuple(names)
    py = format_fields(fmt)
    p = []
    if len(names) != len(py):
        p.append(
            f"{c.name}: Python has {len(names)} field names but its format {fmt!r} packs {len(py)} fields"
        )
    cnames = [f.name for f in c.fields]
    p += [f"{c.name}.{n}: in C++ but not in the Python field names" for n in cnames if n not in names]
    p += [f"{c.name}.{n}: in the Python field names but not in C++" for n in names if n not in cnames]
    same_order = cnames == list(names)
    if set(cnames) == set(names) and not same_order:
        i = next(i for i, (a, b) in enumerate(zip(cnames, names)) if a != b)
        p.append(
            f"{c.name}: field order differs from position {i}: C++ {cnames[i:]}, Python {list(names[i:])}"
        )
    py_of = {n: py[i] for i, n in enumerate(names) if i < len(py)}
    for f in c.fields:
        if f.name not in py_of:
            continue
        code, off = py_of[f.name]
        if code not in _CTYPES[f.ctype][1]:
            p.append(f"{c.name}.{f.name}: C++ {f.ctype} but Python packs it as {code!r}")
        elif same_order and off != f.offset:
            p.append(f"{c.name}.{f.name}: at offset {f.offset} in C++ but {off} in Python")
    size = struct.calcsize(fmt)
    if size != c.size:
        p.append(f"{c.name}: sizeof is {c.size} bytes in C++ but the Python record has {size}")
    return p


def record_format(n_fields: int, n_int: int) -> str:
    """The ``struct`` format of a record of ``n_int`` int64 then float64 fields
    (``xs_opt_meta`` as ``xpu_stone/ops/optim.py`` fills it: one int64 row,
    its tail viewed as float64)."""
    return f"<{n_int}q{n_fields - n_int}d"
