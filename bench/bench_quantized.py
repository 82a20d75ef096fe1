"""Accuracy of the K210 quantization on MobileNet v1 0.25/128, and where it is lost (a script, not a test).

    .venv/bin/python bench/bench_quantized.py [--method no_clip|l2] [--threshold T]

Calibrates on the first 10 images of the ulffd dataset (mean 0.5, std 0.5), judges on the other 10 plus
the dog image, and prints: top-1 agreement and worst softmax cosine of the quantized graph (the
integer KPU kernels), then the same two numbers for fake-quantized float graphs that isolate one error
source each -- nncase's equalised 8-bit weights only, ideal per-channel 8-bit weights only, 8-bit
activations only -- and the per-layer report. It also times calibration, quantization and execution.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compiler.accuracy import compare, format_report, worst_layer  # noqa: E402
from compiler.calibration import calibrate  # noqa: E402
from compiler.executor import Executor  # noqa: E402
from compiler.importers import import_model  # noqa: E402
from compiler.pipeline import optimize_generic  # noqa: E402
from compiler.quantization import dequantize_u8, get_quant_param, get_range, quantize_u8  # noqa: E402
from targets.k210.kernels import QUANTIZED_KERNELS, QuantizedExecutor  # noqa: E402
from targets.k210.legalize import legalize_k210  # noqa: E402
from targets.k210.quantize import quantize_k210, quantize_kpu_weights  # noqa: E402

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "targets")]  # test_quantize_k210 imports shared_data
from test_quantize_k210 import MOBILENET, mobilenet_inputs  # noqa: E402


def nncase_weights(w):
    wq, scales, w_q = quantize_kpu_weights(w)
    return (dequantize_u8(w_q, wq) / scales.reshape(-1, 1, 1, 1)).astype(np.float32)


def per_channel_weights(w):
    out = np.empty_like(w)
    for oc in range(w.shape[0]):
        q = get_quant_param(get_range(w[oc]))
        out[oc] = dequantize_u8(quantize_u8(w[oc], q), q)
    return out


class FakeQuant(Executor):
    """The float graph with KPU-layer weights and/or outputs rounded through 8 bits."""

    def __init__(self, graph, ranges, weights=None, activations=False):
        super().__init__(graph)
        self.ranges, self.weights, self.activations = ranges, weights, activations

    def run_node(self, node, args):
        if node.op == "kpu_conv2d" and self.weights is not None:
            args = [args[0], self.weights(args[1]), args[2]]
        out = super().run_node(node, args)
        if node.op == "kpu_conv2d" and self.activations:
            q = get_quant_param(self.ranges[node.output.name])
            out = (dequantize_u8(quantize_u8(out[0], q), q),)
        return out


def score(reference: Executor, other: Executor, graph, judged) -> tuple[int, float]:
    name = graph.outputs[0].name
    agree, cosines = 0, []
    for x in judged:
        f, r = reference.run([x])[name].reshape(-1), other.run([x])[name].reshape(-1)
        agree += int(f.argmax() == r.argmax())
        cosines.append(float(f @ r / (np.linalg.norm(f) * np.linalg.norm(r))))
    return agree, min(cosines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="no_clip", choices=["no_clip", "l2"])
    ap.add_argument("--threshold", type=float, default=64.0, help="weights_quantize_threshold")
    args = ap.parse_args()
    g = import_model(MOBILENET)
    optimize_generic(g)
    legalize_k210(g)
    calib, judged = mobilenet_inputs()
    t0 = time.perf_counter()
    ranges = calibrate(g, calib, method=args.method, input_mean=0.5, input_std=0.5)
    t1 = time.perf_counter()
    q = quantize_k210(g, ranges, weights_quantize_threshold=args.threshold)
    t2 = time.perf_counter()
    ref = Executor(g)
    n = len(judged)
    agree, cos = score(ref, QuantizedExecutor(q), g, judged)
    t3 = time.perf_counter()
    print(f"calibrate {t1 - t0:.2f} s, quantize {t2 - t1:.2f} s, run {n} inputs float + quantized {t3 - t2:.2f} s; "
          f"{len(q.nodes_of('kpu_conv2d_q'))} KPU layers")
    print(f"{'quantized graph (integer kernels)':48s} top-1 {agree}/{n}  worst cosine {cos:.4f}")
    for label, ex in [("fake quant: nncase weights only", FakeQuant(g, ranges, nncase_weights)),
                      ("fake quant: per-channel 8-bit weights only", FakeQuant(g, ranges, per_channel_weights)),
                      ("fake quant: 8-bit activations only", FakeQuant(g, ranges, activations=True)),
                      ("fake quant: nncase weights + activations", FakeQuant(g, ranges, nncase_weights, True))]:
        agree, cos = score(ref, ex, g, judged)
        print(f"{label:48s} top-1 {agree}/{n}  worst cosine {cos:.4f}")
    report = compare(g, q, judged, quant_kernels=QUANTIZED_KERNELS)
    print(format_report(report, width=64))
    w = worst_layer(report)
    print(f"worst layer: {w.name} ({w.op}) cosine {w.cosine:.5f} SQNR {w.sqnr_db:.2f} dB max |err| {w.max_abs:.4g}")


if __name__ == "__main__":
    main()
