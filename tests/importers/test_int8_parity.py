"""Pre-quantized TFLite patterns from the zoo's int8 models, built here, against LiteRT's reference
kernels: `kpuc infer` (GridExecutor) gives LiteRT's exact output codes (0 steps) where LiteRT's
arithmetic is integer-deterministic."""
from __future__ import annotations

import numpy as np
from test_tflite_ops import Op, T, build, opts

from compiler.importers import import_model
from compiler.model_quant import GridExecutor

R = np.random.default_rng(12)


def _litert(model: bytes, feeds: list[np.ndarray]) -> list[np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    it = Interpreter(model_content=model, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    it.allocate_tensors()
    for d, a in zip(it.get_input_details(), feeds):
        it.set_tensor(d["index"], a)
    it.invoke()
    return [it.get_tensor(d["index"]) for d in it.get_output_details()]


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
    want = _litert(model, feeds)
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
