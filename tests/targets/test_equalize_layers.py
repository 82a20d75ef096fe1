"""`--equalize-layers` on a real model: ulffd_landmark (22 conv -> ReLU -> conv pairs). The rescaled float
graph still computes what LiteRT computes from the .tflite, and the kmodel compiled from it is a file the
device runtime runs as kpuc does (tests/conftest.py runs every kmodel written under tmp_path in the oracle)."""
from dataclasses import replace

import numpy as np
import pytest

from compiler.datasets import iter_dataset
from compiler.executor import Executor
from compiler.pipeline import CompileOptions, compile_model, prepare_float, prepare_model
from passes.equalize_cross_layer import equalizable_pairs
from shared_data import GOLDEN, MOBILENET, TFLITE_OPS, needs
from targets import get_target

ULFFD = GOLDEN / "ulffd_landmark-v4"
MODEL, DATASET = ULFFD / "ulffd_landmark.tflite", ULFFD / "dataset"
OPTS = CompileOptions(input_mean=0.5, input_std=1.0, equalize_layers=True)


def _samples(n: int, model=MODEL, opts=OPTS) -> list:
    shape = prepare_float(model, opts).float_graph.inputs[0].shape
    return [[s.data] for s in list(iter_dataset(DATASET, shape, mean=opts.input_mean, std=opts.input_std))[:n]]


@needs(MODEL, DATASET)
def test_the_equalized_float_graph_still_computes_litert_s_function(tmp_path):
    from ai_edge_litert.interpreter import Interpreter
    samples = _samples(4)
    prepared = prepare_model(MODEL, OPTS, get_target("k210"), samples=samples)
    assert len(equalizable_pairs(prepare_float(MODEL, OPTS).float_graph)) == 22
    it = Interpreter(model_path=str(MODEL))
    it.allocate_tensors()
    x = samples[0][0]
    it.set_tensor(it.get_input_details()[0]["index"], x.transpose(0, 2, 3, 1))
    it.invoke()
    ours = Executor(prepared.float_graph).run([x])
    for d, got in zip(it.get_output_details(), ours.values(), strict=True):
        want = it.get_tensor(d["index"]).reshape(-1)
        np.testing.assert_allclose(np.asarray(got).reshape(-1), want, rtol=1e-3, atol=1e-4)


@needs(MODEL, DATASET)
def test_an_equalized_kmodel_runs_as_written(tmp_path):
    samples = _samples(4)
    plain = compile_model(MODEL, replace(OPTS, equalize_layers=False), get_target("k210"), samples=samples)
    result = compile_model(MODEL, OPTS, get_target("k210"), samples=samples)
    assert result.kmodel != plain.kmodel           # the option reaches the file ...
    (tmp_path / "equalized.kmodel").write_bytes(result.kmodel)    # ... which the oracle check runs


MOBILENET_OPTS = CompileOptions(input_mean=0.5, input_std=0.5, equalize_layers=True)
MOBILENET_QUANT = TFLITE_OPS / "mobilenet_v1_0.25_128_quant.tflite"


@needs(MOBILENET, DATASET)
@pytest.mark.parametrize("version", [3, 4])
def test_relu6_pairs_are_rescaled_and_their_kmodel_runs_as_written(tmp_path, version):
    # MobileNet v1's pairs all end in ReLU6: each rescaled conv gets one common clamp top, so its float graph
    # is LiteRT's function on the calibration photos (past them a channel clips where its grid ends)
    from ai_edge_litert.interpreter import Interpreter
    samples = _samples(4, MOBILENET, MOBILENET_OPTS)
    pairs = equalizable_pairs(prepare_float(MOBILENET, MOBILENET_OPTS).float_graph)
    assert len(pairs) == 26 and all(c1.attrs["fused_clamp"] == (0.0, 6.0) for c1, _ in pairs)
    opts = replace(MOBILENET_OPTS, kmodel_version=version)
    result = compile_model(MOBILENET, opts, get_target("k210"), samples=samples)
    it = Interpreter(model_path=str(MOBILENET))
    it.allocate_tensors()
    for (x,) in samples:
        it.set_tensor(it.get_input_details()[0]["index"], x.transpose(0, 2, 3, 1))
        it.invoke()
        want = it.get_tensor(it.get_output_details()[0]["index"]).reshape(-1)
        got = np.asarray(next(iter(Executor(result.float_graph).run([x]).values()))).reshape(-1)
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    plain = compile_model(MOBILENET, replace(opts, equalize_layers=False), get_target("k210"), samples=samples)
    assert result.kmodel != plain.kmodel
    (tmp_path / f"equalized.v{version}.kmodel").write_bytes(result.kmodel)    # the oracle check runs it


@needs(MOBILENET_QUANT, DATASET)
def test_a_prequantized_model_keeps_its_own_grids(tmp_path):
    # rescaling channels would move tensors off the grids the model gives them (before this guard: coral
    # MobileNet v1 0.5 quant's judged worst cosine 0.989 -> 0.0002), so the option leaves the file unchanged
    samples = _samples(2, MOBILENET, MOBILENET_OPTS)
    opts = CompileOptions(input_mean=0.5, input_std=0.5)
    plain = compile_model(MOBILENET_QUANT, opts, get_target("k210"), samples=samples)
    asked = compile_model(MOBILENET_QUANT, replace(opts, equalize_layers=True), get_target("k210"), samples=samples)
    assert asked.kmodel == plain.kmodel
