"""The layouts mirrored by hand between ``cuda_src/`` and the Python package agree.

Each row op, the kernel parameter struct ``xs_row_args`` and the optimizer
record ``xs_opt_meta`` are declared once in CUDA C++ and once in Python. A
mirror that drifts still compiles and runs and silently gives wrong numbers
(a swapped dot, a field read at the wrong offset) that only GPU numerics
would notice; these CPU tests read the C++ source (:mod:`cuda_layout`) and
compare it with the Python objects, and check that the comparison does fail
on deliberately altered C++.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cuda_layout as cl
import pytest

from xpu_stone import ops
from xpu_stone.engine.rowop import E0, RowOp
from xpu_stone.kernels.launch import ROW_ARG_FIELDS, ROW_ARGS
from xpu_stone.ops.optim import INT_FIELDS as _INT_FIELDS
from xpu_stone.ops.optim import META_FIELDS as _META_FIELDS


def row_ops() -> list:
    """Every ``RowOp`` of the package, as the package lists them (the ``__all__`` of
    the ops modules, :func:`xpu_stone.ops.row_ops`)."""
    return ops.row_ops()


def test_every_row_op_of_an_ops_module_is_listed_in_its_all():
    """A RowOp left out of ``__all__`` would be missed by the build's and the tests' op lists."""
    for module in ops.KERNEL_MODULES:
        unlisted = [n for n, v in vars(module).items() if isinstance(v, RowOp) and n not in module.__all__]
        assert not unlisted, f"{module.__name__}: {unlisted} not in __all__"


CUDA_SRC = Path(__file__).resolve().parent.parent / "cuda_src"
ROWWISE_CUH = CUDA_SRC / "common" / "rowwise.cuh"
OPTIM_CU = CUDA_SRC / "optim.cu"
ROW_OP_FILES = ("poincare.cu", "lorentz.cu", "klein.cu", "convert.cu")


def _read(path: Path) -> str:
    return path.read_text()


def _xs_e0() -> int:
    return cl.int_constant(_read(ROWWISE_CUH), "XS_E0")


def _row_structs(edited: dict[str, str] | None = None) -> dict[str, cl.RowStruct]:
    """The op structs of every ``cuda_src/*.cu`` (the four op files and any other
    that declares one), with file texts replaced by ``edited`` where given."""
    defaults = cl.op_base_defaults(_read(ROWWISE_CUH))
    symbols = {"XS_E0": _xs_e0()}
    structs: dict[str, cl.RowStruct] = {}
    for path in sorted(CUDA_SRC.glob("*.cu")):
        text = (edited or {}).get(path.name) or _read(path)
        for name, s in cl.parse_row_structs(text, path.name, defaults, symbols).items():
            assert name not in structs, f"op struct {name} in both {structs[name].file} and {path.name}"
            structs[name] = s
    return structs


def _row_problems(edited: dict[str, str] | None = None, ops=None) -> list[str]:
    """Everything that does not match between the C++ op structs and ``ops``."""
    structs = _row_structs(edited)
    pairs, problems = cl.pair_row_ops(structs, row_ops() if ops is None else ops)
    for s, op in pairs:
        problems += cl.compare_row_op(s, op, _xs_e0())
    return problems


def _edit_struct(file: str, struct: str, old: str, new: str) -> dict[str, str]:
    """``{file: text}``: the text of ``cuda_src/file`` with ``old`` replaced by
    ``new`` once, inside the declaration of ``struct`` only."""
    text = _read(CUDA_SRC / file)
    start = text.index(f"struct {struct} ")
    end = text.index("\n};", start)
    assert text.count(old, start, end) == 1, f"{old!r} is not once in {struct}"
    return {file: text[:start] + text[start:end].replace(old, new) + text[end:]}


# -------------------------------------------------------------- the mirrors


def test_every_op_file_declares_row_structs_and_e0_agrees():
    """The parser finds the ops (a parser that finds nothing would pass every
    comparison), and the term index of e_0 is the same on both sides."""
    structs = _row_structs()
    for file in ROW_OP_FILES:
        assert any(s.file == file for s in structs.values()), f"no op struct found in {file}"
    assert len(structs) >= 30
    assert _xs_e0() == E0


def test_every_row_struct_has_exactly_one_matching_row_op():
    """Each op struct of cuda_src has one RowOp (``op.struct``) and each RowOp
    one struct; the pair has the same vector count, term / dot / out tables,
    SCALAR_OUT, IN_SHIFT / OUT_SHIFT, use of t and eps, and source file. The
    CPU path runs the RowOp's tables and the GPU the struct's: a difference
    makes the two disagree."""
    assert _row_problems() == []


def test_xs_row_args_matches_row_arg_fields():
    """``xs_row_args`` (rowwise.cuh) is packed by ``ROW_ARGS`` with the fields
    in ``ROW_ARG_FIELDS`` order: same names, order, types, offsets and size."""
    c = cl.parse_c_struct(_read(ROWWISE_CUH), "xs_row_args")
    assert cl.compare_c_struct(c, ROW_ARG_FIELDS, ROW_ARGS.format) == []
    assert c.size == ROW_ARGS.size


def test_xs_opt_meta_matches_meta_fields():
    """``xs_opt_meta`` (optim.cu) is filled as one int64 row per tensor: the
    first ``_INT_FIELDS`` of ``_META_FIELDS`` as int64, the rest as float64."""
    c = cl.parse_c_struct(_read(OPTIM_CU), "xs_opt_meta")
    fmt = cl.record_format(len(_META_FIELDS), _INT_FIELDS)
    assert cl.compare_c_struct(c, _META_FIELDS, fmt) == []


# ------------------------------------------------------- the checks can fail


def _one_naming(problems: list[str], *words: str) -> None:
    assert any(all(w in p for w in words) for p in problems), (words, problems)


def test_swapped_dots_are_reported():
    edited = _edit_struct(
        "poincare.cu", "PoincareMobiusAdd", "{0, 0}, {1, 1}, {0, 1}", "{1, 1}, {0, 0}, {0, 1}"
    )
    _one_naming(_row_problems(edited), "PoincareMobiusAdd", "dot")


def test_dropped_spatial_flag_is_reported():
    edited = _edit_struct("lorentz.cu", "LorentzDist0", "{0, -1, true}", "{0, -1}")
    _one_naming(_row_problems(edited), "LorentzDist0", "term")


def test_e0_written_as_literal_is_the_same_term():
    """``XS_E0`` and -2 are the same index: spelling changes report nothing."""
    edited = _edit_struct("lorentz.cu", "LorentzNorm", "{XS_E0, -1}", "{-2, -1}")
    assert _row_problems(edited) == []


def test_changed_counts_and_shifts_are_reported():
    nout = _edit_struct("klein.cu", "KleinGeodesic", "NOUT = 2", "NOUT = 3")
    _one_naming(_row_problems(nout), "KleinGeodesic", "NOUT = 3")
    nvec = _edit_struct("poincare.cu", "PoincareDist0", "NVEC = 1", "NVEC = 2")
    _one_naming(_row_problems(nvec), "PoincareDist0", "NVEC")
    shift = _edit_struct("convert.cu", "ConvertLorentzToKlein", "OUT_SHIFT = 1", "IN_SHIFT = 1")
    problems = _row_problems(shift)
    _one_naming(problems, "ConvertLorentzToKlein", "IN_SHIFT")
    _one_naming(problems, "ConvertLorentzToKlein", "OUT_SHIFT")
    scalar = _edit_struct("lorentz.cu", "LorentzInner", "SCALAR_OUT = true", "SCALAR_OUT = false")
    _one_naming(_row_problems(scalar), "LorentzInner", "SCALAR_OUT")


def test_unmirrored_or_twice_mirrored_structs_are_reported():
    renamed = _edit_struct("klein.cu", "KleinDist", "struct KleinDist ", "struct KleinDistance ")
    problems = _row_problems(renamed)
    _one_naming(problems, "KleinDistance", "no RowOp")
    _one_naming(problems, "KleinDist", "not an op struct")
    ops = row_ops()
    twice = ops + [dataclasses.replace(next(o for o in ops if o.struct == "LorentzExpmap"))]
    _one_naming(_row_problems(ops=twice), "LorentzExpmap", "2 RowOps")


def test_python_side_changes_are_reported():
    """The same comparer catches a RowOp edited instead of the C++."""
    ops = row_ops()
    geo = next(o for o in ops if o.struct == "PoincareGeodesic")
    proj = next(o for o in ops if o.struct == "PoincareProject")
    edits = {
        geo: [dict(param=None), dict(out=(0, 1, 2)), dict(family="klein"), dict(vectors=("u",))],
        proj: [dict(uses_eps=False), dict(terms=((0, -1, True),))],
    }
    for op, changes in edits.items():
        for change in changes:
            altered = [dataclasses.replace(o, **change) if o is op else o for o in ops]
            _one_naming(_row_problems(ops=altered), op.struct)


def test_dropped_row_arg_field_is_reported():
    text = _read(ROWWISE_CUH)
    gc = "  void* gc;"
    assert text.count(gc) == 1
    c = cl.parse_c_struct(text.replace(gc, "", 1), "xs_row_args")
    problems = cl.compare_c_struct(c, ROW_ARG_FIELDS, ROW_ARGS.format)
    _one_naming(problems, "xs_row_args.gc")
    _one_naming(problems, "xs_row_args", "sizeof")


def test_row_arg_type_order_and_padding_changes_are_reported():
    text = _read(ROWWISE_CUH)
    as_double = text.replace("  double t_val;", "  long long t_val;", 1)
    problems = cl.compare_c_struct(
        cl.parse_c_struct(as_double, "xs_row_args"), ROW_ARG_FIELDS, ROW_ARGS.format
    )
    _one_naming(problems, "xs_row_args.t_val", "long long")
    swapped = text.replace("long long g_rs, g_es;", "long long g_es, g_rs;", 1)
    problems = cl.compare_c_struct(cl.parse_c_struct(swapped, "xs_row_args"), ROW_ARG_FIELDS, ROW_ARGS.format)
    _one_naming(problems, "xs_row_args", "order")
    # an int where the host packs 8 bytes: C pads the next field, offsets move
    c = cl.parse_c_struct("struct s { int a; double b; };", "s")
    _one_naming(cl.compare_c_struct(c, ("a", "b"), "<id"), "s.b", "offset")


def test_changed_opt_meta_type_is_reported():
    text = _read(OPTIM_CU)
    old = "double c, ball_eps,"
    assert text.count(old) == 1
    c = cl.parse_c_struct(text.replace(old, "long long c;\n  double ball_eps,", 1), "xs_opt_meta")
    fmt = cl.record_format(len(_META_FIELDS), _INT_FIELDS)
    _one_naming(cl.compare_c_struct(c, _META_FIELDS, fmt), "xs_opt_meta.c", "long long")


def test_parser_refuses_what_it_cannot_read():
    """Unknown constructs raise instead of being skipped (a skipped table would
    compare as missing, a skipped field would shift every later one)."""
    defaults, symbols = {"IN_SHIFT": 0, "OUT_SHIFT": 0}, {"XS_E0": -2}
    text = _read(CUDA_SRC / "poincare.cu").replace("{0, 0}, {1, 1}, {0, 1})", "{0, 0}, {1, 1}, {0, XS_Y})", 1)
    with pytest.raises(ValueError, match="XS_Y"):
        cl.parse_row_structs(text, "poincare.cu", defaults, symbols)
    with pytest.raises(ValueError, match="cannot read"):
        cl.parse_c_struct("struct s { long long a; xs_half h; };", "s")
