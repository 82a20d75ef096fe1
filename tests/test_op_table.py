"""The op table (compiler/ops.py + targets/k210/ops.py): every op declares what the compiler needs of it,
Graph.add fills in attribute defaults and rejects unknown ones, compiler/ stays target-neutral."""
from __future__ import annotations

import ast
import inspect
import math
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import compiler.kernels.all  # noqa: F401  (fills KERNELS)
import targets.k210.ops  # noqa: F401  (registers the K210 ops)
from compiler.errors import KpucError
from compiler.ir import Graph, TensorType
from compiler.kernels import KERNELS
from compiler.ops import OPS, REQUIRED, TRAITS, OpDef, define, has_trait, ops_with
from compiler.registry import registrar
from targets.k210.kernels import K210_KERNELS
from targets.k210.ops import KPU_ACTIVATIONS, STAYS_FLOAT
from targets.k210.quantize import RULE_OPS, TABLE_OPS, U8_DATA_OPS, _Rewriter

ROOT = Path(__file__).resolve().parents[1]
ALL_OPS = sorted(OPS)
DEVICE_OPS = ops_with("device")


def kernel_of(op: str):
    return (K210_KERNELS if op in DEVICE_OPS else KERNELS).get(op)


@pytest.mark.parametrize("op", ALL_OPS)
def test_every_op_has_a_kernel_taking_its_operands_and_attrs(op):
    fn = kernel_of(op)
    assert fn is not None, f"{op}: no kernel ({'K210_KERNELS' if op in DEVICE_OPS else 'KERNELS'})"
    d = OPS[op]
    params = inspect.signature(fn).parameters.values()
    positional = [p for p in params if p.kind == p.POSITIONAL_OR_KEYWORD]
    keywords = {p.name: p for p in params if p.kind == p.KEYWORD_ONLY}
    var_kw = any(p.kind == p.VAR_KEYWORD for p in params)
    if d.variadic:
        assert any(p.kind == p.VAR_POSITIONAL for p in params), f"{op}: kernel takes no *operands"
    else:
        assert len(positional) == len(d.operands), f"{op}: kernel takes {len(positional)} arrays, op has {d.operands}"
    assert var_kw or set(d.attrs) <= set(keywords), f"{op}: kernel lacks {sorted(set(d.attrs) - set(keywords))}"
    needed = {k for k, p in keywords.items() if p.default is p.empty}
    assert needed <= set(d.attrs), f"{op}: kernel needs {sorted(needed - set(d.attrs))}, not attrs of the op"


@pytest.mark.parametrize("op", ALL_OPS)
def test_every_op_has_a_shape_rule_and_known_traits(op):
    d = OPS[op]
    assert isinstance(d, OpDef) and d.name == op and callable(d.shape)
    assert d.traits <= set(TRAITS)
    assert set(d.when) <= d.traits


@pytest.mark.parametrize("op", [op for op in ALL_OPS if op not in DEVICE_OPS])
def test_every_float_op_has_a_k210_quantization_decision(op):
    """How quantize_k210 treats it: a table, uint8 data movement, its own rule, or an explicit float entry."""
    decisions = [name for name, ops in (("table lookup", TABLE_OPS), ("exact on codes", U8_DATA_OPS),
                                        ("own rule", RULE_OPS), ("stays float", STAYS_FLOAT)) if op in ops]
    assert len(decisions) == 1, f"{op}: K210 quantization decisions {decisions} (add it to targets/k210/ops.py " \
                                f"STAYS_FLOAT or give it a trait / rule)"
    if op in RULE_OPS:
        assert callable(getattr(_Rewriter, op, None))


def test_device_ops_are_not_given_float_decisions():
    assert not set(DEVICE_OPS) & (set(STAYS_FLOAT) | set(TABLE_OPS) | set(U8_DATA_OPS) | set(RULE_OPS))
    assert set(STAYS_FLOAT) <= set(OPS)


def test_lists_derived_from_traits():
    import passes.fold_transposes as ft
    from compiler.calibration import BROADCAST_OPS
    assert {"clamp", "leaky_relu", "unary", "hard_sigmoid"} <= set(KPU_ACTIVATIONS)
    assert set(KPU_ACTIVATIONS) == {op for op in OPS if OPS[op].has("table_lookup") and OPS[op].operands == ("x",)}
    assert {"cast", "quantize", "dequantize", "unary", "clamp"} <= set(ft.ELEMENTWISE)
    assert set(ft.BROADCASTING) == {"binary", "prelu"}
    assert ft.PER_AXIS_ATTRS == {"pad": ("pads",), "strided_slice": ("begin", "end", "strides")}
    assert "space_to_batch" in BROADCAST_OPS and "space_to_batch" not in U8_DATA_OPS
    assert set(U8_DATA_OPS) < set(BROADCAST_OPS)


@pytest.mark.parametrize("op, attrs, holds", [
    ("pad", {"pads": ((0, 0),), "mode": "constant"}, True), ("pad", {"pads": ((0, 0),), "mode": "edge"}, False),
    ("resize", {"sizes": (2,), "mode": "nearest"}, True), ("resize", {"sizes": (2,), "mode": "linear"}, False),
    ("reduce_window2d", {"op": "max", "kernel": (2, 2)}, True),
    ("reduce_window2d", {"op": "mean", "kernel": (2, 2)}, False), ("reshape", {"shape": (1,)}, True),
])
def test_conditional_traits_follow_the_attrs(op, attrs, holds):
    class Fake:
        pass
    node = Fake()
    node.op, node.attrs = op, OPS[op].complete(attrs)
    assert has_trait(node, "data_movement") is holds
    assert OPS[op].has("data_movement") is (op == "reshape")   # no attrs: only unconditional traits hold


# ------------------------------------------------------------------ Graph.add and the defaults
def conv_graph(**attrs):
    g = Graph()
    x = g.input("x", TensorType((1, 2, 6, 6)))
    w = g.const(np.ones((4, 2 // attrs.get("groups", 1), 3, 3), np.float32), name="w")
    b = g.const(np.zeros(4, np.float32), name="b")
    return g, g.add("conv2d", [x, w, b], name="conv", **attrs)


CONV_VALUES = {"strides": st.sampled_from([(1, 1), (2, 2), (1, 2)]), "padding": st.sampled_from([((1, 1), (1, 1)),
               ((0, 1), (1, 0))]), "dilations": st.just((1, 1)), "groups": st.sampled_from([1, 2]),
               "fused_clamp": st.sampled_from([(0.0, 6.0), (-math.inf, math.inf)])}


@settings(max_examples=40, deadline=None)
@given(st.fixed_dictionaries({}, optional=CONV_VALUES))
def test_add_fills_in_defaults_in_definition_order(given_attrs):
    g, conv = conv_graph(**dict(reversed(list(given_attrs.items()))))
    d = OPS["conv2d"]
    assert list(conv.attrs) == list(d.attrs)
    for k, default in d.attrs.items():
        assert conv.attrs[k] == given_attrs.get(k, default)
    assert list(g.clone().node("conv").attrs.items()) == list(conv.attrs.items())
    g.outputs = [conv.output]
    g.validate()


def test_add_rejects_unknown_and_missing_attrs_naming_the_node():
    with pytest.raises(KpucError, match=r"conv: conv2d has no attribute 'stride'"):
        conv_graph(stride=(2, 2))
    g = Graph()
    x = g.input("x", TensorType((1, 4)))
    with pytest.raises(KpucError, match=r"sm: softmax needs attribute 'axis'"):
        g.add("softmax", [x], name="sm")
    with pytest.raises(KpucError, match="unknown IR op 'no_such_op'"):
        g.add("no_such_op", [x])
    assert [n.op for n in g.nodes] == ["input"]


def test_validate_reports_attrs_set_behind_graph_add():
    g, conv = conv_graph()
    g.outputs = [conv.output]
    conv.attrs = {"strides": (1, 1)}
    with pytest.raises(KpucError, match="lacks attributes"):
        g.validate()


def test_required_attrs_have_no_default_and_defaults_are_hashable():
    for d in OPS.values():
        for k, v in d.attrs.items():
            assert v is REQUIRED or hash(v) is not None, (d.name, k)


def test_registrar_refuses_a_second_function_for_one_key():
    table = {}
    reg = registrar(table)
    f = reg("a", "b")(lambda: 1)
    assert table == {"a": f, "b": f}
    reg("a")(f)                                   # the same function again is harmless
    with pytest.raises(ValueError, match="registered twice"):
        reg("a")(lambda: 2)
    with pytest.raises(ValueError, match="registered twice"):
        define("conv2d")(lambda t, a: t[0])


# ------------------------------------------------------------------ target neutrality
NEUTRAL = ["compiler/ops.py", "compiler/ir.py", "compiler/types.py", "compiler/registry.py", "compiler/calibration.py",
           *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "compiler" / "kernels").glob("*.py"))]
K210_NAMES = {op for op in OPS if op in DEVICE_OPS} | {"kpu_conv2d", "KPU_POOLS", "KPU_ACTIVATIONS"}


def code_words(tree: ast.AST) -> set[str]:
    """Names and the words of string constants in the code (comments and docstrings left out)."""
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    words = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Name):
            words.add(n.id)
        elif isinstance(n, ast.Attribute):
            words.add(n.attr)
        elif isinstance(n, (ast.FunctionDef, ast.ClassDef)):
            words.add(n.name)
        elif isinstance(n, ast.alias):
            words.add(n.asname or n.name.split(".")[-1])
        elif isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs:
            words.update(re.findall(r"\w+", n.value))
    return words


@pytest.mark.parametrize("rel", NEUTRAL)
def test_compiler_core_never_names_k210_ops_or_imports_targets(rel):
    tree = ast.parse((ROOT / rel).read_text())
    assert not K210_NAMES & code_words(tree), f"{rel} names {sorted(K210_NAMES & code_words(tree))}"
    mods = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)] + \
           [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in mods if m and m.split(".")[0] == "targets"]
    if rel in ("compiler/ops.py", "compiler/types.py", "compiler/registry.py"):
        assert "compiler.ir" not in mods          # no ir <-> ops cycle, not even inside a function
