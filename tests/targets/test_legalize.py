"""legalize_k210 end to end: the sample models and random conv stacks keep their float function, and
every conv-like node either becomes a valid kpu_conv2d or stays on the CPU with a reason."""
from __future__ import annotations

import collections

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st
from numpy.testing import assert_allclose

from compiler.executor import run_graph
from compiler.importers import import_model
from compiler.ir import Graph, TensorType
from compiler.pipeline import optimize_generic
from shared_data import DIGITS, MOBILENET, TFLITE_OPS, glob_params, needs
from targets.k210.constraints import why_not_kpu
from targets.k210.legalize import cpu_fallbacks, legalize_k210


def legalized(graph: Graph, seed: int = 0, *, generic: bool = False) -> tuple[collections.Counter, collections.Counter]:
    """Legalize in place (after GENERIC if asked); assert the outputs stay the same; return the op
    counts before and after legalization."""
    rng = np.random.default_rng(seed)
    feeds = [rng.standard_normal(v.shape).astype(v.dtype) for v in graph.inputs]
    want = run_graph(graph, *feeds)
    if generic:
        optimize_generic(graph, lint=True)
    before = collections.Counter(n.op for n in graph.nodes)
    legalize_k210(graph, lint=True)
    for w, o in zip(want, run_graph(graph, *feeds), strict=True):
        assert_allclose(o, w, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(w))))
    for node in graph.nodes_of("kpu_conv2d"):
        assert why_not_kpu(node) is None, f"{node.name}: {why_not_kpu(node)}"
    for name, op, reason in cpu_fallbacks(graph):
        assert reason and "no K210 legalization rule" not in reason, (name, op, reason)
    return before, collections.Counter(n.op for n in graph.nodes)


@needs(MOBILENET)
@pytest.mark.parametrize("generic", [False, True], ids=["imported", "after_generic"])
def test_mobilenet_v1_lands_on_the_kpu(generic):
    before, after = legalized(import_model(MOBILENET), generic=generic)
    assert before["conv2d"] == 28                  # 27 conv layers + the 1x1 logits conv
    assert after["kpu_conv2d"] == 28 and after["conv2d"] == 0
    # only the first (non-depthwise) stride-2 conv becomes a pool type; the KPU does not pool depthwise
    # layers (kpu.md §6), so the 4 depthwise stride-2 layers keep a CPU slice
    assert after["strided_slice"] == 1 + 4 + 1     # conv0's crop, 4 depthwise strides, the logits crop
    assert after["pad"] == 2                       # conv0's shift row, the logits' 1x1 -> 4x4


@needs(MOBILENET)
def test_mobilenet_first_layer_is_a_right_top_pool():
    g = import_model(MOBILENET)
    legalize_k210(g)
    pools = collections.Counter(n.attrs["pool"] for n in g.nodes_of("kpu_conv2d"))
    assert pools == {"bypass": 27, "right_top_2_s2": 1}


@pytest.mark.parametrize("generic", [False, True], ids=["imported", "after_generic"])
def test_digits_cnn_lands_on_the_kpu(generic):
    before, after = legalized(import_model(DIGITS), generic=generic)
    assert (before["conv2d"], before["matmul"]) == (3, 1)
    assert after["kpu_conv2d"] == 4 and after["conv2d"] == after["matmul"] == 0
    assert after["reduce_window2d"] == 0 and after["clamp"] == 0 and after["binary"] == 0


CONV_MODELS = glob_params(TFLITE_OPS, "*.float32.tflite",
                          keep=lambda p: any(w in p.name for w in ("conv", "fullyconnected", "prelu")))


@pytest.mark.parametrize("generic", [False, True], ids=["imported", "after_generic"])
@pytest.mark.parametrize("path", CONV_MODELS)
def test_tflite_sample_models_keep_their_function(path, generic):
    legalized(import_model(path), generic=generic)


# ------------------------------------------------------------------ random conv stacks
@st.composite
def layers(draw):
    k = draw(st.sampled_from([1, 3, 3, 5]))
    return dict(k=k, out_c=draw(st.integers(1, 6)), depthwise=draw(st.booleans()),
                stride=draw(st.sampled_from([1, 1, 2, 3])), dilation=draw(st.sampled_from([1, 1, 2])),
                pad=(draw(st.integers(0, k)), draw(st.integers(0, k))),
                act=draw(st.sampled_from([None, ("clamp", dict(min=0.0, max=6.0)), ("leaky_relu", dict(alpha=0.1)),
                                          ("unary", dict(op="sigmoid")), ("prelu", {})])),
                pool=draw(st.sampled_from([None, dict(op="max", kernel=(2, 2), strides=(2, 2)),
                                           dict(op="mean", kernel=(2, 2), strides=(2, 2))])))


@settings(max_examples=25, deadline=None)
@given(c=st.integers(1, 4), hw=st.integers(6, 24), stack=st.lists(layers(), min_size=1, max_size=3),
       seed=st.integers(0, 2**16))
def test_random_conv_stacks_keep_their_function(c, hw, stack, seed):
    rng = np.random.default_rng(seed)
    g = Graph()
    y = g.input("x", TensorType((1, c, hw, hw)))
    for i, layer in enumerate(stack):
        k, d, (pt, pb) = layer["k"], layer["dilation"], layer["pad"]
        in_c = y.shape[1]
        groups = in_c if layer["depthwise"] else 1
        out_c = in_c if layer["depthwise"] else layer["out_c"]
        size = min(y.shape[2:])
        assume(size + pt + pb >= d * (k - 1) + 1)
        w = g.const((rng.standard_normal((out_c, in_c // groups, k, k))
                     / np.sqrt(k * k * in_c / groups)).astype(np.float32))
        b = g.const(rng.standard_normal(out_c).astype(np.float32))
        y = g.add("conv2d", [y, w, b], name=f"conv{i}", strides=(layer["stride"],) * 2, padding=((pt, pb), (pt, pb)),
                  dilations=(d, d), groups=groups).output
        if layer["act"] is not None:
            op, attrs = layer["act"]
            extra = [g.const(np.full((out_c, 1, 1), 0.2, np.float32))] if op == "prelu" else []
            y = g.add(op, [y, *extra], **attrs).output
        if layer["pool"] is not None and min(y.shape[2:]) >= 2:
            y = g.add("reduce_window2d", [y], **layer["pool"]).output
    g.outputs = [y]
    before, after = legalized(g, seed)
    assert after["conv2d"] == sum(layer["k"] == 5 for layer in stack)   # only 5x5 filters stay on the CPU
