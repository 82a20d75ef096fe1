"""targets/k210/quantize.py: the KPU numbers (against hand-worked cases and the 43 layers nncase wrote into
ulffd_landmark.kmodel), single quantized layers against their float layer, graph-level rules and the
acceptance numbers on the sample models (printed)."""
from __future__ import annotations

import importlib.util
import math
import sys

import numpy as np
import pytest
from PIL import Image

from compiler.accuracy import compare, format_report, worst_layer
from compiler.calibration import calibrate
from compiler.datasets import iter_dataset
from compiler.executor import Executor
from compiler.importers import import_model
from compiler.ir import Graph, TensorType
from compiler.pipeline import optimize_generic
from compiler.quantization import F32, QuantParamU8, get_quant_param, quantize_u8
from shared_data import DIGITS, GOLDEN, MOBILENET, ROOT, needs
from targets.k210.kernels import QUANTIZED_KERNELS, QuantizedExecutor, kpu_tables
from targets.k210.kpu import kpu_conv2d_reference
from targets.k210.legalize import legalize_k210
from targets.k210.quantize import (
    equalize_weights,
    kpu_activation,
    piecewise_regression,
    quantize_k210,
    quantize_kpu_layer,
    quantize_kpu_weights,
)

ULFFD = GOLDEN / "ulffd_landmark-v4"
DOG = GOLDEN / "yolo20-v3" / "inputs" / "dog_rgb_chw_320x240.u8"


# ------------------------------------------------------------------ KPU numbers, hand-worked
def test_equalisation_stretches_every_channel_to_the_total_range():
    w = np.array([[-1.0, 2.0], [-0.5, 0.5], [0.0, 1.0], [-0.25, 0.0]], np.float32).reshape(4, 2, 1, 1)
    scaled, s = equalize_weights(w)
    # T = [-1, 2]; ch1: min(2/0.5, -1/-0.5) = 2; ch2: R = [0, 1] -> s2 = -1/0 = -inf < 0 -> max(2, -inf) = 2;
    # ch3: R = [-0.25, FLT_MIN -> 0]: s1 = 2/0 = inf, s2 = 4 -> min = 4
    np.testing.assert_array_equal(s, np.array([1, 2, 2, 4], np.float32))
    np.testing.assert_array_equal(scaled.reshape(4, 2), [[-1, 2], [-1, 1], [0, 2], [-1, 0]])


def test_kpu_weights_use_one_zero_point_for_the_equalised_tensor():
    w = np.array([[-1.0, 2.0], [-0.5, 0.5]], np.float32).reshape(2, 2, 1, 1)
    wq, s, w_q = quantize_kpu_weights(w)
    assert wq == get_quant_param((-1.0, 2.0)) == QuantParamU8(85, 85.0)
    np.testing.assert_array_equal(w_q.reshape(2, 2), [[0, 255], [0, 170]])


def test_piecewise_regression_recovers_a_polyline():
    xs = np.linspace(-4, 4, 1024, dtype=np.float32)
    ys = np.where(xs < 0, 0.1 * xs, xs).astype(np.float32)          # leaky relu: two lines
    segs = piecewise_regression(xs, ys)
    assert len(segs) == 15 and segs[0].start == xs[0] and segs[-1].stop == xs[-1]
    assert all(a.stop == b.start for a, b in zip(segs, segs[1:]))
    for s in segs:
        mid = (s.start + s.stop) / 2
        want = 0.1 * mid if mid < 0 else mid
        assert abs(s.intercept + s.slope * (mid - s.start) - want) < 0.01


def test_relu6_table_is_the_identity_from_zero():
    yq = zq = get_quant_param((0.0, 6.0))
    act = kpu_activation(1024 * float(F32(yq.scale)), yq, zq, (0.0, 6.0), ())
    assert act[0].tolist() == [-(1 << 35), 0, 0, 0]
    assert act[1].tolist() == [0, 1024, 20, 0]          # v/1024 = the code, from x = 0 up
    assert np.all(np.diff(act[1:, 0]) > 0)


def layer_graph(activation, pool="bypass", depthwise=False, k=3, c=4, oc=6, hw=8, seed=0, w_scale=0.4) -> Graph:
    rng = np.random.default_rng(seed)
    g = Graph()
    x = g.input("x", TensorType((2, c, hw, hw)))
    w = g.const((rng.standard_normal((c if depthwise else oc, 1 if depthwise else c, k, k)) * w_scale)
                .astype(np.float32), name="w")
    b = g.const(rng.standard_normal(c if depthwise else oc).astype(np.float32) * 0.3, name="b")
    g.outputs = [g.add("kpu_conv2d", [x, w, b], name="layer", depthwise=depthwise, pool=pool,
                       activation=activation).output]
    return g


LAYERS = [
    ((("clamp", 0.0, 6.0),), "bypass", False, 3),
    ((("clamp", 0.0, math.inf),), "max_2_s2", False, 3),
    ((("leaky_relu", 0.1),), "bypass", False, 1),
    ((), "left_top_2_s2", False, 3),
    ((("clamp", 0.0, 6.0),), "bypass", True, 3),
    ((("unary", "sigmoid"),), "mean_2_s2", False, 1),
    ((("clamp", -1.0, math.inf), ("unary", "tanh")), "max_2_s1", False, 3),
    ((("hard_sigmoid", 0.2, 0.5),), "right_top_2_s2", False, 3),
]


@pytest.mark.parametrize("activation, pool, depthwise, k", LAYERS)
def test_one_quantized_kpu_layer_matches_the_float_layer(activation, pool, depthwise, k):
    g = layer_graph(activation, pool, depthwise, k)
    rng = np.random.default_rng(1)
    data = [rng.uniform(-1, 1, (2, 4, 8, 8)).astype(np.float32) for _ in range(4)]
    # calibrate on a wider set than is judged: below the sampled conv range nncase's table falls into
    # segment 0, code 0 (see test_below_the_sampled_range_the_table_gives_code_zero)
    q = quantize_k210(g, calibrate(g, data + [d * 1.25 for d in data]))
    assert [n.op for n in q.nodes if n.op not in ("input", "constant")] == \
        ["quantize_u8", "kpu_conv2d_q", "dequantize_u8"]
    out_q = q.node("layer_q").output.quant
    for x in data[:2]:
        want = Executor(g).run([x])["layer"]
        got = QuantizedExecutor(q).run([x])["layer"]
        steps = np.abs(got.astype(np.float64) - want) / out_q.scale
        # input, weight and table rounding; a curve costs more: nncase's 15 chords of tanh/sigmoid lie
        # up to ~4 codes off the curve where it bends, and the KPU's mean pool floors (sum // 4)
        curved = activation and activation[-1][0] == "unary"
        assert steps.max() <= (6 if curved else 4), steps.max()
        assert np.mean(steps) < (1.5 if curved else 1.0), np.mean(steps)


def test_below_the_sampled_range_the_table_gives_code_zero():
    """nncase quirk, reproduced: segment 0 (x_start -2^35, y_mul 0, y_add 0) catches every BN value at or
    below the first fitted segment's start, i.e. conv outputs at or below the calibrated minimum give code
    0. That is f(x_min) for ReLU, ReLU6, leaky and identity layers, but for sigmoid (whose output range
    is widened to contain 0) it is real 0, not sigmoid(x_min)."""
    yq, zq = get_quant_param((-2.0, 2.0)), get_quant_param((0.119, 0.881))
    act = kpu_activation(1000.0 * float(F32(yq.scale)), yq, zq, (-math.inf, math.inf), (("unary", "sigmoid"),))
    assert act[0].tolist() == [-(1 << 35), 0, 0, 0]
    x_min = -yq.zero_point / yq.scale                       # the real of code 0 of the conv output
    assert act[1, 3] == round(zq.scale / (1 + math.exp(-x_min)))   # the fit starts at sigmoid(x_min) ...
    _, table = kpu_tables(np.zeros((1, 3), np.int64), act)
    from targets.k210.kpu import activate
    codes = activate(np.array([act[1, 0] - 1, act[1, 0], act[1, 0] + 1]), table)
    assert codes.tolist() == [0, 0, act[1, 3]]               # ... but at and below it the output is 0


def test_kpu_conv2d_q_kernel_equals_the_kpu_layer_simulator():
    """The kernel's table plumbing (bn columns, act columns, pool names) against the slow reference."""
    g = layer_graph((("leaky_relu", 0.1),), "max_2_s2", k=3, c=3, oc=4, hw=6)
    rng = np.random.default_rng(3)
    data = [rng.uniform(-1, 1, (2, 3, 6, 6)).astype(np.float32) for _ in range(2)]
    q = quantize_k210(g, calibrate(g, data))
    node = q.node("layer_q")
    x_q = quantize_u8(data[0], QuantParamU8.from_ir(node.inputs[0].quant))
    w, bn, act = (v.producer.output.data for v in node.inputs[1:])
    got = QUANTIZED_KERNELS["kpu_conv2d_q"](x_q, w, bn, act, **node.attrs)
    batch_norm, table = kpu_tables(bn, act)
    attrs = {k: v for k, v in node.attrs.items() if k != "pool"}
    for n in range(2):
        want = kpu_conv2d_reference(x_q[n], w, batch_norm, table, pool_type=1, **attrs)
        np.testing.assert_array_equal(got[n], want)


def test_kpu_layer_constants_follow_the_zero_points():
    w = np.random.default_rng(4).standard_normal((3, 2, 3, 3)).astype(np.float32)
    iq, yq = get_quant_param((-1.0, 1.0)), get_quant_param((-3.0, 5.0))
    layer = quantize_kpu_layer(w, np.zeros(3, np.float32), (), iq, yq, yq)
    wz = layer.weights_q.zero_point
    assert layer.attrs == {"pad_value": 128, "arg_x": -wz, "shr_x": 0, "arg_w": -128, "shr_w": 0,
                           "arg_add": 9 * wz * 128}
    assert np.all(layer.bn[:, 1] <= 15) and np.all(np.abs(layer.bn[:, 0]) < 1 << 21)
    assert layer.output == yq


def test_quantization_is_deterministic():
    g = layer_graph((("clamp", 0.0, 6.0),), "max_2_s2")
    data = [np.random.default_rng(k).uniform(-1, 1, (2, 4, 8, 8)).astype(np.float32) for k in range(3)]
    a, b = (quantize_k210(g, calibrate(g, data)) for _ in range(2))
    assert str(a) == str(b)
    for na, nb in zip(a.nodes, b.nodes):
        if na.op == "constant":
            np.testing.assert_array_equal(na.output.data, nb.output.data)
        assert na.output.quant == nb.output.quant


# ------------------------------------------------------------------ graph rules
def test_wide_weights_keep_a_kpu_layer_in_float():
    g = layer_graph((("clamp", 0.0, math.inf),), "max_2_s2", w_scale=40.0)
    data = [np.random.default_rng(k).uniform(-1, 1, (2, 4, 8, 8)).astype(np.float32) for k in range(2)]
    q = quantize_k210(g, calibrate(g, data), weights_quantize_threshold=64)
    ops = [n.op for n in q.nodes if n.op not in ("input", "constant")]
    assert ops == ["conv2d", "reduce_window2d"] and "kpu_conv2d_q" not in ops
    assert "weights_quantize_threshold" in q.node("layer/conv2d").meta["why_not_kpu"]
    np.testing.assert_allclose(Executor(q).run([data[0]])["layer"], Executor(g).run([data[0]])["layer"],
                               rtol=1e-5, atol=1e-4)
    assert "kpu_conv2d_q" in [n.op for n in quantize_k210(g, calibrate(g, data), weights_quantize_threshold=1e4).nodes]


def cpu_graph(out_hw: int) -> Graph:
    rng = np.random.default_rng(6)
    g = Graph()
    x = g.input("x", TensorType((1, 3, out_hw, out_hw)))
    w = g.const((rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32), name="w")
    b = g.const(np.zeros(4, np.float32), name="b")
    c = g.add("conv2d", [x, w, b], name="conv", padding=((1, 1), (1, 1)), strides=(2, 2)).output
    s = g.add("binary", [c, g.const(np.float32(0.5), name="half")], name="add", op="add").output
    g.outputs = [g.add("unary", [s], name="sig", op="sigmoid").output]
    return g


def test_cpu_ops_are_quantized_above_the_output_threshold_only():
    big = cpu_graph(64)          # conv output 4x32x32 = 4096 elements
    data = [np.random.default_rng(k).uniform(-1, 1, (1, 3, 64, 64)).astype(np.float32) for k in range(2)]
    ranges = calibrate(big, data)
    ops = [n.op for n in quantize_k210(big, ranges).nodes]
    assert {"quantized_conv2d", "quantized_binary", "table_lookup1d"} <= set(ops)
    ops = [n.op for n in quantize_k210(big, ranges, quantized_binary=False).nodes]
    assert "quantized_binary" not in ops and "binary" in ops
    ops = [n.op for n in quantize_k210(big, ranges, output_quantize_threshold=10_000).nodes]
    assert not {"quantized_conv2d", "quantized_binary"} & set(ops)
    q = quantize_k210(big, ranges)
    want, got = Executor(big).run([data[0]])["sig"], QuantizedExecutor(q).run([data[0]])["sig"]
    assert np.abs(got - want).max() < 0.05
    small = cpu_graph(8)
    ops = [n.op for n in quantize_k210(small, calibrate(small, [d[:, :, :8, :8] for d in data])).nodes]
    assert "quantized_conv2d" not in ops and "conv2d" in ops


def test_shape_ops_run_on_codes_and_pads_fill_the_zero_point():
    g = Graph()
    x = g.input("x", TensorType((1, 2, 6, 6)))
    rng = np.random.default_rng(7)
    w = g.const((rng.standard_normal((2, 2, 1, 1))).astype(np.float32), name="w")
    b = g.const(np.array([0.5, -0.5], np.float32), name="b")
    k = g.add("kpu_conv2d", [x, w, b], name="k1").output            # no activation: zero point > 0
    p = g.add("pad", [k], name="pad", pads=((0, 0), (0, 0), (1, 1), (1, 1)), mode="constant", value=0.0).output
    s = g.add("strided_slice", [p], name="crop", begin=(0, 0, 0, 0), end=(1, 2, 8, 8), strides=(1, 1, 2, 2)).output
    g.outputs = [g.add("kpu_conv2d", [s, w, b], name="k2").output]
    data = [rng.uniform(-1, 1, (1, 2, 6, 6)).astype(np.float32) for _ in range(3)]
    q = quantize_k210(g, calibrate(g, data))
    pad = q.node("pad_q")
    assert pad.output.dtype == "uint8" and pad.attrs["value"] == q.node("k1_q").output.quant.zero_point > 0
    assert q.node("crop_q").output.quant == q.node("k1_q").output.quant      # broadcast: no requantize
    assert not [n for n in q.nodes if n.op in ("requantize_u8", "dequantize_u8")][:-1]
    want, got = Executor(g).run([data[0]])["k2"], QuantizedExecutor(q).run([data[0]])["k2"]
    assert np.abs(got - want).max() <= 6 * q.node("k2_q").output.quant.scale


# ------------------------------------------------------------------ accuracy report
def test_layer_stats_hand_worked():
    from compiler.accuracy import LayerStats
    s = LayerStats("v", "op")
    s.add(np.array([3.0, 4.0]), np.array([3.0, 3.0]))
    assert math.isclose(s.cosine, 21 / (5 * math.sqrt(18)))
    assert math.isclose(s.sqnr_db, 10 * math.log10(25 / 1)) and s.max_abs == 1.0
    s.add(np.array([0.0, 2.0]), np.array([0.0, 2.0]))          # sums accumulate over inputs
    assert math.isclose(s.sqnr_db, 10 * math.log10(29 / 1))


def test_report_pairs_every_quantized_node_with_its_float_value():
    g = layer_graph((("clamp", 0.0, 6.0),), "max_2_s2")
    data = [np.random.default_rng(k).uniform(-1, 1, (2, 4, 8, 8)).astype(np.float32) for k in range(3)]
    q = quantize_k210(g, calibrate(g, data))
    assert q.node("layer_q").meta["float_value"] == "layer" and q.outputs[0].name == "layer"
    report = compare(g, q, data, quant_kernels=QUANTIZED_KERNELS)
    assert [s.name for s in report.layers] == ["layer"]          # the dequantize is a helper, not a layer
    s = report.layers[0]
    want = Executor(g).run([data[0]])["layer"]
    got = QuantizedExecutor(q).run([data[0]])["layer"]
    assert s.count == 3 and s.max_abs >= float(np.abs(got - want).max()) > 0
    assert 0.99 < s.cosine < 1 and 20 < s.sqnr_db < 60 and worst_layer(report) is s
    assert "layer" in format_report(report) and "<- worst" in format_report(report)


# ------------------------------------------------------------------ real KPU layers written by nncase
@needs(ULFFD)
def test_weights_and_batch_norm_of_every_ulffd_layer_match_nncase():
    """ulffd_landmark.kmodel (nncase v0.2, Dec 2019; same weight/BN recipe as beta4): for each of its 43 KPU
    layers the uint8 weights and arg_x are identical, and one common so·post factor reproduces every
    channel's norm_mul (what the per-channel equalisation decides). The activation tables of that build
    used an older recipe (fixed clamp segments, before the 2020-03 piecewise regression) and the
    calibration ranges depend on OpenCV's decoder, so those are not compared."""
    from targets.k210.kmodel_v4 import read_v4
    model = read_v4((ULFFD / "ulffd_landmark.kmodel").read_bytes())
    golden = [n.body for n in model.nodes if n.name == "kpu_conv2d"]
    g = import_model(ULFFD / "ulffd_landmark.tflite")
    optimize_generic(g)
    legalize_k210(g)
    ours = g.nodes_of("kpu_conv2d")
    assert len(ours) == len(golden) == 43
    unmatched = list(range(len(golden)))
    for node in ours:
        wq, scales, w_q = quantize_kpu_weights(node.inputs[1].data)
        hits = [i for i in unmatched if golden[i].weights.shape == w_q.shape and np.array_equal(golden[i].weights, w_q)]
        assert hits, f"{node.name}: no nncase layer has these weights"
        body = golden[hits[0]]
        unmatched.remove(hits[0])
        assert body.layer.arg_x == -wq.zero_point and body.layer.shr_x == 0
        nm = body.batch_norm.norm_mul.astype(np.float64)
        assert set(body.batch_norm.norm_shift.tolist()) == {15}
        # norm_mul[oc] = round(F / s_oc · 2^15): the intervals of F allowed by each channel must meet
        lo = np.max((nm - 0.5) * scales.astype(np.float64))
        hi = np.min((nm + 0.5) * scales.astype(np.float64))
        assert lo <= hi * (1 + 1e-6), node.name
    assert not unmatched


@needs(ULFFD)
def test_first_ulffd_layer_input_side_matches_nncase():
    """Layer 0 reads the input, whose range --input-mean 0.5 --input-std 1 forces to [-0.5, 0.5]: pad_value,
    arg_w and arg_add follow exactly, and norm_add = round(b · s_act_in) with the same so·post factor."""
    from targets.k210.kmodel_v4 import read_v4
    body = next(n.body for n in read_v4((ULFFD / "ulffd_landmark.kmodel").read_bytes()).nodes
                if n.name == "kpu_conv2d")
    g = import_model(ULFFD / "ulffd_landmark.tflite")
    optimize_generic(g)
    legalize_k210(g)
    first = g.nodes_of("kpu_conv2d")[0]
    w, b = first.inputs[1].data, first.inputs[2].data
    iq = get_quant_param((-0.5, 0.5))
    wq, scales, _ = quantize_kpu_weights(w)
    layer = quantize_kpu_layer(w, b, (), iq, get_quant_param((0.0, 10.0)), get_quant_param((0.0, 10.0)))
    assert (body.layer.pad_value, body.layer.arg_w, body.layer.arg_add) == \
        (layer.attrs["pad_value"], layer.attrs["arg_w"], layer.attrs["arg_add"]) == (128, -128, 173952)
    nm = body.batch_norm.norm_mul.astype(np.float64)
    factor = float(np.median(nm * scales / 2 ** 15))           # F = so · post, from the golden norm_mul
    s_act_in = factor * float(F32(iq.scale) * F32(wq.scale))   # = F · sa
    predicted = np.round(b.astype(np.float64) * s_act_in)
    assert np.abs(predicted - body.batch_norm.norm_add).max() <= 1 + 1e-5 * np.abs(predicted).max()


# ------------------------------------------------------------------ acceptance numbers
def acceptance(float_graph: Graph, quant: Graph, judged: list[np.ndarray]) -> tuple[float, float, str]:
    """(top-1 agreement, worst output cosine, per-layer report of the worst layer)."""
    fe, qe = Executor(float_graph), QuantizedExecutor(quant)
    out = float_graph.outputs[0].name
    agree, cosines = 0, []
    for x in judged:
        f, r = fe.run([x])[out].reshape(-1), qe.run([x])[out].reshape(-1)
        agree += int(f.argmax() == r.argmax())
        cosines.append(float(f @ r / (np.linalg.norm(f) * np.linalg.norm(r))))
    report = compare(float_graph, quant, judged, quant_kernels=QUANTIZED_KERNELS)
    worst = worst_layer(report)
    text = format_report(report)
    summary = (f"worst layer: {worst.name} ({worst.op}): cosine {worst.cosine:.5f}, SQNR {worst.sqnr_db:.2f} dB, "
               f"max |err| {worst.max_abs:.4g}")
    return agree / len(judged), min(cosines), text + "\n" + summary


def _digits_script():
    spec = importlib.util.spec_from_file_location("make_digits_cnn", ROOT / "models" / "make_digits_cnn.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_acceptance_digits_cnn():
    """(a) digits_cnn.onnx calibrated on 100 training images, judged on 200 test images."""
    pytest.importorskip("sklearn")
    x_train, _, x_test, _, *_ = _digits_script().load_data()
    g = import_model(DIGITS)
    optimize_generic(g)
    legalize_k210(g)
    q = quantize_k210(g, calibrate(g, list(x_train[:100, None])))
    agreement, worst_cos, report = acceptance(g, q, list(x_test[:200, None]))
    print(f"\ndigits_cnn: top-1 agreement {agreement:.1%}, worst output cosine {worst_cos:.5f}\n{report}")
    assert agreement >= 0.95 and worst_cos >= 0.99


def mobilenet_inputs():
    data = [s.data for s in iter_dataset(ULFFD / "dataset", (1, 3, 128, 128), mean=0.5, std=0.5)]
    raw = np.fromfile(DOG, np.uint8).reshape(3, 240, 320).transpose(1, 2, 0)
    dog = np.asarray(Image.fromarray(raw).resize((128, 128), Image.Resampling.BILINEAR), np.float32)
    dog = ((dog.transpose(2, 0, 1)[None] / 255.0 - 0.5) / 0.5).astype(np.float32)
    return data[:10], data[10:] + [dog]




def _mobilenet_acceptance(**options):
    from compiler.pipeline import CompileOptions, prepare_model
    from targets import get_target
    calib, judged = mobilenet_inputs()
    options = {"auto_precision": False, **options}         # ncc's layer shapes (tests/targets/test_precision.py: kpuc's)
    prepared = prepare_model(MOBILENET, CompileOptions(input_mean=0.5, input_std=0.5, **options), get_target("k210"),
                             samples=calib)
    g, q = prepared.float_graph, prepared.quantized          # the float graph is legalized in place
    assert len(q.nodes_of("kpu_conv2d_q")) == 27          # the 1001-logits conv stays float
    return acceptance(g, q, judged)


@pytest.mark.slow
@needs(MOBILENET, ULFFD, DOG)
def test_acceptance_mobilenet_v1():
    """(b) mobilenet_v1_0.25_128 calibrated on the first 10 ulffd images, judged on the other 10 + the dog,
    through the compile flow (compiler.pipeline.prepare_model) with --split-activations 20: the first 20 KPU
    layers' outputs carried as two uint8 copies half a step apart (targets/k210/split_activations.py).
    20 is the count whose worst cosine *on the 10 calibration images* was best among 0, 4, 6-12, 14, 20
    (bench/bench_mobilenet_ptq.py --sweep, which prints the judged numbers next to them: they range
    0.974-0.992 for N >= 6, so the margin over 0.99 is thin and this test guards it)."""
    agreement, worst_cos, report = _mobilenet_acceptance(split_activations=20)
    print(f"\nmobilenet_v1_0.25_128 --split-activations 20: top-1 agreement {agreement:.1%}, "
          f"worst output cosine {worst_cos:.5f}\n{report}")
    assert agreement >= 0.95 and worst_cos >= 0.99


@pytest.mark.slow
@needs(MOBILENET, ULFFD, DOG)
def test_mobilenet_v1_default_flow_holds_its_accuracy():
    """The default compile (ncc's layer shapes; bias correction + GPTQ weight rounding) on the same split:
    measured 11/11 and worst cosine 0.9723 (nncase's recipe alone: 3/11, 0.32). A regression guard, below
    the issue's 0.99: the 8-bit activations of the first layers cost about 0.02 of cosine on their own."""
    agreement, worst_cos, report = _mobilenet_acceptance()
    print(f"\nmobilenet_v1_0.25_128 default: top-1 agreement {agreement:.1%}, worst output cosine {worst_cos:.5f}")
    assert agreement >= 0.95 and worst_cos >= 0.97



def _fit_as_nncase_writes_it(xs, ys, segments=15):
    """nncase piecewise_regression::fit transcribed literally (a list of segments, rescanned after each merge)."""
    f = np.float32
    order = np.argsort(xs, kind="stable")
    xs, ys = xs[order], ys[order]
    segs = [[xs[i], xs[i + 1], f(f(ys[i + 1] - ys[i]) / f(xs[i + 1] - xs[i])), ys[i]] for i in range(len(xs) - 1)]
    while len(segs) > segments:
        gaps = [abs(f(segs[i][2] - segs[i + 1][2])) for i in range(len(segs) - 1)]
        gaps = [np.inf if np.isnan(d) else d for d in gaps]
        i = int(np.argmin(gaps))
        a, b = segs[i], segs[i + 1]
        y0 = f(f(f(a[0] - a[0]) * a[2]) + a[3])
        y1 = f(f(f(b[1] - b[0]) * b[2]) + b[3])
        segs[i] = [a[0], b[1], f(f(y1 - y0) / f(b[1] - a[0])), a[3]]
        del segs[i + 1]
    return [tuple(float(v) for v in s) for s in segs]


@pytest.mark.parametrize("case", ["tanh", "steps", "random", "ties"])
def test_piecewise_regression_merges_in_nncase_order(case):
    """The heap-driven merge picks the same pair as nncase's rescan, ties (equal slope gaps) included."""
    rng = np.random.default_rng(11)
    xs = np.linspace(-3, 5, 300, dtype=np.float32)
    ys = {"tanh": np.tanh(xs), "steps": np.round(xs * 2) / 2, "random": rng.standard_normal(300),
          "ties": np.abs(xs)}[case].astype(np.float32)
    if case == "random":
        xs = np.sort(rng.standard_normal(300)).astype(np.float32)
        xs[100:103] = xs[100]                                                   # repeated xs: vertical steps
    with np.errstate(all="ignore"):
        want = _fit_as_nncase_writes_it(xs, ys)
    got = [tuple(s) for s in piecewise_regression(xs, ys)]
    assert repr(got) == repr(want)


def test_weight_equalisation_of_a_layer_with_no_positive_weight():
    """All weights <= 0: nncase's T.max/R.max is 0/0 (NaN, the compile stopped; the zoo's YuNet and 4 random
    oracle graphs hit it). The minima scale each channel instead, so it spans the layer's whole range."""
    from targets.k210.quantize import equalize_weights
    w = np.array([-0.5, -0.25, -0.1, -0.2], np.float32).reshape(2, 2, 1, 1)
    scaled, scales = equalize_weights(w)
    assert np.all(np.isfinite(scales)) and np.all(scales > 0)
    np.testing.assert_allclose(scaled.reshape(2, -1).min(axis=1), [-0.5, -0.5], rtol=1e-6)
    _, single = equalize_weights(np.full((1, 1, 1, 1), -0.5, np.float32))
    assert single.tolist() == [1.0]


@pytest.mark.parametrize("act_in_scale", [1e30, float("nan"), float("inf")])
def test_an_activation_table_beyond_the_kpu_fields_is_a_model_error(act_in_scale):
    """A fuzzed NaN quantization scale in a uint8 TFLite model once made x_start ~ -5.7e19: an int64 overflow
    inside quantization (exit 3). Damaged scales now stop the compile with a model error naming the field."""
    from compiler.errors import KpucError
    from compiler.quantization import QuantParamU8
    from targets.k210.quantize import kpu_activation
    q = QuantParamU8(0, 25.0)
    assert kpu_activation(1.0, q, q, (-np.inf, np.inf), ()).shape == (16, 4)   # a sane table still builds
    with pytest.raises(KpucError, match="x_start|no KPU form"):
        kpu_activation(act_in_scale, q, q, (-np.inf, np.inf), ())


def test_source_kpu_weights_give_back_a_uint8_models_own_codes():
    """Per-tensor uint8 weights (coral's MobileNets): the KPU layer stores the file's codes and zero point,
    with no equalisation; weights off the file's grid (a pass changed them) fall back to re-rounding."""
    from compiler.ir import QuantParam, Value
    from targets.k210.quantize import source_kpu_weights
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 256, (6, 4, 3, 3))
    q = QuantParam(scale=0.0123, zero_point=117)
    w = Value("w", TensorType((6, 4, 3, 3), "float32"), data=((codes - 117) * 0.0123).astype(np.float32), quant=q)
    wq, scales, stored = source_kpu_weights(w)
    np.testing.assert_array_equal(stored, codes)
    assert wq.zero_point == 117 and abs(1 / wq.scale - 0.0123) < 1e-9 and (scales == 1).all()
    w.data = (w.data * 1.01).astype(np.float32)
    assert source_kpu_weights(w) is None


def test_a_binary_ops_scalar_constant_gets_a_grid_that_holds_it():
    """MoveNet scales its input by 1/127.5: nncase's range fix-up widens a single value to 0.1 wide, so the
    constant became code 19 = 0.008035 (+2.4% on every pixel); kpuc's grid holds it at code 255."""
    from targets.k210.quantize import _constant_grid
    for c in (1 / 127.5, 1.0, -0.5, 3e-5, 250.0):
        q = _constant_grid(np.array([c], np.float32))
        code = int(quantize_u8(np.float32(c), q))
        assert code in (0, 255)
        assert abs((code - q.zero_point) / q.scale - c) <= 1e-6 * abs(c)
    nncase = get_quant_param((1 / 127.5, 1 / 127.5))
    assert abs(int(quantize_u8(np.float32(1 / 127.5), nncase)) / nncase.scale - 1 / 127.5) > 0.02 / 127.5


def test_division_by_a_constant_is_quantized_as_a_product():
    """x / c on uint8 codes: the runtime's div divides integer codes; kpuc multiplies by 1/c instead, within
    one output step of the float quotient."""
    g = Graph()
    x = g.input("x", TensorType((1, 4, 8, 8), "float32"))
    c = g.const(np.array([127.5], np.float32), name="c")
    y = g.add("binary", [x, c], name="div", op="div").output
    g.outputs = [y]
    rng = np.random.default_rng(0)
    samples = [{"x": rng.uniform(0, 255, (1, 4, 8, 8)).astype(np.float32)} for _ in range(4)]
    ranges = calibrate(g, samples)
    q = quantize_k210(g, ranges, output_quantize_threshold=0)
    node = next(n for n in q.nodes if n.op == "quantized_binary")
    assert node.attrs["op"] == "mul"
    xs = samples[0]["x"]
    got = QuantizedExecutor(q).run([xs])[q.outputs[0].name]
    step = 1 / QuantParamU8.from_ir(node.output.quant).scale
    assert np.abs(np.asarray(got, np.float64) - xs / 127.5).max() <= 1.01 * step
