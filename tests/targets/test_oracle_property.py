"""The oracle property: random small graphs, compiled by kpuc to kmodel v3 and v4, run identically in the
oracle runtimes (../shared/oracle: v3run is the K210 SDK's v3 loader, v4run nncase v0.2.0-beta4's runtime)
and in kpuc's interpreter (`kpuc infer`): 0 differing float32 values.

Each graph is a seeded chain of the ops real K210 models use (tests/random_graphs.py: conv 1x1/3x3, stride
1/2, depthwise; activations; pools; add/mul with constants and between branches; concat; flatten + gemm;
softmax; resize; pad; transpose; reduce mean; in float models also exp/log/sin/cos/sqrt...), compiled
in-process (uint8 with a few seeded calibration samples, or --inference-type float) and lowered for both
versions, then run on one seeded random input in both runtimes (one oracle process per graph and version).
A graph a version cannot express (CannotLower, unsupported) does not count; at least GRAPHS_PER_VERSION
graphs must have run in both runtimes for each version.
"""
from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.errors import KpucError
from compiler.pipeline import CompileOptions, prepare_model
from oracle_run import compare_with_oracle, oracle_program
from random_graphs import OPSET, random_model
from shared_data import ORACLE, require
from targets import get_target

GRAPHS_PER_VERSION = 200
SEEDS = 300            # graphs tried: both versions pass GRAPHS_PER_VERSION with some margin
CALIBRATION_SAMPLES = 3


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


LIBM_VALUES = 4 * 160 * 160
LIBM_INPUTS = {  # op: its input values (the C library function the v4 runtime calls on each)
    "Exp": lambda rng: rng.uniform(-105, 90, LIBM_VALUES),
    "Log": lambda rng: np.exp(rng.uniform(-90, 88, LIBM_VALUES)),
    "Sin": lambda rng: np.concatenate([_near_quadrant_multiples(), rng.uniform(-300, 300, LIBM_VALUES)]),
    "Cos": lambda rng: np.concatenate([-_near_quadrant_multiples(), rng.uniform(-300, 300, LIBM_VALUES)]),
    "Sigmoid": lambda rng: rng.uniform(-90, 90, LIBM_VALUES),
    "Tanh": lambda rng: rng.uniform(-45, 45, LIBM_VALUES),
    "Softplus": lambda rng: rng.uniform(-90, 90, LIBM_VALUES),
}


def one_op_model(op: str, in_shape, out_shape, consts=(), **attrs) -> onnx.ModelProto:
    """x -> op(x, *consts) -> y as an ONNX model."""
    names = [f"c{i}" for i in range(len(consts))]
    graph = helper.make_graph([helper.make_node(op, ["x", *names], ["y"], **attrs)], op,
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                              [numpy_helper.from_array(np.asarray(c), n) for c, n in zip(consts, names)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


def float_v4_against_the_oracle(model: onnx.ModelProto, x: np.ndarray, folder):
    """Compile `model` with --inference-type float to kmodel v4 and run it on `x` in both runtimes."""
    program = oracle_program(4)
    require(ORACLE / "v4run")
    if program is None:
        pytest.skip(f"{ORACLE / 'v4run'} is not executable")
    onnx.save(model, folder / "model.onnx")
    kmodel = compile_both(folder / "model.onnx", "float", [], 1)[4]
    assert isinstance(kmodel, bytes), kmodel
    return compare_with_oracle(kmodel, folder / "run", 0, program, x=x)


@pytest.mark.parametrize("op", sorted(LIBM_INPUTS))
def test_c_library_functions_over_100k_values_equal_the_oracle(op, tmp_path):
    """expf, logf, sinf, cosf (sigmoid, tanh and softplus are NNIL programs around expf and logf) on 10^5
    values through a one-op float kmodel v4: the v4 runtime's result, bit for bit."""
    shape = [1, 4, 160, 160]
    x = LIBM_INPUTS[op](np.random.default_rng(7)).astype(np.float32)[:LIBM_VALUES]
    result = float_v4_against_the_oracle(one_op_model(op, shape, shape), x, tmp_path)
    assert result.values == LIBM_VALUES
    assert result.differing == 0, result.detail


S = [1, 8, 40, 40]
FLOAT_ORDER_CASES = {  # float32 sums and their order, float32 coordinates: one op each, (in shape, out shape, ...)
    "conv3x3": ("Conv", [1, 16, 40, 40], [np.random.default_rng(1).standard_normal((16, 8, 3, 3)).astype(np.float32)],
                {"pads": [1] * 4}),
    "average_pool": ("AveragePool", S, [], {"kernel_shape": [3, 3], "pads": [1] * 4}),
    "reduce_mean": ("ReduceMean", [1, 1, 40, 40], [], {"axes": [1]}),
    "global_average_pool": ("GlobalAveragePool", [1, 8, 1, 1], [], {}),
    "softmax": ("Softmax", S, [], {"axis": 1}),
    "lp_normalize": ("LpNormalization", S, [], {"axis": 1, "p": 2}),
    "bilinear": ("Resize", [1, 8, 120, 100], [np.zeros(0, np.float32), np.array([1, 1, 3, 2.5], np.float32)],
                 {"mode": "linear", "coordinate_transformation_mode": "asymmetric"}),
    "bilinear_align_corners": ("Resize", [1, 8, 79, 79], [np.zeros(0, np.float32), np.zeros(0, np.float32),
                                                          np.array([1, 8, 79, 79])],
                               {"mode": "linear", "coordinate_transformation_mode": "align_corners"}),
}


@pytest.mark.parametrize("case", sorted(FLOAT_ORDER_CASES))
def test_float_accumulations_and_coordinates_equal_the_oracle(case, tmp_path):
    """The float32 kernels where operation order or coordinate math could differ from the runtime's loops."""
    op, out_shape, consts, attrs = FLOAT_ORDER_CASES[case]
    x = (np.random.default_rng(8).standard_normal(S) * 3).astype(np.float32)
    result = float_v4_against_the_oracle(one_op_model(op, S, out_shape, consts, **attrs), x, tmp_path)
    assert result.values == np.prod(out_shape)
    assert result.differing == 0, result.detail
