"""Pre-quantized TFLite patterns from the zoo's int8 models, built here, against LiteRT's reference
kernels: `kpuc infer` (GridExecutor) gives LiteRT's exact output codes (0 steps) where LiteRT's
arithmetic is integer-deterministic."""
from __future__ import annotations

import numpy as np
import pytest
from test_tflite_ops import SAME, Op, T, build, litert, opts

from compiler.importers import import_model
from compiler.model_quant import GridExecutor

R = np.random.default_rng(12)




def _nchw(a: np.ndarray) -> np.ndarray:
    return a.transpose(0, 3, 1, 2) if a.ndim == 4 else a


def _nhwc(a: np.ndarray) -> np.ndarray:
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


def kpuc_codes(tmp_path, model: bytes, feeds: list[np.ndarray]) -> list[np.ndarray]:
    """`kpuc infer`'s outputs on the model's integer inputs, as the model's output codes."""
    path = tmp_path / "m.tflite"
    path.write_bytes(model)
    graph = import_model(path)
    xs = [_nchw((x.astype(np.float64) - v.quant.zero_point) * v.quant.scale).astype(np.float32)
          for x, v in zip(feeds, graph.inputs)]
    out = GridExecutor(graph).run(xs)
    return [np.rint(_nhwc(out[v.name].astype(np.float64)) / v.quant.scale).astype(int) + v.quant.zero_point
            for v in graph.outputs]


def steps(tmp_path, model: bytes, feeds: list[np.ndarray]) -> int:
    want = litert(model, feeds)
    got = kpuc_codes(tmp_path, model, feeds)
    assert all(w.std() > 0 for w in want)     # the test model is not saturated
    return max(int(np.abs(g - w.astype(int)).max()) for g, w in zip(got, want))


def _int8(shape) -> np.ndarray:
    return R.integers(-128, 128, shape).astype(np.int8)


def test_fully_connected_on_a_4d_int8_input_is_exact(tmp_path):
    """micro_speech: FULLY_CONNECTED straight on a 4-D int8 activation; the importer's flatten must keep
    the int8 grid (without it the layer ran as a hybrid one, re-quantized on the fly: 1-2 steps)."""
    w = _int8((4, 60))
    b = R.integers(-3000, 3000, 4).astype(np.int32)
    tensors = [T("x", (1, 4, 5, 3), "int8", scale=(0.1,), zero_point=(-128,)),
               T("w", w.shape, "int8", w, scale=(0.0005,), zero_point=(0,)),
               T("b", (4,), "int32", b, scale=(0.1 * 0.0005,), zero_point=(0,)),
               T("y", (1, 4), "int8", scale=(0.09,), zero_point=(14,))]
    model = build(tensors, [Op("FULLY_CONNECTED", ["x", "w", "b"], ["y"], opts("FullyConnectedOptions"))], ["x"], ["y"])
    assert max(steps(tmp_path, model, [_int8((1, 4, 5, 3))]) for _ in range(4)) == 0


def test_fully_connected_requantizes_with_one_rounding(tmp_path):
    """tiny_anomaly_ad01: LiteRT's FULLY_CONNECTED rounds x * q / 2^(31 - shift) once (TFLITE_SINGLE_ROUNDING);
    the gemmlowp double rounding put 1-3 steps on every dense layer (45 of 80000 outputs here)."""
    w = _int8((40, 64))
    b = R.integers(-3000, 3000, 40).astype(np.int32)
    tensors = [T("x", (2000, 64), "int8", scale=(0.05,), zero_point=(-5,)),
               T("w", w.shape, "int8", w, scale=(0.0021377,), zero_point=(0,)),
               T("b", (40,), "int32", b, scale=(0.05 * 0.0021377,), zero_point=(0,)),
               T("y", (2000, 40), "int8", scale=(0.3117,), zero_point=(3,))]
    model = build(tensors, [Op("FULLY_CONNECTED", ["x", "w", "b"], ["y"], opts("FullyConnectedOptions"))], ["x"], ["y"])
    assert steps(tmp_path, model, [_int8((2000, 64))]) == 0


def test_conv_and_depthwise_requantize_with_two_roundings(tmp_path):
    """tfmicro_mobilenet_v2_int8_pytorch: LiteRT's int8 CONV_2D and DEPTHWISE_CONV_2D (per-channel and
    per-tensor weights) still use gemmlowp's rounding high multiply then rounding shift; one rounding
    differs on 0.1-0.5% of the outputs."""
    cw, dw = _int8((16, 3, 3, 8)), _int8((1, 3, 3, 16))
    cs, ds = R.uniform(0.001, 0.003, 16), R.uniform(0.01, 0.03, 16)
    tensors = [T("x", (1, 40, 40, 8), "int8", scale=(0.05,), zero_point=(-5,)),
               T("cw", cw.shape, "int8", cw, scale=tuple(cs), zero_point=(0,) * 16, axis=0),
               T("cb", (16,), "int32", R.integers(-3000, 3000, 16).astype(np.int32), scale=tuple(0.05 * cs),
                 zero_point=(0,) * 16, axis=0),
               T("a", (1, 40, 40, 16), "int8", scale=(0.0733,), zero_point=(3,)),
               T("dw", dw.shape, "int8", dw, scale=tuple(ds), zero_point=(0,) * 16, axis=3),
               T("db", (16,), "int32", R.integers(-300, 300, 16).astype(np.int32), scale=tuple(0.0733 * ds),
                 zero_point=(0,) * 16, axis=0),
               T("y", (1, 40, 40, 16), "int8", scale=(0.0917,), zero_point=(-7,))]
    ops = [Op("CONV_2D", ["x", "cw", "cb"], ["a"], opts("Conv2DOptions", Padding=SAME, StrideH=1, StrideW=1)),
           Op("DEPTHWISE_CONV_2D", ["a", "dw", "db"], ["y"], opts("DepthwiseConv2DOptions", Padding=SAME, StrideH=1,
                                                                 StrideW=1, DepthMultiplier=1))]
    model = build(tensors, ops, ["x"], ["a", "y"])
    assert max(steps(tmp_path, model, [_int8((1, 40, 40, 8))]) for _ in range(2)) == 0


def _mean_model(out_scale: float, out_zero_point: int) -> bytes:
    tensors = [T("x", (1, 7, 7, 256), "int8", scale=(0.0705,), zero_point=(-9,)),
               T("axes", (2,), "int32", np.array([1, 2], np.int32)),
               T("y", (1, 1, 1, 256), "int8", scale=(out_scale,), zero_point=(out_zero_point,))]
    ops = [Op("MEAN", ["x", "axes"], ["y"], opts("ReducerOptions", KeepDims=True))]
    return build(tensors, ops, ["x"], ["y"])


def test_int8_global_mean_is_exact(tmp_path):
    """tfmicro_mobilenet_v2_int8_pytorch's 7x7 MEAN: LiteRT folds 1/49 into a fixed-point multiplier and
    rounds twice, so a mean of 23/49 step gives 1 (the rounded float mean gave 40 of 1280 outputs 1 off)."""
    x = R.integers(-128, 128, (1, 7, 7, 256))
    x = np.clip(x // 8 - 9, -128, 127).astype(np.int8)     # small codes near the zero point: means near ties
    for scale, zero_point in ((0.0705, -9), (0.031, 3)):
        assert steps(tmp_path, _mean_model(scale, zero_point), [x]) == 0


def test_int8_add_is_exact(tmp_path):
    """coral_tf2_mobilenet_v2's residual ADDs (these scales are its expanded_conv_8 add): LiteRT shifts
    both inputs left 20 bits, rescales each to twice the larger scale and the sum to the output, each a
    double-rounded fixed-point multiply; the rounded float sum was 1 step off on ~0.01% of the outputs
    (11 steps at the logits)."""
    shape = (1, 64, 64, 64)
    tensors = [T("a", shape, "int8", scale=(0.18986915051937103,), zero_point=(-6,)),
               T("b", shape, "int8", scale=(0.1699049174785614,), zero_point=(-31,)),
               T("y", shape, "int8", scale=(0.18754954636096954,), zero_point=(-14,))]
    model = build(tensors, [Op("ADD", ["a", "b"], ["y"], opts("AddOptions"))], ["a", "b"], ["y"])
    assert steps(tmp_path, model, [_int8(shape), _int8(shape)]) == 0


def test_uint8_input_of_an_int8_model_is_not_clipped(tmp_path):
    """coral_tf2_mobilenet_v2_ptq takes uint8 (zero point 127) and QUANTIZEs it to int8 (-1): the input's
    codes 128..255 are real, not saturated to the int8 model's -128..127 (which zeroed half the image)."""
    tensors = [T("x", (1, 8, 8, 3), "uint8", scale=(0.0078431,), zero_point=(127,)),
               T("q", (1, 8, 8, 3), "int8", scale=(0.0078431,), zero_point=(-1,)),
               T("b", (1, 8, 8, 3), "int8", scale=(0.05,), zero_point=(0,)),
               T("y", (1, 8, 8, 3), "int8", scale=(0.06,), zero_point=(1,))]
    ops = [Op("QUANTIZE", ["x"], ["q"]), Op("ADD", ["q", "b"], ["y"], opts("AddOptions"))]
    model = build(tensors, ops, ["x", "b"], ["y"])
    x = R.integers(0, 256, (1, 8, 8, 3)).astype(np.uint8)
    assert steps(tmp_path, model, [x, _int8((1, 8, 8, 3))]) == 0


def test_int8_model_without_a_negative_zero_point_saturates_as_int8(tmp_path):
    """No zero point below 0 does not make a model uint8 when its input is int8: its outputs saturate
    at 127, not 255 (half of this ADD's outputs were wrong)."""
    tensors = [T("a", (1, 16, 16, 8), "int8", scale=(0.14006493985652924,), zero_point=(3,)),
               T("b", (1, 16, 16, 8), "int8", scale=(0.10362372547388077,), zero_point=(15,)),
               T("y", (1, 16, 16, 8), "int8", scale=(0.15204428136348724,), zero_point=(3,))]
    model = build(tensors, [Op("ADD", ["a", "b"], ["y"], opts("AddOptions"))], ["a", "b"], ["y"])
    assert steps(tmp_path, model, [_int8((1, 16, 16, 8)), _int8((1, 16, 16, 8))]) == 0



def test_uint8_conv_multiplier_comes_from_a_float32_scale_product(tmp_path):
    """coral_mobilenet_v1_0.75's uint8 pointwise convs (these are its Conv2d_8 scales): LiteRT makes a
    per-tensor multiplier from s_x * s_w multiplied in float32 (GetQuantizedConvolutionMultipler), 63
    parts in 2^31 below the double product; at accumulator 7385 that moves the double rounding's first
    step off a tie (50, not 51). The accumulators here sweep 7285..7540 across it."""
    s_x, s_w = 0.023528477177023888, 0.00683765672147274
    tensors = [T("x", (1, 16, 16, 1), "uint8", scale=(s_x,), zero_point=(0,)),
               T("w", (1, 1, 1, 1), "uint8", np.array([140], np.uint8).reshape(1, 1, 1, 1), scale=(s_w,),
                 zero_point=(139,)),
               T("b", (1,), "int32", np.array([7385 - 100], np.int32), scale=(s_x * s_w,), zero_point=(0,)),
               T("y", (1, 16, 16, 1), "uint8", scale=(s_x,), zero_point=(0,))]
    ops = [Op("CONV_2D", ["x", "w", "b"], ["y"], opts("Conv2DOptions", Padding=SAME, StrideH=1, StrideW=1))]
    model = build(tensors, ops, ["x"], ["y"])
    assert steps(tmp_path, model, [np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)]) == 0


@pytest.mark.parametrize("dtype, zero_point", [("int8", -5), ("int8", 7), ("uint8", 128)])
def test_average_pool_and_mul_are_exact(tmp_path, dtype, zero_point):
    """LiteRT's AVERAGE_POOL_2D divides the sum of raw codes (zero point included) by the valid count with
    integer rounding, SAME padding not counted; MUL requantizes the product of (code - zero point)s with
    one double-rounded multiply. The rounded float results were 1 step off on 1-13% of the outputs."""
    info = np.iinfo(dtype)

    def codes(shape):
        return R.integers(info.min, info.max + 1, shape).astype(dtype)
    grid = dict(scale=(0.05,), zero_point=(zero_point,))
    pool = build([T("x", (1, 15, 16, 8), dtype, **grid), T("y", (1, 8, 8, 8), dtype, **grid)],
                 [Op("AVERAGE_POOL_2D", ["x"], ["y"], opts("Pool2DOptions", Padding=SAME, StrideH=2, StrideW=2,
                                                           FilterHeight=3, FilterWidth=2))], ["x"], ["y"])
    assert steps(tmp_path, pool, [codes((1, 15, 16, 8))]) == 0
    mul = build([T("a", (1, 16, 16, 8), dtype, **grid), T("b", (1, 16, 16, 8), dtype, scale=(0.07,),
                                                         zero_point=(zero_point,)),
                 T("y", (1, 16, 16, 8), dtype, scale=(0.4,), zero_point=(zero_point,))],
                [Op("MUL", ["a", "b"], ["y"], opts("MulOptions"))], ["a", "b"], ["y"])
    assert steps(tmp_path, mul, [codes((1, 16, 16, 8)), codes((1, 16, 16, 8))]) == 0


@pytest.mark.parametrize("dtype, zero_point, in_scale, out_scale, out_zero_point",
                         [("int8", -5, 0.1, 0.03, -5), ("uint8", 128, 0.1, 0.03, 128),
                          ("int8", -5, 0.003, 0.002, -10), ("int8", 10, 0.5, 0.3, -100)])
def test_hard_swish_is_exact(tmp_path, dtype, zero_point, in_scale, out_scale, out_zero_point):
    """LiteRT's quantized HARD_SWISH works in 16-bit fixed point (a rounding and a truncating high multiply,
    the relu-ish factor shifted left or right by the input scale); the rounded float hard swish was 1 step
    off on ~2% of the outputs (the first two cases). The scales cover both shift directions."""
    info = np.iinfo(dtype)
    model = build([T("x", (64, 100), dtype, scale=(in_scale,), zero_point=(zero_point,)),
                   T("y", (64, 100), dtype, scale=(out_scale,), zero_point=(out_zero_point,))],
                  [Op("HARD_SWISH", ["x"], ["y"])], ["x"], ["y"])
    assert steps(tmp_path, model, [R.integers(info.min, info.max + 1, (64, 100)).astype(dtype)]) == 0


@pytest.mark.parametrize("dtype, zero_point", [("int8", -5), ("uint8", 120)])
def test_leaky_relu_is_exact_and_softmax_logistic_tanh_stay_exact(tmp_path, dtype, zero_point):
    """LiteRT's quantized LEAKY_RELU rescales each side with its own double-rounded multiplier (the rounded
    float was 1 step off on ~3% of the outputs); SOFTMAX, LOGISTIC and TANH already round like LiteRT."""
    info = np.iinfo(dtype)
    x = R.integers(info.min, info.max + 1, (32, 256)).astype(dtype)
    grid_in = dict(scale=(0.05,), zero_point=(zero_point,))
    leaky = build([T("x", x.shape, dtype, **grid_in), T("y", x.shape, dtype, scale=(0.0613,), zero_point=(zero_point,))],
                  [Op("LEAKY_RELU", ["x"], ["y"], opts("LeakyReluOptions", Alpha=0.1))], ["x"], ["y"])
    assert steps(tmp_path, leaky, [x]) == 0
    low = info.min                      # the output grids LiteRT requires: [0, 1) and [-1, 1) on 256 codes
    for op, options, scale, out_zero in (("SOFTMAX", opts("SoftmaxOptions", Beta=1.0), 1 / 256, low),
                                         ("LOGISTIC", None, 1 / 256, low), ("TANH", None, 1 / 128, low + 128)):
        model = build([T("x", x.shape, dtype, **grid_in), T("y", x.shape, dtype, scale=(scale,), zero_point=(out_zero,))],
                      [Op(op, ["x"], ["y"], options)], ["x"], ["y"])
        assert steps(tmp_path, model, [x]) == 0, op


def test_int8_split_feeding_an_add_runs(tmp_path):
    """coral_movenet_lightning_ptq: an int8 SPLIT (several outputs) made the integer-kernel lookup ask for the
    node's single output and fail; a split only moves codes."""
    q = dict(scale=(0.05,), zero_point=(3,))
    tensors = [T("x", (1, 4, 4, 6), "int8", **q), T("axis", (), "int32", data=np.array(3, np.int32)),
               T("a", (1, 4, 4, 3), "int8", **q), T("b", (1, 4, 4, 3), "int8", **q),
               T("y", (1, 4, 4, 3), "int8", scale=(0.07,), zero_point=(-5,))]
    model = build(tensors, [Op("SPLIT", ["axis", "x"], ["a", "b"], opts("SplitOptions", NumSplits=2)),
                            Op("ADD", ["a", "b"], ["y"], opts("AddOptions"))], ["x"], ["y"])
    assert steps(tmp_path, model, [_int8((1, 4, 4, 6))]) == 0
