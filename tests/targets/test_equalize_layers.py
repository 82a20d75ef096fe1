"""`--equalize-layers` on a real model: ulffd_landmark (22 conv -> ReLU -> conv pairs). The rescaled float
graph still computes what LiteRT computes from the .tflite, and the kmodel compiled from it is a file the
device runtime runs as kpuc does (tests/conftest.py runs every kmodel written under tmp_path in the oracle)."""
from dataclasses import replace

import numpy as np

from compiler.datasets import iter_dataset
from compiler.executor import Executor
from compiler.pipeline import CompileOptions, compile_model, prepare_float, prepare_model
from passes.equalize_cross_layer import equalizable_pairs
from shared_data import GOLDEN, needs
from targets import get_target

ULFFD = GOLDEN / "ulffd_landmark-v4"
MODEL, DATASET = ULFFD / "ulffd_landmark.tflite", ULFFD / "dataset"
OPTS = CompileOptions(input_mean=0.5, input_std=1.0, equalize_layers=True)


def _samples(n: int) -> list:
    shape = prepare_float(MODEL, OPTS).float_graph.inputs[0].shape
    return [[s.data] for s in list(iter_dataset(DATASET, shape, mean=0.5, std=1.0))[:n]]


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
