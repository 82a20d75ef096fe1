"""Lowering to kmodel v3: nncase's iris file byte for byte, float layers against the executor, KPU words
against nncase's real files, quantized graphs run by kpuc's v3 interpreter against kpuc's quantized
executor bit for bit, and one error naming everything v3 cannot express."""
import math

import numpy as np
import pytest
from numpy.testing import assert_allclose

from compiler.errors import KpucError
from compiler.executor import run_graph
from compiler.importers import import_model
from compiler.ir import Graph, TensorType
from compiler.pipeline import optimize_generic
from compiler.quantization import F32, QuantParamU8, dequantize_u8, get_quant_param, quantized_binary_params
from shared_data import DIGITS, DIGITS_DATA, GOLDEN, KMODELS, MOBILENET, file_params, needs, require
from targets.k210 import interpreter_v3 as iv3, kpu_layout
from targets.k210.interpreter_v3 import run_v3
from targets.k210.kernels import K210_KERNELS, QuantizedExecutor
from targets.k210.kmodel_v3 import LayerType, layer_io, read_v3, write_v3
from targets.k210.lower_v3 import (
    _float_add,
    _sdk_quantized_add,
    compile_v3,
    dequantize_params,
    kpu_args,
    lower_v3,
    lower_v3_detailed,
    prepare_v3,
    quantize_params,
)
from targets.k210.quantize import quantize_kpu_layer

IRIS = GOLDEN / "iris-v3"
REAL_V3 = [GOLDEN / "yolo20-v3/yolo.kmodel", KMODELS / "maixpy_mnist.v3.kmodel",
           KMODELS / "maixpy_facedetect.v3.kmodel"]


def iris_cases():
    """(input, nncase's expected output) pairs of the golden set."""
    return [(np.fromfile(p, np.float32).reshape(1, 4),
             np.fromfile(IRIS / "expected" / (p.stem.removeprefix("iris_") + ".out0.bin"), np.float32))
            for p in sorted((IRIS / "inputs").glob("*.f32"))]


# ---- iris: nncase's own file --------------------------------------------------------------------------------

@needs(IRIS)
@pytest.mark.parametrize("optimize", [True, False], ids=["optimized", "as-imported"])
def test_iris_is_nncase_s_file_plus_the_tail_padding(optimize):
    graph = import_model(IRIS / "iris.tflite")
    if optimize:
        optimize_generic(graph)
    ours, golden = write_v3(lower_v3(graph)), (IRIS / "iris.kmodel").read_bytes()
    assert ours[:len(golden)] == golden
    assert len(ours) == 440 and ours[len(golden):] == bytes(4)    # nncase forgot the last 4 padding bytes


@needs(IRIS)
def test_iris_runs_like_the_float_executor():
    graph = optimize_generic(import_model(IRIS / "iris.tflite"))
    data, summary = compile_v3(graph)
    model = read_v3(data)
    for x, expected in iris_cases():
        got, want = run_v3(model, [x])[0], run_graph(graph, x)[0].reshape(-1)
        np.testing.assert_array_equal(got, expected)              # nncase's outputs, bit for bit
        # The SDK sums in float32 in order, the executor in float64: |diff| <= 1e-6 of the output's scale
        # (iris: at most 3.3e-6 absolute on outputs up to 27, where one float32 ulp is 1.9e-6).
        assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
    assert summary == {
        "kmodel_version": 3, "layers": 2, "kpu_ops": 0, "cpu_ops": 2, "layer_types": {"FullyConnected": 2},
        "kpu_ram_peak": 0, "main_memory": 56, "file_size": 440,
        "input": {"shape": [1, 4], "dtype": "float32", "memory": "main"}, "outputs": [{"address": 0, "size": 12}]}
    assert compile_v3(optimize_generic(import_model(IRIS / "iris.tflite")))[0] == data     # deterministic


# ---- float layers -------------------------------------------------------------------------------------------

def _float_graph() -> Graph:
    """FC first (the SDK's entry), then every float CPU layer v3 has, with four outputs."""
    rng = np.random.default_rng(0)
    g = Graph()
    x = g.input("x", TensorType((1, 16)))
    h = g.add("matmul", [x, g.const(rng.normal(size=(16, 64)).astype(np.float32))]).output
    h = g.add("binary", [h, g.const(rng.normal(size=64).astype(np.float32))], op="add").output
    h = g.add("clamp", [h], min=0.0, max=6.0).output                                      # FC + ReLU6
    m = g.add("reshape", [h], shape=(1, 4, 4, 4)).output
    p = g.add("reduce_window2d", [m], op="mean", kernel=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1))).output
    r = g.add("resize", [p], sizes=(1, 4, 4, 4), mode="nearest", coordinate_transformation_mode="asymmetric",
              nearest_mode="floor").output
    t = g.add("transpose", [r], perm=(0, 2, 3, 1)).output                                  # TensorflowFlatten
    t = g.add("reshape", [t], shape=(1, 64)).output
    s = g.add("binary", [t, h], op="add").output
    gap = g.add("reduce", [m], op="mean", axes=(2, 3), keepdims=True).output
    fc = g.add("conv2d", [gap, g.const(rng.normal(size=(6, 4, 1, 1)).astype(np.float32)),
                          g.const(rng.normal(size=6).astype(np.float32))], fused_clamp=(0.0, math.inf)).output
    gap = g.add("reshape", [gap], shape=(1, 4)).output
    cat = g.add("concat", [s, gap], axis=1).output
    y1 = g.add("softmax", [cat], axis=1).output
    y2 = g.add("unary", [s], op="sigmoid").output
    y3 = g.add("lp_normalize", [cat], axis=1).output
    g.outputs = [y1, y2, y3, fc]
    return g


def test_float_layers_run_like_the_executor():
    g = _float_graph()
    model = lower_v3(g)
    assert [l.type.name for l in model.layers] == [
        "FullyConnected", "AveragePool2d", "ResizeNearestNeighbor", "TensorflowFlatten", "Add",
        "GlobalAveragePool2d", "Concatenation", "Softmax", "Logistic", "L2Normalization", "FullyConnected"]
    model = read_v3(write_v3(model))
    for seed in range(3):
        x = np.random.default_rng(seed).normal(size=(1, 16)).astype(np.float32)
        for got, want in zip(run_v3(model, [x]), run_graph(g, x), strict=True):
            assert_allclose(got, want.reshape(-1), rtol=2e-6, atol=2e-6)


def test_unexpressible_ops_are_all_named_at_once():
    g = Graph()
    x = g.input("x", TensorType((1, 8)))
    h = g.add("matmul", [x, g.const(np.ones((8, 8), np.float32))], name="fc").output
    e = g.add("unary", [h], op="exp", name="exp1").output
    m = g.add("reshape", [e], shape=(1, 2, 2, 2)).output
    mp = g.add("reduce_window2d", [m], op="max", kernel=(2, 2), strides=(2, 2), name="maxpool").output
    k = g.add("clamp", [mp], min=-1.0, max=1.0, name="clip").output
    g.outputs = [k]
    with pytest.raises(KpucError) as err:
        lower_v3(g)
    msg = str(err.value)
    assert msg.startswith("kmodel v3 cannot express 3 op(s)") and msg.endswith("Try --kmodel-version 4")
    assert "unary 'exp1'" in msg and "reduce_window2d 'maxpool'" in msg and "clamp 'clip'" in msg
    assert "\n" not in msg


def test_the_first_layer_must_be_one_the_sdk_can_start():
    g = Graph()
    x = g.input("x", TensorType((1, 8)))
    g.outputs = [g.add("softmax", [x], axis=1).output]
    with pytest.raises(KpucError, match="first layer is Softmax.*K210Conv or a FullyConnected.*--kmodel-version 4"):
        lower_v3(g)


# ---- KPU argument words -------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", file_params(REAL_V3))
def test_kpu_words_are_nncase_s(path):
    """Every K210Conv of nncase's real files (42 layers) is rebuilt word for word from its parameters."""
    model = read_v3(path.read_bytes())
    convs = [l.body.args for l in model.layers if l.type == LayerType.K210Conv]
    assert convs
    for a in convs:
        ours = kpu_args(a.in_shape, a.o_ch_num + 1, a.kernel, depthwise=a.depthwise, pool_type=a.pool_type,
                        pad_value=a.pad_value, arg_x=a.arg_x, shr_x=a.shr_x, arg_w=a.arg_w, shr_w=a.shr_w,
                        arg_add=a.arg_add, src_row=a.image_src_addr, dst_row=a.image_dst_addr,
                        eight_bit=model.eight_bit)
        assert ours.to_words() == a.to_words()


# ---- quantized graphs ---------------------------------------------------------------------------------------

def layer_values(low, codes) -> dict:
    """Run the file layer by layer (the SDK interpreter's own runners) and read back what each layer
    wrote, keyed by the IR node it came from: KPU maps from KPU RAM, the rest from main memory."""
    model, nodes = low.model, {n.name: n for n in low.graph.nodes}
    m = iv3.Machine(model)
    iv3._feed_input(m, model.layers[0], [codes])
    seen = {}
    for layer, name in zip(model.layers, low.layer_names):
        iv3.RUN_V3[layer.type](m, layer.body)
        node = nodes.get(name)
        if node is None:
            continue
        v = node.output
        ins, outs = layer_io(layer)
        region = outs[-1]
        if region.mem == "kpu":
            seen[name] = kpu_layout.download(m.kpu, region.address, region.shape).reshape(v.shape)
        elif region.size == v.type.size * np.dtype(v.dtype).itemsize:
            seen[name] = m.load(region.address, v.dtype, v.type.size).reshape(v.shape)
    return seen


def input_codes(summary, x):
    return K210_KERNELS["quantize_u8"](np.asarray(x, np.float32), **summary["input"]["quant"])


def _kpu_layer(g, x, oc, k, rng, *, iq, yq, depthwise=False, pool="bypass", name):
    ic = x.shape[1]
    w = rng.normal(size=(oc, 1 if depthwise else ic, k, k)).astype(np.float32)
    layer = quantize_kpu_layer(w, rng.normal(size=oc).astype(np.float32), (("clamp", 0.0, 6.0),), iq, yq, yq)
    node = g.add("kpu_conv2d_q", [x, g.const(layer.weights), g.const(layer.bn), g.const(layer.act)], name=name,
                 depthwise=depthwise, pool=pool, **layer.attrs)
    node.output.quant = yq.to_ir()
    return node.output


def _quantized_graph() -> Graph:
    """Every quantized CPU layer v3 has around KPU layers: uploads, slices, tables, adds, max pools."""
    rng = np.random.default_rng(1)
    iq, yq = QuantParamU8(0, 255.0), get_quant_param((0.0, 6.0))
    rq = get_quant_param((-1.0, 5.0))
    g = Graph()
    x = g.input("x", TensorType((1, 4, 8, 8)))
    xq = g.add("quantize_u8", [x], name="x_q", scale=iq.to_ir().scale, zero_point=iq.zero_point).output
    c1 = _kpu_layer(g, xq, 8, 3, rng, iq=iq, yq=yq, name="c1")
    c2 = _kpu_layer(g, c1, 8, 1, rng, iq=yq, yq=yq, pool="max_2_s1", name="c2")
    s = g.add("strided_slice", [c1], name="stride2", begin=(0, 0, 1, 1), end=(1, 8, 8, 8), strides=(1, 1, 2, 2)).output
    crop = g.add("strided_slice", [c2], name="crop", begin=(0, 2, 1, 0), end=(1, 6, 7, 8), strides=(1, 1, 1, 1)).output
    r = g.add("requantize_u8", [s], name="requant", in_scale=yq.to_ir().scale, in_zero_point=yq.zero_point,
              scale=rq.to_ir().scale, zero_point=rq.zero_point).output
    table = g.const(np.arange(256)[::-1].astype(np.uint8))
    t = g.add("table_lookup1d", [r, table], name="invert").output
    c3 = _kpu_layer(g, s, 8, 3, rng, iq=yq, yq=rq, depthwise=True, name="c3")       # uploaded from main
    aq = get_quant_param((-2.0, 10.0))
    add = g.add("quantized_binary", [t, c3], name="add", **quantized_binary_params("add", rq, rq, aq)).output
    r.quant, t.quant, add.quant = rq.to_ir(), rq.to_ir(), aq.to_ir()
    mp = g.add("reduce_window2d", [crop], name="maxpool", op="max", kernel=(2, 2), strides=(2, 2)).output
    outs = []
    for v, q, name in ((add, get_quant_param((-2.0, 10.0)), "y_add"), (mp, yq, "y_pool")):
        outs.append(g.add("dequantize_u8", [v], name=name, scale=q.to_ir().scale, zero_point=q.zero_point).output)
    g.outputs = outs
    return g


def test_quantized_layers_match_the_quantized_executor():
    g = _quantized_graph()
    data, summary = compile_v3(g)
    low = lower_v3_detailed(g)
    assert write_v3(low.model) == data
    assert [l.type.name for l in low.model.layers] == [
        "K210Conv", "QuantizedResizeNearestNeighbor", "Requantize", "Requantize", "K210Upload", "K210Conv",
        "Dequantize", "Dequantize", "Add", "Quantize", "Dequantize", "K210Conv", "QuantizedConcatenation",
        "QuantizedMaxPool2d", "Dequantize"]
    inexact = " ".join(summary.get("inexact", []))
    executor = QuantizedExecutor(low.graph)
    for seed in range(3):
        x = np.random.default_rng(seed).uniform(0, 1, size=(1, 4, 8, 8)).astype(np.float32)
        want = executor.run([x], keep_all=True)
        got = layer_values(low, input_codes(summary, x))
        for name, arr in got.items():
            if f"'{name}'" not in inexact:
                np.testing.assert_array_equal(arr, want[name], err_msg=name)
        outputs = run_v3(read_v3(data), [input_codes(summary, x)])
        np.testing.assert_array_equal(outputs[1], want["y_pool"].reshape(-1))       # zero point 0: exact
    assert "Dequantize 'y_add'" in inexact and "quantized add 'add' as Dequantize+Add+Quantize" in inexact


def test_quantized_add_is_the_closer_of_the_two_v3_forms():
    """Over all 65536 input pairs the SDK's QuantizedAdd disagrees with the IR's quantized_binary far more
    often than Dequantize + Add + Quantize (its operand floor and its carry shift on negatives)."""
    g = _quantized_graph()
    add = g.node("add")
    a, b, y = add.inputs[0].quant, add.inputs[1].quant, add.output.quant
    ga, gb = (m.reshape(-1).astype(np.int64) for m in np.meshgrid(np.arange(256), np.arange(256), indexing="ij"))
    want = K210_KERNELS["quantized_binary"](ga.astype(np.uint8), gb.astype(np.uint8), **add.attrs)
    at = add.attrs
    sdk = _sdk_quantized_add(ga, gb, {
        "in_a_offset": at["input_a_offset"], "in_a_mul": at["input_a_mul"], "in_a_shift": at["input_a_shift"],
        "in_b_offset": at["input_b_offset"], "in_b_mul": at["input_b_mul"], "in_b_shift": at["input_b_shift"],
        "out_offset": at["output_offset"], "out_mul": at["output_mul"], "out_shift": at["output_shift"]})
    via_float = _float_add(ga, gb, a, b, y)[0]
    assert 5 * (via_float != want).mean() < (sdk != want).mean()      # here 4.1 % vs 52.8 %
    assert np.abs(via_float - want.astype(np.int64)).max() == 1


def test_small_dequantize_with_a_zero_point_is_exact_through_a_diagonal_fc():
    g = _quantized_graph()
    q = get_quant_param((-3.0, 7.0))
    pooled = g.outputs[1].producer.inputs[0]
    tiny = g.add("strided_slice", [pooled], begin=(0, 0, 0, 0), end=(1, 4, 1, 4), strides=(1, 1, 1, 1)).output
    g.outputs = [g.add("dequantize_u8", [tiny], name="y_small", scale=q.to_ir().scale,
                       zero_point=q.zero_point).output]
    data, summary = compile_v3(g)
    assert [l.type.name for l in read_v3(data).layers][-2:] == ["Dequantize", "FullyConnected"]
    assert "inexact" not in summary
    for seed in range(3):
        x = np.random.default_rng(seed).uniform(0, 1, size=(1, 4, 8, 8)).astype(np.float32)
        np.testing.assert_array_equal(run_v3(read_v3(data), [input_codes(summary, x)])[0],
                                      QuantizedExecutor(g).run([x])["y_small"].reshape(-1))


@pytest.mark.parametrize("zero_point", [0, 3, 128, 255])
def test_quantize_and_dequantize_parameters(zero_point):
    q = get_quant_param((-zero_point / 40.0, (255 - zero_point) / 40.0))
    scale = q.to_ir().scale
    sc, bias, bad = quantize_params(scale, q.zero_point)
    assert F32(1) / F32(sc) == F32(q.scale)            # the SDK's 1.0f/scale is the IR's multiplier
    codes = np.arange(256)
    dsc, dbias, dbad, err = dequantize_params(scale, q.zero_point)
    got = codes.astype(F32) * F32(dsc) + F32(dbias)
    want = dequantize_u8(codes, q)
    assert int((got != want).sum()) == dbad and np.abs(got - want).max() <= err
    if q.zero_point == 0:
        assert bad == 0 and dbad == 0 and bias == 0.0
    assert err <= 4 * np.spacing(np.abs(want).max())


def test_pads_fold_into_the_kpu_ring_exactly():
    """mobilenet's first layer: pad → quantize → 3×3 KPU layer (right_top pool) → crop becomes a layer on
    the unpadded input and one slice; the quantized executor gives the same codes before and after."""
    rng = np.random.default_rng(3)
    iq, yq = QuantParamU8(0, 255.0), get_quant_param((0.0, 6.0))
    g = Graph()
    x = g.input("x", TensorType((1, 3, 16, 16)))
    p = g.add("pad", [x], pads=((0, 0), (0, 0), (1, 1), (0, 0)), mode="constant", value=0.0).output
    pq = g.add("quantize_u8", [p], scale=iq.to_ir().scale, zero_point=0).output
    c = _kpu_layer(g, pq, 8, 3, rng, iq=iq, yq=yq, pool="right_top_2_s2", name="conv0")
    crop = g.add("strided_slice", [c], begin=(0, 0, 1, 0), end=(1, 8, 9, 8), strides=(1, 1, 1, 1)).output
    g.outputs = [g.add("dequantize_u8", [crop], scale=yq.to_ir().scale, zero_point=0).output]
    prepared = prepare_v3(g)
    assert [n.op for n in prepared.nodes if n.op != "constant"] == [
        "input", "quantize_u8", "kpu_conv2d_q", "strided_slice", "dequantize_u8"]
    sl = prepared.nodes_of("strided_slice")[0]
    assert (sl.attrs["begin"], sl.attrs["strides"]) == ((0, 0, 1, 1), (1, 1, 2, 2))
    data, summary = compile_v3(g)
    assert read_v3(data).layers[0].body.args.in_shape == (3, 16, 16)
    for _ in range(3):
        xs = rng.uniform(0, 1, size=(1, 3, 16, 16)).astype(np.float32)
        want = QuantizedExecutor(g).run([xs])[g.outputs[0].name]
        np.testing.assert_array_equal(QuantizedExecutor(prepared).run([xs])[prepared.outputs[0].name], want)
        np.testing.assert_array_equal(run_v3(read_v3(data), [input_codes(summary, xs)])[0], want.reshape(-1))


# ---- the sample models, quantized ---------------------------------------------------------------------------

# (model, calibration set, --output-quantize-threshold). With 0 every conv and matmul goes to the KPU, as
# nncase v0.1 did; with the default 1024 the classifiers' last layers stay float (FullyConnected).
MODELS = {
    "digits": (DIGITS, DIGITS_DATA, 0),
    "digits-float-fc": (DIGITS, DIGITS_DATA, 1024),
    "mobilenet": (MOBILENET, GOLDEN / "ulffd_landmark-v4/dataset", 0),
    "mobilenet-float-logits": (MOBILENET, GOLDEN / "ulffd_landmark-v4/dataset", 1024),
}


@pytest.fixture(scope="module", params=[pytest.param(m, marks=(pytest.mark.slow,) if m.startswith("mobilenet") else ())
                                        for m in sorted(MODELS)])
def compiled(request):
    """(name, quantized graph, file bytes, summary, lowering, dataset samples) of a sample model."""
    from compiler.datasets import iter_dataset
    from compiler.pipeline import CompileOptions, prepare_model
    from targets import get_target
    path, dataset, threshold = MODELS[request.param]
    require(path, dataset)
    # ncc's layer shapes (--no-auto-precision): these tests count ncc's KPU layers and float logits
    graph = prepare_model(path, CompileOptions(dataset=str(dataset), output_quantize_threshold=threshold,
                                               auto_precision=False), get_target("k210")).quantized
    data, summary = compile_v3(graph)
    samples = [s.data for s in iter_dataset(dataset, graph.inputs[0].shape)]
    return request.param, graph, data, summary, lower_v3_detailed(graph), samples


def _fc_layers(low) -> set[str]:
    """K210Convs fed by K210AddPadding: only their pixel (0, 0) is meaningful (§8.17)."""
    types = [l.type for l in low.model.layers]
    return {low.layer_names[i] for i in range(1, len(types)) if types[i - 1] == LayerType.K210AddPadding}


def test_sample_models_compile_to_v3_with_kpu_layers(compiled):
    name, graph, data, summary, low, _ = compiled
    assert compile_v3(graph)[0] == data                               # same compile twice, same bytes
    types = [l.type.name for l in read_v3(data).layers]
    if name == "digits":     # nncase v0.1's own sequence for conv, conv, conv, GAP, FC
        assert types == ["K210Conv"] * 3 + ["Dequantize", "GlobalAveragePool2d", "Quantize", "K210AddPadding",
                                            "K210Conv", "K210RemovePadding", "Dequantize", "FullyConnected"]
    elif name == "digits-float-fc":
        assert types == ["K210Conv"] * 3 + ["Dequantize", "GlobalAveragePool2d", "FullyConnected"]
    else:
        assert types[0] == "K210Conv" and types[-1] == "Softmax"
        assert types.count("QuantizedResizeNearestNeighbor") == 5     # the stride-2 slices
        assert summary["kpu_ops"] == (28 if name == "mobilenet" else 27)
        assert ("FullyConnected" in types) == (name == "mobilenet-float-logits")
    assert summary["input"]["dtype"] == "uint8" and summary["input"]["memory"] == "kpu"
    assert summary["file_size"] == len(data) and len(data) % 8 == 0


def test_kpu_layers_interpreter_matches_the_quantized_executor(compiled):
    """Every layer's output equals the quantized executor's value bit for bit, up to the first float CPU
    layer that sums in another order than the executor (AveragePool2d, GlobalAveragePool2d: float32 in the
    SDK's order vs float64)."""
    name, graph, data, summary, low, samples = compiled
    executor, fc = QuantizedExecutor(low.graph), _fc_layers(low)
    float_sums = {"AveragePool2d", "GlobalAveragePool2d", "FullyConnected"}
    first_float_sum = next(i for i, l in enumerate(low.model.layers) if l.type.name in float_sums)
    exact_names = set(low.layer_names[:first_float_sum])
    for x in samples[:4]:
        want = executor.run([x], keep_all=True)
        got = layer_values(low, input_codes(summary, x))
        checked = 0
        for layer_name, arr in got.items():
            if layer_name in exact_names:
                ref = want[layer_name]
                if layer_name in fc:
                    arr, ref = arr[..., :1, :1], ref[..., :1, :1]
                np.testing.assert_array_equal(arr, ref, err_msg=layer_name)
                checked += 1
        assert checked >= (3 if name.startswith("digits") else 33)


def test_outputs_against_the_quantized_executor(compiled):
    """digits: every output float is the executor's, bit for bit (its GAP sums never flip a code on these
    images). mobilenet: a code of the 256 pooled features flips now and then (float32 vs float64 average),
    so a few logits move by one code. With float last layers only the float32 sums differ (≤ 4e-6 here).
    The top-1 class never changes."""
    name, graph, data, summary, low, samples = compiled
    model, executor = read_v3(data), QuantizedExecutor(graph)
    for x in samples if name.startswith("digits") else samples[:4]:
        got = run_v3(model, [input_codes(summary, x)])[0]
        want = executor.run([x])[graph.outputs[0].name].reshape(-1)
        if name == "digits":
            np.testing.assert_array_equal(got, want)
        else:
            assert np.argmax(got) == np.argmax(want)
            assert_allclose(got, want, rtol=1e-6, atol=0.02 if name == "mobilenet" else 1e-5)
