"""The layouts and constants mirrored by hand between ``cuda_src/`` and the Python package agree.

Each row op, the kernel parameter struct ``xs_row_args``, the optimizer
record ``xs_opt_meta``, the clamping limits ``xs_limits``, the ``XS_*``
constants of each source file (block sizes, model / kind / flag codes, the
HNN++ clamp), the kernels' launch bounds and threads per row, the ``-D``
switches of the registry, the clamps written inside kernel functions (the
pairwise backward's exp argument, fp16's saturation, the ``xs_limits``
members the linear kernels clamp with) and the ``MODE`` template codes of
the linear and optimizer kernels are declared once in CUDA C++ and once in
Python.
A mirror that drifts still compiles and runs and silently gives wrong
numbers (a swapped dot, a field read at the wrong offset, a flag bit the
kernel reads as another) that only GPU numerics would notice; these CPU
tests read the C++ source (:mod:`cuda_layout`) and compare it with the
Python objects, and check that the comparison does fail on deliberately
altered C++ (and altered Python values).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import cuda_layout as cl
import numpy
import pytest

from xpu_stone import constants, ops
from xpu_stone.engine import rowwise, rowwise_cpu
from xpu_stone.engine.rowop import E0, RowOp
from xpu_stone.kernels.launch import ROW_ARG_FIELDS, ROW_ARGS
from xpu_stone.kernels.registry import DTYPES, REGISTRY
from xpu_stone.ops import hyperbolic_linear, optim, pairwise
from xpu_stone.ops import rbe as ops_rbe
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
        "poincare.cu", "PoincareMobiusAdd", "{0, 0}, {1, 1}, {2, 2}", "{1, 1}, {0, 0}, {2, 2}"
    )
    _one_naming(_row_problems(edited), "PoincareMobiusAdd", "dot")


def test_dropped_sum_flag_is_reported():
    """A sum term x + y read back as the difference x - y."""
    edited = _edit_struct("poincare.cu", "PoincareMobiusAdd", "{0, 1, false, true}", "{0, 1}")
    _one_naming(_row_problems(edited), "PoincareMobiusAdd", "term")


def test_sum_flag_on_a_lone_input_is_not_a_term():
    """The sum flag needs a second input (b >= 0): on v_a alone it is an error."""
    edited = _edit_struct("poincare.cu", "PoincareMobiusAdd", "{1, -1}", "{1, -1, false, true}")
    _one_naming(_row_problems(edited), "PoincareMobiusAdd", "not a valid term")


def test_false_flags_written_out_are_the_same_term():
    """``{0, 1, false, false}`` is ``{0, 1}``: spelling the default flags reports nothing."""
    edited = _edit_struct("poincare.cu", "PoincareMobiusSub", "{0, 1}", "{0, 1, false, false}")
    assert _row_problems(edited) == []


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
    text = _read(CUDA_SRC / "poincare.cu").replace("{0, 1}, {0, 1})", "{0, 1}, {0, XS_Y})", 1)
    with pytest.raises(ValueError, match="XS_Y"):
        cl.parse_row_structs(text, "poincare.cu", defaults, symbols)
    with pytest.raises(ValueError, match="cannot read"):
        cl.parse_c_struct("struct s { long long a; xs_half h; };", "s")


# ================================================================ constants

MATH_CUH = CUDA_SRC / "common" / "math.cuh"
# The Python constants that mirror xs_limits (math.cuh): member min_sqnorm is MIN_SQNORM...
CLAMP_CONSTANTS = ("MIN_SQNORM", "MIN_DENOM", "TANH_MAX", "ARTANH_MAX", "COSH_MAX")
# Threads a row of the warp-per-row kernels: the launchers size their grids as
# -(-rows * 32 // BLOCK) (pairwise.py, hyperbolic_linear.py, optim.py).
WARP_ROW = 32
# source file -> the block size its launcher uses (kernels whose block is a template
# parameter, the row-wise engine's, take it from the registry's kernel names instead)
LAUNCH_BLOCKS = {
    "pairwise.cu": ("ops.pairwise.BLOCK", pairwise.BLOCK),
    "hyperbolic_linear.cu": ("ops.hyperbolic_linear.BLOCK", hyperbolic_linear.BLOCK),
    "optim.cu": ("ops.optim.BLOCK", optim.BLOCK),
}
_OPTIM_CODES = ("EUCLIDEAN", "POINCARE", "LORENTZ", "AMSGRAD", "NESTEROV", "RETR", "MOMENTUM", "FIRST_STEP")


def constant_mirrors(py_values: dict[str, object] | None = None) -> dict[str, dict[str, tuple[str, object]]]:
    """Source file (relative to cuda_src) -> {C++ expression: (Python name, value)}:
    every XS_* constant of cuda_src and the value the Python side uses for it.
    ``py_values`` replaces Python values by name (to show a Python-side drift)."""
    mirrors = {
        "common/rowwise.cuh": {"XS_E0": ("engine.rowop.E0", E0)},
        "pairwise.cu": {
            "XS_POINCARE": ("ops.pairwise.MODELS['poincare']", pairwise.MODELS["poincare"]),
            "XS_LORENTZ": ("ops.pairwise.MODELS['lorentz']", pairwise.MODELS["lorentz"]),
            "XS_PAIR_BLOCK": ("ops.pairwise.BLOCK", pairwise.BLOCK),
            # row_part has gridDim.x * (XS_PAIR_BLOCK / 32) columns; the host allocates gxc * WARPS
            "XS_PAIR_BLOCK / 32": ("ops.pairwise.WARPS", pairwise.WARPS),
        },
        "hyperbolic_linear.cu": {
            "XS_HYP_ARG_MAX": ("ops.hyperbolic_linear.HYP_ARG_MAX", hyperbolic_linear.HYP_ARG_MAX)
        },
        "optim.cu": {f"XS_{n}": (f"ops.optim.{n}", getattr(optim, n)) for n in _OPTIM_CODES},
        "rbe.cu": {"XS_RBE_MAX_WALK": ("ops.rbe.MMA_MAX_WALK", ops_rbe.MMA_MAX_WALK)},
    }
    for table in mirrors.values():
        for expr, (name, value) in table.items():
            table[expr] = (name, (py_values or {}).get(name, value))
    return mirrors


def _sources() -> list[str]:
    """Every C++ file of cuda_src, relative to it."""
    files = sorted(
        p.relative_to(CUDA_SRC).as_posix() for p in CUDA_SRC.rglob("*") if p.suffix in (".cu", ".cuh")
    )
    assert len(files) >= 10 and "common/math.cuh" in files
    return files


def _text(rel: str, edited: dict[str, str] | None = None) -> str:
    return (edited or {}).get(rel) or _read(CUDA_SRC / rel)


def _edit(rel: str, old: str, new: str, count: int = 1) -> dict[str, str]:
    """``{rel: text}``: ``cuda_src/rel`` with the ``count`` occurrences of ``old`` replaced by ``new``."""
    text = _read(CUDA_SRC / rel)
    assert text.count(old) == count, f"{old!r} is {text.count(old)} times in {rel}, not {count}"
    return {rel: text.replace(old, new)}


def _limit_problems(edited: dict[str, str] | None = None, py=None) -> list[str]:
    limits = cl.parse_limits(_text("common/math.cuh", edited))
    return cl.compare_limits(limits, vars(constants) if py is None else py, CLAMP_CONSTANTS)


def _constant_problems(edited: dict[str, str] | None = None, py_values=None) -> list[str]:
    mirrors = constant_mirrors(py_values)
    assert set(mirrors) <= set(_sources()), set(mirrors) - set(_sources())
    problems = []
    for rel in _sources():
        problems += cl.compare_constants(rel, cl.constants(_text(rel, edited)), mirrors.get(rel, {}))
    return problems


def _launch_problems(edited: dict[str, str] | None = None, blocks: dict[str, int] | None = None) -> list[str]:
    problems = []
    for rel, (_, block) in LAUNCH_BLOCKS.items():
        text = _text(rel, edited)
        block = (blocks or {}).get(rel, block)
        problems += cl.compare_launch(rel, cl.parse_kernels(text), block, cl.constants(text), WARP_ROW)
    return problems


def _closure(rel: str, edited: dict[str, str] | None = None) -> dict[str, str]:
    """``{file: text}`` of ``rel`` and every file it includes, recursively."""
    out: dict[str, str] = {}
    todo = [rel]
    while todo:
        cur = todo.pop()
        if cur in out:
            continue
        out[cur] = _text(cur, edited)
        for inc in cl.includes(out[cur]):
            path = (CUDA_SRC / cur).parent / inc
            assert path.is_file(), f"{cur}: #include {inc!r} not found in cuda_src"
            todo.append(path.resolve().relative_to(CUDA_SRC.resolve()).as_posix())
    return out


def _define_problems(edited: dict[str, str] | None = None) -> list[str]:
    """Each source of the registry against the -D switches its kernels are compiled with."""
    switches: dict[str, set[str]] = {}
    for kernels in REGISTRY:
        for dtype in DTYPES:
            switches.setdefault(kernels.source, set()).update(kernels.defines(dtype))
    assert any(switches.values()), "the registry passes no -D switch: nothing compared"
    problems = []
    for source, defines in sorted(switches.items()):
        reads = set().union(*(cl.preprocessor_reads(t) for t in _closure(source, edited).values()))
        problems += cl.compare_defines(source, defines, reads)
    return problems


# ------------------------------------------------------ the mirrors agree


def test_clamping_limits_match_constants():
    """``xs_limits<float>`` / ``<double>`` (math.cuh) against MIN_SQNORM, MIN_DENOM,
    TANH_MAX, ARTANH_MAX and COSH_MAX (constants.py, which the CPU paths and the
    torch optimizer maths clamp with): every member has its constant and the
    values agree exactly in the member's type (``1.0f - 1e-7f`` evaluated in
    binary32, the Python ``1.0 - 1e-7`` rounded to binary32)."""
    limits = cl.parse_limits(_read(MATH_CUH))
    assert set(limits) == {"float", "double"}
    for members in limits.values():
        assert {m.upper() for m in members} == set(CLAMP_CONSTANTS)
    assert _limit_problems() == []


def test_xs_constants_of_every_source_file_are_mirrored():
    """Each ``XS_*`` ``#define`` / ``constexpr`` / ``enum`` value of cuda_src has
    its Python mirror with the same value: the pairwise model codes and block
    (and its warps, the width of the row-sum workspace), the HNN++ argument
    clamp, the optimizer's manifold kinds and flag bits, e_0's term index. A
    constant added to the C++ without a mirror is reported too."""
    found = {rel: cl.constants(_read(CUDA_SRC / rel)) for rel in _sources()}
    assert set(found["optim.cu"]) == {f"XS_{n}" for n in _OPTIM_CODES}
    assert {"XS_PAIR_BLOCK", "XS_POINCARE", "XS_LORENTZ"} <= set(found["pairwise.cu"])
    assert _constant_problems() == []


def test_launch_bounds_and_rows_match_the_launchers():
    """The kernels of pairwise.cu, hyperbolic_linear.cu and optim.cu against the
    BLOCK their launchers use: ``__launch_bounds__`` equal to it, one warp a row
    where the kernel maps threads to rows (the launchers' ``rows * 32``), and a
    block of whole warps. The linear kernels have no launch bounds: any BLOCK of
    whole warps fits them."""
    kernels = {rel: cl.parse_kernels(_read(CUDA_SRC / rel)) for rel in LAUNCH_BLOCKS}
    bounded = {rel: {k.name for k in ks.values() if k.launch_bounds} for rel, ks in kernels.items()}
    per_row = {rel: {k.name for k in ks.values() if k.row_threads} for rel, ks in kernels.items()}
    assert bounded == {
        "pairwise.cu": {"xs_cdist_fwd", "xs_cdist_bwd"},
        "hyperbolic_linear.cu": set(),
        "optim.cu": {"xs_riemannian_step"},
    }
    assert per_row["hyperbolic_linear.cu"] == {"xs_matvec_fwd", "xs_matvec_bwd", "xs_hnn_fwd", "xs_hnn_bwd"}
    assert per_row["optim.cu"] == {"xs_riemannian_step"}
    assert per_row["pairwise.cu"] == {"xs_pair_scalars"}
    assert _launch_problems() == []


def test_registry_switches_are_read_by_their_sources():
    """``XS_FAST_TRANSCENDENTALS=1`` (``defines`` of the registry, for outputs
    narrower than fp64) is tested by an ``#if`` in every source it is passed
    to (through math.cuh): a renamed macro would silently select the slow path."""
    assert _define_problems() == []


# ------------------------------------------------------- the checks can fail


def test_changed_limits_are_reported():
    float_artanh = "static constexpr float artanh_max = 1.0f - 1e-7f;"
    changed = _edit("common/math.cuh", float_artanh, float_artanh.replace("1e-7f", "1e-6f"))
    _one_naming(_limit_problems(changed), "xs_limits<float>::artanh_max", "ARTANH_MAX['float32']")
    # in float arithmetic 1.0f - 1e-8f is 1.0f: no longer 1 - 1e-7
    rounded = _edit("common/math.cuh", float_artanh, float_artanh.replace("1e-7f", "1e-8f"))
    _one_naming(_limit_problems(rounded), "artanh_max", "1.0 (float)")
    double_denom = "static constexpr double min_denom = 1e-15;"
    changed = _edit("common/math.cuh", double_denom, double_denom.replace("1e-15", "1e-14"))
    _one_naming(_limit_problems(changed), "xs_limits<double>::min_denom", "MIN_DENOM")
    cosh = "static constexpr double cosh_max = 700.0;"
    changed = _edit("common/math.cuh", cosh, "static constexpr double cosh_max = 710;")
    _one_naming(_limit_problems(changed), "xs_limits<double>::cosh_max", "COSH_MAX['float64']")


def test_limit_spelling_changes_report_nothing():
    """The same binary32 value written otherwise: ``0.99999988f``, or a double
    literal ``1e-36`` that the ``float`` member rounds."""
    edited = _edit("common/math.cuh", "1.0f - 1e-7f", "0.99999988f")
    text = edited["common/math.cuh"].replace("min_sqnorm = 1e-36f", "min_sqnorm = 1e-36", 1)
    assert _limit_problems({"common/math.cuh": text}) == []


def test_added_or_dropped_limit_members_are_reported():
    added = _edit(
        "common/math.cuh",
        "  static constexpr double cosh_max = 700.0;\n",
        "  static constexpr double cosh_max = 700.0;\n  static constexpr double acosh_min = 1.0;\n",
    )
    _one_naming(_limit_problems(added), "xs_limits<double>::acosh_min", "no Python constant ACOSH_MIN")
    dropped = _edit("common/math.cuh", "  static constexpr float cosh_max = 88.0f;", "")
    _one_naming(_limit_problems(dropped), "COSH_MAX['float32']", "cosh_max")
    gone = _edit("common/math.cuh", " tanh_max = ", " tanh_lim = ", count=2)
    problems = _limit_problems(gone)
    _one_naming(problems, "TANH_MAX", "no xs_limits member")
    _one_naming(problems, "tanh_lim", "TANH_LIM")


def test_python_side_limit_changes_are_reported():
    py = dict(vars(constants))
    py["COSH_MAX"] = {**constants.COSH_MAX, "float32": 89.0}
    py["TANH_MAX"] = 15.5
    py["MIN_SQNORM"] = {"float64": 1e-200}
    py["ARTANH_MAX"] = {**constants.ARTANH_MAX, "float16": 1 - 1e-3}
    problems = _limit_problems(py=py)
    _one_naming(problems, "xs_limits<float>::cosh_max", "COSH_MAX['float32'] is 89.0")
    _one_naming(problems, "xs_limits<float>::tanh_max", "TANH_MAX is 15.5")
    _one_naming(problems, "xs_limits<double>::tanh_max", "TANH_MAX is 15.5")
    _one_naming(problems, "xs_limits<float>::min_sqnorm", "no 'float32' entry")
    _one_naming(problems, "ARTANH_MAX['float16']")
    del py["MIN_DENOM"]
    _one_naming(_limit_problems(py=py), "min_denom", "no Python constant MIN_DENOM")


def test_changed_constants_are_reported():
    arg = _edit("hyperbolic_linear.cu", "#define XS_HYP_ARG_MAX 50.0", "#define XS_HYP_ARG_MAX 40.0")
    _one_naming(_constant_problems(arg), "XS_HYP_ARG_MAX", "ops.hyperbolic_linear.HYP_ARG_MAX")
    block = _edit("pairwise.cu", "constexpr int XS_PAIR_BLOCK = 256;", "constexpr int XS_PAIR_BLOCK = 128;")
    problems = _constant_problems(block)
    _one_naming(problems, "XS_PAIR_BLOCK is 128", "ops.pairwise.BLOCK")
    _one_naming(problems, "XS_PAIR_BLOCK / 32", "ops.pairwise.WARPS")
    _one_naming(_launch_problems(block), "xs_cdist_bwd", "__launch_bounds__(XS_PAIR_BLOCK) is 128")
    model = _edit("pairwise.cu", "#define XS_LORENTZ 1", "#define XS_LORENTZ 2")
    _one_naming(_constant_problems(model), "XS_LORENTZ", "MODELS['lorentz']")
    flag = _edit("optim.cu", "XS_RETR = 4,", "XS_RETR = 32,")
    _one_naming(_constant_problems(flag), "optim.cu", "XS_RETR", "ops.optim.RETR")
    kinds = _edit(
        "optim.cu",
        "enum { XS_EUCLIDEAN = 0, XS_POINCARE = 1, XS_LORENTZ = 2 };",
        "enum { XS_EUCLIDEAN, XS_LORENTZ, XS_POINCARE };",
    )
    problems = _constant_problems(kinds)
    _one_naming(problems, "XS_POINCARE is 2", "ops.optim.POINCARE")
    _one_naming(problems, "XS_LORENTZ is 1", "ops.optim.LORENTZ")
    e0 = _edit("common/rowwise.cuh", "constexpr int XS_E0 = -2;", "constexpr int XS_E0 = -3;")
    _one_naming(_constant_problems(e0), "XS_E0", "engine.rowop.E0")


def test_python_side_constant_changes_are_reported():
    problems = _constant_problems(py_values={"ops.optim.FIRST_STEP": 32, "ops.pairwise.BLOCK": 256.0})
    _one_naming(problems, "XS_FIRST_STEP is 16", "ops.optim.FIRST_STEP is 32")
    _one_naming(problems, "XS_PAIR_BLOCK is 256 (int)", "ops.pairwise.BLOCK is 256.0")
    problems = _launch_problems(blocks={"optim.cu": 512, "hyperbolic_linear.cu": 48})
    _one_naming(problems, "optim.cu:xs_riemannian_step", "blocks of 512")
    _one_naming(problems, "hyperbolic_linear.cu", "48 threads", "32-thread rows")


def test_unmirrored_and_missing_constants_are_reported():
    """A new XS_ constant is reported until it gets a mirror; a mirrored one that
    disappears from the C++ raises instead of being skipped."""
    new = _edit(
        "pairwise.cu", "#define XS_LORENTZ 1\n", "#define XS_LORENTZ 1\n#define XS_PAIR_TILE (2 * 32)\n"
    )
    _one_naming(_constant_problems(new), "pairwise.cu", "XS_PAIR_TILE = 64", "no Python mirror")
    header = _edit("common/math.cuh", "#pragma once\n", "#pragma once\nconstexpr double XS_EXP_MAX = 80.0;\n")
    _one_naming(_constant_problems(header), "common/math.cuh", "XS_EXP_MAX")
    gone = _edit("hyperbolic_linear.cu", "#define XS_HYP_ARG_MAX 50.0", "#define XS_HYP_ARG_LIMIT 50.0")
    with pytest.raises(ValueError, match="XS_HYP_ARG_MAX"):
        _constant_problems(gone)


def test_launch_changes_are_reported():
    bounds = _edit("optim.cu", "__launch_bounds__(256)", "__launch_bounds__(512)")
    _one_naming(_launch_problems(bounds), "optim.cu:xs_riemannian_step", "__launch_bounds__(512)")
    text = _read(CUDA_SRC / "hyperbolic_linear.cu")
    row = "blockDim.x + threadIdx.x) / 32;"
    start = text.index("xs_hnn_fwd(")
    assert text.count(row, start, text.index("xs_hnn_bwd(")) == 1
    half_warp = text[:start] + text[start:].replace(row, "blockDim.x + threadIdx.x) / 16;", 1)
    _one_naming(_launch_problems({"hyperbolic_linear.cu": half_warp}), "xs_hnn_fwd", "16 threads")
    shifted = _edit("optim.cu", "threadIdx.x) >> 5;", "threadIdx.x) >> 4;")
    _one_naming(_launch_problems(shifted), "xs_riemannian_step", "16 threads")
    bounded = _edit(
        "hyperbolic_linear.cu",
        "__global__ void xs_matvec_fwd(",
        "__global__ void __launch_bounds__(128) xs_matvec_fwd(",
    )
    _one_naming(_launch_problems(bounded), "xs_matvec_fwd", "__launch_bounds__(128)", "blocks of 256")


def test_renamed_switch_is_reported():
    renamed = _edit("common/math.cuh", "#if XS_FAST_TRANSCENDENTALS", "#if XS_FAST_MATH", count=6)
    problems = _define_problems(renamed)
    for source in ("poincare.cu", "pairwise.cu", "optim.cu", "hyperbolic_linear.cu"):
        _one_naming(problems, source, "XS_FAST_TRANSCENDENTALS")


def test_constant_parsers_refuse_what_they_cannot_read():
    """Casts, calls, ``?:``, hex, ``long double`` literals and unknown names raise;
    so do a brace-initialised XS_ constant, a redeclared one and an unreadable
    xs_limits member or kernel (skipping them would compare nothing)."""
    assert cl.eval_cpp("1.0f - 1e-8f") == cl.CNum("float", 1.0)
    assert cl.eval_cpp("1.0 - 1e-8").value == 1.0 - 1e-8
    assert cl.eval_cpp("-7 / 2") == cl.CNum("int", -3)
    assert cl.eval_cpp("XS_A << 2 | 1", {"XS_A": cl.CNum("int", 2)}) == cl.CNum("int", 9)
    assert cl.eval_cpp("2 * 0.5f") == cl.CNum("float", 1.0)
    for expr in ("S(50.0)", "0x10", "1.0L", "a ? 1 : 2", "XS_UNKNOWN + 1", "3 % 2", "1 / 0"):
        with pytest.raises(ValueError):
            cl.eval_cpp(expr)
    for text in (
        "constexpr float XS_X{1.0f};",
        "#define XS_X 1.0L",
        "#define XS_X 1\n#define XS_X 2",
        "enum { XS_A = 1, XS_B = XS_C };",
    ):
        with pytest.raises(ValueError):
            cl.constants(text)
    assert cl.constants("enum { XS_A = 3, XS_B, XS_C = XS_B << 1 };") == {
        "XS_A": cl.CNum("int", 3),
        "XS_B": cl.CNum("int", 4),
        "XS_C": cl.CNum("int", 8),
    }
    with pytest.raises(ValueError, match="XS_GONE"):
        cl.constant(_read(CUDA_SRC / "pairwise.cu"), "XS_GONE")
    with pytest.raises(ValueError, match="cannot read the member"):
        cl.parse_limits("template <> struct xs_limits<float> { static const float tanh_max = 15.0f; };")
    with pytest.raises(ValueError, match="no specialisation"):
        cl.parse_limits("template <class S> struct xs_limits;")
    with pytest.raises(ValueError, match="cannot read the kernel"):
        cl.parse_kernels("__global__ static void k(int n) {}")


# ============================================ literals mirrored inside functions

HYP_CU = CUDA_SRC / "hyperbolic_linear.cu"
# The clamps of ops/hyperbolic_linear.py's torch maths: the xs_limits<S> member each
# kernel function of hyperbolic_linear.cu reads (itself or through a math.cuh helper).
HYP_LIMIT_USES = (
    cl.LimitUse("PHI_MIN_SQNORM", "min_sqnorm", "xs_matvec_phi", "xs_norm_from_sq"),
    cl.LimitUse("PHI_ARTANH_MAX", "artanh_max", "xs_matvec_phi", "xs_artanh_c"),
    cl.LimitUse("PHI_TANH_MAX", "tanh_max", "xs_matvec_phi", "xs_tanh_c"),
    cl.LimitUse("LAMBDA_MIN_DENOM", "min_denom", "xs_lambda"),
    cl.LimitUse("LAMBDA_MIN_DENOM", "min_denom", "xs_hnn_bwd"),  # its `clamped` (gamma = 0)
)
# identifiers only one mode's code uses: a branch `if (MODE == k)` using them is that mode's
HYP_MODE_MARKERS = {"FC": ("xs_hnn_w",)}
OPTIM_MODE_MARKERS = {
    "Adam": ("m.bc1", "m.bc2", "XS_AMSGRAD", "vmax"),
    "SGD": ("XS_MOMENTUM", "XS_NESTEROV", "XS_FIRST_STEP"),
}


def _exp_arg_problems(edited: dict[str, str] | None = None, py=None) -> list[str]:
    """``s_max`` of xs_cdist_bwd (``sizeof(E) == 4 ? E(80) : E(700)``) against
    ``ops.pairwise.EXP_ARG_MAX``, which ``_epilogue_bwd_torch`` clamps with."""
    found = cl.size_select(cl.function_body(_text("pairwise.cu", edited), "xs_cdist_bwd"), "s_max")
    py = pairwise.EXP_ARG_MAX if py is None else py
    return cl.compare_by_type("pairwise.cu:xs_cdist_bwd s_max", found, "ops.pairwise.EXP_ARG_MAX", py)


def _fp16_problems(edited: dict[str, str] | None = None, py: float | None = None) -> list[str]:
    """The saturation of ``xs_from_e<xs_half>`` (dtype.cuh) against ``FP16_MAX``,
    which the CPU path's stores (``engine.rowwise_cpu._store``) and the custom
    op's gradient reductions (``engine.rowwise._reduce_to``) clamp to."""
    body = cl.function_body(_text("common/dtype.cuh", edited), "xs_from_e<xs_half>")
    lo, hi = cl.clamp_bounds(body, "v")
    where = "common/dtype.cuh:xs_from_e<xs_half>"
    problems = []
    for module in (rowwise_cpu, rowwise):
        value = module.FP16_MAX if py is None else py
        name = f"{module.__name__.removeprefix('xpu_stone.')}.FP16_MAX"
        problems += cl.compare_value(f"{where} upper bound", hi, name, value)
        problems += cl.compare_value(f"{where} lower bound", lo, f"-{name}", -value)
    return problems


def _hyp_s_ctype(names=None) -> str:
    """The arithmetic type S (second template argument) of every kernel of hyperbolic_linear.cu."""
    names = [n for _, n in hyperbolic_linear.KERNELS.kernels] if names is None else names
    types = {cl.template_args(n)[1] for n in names}
    assert len(types) == 1, f"kernels of hyperbolic_linear.cu with S in {types}"
    return types.pop()


def _hyp_limit_problems(edited: dict[str, str] | None = None, py=None, s_ctype=None) -> list[str]:
    s_ctype = _hyp_s_ctype() if s_ctype is None else s_ctype
    limits = cl.parse_limits(_text("common/math.cuh", edited))[s_ctype]
    return cl.compare_limit_uses(
        "hyperbolic_linear.cu",
        _text("hyperbolic_linear.cu", edited),
        _text("common/math.cuh", edited),
        limits,
        s_ctype,
        HYP_LIMIT_USES,
        vars(hyperbolic_linear) if py is None else py,
    )


def _hyp_mode_problems(edited: dict[str, str] | None = None, codes=None) -> list[str]:
    """MLR / FC against the MODE of xs_hnn_fwd / xs_hnn_bwd: the kernel that the
    launchers name with ``f"hnn_fwd_{mode}"`` has template argument MODE = mode."""
    codes = {"MLR": hyperbolic_linear.MLR, "FC": hyperbolic_linear.FC} if codes is None else codes
    text = _text("hyperbolic_linear.cu", edited)
    return cl.compare_modes(
        "hyperbolic_linear.cu",
        cl.mode_comments(text),
        cl.mode_branches(text),
        codes,
        HYP_MODE_MARKERS,
        required=("FC",),
    )


class _Launched(Exception):
    pass


def _optim_launch_modes(monkeypatch) -> dict[str, int]:
    """``{"SGD": k, "Adam": k}``: the MODE template argument of the kernel that
    ``ops.optim.launch_records`` launches with ``adam`` False / True (its
    ``get_function`` stubbed to record the name; nothing is launched)."""

    def record(source, name, *args, **kwargs):
        raise _Launched(name)

    monkeypatch.setattr(optim, "get_function", record)
    modes = {}
    for label, adam in (("SGD", False), ("Adam", True)):
        with pytest.raises(_Launched) as launched:
            optim.launch_records(None, 1, 1, SimpleNamespace(index=0), "float32", adam)
        name = launched.value.args[0]
        assert name in {n for _, n in optim.KERNELS.kernels}
        modes[label] = int(cl.template_args(name)[-1])
    return modes


def _optim_mode_problems(codes: dict[str, int], edited: dict[str, str] | None = None) -> list[str]:
    text = _text("optim.cu", edited)
    return cl.compare_modes(
        "optim.cu", cl.mode_comments(text), cl.mode_branches(text), codes, OPTIM_MODE_MARKERS
    )


# ------------------------------------------------------ the mirrors agree


def test_pairwise_exp_clamp_matches_exp_arg_max():
    """``s_max`` of the backward epilogue (pairwise.cu, a bare literal per type
    E) is ``ops.pairwise.EXP_ARG_MAX`` for both compute dtypes."""
    assert set(pairwise.EXP_ARG_MAX) == {"float32", "float64"}
    assert _exp_arg_problems() == []


def test_fp16_saturation_matches_fp16_max():
    """fp16 stores saturate at ``+-65504.0f`` (dtype.cuh), the largest finite
    half; the CPU path and the custom op's reductions clamp to the same
    ``FP16_MAX`` (one constant, imported by engine/rowwise.py)."""
    assert rowwise.FP16_MAX is rowwise_cpu.FP16_MAX
    assert rowwise_cpu.FP16_MAX == float(numpy.finfo(numpy.float16).max)
    assert _fp16_problems() == []


def test_hyperbolic_linear_clamps_match_the_kernels_limits():
    """The torch maths of ops/hyperbolic_linear.py clamps with PHI_MIN_SQNORM,
    PHI_ARTANH_MAX, PHI_TANH_MAX and LAMBDA_MIN_DENOM; the kernel functions that
    they mirror read ``xs_limits<S>::min_sqnorm / artanh_max / tanh_max /
    min_denom`` (through ``xs_norm_from_sq`` etc.), S being double in every
    kernel name, and the values agree with ``xs_limits<double>``."""
    assert _hyp_s_ctype() == "double"
    assert {u.py_name for u in HYP_LIMIT_USES} <= set(vars(hyperbolic_linear))
    assert _hyp_limit_problems() == []


def test_hnn_mode_codes_match_the_kernels():
    """MLR and FC are the MODE of the kernels the launchers name: the comment of
    hyperbolic_linear.cu says which MODE is which, and only FC's branches apply
    ``xs_hnn_w`` (w = sinh(sqrt(c) v) / sqrt(c), the FC layer's output map)."""
    for mode in (hyperbolic_linear.MLR, hyperbolic_linear.FC):
        for kind in ("hnn_fwd", "hnn_bwd"):
            name = hyperbolic_linear.kernel_name(f"{kind}_{mode}", "float32")
            assert cl.template_args(name)[-1] == str(mode)
            assert name in {n for _, n in hyperbolic_linear.KERNELS.kernels}
    branches = cl.mode_branches(_read(HYP_CU))
    assert {k for k, _ in branches} == {hyperbolic_linear.MLR, hyperbolic_linear.FC}
    assert _hyp_mode_problems() == []


def test_optim_mode_codes_match_the_kernel(monkeypatch):
    """``launch_records`` launches ``xs_riemannian_step<T, 1>`` for Adam and
    ``<T, 0>`` for SGD (ops/optim.py spells it ``1 if adam else 0``); optim.cu's
    comment says ``MODE 1: Adam``, and its ``if (MODE == k)`` branches that read
    Adam's bias corrections / AMSGrad state are k = Adam's code, those that read
    SGD's momentum flags k = SGD's."""
    codes = _optim_launch_modes(monkeypatch)
    assert codes == {"SGD": 0, "Adam": 1}
    branches = cl.mode_branches(_read(OPTIM_CU))
    assert {k for k, _ in branches} == {0, 1}
    assert _optim_mode_problems(codes) == []


# ------------------------------------------------------- the checks can fail


def test_changed_exp_clamp_is_reported():
    changed = _edit("pairwise.cu", "E(80) : E(700)", "E(88) : E(700)")
    _one_naming(_exp_arg_problems(changed), "s_max for float", "EXP_ARG_MAX['float32'] is 80.0")
    swapped = _edit("pairwise.cu", "sizeof(E) == 4 ? E(80)", "sizeof(E) == 8 ? E(80)")
    problems = _exp_arg_problems(swapped)
    _one_naming(problems, "s_max for double is 80.0 (double)", "EXP_ARG_MAX['float64'] is 700.0")
    _one_naming(problems, "s_max for float is 700.0 (float)", "EXP_ARG_MAX['float32'] is 80.0")
    respelled = _edit(
        "pairwise.cu", "sizeof(E) == 4 ? E(80) : E(700)", "sizeof(E) == 8 ? E(700.0) : E(80.0f)"
    )
    assert _exp_arg_problems(respelled) == []
    py = {"float64": 700.0, "float32": 88.0, "float16": 11.0}
    problems = _exp_arg_problems(py=py)
    _one_naming(problems, "EXP_ARG_MAX['float32'] is 88.0")
    _one_naming(problems, "EXP_ARG_MAX['float16']", "no value for that type")
    bare = _edit("pairwise.cu", "sizeof(E) == 4 ? E(80) : E(700)", "E(80)")
    with pytest.raises(ValueError, match="s_max"):
        _exp_arg_problems(bare)


def test_changed_fp16_saturation_is_reported():
    upper = _edit("common/dtype.cuh", "-65504.0f), 65504.0f)", "-65504.0f), 60000.0f)")
    problems = _fp16_problems(upper)
    _one_naming(problems, "upper bound is 60000.0 (float)", "engine.rowwise_cpu.FP16_MAX is 65504.0")
    _one_naming(problems, "upper bound", "engine.rowwise.FP16_MAX")
    lower = _edit("common/dtype.cuh", "fmaxf(v, -65504.0f)", "fmaxf(v, -65000.0f)")
    _one_naming(_fp16_problems(lower), "lower bound is -65000.0", "-engine.rowwise_cpu.FP16_MAX")
    reordered = _edit(
        "common/dtype.cuh", "fminf(fmaxf(v, -65504.0f), 65504.0f)", "fmaxf(fminf(v, 65504.0), -65504.0f)"
    )
    assert _fp16_problems(reordered) == []
    _one_naming(_fp16_problems(py=65519.0), "upper bound", "FP16_MAX is 65519.0")
    gone = _edit("common/dtype.cuh", "  v = fminf(fmaxf(v, -65504.0f), 65504.0f);\n", "")
    with pytest.raises(ValueError, match="0 clamps"):
        _fp16_problems(gone)


def test_changed_hyperbolic_linear_clamps_are_reported():
    literal = _edit(
        "hyperbolic_linear.cu",
        "fmax(S(1) - c * xx, S(xs_limits<S>::min_denom))",
        "fmax(S(1) - c * xx, S(1e-14))",
    )
    _one_naming(
        _hyp_limit_problems(literal), "xs_lambda does not read xs_limits<S>::min_denom", "LAMBDA_MIN_DENOM"
    )
    unclamped = _edit("hyperbolic_linear.cu", "xs_tanh_c<R, S>(r / n", "xs_tanh(r / n")
    _one_naming(_hyp_limit_problems(unclamped), "xs_matvec_phi no longer calls xs_tanh_c", "PHI_TANH_MAX")
    helper = _edit(
        "common/math.cuh", "xs_max(sq, xs_limits<S>::min_sqnorm)", "xs_max(sq, xs_limits<S>::min_denom)"
    )
    _one_naming(_hyp_limit_problems(helper), "xs_norm_from_sq does not read xs_limits<S>::min_sqnorm")
    value = _edit("common/math.cuh", "artanh_max = 1.0 - 1e-15;", "artanh_max = 1.0 - 1e-14;")
    _one_naming(
        _hyp_limit_problems(value), "xs_limits<double>::artanh_max", "PHI_ARTANH_MAX is 0.999999999999999"
    )
    py = {**vars(hyperbolic_linear), "PHI_MIN_SQNORM": 1e-36, "PHI_TANH_MAX": 15}
    problems = _hyp_limit_problems(py=py)
    _one_naming(problems, "xs_limits<double>::min_sqnorm", "PHI_MIN_SQNORM is 1e-36")
    assert not any("PHI_TANH_MAX" in p for p in problems)  # the int 15 is 15.0
    # kernels instantiated with S = float would clamp with xs_limits<float>
    _one_naming(_hyp_limit_problems(s_ctype="float"), "xs_limits<float>::artanh_max", "PHI_ARTANH_MAX")
    with pytest.raises(AssertionError, match="S in"):
        _hyp_s_ctype(["xs_matvec_fwd<float, double>", "xs_hnn_fwd<float, float, 0>"])


def test_changed_mode_codes_are_reported(monkeypatch):
    fwd = _edit("hyperbolic_linear.cu", "  if (MODE == 0) {\n", "  if (MODE == 1) {\n")
    _one_naming(_hyp_mode_problems(fwd), "'if (MODE == 1)' (FC in Python) uses none of ['xs_hnn_w']")
    bwd = _edit("hyperbolic_linear.cu", "  if (MODE == 1) {\n    S s[2]", "  if (MODE == 0) {\n    S s[2]")
    _one_naming(_hyp_mode_problems(bwd), "'if (MODE == 0)' uses ['xs_hnn_w'] of FC", "MODE 1")
    comment = _edit(
        "hyperbolic_linear.cu", "// MODE 0: MLR logits; MODE 1: FC", "// MODE 0: FC logits; MODE 1: MLR"
    )
    _one_naming(_hyp_mode_problems(comment), "MODE 0 is 'FC logits'", "launches MLR with MODE 0")
    _one_naming(_hyp_mode_problems(codes={"MLR": 1, "FC": 0}), "uses ['xs_hnn_w'] of FC", "MODE 0")
    codes = _optim_launch_modes(monkeypatch)
    adam = _edit("optim.cu", "  if (MODE == 1) {\n    vrow", "  if (MODE == 0) {\n    vrow")
    _one_naming(_optim_mode_problems(codes, adam), "'if (MODE == 0)'", "of Adam", "MODE 1")
    sgd = _edit("optim.cu", "    if (MODE == 0) {\n      double dj", "    if (MODE == 1) {\n      double dj")
    _one_naming(_optim_mode_problems(codes, sgd), "'if (MODE == 1)'", "of SGD", "MODE 0")
    comment = _edit(
        "optim.cu",
        "// MODE 0: SGD (momentum, dampening, Nesterov); MODE 1: Adam",
        "// MODE 0: Adam; MODE 1: SGD",
    )
    _one_naming(
        _optim_mode_problems(codes, comment), "MODE 1 is 'SGD (AMSGrad).'", "launches Adam with MODE 1"
    )
    # the Python side swapped (as `0 if adam else 1` would launch them)
    _one_naming(_optim_mode_problems({"SGD": 1, "Adam": 0}), "of Adam", "launches Adam with MODE 0")


def test_function_literal_parsers_refuse_what_they_cannot_read():
    with pytest.raises(ValueError, match="2 definitions"):
        cl.function_body("void f(int a) { }\nvoid f(double a) { }", "f")
    with pytest.raises(ValueError, match="0 definitions"):
        cl.function_body("void g(); int h() { return g(); }", "g")
    assert (
        cl.function_body("template <> float k< half >(float v) const { return v; }", "k<half>")
        == "{ return v; }"
    )
    with pytest.raises(ValueError, match="not 'sizeof"):
        cl.size_select("const E s = sizeof(E) == 2 ? E(1) : E(2);", "s")
    with pytest.raises(ValueError, match="cannot read the clamp"):
        cl.clamp_bounds("v = fminf(fminf(v, 1.0f), 2.0f);", "v")
    with pytest.raises(ValueError, match="cannot read the branch"):
        cl.mode_branches("if (MODE != 0) { x(); }")
    with pytest.raises(ValueError, match="cannot read the branch"):
        cl.mode_branches("if (MODE == 1) x();")
    assert cl.mode_comments("// MODE 0: a b; MODE 1: c\nint MODE2;") == [(0, "a b"), (1, "c")]
