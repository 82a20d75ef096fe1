"""split_wide_conv2d: a dense conv2d writing more channels than a KPU layer holds becomes KPU-sized convs and a
concat, the same float function; each piece then legalizes onto the KPU, and the compiled file runs in the
oracle (tests/conftest.py)."""
import numpy as np

from compiler.ir import QuantParam
from targets.k210.legalize import legalize_k210
from targets.k210.passes.split_wide_conv2d import split_wide_conv2d


def test_a_1280_channel_conv_becomes_two_kpu_layers(kpu):
    """MobileNet v2's last 1x1 conv (here on a 4x4 map): 1280 outputs, two pieces of 640, both on the KPU."""
    g, (x,) = kpu.graph_with_inputs((1, 16, 4, 4))
    y = kpu.conv(g, x, 1280, 1, fused_clamp=(0.0, 6.0))
    g = kpu.check_rewrite(split_wide_conv2d, kpu.finish(g, y))
    assert kpu.ops(g) == ["conv2d", "conv2d", "concat"]
    assert [c.inputs[1].shape[0] for c in g.nodes_of("conv2d")] == [640, 640]
    before = kpu.clone(g)
    legalize_k210(g)
    assert len(g.nodes_of("kpu_conv2d")) == 2 and not g.nodes_of("conv2d")
    kpu.assert_same_function(before, g, kpu.random_feeds(before))


def test_per_channel_quantization_is_sliced_with_the_weights(kpu):
    g, (x,) = kpu.graph_with_inputs((1, 8, 4, 4))
    y = kpu.conv(g, x, 1100, 1)
    w = y.producer.inputs[1]
    w.quant = QuantParam(scale=tuple(float(s) for s in np.linspace(0.01, 0.02, 1100)), zero_point=(0,) * 1100, axis=0)
    g = kpu.check_rewrite(split_wide_conv2d, kpu.finish(g, y))
    first, second = (c.inputs[1].quant for c in g.nodes_of("conv2d"))
    assert len(first.scale) == 550 and first.scale[0] == w.quant.scale[0] and second.scale[-1] == w.quant.scale[-1]


def test_convs_that_fit_or_stay_float_are_left_alone(kpu):
    for out_c, meta in ((1024, {}), (1280, {"keep_float": "an option said so"})):
        g, (x,) = kpu.graph_with_inputs((1, 8, 4, 4))
        y = kpu.conv(g, x, out_c, 1)
        y.producer.meta.update(meta)
        kpu.check_untouched(split_wide_conv2d, kpu.finish(g, y))


def test_a_split_conv_compiles_and_its_pieces_share_one_grid(tmp_path):
    """Through the whole compile: the pieces' uint8 outputs share the concat's grid (no requantize), the
    file runs in the oracle (conftest), and the kmodel is close to the float graph."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from compiler.pipeline import CompileOptions, compile_model
    from targets import get_target
    from targets.k210.kmodel import read_kmodel, run_kmodel
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((1100, 8, 1, 1)) * 0.3).astype(np.float32)
    b = (rng.standard_normal(1100) * 0.1).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[1, 1])
    relu = helper.make_node("Relu", ["c"], ["y"])
    graph = helper.make_graph([node, relu], "wide", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1100, 4, 4])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    path = tmp_path / "wide.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    samples = [rng.uniform(0, 1, (1, 8, 4, 4)).astype(np.float32) for _ in range(6)]
    result = compile_model(path, CompileOptions(input_type="float"), get_target("k210"), samples=samples)
    (tmp_path / "wide.kmodel").write_bytes(result.kmodel)
    q = result.graph
    layers = q.nodes_of("kpu_conv2d_q")
    assert len(layers) == 2 and not q.nodes_of("requantize_u8")
    assert layers[0].output.quant == layers[1].output.quant
    x = samples[0]
    got = run_kmodel(read_kmodel(result.kmodel), [x])[0].reshape(1, 1100, 4, 4)
    want = np.maximum(np.einsum("oi,nihw->nohw", w[:, :, 0, 0], x) + b[None, :, None, None], 0)
    step = layers[0].output.quant.scale
    assert np.abs(got - want).max() <= 1.5 * step      # 8-bit weights and outputs: about a step


def test_a_split_model_output_keeps_its_name(kpu):
    """MediaPipe's face landmark model ends in a 1404-channel conv: the concat that replaces it carries the
    output's name (the --target-cosine search matched outputs by name and failed)."""
    g, (x,) = kpu.graph_with_inputs((1, 8, 4, 4))
    y = kpu.conv(g, x, 1404, 1)
    name = y.name
    g = kpu.check_rewrite(split_wide_conv2d, kpu.finish(g, y))
    assert [v.name for v in g.outputs] == [name] and g.outputs[0].producer.op == "concat"
