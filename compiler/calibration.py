"""Post-training calibration: run the float graph over a dataset and record the range of every value.

As ncc v0.2 does it (kmodel-v4.md §11, nncase src/cli/compile.cpp + src/evaluator/quantizer.cpp):
1. every sample is run through the float graph and, per value, the float32 min/max of its finite
   elements (`get_range`) is merged into a running union;
2. `l2` and `mse` (kpuc's own) only: a second pass fills, per value, a 2048-bin histogram over the
   fixed-up range of pass 1;
3. a method from CALIBRATION_METHODS turns the statistics of each value into its range;
4. with an explicit input mean/std the model input's range is forced to [(0-mean)/std, (1-mean)/std]
   instead of being measured;
5. ranges are broadcast unchanged through shape-only ops (BROADCAST_OPS), in graph order, so a
   reshape/pad/slice between two quantized layers needs no requantization.

`Calibrator(Executor)` overrides `run_node` (torch.fx's ShapeProp pattern). An op with an entry in
CALIBRATION_STAGES (a target fills it in: the K210's kpu_conv2d, targets/k210/ops.py) is run by that
function, which also returns intermediate arrays whose ranges the target's quantizer needs; each is
recorded under `stage_key(value, stage)` (stage "" is the value itself).
Results: `calibrate(...)` returns {key: (min, max)} and writes node.meta["range"] (and
node.meta["<stage>_range"] for each stage).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from compiler.errors import KpucError
from compiler.executor import Executor
from compiler.ir import Graph, Node
from compiler.kernels import KERNELS
from compiler.ops import ops_with
from compiler.progress import progress
from compiler.quantization import F32, FLT_MAX, FLT_MIN, Range, fixup_range, get_range, union_range

HISTOGRAM_BINS = 2048     # ncc: quantizer(cali_method, 2048)
QUANT_LEVELS = 256        # uint8
STAGE_MARK = "#"          # a stage key is <value>#<stage>
# Ops whose output range is their data inputs' range (nncase cpu_target::add_quantization_broadcast, plus
# the pure data movements kpuc's K210 legalization emits for dilated convs); several inputs: the union.
BROADCAST_OPS = ops_with("range_preserving")
# op -> fn(args, attrs) -> (outputs, {stage: array}): how a target's op is run and measured in stages.
CALIBRATION_STAGES: dict[str, Callable] = {}


def stage_key(value_name: str, stage: str) -> str:
    """Range key of an intermediate `stage` of the node making `value_name` ("" is the value itself)."""
    return value_name + STAGE_MARK + stage if stage else value_name


# ------------------------------------------------------------------ statistics and methods
@dataclass
class Stats:
    """What calibration knows about one value: its running float32 range, then (l2) a histogram."""
    lo: float = FLT_MAX
    hi: float = FLT_MIN
    counts: np.ndarray | None = None
    hist_range: Range | None = None
    zeros: float = 0.0          # exact zeros seen by the histogram pass (quantized exactly: zero error)

    def record_range(self, a: np.ndarray) -> None:
        self.lo, self.hi = union_range((self.lo, self.hi), get_range(a))

    def start_histogram(self, bins: int) -> None:
        self.hist_range = fixup_range((self.lo, self.hi))
        self.counts = np.zeros(bins, np.float64)

    def record_histogram(self, a: np.ndarray) -> None:
        """nncase histogram::record: bin = (size_t)clamp((v - min) / interval, 0, bins - 1), float32."""
        bins = len(self.counts)
        lo, interval = F32(self.hist_range[0]), bin_interval(self.hist_range, bins)
        v = np.asarray(a, F32).reshape(-1)
        v = v[~np.isnan(v)]
        with np.errstate(all="ignore"):
            idx = np.clip((v - lo) / interval, F32(0), F32(bins - 1)).astype(np.int64)
        self.counts += np.bincount(idx, minlength=bins)
        self.zeros += float(np.count_nonzero(v == 0))


def bin_interval(r: Range, bins: int) -> np.float32:
    return F32(F32(F32(r[1]) - F32(r[0])) / F32(bins))


def no_clip(stats: Stats) -> Range:
    """The union of the per-sample ranges (ncc's default)."""
    return stats.lo, stats.hi


_L2_KERNELS: dict[tuple[int, int], np.ndarray] = {}


def _l2_kernel(bins: int, levels: int) -> np.ndarray:
    """G[k, j]: squared rounding error (in bins) of bin offset j inside a window of d = levels + k bins
    quantized to `levels` codes; rows run over d = bins .. levels (descending), columns j = 0 .. bins."""
    key = (bins, levels)
    if key not in _L2_KERNELS:
        d = np.arange(bins, levels - 1, -1, dtype=np.float64)[:, None]
        j = np.arange(bins + 1, dtype=np.float64)[None, :]
        q = levels - 1
        code = np.clip(np.floor(j * q / d + 0.5), 0, q)           # std::round of a non-negative value
        g = (j - d / q * code) ** 2
        _L2_KERNELS[key] = np.where(j <= d, g, 0.0)
    return _L2_KERNELS[key]


def l2(stats: Stats, levels: int = QUANT_LEVELS) -> Range:
    """ncc's `l2` method (nncase histogram::finish): over bin pairs lower <= zero bin <= upper with
    upper - lower >= levels, minimise Σ_i count_i · (v_i - Q(v_i))², v_i the bin's left edge and Q the
    `levels`-code quantizer of [edge(lower), edge(upper)] (values outside clip to the ends).

    nncase loops over every pair (≈ bins³ work); here the loss splits into a below-range part, an
    above-range part (prefix sums) and an in-range part that depends only on (lower, width) and is one
    matrix product. Ties go to the pair nncase meets first: the lowest `lower`, then the highest `upper`.
    Computed in float64, so a near-tie can resolve differently from nncase's float32 sums."""
    p = stats.counts
    bins = len(p)
    lo_edge = F32(stats.hist_range[0])
    interval = bin_interval(stats.hist_range, bins)
    zero_bin = int(np.clip(F32((F32(0) - lo_edge) / interval), 0, bins - 1))
    i = np.arange(bins, dtype=np.float64)
    c0, c1, c2 = (np.concatenate([[0.0], np.cumsum(p * i ** k)]) for k in range(3))   # Σ_{i<n}
    lowers = np.arange(zero_bin + 1)
    # below[l] = Σ_{i<l} p_i (l - i)^2 ; above[u] = Σ_{i>u} p_i (i - u)^2 for u = 0..bins
    below = lowers ** 2 * c0[lowers] - 2 * lowers * c1[lowers] + c2[lowers]
    u = np.arange(bins + 1)
    t0, t1, t2 = (c[-1] - c[np.minimum(u + 1, bins)] for c in (c0, c1, c2))
    above = u ** 2 * t0 - 2 * u * t1 + t2
    widths = np.arange(bins, levels - 1, -1)
    padded = np.concatenate([p, np.zeros(bins + 1)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, bins + 1)[:zero_bin + 1]   # [l, j] = p[l + j]
    inside = windows @ _l2_kernel(bins, levels).T                                         # [l, width]
    uppers = lowers[:, None] + widths[None, :]
    valid = (uppers <= bins) & (uppers >= zero_bin)
    loss = np.where(valid, below[:, None] + above[np.minimum(uppers, bins)] + inside, np.inf)
    if not np.isfinite(loss).any():
        return stats.hist_range
    best_l, best_k = np.unravel_index(int(np.argmin(loss)), loss.shape)
    best_u = int(uppers[best_l, best_k])
    return (float(F32(F32(F32(best_l) * interval) + lo_edge)), float(F32(F32(F32(best_u) * interval) + lo_edge)))


def mse(stats: Stats, levels: int = QUANT_LEVELS) -> Range:
    """The clip range minimising the expected squared quantization error of the value's histogram:
    over every pair of bin edges lower <= 0 <= upper (lower = the histogram's own lower end when it is
    not negative, e.g. after a ReLU), loss = clipping error + rounding error, with

      clipping error  Σ_{bins outside} count · (centre - nearest end)²   (exact at bin centres)
      rounding error  (#values inside, exact zeros excluded) · step² / 12,  step = (upper - lower) / (levels - 1)

    (the uniform rounding-noise model; exact zeros are representable, so a ReLU's zeros cost nothing).
    Unlike `l2` it never forces the window to span `levels` bins, so a ReLU6 output whose tail is rare
    gets a range well below 6.0. Ties go to the widest range (lowest lower, highest upper). float64,
    deterministic."""
    p = np.asarray(stats.counts, np.float64)
    bins = len(p)
    lo_edge = float(F32(stats.hist_range[0]))
    interval = float(bin_interval(stats.hist_range, bins))
    if p.sum() == 0 or interval <= 0:
        return stats.hist_range
    centre = lo_edge + (np.arange(bins) + 0.5) * interval
    edges = lo_edge + np.arange(bins + 1) * interval            # edge e = lower end of bin e
    c0, c1, c2 = (np.concatenate([[0.0], np.cumsum(p * centre ** k)]) for k in range(3))   # Σ_{i<e}
    zero_edge = int(np.clip(np.floor(-lo_edge / interval + 0.5), 0, bins))                 # edge nearest 0
    lowers = np.arange(zero_edge + 1) if lo_edge < 0 else np.array([0])
    uppers = np.arange(max(zero_edge, 1), bins + 1)
    lo_v, hi_v = edges[lowers], edges[uppers]
    # below[l] = Σ_{i<l} p_i (c_i - e_l)², above[u] = Σ_{i>=u} p_i (c_i - e_u)²
    below = c2[lowers] - 2 * lo_v * c1[lowers] + lo_v ** 2 * c0[lowers]
    t0, t1, t2 = (c[-1] - c[uppers] for c in (c0, c1, c2))
    above = t2 - 2 * hi_v * t1 + hi_v ** 2 * t0
    inside = np.maximum(c0[uppers][None, :] - c0[lowers][:, None] - stats.zeros, 0.0)
    step = (hi_v[None, :] - lo_v[:, None]) / (levels - 1)
    loss = below[:, None] + above[None, :] + inside * step ** 2 / 12.0
    loss = np.where(step > 0, loss, np.inf)
    # ties: the lowest lower, then the highest upper
    flipped = loss[:, ::-1]
    best_l, k = np.unravel_index(int(np.argmin(flipped)), flipped.shape)
    best_u = len(uppers) - 1 - k
    return float(F32(lo_v[best_l])), float(F32(hi_v[best_u]))


CALIBRATION_METHODS: dict[str, Callable[[Stats], Range]] = {"no_clip": no_clip, "l2": l2, "mse": mse}


# ------------------------------------------------------------------ the calibrating executor
class Calibrator(Executor):
    """Runs the float graph and records, per value, the statistics of what it computes."""

    def __init__(self, graph: Graph, kernels: Mapping = KERNELS, *, bins: int = HISTOGRAM_BINS,
                 measure_inputs: bool = True):
        super().__init__(graph, kernels)
        self.stats: dict[str, Stats] = {}
        self.bins, self.measure_inputs, self.stage = bins, measure_inputs, "range"

    def begin_histograms(self) -> None:
        """Second pass (l2): histograms over the fixed-up ranges of the first."""
        for s in self.stats.values():
            s.start_histogram(self.bins)
        self.stage = "histogram"

    def _record(self, key: str, a: np.ndarray) -> None:
        if not np.issubdtype(np.asarray(a).dtype, np.floating):
            return
        if self.stage == "range":
            self.stats.setdefault(key, Stats()).record_range(a)
        elif key in self.stats:
            self.stats[key].record_histogram(a)

    def run(self, feeds, *, keep_all: bool = False):
        out = super().run(feeds, keep_all=keep_all)
        if self.measure_inputs:
            g = self.graph
            feeds = feeds if isinstance(feeds, Mapping) else {v.name: a for v, a in zip(g.inputs, feeds)}
            for v in g.inputs:
                self._record(v.name, np.asarray(feeds[v.name], np.float32))
        return out

    def run_stages(self, node: Node, args: list[np.ndarray]) -> tuple[tuple, dict[str, np.ndarray]]:
        """(outputs, {stage: array}) of an op of CALIBRATION_STAGES; a subclass may observe more of it."""
        return CALIBRATION_STAGES[node.op](args, node.attrs)

    def run_node(self, node: Node, args: list[np.ndarray]) -> tuple[np.ndarray, ...]:
        if node.op in CALIBRATION_STAGES:
            outputs, arrays = self.run_stages(node, args)
            for stage, a in arrays.items():
                self._record(stage_key(node.output.name, stage), a)
            return tuple(o.astype(v.dtype, copy=False) for o, v in zip(outputs, node.outputs))
        results = super().run_node(node, args)
        if node.op != "constant":
            for v, r in zip(node.outputs, results):
                self._record(v.name, r)
        return results


def _as_feeds(sample):
    """A dataset item as executor feeds: an array, a Sample (has .data), a dict or a list of arrays."""
    data = getattr(sample, "data", sample)
    return data if isinstance(data, (Mapping, list, tuple)) else [data]


def input_range(mean: float, std: float) -> Range:
    """ncc's forced input range for image data in [0, 1] normalised as (x - mean) / std (float32)."""
    return float(F32(F32(0.0 - mean) / F32(std))), float(F32(F32(1.0 - mean) / F32(std)))


def broadcast_ranges(graph: Graph, ranges: dict[str, Range]) -> None:
    """Give the output of each range-preserving op its input's range (graph order, so chains propagate);
    with several data inputs (concat) the union of theirs (ncc keeps whichever path it visited last)."""
    for node in graph.nodes:
        data_inputs = [v for v in node.inputs if not v.is_constant]
        if node.op in BROADCAST_OPS and data_inputs and all(v.name in ranges for v in data_inputs):
            r = ranges[data_inputs[0].name]
            for v in data_inputs[1:]:
                r = union_range(r, ranges[v.name])
            for v in node.outputs:
                ranges[v.name] = r


def calibrate(graph: Graph, dataset: Iterable, *, method: str = "no_clip", input_mean: float | None = None,
              input_std: float | None = None, kernels: Mapping = KERNELS, bins: int = HISTOGRAM_BINS,
              label: str = "calibrate", calibrator: Callable[..., Calibrator] = Calibrator,
              pick_for: Callable[[str], Callable[[Stats], Range] | None] | None = None) -> dict[str, Range]:
    """Ranges of every value of the float graph over `dataset` (arrays, Samples or feed dicts).

    Giving `input_mean` or `input_std` forces the input range as ncc's --input-mean/--input-std do.
    `calibrator` makes the Calibrator (a subclass gathers more statistics in the same pass).
    `pick_for(key)` may name another method for one key (a per-layer choice); it implies the histogram pass.
    Writes node.meta["range"] (and meta["<stage>_range"], see CALIBRATION_STAGES); returns {key: (min, max)}."""
    if method not in CALIBRATION_METHODS:
        raise KpucError(f"unknown calibration method '{method}' (choose from {', '.join(CALIBRATION_METHODS)})")
    forced = input_mean is not None or input_std is not None
    cal = calibrator(graph, kernels, bins=bins, measure_inputs=not forced)
    samples = dataset if isinstance(dataset, (list, tuple)) else list(dataset)
    if not samples:
        raise KpucError("calibration needs at least one sample")
    for sample in progress(samples, label=label):
        cal.run(_as_feeds(sample))
    if method != "no_clip" or pick_for is not None:
        cal.begin_histograms()
        for sample in progress(samples, label=f"{label} ({method})"):
            cal.run(_as_feeds(sample))
    pick = CALIBRATION_METHODS[method]
    ranges = {key: ((pick_for and pick_for(key)) or pick)(s) for key, s in cal.stats.items()}
    if forced:
        r = input_range(0.0 if input_mean is None else input_mean, 1.0 if input_std is None else input_std)
        for v in graph.inputs:
            ranges[v.name] = r
    broadcast_ranges(graph, ranges)
    for node in graph.nodes:
        if len(node.outputs) == 1 and node.output.name in ranges:
            node.meta["range"] = ranges[node.output.name]
        if node.op in CALIBRATION_STAGES and len(node.outputs) == 1:
            prefix = node.output.name + STAGE_MARK
            for key in sorted(k for k in ranges if k.startswith(prefix)):
                node.meta[key[len(prefix):] + "_range"] = ranges[key]
    return ranges


__all__ = ["Calibrator", "Stats", "CALIBRATION_METHODS", "CALIBRATION_STAGES", "BROADCAST_OPS", "calibrate",
           "stage_key", "no_clip", "l2", "mse", "input_range", "broadcast_ranges"]
