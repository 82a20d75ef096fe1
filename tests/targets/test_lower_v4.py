"""kmodel v4 lowering: the iris golden file byte for byte, every neutral emitter against the float
executor through the v4 interpreter, the memory plan's invariants, and the uint8 / KPU path."""
from __future__ import annotations

import glob
import math
import os

import numpy as np
import pytest

import shared_data
from compiler.errors import KpucError
from compiler.executor import run_graph
from compiler.importers import import_model
from compiler.ir import Graph, TensorType
from compiler.pipeline import optimize_generic
from shared_data import file_params, needs
from targets.k210 import kmodel_v4 as k4
from targets.k210.interpreter_v4 import run_v4
from targets.k210.kpu_layout import KPU_RAM_BYTES
from targets.k210.lower_v4 import assemble, compile_v4, graph_outputs, lower_steps, lower_v4

GOLDEN = str(shared_data.GOLDEN)
IRIS = f"{GOLDEN}/iris-v4"
RNG = np.random.default_rng(0)


def compile_checked(graph: Graph, target: str = "k210", input_type: str = "default"):
    """Compile; check the file reads back to the same bytes, that a second compile gives the same bytes
    and that live buffers never share memory."""
    data, summary = compile_v4(graph, target=target, input_type=input_type)
    model = k4.read_v4(data)
    assert k4.write_v4(model) == data
    assert compile_v4(graph, target=target, input_type=input_type)[0] == data
    assert summary["file_size"] == len(data) and summary["main_memory"] == model.main_mem
    check_plan(graph, target, input_type)
    return model, data, summary


def check_plan(graph: Graph, target: str = "k210", input_type: str = "default") -> None:
    """Independently of the planner: every root buffer lives from its first write (model inputs: before
    the run) to its last read (model outputs: to the end); two buffers of a pool alive at the same step
    never overlap, and all fit the pool."""
    ctx = lower_steps(graph, target, input_type)
    outputs = graph_outputs(ctx)
    model = assemble(ctx, outputs)
    span = {}
    for v in graph.inputs:
        span[ctx.inputs[v].root] = [-1, -1]
    for i, s in enumerate(ctx.steps):
        for b in s.writes:
            span.setdefault(b.root, [i, i])
            span[b.root][1] = max(span[b.root][1], i)
        for b in s.reads:
            if b.root.pool != k4.MEM_CONST:
                assert b.root in span, f"step {i} reads {b.name} before it is written"
                span[b.root][1] = i
    for b in outputs:
        if b.root in span:
            span[b.root][1] = len(ctx.steps)
    roots = list(span)
    for b in roots:
        assert b.start % (64 if b.pool == k4.MEM_KPU else 8) == 0
        assert b.start + b.size <= (model.main_mem if b.pool == k4.MEM_MAIN else KPU_RAM_BYTES)
    for i, a in enumerate(roots):
        for b in roots[i + 1:]:
            if a.pool == b.pool and span[a][0] <= span[b][1] and span[b][0] <= span[a][1]:
                assert a.start + a.size <= b.start or b.start + b.size <= a.start, f"{a.name} overlaps {b.name}"


def run_both(graph: Graph, feeds=None, target="k210"):
    feeds = feeds or [RNG.standard_normal(v.shape).astype(np.float32) for v in graph.inputs]
    want = run_graph(graph, *feeds)
    model, data, summary = compile_checked(graph, target)
    got = run_v4(model, feeds)
    return want, got, summary


# ---------------------------------------------------------------- iris (kmodel-v4.md §16.3)
@needs(IRIS)
def test_iris_is_byte_identical_to_ncc():
    graph = optimize_generic(import_model(f"{IRIS}/iris.tflite"))
    ours = k4.write_v4(lower_v4(graph))
    with open(f"{IRIS}/iris.kmodel", "rb") as f:
        gold = f.read()
    assert len(ours) == len(gold) == 720
    assert ours[:36] == gold[:36] and ours[40:] == gold[40:]   # 36..40: nncase's uninitialised reserved0
    assert k4.write_v4(k4.read_v4(ours)) == ours


@needs(IRIS)
def test_iris_runs_like_the_executor_and_ncc():
    graph = optimize_generic(import_model(f"{IRIS}/iris.tflite"))
    model = lower_v4(graph, target="cpu")
    for path in sorted(glob.glob(f"{IRIS}/inputs/*.f32")):
        x = np.fromfile(path, "<f4").reshape(graph.inputs[0].shape)
        ours = run_v4(model, [x])[0]
        np.testing.assert_allclose(ours, run_graph(graph, x)[0].reshape(-1), rtol=1e-6, atol=1e-6)
        name = os.path.basename(path)[len("iris_"):-len(".f32")]
        gold = np.fromfile(f"{IRIS}/expected/{name}.out0.bin", "<f4")
        np.testing.assert_array_equal(ours, gold)


# ---------------------------------------------------------------- every neutral emitter, float
def G(*shapes):
    g = Graph()
    return g, [g.input(f"x{i}", TensorType(s)) for i, s in enumerate(shapes)]


def C(g, shape):
    return g.const(RNG.standard_normal(shape).astype(np.float32))


def one(ir_op, shapes, *, consts=(), **attrs):
    """A graph of one node on fresh inputs (plus constant operands of the given shapes)."""
    def build():
        g, xs = G(*shapes)
        n = g.add(ir_op, xs + [C(g, s) for s in consts], **attrs)
        g.outputs = list(n.outputs)
        return g
    return build


def positive(op):
    def build():
        g, (x,) = G((2, 7))
        a = g.add("unary", [x], op="abs")
        n = g.add("unary", [a.output], op=op)
        g.outputs = [n.output]
        return g
    return build


def concat_inplace():
    g, (x, y) = G((1, 3, 4, 5), (1, 2, 4, 5))
    a, b = g.add("unary", [x], op="neg"), g.add("unary", [y], op="abs")
    r = g.add("reshape", [b.output], shape=(1, 40, 1, 1))
    s = g.add("reshape", [a.output], shape=(1, 60, 1, 1))
    n = g.add("concat", [s.output, r.output, s.output], axis=1)
    g.outputs = [n.output]
    return g


def split_then_use():
    g, (x,) = G((1, 6, 4, 5))
    n = g.add("split", [x], axis=1, sizes=(2, 4))
    r = g.add("unary", [n.outputs[1]], op="neg")
    g.outputs = [n.outputs[0], r.output]
    return g


FLOAT_CASES = {
    "conv2d": one("conv2d", [(1, 3, 8, 8)], consts=[(4, 3, 3, 3), (4,)], strides=(2, 2),
                  padding=((1, 0), (1, 1)), fused_clamp=(0.0, 6.0)),
    "conv2d_depthwise_dilated": one("conv2d", [(1, 4, 8, 8)], consts=[(4, 1, 3, 3), (4,)], groups=4,
                                    dilations=(2, 2), padding=((2, 2), (2, 2))),
    "conv2d_transpose": one("conv2d_transpose", [(1, 4, 5, 5)], consts=[(4, 2, 3, 3), (2,)], strides=(2, 2),
                            padding=((1, 1), (1, 1)), output_padding=(1, 1), fused_clamp=(0.0, math.inf)),
    "binary_broadcast": one("binary", [(1, 3, 4, 5), (1, 3, 1, 5)], op="sub", fused_clamp=(-0.5, 0.5)),
    "binary_const": one("binary", [(2, 3, 4)], consts=[(4,)], op="max"),
    "squared_difference": one("binary", [(2, 3), (2, 3)], op="squared_difference"),
    **{f"unary_{op}": one("unary", [(2, 7)], op=op) for op in
       ("abs", "ceil", "cos", "exp", "floor", "neg", "sin", "square", "sigmoid", "tanh", "softplus", "hard_swish")},
    **{f"unary_{op}": positive(op) for op in ("log", "rsqrt", "sqrt", "reciprocal")},
    "clamp": one("clamp", [(1, 3, 4, 4)], min=-0.3, max=0.7),
    "leaky_relu": one("leaky_relu", [(1, 3, 4, 4)], alpha=0.1),
    "hard_sigmoid": one("hard_sigmoid", [(1, 3, 4, 4)], alpha=0.2, beta=0.5),
    "prelu": one("prelu", [(1, 3, 4, 4)], consts=[(3, 1, 1)]),
    "matmul_const": one("matmul", [(3, 6)], consts=[(6, 5)]),
    "matmul": one("matmul", [(3, 6), (6, 2)], fused_clamp=(0.0, math.inf)),
    "max_pool_ceil": one("reduce_window2d", [(1, 3, 9, 9)], op="max", kernel=(3, 3), strides=(2, 2),
                         padding=((1, 1), (1, 1)), ceil_mode=True),
    "avg_pool": one("reduce_window2d", [(1, 3, 9, 9)], op="mean", kernel=(3, 3), strides=(2, 2),
                    padding=((1, 1), (1, 1))),
    "avg_pool_count_pad": one("reduce_window2d", [(1, 3, 9, 9)], op="mean", kernel=(3, 3), strides=(2, 2),
                              padding=((1, 1), (1, 1)), count_include_pad=True),
    **{f"reduce_{op}": one("reduce", [(2, 3, 4, 5)], op=op, axes=(1, 3), keepdims=False)
       for op in ("mean", "max", "min", "sum", "sum_square")},
    "softmax_c": one("softmax", [(2, 3, 4, 5)], axis=1),
    "softmax_last": one("softmax", [(2, 3, 4, 5)], axis=3),
    "log_softmax": one("softmax", [(2, 5)], axis=1, log=True),
    "lp_normalize": one("lp_normalize", [(2, 3, 4, 5)], axis=1),
    "transpose": one("transpose", [(2, 3, 4, 5)], perm=(0, 2, 3, 1)),
    "transpose_3d": one("transpose", [(3, 4, 5)], perm=(2, 0, 1)),
    "strided_slice": one("strided_slice", [(2, 3, 4, 5)], begin=(0, 1, 3, 0), end=(2, 3, -1, 5),
                         strides=(1, 1, -2, 2)),
    "split_slices": one("split", [(2, 3, 4, 5)], axis=2, sizes=(1, 3)),
    "split_views": split_then_use,
    "concat": one("concat", [(2, 3, 4, 5), (2, 1, 4, 5)], axis=1),
    "concat_in_place": concat_inplace,
    "pad": one("pad", [(1, 3, 4, 5)], pads=((0, 0), (1, 0), (-1, 2), (1, 1)), value=0.5),
    "resize_nearest": one("resize", [(1, 3, 4, 5)], sizes=(1, 3, 8, 10), mode="nearest",
                          coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
    "resize_bilinear": one("resize", [(1, 3, 4, 5)], sizes=(1, 3, 8, 10), mode="linear",
                           coordinate_transformation_mode="asymmetric"),
    "resize_align_corners": one("resize", [(1, 3, 4, 5)], sizes=(1, 3, 7, 9), mode="linear",
                                coordinate_transformation_mode="align_corners"),
    "space_to_batch": one("space_to_batch", [(1, 3, 6, 5)], block=(2, 2), pads=((1, 1), (1, 2))),
    "batch_to_space": one("batch_to_space", [(8, 3, 4, 5)], block=(2, 2), crops=((1, 0), (1, 2))),
    "space_to_depth": one("space_to_depth", [(1, 3, 4, 6)], block=2),
    "depth_to_space": one("depth_to_space", [(1, 8, 4, 6)], block=2),
    "reshape_of_input": one("reshape", [(1, 8)], shape=(2, 4)),
}


@pytest.mark.parametrize("case", sorted(FLOAT_CASES))
def test_float_op_runs_like_the_executor(case):
    graph = FLOAT_CASES[case]()
    want, got, summary = run_both(graph, target="cpu")
    assert summary["kpu_ops"] == 0
    for w, o in zip(want, got):
        np.testing.assert_allclose(o, w.reshape(-1), rtol=1e-5, atol=1e-5)


def test_gather_progression_is_a_slice():
    g, (x,) = G((1, 8, 4, 6))
    n = g.add("gather", [x, g.const(np.array([1, 3, 5]))], axis=1)
    g.outputs = [n.output]
    want, got, summary = run_both(g)
    assert summary["ops"] == {"strided_slice": 1}
    np.testing.assert_array_equal(got[0], want[0].reshape(-1))


def test_concat_writes_in_place():
    want, got, summary = run_both(concat_inplace())
    # the second occurrence of the same value is the only copy; no concat node, no second buffer
    assert summary["ops"] == {"unary": 2, "memory_copy": 1}
    assert summary["main_memory"] == 4 * (60 + 40 + 160)   # the two inputs and the output, nothing else
    np.testing.assert_array_equal(got[0], want[0].reshape(-1))


def test_reshape_and_split_are_views():
    _, _, summary = run_both(split_then_use())
    assert summary["ops"] == {"unary": 1}


def test_matmul_absorbs_its_bias_add_and_clamp():
    g, (x,) = G((2, 6))
    m = g.add("matmul", [x, C(g, (6, 4))])
    a = g.add("binary", [m.output, C(g, (4,))], op="add", fused_clamp=(0.0, math.inf))
    g.outputs = [a.output]
    want, got, summary = run_both(g)
    assert summary["ops"] == {"transpose": 1, "matmul": 1}
    np.testing.assert_allclose(got[0], want[0].reshape(-1), atol=1e-6)


def test_unsupported_ops_name_the_node():
    with pytest.raises(KpucError, match="r0.*round"):
        g, (x,) = G((2, 3))
        g.outputs = [g.add("unary", [x], op="round", name="r0").output]
        lower_v4(g)
    with pytest.raises(KpucError, match="half_pixel"):
        lower_v4(one("resize", [(1, 3, 4, 5)], sizes=(1, 3, 7, 10), mode="linear")())
    with pytest.raises(KpucError, match="unknown target"):
        lower_v4(one("unary", [(2, 3)], op="neg")(), target="k230")


def test_same_graph_compiles_to_the_same_bytes():
    a, _ = compile_v4(FLOAT_CASES["softmax_c"]())
    b, _ = compile_v4(FLOAT_CASES["softmax_c"]())
    assert a == b


# ---------------------------------------------------------------- uint8 and KPU emitters (hand-made quantized graphs)
@pytest.mark.parametrize("path", file_params([f"{GOLDEN}/ulffd_landmark-v4/ulffd_landmark.kmodel",
                                              f"{GOLDEN}/yolo20-v4/yolo.kmodel",
                                              f"{shared_data.KMODELS}/sdk_mask_detect.v4.kmodel"],
                                             ids=os.path.basename))
def test_kpu_layer_words_match_ncc(path):
    """Every argument word of every real KPU layer, rebuilt from its shapes and conv constants (§10.3)."""
    from targets.k210.kpu import POOL_TYPES
    from targets.k210.lower_v4_quant import layer_args
    with open(path, "rb") as f:
        model = k4.read_v4(f.read())
    for node in model.nodes:
        b = node.body
        if isinstance(b, k4.KpuConv2D):
            L = b.layer
            conv = dict(pad_value=L.pad_value, shr_w=L.shr_w, shr_x=L.shr_x, arg_w=L.arg_w, arg_x=L.arg_x,
                        arg_add=L.arg_add)
            ours = layer_args(b.in_shape, b.out_shape, L.kernel, L.depthwise, POOL_TYPES[L.pool_type][0], conv,
                              b.main_mem_output.size > 0)
            addresses = ("image_src_addr", "image_dst_addr", "bwsx_base_addr", "active_addr", "para_start_addr")
            assert ours.replace(**{k: getattr(L, k) for k in addresses}) == L


def kpu_layer(g, x, oc, k, *, depthwise=False, pool="bypass"):
    """A kpu_conv2d_q with zero points 128 and tables that map the conv sum to about acc/256 + 128."""
    ic = x.shape[1]
    w = g.const(RNG.integers(0, 256, (oc, 1 if depthwise else ic, k, k)).astype(np.uint8))
    bn = g.const(np.tile(np.array([[1, 8, 128]], np.int64), (oc, 1)))
    act = np.zeros((16, 4), np.int64)
    act[:, 0] = [-(1 << 35), 0] + [(1 << 30) + i for i in range(14)]
    act[1:, 1] = 1
    taps = k * k * (1 if depthwise else ic)
    return g.add("kpu_conv2d_q", [x, w, bn, g.const(act)], depthwise=depthwise, pool=pool, pad_value=128,
                 arg_x=-128, arg_w=-128, arg_add=k * k * 128 * 128 if taps else 0).output


def kpu_graph():
    """u8 KPU input -> 3x3 pooled -> depthwise -> 1x1 (also read by a CPU op) -> CPU add -> upload -> 3x3."""
    g = Graph()
    x = g.input("x", TensorType((1, 3, 16, 20), "uint8"))
    k1 = kpu_layer(g, x, 8, 3, pool="max_2_s2")
    k2 = kpu_layer(g, k1, 8, 3, depthwise=True)
    k3 = kpu_layer(g, k2, 4, 1)
    s = g.add("quantized_binary", [k3, g.const(np.array([100], np.uint8))], op="add", input_a_offset=-128,
              input_a_mul=1, input_a_shift=0, input_b_offset=-100, input_b_mul=1, input_b_shift=0, output_mul=1,
              output_shift=0, output_offset=128).output
    k4_ = kpu_layer(g, s, 4, 3)
    outs = [g.add("dequantize_u8", [v], scale=0.05, zero_point=128).output for v in (k4_, k2)]
    g.outputs = outs
    return g


def cpu_quant_graph():
    """f32 input -> quantize -> quantized conv -> requantize / table -> concat -> matmul -> dequantize."""
    g = Graph()
    x = g.input("x", TensorType((1, 3, 8, 8)))
    q = g.add("quantize_u8", [x], scale=1 / 40, zero_point=128).output
    c = g.add("quantized_conv2d", [q, g.const(RNG.integers(0, 256, (4, 3, 3, 3)).astype(np.uint8)),
                                   g.const(RNG.integers(-2000, 2000, 4).astype(np.int32))],
              padding=((1, 1), (1, 1)), input_offset=-128, filter_offset=-128, output_mul=1 << 23, output_shift=31,
              output_offset=128).output
    r = g.add("requantize_u8", [c], in_scale=0.05, in_zero_point=128, scale=0.08, zero_point=100).output
    t = g.add("table_lookup1d", [r, g.const(RNG.integers(0, 256, 256).astype(np.uint8))]).output
    cat = g.add("concat", [c, t], axis=1).output                                  # [1, 8, 8, 8]
    m = g.add("reshape", [cat], shape=(8, 64)).output
    mm = g.add("quantized_matmul", [m, g.const(RNG.integers(0, 256, (64, 5)).astype(np.uint8)),
                                    g.const(RNG.integers(-500, 500, 5).astype(np.int32))],
               input_a_offset=-128, input_b_offset=-128, output_mul=1 << 22, output_shift=31, output_offset=128).output
    g.outputs = [g.add("dequantize_u8", [mm], scale=0.1, zero_point=128).output,
                 g.add("dequantize_u8", [cat], scale=0.05, zero_point=128).output]
    return g


def model_feed(graph: Graph, model: k4.KModelV4, x: np.ndarray) -> np.ndarray:
    """What the host writes for float input x: x itself, or its codes when the file's input is uint8."""
    if model.inputs[0].datatype == k4.DT_UINT8 and graph.inputs[0].dtype == "float32":
        from targets.k210.kernels import quantize
        q = next(u for u in graph.inputs[0].user_nodes() if u.op == "quantize_u8")
        return quantize(x, **q.attrs)
    return x


def run_quantized(graph: Graph, x: np.ndarray, target="k210", input_type="default"):
    """(executor outputs, kmodel outputs, model, summary) of a quantized graph on one input."""
    from targets.k210.kernels import QuantizedExecutor
    out = QuantizedExecutor(graph).run([x])
    want = [out[v.name] for v in graph.outputs]
    model, data, summary = compile_checked(graph, target, input_type)
    return want, run_v4(model, [model_feed(graph, model, x)]), model, summary


def test_kpu_graph_interpreter_matches_the_quantized_executor():
    graph = kpu_graph()
    want, got, model, summary = run_quantized(graph, RNG.integers(0, 256, (1, 3, 16, 20)).astype(np.uint8))
    for w, o in zip(want, got):
        np.testing.assert_array_equal(o, w.reshape(-1))
    assert model.inputs[0].memory_type == k4.MEM_KPU and model.inputs[0].start % 64 == 0
    assert summary["ops"] == {"kpu_conv2d": 4, "quantized_binary": 1, "kpu_upload": 1, "dequantize": 2}
    names = [n.name for n in model.nodes]
    last_kpu = len(names) - 1 - names[::-1].index("kpu_conv2d")
    assert names.index("quantized_binary") < names.index("kpu_upload") < last_kpu
    layers = [n.body for n in model.nodes if isinstance(n.body, k4.KpuConv2D)]
    # the depthwise and the 1x1 layer write main memory too (read by the CPU), the others only KPU RAM
    assert [b.main_mem_output.size for b in layers] == [0, 8 * 8 * 10, 4 * 8 * 10, 4 * 8 * 10]
    assert summary["kpu_ops"] == 4 and summary["kpu_ram_peak"] <= KPU_RAM_BYTES


def test_cpu_quantized_ops_interpreter_matches_the_quantized_executor():
    graph = cpu_quant_graph()
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32) * 2
    for target, input_type in (("k210", "default"), ("cpu", "float")):
        want, got, model, summary = run_quantized(graph, x, target, input_type)
        for w, o in zip(want, got):
            np.testing.assert_array_equal(o, w.reshape(-1))
        assert summary["kpu_ops"] == 0 and "concat" not in summary["ops"]   # the concat is in place
        # default: the host writes the codes (ncc's --input-type default for a uint8 compile)
        assert model.inputs[0].datatype == (k4.DT_UINT8 if input_type == "default" else k4.DT_FLOAT32)
        assert ("quantize" in summary["ops"]) == (input_type == "float")


def test_cpu_target_refuses_kpu_layers():
    with pytest.raises(KpucError, match="needs the KPU"):
        lower_v4(kpu_graph(), target="cpu")


# ---------------------------------------------------------------- whole models through the uint8 pipeline
ULFFD = f"{GOLDEN}/ulffd_landmark-v4"
DIGITS = str(shared_data.DIGITS)
MOBILENET = str(shared_data.MOBILENET)


def quantized(path: str, target: str, samples=None, **calibration) -> Graph:
    """import -> generic passes -> (k210) KPU legalization -> calibration -> quantization."""
    from compiler.calibration import calibrate
    from targets.k210.legalize import legalize_k210
    from targets.k210.quantize import quantize_k210
    graph = optimize_generic(import_model(path))
    if target == "k210":
        legalize_k210(graph)
    if samples is None:
        rng = np.random.default_rng(1)
        samples = [rng.random(graph.inputs[0].shape).astype(np.float32) for _ in range(4)]
    return quantize_k210(graph, calibrate(graph, samples, **calibration))


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.slow
@needs(ULFFD)
def test_ulffd_landmark_matches_ncc_within_quantization_and_is_no_bigger():
    """ncc's own command: --dataset dataset (images) --input-mean 0.5 --input-std 1, uint8, k210."""
    from compiler.datasets import iter_dataset
    from targets.k210.kernels import QuantizedExecutor
    shape = import_model(f"{ULFFD}/ulffd_landmark.tflite").inputs[0].shape
    samples = [s.data for s in iter_dataset(f"{ULFFD}/dataset", shape, mean=0.5, std=1.0)]
    graph = quantized(f"{ULFFD}/ulffd_landmark.tflite", "k210", samples, input_mean=0.5, input_std=1.0)
    model, data, summary = compile_checked(graph)
    with open(f"{ULFFD}/ulffd_landmark.kmodel", "rb") as f:
        gold = f.read()
    gold_d = k4.describe_v4(k4.read_v4(gold))
    assert summary["main_memory"] <= gold_d["header"]["main_mem"]              # ours 214 880, ncc 460 800
    assert summary["kpu_ram_peak"] <= gold_d["memory"]["kpu"]["used"]       # both 1 474 560
    assert summary["file_size"] <= len(gold)                                # ours 417 296, ncc 418 720
    assert summary["kpu_ops"] == 43
    # the host uploads the raw RGB bytes, as for ncc's file
    assert model.inputs[0] == k4.MemoryRange(k4.MEM_KPU, k4.DT_UINT8, model.inputs[0].start, 230400)
    dog = np.fromfile(f"{ULFFD}/inputs/dog_rgb_chw_320x240.u8", np.uint8).reshape(shape)
    ours = run_v4(model, [dog])
    for i, o in enumerate(ours):
        expected = np.fromfile(f"{ULFFD}/expected/dog.out{i}.bin", "<f4")
        assert cosine(o, expected) > 0.985, i                               # measured 0.988 / 0.988 / 0.992
    # bit for bit with the quantized executor (fed the real values whose codes are the bytes)
    q = next(u for u in graph.inputs[0].user_nodes() if u.op == "quantize_u8").attrs
    x = ((dog.astype(np.float32) - q["zero_point"]) * np.float32(q["scale"])).astype(np.float32)
    want = QuantizedExecutor(graph).run([x])
    for v, o in zip(graph.outputs, ours):
        np.testing.assert_array_equal(o, want[v.name].reshape(-1))


def test_digits_cnn_kpu_layers_interpreter_matches_the_quantized_executor():
    from compiler.datasets import iter_dataset
    shape = import_model(DIGITS).inputs[0].shape
    samples = [s.data for s in iter_dataset(shared_data.DIGITS_DATA, shape)]
    graph = quantized(DIGITS, "k210", samples)
    want, got, model, summary = run_quantized(graph, samples[0])
    assert summary["kpu_ops"] >= 3
    for w, o in zip(want, got):
        np.testing.assert_array_equal(o, w.reshape(-1))


@needs(MOBILENET)
def test_mobilenet_compiles_to_kpu_layers():
    """Exact up to the last KPU layer; the float average pool after it sums in float32 in the runtime
    and in float64 in the executor, so a few codes after it may differ by one."""
    graph = quantized(MOBILENET, "k210")
    x = np.random.default_rng(2).random(graph.inputs[0].shape).astype(np.float32)
    want, got, model, summary = run_quantized(graph, x)
    assert summary["kpu_ops"] == 28
    np.testing.assert_allclose(got[0], want[0].reshape(-1), atol=2e-3)
    last_kpu = [n for n in graph.nodes if n.op == "kpu_conv2d_q"][-2].output    # before the pooled classifier
    graph.outputs = [last_kpu]
    want, got, _, _ = run_quantized(graph, x)
    np.testing.assert_array_equal(got[0], want[0].reshape(-1))


@pytest.mark.parametrize("path", file_params([DIGITS, MOBILENET], ids=os.path.basename))
def test_cpu_target_compiles_without_kpu_ops(path):
    graph = quantized(path, "cpu")
    data, summary = compile_v4(graph, target="cpu")
    assert summary["kpu_ops"] == 0 and "kpu_upload" not in summary["ops"]
    assert k4.read_v4(data).target == 1            # ncc writes K210 for -t cpu too


def test_large_constant_matmul_operand_is_read_from_the_constants():
    g, (x,) = G((2, 300))
    g.outputs = [g.add("matmul", [x, C(g, (300, 10))]).output]
    want, got, summary = run_both(g)
    assert summary["ops"] == {"matmul": 1} and summary["constants"] == 300 * 10 * 4
    assert summary["main_memory"] == 4 * (2 * 300 + 2 * 10)
    np.testing.assert_allclose(got[0], want[0].reshape(-1), rtol=1e-5, atol=1e-5)


def test_legalized_network_with_dilation_stride_pool_and_branches():
    """Through the real pipeline: a dilated conv (KPU batches of 4 after space_to_batch), a stride-2 conv
    (a left_top pool), a fused max pool, depthwise and 1x1 branches joined by a concat, a float matmul."""
    from compiler.calibration import calibrate
    from targets.k210.legalize import legalize_k210
    from targets.k210.quantize import quantize_k210
    rng = np.random.default_rng(3)

    def w(*shape, s=0.3):
        return g.const((rng.standard_normal(shape) * s).astype(np.float32))

    g = Graph()
    x = g.input("x", TensorType((1, 3, 32, 32)))
    a = g.add("conv2d", [x, w(8, 3, 3, 3), w(8)], padding=((1, 1), (1, 1)), fused_clamp=(0.0, math.inf)).output
    a = g.add("reduce_window2d", [a], op="max", kernel=(2, 2), strides=(2, 2)).output
    b = g.add("conv2d", [a, w(8, 8, 3, 3), w(8)], padding=((2, 2), (2, 2)), dilations=(2, 2),
              fused_clamp=(0.0, 6.0)).output
    c = g.add("conv2d", [b, w(16, 8, 3, 3), w(16)], padding=((1, 1), (1, 1)), strides=(2, 2)).output
    d = g.add("conv2d", [c, w(16, 1, 3, 3), w(16)], padding=((1, 1), (1, 1)), groups=16,
              fused_clamp=(0.0, math.inf)).output
    e = g.add("conv2d", [c, w(8, 16, 1, 1), w(8)]).output
    cat = g.add("concat", [d, e], axis=1).output
    r = g.add("reshape", [cat], shape=(1, 24 * 64)).output
    m = g.add("binary", [g.add("matmul", [r, w(24 * 64, 10, s=0.05)]).output, w(10)], op="add").output
    g.outputs = [m, e]
    optimize_generic(g)
    legalize_k210(g)
    samples = [rng.random((1, 3, 32, 32)).astype(np.float32) for _ in range(4)]
    graph = quantize_k210(g, calibrate(g, samples))
    want, got, model, summary = run_quantized(graph, samples[0])
    assert summary["kpu_ops"] == 5
    assert any(isinstance(n.body, k4.KpuConv2D) and n.body.batches == 4 for n in model.nodes)
    np.testing.assert_array_equal(got[1], want[1].reshape(-1))                 # all uint8 up to here
    np.testing.assert_allclose(got[0], want[0].reshape(-1), rtol=1e-5, atol=1e-5)   # float32 vs float64 matmul


def test_code_tables_become_quantized_binaries_when_exact():
    """A requantization and a ReLU on codes are quantized_binary ops (no 256-byte constant); a table
    that no quantized_binary reproduces stays a table_lookup1d."""
    from compiler.ir import QuantParam
    g = Graph()
    x = g.input("x", TensorType((1, 4, 5, 6), "uint8"), quant=QuantParam(0.05, 120))
    r = g.add("requantize_u8", [x], in_scale=0.05, in_zero_point=120, scale=0.07, zero_point=100).output
    relu = np.clip(np.round((np.maximum(np.arange(256) - 100, 0)) * 0.07 / 0.03), 0, 255).astype(np.uint8)
    t = g.add("table_lookup1d", [r, g.const(relu)])
    r.quant, t.output.quant = QuantParam(0.07, 100), QuantParam(0.03, 0)
    odd = g.add("table_lookup1d", [t.output, g.const(RNG.integers(0, 256, 256).astype(np.uint8))]).output
    g.outputs = [t.output, odd]
    want, got, model, summary = run_quantized(g, RNG.integers(0, 256, (1, 4, 5, 6)).astype(np.uint8))
    assert summary["ops"] == {"quantized_binary": 2, "table_lookup1d": 1} and summary["constants"] == 256
    for w, o in zip(want, got):
        np.testing.assert_array_equal(o, w.reshape(-1))


def test_float_kpu_layers_run_on_the_cpu():
    """A legalized but unquantized graph (--inference-type float after KPU legalization): kpu_conv2d
    becomes conv2d + activation nodes + pool, with the float kernel's meaning."""
    from targets.k210.legalize import legalize_k210
    g, (x,) = G((1, 3, 16, 16))
    a = g.add("conv2d", [x, C(g, (8, 3, 3, 3)), C(g, (8,))], padding=((1, 1), (1, 1)), fused_clamp=(0.0, 6.0))
    s = g.add("unary", [a.output], op="sigmoid")
    p = g.add("reduce_window2d", [s.output], op="mean", kernel=(2, 2), strides=(2, 2))
    c = g.add("conv2d", [p.output, C(g, (8, 8, 3, 3)), C(g, (8,))], padding=((1, 1), (1, 1)), strides=(2, 2))
    d = g.add("leaky_relu", [c.output], alpha=0.1)
    g.outputs = [d.output]
    legalize_k210(g)
    assert [n.op for n in g.nodes].count("kpu_conv2d") == 2
    want, got, summary = run_both(g)
    assert summary["kpu_ops"] == 0
    np.testing.assert_allclose(got[0], want[0].reshape(-1), rtol=1e-5, atol=1e-5)


def test_every_op_v4_cannot_express_is_named_at_once():
    """Two independent blockers are both reported; the op downstream of one is not blamed for it."""
    from compiler.errors import KpucError
    from compiler.ir import Graph, TensorType
    g = Graph()
    x = g.input("x", TensorType((1, 2, 4, 4)))
    outs = []
    for name in ("up_a", "up_b"):
        r = g.add("resize", [x], name=name, sizes=(1, 2, 7, 8), mode="linear",
                  coordinate_transformation_mode="half_pixel")
        outs.append(g.add("unary", [r.output], name=f"{name}_abs", op="neg").output)
    g.outputs = outs
    with pytest.raises(KpucError) as e:
        lower_v4(g, target="cpu")
    msg = str(e.value)
    assert msg.startswith("kmodel v4 cannot express 2 op(s)")
    assert "resize 'up_a'" in msg and "resize 'up_b'" in msg and "up_a_abs" not in msg
