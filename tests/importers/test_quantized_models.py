"""Pre-quantized and hybrid TFLite models, built here, against LiteRT's reference kernels:
`kpuc infer`'s GridExecutor within one int8 step (raw codes), compile without --dataset, and the
DS-CNN pattern (hybrid int8-weight conv 10x4 stride 2 SAME, 25x5 average pool) at float tolerance."""
from __future__ import annotations

import numpy as np
import pytest
from test_tflite_ops import RELU, RELU6, SAME, VALID, Op, T, build, litert, opts

from compiler.executor import Executor
from compiler.importers import import_model
from compiler.model_quant import GridExecutor, is_prequantized
from compiler.pipeline import CompileOptions, compile_model
from targets import get_target
from targets.k210.kernels import QUANTIZED_KERNELS

R = np.random.default_rng(7)


def _compile(tmp_path, model: bytes, target: str = "k210", samples=None, **options):
    """The graph `kpuc compile` makes of a model built here (CompileOptions `options`); its kmodel is written
    beside it, so that a one-input model also runs in the oracle (tests/conftest.py)."""
    path = tmp_path / "model.tflite"
    path.write_bytes(model)
    compiled = compile_model(path, CompileOptions(target=target, **options), get_target(target), samples=samples)
    (tmp_path / "model.kmodel").write_bytes(compiled.kmodel)
    return compiled.graph


def _run(graph, *feeds_nhwc: np.ndarray) -> np.ndarray:
    """The compiled graph on NHWC float feeds, its output (float64) back in the file's NHWC layout."""
    got = Executor(graph, QUANTIZED_KERNELS).run([np.asarray(x, np.float32).transpose(0, 3, 1, 2) for x in feeds_nhwc])
    y = np.asarray(got[graph.outputs[0].name], np.float64)
    return y.transpose(0, 2, 3, 1) if y.ndim == 4 else y




def _int8_classifier(weights: dict | None = None, rng: np.random.Generator = R) -> bytes:
    """int8 in -> conv 3x3 s2 SAME ReLU6 (per-channel) -> depthwise 3x3 ReLU (per-channel) -> avg pool
    -> fully connected (per-tensor) -> int8 logits, all with TFLite's int8 conventions; `weights` gets
    the file's weight codes (w1 OHWI, w2 1HWC)."""
    R = rng
    s_x, s_a, s_b, s_p, s_y = 0.02, 0.025, 0.03, 0.03, 0.1
    w1s, w2s, w3s = R.uniform(0.002, 0.01, 8), R.uniform(0.01, 0.05, 8), 0.01
    w1 = R.integers(-127, 128, (8, 3, 3, 3)).astype(np.int8)
    w2 = R.integers(-127, 128, (1, 3, 3, 8)).astype(np.int8)
    w3 = R.integers(-127, 128, (5, 8)).astype(np.int8)
    b1 = R.integers(-2000, 2000, 8).astype(np.int32)
    b2 = R.integers(-300, 300, 8).astype(np.int32)
    b3 = R.integers(-500, 500, 5).astype(np.int32)
    if weights is not None:
        weights.update(w1=w1, w2=w2)
    tensors = [
        T("x", (1, 16, 20, 3), "int8", scale=(s_x,), zero_point=(-3,)),
        T("w1", w1.shape, "int8", w1, scale=tuple(w1s), zero_point=(0,) * 8, axis=0),
        T("b1", (8,), "int32", b1, scale=tuple(s_x * w1s), zero_point=(0,) * 8, axis=0),
        T("a", (1, 8, 10, 8), "int8", scale=(s_a,), zero_point=(-128,)),
        T("w2", w2.shape, "int8", w2, scale=tuple(w2s), zero_point=(0,) * 8, axis=3),
        T("b2", (8,), "int32", b2, scale=tuple(s_a * w2s), zero_point=(0,) * 8, axis=0),
        T("b", (1, 8, 10, 8), "int8", scale=(s_b,), zero_point=(-128,)),
        T("p", (1, 1, 1, 8), "int8", scale=(s_p,), zero_point=(-128,)),
        T("f", (1, 8), "int8", scale=(s_p,), zero_point=(-128,)),
        T("shape", (2,), "int32", np.array([1, 8], np.int32)),
        T("w3", w3.shape, "int8", w3, scale=(w3s,), zero_point=(0,)),
        T("b3", (5,), "int32", b3, scale=(s_p * w3s,), zero_point=(0,)),
        T("y", (1, 5), "int8", scale=(s_y,), zero_point=(4,)),
    ]
    ops = [
        Op("CONV_2D", ["x", "w1", "b1"], ["a"], opts("Conv2DOptions", Padding=SAME, StrideH=2, StrideW=2,
                                                    FusedActivationFunction=RELU6)),
        Op("DEPTHWISE_CONV_2D", ["a", "w2", "b2"], ["b"], opts("DepthwiseConv2DOptions", Padding=SAME, StrideH=1,
                                                              StrideW=1, DepthMultiplier=1, FusedActivationFunction=RELU)),
        Op("AVERAGE_POOL_2D", ["b"], ["p"], opts("Pool2DOptions", Padding=VALID, StrideH=1, StrideW=1,
                                                 FilterHeight=8, FilterWidth=10)),
        Op("RESHAPE", ["p", "shape"], ["f"]),
        Op("FULLY_CONNECTED", ["f", "w3", "b3"], ["y"], opts("FullyConnectedOptions")),
    ]
    return build(tensors, ops, ["x"], ["y"])


def test_int8_model_infer_within_one_step_oflitert(tmp_path):
    model = _int8_classifier()
    path = tmp_path / "int8.tflite"
    path.write_bytes(model)
    graph = import_model(path)
    assert is_prequantized(graph)
    q_in, q_out = graph.inputs[0].quant, graph.outputs[0].quant
    run = GridExecutor(graph)
    worst = []
    for seed in range(4):
        xq = np.random.default_rng(seed).integers(-128, 128, (1, 16, 20, 3)).astype(np.int8)
        (expected,) = litert(model, [xq])
        x = ((xq.astype(np.float32) - q_in.zero_point) * q_in.scale).transpose(0, 3, 1, 2)
        got = run.run([x])[graph.outputs[0].name]
        codes = np.rint(got / q_out.scale).astype(int) + q_out.zero_point
        worst.append(int(np.abs(codes - expected.astype(int)).max()))
        assert expected.std() > 0  # the test model is not saturated
    assert max(worst) <= 1, worst


def test_int8_model_compiles_without_dataset_on_its_own_ranges(tmp_path):
    path = tmp_path / "int8.tflite"
    path.write_bytes(_int8_classifier())
    result = compile_model(path, CompileOptions(output_quantize_threshold=0), get_target("k210"))
    assert result.summary["kpu_ops"] >= 2        # both convs on the KPU
    quant = [n.meta["kpu_quant"] for n in result.graph.nodes if "kpu_quant" in n.meta]
    # the first layer's output grid is the model's own (int8 zero point -128 -> uint8 0, scale 0.025)
    assert quant and quant[0]["output"].zero_point == 0
    assert abs(1 / quant[0]["output"].scale - 0.025) < 1e-6


def test_float_model_without_dataset_still_needs_one(tmp_path):
    from compiler.errors import KpucError
    from compiler.pipeline import CompileOptions, compile_model
    from targets import get_target
    w = R.standard_normal((4, 3, 3, 3)).astype(np.float32)
    model = build([T("x", (1, 8, 8, 3)), T("w", w.shape, data=w), T("b", (4,), data=np.zeros(4, np.float32)),
                   T("y", (1, 8, 8, 4))],
                  [Op("CONV_2D", ["x", "w", "b"], ["y"], opts("Conv2DOptions", Padding=SAME, StrideH=1, StrideW=1))],
                  ["x"], ["y"])
    path = tmp_path / "f.tflite"
    path.write_bytes(model)
    with pytest.raises(KpucError, match="needs a calibration --dataset"):
        compile_model(path, CompileOptions(), get_target("k210"))


def test_ds_cnn_hybrid_pattern_matcheslitert(tmp_path):
    """DS-CNN's first layer: int8 weights on a float input (TFLite quantizes the input on the fly),
    10x4 kernel, stride 2, SAME on 49x10, then a depthwise and the 25x5 average pool."""
    w1 = R.integers(-127, 128, (16, 10, 4, 1)).astype(np.int8)
    w2 = R.integers(-127, 128, (1, 3, 3, 16)).astype(np.int8)
    tensors = [T("x", (1, 49, 10, 1)),
               T("w1", w1.shape, "int8", w1, scale=(0.01,), zero_point=(0,)),
               T("b1", (16,), data=R.standard_normal(16).astype(np.float32)),
               T("a", (1, 25, 5, 16)),
               T("w2", w2.shape, "int8", w2, scale=tuple(R.uniform(0.005, 0.02, 16)), zero_point=(0,) * 16, axis=3),
               T("b2", (16,), data=R.standard_normal(16).astype(np.float32)),
               T("c", (1, 25, 5, 16)), T("y", (1, 1, 1, 16))]
    ops = [Op("CONV_2D", ["x", "w1", "b1"], ["a"], opts("Conv2DOptions", Padding=SAME, StrideH=2, StrideW=2,
                                                       FusedActivationFunction=RELU)),
           Op("DEPTHWISE_CONV_2D", ["a", "w2", "b2"], ["c"], opts("DepthwiseConv2DOptions", Padding=SAME, StrideH=1,
                                                                 StrideW=1, DepthMultiplier=1, FusedActivationFunction=RELU)),
           Op("AVERAGE_POOL_2D", ["c"], ["y"], opts("Pool2DOptions", Padding=VALID, StrideH=25, StrideW=5,
                                                    FilterHeight=25, FilterWidth=5))]
    model = build(tensors, ops, ["x"], ["y"])
    path = tmp_path / "hybrid.tflite"
    path.write_bytes(model)
    x = np.random.default_rng(1).standard_normal((1, 49, 10, 1)).astype(np.float32) * 3
    (expected,) = litert(model, [x])
    graph = import_model(path)
    assert is_prequantized(graph)
    got = GridExecutor(graph).run([x.transpose(0, 3, 1, 2)])[graph.outputs[0].name].transpose(0, 2, 3, 1)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def _calibration(count: int = 6) -> list[dict]:
    rng = np.random.default_rng(3)
    return [{"x": ((rng.integers(-128, 128, (1, 3, 16, 20)) + 3) * 0.02).astype(np.float32)} for _ in range(count)]


def test_int8_model_with_a_dataset_keeps_its_own_weight_codes_and_grids(tmp_path):
    """A dataset does not re-round a pre-quantized model: the KPU layers hold the file's int8 weight codes
    (+128, per-channel steps in the batch norm), their grids are the model's, and the compiled graph
    stays within a few codes of LiteRT."""
    tensors: dict = {}
    model = _int8_classifier(tensors, np.random.default_rng(11))
    graph = _compile(tmp_path, model, samples=_calibration(), output_quantize_threshold=0)
    layers = [n for n in graph.nodes if n.op == "kpu_conv2d_q"]
    assert len(layers) >= 2
    w1 = tensors["w1"].transpose(0, 3, 1, 2)                     # OHWI -> OIHW
    w2 = tensors["w2"].transpose(3, 0, 1, 2)                     # 1HWC -> C1HW
    np.testing.assert_array_equal(layers[0].inputs[1].data.astype(int), w1.astype(int) + 128)
    np.testing.assert_array_equal(layers[1].inputs[1].data.astype(int), w2.astype(int) + 128)
    assert abs(1 / layers[0].meta["kpu_quant"]["output"].scale - 0.025) < 1e-6   # the model's grid, not the data's
    worst = 0
    for seed in range(4):
        xq = np.random.default_rng(seed).integers(-128, 128, (1, 16, 20, 3)).astype(np.int8)
        (expected,) = litert(model, [xq])
        codes = np.rint(_run(graph, (xq.astype(np.float32) + 3) * 0.02) / 0.1).astype(int) + 4
        worst = max(worst, int(np.abs(codes - expected.astype(int)).max()))
    # 4 codes of the logits at this seed (1-5 over other seeds, the same with re-rounded weights): the KPU's
    # batch-norm and table rounding and the CPU's pool and FC, not the weights
    assert worst <= 4, worst


def test_a_fused_sigmoid_layer_keeps_a_zero_to_one_output_grid(tmp_path):
    """int8 conv -> LOGISTIC (MoveNet's heatmap heads): the KPU layer ends at the model's conv grid and a
    256-entry table applies the sigmoid to those codes, as LiteRT's LOGISTIC reads the conv's int8 codes (the
    KPU's own table, on the unrounded sum, put MoveNet's heatmaps up to 61 codes off); the sigmoid's output is
    on the model's grid for it (1/256), not the conv's -15..11, which left every heatmap code at one end."""
    rng = np.random.default_rng(4)
    w = rng.integers(-127, 128, (4, 3, 3, 8)).astype(np.int8)
    ws = rng.uniform(0.01, 0.02, 4)
    b = rng.integers(-500, 500, 4).astype(np.int32)
    tensors = [T("x", (1, 12, 12, 8), "int8", scale=(0.05,), zero_point=(0,)),
               T("w", w.shape, "int8", w, scale=tuple(ws), zero_point=(0,) * 4, axis=0),
               T("b", (4,), "int32", b, scale=tuple(0.05 * ws), zero_point=(0,) * 4, axis=0),
               T("c", (1, 12, 12, 4), "int8", scale=(0.1,), zero_point=(20,)),
               T("y", (1, 12, 12, 4), "int8", scale=(1 / 256,), zero_point=(-128,))]
    ops = [Op("CONV_2D", ["x", "w", "b"], ["c"], opts("Conv2DOptions", Padding=SAME, StrideH=1, StrideW=1)),
           Op("LOGISTIC", ["c"], ["y"])]
    model = build(tensors, ops, ["x"], ["y"])
    graph = _compile(tmp_path, model)
    layers = [n for n in graph.nodes if n.op == "kpu_conv2d_q"]
    assert layers and layers[-1].output.quant.scale == pytest.approx(0.1)          # the model's conv grid ...
    (table,) = [n for n in graph.nodes if n.op == "table_lookup1d" and n.inputs[0] is layers[-1].output]
    assert table.output.quant.scale == pytest.approx(1 / 256)                     # ... then the sigmoid's own
    worst = 0
    for seed in range(3):
        xq = np.random.default_rng(seed).integers(-128, 128, (1, 12, 12, 8)).astype(np.int8)
        (expected,) = litert(model, [xq])
        y = _run(graph, (xq * 0.05).astype(np.float32))
        worst = max(worst, int(np.abs(np.rint(y * 256) - 128 - expected.astype(int)).max()))
    assert worst <= 2, worst


@pytest.mark.parametrize("target", ["k210", "cpu"])
@pytest.mark.parametrize("activation", ["relu", "relu6"])
def test_a_relu_layer_on_a_grid_reaching_past_its_clamps_still_clamps(tmp_path, target, activation):
    """int8 conv + fused ReLU or ReLU6 whose output grid spans [-0.85, 11.9] (zero point -111: PyTorch exports
    keep such grids): LiteRT clamps at the codes of 0 (and 6). The KPU's table must hold its clamps below its
    first segment (nncase writes code 0, the grid's -0.85) and above its last (the sampled identity went on
    rising past 6), and a CPU quantized conv, which can only saturate at its codes 0 and 255, is followed by a
    table clamping its codes; the grid stays the model's, so the layers after it read LiteRT's codes."""
    rng = np.random.default_rng(5)
    w = rng.integers(-127, 128, (6, 3, 3, 8)).astype(np.int8)
    b = rng.integers(-4000, 4000, 6).astype(np.int32)
    s_y, z_y = 0.05, -111
    tensors = [T("x", (1, 12, 12, 8), "int8", scale=(0.05,), zero_point=(0,)),      # per-tensor weights: the
               T("w", w.shape, "int8", w, scale=(0.015,), zero_point=(0,)),        # CPU conv's own codes too
               T("b", (6,), "int32", b, scale=(0.05 * 0.015,), zero_point=(0,)),
               T("y", (1, 12, 12, 6), "int8", scale=(s_y,), zero_point=(z_y,))]
    act = RELU if activation == "relu" else RELU6
    model = build(tensors, [Op("CONV_2D", ["x", "w", "b"], ["y"], opts("Conv2DOptions", Padding=SAME, StrideH=1,
                                                                    StrideW=1, FusedActivationFunction=act))],
                  ["x"], ["y"])
    graph = _compile(tmp_path, model, target, output_quantize_threshold=0)
    assert any(n.op == ("kpu_conv2d_q" if target == "k210" else "quantized_conv2d") for n in graph.nodes)
    top = round(6 / s_y) + z_y
    worst, zeros, tops = 0, 0, 0
    for seed in range(3):
        xq = np.random.default_rng(seed).integers(-128, 128, (1, 12, 12, 8)).astype(np.int8)
        (expected,) = litert(model, [xq])
        codes = np.rint(_run(graph, (xq * 0.05).astype(np.float32)) / s_y) + z_y
        zeros += int((expected == z_y).sum())
        tops += int((expected == top).sum())
        worst = max(worst, int(np.abs(codes - expected.astype(int)).max()))
    assert zeros > 100                        # the ReLU clamps a good share of the outputs
    if activation == "relu6":
        assert tops > 100                     # and so does ReLU6's upper clamp
    assert worst <= 1, worst


def test_a_cpu_depthwise_conv_keeps_each_channels_own_int8_grid(tmp_path):
    """A depthwise conv left to the CPU (the cpu target here; on the K210, one too big for KPU RAM, as in
    MobileNet v2's first 112x112 blocks) with per-channel int8 weights whose steps span 30x: the runtime's
    quantized_conv2d has one weight grid, and one grid for all channels re-rounded the fine channels' weights
    (here up to 9 codes off LiteRT). One conv per channel keeps each channel's own codes and multiplier."""
    rng = np.random.default_rng(3)
    steps = np.geomspace(0.001, 0.03, 8)
    w = rng.integers(-127, 128, (1, 3, 3, 8)).astype(np.int8)
    b = rng.integers(-500, 500, 8).astype(np.int32)
    s_x, s_y, z_y = 0.04, 0.02, -5
    tensors = [T("x", (1, 10, 10, 8), "int8", scale=(s_x,), zero_point=(2,)),
               T("w", w.shape, "int8", w, scale=tuple(steps), zero_point=(0,) * 8, axis=3),
               T("b", (8,), "int32", b, scale=tuple(s_x * steps), zero_point=(0,) * 8, axis=0),
               T("y", (1, 10, 10, 8), "int8", scale=(s_y,), zero_point=(z_y,))]
    model = build(tensors, [Op("DEPTHWISE_CONV_2D", ["x", "w", "b"], ["y"],
                               opts("DepthwiseConv2DOptions", Padding=SAME, StrideH=1, StrideW=1, DepthMultiplier=1))],
                  ["x"], ["y"])
    graph = _compile(tmp_path, model, "cpu", output_quantize_threshold=0)
    assert sum(n.op == "quantized_conv2d" for n in graph.nodes) == 8
    off, worst = 0.0, 0
    for seed in range(3):
        xq = np.random.default_rng(seed).integers(-128, 128, (1, 10, 10, 8)).astype(np.int8)
        (expected,) = litert(model, [xq], kernels="default")
        codes = np.rint(_run(graph, ((xq.astype(np.float32) - 2) * s_x)) / s_y) + z_y
        off += float((codes != expected).mean()) / 3
        worst = max(worst, int(np.abs(codes - expected.astype(int)).max()))
    assert worst <= 1 and off < 0.002, (worst, off)


def test_a_pre_quantized_add_rounds_like_litert(tmp_path):
    """A pre-quantized model's ADD of two int8 grids: LiteRT's default kernels (XNNPACK) give the exactly
    rounded sum; nncase's common unit for the runtime's quantized add rounds each operand to whole units
    first (here 0.95% of the 65536 code pairs one code off). For models with their own grids kpuc takes the
    unit closest to exact (closest_binary_params): nncase's 16-bit operand muls allowed 0.04% off; the
    runtime's int32 fields hold a unit of 2^-22 output codes here, with no code off."""
    qa, qb, qy = (0.0371, -7), (0.0523, 12), (0.0689, -3)
    tensors = [T("a", (1, 256, 256, 1), "int8", scale=(qa[0],), zero_point=(qa[1],)),
               T("b", (1, 256, 256, 1), "int8", scale=(qb[0],), zero_point=(qb[1],)),
               T("y", (1, 256, 256, 1), "int8", scale=(qy[0],), zero_point=(qy[1],))]
    model = build(tensors, [Op("ADD", ["a", "b"], ["y"], opts("AddOptions"))], ["a", "b"], ["y"])
    a, b = (g.astype(np.int8) for g in np.meshgrid(np.arange(-128, 128), np.arange(-128, 128), indexing="ij"))
    a, b = a.reshape(1, 256, 256, 1), b.reshape(1, 256, 256, 1)
    (expected,) = litert(model, [a, b], kernels="default")
    graph = _compile(tmp_path, model, output_quantize_threshold=0)
    assert any(n.op == "quantized_binary" for n in graph.nodes)
    y = _run(graph, *((v.astype(np.float32) - z) * s for v, (s, z) in ((a, qa), (b, qb))))
    codes = np.rint(y / qy[0]) + qy[1]
    off = float((codes != expected).mean())
    assert off == 0, off


def test_a_pre_quantized_add_of_a_constant_runs_exactly_in_the_oracle(tmp_path):
    """The exact add's fine unit (operand muls up to 2^30, an output shift of 22) on all 65536 code pairs, one
    input so that the oracle runs the kmodel too (tests/conftest.py): no code off LiteRT's."""
    qa, qb, qy = (0.0371, -7), (0.0523, 12), (0.0689, -3)
    a, c = (g.astype(np.int8).reshape(1, 256, 256, 1)
            for g in np.meshgrid(np.arange(-128, 128), np.arange(-128, 128), indexing="ij"))
    tensors = [T("a", (1, 256, 256, 1), "int8", scale=(qa[0],), zero_point=(qa[1],)),
               T("c", (1, 256, 256, 1), "int8", c, scale=(qb[0],), zero_point=(qb[1],)),
               T("y", (1, 256, 256, 1), "int8", scale=(qy[0],), zero_point=(qy[1],))]
    model = build(tensors, [Op("ADD", ["a", "c"], ["y"], opts("AddOptions"))], ["a"], ["y"])
    (expected,) = litert(model, [a], kernels="default")
    graph = _compile(tmp_path, model, output_quantize_threshold=0)
    assert any(n.op == "quantized_binary" for n in graph.nodes)
    codes = np.rint(_run(graph, (a.astype(np.float32) - qa[1]) * qa[0]) / qy[0]) + qy[1]
    assert (codes == expected).all(), float((codes != expected).mean())


def test_a_pre_quantized_sub_rounds_its_halves_up_like_litert(tmp_path):
    """MoveNet's input scaling x/127.5 - 1 on int8 grids: every result is a half (code - 127.5 + 127), and the
    model's float32 scales (1/127.5 and 1/255 stored as 0.0078431377 and 0.0039215689) put each a hair below
    it in exact arithmetic. LiteRT's fixed point does not see the hair and rounds each half up; so does kpuc
    (closest_binary_params' TIE_CODES), where the hair had put every code one below LiteRT's."""
    s_x, s_c = 0.007843137718737125, 0.003921568859368563
    x = np.arange(-128, 128).astype(np.int8).reshape(1, 16, 16, 1)
    tensors = [T("x", (1, 16, 16, 1), "int8", scale=(s_x,), zero_point=(-128,)),
               T("one", (1, 1, 1, 1), "int8", np.full((1, 1, 1, 1), 127, np.int8), scale=(s_c,), zero_point=(-128,)),
               T("y", (1, 16, 16, 1), "int8", scale=(s_x,), zero_point=(-1,))]
    model = build(tensors, [Op("SUB", ["x", "one"], ["y"], opts("SubOptions"))], ["x"], ["y"])
    (expected,) = litert(model, [x], kernels="default")
    graph = _compile(tmp_path, model, output_quantize_threshold=0)
    assert any(n.op == "quantized_binary" for n in graph.nodes)
    codes = np.rint(_run(graph, (x.astype(np.float32) + 128) * s_x) / s_x) - 1
    assert (codes == expected).all(), int((codes != expected).sum())


def _wide_conv(z_x: int, z_y: int, s_y: float) -> bytes:
    """int8 conv 3x3 (per-tensor weights, no activation) from a grid of step 0.1 to one of step `s_y`."""
    w = np.random.default_rng(9).integers(-127, 128, (6, 3, 3, 8)).astype(np.int8)
    tensors = [T("x", (1, 10, 10, 8), "int8", scale=(0.1,), zero_point=(z_x,)),
               T("w", w.shape, "int8", w, scale=(0.1,), zero_point=(0,)),
               T("b", (6,), "int32", np.zeros(6, np.int32), scale=(0.01,), zero_point=(0,)),
               T("y", (1, 10, 10, 6), "int8", scale=(s_y,), zero_point=(z_y,))]
    return build(tensors, [Op("CONV_2D", ["x", "w", "b"], ["y"], opts("Conv2DOptions", Padding=SAME, StrideH=1,
                                                                   StrideW=1))], ["x"], ["y"])


def _codes_off_litert(tmp_path, model: bytes, z_x: int, z_y: int, s_y: float, target: str = "k210"):
    """(worst code difference from LiteRT, how many LiteRT codes lie past ±100 steps from zero)."""
    graph = _compile(tmp_path, model, target, output_quantize_threshold=0)
    worst, past = 0, 0
    for seed in range(3):
        xq = np.random.default_rng(seed).integers(-128, 128, (1, 10, 10, 8)).astype(np.int8)
        (expected,) = litert(model, [xq])
        codes = np.rint(_run(graph, ((xq.astype(np.float32) - z_x) * 0.1)) / s_y) + z_y
        past += int((np.abs(expected.astype(int) - z_y) > 100).sum())
        worst = max(worst, int(np.abs(codes - expected.astype(int)).max()))
    return worst, past


def test_a_pre_quantized_grid_wider_than_a_thousand_stays_the_models(tmp_path):
    """nncase clamps every range to ±1000 before it makes a grid; a pre-quantized model's own grid may be wider
    (MoveNet's FPN depthwise output spans -7555..5550), and clamped it put every code on another grid than
    LiteRT's and lost the values past 1000. The model's grid [-1250, 1300] here stays as it is."""
    worst, past = _codes_off_litert(tmp_path, _wide_conv(-3, -3, 10.0), -3, -3, 10.0)
    assert past > 10                          # values past ±1000 occur ...
    assert worst <= 1, worst                  # ... and every code is LiteRT's, or one off


@pytest.mark.parametrize("target", ["k210", "cpu"])
def test_a_symmetric_int8_model_keeps_its_negative_values(tmp_path, target):
    """An int8 model whose every zero point is 0 (symmetric activations) was taken for a uint8 one (no
    negative zero point), so its grids started at 0 and every negative value was clipped; its int8 input now
    says int8, as the module docstring of compiler/model_quant.py always claimed."""
    worst, past = _codes_off_litert(tmp_path, _wide_conv(0, 0, 1.0), 0, 0, 1.0, target)
    assert past > 10
    assert worst <= 1, worst


def test_a_pre_quantized_conv_rounds_its_halves_like_litert(tmp_path):
    """A per-tensor int8 conv + ReLU whose multiplier s_in·s_w/s_y is 3/70 (0.05 · 0.015 / 0.0175): one
    accumulator value in 70 lands exactly on a half. LiteRT's default kernels round it to even (a float32
    product); the KPU's batch-norm floor shift leaves it one unit below and its table rounds it down, so kpuc
    raises each channel's norm_add where that agrees with exact rounding more often (halves_like_the_model)."""
    rng = np.random.default_rng(11)
    w = rng.integers(-3, 4, (8, 3, 3, 8)).astype(np.int8)      # small: the outputs stay inside the grid
    b = rng.integers(0, 1500, 8).astype(np.int32)       # most outputs above the ReLU's 0
    s_y, z_y = 0.0175, -128
    tensors = [T("x", (1, 16, 16, 8), "int8", scale=(0.05,), zero_point=(3,)),
               T("w", w.shape, "int8", w, scale=(0.015,), zero_point=(0,)),
               T("b", (8,), "int32", b, scale=(0.05 * 0.015,), zero_point=(0,)),
               T("y", (1, 16, 16, 8), "int8", scale=(s_y,), zero_point=(z_y,))]
    model = build(tensors, [Op("CONV_2D", ["x", "w", "b"], ["y"], opts("Conv2DOptions", Padding=SAME, StrideH=1,
                                                                    StrideW=1, FusedActivationFunction=RELU))],
                  ["x"], ["y"])
    graph = _compile(tmp_path, model, output_quantize_threshold=0)
    assert any(n.op == "kpu_conv2d_q" for n in graph.nodes)
    off = []
    for seed in range(3):
        xq = np.random.default_rng(seed).integers(-128, 128, (1, 16, 16, 8)).astype(np.int8)
        (expected,) = litert(model, [xq], kernels="default")
        codes = np.rint(_run(graph, (xq.astype(np.float32) - 3) * 0.05) / s_y) + z_y
        inside = (expected > -128) & (expected < 127)
        assert inside.mean() > 0.5
        off.append(float((codes != expected)[inside].mean()))
    assert max(off) < 0.002, off
