"""Parsers and comparers for the layouts that ``cuda_src/`` and ``xpu_stone/`` mirror by hand.

These things are written twice, once in CUDA C++ and once in Python:

* the row-op descriptions: each op struct of ``cuda_src/*.cu`` derived from
  ``xs_op_base`` (``NVEC``, ``NTERM``, ``NDOT``, ``NOUT``, ``SCALAR_OUT``,
  ``IN_SHIFT``, ``OUT_SHIFT`` and the ``XS_TABLE`` tables ``term``, ``dot``,
  ``out``) and its ``RowOp`` (``xpu_stone/engine/rowop.py``);
* the kernel parameter struct ``xs_row_args`` (``cuda_src/common/rowwise.cuh``)
  and the ``struct.Struct`` the host packs it with;
* the optimizer record ``xs_opt_meta`` (``cuda_src/optim.cu``) and the int64 /
  float64 record the host fills;
* numeric constants: the clamping limits ``xs_limits<float|double>``
  (``cuda_src/common/math.cuh``) and ``xpu_stone/constants.py``; the ``XS_*``
  ``#define`` / ``constexpr`` / ``enum`` values of each source file (block
  sizes, model and flag codes, clamps) and the module constants that launch
  or fill those kernels; ``__launch_bounds__`` and threads-per-row of the
  kernels against the block the host launches; the ``-D`` switches the
  registry passes against the ``#if`` that reads them;
* values written inside a function body: a literal (``s_max = sizeof(E) == 4 ?
  E(80) : E(700)``, the ``fminf(fmaxf(v, lo), hi)`` of a store), the
  ``xs_limits`` member a function clamps with (directly or through a math.cuh
  helper), and the ``MODE`` template codes (the ``// MODE k: name`` comment and
  the ``if (MODE == k)`` branches) against the codes the host launches with.

Nothing checks these at compile time: a table or a field that drifts on one
side still compiles and runs, and gives wrong numbers that only the GPU tests
would notice. This module reads the C++ text (no compiler needed) and compares
it with the Python objects. Every function is pure: text in, descriptions out;
descriptions and Python objects in, a list of human-readable mismatches out
(empty: they agree). The parsers raise ``ValueError`` on C++ they do not
understand rather than guess.
"""

from __future__ import annotations

import ast
import re
import struct
from collections.abc import Iterable, Mapping
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
    ``(a, b)``, ``(a, b, True)`` for a term with the spatial flag, ``(a, b, spatial,
    True)`` for a sum term (trailing ``false`` flags are dropped); ``reads_t`` / ``reads_eps``: whether the body of
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
    late: bool = False


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
        raise ValueError(f"{where}: expected {{a, b[, spatial[, sum]]}}, got {entry!r}")
    vals = tuple(_value(v, symbols, where) for v in _split_top(entry[1:-1]))
    return _drop_false_flags(vals)


def _drop_false_flags(vals: tuple) -> tuple:
    """``vals`` without its trailing ``False`` flags (fields after a, b)."""
    while len(vals) > 2 and vals[-1] is False:
        vals = vals[:-1]
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
            late=bool(consts.get("LATE", False)),
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
        a, b = (t[0], t[1]) if 2 <= len(t) <= 4 else (None, None)
        flags_ok = all(isinstance(f, bool) for f in t[2:])
        is_sum = len(t) == 4 and t[3] is True
        ok_a = a == e0 or (a is not None and 0 <= a < s.nvec)
        if (
            not ok_a
            or b is None
            or not -1 <= b < s.nvec
            or (a == e0 and b != -1)
            or not flags_ok
            or (is_sum and (a == e0 or b < 0))
        ):
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
    """A Python term as the parser spells it: ints, then the flags (spatial, sum) as
    bools without the trailing False ones."""
    return _drop_false_flags((int(t[0]), int(t[1]), *(bool(f) for f in t[2:])))


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
        ("LATE", s.late, op.late is not None),
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


# -------------------------------------------------------- numeric constants


@dataclass(frozen=True)
class CNum:
    """A C++ constant: ``ctype`` is ``"int"`` (every integer type), ``"float"``
    (``value`` already rounded to binary32) or ``"double"``."""

    ctype: str
    value: int | float

    def __str__(self) -> str:
        return f"{self.value!r} ({self.ctype})"


def _f32(x: float) -> float:
    """``x`` rounded to the nearest binary32 (raises ``OverflowError`` out of range)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def _as_ctype(value: int | float, ctype: str, where: str) -> CNum:
    """``value`` converted as C++ converts it to ``ctype`` (an integer type from a
    floating value is refused: these constants never rely on truncation)."""
    if ctype == "int":
        if not isinstance(value, int):
            raise ValueError(f"{where}: floating value {value!r} for an integer constant")
        return CNum("int", value)
    if ctype == "float":
        return CNum("float", _f32(float(value)))
    if ctype == "double":
        return CNum("double", float(value))
    raise ValueError(f"{where}: unknown type {ctype!r}")


# C++ spellings of the types -> CNum.ctype
_DECL_TYPES = {
    "int": "int",
    "unsigned": "int",
    "unsigned int": "int",
    "long": "int",
    "long long": "int",
    "unsigned long long": "int",
    "float": "float",
    "double": "double",
}

_NUMBER = re.compile(
    r"(?<![\w.])((?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\d+)([A-Za-z]*)(?![\w.])"
)
_INT_SUFFIX = re.compile(r"(?i)u?(?:l|ll)?|(?:l|ll)u")


def _literal(body: str, suffix: str, where: str) -> CNum:
    if re.search(r"[.eE]", body):
        if suffix in ("f", "F"):
            return CNum("float", _f32(float(body)))
        if suffix == "":
            return CNum("double", float(body))
    elif _INT_SUFFIX.fullmatch(suffix):
        return CNum("int", int(body))
    raise ValueError(f"{where}: cannot read the literal {body + suffix!r}")


def _trunc_div(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


_INT_OPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: _trunc_div,
    ast.LShift: lambda a, b: a << b,
    ast.RShift: lambda a, b: a >> b,
    ast.BitOr: lambda a, b: a | b,
    ast.BitAnd: lambda a, b: a & b,
    ast.BitXor: lambda a, b: a ^ b,
}
_FLOAT_OPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}


def eval_cpp(expr: str, symbols: Mapping[str, CNum] | None = None, where: str = "") -> CNum:
    """The value of the C++ constant expression ``expr``: int / floating literals
    (``1e-7f`` is binary32, ``1e-7`` binary64; integer suffixes ``u``, ``l``,
    ``ll``), names of ``symbols``, parentheses, unary ``+ - ~`` and binary
    ``+ - * / << >> & | ^``, with C++'s types: ``float`` arithmetic rounds each
    result to binary32 (``1.0f - 1e-8f`` is ``1.0f``), a ``double`` operand makes
    it ``double``, ``int / int`` truncates toward zero. The expression is read
    with :mod:`ast` (literals replaced by placeholder names first) and walked
    node by node: nothing is evaluated as Python, and anything else (a call, a
    cast, ``?:``, an unknown name) raises ``ValueError``."""
    symbols = symbols or {}
    where = where or repr(expr)
    literals: dict[str, CNum] = {}

    def placeholder(m: re.Match) -> str:
        name = f"_xs_lit{len(literals)}"
        literals[name] = _literal(m.group(1), m.group(2), where)
        return f" {name} "

    py = _NUMBER.sub(placeholder, expr).strip()
    try:
        tree = ast.parse(py, mode="eval")
    except SyntaxError:
        raise ValueError(f"{where}: cannot evaluate {expr!r}") from None

    def walk(node: ast.AST) -> CNum:
        if isinstance(node, ast.Name):
            if node.id in literals:
                return literals[node.id]
            if node.id in symbols:
                return symbols[node.id]
            raise ValueError(f"{where}: cannot evaluate {node.id!r} in {expr!r} (not a known constant)")
        if isinstance(node, ast.UnaryOp):
            v = walk(node.operand)
            if isinstance(node.op, ast.USub):
                return CNum(v.ctype, -v.value)
            if isinstance(node.op, ast.UAdd):
                return v
            if isinstance(node.op, ast.Invert) and v.ctype == "int":
                return CNum("int", ~v.value)
        elif isinstance(node, ast.BinOp):
            a, b = walk(node.left), walk(node.right)
            op = type(node.op)
            if a.ctype == b.ctype == "int" and op in _INT_OPS:
                if op is ast.Div and b.value == 0:
                    raise ValueError(f"{where}: division by zero in {expr!r}")
                return CNum("int", _INT_OPS[op](a.value, b.value))
            if op in _FLOAT_OPS:
                ctype = "double" if "double" in (a.ctype, b.ctype) else "float"
                x, y = (_as_ctype(v.value, ctype, where).value for v in (a, b))
                try:
                    return _as_ctype(_FLOAT_OPS[op](x, y), ctype, where)
                except (ZeroDivisionError, OverflowError):
                    raise ValueError(f"{where}: {expr!r} is not finite") from None
        raise ValueError(f"{where}: cannot evaluate {ast.unparse(node)!r} in {expr!r}")

    return walk(tree.body)


def _join_continuations(text: str) -> str:
    return re.sub(r"\\\n", " ", text)


# Characters of a #define body that is a numeric expression (anything else: code).
_EXPR_CHARS = re.compile(r"[\w\s.+\-*/()<>|&~^]*")
_DEFINE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+(\w+)(\()?(.*)$", re.M)
_CONSTEXPR = re.compile(
    r"\bconstexpr\s+((?:(?:unsigned|signed|long|short)\s+)*(?:int|long|float|double|unsigned))\s+"
    r"(\w+\s*=[^;]*);"
)
_CONST_DECL = re.compile(r"\bconst(?:expr)?\s+[\w\s]*?\b(\w+)\s*(?=[=\[{;,])")
_ENUM = re.compile(r"\benum\s+(?:(?:class|struct)\s+)?(?:\w+\s*)?(?::\s*[\w\s]+?)?\{([^{}]*)\}")


def constants(text: str, prefix: str = "XS_") -> dict[str, CNum]:
    """The numeric constants named ``prefix...`` that the source ``text`` declares
    at any scope: object-like ``#define NAME <expression>``, ``constexpr <type>
    NAME = <expression>;`` and ``enum`` enumerators (implicit values counted
    on). A ``#define`` whose body is code (``XS_ROW_SETUP``) or empty is not a
    constant; function-like macros are skipped. Evaluated in order, so that a
    constant may use earlier ones. Raises on a declaration of such a name it
    cannot read, and on a name declared twice."""
    text = _join_continuations(strip_comments(text))
    decls: list[tuple[int, str, str, str]] = []  # (offset, name, expression, declared ctype or "")
    for m in _DEFINE.finditer(text):
        name, body = m.group(1), m.group(3).strip()
        if m.group(2) or not name.startswith(prefix) or not body or not _EXPR_CHARS.fullmatch(body):
            continue
        decls.append((m.start(), name, body, ""))
    for m in _CONSTEXPR.finditer(text):
        ctype = _DECL_TYPES.get(" ".join(m.group(1).split()))
        for decl in _split_top(m.group(2)):
            name, _, expr = (s.strip() for s in decl.partition("="))
            if not name.startswith(prefix):
                continue
            if ctype is None or not re.fullmatch(r"\w+", name) or not expr:
                raise ValueError(f"cannot read the declaration constexpr {m.group(1)} {decl}")
            decls.append((m.start(), name, expr, ctype))
    for m in _ENUM.finditer(text):
        items = _split_top(m.group(1))
        if not any(item.strip().startswith(prefix) for item in items):
            continue  # an enum of other names: not a constant of this file's mirrors
        prev = None
        for k, item in enumerate(items):
            name, eq, expr = (s.strip() for s in item.partition("="))
            if not re.fullmatch(r"\w+", name):
                raise ValueError(f"cannot read the enumerator {item!r}")
            if not eq:
                expr = "0" if prev is None else f"({prev}) + 1"
            prev = name
            # every enumerator of the enum is evaluated (later ones may count on it); prefixed ones are kept
            decls.append((m.start() + k, name, expr, "int"))
    out: dict[str, CNum] = {}
    values: dict[str, CNum] = {}
    for _, name, expr, ctype in sorted(decls):
        if name in values:
            raise ValueError(f"constant {name} is declared twice")
        v = eval_cpp(expr, values, name)
        values[name] = _as_ctype(v.value, ctype, name) if ctype else v
        if name.startswith(prefix):
            out[name] = values[name]
    for m in _CONST_DECL.finditer(text):
        if m.group(1).startswith(prefix) and m.group(1) not in out:
            raise ValueError(
                f"cannot read the declaration of {m.group(1)}: {text[m.start() : m.end() + 40]!r}"
            )
    return out


def constant(text: str, name: str) -> CNum:
    """The constant ``name`` of the source ``text`` (see :func:`constants`);
    raises ``ValueError`` when it is not declared."""
    prefix = re.match(r"[A-Za-z]*_?", name).group(0)
    found = constants(text, prefix)
    if name not in found:
        raise ValueError(f"no constant {name} (found {sorted(found)})")
    return found[name]


def _same(c: CNum, py) -> bool:
    """Whether the Python value ``py`` is the C++ constant ``c``: an integer for
    an integer constant; for a floating one, the same number once rounded to the
    C++ type (the Python float ``1e-36`` is ``1e-36f`` for a ``float``)."""
    if isinstance(py, bool) or not isinstance(py, (int, float)):
        return False
    if c.ctype == "int":
        return isinstance(py, int) and py == c.value
    try:
        return _as_ctype(py, c.ctype, "").value == c.value
    except OverflowError:
        return False


def compare_constants(
    file: str, consts: Mapping[str, CNum], mirrors: Mapping[str, tuple[str, object]]
) -> list[str]:
    """Mismatches between the constants ``consts`` of the C++ ``file``
    (:func:`constants`) and their Python mirrors: ``mirrors`` maps a C++
    constant expression (a name, or ``"XS_PAIR_BLOCK / 32"``) to ``(the Python
    name, its value)``. Also reported: a constant of ``consts`` that no mirror
    mentions (a new C++ value nobody compares). A mirror whose expression names
    a constant ``file`` does not declare raises ``ValueError``."""
    p = []
    mentioned: set[str] = set()
    for expr, (py_name, py) in mirrors.items():
        mentioned |= set(re.findall(r"[A-Za-z_]\w*", expr))
        c = eval_cpp(expr, consts, f"{file}: {expr}")
        if not _same(c, py):
            p.append(f"{file}: {expr} is {c} in C++ but {py_name} is {py!r} in Python")
    for name in sorted(set(consts) - mentioned):
        p.append(f"{file}: {name} = {consts[name]} has no Python mirror in the comparison")
    return p


# ---------------------------------------------------------- xs_limits<S>

LIMITS = "xs_limits"
# C++ type of an xs_limits specialisation -> the key of the Python dicts
LIMIT_DTYPES = {"float": "float32", "double": "float64"}


def parse_limits(math_cuh: str) -> dict[str, dict[str, CNum]]:
    """``{"float": {member: value}, "double": {...}}``: the ``static constexpr``
    members of each explicit specialisation ``template <> struct xs_limits<T>``,
    each evaluated in its declared type. Raises on a member it cannot read
    and when there is no specialisation."""
    text = strip_comments(math_cuh)
    out: dict[str, dict[str, CNum]] = {}
    for m in re.finditer(rf"\btemplate\s*<\s*>\s*struct\s+{LIMITS}\s*<\s*([\w ]+?)\s*>\s*\{{", text):
        ctype = m.group(1)
        if ctype in out:
            raise ValueError(f"{LIMITS}<{ctype}> is specialised twice")
        body = text[m.end() : _matching(text, m.end() - 1, "{", "}")]
        members: dict[str, CNum] = {}
        for decl in body.split(";"):
            decl = " ".join(decl.split())
            if not decl:
                continue
            dm = re.fullmatch(r"static constexpr ([\w ]+?) (\w+) = (.+)", decl)
            if dm is None or dm.group(1) not in _DECL_TYPES:
                raise ValueError(f"{LIMITS}<{ctype}>: cannot read the member {decl!r}")
            name = dm.group(2)
            if name in members:
                raise ValueError(f"{LIMITS}<{ctype}>::{name} is declared twice")
            where = f"{LIMITS}<{ctype}>::{name}"
            members[name] = _as_ctype(eval_cpp(dm.group(3), {}, where).value, _DECL_TYPES[dm.group(1)], where)
        out[ctype] = members
    if not out:
        raise ValueError(f"no specialisation 'template <> struct {LIMITS}<T>'")
    return out


def compare_limits(
    limits: Mapping[str, Mapping[str, CNum]], py: Mapping[str, object], names: Iterable[str]
) -> list[str]:
    """Mismatches between ``xs_limits`` (:func:`parse_limits`) and the Python
    constants ``py`` (``vars(xpu_stone.constants)``). ``names``: the Python
    constants that mirror it; member ``min_sqnorm`` is ``MIN_SQNORM``, either one
    value for every type or a dict keyed by dtype (``"float32"`` for
    ``xs_limits<float>``, ``"float64"`` for ``double``). Reported: a member
    without its Python constant (or without the entry of its type), a different
    value (compared exactly after rounding the Python float to the member's
    type), a Python constant of ``names`` or a dtype key that no specialisation
    declares."""
    names = tuple(names)
    p = []
    for ctype in sorted(limits):
        if ctype not in LIMIT_DTYPES:
            p.append(f"{LIMITS}<{ctype}>: no Python dtype key for this type")
            continue
        key = LIMIT_DTYPES[ctype]
        for member, c in sorted(limits[ctype].items()):
            py_name = member.upper()
            where = f"{LIMITS}<{ctype}>::{member}"
            if py_name not in names or py_name not in py:
                p.append(f"{where} = {c}: no Python constant {py_name} mirrors it")
                continue
            value = py[py_name]
            label = py_name
            if isinstance(value, Mapping):
                if key not in value:
                    p.append(f"{where} = {c}: {py_name} has no {key!r} entry")
                    continue
                value, label = value[key], f"{py_name}[{key!r}]"
            if not _same(c, value):
                p.append(f"{where} is {c} in C++ but {label} is {value!r} in Python")
    for py_name in names:
        declared = [t for t in limits if py_name.lower() in limits[t]]
        if not declared:
            p.append(f"{py_name}: no {LIMITS} member {py_name.lower()} in C++")
        value = py.get(py_name)
        if isinstance(value, Mapping):
            known = {LIMIT_DTYPES.get(t) for t in declared}
            for key in sorted(set(value) - known):
                p.append(f"{py_name}[{key!r}]: no {LIMITS} specialisation declares {py_name.lower()} for it")
    return p


# ---------------------------------------------------------------- kernels


@dataclass(frozen=True)
class Kernel:
    """A ``__global__`` function: its ``__launch_bounds__`` argument (text, None
    without) and ``row_threads``, the threads of one row where the kernel maps
    ``(blockIdx.x * blockDim.x + threadIdx.x) / N`` (or ``>> k``) to its row
    (None when it has no such line)."""

    name: str
    launch_bounds: str | None
    row_threads: int | None


_KERNEL = re.compile(r"\b__global__\s+void\s+(?:__launch_bounds__\s*\(([^()]*)\)\s*)?(\w+)\s*\(")
_ROW_OF_THREAD = re.compile(
    r"\(\s*static_cast\s*<\s*long\s+long\s*>\s*\(\s*blockIdx\.x\s*\)\s*\*\s*blockDim\.x\s*\+\s*threadIdx\.x\s*\)"
    r"\s*(/|>>)\s*(\d+)"
)


def parse_kernels(text: str) -> dict[str, Kernel]:
    """The ``__global__`` kernels of ``text`` (raises on one it cannot read, or
    on two with one name)."""
    text = strip_comments(text)
    out = {}
    for g in re.finditer(r"\b__global__\b", text):
        m = _KERNEL.match(text, g.start())
        if m is None:
            raise ValueError(f"cannot read the kernel declaration {text[g.start() : g.start() + 80]!r}")
        name = m.group(2)
        if name in out:
            raise ValueError(f"kernel {name} is defined twice")
        close = _matching(text, m.end() - 1, "(", ")")
        brace = re.compile(r"\s*\{").match(text, close + 1)
        if brace is None:
            raise ValueError(f"kernel {name}: no body")
        body = text[brace.end() - 1 : _matching(text, brace.end() - 1, "{", "}") + 1]
        rows = {int(n) if op == "/" else 1 << int(n) for op, n in _ROW_OF_THREAD.findall(body)}
        if len(rows) > 1:
            raise ValueError(f"kernel {name}: rows of {sorted(rows)} threads at once")
        out[name] = Kernel(name, m.group(1), rows.pop() if rows else None)
    return out


def compare_launch(
    file: str,
    kernels: Mapping[str, Kernel],
    block: int,
    consts: Mapping[str, CNum],
    row_threads: int | None = None,
) -> list[str]:
    """Mismatches between the ``kernels`` of ``file`` and the host that launches
    them with ``block`` threads a block, each row given ``row_threads``
    threads (the ``rows * 32`` of a warp-per-row launcher): a
    ``__launch_bounds__`` other than ``block`` (the C++ sizes its block sums and
    column indexing from it; a larger block does not launch), a kernel whose
    rows take another number of threads, a block that is not a whole number of
    rows or exceeds 1024 threads."""
    p = []
    for k in kernels.values():
        if k.launch_bounds is not None:
            args = _split_top(k.launch_bounds)
            n = eval_cpp(args[0], consts, f"{file}:{k.name} __launch_bounds__")
            if n.ctype != "int" or n.value != block:
                p.append(
                    f"{file}:{k.name}: __launch_bounds__({k.launch_bounds}) is {n.value} "
                    f"but the host launches blocks of {block}"
                )
        if row_threads is not None and k.row_threads is not None and k.row_threads != row_threads:
            p.append(
                f"{file}:{k.name}: a row takes {k.row_threads} threads in C++ "
                f"but the host's grid gives it {row_threads}"
            )
    if not 0 < block <= 1024 or (row_threads and block % row_threads):
        p.append(
            f"{file}: a block of {block} threads is not a whole number of {row_threads}-thread rows <= 1024"
        )
    return p


# -------------------------------------------------------- preprocessor


def includes(text: str) -> list[str]:
    """The ``#include "..."`` paths of ``text`` (system includes left out)."""
    return re.findall(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"', strip_comments(text), re.M)


def preprocessor_reads(text: str) -> set[str]:
    """The macro names that ``#if`` / ``#ifdef`` / ``#ifndef`` / ``#elif`` lines
    of ``text`` test (``defined`` itself left out)."""
    text = _join_continuations(strip_comments(text))
    out: set[str] = set()
    for m in re.finditer(r"^[ \t]*#[ \t]*(?:if|ifdef|ifndef|elif)\b(.*)$", text, re.M):
        out |= set(re.findall(r"\b[A-Za-z_]\w*", m.group(1))) - {"defined"}
    return out


def compare_defines(file: str, defines: Iterable[str], reads: set[str]) -> list[str]:
    """The ``-D`` switches (``"NAME=1"`` or ``"NAME"``) that the host compiles
    ``file`` with but that no ``#if`` of ``file`` and its includes (``reads``:
    :func:`preprocessor_reads` of them all) tests: an undefined macro in ``#if``
    is 0, so a renamed switch compiles and silently turns the option off."""
    p = []
    for d in sorted(set(defines)):
        name = d.partition("=")[0]
        if name not in reads:
            p.append(f"{file}: compiled with -D{d} but no #if in it or its includes reads {name}")
    return p


# ------------------------------------------------- literals inside functions


def _name_pattern(name: str) -> str:
    """A regex for the C++ name ``name`` (``xs_from_e<xs_half>``), any spacing around ``< > , ::``."""
    parts = re.split(r"\s*(<|>|,|::)\s*", name.strip())
    return r"\s*".join(re.escape(p) for p in parts if p)


def function_body(text: str, name: str) -> str:
    """The body, braces included, of the one definition of the function (or kernel,
    or explicit specialisation: ``xs_from_e<xs_half>``) ``name`` in ``text``
    (comments stripped). A call or a declaration ending in ``;`` is not a
    definition. Raises when there is none or more than one."""
    text = strip_comments(text)
    found = []
    for m in re.finditer(rf"(?<![\w:]){_name_pattern(name)}\s*\(", text):
        close = _matching(text, m.end() - 1, "(", ")")
        brace = re.compile(r"\s*(?:const\s*)?\{").match(text, close + 1)
        if brace is not None:
            found.append(text[brace.end() - 1 : _matching(text, brace.end() - 1, "{", "}") + 1])
    if len(found) != 1:
        raise ValueError(f"{len(found)} definitions of the function {name} (expected one)")
    return found[0]


def calls(body: str, name: str) -> bool:
    """Whether ``body`` calls the function ``name`` (with or without template arguments)."""
    return re.search(rf"(?<![\w:]){re.escape(name)}\s*(?:<[^;{{}}()]*>)?\s*\(", body) is not None


def limit_reads(body: str) -> set[str]:
    """The members of ``xs_limits<...>`` that ``body`` reads."""
    return set(re.findall(rf"\b{LIMITS}\s*<\s*\w+\s*>\s*::\s*(\w+)", body))


def template_args(name: str) -> list[str]:
    """The template arguments of a kernel name: ``xs_hnn_fwd<float, double, 1>`` ->
    ``["float", "double", "1"]`` (no nesting in these names)."""
    m = re.fullmatch(r"\s*[\w:]+\s*<([^<>]*)>\s*", name)
    if m is None:
        raise ValueError(f"cannot read the template arguments of {name!r}")
    return [a.strip() for a in m.group(1).split(",")]


# C++ type of sizeof(E) == n -> that type (the floating types of the kernels)
_SIZEOF = {4: "float", 8: "double"}


def size_select(body: str, var: str) -> dict[str, CNum]:
    """``{"float": a, "double": b}`` from the one declaration ``const E var =
    sizeof(E) == 4 ? E(a) : E(b);`` of ``body`` (or ``== 8`` with the branches
    swapped), each value converted to its type. Raises on any other form."""
    body = strip_comments(body)
    decls = re.findall(rf"\b{re.escape(var)}\s*=\s*([^;]*);", body)
    if len(decls) != 1:
        raise ValueError(f"{len(decls)} assignments of {var} (expected one)")
    m = re.fullmatch(
        r"\s*sizeof\s*\(\s*(\w+)\s*\)\s*==\s*(\d+)\s*\?\s*(\w+)\s*\(([^()]*)\)\s*:\s*(\w+)\s*\(([^()]*)\)\s*",
        decls[0],
    )
    if m is None or not m.group(1) == m.group(3) == m.group(5) or int(m.group(2)) not in _SIZEOF:
        raise ValueError(f"{var} = {decls[0].strip()!r} is not 'sizeof(E) == 4|8 ? E(a) : E(b)'")
    then = _SIZEOF[int(m.group(2))]
    other = "double" if then == "float" else "float"
    where = f"{var} = {decls[0].strip()}"
    return {
        then: _as_ctype(eval_cpp(m.group(4), {}, where).value, then, where),
        other: _as_ctype(eval_cpp(m.group(6), {}, where).value, other, where),
    }


_MIN_MAX = {"fminf": "min", "fmin": "min", "min": "min", "fmaxf": "max", "fmax": "max", "max": "max"}


def clamp_bounds(body: str, var: str) -> tuple[CNum, CNum]:
    """``(lo, hi)`` of the one statement ``var = fminf(fmaxf(var, lo), hi);`` of
    ``body`` (``fmaxf(fminf(var, hi), lo)``, ``fmin`` / ``fmax`` too). Raises on
    any other form or when there is none."""
    body = strip_comments(body)
    found = []
    for s in re.findall(rf"(?<![\w.]){re.escape(var)}\s*=\s*([^;=][^;]*);", body):
        outer = re.fullmatch(r"\s*(\w+)\s*\((.*)\)\s*", s, re.S)
        if outer is None or outer.group(1) not in _MIN_MAX:
            continue
        args = _split_top(outer.group(2))
        inner = re.fullmatch(r"(\w+)\s*\((.*)\)", args[0], re.S) if len(args) == 2 else None
        if (
            inner is None
            or inner.group(1) not in _MIN_MAX
            or _MIN_MAX[inner.group(1)] == _MIN_MAX[outer.group(1)]
        ):
            raise ValueError(f"cannot read the clamp {var} = {s.strip()}")
        inner_args = _split_top(inner.group(2))
        if len(inner_args) != 2 or inner_args[0] != var:
            raise ValueError(f"cannot read the clamp {var} = {s.strip()}")
        bound = {_MIN_MAX[inner.group(1)]: inner_args[1], _MIN_MAX[outer.group(1)]: args[1]}
        where = f"{var} = {s.strip()}"
        found.append((eval_cpp(bound["max"], {}, where), eval_cpp(bound["min"], {}, where)))
    if len(found) != 1:
        raise ValueError(f"{len(found)} clamps 'var = fmin(fmax({var}, lo), hi)' (expected one)")
    return found[0]


def compare_value(where: str, c: CNum, py_name: str, py) -> list[str]:
    """A one-item list when the Python value ``py`` is not the C++ value ``c`` (see :func:`_same`)."""
    return [] if _same(c, py) else [f"{where} is {c} in C++ but {py_name} is {py!r} in Python"]


def compare_by_type(
    where: str, found: Mapping[str, CNum], py_name: str, py: Mapping[str, object]
) -> list[str]:
    """Mismatches between a value that the C++ picks by its floating type
    (``found``: :func:`size_select`) and the Python dict ``py`` keyed by dtype
    (``"float32"`` for ``float``): a different value, a type without its
    entry, an entry for a type the C++ does not pick for."""
    p = []
    for ctype, c in sorted(found.items()):
        key = LIMIT_DTYPES[ctype]
        if key not in py:
            p.append(f"{where} for {ctype} = {c}: {py_name} has no {key!r} entry")
        else:
            p += compare_value(f"{where} for {ctype}", c, f"{py_name}[{key!r}]", py[key])
    known = {LIMIT_DTYPES[t] for t in found}
    p += [f"{py_name}[{k!r}]: {where} has no value for that type" for k in sorted(set(py) - known)]
    return p


@dataclass(frozen=True)
class LimitUse:
    """A Python constant that mirrors the ``xs_limits<S>::member`` read in C++
    function ``function``, directly (``helper`` None) or through the helper
    ``helper`` of math.cuh that it calls (``xs_norm_from_sq`` -> ``min_sqnorm``)."""

    py_name: str
    member: str
    function: str
    helper: str | None = None


def compare_limit_uses(
    file: str,
    text: str,
    math_cuh: str,
    limits: Mapping[str, CNum],
    s_ctype: str,
    uses: Iterable[LimitUse],
    py: Mapping[str, object],
) -> list[str]:
    """Mismatches between the ``xs_limits`` members that the functions of
    ``file`` (source ``text``) clamp with and the Python constants ``py`` that
    mirror them: a function that no longer calls its helper, a function or
    helper that no longer reads the member (a clamp turned into a literal, or
    another member), a Python value other than the member of ``limits``
    (:func:`parse_limits` of the kernels' arithmetic type ``s_ctype``)."""
    p = []
    for u in uses:
        body = function_body(text, u.function)
        where = f"{file}:{u.function}"
        if u.helper is not None:
            if not calls(body, u.helper):
                p.append(f"{where} no longer calls {u.helper} (mirrored by {u.py_name})")
                continue
            body, where = function_body(math_cuh, u.helper), f"{where} -> {u.helper}"
        reads = limit_reads(body)
        if u.member not in reads:
            p.append(
                f"{where} does not read {LIMITS}<S>::{u.member} (reads {sorted(reads)}), mirrored by {u.py_name}"
            )
        if u.member not in limits:
            p.append(f"{LIMITS}<{s_ctype}> has no member {u.member} (mirrored by {u.py_name})")
        elif u.py_name not in py:
            p.append(f"{where}: no Python constant {u.py_name}")
        else:
            p += compare_value(
                f"{LIMITS}<{s_ctype}>::{u.member} ({where})", limits[u.member], u.py_name, py[u.py_name]
            )
    return p


# ------------------------------------------------------- MODE template codes


def mode_comments(text: str, param: str = "MODE") -> list[tuple[int, str]]:
    """``(code, description)`` of each ``MODE k: description`` of the ``//``
    comments of ``text`` (descriptions end at ``;`` or the end of the line)."""
    out = []
    for line in re.findall(r"//([^\n]*)", text):
        out += [(int(k), d.strip()) for k, d in re.findall(rf"\b{param}\s+(\d+)\s*:\s*([^;]+)", line)]
    return out


def mode_branches(text: str, param: str = "MODE") -> list[tuple[int, str]]:
    """``(k, block)`` for each ``if (MODE == k) { block }`` of ``text`` (comments
    stripped; ``if (MODE == k && ...)`` too: the block runs only for code k).
    Raises on any other ``if`` that tests ``MODE`` and on a block without braces."""
    text = strip_comments(text)
    out = []
    for m in re.finditer(r"\bif\s*\(", text):
        close = _matching(text, m.end() - 1, "(", ")")
        cond = text[m.end() : close]
        if not re.search(rf"\b{param}\b", cond):
            continue
        cm = re.fullmatch(rf"\s*{param}\s*==\s*(\d+)\s*(?:&&[^|?]*)?", cond)
        brace = re.compile(r"\s*\{").match(text, close + 1)
        if cm is None or brace is None:
            raise ValueError(
                f"cannot read the branch 'if ({cond.strip()})' (expected 'if ({param} == k) {{')"
            )
        out.append((int(cm.group(1)), text[brace.end() - 1 : _matching(text, brace.end() - 1, "{", "}") + 1]))
    return out


def compare_modes(
    file: str,
    comments: Iterable[tuple[int, str]],
    branches: Iterable[tuple[int, str]],
    codes: Mapping[str, int],
    markers: Mapping[str, Iterable[str]],
    required: Iterable[str] = (),
) -> list[str]:
    """Mismatches between the ``MODE`` codes of the kernels of ``file`` and the
    codes the Python side launches them with (``codes``: ``{"MLR": 0, "FC": 1}``):

    * the comment ``MODE k: NAME ...`` (:func:`mode_comments`) must name each
      code's mode first (``codes`` keys, case-insensitive) and describe no code twice;
    * a branch ``if (MODE == k)`` (:func:`mode_branches`) that uses a name of
      ``markers[N]`` (identifiers only mode N's code uses) must be the branch of
      ``codes[N]``; for a mode of ``required``, every branch of its code must use
      one of its markers.
    """
    p = []
    comments, branches = list(comments), list(branches)
    described: dict[int, str] = {}
    for k, d in comments:
        if k in described:
            p.append(f"{file}: the comments describe MODE {k} twice ({described[k]!r}, {d!r})")
        described[k] = d
    for name, k in codes.items():
        if k not in described:
            p.append(f"{file}: no comment 'MODE {k}: {name}' (Python launches {name} with MODE {k})")
        elif not re.match(rf"{re.escape(name)}\b", described[k], re.I):
            p.append(f"{file}: MODE {k} is {described[k]!r} in C++ but Python launches {name} with MODE {k}")
    if not branches:
        p.append(f"{file}: no 'if (MODE == k)' branch found")
    uses = {n: tuple(ms) for n, ms in markers.items()}
    for k, block in branches:
        for name, ms in uses.items():
            used = [x for x in ms if re.search(rf"(?<![\w]){re.escape(x)}\b", block)]
            if used and codes[name] != k:
                p.append(
                    f"{file}: the branch 'if (MODE == {k})' uses {used} of {name}, "
                    f"but Python launches {name} with MODE {codes[name]}"
                )
            if not used and name in required and codes[name] == k:
                p.append(f"{file}: the branch 'if (MODE == {k})' ({name} in Python) uses none of {list(ms)}")
    return p
