"""TF's dilated-conv lowering (SPACE_TO_BATCH_ND -> CONV_2D/DEPTHWISE_CONV_2D -> BATCH_TO_SPACE_ND) on
generated TFLite models: the float graph matches LiteRT and, after the generic passes, is one dilated
conv2d (passes/fold_space_to_batch_into_conv2d.py)."""
from __future__ import annotations

import numpy as np
import pytest
from test_tflite_ops import VALID, Op, T, build, check, opts, rand

from compiler.executor import run_graph
from compiler.ir import Graph
from compiler.pipeline import optimize_generic


def atrous_model(hw, rate, depthwise=False, relu6=False) -> bytes:
    """What TF writes for a SAME 3x3 conv with dilation `rate` on an NHWC input of `hw` x 3 channels."""
    h, w = hw
    base = (rate * 2) // 2
    extra = [(-(s + 2 * base)) % rate for s in hw]
    pads = np.array([[base, base + extra[0]], [base, base + extra[1]]], np.int32)
    crops = np.array([[0, extra[0]], [0, extra[1]]], np.int32)
    ph, pw = (h + 2 * base + extra[0]) // rate, (w + 2 * base + extra[1]) // rate
    c_out = 3 if depthwise else 4
    kind = "DEPTHWISE_CONV_2D" if depthwise else "CONV_2D"
    options = opts("DepthwiseConv2DOptions", Padding=VALID, StrideH=1, StrideW=1, DepthMultiplier=1,
                   FusedActivationFunction=3 if relu6 else 0) if depthwise else \
        opts("Conv2DOptions", Padding=VALID, StrideH=1, StrideW=1, FusedActivationFunction=3 if relu6 else 0)
    weights = rand(1, 3, 3, 3) if depthwise else rand(4, 3, 3, 3)
    tensors = [T("x", (1, h, w, 3)), T("block", (2,), "int32", np.array([rate, rate], np.int32)),
               T("pads", (2, 2), "int32", pads), T("crops", (2, 2), "int32", crops),
               T("s2b", (rate * rate, ph, pw, 3)), T("w", weights.shape, data=weights), T("b", (c_out,), data=rand(c_out)),
               T("conv", (rate * rate, ph - 2, pw - 2, c_out)), T("y", (1, h, w, c_out))]
    ops = [Op("SPACE_TO_BATCH_ND", ["x", "block", "pads"], ["s2b"], opts("SpaceToBatchNDOptions")),
           Op(kind, ["s2b", "w", "b"], ["conv"], options),
           Op("BATCH_TO_SPACE_ND", ["conv", "block", "crops"], ["y"], opts("BatchToSpaceNDOptions"))]
    return build(tensors, ops, ["x"], ["y"])


@pytest.mark.parametrize("hw, rate, depthwise, relu6", [((8, 8), 2, False, False), ((7, 9), 2, False, True),
                                                          ((10, 11), 3, True, False), ((9, 8), 4, True, True)])
def test_dilated_conv_pattern_matches_litert_and_folds(hw, rate, depthwise, relu6, tmp_path):
    graph: Graph = check(atrous_model(hw, rate, depthwise, relu6), tmp_path)
    assert graph.nodes_of("space_to_batch") and graph.nodes_of("batch_to_space")  # the importer only translates
    before = graph.clone()
    optimize_generic(graph)
    convs = graph.nodes_of("conv2d")
    assert not graph.nodes_of("space_to_batch", "batch_to_space") and len(convs) == 1
    assert convs[0].attrs["dilations"] == (rate, rate)
    x = np.random.default_rng(3).standard_normal(graph.inputs[0].shape).astype(np.float32)
    np.testing.assert_allclose(run_graph(graph, x)[0], run_graph(before, x)[0], rtol=1e-5, atol=1e-5)
