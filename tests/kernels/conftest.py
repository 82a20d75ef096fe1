"""Oracles for the kernel tests: run one ONNX node in onnx.reference or onnxruntime.

`ort(op_type, inputs, **attrs)` / `onnx_ref(...)` build a one-node model (inputs are graph inputs;
None leaves an optional input out) and return its outputs as a list of arrays.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator


def one_node_model(op_type: str, inputs, *, opset: int = 18, n_outputs: int = 1, **attrs) -> onnx.ModelProto:
    """A model with one `op_type` node whose inputs are graph inputs named in0, in1, ..."""
    inputs = [None if a is None else np.asarray(a) for a in inputs]
    names = ["" if a is None else f"in{i}" for i, a in enumerate(inputs)]
    outs = [f"out{i}" for i in range(n_outputs)]
    node = helper.make_node(op_type, names, outs, **attrs)
    graph = helper.make_graph(
        [node], "one_node",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
         for n, a in zip(names, inputs) if a is not None],
        [helper.make_empty_tensor_value_info(o) for o in outs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _feeds(inputs):
    return {f"in{i}": np.asarray(a) for i, a in enumerate(inputs) if a is not None}


def run_reference(op_type: str, inputs, *, opset: int = 18, n_outputs: int = 1, **attrs) -> list[np.ndarray]:
    model = one_node_model(op_type, inputs, opset=opset, n_outputs=n_outputs, **attrs)
    return ReferenceEvaluator(model).run(None, _feeds(inputs))


def run_ort(op_type: str, inputs, *, opset: int = 18, n_outputs: int = 1, **attrs) -> list[np.ndarray]:
    model = one_node_model(op_type, inputs, opset=opset, n_outputs=n_outputs, **attrs)
    opts = onnxruntime.SessionOptions()
    opts.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3  # quiet the deprecation warning of tf_half_pixel_for_nn
    sess = onnxruntime.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, _feeds(inputs))


@pytest.fixture(scope="session")
def onnx_ref():
    return run_reference


@pytest.fixture(scope="session")
def ort():
    return run_ort
