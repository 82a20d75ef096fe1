"""The oracle property: random small graphs, compiled by kpuc to kmodel v3 and v4, run identically in the
oracle runtimes (../shared/oracle: v3run is the K210 SDK's v3 loader, v4run nncase v0.2.0-beta4's runtime)
and in kpuc's interpreter (`kpuc infer`): 0 differing float32 values.

Each graph is a seeded chain of the ops real K210 models use (conv 1x1/3x3, stride 1/2, depthwise;
activations; pools; add/mul with constants and between branches; concat; flatten + gemm; softmax; resize;
pad; transpose; reduce mean; in float models also exp/log/sin/cos/sqrt...), built with onnx.helper,
compiled in-process (uint8 with a few seeded calibration samples, or --inference-type float) and lowered
for both versions. A graph a version cannot express (CannotLower, unsupported) does not count; at least
GRAPHS_PER_VERSION graphs must have run in both runtimes for each version.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.errors import KpucError
from compiler.pipeline import CompileOptions, prepare_model
from oracle_run import compare_with_oracle, oracle_program
from shared_data import ORACLE, require
from targets import get_target

GRAPHS_PER_VERSION = 200
SEEDS = 300            # graphs tried: both versions pass GRAPHS_PER_VERSION with some margin
V3_STYLE = 0.7         # share of graphs shaped like v3 models (the rest mostly fail to lower to v3)
CALIBRATION_SAMPLES = 3
OPSET = 13


@dataclass
class Builder:
    """An ONNX graph grown one op at a time; `shape` is the current tensor's (without the batch axis)."""
    rng: np.random.Generator
    shape: tuple[int, ...]
    name: str = "x"
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)

    def __post_init__(self):
        self.input_shape = self.shape

    def fresh(self, prefix: str) -> str:
        return f"{prefix}{len(self.nodes) + len(self.inits)}"

    def const(self, array, dtype=np.float32) -> str:
        name = self.fresh("c")
        self.inits.append(numpy_helper.from_array(np.asarray(array, dtype), name))
        return name

    def add(self, op: str, inputs: list[str], shape: tuple[int, ...], **attrs) -> str:
        out = self.fresh(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        self.name, self.shape = out, shape
        return out

    def weights(self, *shape) -> np.ndarray:
        fan_in = int(np.prod(shape[1:]))
        return self.rng.standard_normal(shape).astype(np.float32) / np.sqrt(fan_in)


# ---------------------------------------------------------------- the ops (each returns False if it does not apply)
def conv(b: Builder) -> bool:
    c, h, w = b.shape
    k = int(b.rng.choice([1, 3]))
    stride = int(b.rng.choice([1, 1, 2])) if min(h, w) >= 4 else 1
    depthwise = b.rng.random() < 0.3 and c > 1
    out_c = c if depthwise else int(b.rng.integers(1, 17))
    pad = int(k == 3 and (b.rng.random() < 0.8 or min(h, w) < 3))
    inputs = [b.name, b.const(b.weights(out_c, 1 if depthwise else c, k, k))]
    if b.rng.random() < 0.7:
        inputs.append(b.const(b.rng.standard_normal(out_c) * 0.1))
    oh, ow = ((s + 2 * pad - k) // stride + 1 for s in (h, w))
    b.add("Conv", inputs, (out_c, oh, ow), kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4,
          group=c if depthwise else 1)
    return True


def activation(b: Builder) -> bool:
    kind = b.rng.choice(["Relu", "Relu6", "LeakyRelu", "Sigmoid", "Tanh"])
    if kind == "Relu6":
        b.add("Clip", [b.name, b.const(0.0), b.const(6.0)], b.shape)
    elif kind == "LeakyRelu":
        b.add("LeakyRelu", [b.name], b.shape, alpha=float(b.rng.choice([0.1, 0.2])))
    else:
        b.add(str(kind), [b.name], b.shape)
    return True


def pool(b: Builder) -> bool:
    c, h, w = b.shape
    kind = b.rng.choice(["MaxPool", "AveragePool", "GlobalAveragePool"])
    if kind == "GlobalAveragePool":
        b.add("GlobalAveragePool", [b.name], (c, 1, 1))
        return True
    if min(h, w) < 2:
        return False
    k, stride, pad = [(2, 2, 0), (3, 1, 1), (3, 2, 1)][int(b.rng.integers(3))]
    oh, ow = ((s + 2 * pad - k) // stride + 1 for s in (h, w))
    b.add(str(kind), [b.name], (c, oh, ow), kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)
    return True


def with_constant(b: Builder) -> bool:
    c = b.shape[0]
    op = str(b.rng.choice(["Add", "Mul"]))
    value = b.rng.standard_normal((c, 1, 1) if b.rng.random() < 0.6 else ()).astype(np.float32)
    b.add(op, [b.name, b.const(value if op == "Add" else value * 0.5 + 1)], b.shape)
    return True


def branch(b: Builder) -> bool:
    """y = f(x) beside x, then x + y, x * y or concat(x, y) over channels."""
    x, (c, h, w) = b.name, b.shape
    if b.rng.random() < 0.5:
        activation(b)
    else:
        pad = int(min(h, w) >= 3)
        k = 3 if pad else 1
        b.add("Conv", [x, b.const(b.weights(c, c, k, k)), b.const(b.rng.standard_normal(c) * 0.1)], (c, h, w),
              kernel_shape=[k, k], pads=[pad] * 4)
    op = str(b.rng.choice(["Add", "Mul", "Concat"]))
    if op == "Concat":
        b.add("Concat", [x, b.name], (2 * c, h, w), axis=1)
    else:
        b.add(op, [x, b.name], (c, h, w))
    return True


def resize(b: Builder) -> bool:
    c, h, w = b.shape
    if max(h, w) > 16:
        return False
    mode = str(b.rng.choice(["nearest", "linear"]))
    coord = "asymmetric" if mode == "nearest" else str(b.rng.choice(["asymmetric", "align_corners"]))
    scales = b.const(np.array([1, 1, 2, 2], np.float32))
    b.add("Resize", [b.name, "", scales], (c, 2 * h, 2 * w), mode=mode, coordinate_transformation_mode=coord,
          nearest_mode="floor")
    return True


def pad(b: Builder) -> bool:
    c, h, w = b.shape
    top, bottom, left, right = (int(v) for v in b.rng.integers(0, 3, 4))
    pads = b.const([0, 0, top, left, 0, 0, bottom, right], np.int64)
    b.add("Pad", [b.name, pads], (c, h + top + bottom, w + left + right), mode="constant")
    return True


def transpose(b: Builder) -> bool:
    c, h, w = b.shape
    perm = [(0, 1, 3, 2), (0, 2, 3, 1), (0, 3, 1, 2)][int(b.rng.integers(3))]
    full = (1, c, h, w)
    b.add("Transpose", [b.name], tuple(full[p] for p in perm[1:]), perm=list(perm))
    return True


def reduce_mean(b: Builder) -> bool:
    c, h, w = b.shape
    if b.rng.random() < 0.5:
        b.add("ReduceMean", [b.name], (c, 1, 1), axes=[2, 3], keepdims=1)
    else:
        b.add("ReduceMean", [b.name], (1, h, w), axes=[1], keepdims=1)
    return True


def softmax(b: Builder) -> bool:
    b.add("Softmax", [b.name], b.shape, axis=1)
    return True


def unary(b: Builder) -> bool:
    """A C library function (float models: the runtime calls logf, sinf ... on the CPU)."""
    op = str(b.rng.choice(["Exp", "Log", "Sin", "Cos", "Sqrt", "Abs", "Neg", "Floor", "Ceil"]))
    if op in ("Log", "Sqrt"):
        b.add("Abs", [b.name], b.shape)
    b.add(op, [b.name], b.shape)
    return True


SPATIAL = [conv, conv, conv, activation, activation, pool, with_constant, branch, resize, pad, transpose,
           reduce_mean, softmax]


def head(b: Builder) -> None:
    """Flatten (or reshape) + Gemm (or MatMul), then maybe an activation or a softmax."""
    n = int(np.prod(b.shape))
    units = int(b.rng.integers(1, 11))
    if b.rng.random() < 0.5:
        b.add("Flatten", [b.name], (n,), axis=1)
        b.add("Gemm", [b.name, b.const(b.weights(units, n)), b.const(b.rng.standard_normal(units) * 0.1)],
              (units,), transB=1)
    else:
        b.add("Reshape", [b.name, b.const([1, n], np.int64)], (n,))
        b.add("MatMul", [b.name, b.const(b.weights(units, n).T)], (units,))
    tail = b.rng.choice(["none", "Relu", "Softmax", "Sigmoid"])
    if tail != "none":
        b.add(str(tail), [b.name], b.shape, **({"axis": 1} if tail == "Softmax" else {}))


def kpu_block(b: Builder) -> bool:
    """What a v3 file can hold: a KPU conv (even sizes for stride 2), its activation and 2x2 pool."""
    c, h, w = b.shape
    if min(h, w) < 4:
        return False
    k = int(b.rng.choice([1, 3]))
    stride = 2 if h % 2 == 0 and w % 2 == 0 and b.rng.random() < 0.25 else 1
    depthwise = b.rng.random() < 0.25 and c > 1
    out_c = c if depthwise else int(b.rng.integers(1, 17))
    pad = k // 2
    inputs = [b.name, b.const(b.weights(out_c, 1 if depthwise else c, k, k))]
    if b.rng.random() < 0.7:
        inputs.append(b.const(b.rng.standard_normal(out_c) * 0.1))
    b.add("Conv", inputs, (out_c, h // stride, w // stride), kernel_shape=[k, k], strides=[stride, stride],
          pads=[pad] * 4, group=c if depthwise else 1)
    if b.rng.random() < 0.7:
        activation(b)
    c, h, w = b.shape
    if h % 2 == 0 and w % 2 == 0 and min(h, w) >= 8 and b.rng.random() < 0.3:
        b.add(str(b.rng.choice(["MaxPool", "AveragePool"])), [b.name], (c, h // 2, w // 2), kernel_shape=[2, 2],
              strides=[2, 2])
    return True


def kpu_join(b: Builder) -> bool:
    """Two KPU branches of one input joined: add (v3 QuantizedAdd) or concat over channels."""
    x, (c, h, w) = b.name, b.shape
    if min(h, w) < 4:
        return False
    b.add("Conv", [x, b.const(b.weights(c, c, 3, 3)), b.const(b.rng.standard_normal(c) * 0.1)], (c, h, w),
          kernel_shape=[3, 3], pads=[1] * 4)
    if b.rng.random() < 0.5:
        b.add("Relu", [b.name], b.shape)
    if b.rng.random() < 0.5:
        b.add("Add", [x, b.name], (c, h, w))
    else:
        b.add("Concat", [x, b.name], (2 * c, h, w), axis=1)
    return True


def nearest_upsample(b: Builder) -> bool:
    c, h, w = b.shape
    if max(h, w) > 16:
        return False
    b.add("Resize", [b.name, "", b.const([1, 1, 2, 2])], (c, 2 * h, 2 * w), mode="nearest",
          coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    return True


def v3_style(b: Builder) -> None:
    """A uint8 model shaped like the v3 models of the K210 SDK: KPU blocks, then GAP or a dense head."""
    kpu_block(b)
    ops = [kpu_block, kpu_block, kpu_block, kpu_join, nearest_upsample]
    for _ in range(int(b.rng.integers(0, 4))):
        ops[int(b.rng.integers(len(ops)))](b)
    end = b.rng.random()
    if end < 0.3:
        b.add("GlobalAveragePool", [b.name], (b.shape[0], 1, 1))
    elif end < 0.6:
        n = int(np.prod(b.shape))
        units = int(b.rng.integers(1, 11))
        b.add("Flatten", [b.name], (n,), axis=1)
        b.add("Gemm", [b.name, b.const(b.weights(units, n)), b.const(b.rng.standard_normal(units) * 0.1)],
              (units,), transB=1)
        if b.rng.random() < 0.5:
            softmax(b) if b.rng.random() < 0.5 else b.add("Sigmoid", [b.name], b.shape)


def random_model(seed: int) -> tuple[onnx.ModelProto, str]:
    """A seeded random ONNX model and its inference type ("uint8" or "float")."""
    rng = np.random.default_rng(seed)
    if rng.random() < V3_STYLE:
        b = Builder(rng, (int(rng.integers(1, 9)), 2 * int(rng.integers(2, 9)), 2 * int(rng.integers(2, 9))))
        v3_style(b)
        return _model(b, seed), "uint8"
    inference = "float" if rng.random() < 0.6 else "uint8"
    if rng.random() < 0.15:   # an MLP on a flat input (iris-like: v3 starts it at a FullyConnected)
        b = Builder(rng, (int(rng.integers(2, 17)),))
        for _ in range(int(rng.integers(1, 3))):
            units = int(rng.integers(2, 17))
            b.add("Gemm", [b.name, b.const(b.weights(units, b.shape[0])), b.const(rng.standard_normal(units) * 0.1)],
                  (units,), transB=1)
            if rng.random() < 0.6:
                activation(b)
        if rng.random() < 0.5:
            softmax(b)
    else:
        b = Builder(rng, (int(rng.integers(1, 9)), int(rng.integers(4, 17)), int(rng.integers(4, 17))))
        conv(b)   # real K210 models start with a conv (and v3 has to: layer 0 is a K210Conv)
        ops = SPATIAL + ([unary] * 4 if inference == "float" else [])
        for _ in range(int(rng.integers(0, 5))):
            while not ops[int(rng.integers(len(ops)))](b):
                pass
        if rng.random() < 0.3:
            head(b)
    return _model(b, seed), inference


def _model(b: Builder, seed: int) -> onnx.ModelProto:
    graph = helper.make_graph(b.nodes, f"random{seed}",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, *b.input_shape])],
                              [helper.make_tensor_value_info(b.name, TensorProto.FLOAT, [1, *b.shape])], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


# ---------------------------------------------------------------- compile and compare
def compile_both(path, inference: str, samples: list, seed: int) -> dict[int, bytes | str]:
    """kmodel bytes per version (prepared once, lowered twice), or the one-line reason a version cannot.
    One graph in four gets kpuc's bias correction and weight rounding (slow, and they change only weights)."""
    thorough = seed % 4 == 0
    opts = CompileOptions(inference_type=inference, bias_correction=thorough, weight_rounding=thorough)
    target = get_target("k210")
    try:
        prepared = prepare_model(path, opts, target, samples=samples)
    except KpucError as e:
        return {v: f"{type(e).__name__}: {e}" for v in (3, 4)}
    out: dict[int, bytes | str] = {}
    for version in (3, 4):
        try:
            out[version] = target.lower(target.device_graph(prepared.final, version),
                                        replace(opts, kmodel_version=version))[0]
        except KpucError as e:
            out[version] = f"{type(e).__name__}: {e}"
    return out


def calibration_samples(model: onnx.ModelProto, seed: int) -> list[np.ndarray]:
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng([seed, 1])
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(CALIBRATION_SAMPLES)]


@pytest.mark.slow
def test_random_graphs_run_identically_in_the_oracle_and_in_kpuc(tmp_path):
    require(ORACLE / "v3run", ORACLE / "v4run")
    programs = {v: oracle_program(v) for v in (3, 4)}
    if not all(programs.values()):
        pytest.skip(f"the oracle runtimes in {ORACLE} are not executable")
    ran, refused, values, failures = {3: 0, 4: 0}, {3: 0, 4: 0}, 0, []
    for seed in range(SEEDS):
        model, inference = random_model(seed)
        path = tmp_path / f"graph{seed}.onnx"
        onnx.save(model, path)
        for version, kmodel in compile_both(path, inference, calibration_samples(model, seed), seed).items():
            if isinstance(kmodel, str):
                refused[version] += 1
                continue
            workdir = tmp_path / f"graph{seed}.v{version}"
            try:
                result = compare_with_oracle(kmodel, workdir, seed, programs[version])
            except (AssertionError, KpucError) as e:
                failures.append(f"seed {seed} v{version} {inference}: {e}")
                continue
            if result.differing:
                failures.append(f"seed {seed} v{version} {inference}: {result.differing} of {result.values} "
                                f"values differ: {result.detail}")
                continue
            ran[version] += 1
            values += result.values
            shutil.rmtree(workdir)
        path.unlink()
    print(f"\n{SEEDS} random graphs: ran in both runtimes v3 {ran[3]}, v4 {ran[4]} (not lowerable: v3 {refused[3]}, "
          f"v4 {refused[4]}); {values} float32 values compared, {len(failures)} failing")
    assert not failures, "\n".join(failures[:20])
    assert min(ran.values()) >= GRAPHS_PER_VERSION, f"only {ran} graphs per version ran (want {GRAPHS_PER_VERSION})"


# ---------------------------------------------------------------- one op, many values
def _near_quadrant_multiples() -> np.ndarray:
    base = np.float32(np.arange(1, 65) * np.pi / 2).view(np.int32)
    return (base[:, None] + np.arange(-200, 200)[None, :]).astype(np.int32).view(np.float32).ravel()


ONE_OP_INPUTS = {  # op: its input values (the C library function the v4 runtime calls on each)
    "Exp": lambda rng: rng.uniform(-105, 90, ONE_OP_VALUES),
    "Log": lambda rng: np.exp(rng.uniform(-90, 88, ONE_OP_VALUES)),
    "Sin": lambda rng: np.concatenate([_near_quadrant_multiples(), rng.uniform(-300, 300, ONE_OP_VALUES)]),
    "Cos": lambda rng: np.concatenate([-_near_quadrant_multiples(), rng.uniform(-300, 300, ONE_OP_VALUES)]),
    "Sigmoid": lambda rng: rng.uniform(-90, 90, ONE_OP_VALUES),
    "Tanh": lambda rng: rng.uniform(-45, 45, ONE_OP_VALUES),
}
ONE_OP_VALUES = 4 * 160 * 160


@pytest.mark.parametrize("op", sorted(ONE_OP_INPUTS))
def test_one_float_op_over_100k_values_equals_the_oracle(op, tmp_path):
    """The C library functions (expf, logf, sinf, cosf; sigmoid and tanh are NNIL programs around expf) on
    10^5 values through a one-op float kmodel v4: the v4 runtime's result, bit for bit."""
    program = oracle_program(4)
    require(ORACLE / "v4run")
    if program is None:
        pytest.skip(f"{ORACLE / 'v4run'} is not executable")
    shape = [1, 4, 160, 160]
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"])], op,
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.save(model, tmp_path / f"{op}.onnx")
    kmodel = compile_both(tmp_path / f"{op}.onnx", "float", [], 1)[4]
    assert isinstance(kmodel, bytes), kmodel
    x = ONE_OP_INPUTS[op](np.random.default_rng(7)).astype(np.float32)[:ONE_OP_VALUES]
    result = compare_with_oracle(kmodel, tmp_path / "run", 0, program, x=x)
    assert result.values == ONE_OP_VALUES
    assert result.differing == 0, result.detail
