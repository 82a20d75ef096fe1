"""Per-layer accuracy of a quantized graph against the float graph it came from.

Both graphs run on the same inputs with every intermediate kept. A node of the quantized graph that
computes a value of the float graph says so in node.meta["float_value"] (targets/k210/quantize.py sets
it); its output, dequantized with its Value.quant when it is an integer tensor, is compared with that
float value. Per value, over all inputs: cosine similarity, SQNR in dB (10·log10 of signal power over
error power) and the largest absolute error. Target-neutral: the caller passes the quantized kernels.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from compiler.executor import Executor
from compiler.ir import Graph, Value
from compiler.kernels import KERNELS


@dataclass
class LayerStats:
    """Running sums for one compared value (float64)."""
    name: str
    op: str
    sum_ref2: float = 0.0
    sum_q2: float = 0.0
    sum_dot: float = 0.0
    sum_err2: float = 0.0
    max_abs: float = 0.0
    count: int = 0

    def add(self, ref: np.ndarray, got: np.ndarray) -> None:
        r, q = np.asarray(ref, np.float64).reshape(-1), np.asarray(got, np.float64).reshape(-1)
        e = r - q
        self.sum_ref2 += float(r @ r)
        self.sum_q2 += float(q @ q)
        self.sum_dot += float(r @ q)
        self.sum_err2 += float(e @ e)
        self.max_abs = max(self.max_abs, float(np.abs(e).max(initial=0.0)))
        self.count += 1

    @property
    def cosine(self) -> float:
        den = math.sqrt(self.sum_ref2 * self.sum_q2)
        return self.sum_dot / den if den else (1.0 if self.sum_err2 == 0 else 0.0)

    @property
    def sqnr_db(self) -> float:
        if self.sum_err2 == 0:
            return math.inf
        return 10 * math.log10(self.sum_ref2 / self.sum_err2) if self.sum_ref2 else -math.inf


@dataclass
class AccuracyReport:
    layers: list[LayerStats] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    def layer(self, name: str) -> LayerStats:
        return next(s for s in self.layers if s.name == name)


def as_float(value: Value, data: np.ndarray) -> np.ndarray:
    """A value's array in real units: integer tensors with a QuantParam are dequantized (float64)."""
    q = value.quant
    if q is None or np.issubdtype(data.dtype, np.floating):
        return np.asarray(data, np.float64)
    return (np.asarray(data, np.float64) - q.zero_point) * q.scale


def compare(float_graph: Graph, quant_graph: Graph, feeds: Iterable, *, float_kernels: Mapping = KERNELS,
            quant_kernels: Mapping = KERNELS) -> AccuracyReport:
    """Run both graphs on every feed (an array, a list of arrays or a feed dict) and compare each value."""
    pairs = [(n.meta["float_value"], n) for n in quant_graph.nodes if "float_value" in n.meta]
    report = AccuracyReport(outputs=[v.name for v in float_graph.outputs])
    stats = {name: LayerStats(name, node.op) for name, node in pairs}
    f_exec, q_exec = Executor(float_graph, float_kernels), Executor(quant_graph, quant_kernels)
    for feed in feeds:
        feed = getattr(feed, "data", feed)
        feed = feed if isinstance(feed, (Mapping, list, tuple)) else [feed]
        ref, got = f_exec.run(feed, keep_all=True), q_exec.run(feed, keep_all=True)
        for name, node in pairs:
            # a value carried another way (a split layer's two copies: twice the channels) has no float twin
            if name in ref and node.outputs[0].name in got and ref[name].size == got[node.outputs[0].name].size:
                stats[name].add(ref[name], as_float(node.outputs[0], got[node.outputs[0].name]))
    order = {v.name: i for i, n in enumerate(float_graph.nodes) for v in n.outputs}
    report.layers = sorted((s for s in stats.values() if s.count), key=lambda s: order.get(s.name, len(order)))
    return report


def worst_layer(report: AccuracyReport) -> LayerStats | None:
    """The compared value with the lowest SQNR (ties: the earliest)."""
    return min(report.layers, key=lambda s: s.sqnr_db, default=None)


def format_report(report: AccuracyReport, *, width: int = 48) -> str:
    """A text table: one row per compared value in graph order, the worst layer marked."""
    worst = worst_layer(report)
    head = f"{'value':<{width}} {'op':<16} {'cosine':>9} {'SQNR dB':>8} {'max |err|':>10}"
    rows = [head, "-" * len(head)]
    for s in report.layers:
        name = s.name if len(s.name) <= width else "…" + s.name[-width + 1:]
        mark = "  <- worst" if s is worst else ""
        rows.append(f"{name:<{width}} {s.op:<16} {s.cosine:>9.5f} {s.sqnr_db:>8.2f} {s.max_abs:>10.4g}{mark}")
    return "\n".join(rows)


__all__ = ["AccuracyReport", "LayerStats", "compare", "worst_layer", "format_report", "as_float"]
