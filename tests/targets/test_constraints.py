"""targets/k210/constraints.py: the KPU's limits and the reasons given for what cannot run on it."""
import numpy as np
import pytest

from compiler.ir import Graph, TensorType
from targets.k210 import constraints as C
from targets.k210.constraints import (
    activation_step,
    kpu_geometry,
    kpu_pool_type,
    why_not_kpu,
    why_not_kpu_conv,
    why_not_kpu_layer,
)


def test_limits_cite_the_spec_values():
    assert C.KPU_RAM_BYTES == 2 * 1024 * 1024
    assert C.MAX_CHANNELS == 1024
    assert (C.MIN_IN_H, C.MAX_IN_H, C.MIN_IN_W, C.MAX_IN_W) == (4, 256, 4, 512)
    assert (C.MIN_OUT_H, C.MIN_OUT_W) == (4, 4)
    assert C.KERNEL_SIZES == (1, 3)


@pytest.mark.parametrize("args, kw, words", [
    (((1, 3, 240, 320), 16, 3), {}, None),                          # the FAQ's 320x240 fits
    (((1, 3, 256, 512), 4, 3), {}, None),                           # ncc v0.2's largest map
    (((1, 3, 257, 320), 16, 3), {}, "input map 320x257"),
    (((1, 3, 240, 513), 16, 3), {}, "input map 513x240"),
    (((1, 3, 3, 8), 16, 3), {}, "input map 8x3"),
    (((1, 1025, 8, 8), 16, 1), {}, "1025 input channels"),
    (((1, 8, 8, 8), 1025, 1), {}, "1025 output channels"),
    (((1, 8, 8, 8), 8, 5), {}, "5x5"),
    (((1, 8, 8, 8), 8, 3), dict(pool="max_4_s4"), "output map 2x2"),
    (((1, 8, 8, 8), 8, 3), dict(depthwise=True, pool="max_2_s2"), "depthwise"),
    (((1, 1024, 64, 64), 1024, 3), {}, "bytes of KPU RAM"),
])
def test_why_not_kpu_layer(args, kw, words):
    reason = why_not_kpu_layer(*args, **kw)
    assert reason is None if words is None else words in reason


@pytest.mark.parametrize("size, k, pad, want", [
    (8, 3, (1, 1), (0, 0, 0, 0)),      # already the ring
    (8, 3, (0, 1), (0, 0, 1, 0)),      # TF SAME stride 2 on even sizes: crop the first row
    (8, 3, (0, 0), (0, 0, 1, 1)),      # valid: crop the ring
    (8, 3, (2, 3), (1, 2, 0, 0)),      # wider than the ring: pad explicitly
    (1, 1, (0, 0), (0, 3, 0, 3)),      # 1x1 map: pad to 4, crop back
    (2, 3, (1, 1), (0, 2, 0, 2)),
])
def test_kpu_geometry(size, k, pad, want):
    assert kpu_geometry(size, k, pad) == want


@pytest.mark.parametrize("shape, w, attrs, words", [
    ((1, 3, 128, 128), (8, 3, 3, 3), dict(strides=(2, 2), padding=((0, 1), (0, 1))), None),
    ((1, 8, 64, 64), (8, 1, 3, 3), dict(groups=8, strides=(2, 2), padding=((0, 1), (0, 1))), None),
    ((1, 8, 33, 33), (8, 8, 3, 3), dict(dilations=(2, 2), padding=((2, 2), (2, 2))), None),
    ((1, 256, 1, 1), (1001, 256, 1, 1), {}, None),
    ((1, 8, 8, 8), (8, 4, 3, 3), dict(groups=2), "groups=2"),
    ((1, 8, 8, 8), (16, 1, 3, 3), dict(groups=8), "groups=8"),     # depthwise with multiplier 2
    ((1, 8, 8, 8), (8, 8, 3, 5), {}, "3x5"),
    ((1, 3, 256, 256), (8, 3, 3, 3), dict(padding=((2, 2), (1, 1))), "input map 256x258"),
])
def test_why_not_kpu_conv(shape, w, attrs, words):
    reason = why_not_kpu_conv(TensorType(shape), w, **attrs)
    assert reason is None if words is None else words in reason


def test_why_not_kpu_on_nodes():
    g = Graph()
    x = g.input("x", TensorType((1, 4, 8, 8)))
    w_run_time = g.input("w", TensorType((4, 4, 3, 3)))
    b = g.const(np.zeros(4, np.float32))
    conv = g.add("conv2d", [x, w_run_time, b], padding=((1, 1), (1, 1)))
    assert "run time" in why_not_kpu(conv)
    w = g.const(np.zeros((4, 4, 3, 3), np.float32))
    assert why_not_kpu(g.add("conv2d", [x, w, b], padding=((1, 1), (1, 1)))) is None
    assert "PReLU" in why_not_kpu(g.add("prelu", [x, g.const(np.ones((4, 1, 1), np.float32))]))
    assert why_not_kpu(g.add("softmax", [x], axis=1)) == "softmax has no KPU form"
    assert why_not_kpu(g.add("unary", [x], op="sigmoid")) is None
    assert "not continuous" in why_not_kpu(g.add("unary", [x], op="round"))
    kpu = g.add("kpu_conv2d", [x, w, b], pool="max_2_s2")
    assert "output map 4x4" not in (why_not_kpu(kpu) or "") and why_not_kpu(kpu) is None
    assert "output map 2x2" in why_not_kpu(g.add("kpu_conv2d", [x, w, b], pool="max_4_s4"))
    wt = g.const(np.zeros((4, 2, 4, 4), np.float32))
    assert "4x4" in why_not_kpu(g.add("conv2d_transpose", [x, wt, g.const(np.zeros(2, np.float32))], strides=(2, 2)))


def test_activation_steps():
    g = Graph()
    x = g.input("x", TensorType((1, 4, 8, 8)))
    assert activation_step(g.add("clamp", [x], min=0, max=6)) == ("clamp", 0.0, 6.0)
    assert activation_step(g.add("clamp", [x], min=0.0)) == ("clamp", 0.0, float("inf"))
    assert activation_step(g.add("leaky_relu", [x], alpha=0.1)) == ("leaky_relu", 0.1)
    assert activation_step(g.add("hard_sigmoid", [x], alpha=0.2, beta=0.5)) == ("hard_sigmoid", 0.2, 0.5)
    assert activation_step(g.add("unary", [x], op="hard_swish")) == ("unary", "hard_swish")
    assert activation_step(g.add("unary", [x], op="floor")) is None
    assert activation_step(g.add("prelu", [x, g.const(np.ones((4, 1, 1), np.float32))])) is None


@pytest.mark.parametrize("hw, attrs, want", [
    (8, dict(op="max", kernel=(2, 2), strides=(2, 2)), "max_2_s2"),
    (9, dict(op="mean", kernel=(2, 2), strides=(2, 2)), "mean_2_s2"),          # odd: the last row is dropped
    (9, dict(op="max", kernel=(2, 2), strides=(2, 2), ceil_mode=True), None),  # ...unless ceil_mode keeps it
    (8, dict(op="mean", kernel=(4, 4), strides=(4, 4)), "mean_4_s4"),
    (8, dict(op="max", kernel=(2, 2), strides=(1, 1), padding=((0, 1), (0, 1))), "max_2_s1"),
    (8, dict(op="mean", kernel=(2, 2), strides=(1, 1), padding=((0, 1), (0, 1))), "mean_2_s1"),
    (8, dict(op="mean", kernel=(2, 2), strides=(1, 1), padding=((0, 1), (0, 1)), count_include_pad=True), None),
    (8, dict(op="max", kernel=(3, 3), strides=(2, 2)), None),
    (8, dict(op="max", kernel=(2, 2), strides=(2, 2), padding=((0, 1), (0, 1))), None),
    (4, dict(op="mean", kernel=(4, 4), strides=(2, 2)), None),                 # mobilenet's global pool
])
def test_kpu_pool_type(hw, attrs, want):
    g = Graph()
    node = g.add("reduce_window2d", [g.input("x", TensorType((1, 4, hw, hw)))], **attrs)
    assert kpu_pool_type(node) == want
    assert (why_not_kpu(node) is None) == (want is not None)
