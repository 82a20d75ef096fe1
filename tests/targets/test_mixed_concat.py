"""The default flow joins an output concat of parts with mixed scales in float (precision.keep_mixed_concats_float),
judged against onnxruntime on a generated two-head "detector"; the kmodels written under tmp_path also run in
../shared/oracle (tests/conftest.py)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.pipeline import CompileOptions, compile_model, prepare_model
from targets import get_target
from targets.k210.kernels import QuantizedExecutor

SIZE, HEAD = 16, 4


def detector(path, wide_scale: float):
    """x -> 3x3 conv 8 + ReLU -> two 1x1 heads of HEAD channels (weights x0.1 and x wide_scale) -> concat on
    channels: like a detector's box regressors of two feature maps, one part much wider than the other."""
    rng = np.random.default_rng(0)

    def w(name, *shape, scale):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [w("w0", 8, 3, 3, 3, scale=0.4), w("b0", 8, scale=0.1), w("wa", HEAD, 8, 1, 1, scale=0.1),
             w("ba", HEAD, scale=0.01), w("wb", HEAD, 8, 1, 1, scale=wide_scale), w("bb", HEAD, scale=0.01)]
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Conv", ["r0", "wa", "ba"], ["a"]),
             helper.make_node("Conv", ["r0", "wb", "bb"], ["b"]),
             helper.make_node("Concat", ["a", "b"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, "detector", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                 [1, 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2 * HEAD, SIZE, SIZE])],
                              initializer=inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


def images(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, (1, 3, SIZE, SIZE)).astype(np.float32) for _ in range(n)]


def opts(**kw) -> CompileOptions:
    return CompileOptions(input_mean=0.5, input_std=0.5, **kw)


def narrow_part_error(model, **kw) -> tuple[float, float, object]:
    """(largest error of the narrow head's part vs onnxruntime, that part's own span, the quantized graph)."""
    q = prepare_model(model, opts(**kw), get_target("k210"), samples=images(8, seed=1)).quantized
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    qe = QuantizedExecutor(q)
    xs = images(4, seed=2)
    want = np.stack([sess.run(None, {"x": x})[0][:, :HEAD] for x in xs])
    got = np.stack([qe.run([x])[q.outputs[0].name][:, :HEAD] for x in xs])
    return float(np.abs(got - want).max()), float(want.max() - min(want.min(), 0)), q


def concat_dtype(q) -> str:
    return next(n for n in q.nodes_of("concat")).output.dtype


def test_a_concat_of_mixed_scales_keeps_each_part_on_its_own_grid(tmp_path):
    model = detector(tmp_path / "mixed.onnx", wide_scale=10.0)
    err, span, q = narrow_part_error(model)
    err_shared, _, q_shared = narrow_part_error(model, auto_precision=False)
    assert concat_dtype(q) == "float32" and concat_dtype(q_shared) == "uint8"
    assert err < span / 255 * 4            # a few of its own steps (its grid and the KPU's rounding) ...
    assert err < err_shared / 4            # ... where the wide part's step cost it several times more
    data = compile_model(model, opts(), get_target("k210"), samples=images(8, seed=1)).kmodel
    (tmp_path / "mixed.kmodel").write_bytes(data)


@pytest.mark.parametrize("version", [3, 4])
def test_the_float_concat_lowers_to_both_kmodel_versions(tmp_path, version):
    model = detector(tmp_path / "mixed.onnx", wide_scale=10.0)
    data = compile_model(model, opts(kmodel_version=version), get_target("k210"), samples=images(8, seed=1)).kmodel
    (tmp_path / f"mixed_v{version}.kmodel").write_bytes(data)


def test_a_concat_of_like_scales_stays_uint8_and_its_bytes_do_not_change(tmp_path):
    model = detector(tmp_path / "alike.onnx", wide_scale=0.1)
    _, _, q = narrow_part_error(model)
    assert concat_dtype(q) == "uint8"
    target, samples = get_target("k210"), images(8, seed=1)
    assert (compile_model(model, opts(), target, samples=samples).kmodel
            == compile_model(model, opts(auto_precision=False), target, samples=samples).kmodel)
