"""What a pre-quantized model (int8/uint8 TFLite, ONNX QDQ) says about its own numbers.

The importers keep each quantized tensor's scale and zero point as `Value.quant` on the float graph,
and the generic passes carry it along. Two uses:
- `GridExecutor` (`kpuc infer`): runs the float graph with every such value rounded to its grid, so the
  result follows the model's integer arithmetic (TFLite: int32 accumulators of exact int8 products,
  requantized to the output's grid with each LiteRT kernel's own fixed-point rounding and saturated by
  the epilogue clamps the importer adds; MEAN, ADD, MUL, AVERAGE_POOL_2D, HARD_SWISH, LEAKY_RELU emulated).
  The zoo's int8 models give LiteRT's codes exactly (0 steps); the float SOFTMAX, LOGISTIC and TANH rounded
  to the output grid matched LiteRT on every random int8/uint8 input tried.
- hybrid (dynamic-range) models, float activations into convs with int8 weights: TFLite quantizes
  the activation on the fly (`quantize_dynamic`), which `GridExecutor` does too (the DS-CNN keyword
  spotter differed from LiteRT by 0.6-3% per layer for lack of it);
- `model_ranges(graph)` (`kpuc compile` without --dataset): the float interval each quantized value's
  256 codes cover, so the K210's uint8 grid is the model's own grid shifted.
The code range is the model's: int8 (-128..127) when any activation zero point is negative or an input
is int8, else uint8 (0..255); TFLite int8 models put ReLU outputs at -128, uint8 models never have a
negative zero point. A TFLite input keeps its own dtype's range (a uint8 input of an int8 model).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from compiler import litert_integer as integer
from compiler.errors import KpucError
from compiler.executor import Executor
from compiler.ir import Graph, Node, QuantParam, Value
from compiler.kernels import KERNELS
from compiler.litert_integer import (
    multiply_by_quantized_multiplier,
    multiply_by_quantized_multiplier_double,
    quantize_multiplier,
)
from compiler.quantization import Range

PROBE_SAMPLES = 8      # random inputs that measure what the model's scales do not cover
PROBE_SEED = 0


def _per_tensor(v: Value) -> QuantParam | None:
    q = v.quant
    return q if q is not None and q.axis is None and not v.is_constant and v.dtype == "float32" else None


def quantized_values(graph: Graph) -> list[Value]:
    """Every non-constant float value the model quantizes per tensor, in graph order."""
    return [v for n in graph.nodes for v in n.outputs if _per_tensor(v) is not None]


# the importers' layout helpers: their output holds the input's codes, whether or not it has quant
_RELAYOUT = ("reshape", "transpose")


def grids(graph: Graph) -> dict[Value, QuantParam]:
    """Every value's per-tensor grid: its own, or for an unquantized reshape/transpose output its
    input's (FULLY_CONNECTED's flatten of a 4-D int8 input is such a helper; without its grid the
    matmul would look hybrid and be re-quantized on the fly)."""
    grid = {}
    for n in graph.nodes:
        for v in n.outputs:
            q = _per_tensor(v)
            if q is None and n.op in _RELAYOUT and n.inputs[0] in grid and v.quant is None:
                q = grid[n.inputs[0]]
            if q is not None:
                grid[v] = q
    return grid


def is_hybrid(node: Node, grid: Mapping[Value, QuantParam] | None = None) -> bool:
    """A conv or matmul with quantized constant weights on a float activation: TFLite's hybrid
    (dynamic-range) kernels quantize that activation on the fly."""
    if node.op not in ("conv2d", "matmul") or len(node.inputs) < 2:
        return False
    x, w = node.inputs[:2]
    x_quant = grid.get(x) if grid is not None else _per_tensor(x)
    return w.is_constant and w.quant is not None and x_quant is None and x.dtype == "float32"


def is_prequantized(graph: Graph) -> bool:
    """True when the model carries its own activation scales (an int8/uint8 model) or hybrid layers."""
    grid = grids(graph)
    return bool(grid) or any(is_hybrid(n, grid) for n in graph.nodes)


def quantize_dynamic(x: np.ndarray, asymmetric: bool = False) -> np.ndarray:
    """TFLite's on-the-fly int8 quantization of a hybrid layer's input, per batch, back to real:
    SymmetricQuantizeFloats (codes = round(x * 127 / max|x|)), or for per-channel weights
    AsymmetricQuantizeFloats (the range [min(x, 0), max(x, 0)] on -128..127 with a nudged zero point)."""
    a = np.asarray(x, np.float64)
    flat = a.reshape(a.shape[0], -1)
    shape = (-1,) + (1,) * (a.ndim - 1)
    if not asymmetric:
        peak = np.abs(flat).max(axis=1).reshape(shape)
        peak = np.where(peak == 0, 1.0, peak)
        return round_half_away(a * (127.0 / peak)) * (peak / 127.0)
    lo, hi = np.minimum(flat.min(axis=1), 0.0), np.maximum(flat.max(axis=1), 0.0)
    scale = np.where(hi > lo, (hi - lo) / 255.0, 1.0)
    from_min, from_max = -128 - lo / scale, 127 - hi / scale
    zero = np.where(-128 + np.abs(lo / scale) < 127 + np.abs(hi / scale), from_min, from_max)
    zero = np.clip(round_half_away(zero), -128, 127).reshape(shape)
    scale = scale.reshape(shape)
    codes = np.clip(round_half_away(zero + a / scale), -128, 127)
    return (codes - zero) * scale


def code_min(graph: Graph) -> int:
    """-128 for an int8 model, 0 for a uint8 one (see the module docstring): a negative activation zero point
    or an int8 input (an int8 model with symmetric activations, every zero point 0, was taken for uint8 and
    its negative values clipped)."""
    if any(v.producer.meta.get("code_range", (0,))[0] < 0 for v in graph.inputs):
        return -128
    return -128 if any(np.asarray(v.quant.zero_point).min() < 0 for v in quantized_values(graph)) else 0


def quant_range(q: QuantParam, lowest: int) -> Range:
    """The float interval covered by the 256 codes lowest..lowest+255 of `q`."""
    return float((lowest - q.zero_point) * q.scale), float((lowest + 255 - q.zero_point) * q.scale)


def model_ranges(graph: Graph) -> dict[str, Range]:
    """{node name: range} of every node whose (single) output the model quantizes."""
    lowest = code_min(graph)
    return {v.producer.name: quant_range(v.quant, lowest) for v in quantized_values(graph)
            if len(v.producer.outputs) == 1}


def probe_samples(graph: Graph, ranges: Mapping[str, Range], count: int = PROBE_SAMPLES,
                  seed: int = PROBE_SEED) -> list[dict[str, np.ndarray]]:
    """Seeded smooth random inputs over each input's model range ([0, 1] without one): a coarse random
    grid, bilinearly enlarged, plus a little pixel noise, so that image-like inputs drive the layers
    (white noise would not). They measure what the model gives no scale for (a conv's output before a
    non-clamp activation, legalization's helpers); every value with a model range keeps it."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        feeds = {}
        for v in graph.inputs:
            lo, hi = ranges.get(v.producer.name, (0.0, 1.0))
            feeds[v.name] = (lo + (hi - lo) * _smooth_field(rng, v.shape)).astype(v.dtype)
        samples.append(feeds)
    return samples


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Values in [0, 1] varying slowly along the last two axes (a 5x5 grid per map, bilinear)."""
    if len(shape) < 2:
        return rng.uniform(0, 1, shape)
    h, w = shape[-2:]
    grid = rng.uniform(0, 1, shape[:-2] + (5, 5))
    ys, xs = np.linspace(0, 4, h), np.linspace(0, 4, w)
    y0, x0 = np.minimum(ys.astype(int), 3), np.minimum(xs.astype(int), 3)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    g = lambda dy, dx: grid[..., (y0 + dy)[:, None], (x0 + dx)[None, :]]  # noqa: E731
    field = g(0, 0) * (1 - fy) * (1 - fx) + g(1, 0) * fy * (1 - fx) + g(0, 1) * (1 - fy) * fx + g(1, 1) * fy * fx
    return np.clip(field + rng.normal(0, 0.03, shape), 0, 1)


def with_model_ranges(graph: Graph, measured: dict[str, Range], source: Mapping[str, Range],
                      conv_key=None) -> dict[str, Range]:
    """`measured` (calibration keys of the legalized `graph`) with every value the model quantizes set
    to the model's range. A node is matched by its own name or, once rewritten by legalization, by
    meta["source"] when it is the only node rewritten from that source (partial sums of a split conv
    keep their measured ranges). `conv_key(name)` names a KPU layer's conv stage, which also takes the
    model range when the layer's activation is only clamps (the stage is then the layer's output)."""
    ranges = dict(measured)
    sources = [n.meta.get("source") for n in graph.nodes]
    for node, src in zip(graph.nodes, sources):
        if len(node.outputs) != 1 or node.op in ("constant",):
            continue
        r = source.get(node.name) if node.name in source else None
        if r is None and src in source and sources.count(src) == 1:
            r = source[src]
        if r is None:
            continue
        if conv_key is not None and node.op == "kpu_conv2d":
            # the source conv's range is the layer's conv stage; it is the layer's output only when the fused
            # activation is clamps: after a fused sigmoid (MoveNet's heatmaps) the output keeps its measured
            # range (the conv's -11.6..2.0 on a 0..1 output left every heatmap code at one end)
            ranges[conv_key(node.output.name)] = r
            if not only_clamps(node):
                # the fused activation's own grid, where the model has one (MoveNet's sigmoid: 1/256)
                if node.meta.get("output_source") in source:
                    ranges[node.output.name] = source[node.meta["output_source"]]
                continue
        ranges[node.output.name] = r
    return ranges


def only_clamps(node: Node) -> bool:
    """Whether a kpu_conv2d's fused activation is clamps only (its conv stage is then its output)."""
    return all(step[0] == "clamp" for step in node.attrs["activation"])


def round_half_away(t: np.ndarray) -> np.ndarray:
    """Round to the nearest integer, ties away from zero (TFLite's fixed-point rounding). A value within
    1e-9 of a tie counts as one: float64 sums of exact products land a hair off an integer tie."""
    a = np.abs(t)
    return np.sign(t) * np.floor(a + 0.5 + 1e-9 * np.maximum(a, 1.0))


# how LiteRT's kernel for each accumulating IR op rounds its requantization (FULLY_CONNECTED: single)
_REQUANTIZE = {"conv2d": multiply_by_quantized_multiplier_double, "matmul": multiply_by_quantized_multiplier}


class GridExecutor(Executor):
    """The float executor in float64 with every value the model quantizes on its grid, like the model's
    integer kernels (TFLite reference): a conv or matmul of quantized operands yields its int32
    accumulator (times the accumulator scale), which the op making the next quantized value requantizes
    with TFLite's fixed-point multiplier before its own work (the fused-activation clamp); MEAN, ADD,
    MUL, AVERAGE_POOL_2D, HARD_SWISH, LEAKY_RELU and RESIZE_BILINEAR of quantized values (a quantized
    constant operand included) run LiteRT's integer arithmetic (`_integer_kernel`); any other value is
    rounded to its grid, ties away from zero. Graph inputs are saturated to their own code range (the
    importer's meta["code_range"], else the model's); quantized constants are rebuilt from their codes
    (the importer's float32 dequantization is 6e-8 off)."""

    def __init__(self, graph: Graph, kernels: Mapping = KERNELS):
        super().__init__(graph, kernels)
        self.lowest = code_min(graph)
        self.grid = grids(graph)
        # accumulator values: (s_x * s_w, the requantization's fixed-point multiply, the s_x * s_w the
        # kernel's multiplier is made from)
        self.acc_scale: dict[Value, tuple[np.ndarray, Callable, np.ndarray]] = {}

    def snap(self, v: Value, a: np.ndarray, *, saturate: bool = False) -> np.ndarray:
        a = np.asarray(a)
        if not np.issubdtype(a.dtype, np.floating):
            return a
        q = self.grid.get(v)
        if q is None:
            return a.astype(np.float64)
        scale = float(q.scale)
        codes = round_half_away(a.astype(np.float64) / scale)
        if saturate:
            low, high = v.producer.meta.get("code_range", (self.lowest, self.lowest + 255))
            codes = np.clip(codes, low - q.zero_point, high - q.zero_point)
        return codes * scale

    def requantize(self, a: np.ndarray, accumulator: tuple, q: QuantParam) -> np.ndarray:
        """TFLite's requantization of an accumulator (given as real = acc * acc_scale) to `q`'s grid."""
        acc_scale, multiply, kernel_scale = accumulator
        acc = np.rint(a / acc_scale).astype(np.int64)
        mul, shift = quantize_multiplier(kernel_scale / np.float64(q.scale))
        return multiply(acc, mul, shift).astype(np.float64) * float(q.scale)

    def run(self, feeds, *, keep_all: bool = False):
        self.acc_scale.clear()
        out = super().run(feeds, keep_all=keep_all)
        return {k: a.astype(np.float32) if a.dtype == np.float64 else a for k, a in out.items()}

    def run_node(self, node: Node, args: list[np.ndarray]) -> tuple[np.ndarray, ...]:
        if node.op == "constant":
            v = node.output
            return (_codes_times_scale(v) if v.quant is not None and v.dtype == "float32" else v.data,)
        fn = self.kernels.get(node.op)
        if fn is None:
            raise KpucError(f"{node.name}: no kernel for op '{node.op}'")
        # graph inputs arrive as float32: back to exact codes, saturated like the model's input tensor
        args = [self.snap(v, a, saturate=True) if v.producer.op == "input" else a for v, a in zip(node.inputs, args)]
        if is_hybrid(node, self.grid):
            args[0] = quantize_dynamic(args[0], asymmetric=node.inputs[1].quant.axis is not None)
        out_q = self.grid.get(node.output) if len(node.outputs) == 1 else None
        if out_q is not None and node.inputs and node.inputs[0] in self.acc_scale:
            args[0] = self.requantize(args[0], self.acc_scale[node.inputs[0]], out_q)
        try:
            integer = self._integer_kernel(node)
            out = integer(node, *args) if integer is not None else fn(*args, **node.attrs)
        except Exception as e:
            raise KpucError(f"{node.name} ({node.op}) failed: {type(e).__name__}: {e}") from e
        out = out if isinstance(out, tuple) else (out,)
        scale = self._accumulator_scale(node)
        if scale is not None:
            if out_q is None:
                self.acc_scale[node.output] = scale
                return (np.asarray(out[0], np.float64),)
            return (self.snap(node.output, self.requantize(out[0], scale, out_q)),)
        return tuple(self.snap(v, r) if v.dtype == "float32" else np.asarray(r, v.dtype)
                     for v, r in zip(node.outputs, out))

    def _output_grid(self, node: Node) -> QuantParam | None:
        """The grid of `node`'s output, or of the epilogue clamp that is its only user."""
        if node.output in self.grid:
            return self.grid[node.output]
        users = node.output.user_nodes()
        if len(users) == 1 and users[0].op == "clamp" and node.output not in self.graph.outputs:
            return self.grid.get(users[0].output)
        return None

    def _integer_kernel(self, node: Node) -> Callable | None:
        """LiteRT's integer arithmetic (litert_integer.py) for an op on quantized values whose rounding
        the float op snapped to the output grid does not reproduce (1 step off on 1-13% of outputs)."""
        if len(node.outputs) != 1 or self._output_grid(node) is None or not node.inputs \
                or node.inputs[0] not in self.grid:
            return None   # split and the other multi-output ops move codes, they round nothing
        op = node.attrs.get("op") if node.op in ("reduce", "binary", "unary", "reduce_window2d") else None
        if (node.op, op) == ("binary", "add") and self._grid_of(node.inputs[1]) is not None:
            return lambda node, a, b: self._on_grid(node, integer.add(*self._values(node, a, b), *self._scales(node)))
        if (node.op, op) == ("binary", "mul") and self._grid_of(node.inputs[1]) is not None:
            return lambda node, a, b: self._on_grid(node, integer.mul(*self._values(node, a, b), *self._scales(node)))
        if (node.op, op) == ("unary", "hard_swish"):
            return lambda node, x: self._on_grid(node, integer.hard_swish(*self._values(node, x), *self._scales(node)))
        if node.op == "leaky_relu":
            return lambda node, x: self._on_grid(node, integer.leaky_relu(*self._values(node, x), *self._scales(node),
                                                                           node.attrs["alpha"]))
        if (node.op, op) == ("reduce", "mean"):
            return self._integer_mean
        if (node.op, op) == ("reduce_window2d", "mean") and not node.attrs["count_include_pad"] \
                and self.grid[node.inputs[0]] == self._output_grid(node):
            return self._integer_average_pool
        if node.op == "resize" and node.attrs["mode"] == "linear" \
                and self.grid[node.inputs[0]] == self._output_grid(node):
            return self._integer_resize_bilinear
        return None

    def _grid_of(self, v: Value) -> QuantParam | None:
        """A value's grid; a per-tensor quantized constant operand (movenet's MUL by a constant map) is
        on its own grid too."""
        if v in self.grid:
            return self.grid[v]
        q = v.quant
        return q if v.is_constant and q is not None and q.axis is None and v.dtype == "float32" else None

    def _values(self, node: Node, *args: np.ndarray) -> list[np.ndarray]:
        """The inputs' (code - zero point)."""
        return [np.rint(a / float(self._grid_of(v).scale)).astype(np.int64) for v, a in zip(node.inputs, args)]

    def _scales(self, node: Node) -> list[float]:
        """The inputs' scales, then the output's."""
        grids = [self._grid_of(v) for v in node.inputs]
        return [float(q.scale) for q in grids if q is not None] + [self._output_grid(node).scale]

    def _on_grid(self, node: Node, values: np.ndarray) -> np.ndarray:
        """The output's (code - zero point) saturated to the code range, as real values."""
        q = self._output_grid(node)
        codes = np.clip(values, self.lowest - q.zero_point, self.lowest + 255 - q.zero_point)
        return codes.astype(np.float64) * float(q.scale)

    def _integer_mean(self, node: Node, x: np.ndarray) -> np.ndarray:
        axes = tuple(node.attrs["axes"])
        count = int(np.prod([x.shape[a] for a in axes]))
        (values,) = self._values(node, x)
        total = values.sum(axis=axes, keepdims=node.attrs["keepdims"])
        return self._on_grid(node, integer.mean(total, count, *self._scales(node)))

    def _integer_average_pool(self, node: Node, x: np.ndarray) -> np.ndarray:
        """The window sums and valid counts come from the float pool kernel (exact on small integers)."""
        q = self.grid[node.inputs[0]]
        raw = np.rint(x / float(q.scale)) + q.zero_point
        pool, (kh, kw) = KERNELS["reduce_window2d"], node.attrs["kernel"]
        count = np.rint(pool(np.ones_like(raw[:1, :1]), **(node.attrs | dict(count_include_pad=True))) * (kh * kw))
        total = np.rint(pool(raw, **node.attrs) * count)
        return self._on_grid(node, integer.average_pool(total, count) - q.zero_point)

    def _integer_resize_bilinear(self, node: Node, x: np.ndarray) -> np.ndarray:
        q = self.grid[node.inputs[0]]
        raw = np.rint(x / float(q.scale)).astype(np.int64) + q.zero_point
        # LiteRT has a fixed-point kernel for int8 only; uint8 runs its float template
        resize = integer.resize_bilinear if self.lowest < 0 else integer.resize_bilinear_uint8
        out = resize(raw, node.attrs["sizes"], node.attrs["coordinate_transformation_mode"])
        return self._on_grid(node, out - q.zero_point)

    def _accumulator_scale(self, node: Node) -> tuple | None:
        """s_x * s_w (per output channel, shaped to broadcast), the requantization's multiply and the
        scale its multiplier comes from when `node` accumulates quantized codes; a bias added to an
        accumulator keeps it one."""
        if node.op == "binary" and node.attrs["op"] == "add" and node.inputs[0] in self.acc_scale \
                and node.inputs[1].is_constant:
            return self.acc_scale[node.inputs[0]]
        if node.op not in ("conv2d", "matmul") or len(node.inputs) < 2:
            return None
        x, w = node.inputs[:2]
        qx, qw = self.grid.get(x), w.quant
        if qx is None or qw is None or not w.is_constant or (node.op == "conv2d" and node.attrs["fused_clamp"] != (
                -np.inf, np.inf)):
            return None
        scale = float(qx.scale) * np.asarray(qw.scale, np.float64)
        if qw.axis is None:
            # GetQuantizedConvolutionMultipler (FULLY_CONNECTED, uint8 CONV_2D) multiplies the two scales
            # in float32; the per-channel path (every int8 conv) in double (coral_mobilenet_v1: 1 step)
            float_product = node.op == "matmul" or self.lowest == 0
            kernel_scale = np.float64(np.float32(qx.scale) * np.float32(qw.scale)) if float_product else scale
            return np.asarray(scale), _REQUANTIZE[node.op], np.asarray(kernel_scale)
        channel_axis = 1 if node.op == "conv2d" else node.output.type.rank - 1
        shape = [1] * node.output.type.rank
        shape[channel_axis] = -1
        return scale.reshape(shape), _REQUANTIZE[node.op], scale.reshape(shape)


def _codes_times_scale(v: Value) -> np.ndarray:
    """A dequantized constant recomputed in float64 from its codes."""
    q = v.quant
    scale = np.asarray(q.scale, np.float64)
    if q.axis is not None:
        shape = [1] * v.type.rank
        shape[q.axis] = -1
        scale = scale.reshape(shape)
    return np.rint(v.data.astype(np.float64) / scale) * scale
