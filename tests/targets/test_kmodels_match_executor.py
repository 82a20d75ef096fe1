"""The acceptance line of kmodel v3 and v4 against kpuc's own quantized executor: the sample model and
MobileNet v1 0.25/128 compile (uint8, KPU), and the file, run by kpuc's kmodel interpreter as `kpuc infer`
runs it, equals the quantized IR executor on `Compiled.graph` (the graph rewritten into the runtime's
arithmetic, targets/k210/device_semantics.py) on every output of every calibration image (MobileNet: the
first few). This checks lowering and the interpreter against the executor; agreement with nncase's own
runtimes is tests/targets/test_oracle.py's job. The float-vs-kmodel top-1 agreement is printed (`pytest -s`);
it is a measurement, not a bound."""
import functools
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from compiler.datasets import iter_dataset, list_files
from compiler.executor import Executor
from compiler.importers import import_model
from compiler.ir import Graph, TensorType
from compiler.pipeline import CompileOptions, compile_model
from compiler.quantization import QuantParamU8, get_quant_param, quantized_binary_params
from shared_data import DIGITS, DIGITS_DATA, GOLDEN, MOBILENET, ROOT, needs, require
from targets import get_target
from targets.k210.device_semantics import to_v3_semantics, to_v4_semantics
from targets.k210.interpreter_v3 import run_v3
from targets.k210.interpreter_v4 import run_v4
from targets.k210.kernels import K210_KERNELS, QuantizedExecutor
from targets.k210.kmodel import kmodel_inputs, read_kmodel, run_kmodel
from targets.k210.kmodel_v3 import read_v3
from targets.k210.kmodel_v4 import read_v4
from targets.k210.lower_v3 import compile_v3
from targets.k210.lower_v4 import compile_v4
from targets.k210.quantize import quantize_kpu_layer

MODELS = {
    # name: (model, calibration set, compile options, images checked (None: all))
    "digits": (DIGITS, DIGITS_DATA, {}, None),
    "mobilenet": (MOBILENET, GOLDEN / "ulffd_landmark-v4/dataset", {"input_mean": 0.5, "input_std": 0.5}, 5),
    # --split-activations: dense block-diagonal convs where depthwise ones were, doubled channels
    "digits-split": (DIGITS, DIGITS_DATA, {"split_activations": 2}, 5),
    "mobilenet-split": (MOBILENET, GOLDEN / "ulffd_landmark-v4/dataset",
                        {"input_mean": 0.5, "input_std": 0.5, "split_activations": 10}, 2),
}


@dataclass
class Case:
    name: str
    version: int
    compiled: object
    dataset: Path
    mean: float
    std: float
    limit: int | None


@functools.cache
def _compiled(name: str, version: int):
    path, dataset, opts, _ = MODELS[name]
    return compile_model(path, CompileOptions(kmodel_version=version, dataset=str(dataset), **opts),
                         get_target("k210"))


def _case(name: str, version: int) -> Case:
    path, dataset, opts, limit = MODELS[name]
    require(path, dataset)
    return Case(name, version, _compiled(name, version), dataset, opts.get("input_mean", 0.0),
                opts.get("input_std", 1.0), limit)


def _slow_if_mobilenet(name: str) -> tuple:
    """MobileNet compiles take 20-60 CPU-seconds each: outside the fast loop (`-m "not slow"`)."""
    return (pytest.mark.slow,) if name.startswith("mobilenet") else ()


@pytest.fixture(scope="module", params=[pytest.param((m, v), marks=_slow_if_mobilenet(m), id=f"{m}-v{v}")
                                        for m in MODELS for v in (3, 4)])
def case(request) -> Case:
    return _case(*request.param)


def graph_feed(graph: Graph, x: np.ndarray) -> np.ndarray:
    """What the quantized graph takes for the kmodel input `x`: `x` itself when the kmodel input is the
    graph's float input; for uint8 codes (the kmodel takes the codes of the input's quantize_u8), the
    float values whose codes they are (checked: quantize_u8 gives `x` back)."""
    if x.dtype != np.uint8:
        return x
    q, = [u for u in graph.inputs[0].user_nodes() if u.op == "quantize_u8"]
    real = K210_KERNELS["dequantize_u8"](x, **q.attrs)
    np.testing.assert_array_equal(K210_KERNELS["quantize_u8"](real, **q.attrs), x)
    return real


def samples(c: Case, dtype: str):
    """(stem, kmodel input as `kpuc infer` makes it, float model input) per checked image."""
    shape = c.compiled.float_graph.inputs[0].shape
    pairs = zip(iter_dataset(c.dataset, shape, dtype=dtype, mean=c.mean, std=c.std),
                iter_dataset(c.dataset, shape, mean=c.mean, std=c.std))
    for i, (k, f) in enumerate(pairs):
        if c.limit is not None and i >= c.limit:
            return
        yield k.stem, k.data, f.data


def test_interpreter_matches_the_quantized_executor(case):
    c = case.compiled
    kmodel = read_kmodel(c.kmodel)
    (_, dtype), = kmodel_inputs(kmodel)
    executor = QuantizedExecutor(c.graph)
    source = import_model(MODELS[case.name][0])
    reference = Executor(source)
    differing = agree = n = 0
    for stem, x, xf in samples(case, dtype):
        got = run_kmodel(kmodel, [x])
        want = executor.run([graph_feed(c.graph, x)])
        assert len(got) == len(c.graph.outputs)
        for g, v in zip(got, c.graph.outputs):
            w = want[v.name].reshape(-1)
            differing += int((g != w).sum())
            np.testing.assert_array_equal(g, w, err_msg=f"{case.name} v{case.version} {stem} output {v.name}")
        float_out = reference.run([xf])[source.outputs[0].name].reshape(-1)
        agree += int(np.argmax(float_out) == np.argmax(got[0]))
        n += 1
    assert n > 0 and differing == 0
    print(f"\n{case.name} kmodel v{case.version}: {n} image(s), 0 differing values; float-vs-kmodel top-1 "
          f"agreement {agree}/{n}")


@pytest.mark.parametrize("name, version", [("digits", 3), pytest.param("mobilenet", 4, marks=pytest.mark.slow)])
def test_kpuc_infer_writes_what_the_quantized_executor_computes(name, version, tmp_path):
    """`kpuc infer` on the compiled file (a subprocess, the user's command) writes the executor's outputs."""
    c = _case(name, version)
    model = tmp_path / f"{name}.kmodel"
    model.write_bytes(c.compiled.kmodel)
    dataset = tmp_path / "images"
    dataset.mkdir()
    for f in list_files(c.dataset)[:c.limit]:
        (dataset / f.name).symlink_to(f)
    c.dataset = dataset
    r = subprocess.run([sys.executable, "-c", "import cli; cli.main()", "infer", str(model), str(tmp_path / "out"),
                        "--dataset", str(dataset), "--input-mean", str(c.mean), "--input-std", str(c.std)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    (_, dtype), = kmodel_inputs(read_kmodel(c.compiled.kmodel))
    executor = QuantizedExecutor(c.compiled.graph)
    n = 0
    for stem, x, _ in samples(c, dtype):
        want = executor.run([graph_feed(c.compiled.graph, x)])
        for i, v in enumerate(c.compiled.graph.outputs):
            got = np.fromfile(tmp_path / "out" / f"{stem}.out{i}.bin", "<f4")
            np.testing.assert_array_equal(got, want[v.name].reshape(-1), err_msg=f"{stem} output {i}")
        n += 1
    assert n == len(list_files(dataset))


# ---- every device op, on a small graph ----------------------------------------------------------------------

def _kpu_layer(g, x, oc, k, rng, iq, yq, *, depthwise=False, name):
    w = rng.normal(size=(oc, 1 if depthwise else x.shape[1], k, k)).astype(np.float32)
    layer = quantize_kpu_layer(w, rng.normal(size=oc).astype(np.float32), (("clamp", 0.0, 6.0),), iq, yq, yq)
    node = g.add("kpu_conv2d_q", [x, g.const(layer.weights), g.const(layer.bn), g.const(layer.act)], name=name,
                 depthwise=depthwise, **layer.attrs)
    node.output.quant = yq.to_ir()
    return node.output


def _device_op_graph() -> Graph:
    """KPU layers with zero points, a quantized add, a large dequantize and a CPU quantize with zero
    points, then the float tail both runtimes sum differently: mean pool, global mean, matmul + bias, softmax."""
    rng = np.random.default_rng(7)
    iq, rq, aq, fq = QuantParamU8(0, 255.0), get_quant_param((-1.0, 5.0)), get_quant_param((-2.0, 10.0)), \
        get_quant_param((-0.7, 9.0))
    g = Graph()
    x = g.input("x", TensorType((1, 4, 8, 8)))
    xq = g.add("quantize_u8", [x], name="x_q", scale=iq.to_ir().scale, zero_point=iq.zero_point).output
    c1 = _kpu_layer(g, xq, 8, 3, rng, iq, rq, name="c1")
    c2 = _kpu_layer(g, c1, 8, 3, rng, rq, rq, depthwise=True, name="c2")
    add = g.add("quantized_binary", [c1, c2], name="add", **quantized_binary_params("add", rq, rq, aq)).output
    add.quant = aq.to_ir()
    d = g.add("dequantize_u8", [add], name="d", scale=aq.to_ir().scale, zero_point=aq.zero_point).output
    requant = g.add("quantize_u8", [d], name="requant", scale=fq.to_ir().scale, zero_point=fq.zero_point).output
    requant.quant = fq.to_ir()
    c3 = _kpu_layer(g, requant, 8, 1, rng, fq, rq, name="c3")
    e = g.add("dequantize_u8", [c3], name="e", scale=rq.to_ir().scale, zero_point=rq.zero_point).output
    pool = g.add("reduce_window2d", [e], name="pool", op="mean", kernel=(3, 3), strides=(2, 2),
                 padding=((1, 1), (1, 1))).output
    gap = g.add("reduce", [pool], name="gap", op="mean", axes=(2, 3), keepdims=True).output
    flat = g.add("reshape", [gap], name="flat", shape=(1, 8)).output
    mm = g.add("matmul", [flat, g.const(rng.normal(size=(8, 5)).astype(np.float32))], name="fc").output
    logits = g.add("binary", [mm, g.const(rng.normal(size=5).astype(np.float32))], name="logits", op="add").output
    probs = g.add("softmax", [logits], name="probs", axis=1).output
    g.outputs = [d, probs]
    return g


@pytest.mark.parametrize("version", [3, 4])
def test_every_device_op_lowers_exactly(version):
    g = _device_op_graph()
    device = (to_v3_semantics if version == 3 else to_v4_semantics)(g)
    assert g.nodes_of("quantized_binary") and not g.nodes_of(*DEVICE_OPS)        # the source graph is untouched
    ops = {n.op for n in device.nodes}
    if version == 3:
        assert {"dequantize_v3", "quantize_v3", "reduce_window2d_f32", "reduce_f32", "matmul_f32", "softmax_f32"} <= ops
        assert ops & {"quantized_add_v3", "binary"}
        data, summary = compile_v3(device)
        assert "inexact" not in summary
        model = read_v3(data)
    else:
        assert {"reduce_window2d_f32", "reduce_f32", "matmul_f32"} <= ops and "softmax" not in ops
        data, summary = compile_v4(device)
        model = read_v4(data)
    executor = QuantizedExecutor(device)
    for seed in range(4):
        x = np.random.default_rng(seed).uniform(0, 1, size=(1, 4, 8, 8)).astype(np.float32)
        want = executor.run([x])
        xin = K210_KERNELS["quantize_u8"](x, scale=1 / 255.0, zero_point=0)
        got = run_v3(model, [xin]) if version == 3 else run_v4(model, [xin])
        for o, v in zip(got, device.outputs):
            np.testing.assert_array_equal(o, want[v.name].reshape(-1), err_msg=f"seed {seed} {v.name}")


DEVICE_OPS = ("dequantize_v3", "quantize_v3", "quantized_add_v3", "reduce_f32", "reduce_window2d_f32", "matmul_f32",
              "conv2d_f32", "softmax_f32")


# ---- float graphs: the runtimes' float arithmetic -----------------------------------------------------------

def _float_v4_graph() -> Graph:
    """Float ops v4 sums in its own order: grouped, padded, strided and dilated convs, mean pools with
    count_include_pad and ceil_mode, reductions (mean, sum, sum_square) and a log-softmax."""
    rng = np.random.default_rng(3)
    g = Graph()
    x = g.input("x", TensorType((1, 4, 9, 9)))

    def conv(v, oc, k, **a):
        ic = v.shape[1] // a.get("groups", 1)
        return g.add("conv2d", [v, g.const(rng.normal(size=(oc, ic, k, k)).astype(np.float32)),
                                g.const(rng.normal(size=oc).astype(np.float32))], **a).output
    c = conv(x, 8, 3, padding=((1, 1), (1, 1)), fused_clamp=(0.0, 6.0))
    c = conv(c, 8, 3, groups=4, strides=(2, 2), padding=((1, 0), (0, 1)))
    c = conv(c, 8, 3, dilations=(2, 2), padding=((2, 2), (2, 2)))
    p = g.add("reduce_window2d", [c], op="mean", kernel=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
              count_include_pad=True).output
    q = g.add("reduce_window2d", [c], op="mean", kernel=(2, 2), strides=(2, 2), ceil_mode=True).output
    m = g.add("reduce", [p], op="mean", axes=(1,), keepdims=True).output
    s = g.add("reduce", [q], op="sum", axes=(2, 3), keepdims=False).output
    sq = g.add("reduce", [c], op="sum_square", axes=(2, 3), keepdims=False).output
    both = g.add("binary", [s, sq], op="add").output
    mm = g.add("matmul", [both, g.const(rng.normal(size=(8, 6)).astype(np.float32))]).output
    out = g.add("binary", [mm, g.const(rng.normal(size=6).astype(np.float32))], op="add", fused_clamp=(-1.0, 9.0))
    ls = g.add("softmax", [out.output], axis=1, log=True).output
    g.outputs = [m, ls]
    return g


def test_v4_interpreter_matches_the_executor_on_float_ops():
    g = _float_v4_graph()
    device = to_v4_semantics(g)
    ops = {n.op for n in device.nodes}
    assert {"conv2d_f32", "reduce_window2d_f32", "reduce_f32", "matmul_f32"} <= ops
    assert not ops & {"conv2d", "softmax", "matmul"}
    data, _ = compile_v4(device, target="cpu")
    model, executor = read_v4(data), QuantizedExecutor(device)
    for seed in range(3):
        x = np.random.default_rng(seed).normal(size=(1, 4, 9, 9)).astype(np.float32)
        want = executor.run([x])
        for o, v in zip(run_v4(model, [x]), device.outputs):
            np.testing.assert_array_equal(o, want[v.name].reshape(-1), err_msg=f"seed {seed} {v.name}")


IRIS = GOLDEN / "iris-v4"


@needs(IRIS)
@pytest.mark.parametrize("version", [3, 4])
def test_iris_float_files_equal_their_device_graph(version):
    """A float model: matmul + bias + ReLU layers, exact in both runtimes' order; v4 stays ncc's own file."""
    from compiler.pipeline import optimize_generic
    graph = optimize_generic(import_model(IRIS / "iris.tflite"))
    device = (to_v3_semantics if version == 3 else to_v4_semantics)(graph)
    assert {n.op for n in device.nodes if n.op.startswith("matmul")} == {"matmul_f32"}
    data = compile_v3(device)[0] if version == 3 else compile_v4(device)[0]
    if version == 4:
        gold = (IRIS / "iris.kmodel").read_bytes()
        assert data[:36] == gold[:36] and data[40:] == gold[40:]     # 36..40: nncase's uninitialised reserved0
    model, executor = read_kmodel(data), QuantizedExecutor(device)
    for path in sorted((IRIS / "inputs").glob("*.f32")):
        x = np.fromfile(path, "<f4").reshape(graph.inputs[0].shape)
        np.testing.assert_array_equal(run_kmodel(model, [x])[0], executor.run([x])[device.outputs[0].name].reshape(-1))


def test_a_graph_in_one_runtime_s_arithmetic_is_refused_for_the_other():
    from compiler.errors import KpucError
    v3 = to_v3_semantics(_device_op_graph())
    with pytest.raises(KpucError, match="already in kmodel v3's arithmetic"):
        to_v4_semantics(v3)
    assert {n.op for n in to_v3_semantics(v3).nodes} == {n.op for n in v3.nodes}     # idempotent
