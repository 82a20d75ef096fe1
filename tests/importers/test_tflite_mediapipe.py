"""What newer MediaPipe models need (issue 12, capability 4): sparse constants behind DENSIFY, and the
custom Convolution2DTransposeBias op. LiteRT is the oracle: it runs DENSIFY itself, and the custom op is
checked against LiteRT's TRANSPOSE_CONV + bias with the output shape the custom options imply."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from test_tflite_ops import SAME, VALID, Op, T, build, check, opts, rand

from compiler.importers import import_model

C_SAME, C_VALID = 1, 2     # TfLitePadding in the custom options


def tconv_bias(padding: int, stride: int, in_hw, k=3, in_c=3, out_c=2, **kw) -> tuple[bytes, bytes]:
    """(the MediaPipe model, the same layer as builtin TRANSPOSE_CONV with its output_shape input)."""
    w, b = rand(out_c, k, k, in_c), rand(out_c)
    out_hw = [s * stride if padding == C_SAME else (s - 1) * stride + k for s in in_hw]
    x, y = T("x", (1, *in_hw, in_c)), T("y", (1, *out_hw, out_c))
    options = kw.get("options", struct.pack("<3i", padding, stride, stride))
    custom = build([x, T("w", w.shape, data=w), T("b", (out_c,), data=b), y],
                   [Op("CUSTOM:Convolution2DTransposeBias", ["x", "w", "b"], ["y"], extra={"custom_options": options})],
                   ["x"], ["y"])
    builtin = build([T("out_shape", (4,), "int32", np.array([1, *out_hw, out_c], np.int32)), T("w", w.shape, data=w),
                     x, T("b", (out_c,), data=b), y],
                    [Op("TRANSPOSE_CONV", ["out_shape", "w", "x", "b"], ["y"], opts(
                        "TransposeConvOptions", Padding=SAME if padding == C_SAME else VALID, StrideH=stride,
                        StrideW=stride))], ["x"], ["y"])
    return custom, builtin


@pytest.mark.parametrize("padding, stride, in_hw, k", [(C_SAME, 2, (4, 5), 3), (C_SAME, 2, (5, 4), 4),
                                                       (C_VALID, 2, (4, 5), 3), (C_SAME, 1, (4, 5), 3),
                                                       (C_VALID, 3, (3, 4), 2)])
def test_convolution_2d_transpose_bias_is_transpose_conv_plus_bias(padding, stride, in_hw, k, tmp_path):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    custom, builtin = tconv_bias(padding, stride, in_hw, k)
    it = Interpreter(model_content=builtin, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    it.allocate_tensors()
    x = np.random.default_rng(0).standard_normal(it.get_input_details()[0]["shape"]).astype(np.float32)
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    want = it.get_tensor(it.get_output_details()[0]["index"])
    path = tmp_path / "mp.tflite"
    path.write_bytes(custom)
    from compiler.executor import run_graph
    got = run_graph(import_model(path), x.transpose(0, 3, 1, 2))[0].transpose(0, 2, 3, 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_convolution_2d_transpose_bias_with_bad_options_is_reported(tmp_path):
    from compiler.errors import UnsupportedOps
    custom, _ = tconv_bias(C_SAME, 2, (4, 5), options=struct.pack("<2i", 1, 2))
    path = tmp_path / "mp.tflite"
    path.write_bytes(custom)
    with pytest.raises(UnsupportedOps, match=r"Convolution2DTransposeBias 'y' \(custom options of 8 bytes"):
        import_model(path)


def csr(dense: np.ndarray):
    """A 2-D matrix as (values, dim metadata): rows dense, columns compressed."""
    rows, cols = np.nonzero(dense)
    segments = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=dense.shape[0]))])
    return dense[rows, cols], [(0, dense.shape[0], None, None), (1, 0, segments, cols)]


def sparse_fc(dense: np.ndarray, sparsity_of) -> bytes:
    values, order, block_map, dims = sparsity_of(dense)
    tensors = [T("x", (2, dense.shape[1])), T("w_sparse", dense.shape, data=values.astype(np.float32),
                                                sparsity=(order, block_map, dims)),
               T("w", dense.shape), T("b", (dense.shape[0],), data=rand(dense.shape[0])), T("y", (2, dense.shape[0]))]
    ops = [Op("DENSIFY", ["w_sparse"], ["w"]), Op("FULLY_CONNECTED", ["x", "w", "b"], ["y"], opts("FullyConnectedOptions"))]
    return build(tensors, ops, ["x"], ["y"])


def _pruned(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * (rng.random(shape) < 0.4)).astype(np.float32)


def test_densify_of_a_csr_matrix_matches_litert(tmp_path):
    def layout(dense):
        values, dims = csr(dense)
        return values, [0, 1], [], dims
    graph = check(sparse_fc(_pruned((5, 8)), layout), tmp_path, resolver="BUILTIN")
    w = graph.nodes_of("matmul")[0].inputs[1]
    assert w.is_constant and np.count_nonzero(w.data) == np.count_nonzero(_pruned((5, 8)))


def test_densify_of_a_block_sparse_matrix_matches_litert(tmp_path):
    """1x4 blocks along the columns (MediaPipe's layout): walked as rows, column blocks (CSR), block columns."""
    dense = _pruned((4, 8), seed=1).reshape(4, 2, 4)
    dense[np.random.default_rng(2).random((4, 2)) < 0.5] = 0      # whole blocks pruned
    dense = dense.reshape(4, 8)

    def layout(d):
        blocks = d.reshape(4, 2, 4)
        keep = np.abs(blocks).sum(axis=2) != 0
        rows, block_cols = np.nonzero(keep)
        segments = np.concatenate([[0], np.cumsum(keep.sum(axis=1))])
        values = blocks[rows, block_cols].reshape(-1)
        return values, [0, 1, 2], [1], [(0, 4, None, None), (1, 0, segments, block_cols), (0, 4, None, None)]
    check(sparse_fc(dense, layout), tmp_path, resolver="BUILTIN")
