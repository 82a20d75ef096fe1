"""optimize_generic end to end: real imported models keep their outputs and lose their layout noise."""
from collections import Counter

import numpy as np
import pytest

from compiler.importers import import_model
from compiler.pipeline import GENERIC, optimize_generic
from shared_data import DIGITS, MOBILENET, TFLITE_OPS, glob_params, needs


def histogram(graph) -> dict[str, int]:
    return dict(sorted(Counter(n.op for n in graph.nodes).items()))


def optimized_same_function(kit, path):
    """Import, optimize (linting after every pass), check outputs on two seeded inputs; both histograms."""
    g = import_model(path)
    before, hist_before = kit.clone(g), histogram(g)
    stages = []
    assert optimize_generic(g, lint=True, dump=lambda graph, stage: stages.append(stage)) is g
    for seed in (0, 1):
        kit.assert_same_function(before, g, kit.random_feeds(g, seed))
    return g, hist_before, histogram(g), stages


@needs(MOBILENET)
def test_mobilenet_body_has_no_transpose_batch_norm_or_clamp_left(kit):
    g, before, after, stages = optimized_same_function(kit, MOBILENET)
    assert before == {"clamp": 27, "constant": 56, "conv2d": 28, "input": 1, "reduce_window2d": 1, "reshape": 1,
                      "softmax": 1, "transpose": 59}
    assert after == {"constant": 56, "conv2d": 28, "input": 1, "reduce_window2d": 1, "reshape": 1, "softmax": 1}
    relu6 = [n for n in g.nodes_of("conv2d") if n.attrs.get("fused_clamp") == (0.0, 6.0)]
    assert len(relu6) == 27  # every conv but the logits layer
    assert stages and all(s.split("_", 1)[1] in {p.__name__ for p in GENERIC} for s in stages)


@needs(DIGITS)
def test_digits_cnn_relus_fuse_into_the_convs(kit):
    g, before, after, _ = optimized_same_function(kit, DIGITS)
    assert before["clamp"] == 3 and "clamp" not in after
    assert [n.attrs["fused_clamp"] for n in g.nodes_of("conv2d")] == [(0.0, np.inf)] * 3


@pytest.mark.parametrize("path", glob_params(TFLITE_OPS, "*.tflite", ids=lambda p: p.stem))
def test_sample_tflite_models_keep_their_outputs(kit, path):
    _, before, after, _ = optimized_same_function(kit, path)
    assert sum(after.values()) <= sum(before.values())
    assert after.get("transpose", 0) <= 2  # at most the NHWC pair around an op the passes cannot see through


def test_an_exported_cnn_block_becomes_conv_pool_conv(kit):
    """pad -> conv -> batch_norm -> max(x, 0.1x) -> pad(-inf) -> max pool -> conv -> x*1 -> relu."""
    g, (x,) = kit.graph_with_inputs((1, 3, 8, 8))
    y = kit.op(g, "pad", x, pads=((0, 0), (0, 0), (1, 1), (1, 1)))
    y = kit.op(g, "batch_norm", kit.conv(g, y, 4), *kit.bn_params(g, 4), epsilon=1e-5)
    y = kit.op(g, "binary", y, kit.op(g, "binary", y, g.const(np.float32(0.1)), op="mul"), op="max")
    y = kit.op(g, "pad", y, pads=((0, 0), (0, 0), (0, 1), (0, 1)), value=-np.inf)
    y = kit.op(g, "reduce_window2d", y, op="max", kernel=(2, 2), strides=(2, 2))
    y = kit.op(g, "binary", kit.conv(g, y, 2, k=1, name="conv2", seed=7), g.const(np.float32(1)), op="mul")
    g = kit.finish(g, kit.op(g, "clamp", y, min=0.0, max=6.0))
    before = kit.clone(g)
    optimize_generic(g, lint=True)
    kit.assert_same_function(before, g, kit.random_feeds(g))
    assert kit.ops(g) == ["conv2d", "leaky_relu", "reduce_window2d", "conv2d"]
    assert g.nodes_of("conv2d")[1].attrs["fused_clamp"] == (0.0, 6.0)
