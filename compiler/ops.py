"""The op vocabulary of the IR: one entry per op with its operands, attributes and shape rule.

Names follow nncase where one exists, so the specs and the code can be searched with the same words.
All layouts are NCHW; weights of conv2d are OIHW (O, I/groups, kH, kW) and of conv2d_transpose
IOHW (I, O/groups, kH, kW) as in ONNX. Padding attributes are tuples of (before, after) pairs.
`fused_clamp=(lo, hi)` on conv2d, conv2d_transpose, matmul and binary clamps the result (after the
bias) to [lo, hi]; passes/fuse_clamp.py sets it.
The kernels in `compiler.kernels` implement exactly these semantics (the executor is the spec).

op                operands                  attrs (defaults)
--------------------------------------------------------------------------------------------------
input / constant  -                         -                 (made by Graph.input / Graph.const)
unary             x                         op: abs ceil cos exp floor log neg round rsqrt sin
                                            sqrt square sigmoid tanh hard_swish reciprocal erf
                                            softplus sign
binary            a, b (numpy broadcast)    op: add sub mul div min max pow squared_difference,
                                            fused_clamp=(-inf,inf)
clamp             x                         min=-inf, max=inf                 (Relu, Relu6, Clip)
leaky_relu        x                         alpha
prelu             x, slope (broadcast)      -
hard_sigmoid      x                         alpha, beta       max(0, min(1, alpha*x + beta))
shrink            x                         bias=0, lambd=0.5 x-bias if x > lambd, x+bias if x < -lambd, else 0
conv2d            x, w, b                   strides=(1,1), padding=((0,0),(0,0)), dilations=(1,1),
                                            groups=1, fused_clamp=(-inf,inf)
                                            b always present (zeros if absent)
conv2d_transpose  x, w, b                   strides, padding, dilations, groups, output_padding=(0,0),
                                            fused_clamp=(-inf,inf)
                                            out = (in-1)*s + d*(k-1) + 1 + output_padding - pad_total
matmul            a, b                      fused_clamp=(-inf,inf)   numpy.matmul semantics
batch_norm        x, scale, bias, mean, var epsilon           per-channel (axis 1)
reduce_window2d   x                         op: max|mean, kernel, strides=(1,1),
                                            padding=((0,0),(0,0)), dilations=(1,1), ceil_mode=False,
                                            count_include_pad=False  (mean only)
reduce            x                         op: mean max min sum prod l1 l2 sum_square log_sum_exp,
                                            axes (normalized, sorted), keepdims=True
softmax           x                         axis (normalized), log=False
lp_normalize      x                         axis (normalized), p=2, epsilon=0.0
                                            x / max(norm_p(x), epsilon) along axis; 0 where norm==0
reshape           x                         shape (static, no -1)
transpose         x                         perm
concat            *xs                       axis (normalized)
split             x                         axis, sizes       one output per size
strided_slice     x                         begin, end, strides (full rank, normalized: 0 <= begin
                                            < dim; end in [-1, dim], -1 = before index 0 for a
                                            negative stride)
pad               x                         pads (per-dim (before, after), may be negative = crop),
                                            mode: constant|reflect|edge|symmetric, value=0.0
resize            x                         sizes (full rank), mode: nearest|linear,
                                            coordinate_transformation_mode=half_pixel
                                            (half_pixel asymmetric align_corners pytorch_half_pixel
                                            tf_half_pixel_for_nn), nearest_mode=round_prefer_floor
                                            (round_prefer_floor round_prefer_ceil floor ceil)
space_to_depth    x                         block
depth_to_space    x                         block, mode=DCR|CRD
space_to_batch    x                         block=(bh,bw), pads=((t,b),(l,r))   TF semantics on NCHW
batch_to_space    x                         block=(bh,bw), crops=((t,b),(l,r))
gather            x, indices                axis              numpy.take
gather_nd         x, indices                batch_dims=0      ONNX GatherND / TFLite GATHER_ND
arg_reduce        x                         op: max|min, axis, keepdims=True, select_last_index=False
                                            -> int32 indices (ONNX ArgMax/ArgMin, TFLite ARG_MAX/ARG_MIN)
compare           a, b (numpy broadcast)    op: equal not_equal less less_equal greater greater_equal -> bool
logical           a, b: bool (broadcast)    op: and or xor                                          -> bool
logical_not       x: bool                   -                                                       -> bool
where             cond: bool, x, y          -                 numpy.where with broadcasting (Where, SELECT_V2)
floor_div         a, b (broadcast)          -                 floor(a / b); integers floor exactly
mod               a, b (broadcast)          fmod=False        a - floor(a / b) * b with b's sign (np.mod), or
                                                              C fmod with a's sign when fmod (ONNX Mod)
quantize          x                         scale, zero_point, dtype=uint8, axis=None  round half to even
dequantize        x                         scale, zero_point, axis=None
cast              x                         dtype

Target ops register into the same table: the K210's float KPU layer, quantized and device ops are in
targets/k210/ops.py (`import targets.k210.ops` registers them).

Each op is one `OpDef` in `OPS`: its operands, its attributes with their defaults (`Graph.add` fills
them in, so code reads `attrs["strides"]`, never a default), its shape rule and its traits (TRAITS),
from which the passes and targets derive their op lists instead of keeping their own.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from compiler.errors import KpucError
from compiler.registry import registrar
from compiler.types import TensorType

COMPARE_OPS = "equal not_equal less less_equal greater greater_equal".split()
LOGICAL_OPS = "and or xor".split()
UNARY_OPS = ("abs ceil cos exp floor log neg round rsqrt sin sqrt square sigmoid tanh hard_swish "
             "reciprocal erf softplus sign").split()
BINARY_OPS = "add sub mul div min max pow squared_difference".split()
REDUCE_OPS = "mean max min sum prod l1 l2 sum_square log_sum_exp".split()
NO_CLAMP = (-math.inf, math.inf)

# What the lists of ops elsewhere are derived from (a trait may hold only for some attrs: OpDef.when).
TRAITS = {
    "layout_agnostic": "commutes with a transpose once the attrs named in axis_attrs are remapped "
                       "(passes/fold_transposes.py sinks transposes through it)",
    "range_preserving": "its outputs lie within its data inputs' range (calibration gives the output the "
                        "input's range, the union for several inputs), as ncc's quantization broadcast",
    "data_movement": "its outputs are copies of input elements (or of a constant attr quantized the same "
                     "way): the same codes as dequantize -> op -> quantize, so it runs on uint8 as is",
    "table_lookup": "a scalar function of the first operand (any other operand a constant scalar): on "
                    "uint8 it is a 256-entry table",
    "device": "a target's integer or device op: its kernel is in the target's quantized table, there is "
              "no float kernel",
}
AXIS_KINDS = ("axis", "axes", "per_axis")   # one axis index, a sorted tuple of them, one entry per axis


class _Required:
    def __repr__(self):
        return "REQUIRED"


REQUIRED = _Required()   # an attribute default meaning "must be given"


@dataclass(frozen=True)
class OpDef:
    """One IR op: operand names ("*xs": any number), attributes -> default (or REQUIRED), the shape rule
    `(types, attrs) -> TensorType | list[TensorType]`, traits, and `when`: trait -> predicate on the
    attrs for a trait that holds only for some attrs. `axis_attrs` names the attrs that index axes."""
    name: str
    operands: tuple[str, ...]
    shape: Callable
    attrs: Mapping[str, Any] = field(default_factory=dict)
    traits: frozenset[str] = frozenset()
    when: Mapping[str, Callable[[Mapping], bool]] = field(default_factory=dict)
    axis_attrs: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        unknown = (set(self.traits) - set(TRAITS)) | (set(self.when) - set(self.traits))
        assert not unknown, f"{self.name}: traits {sorted(unknown)} are not in TRAITS / traits"
        assert set(self.axis_attrs) <= set(self.attrs) and set(self.axis_attrs.values()) <= set(AXIS_KINDS)
        for name in ("attrs", "when", "axis_attrs"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    @property
    def variadic(self) -> bool:
        return bool(self.operands) and self.operands[-1].startswith("*")

    def complete(self, attrs: Mapping) -> dict:
        """`attrs` with the defaults filled in, in definition order; unknown or missing required names raise."""
        unknown = [k for k in attrs if k not in self.attrs]
        if unknown:
            raise KpucError(f"{self.name} has no attribute {', '.join(map(repr, unknown))} "
                            f"(it has: {', '.join(self.attrs) or 'none'})")
        missing = [k for k, d in self.attrs.items() if d is REQUIRED and k not in attrs]
        if missing:
            raise KpucError(f"{self.name} needs attribute {', '.join(map(repr, missing))}")
        return {k: attrs[k] if k in attrs else d for k, d in self.attrs.items()}

    def has(self, trait: str, attrs: Mapping | None = None) -> bool:
        """Whether the trait holds; with a `when` condition it holds only for `attrs` that satisfy it."""
        if trait not in self.traits:
            return False
        cond = self.when.get(trait)
        return cond is None or (attrs is not None and bool(cond(attrs)))


OPS: dict[str, OpDef] = {}
_register = registrar(OPS)


def define(name: str, operands: str = "x", *, attrs: Mapping | None = None, traits: Iterable[str] = (),
           when: Mapping | None = None, axis_attrs: Mapping | None = None):
    """Decorate a shape rule: register the op `name` with it (stack several for ops sharing a rule)."""
    def register(shape: Callable) -> Callable:
        _register(name)(OpDef(name, tuple(operands.split()), shape, attrs or {}, frozenset(traits), when or {},
                              axis_attrs or {}))
        return shape
    return register


def ops_with(trait: str) -> tuple[str, ...]:
    """Every op the trait may hold for (also the conditional ones), in definition order."""
    return tuple(op for op, d in OPS.items() if trait in d.traits)


def has_trait(node, trait: str) -> bool:
    """Whether `trait` holds for this node (its op and attrs)."""
    d = OPS.get(node.op)
    return d is not None and d.has(trait, node.attrs)


def infer_types(op: str, types: list[TensorType], attrs: dict, consts=None) -> list[TensorType]:
    """Output types of `op` applied to inputs of `types`; raises KpucError on a mismatch."""
    if op not in OPS:
        raise KpucError(f"unknown IR op '{op}'")
    attrs = OPS[op].complete(attrs)
    try:
        out = OPS[op].shape(types, attrs)
    except (KpucError, ValueError, IndexError, KeyError, TypeError, AssertionError) as e:
        shapes = ", ".join(str(t) for t in types)
        raise KpucError(f"{op}({shapes}): {e or type(e).__name__}") from e
    return out if isinstance(out, list) else [out]


def _per_tensor(attrs) -> bool:
    return attrs["axis"] is None


CONV_ATTRS = dict(strides=(1, 1), padding=((0, 0), (0, 0)), dilations=(1, 1), groups=1)
POOL_ATTRS = dict(op=REQUIRED, kernel=REQUIRED, strides=(1, 1), padding=((0, 0), (0, 0)), dilations=(1, 1),
                  ceil_mode=False, count_include_pad=False)
COPIES = frozenset({"range_preserving", "data_movement"})


def broadcast(*shapes) -> tuple[int, ...]:
    return tuple(np.broadcast_shapes(*shapes))


def need(cond, msg):
    if not cond:
        raise KpucError(msg)


# ------------------------------------------------------------------ elementwise
@define("unary", "x", attrs=dict(op=REQUIRED), traits={"layout_agnostic", "table_lookup"})
def _unary(t, a):
    need(a["op"] in UNARY_OPS, f"unknown unary op {a['op']}")
    return t[0]


@define("clamp", "x", attrs=dict(min=-math.inf, max=math.inf), traits={"layout_agnostic", "table_lookup"})
@define("leaky_relu", "x", attrs=dict(alpha=REQUIRED), traits={"layout_agnostic", "table_lookup"})
@define("hard_sigmoid", "x", attrs=dict(alpha=REQUIRED, beta=REQUIRED), traits={"layout_agnostic", "table_lookup"})
@define("shrink", "x", attrs=dict(bias=0.0, lambd=0.5), traits={"layout_agnostic", "table_lookup"})
def _same(t, a):
    return t[0]


@define("binary", "a b", attrs=dict(op=REQUIRED, fused_clamp=NO_CLAMP), traits={"layout_agnostic"})
def _binary(t, a):
    need(a["op"] in BINARY_OPS, f"unknown binary op {a['op']}")
    return TensorType(broadcast(t[0].shape, t[1].shape), t[0].dtype)


@define("prelu", "x slope", traits={"layout_agnostic", "table_lookup"})
def _prelu(t, a):
    return TensorType(broadcast(t[0].shape, t[1].shape), t[0].dtype)


@define("batch_norm", "x scale bias mean var", attrs=dict(epsilon=REQUIRED))
def _batch_norm(t, a):
    c = t[0].shape[1]
    need(all(p.shape == (c,) for p in t[1:5]), f"batch_norm parameters must have shape ({c},)")
    return t[0]


@define("quantize", "x", attrs=dict(scale=REQUIRED, zero_point=REQUIRED, dtype="uint8", axis=None),
        traits={"layout_agnostic"}, when={"layout_agnostic": _per_tensor})
def _quantize(t, a):
    return TensorType(t[0].shape, a["dtype"])


@define("dequantize", "x", attrs=dict(scale=REQUIRED, zero_point=REQUIRED, axis=None),
        traits={"layout_agnostic"}, when={"layout_agnostic": _per_tensor})
def _dequantize(t, a):
    return TensorType(t[0].shape, "float32")


@define("cast", "x", attrs=dict(dtype=REQUIRED), traits={"layout_agnostic"})
def _cast(t, a):
    return TensorType(t[0].shape, a["dtype"])


# ------------------------------------------------------------------ convolution and pooling
def conv_out(size, k, s, d, pad, ceil_mode=False) -> int:
    """Output length of a sliding window: floor (or ceil) of (size + pads - d*(k-1) - 1) / s + 1."""
    span = size + pad[0] + pad[1] - d * (k - 1) - 1
    n = (math.ceil(span / s) if ceil_mode else span // s) + 1
    if ceil_mode and (n - 1) * s >= size + pad[0]:
        n -= 1  # the last window must start inside the input or its left padding (ONNX, PyTorch)
    need(n >= 1, f"window of {k} (dilation {d}) does not fit an input of {size} with padding {pad}")
    return n


@define("conv2d", "x w b", attrs=CONV_ATTRS | dict(fused_clamp=NO_CLAMP))
def _conv2d(t, a):
    x, w, b = t
    n, c, h, wd = x.shape
    o, ig, kh, kw = w.shape
    g = a["groups"]
    need(c == ig * g, f"input has {c} channels, weights expect {ig}x{g} groups")
    need(b.shape == (o,), f"bias shape {b.shape} != ({o},)")
    s, d, p = a["strides"], a["dilations"], a["padding"]
    return TensorType((n, o, conv_out(h, kh, s[0], d[0], p[0]), conv_out(wd, kw, s[1], d[1], p[1])), x.dtype)


@define("conv2d_transpose", "x w b", attrs=CONV_ATTRS | dict(output_padding=(0, 0), fused_clamp=NO_CLAMP))
def _conv2d_transpose(t, a):
    x, w, b = t
    n, c, h, wd = x.shape
    ci, og, kh, kw = w.shape
    g = a["groups"]
    need(c == ci, f"input has {c} channels, weights expect {ci}")
    need(b.shape == (og * g,), f"bias shape {b.shape} != ({og * g},)")
    s, d = a["strides"], a["dilations"]
    p, op = a["padding"], a["output_padding"]
    oh = (h - 1) * s[0] + d[0] * (kh - 1) + 1 + op[0] - p[0][0] - p[0][1]
    ow = (wd - 1) * s[1] + d[1] * (kw - 1) + 1 + op[1] - p[1][0] - p[1][1]
    need(oh >= 1 and ow >= 1, f"output would be {oh}x{ow}")
    return TensorType((n, og * g, oh, ow), x.dtype)


@define("reduce_window2d", "x", attrs=POOL_ATTRS, traits={"range_preserving", "data_movement"},
        when={"data_movement": lambda a: a["op"] == "max"})
def _reduce_window2d(t, a):
    n, c, h, w = t[0].shape
    need(a["op"] in ("max", "mean"), f"unknown pool op {a['op']}")
    k, s = a["kernel"], a["strides"]
    d, p, cm = a["dilations"], a["padding"], a["ceil_mode"]
    return TensorType((n, c, conv_out(h, k[0], s[0], d[0], p[0], cm), conv_out(w, k[1], s[1], d[1], p[1], cm)),
                      t[0].dtype)


@define("matmul", "a b", attrs=dict(fused_clamp=NO_CLAMP))
def _matmul(t, a):
    sa, sb = t[0].shape, t[1].shape
    need(len(sa) >= 1 and len(sb) >= 1, "matmul of a scalar")
    a2 = sa if len(sa) > 1 else (1,) + sa
    b2 = sb if len(sb) > 1 else sb + (1,)
    need(a2[-1] == b2[-2], f"inner dimensions differ: {sa} @ {sb}")
    out = broadcast(a2[:-2], b2[:-2]) + (a2[-2], b2[-1])
    if len(sa) == 1:
        out = out[:-2] + out[-1:]
    if len(sb) == 1:
        out = out[:-1]
    return TensorType(out, t[0].dtype)


# ------------------------------------------------------------------ reductions
@define("reduce", "x", attrs=dict(op=REQUIRED, axes=REQUIRED, keepdims=True), traits={"layout_agnostic"},
        axis_attrs={"axes": "axes"})
def _reduce(t, a):
    need(a["op"] in REDUCE_OPS, f"unknown reduce op {a['op']}")
    shape, axes = t[0].shape, a["axes"]
    need(all(0 <= ax < len(shape) for ax in axes), f"axes {axes} not normalized for rank {len(shape)}")
    if a["keepdims"]:
        return TensorType(tuple(1 if i in axes else d for i, d in enumerate(shape)), t[0].dtype)
    return TensorType(tuple(d for i, d in enumerate(shape) if i not in axes), t[0].dtype)


@define("softmax", "x", attrs=dict(axis=REQUIRED, log=False), traits={"layout_agnostic"}, axis_attrs={"axis": "axis"})
@define("lp_normalize", "x", attrs=dict(axis=REQUIRED, p=2, epsilon=0.0), traits={"layout_agnostic"},
        axis_attrs={"axis": "axis"})
def _along_axis(t, a):
    need(0 <= a["axis"] < t[0].rank, f"axis {a['axis']} not normalized for rank {t[0].rank}")
    return t[0]


# ------------------------------------------------------------------ data movement
@define("reshape", "x", attrs=dict(shape=REQUIRED), traits=COPIES)
def _reshape(t, a):
    shape = tuple(a["shape"])
    need(all(d >= 0 for d in shape) and math.prod(shape) == t[0].size,
         f"cannot reshape {t[0].shape} to {shape}")
    return TensorType(shape, t[0].dtype)


@define("transpose", "x", attrs=dict(perm=REQUIRED), traits=COPIES)
def _transpose(t, a):
    perm = a["perm"]
    need(sorted(perm) == list(range(t[0].rank)), f"perm {perm} does not fit rank {t[0].rank}")
    return TensorType(tuple(t[0].shape[p] for p in perm), t[0].dtype)


@define("concat", "*xs", attrs=dict(axis=REQUIRED), traits=COPIES | {"layout_agnostic"}, axis_attrs={"axis": "axis"})
def _concat(t, a):
    ax = a["axis"]
    first = t[0].shape
    need(0 <= ax < len(first), f"axis {ax} not normalized")
    for x in t[1:]:
        need(len(x.shape) == len(first) and all(d == e for i, (d, e) in enumerate(zip(x.shape, first)) if i != ax),
             f"cannot concat {[x.shape for x in t]} on axis {ax}")
    return TensorType(first[:ax] + (sum(x.shape[ax] for x in t),) + first[ax + 1:], t[0].dtype)


@define("split", "x", attrs=dict(axis=REQUIRED, sizes=REQUIRED))
def _split(t, a):
    ax, sizes, shape = a["axis"], a["sizes"], t[0].shape
    need(sum(sizes) == shape[ax], f"split sizes {sizes} do not add up to {shape[ax]}")
    return [TensorType(shape[:ax] + (s,) + shape[ax + 1:], t[0].dtype) for s in sizes]


def slice_len(begin, end, stride) -> int:
    # With normalized indices, range() is exact: end -1 runs a negative stride down to index 0
    # inclusive (every |stride|-th element, not begin + 1 of them) and takes nothing for a positive one.
    return len(range(begin, max(end, -1), stride))


@define("strided_slice", "x", attrs=dict(begin=REQUIRED, end=REQUIRED, strides=REQUIRED),
        traits=COPIES | {"layout_agnostic"}, axis_attrs=dict.fromkeys(("begin", "end", "strides"), "per_axis"))
def _strided_slice(t, a):
    b, e, s = a["begin"], a["end"], a["strides"]
    need(len(b) == len(e) == len(s) == t[0].rank, "begin/end/strides must cover every dimension")
    return TensorType(tuple(slice_len(*x) for x in zip(b, e, s)), t[0].dtype)


# data_movement only in constant mode: edge/reflect copy too, but stay float as before (kmodel pads are constant)
@define("pad", "x", attrs=dict(pads=REQUIRED, mode="constant", value=0.0), traits=COPIES | {"layout_agnostic"},
        when={"data_movement": lambda a: a["mode"] == "constant"}, axis_attrs={"pads": "per_axis"})
def _pad(t, a):
    pads = a["pads"]
    need(len(pads) == t[0].rank, f"pads {pads} do not match rank {t[0].rank}")
    shape = tuple(d + p0 + p1 for d, (p0, p1) in zip(t[0].shape, pads))
    need(all(d >= 0 for d in shape), f"pads {pads} crop more than {t[0].shape}")
    return TensorType(shape, t[0].dtype)


@define("resize", "x", attrs=dict(sizes=REQUIRED, mode=REQUIRED, coordinate_transformation_mode="half_pixel",
                                  nearest_mode="round_prefer_floor"),
        traits=COPIES, when={"data_movement": lambda a: a["mode"] == "nearest"})
def _resize(t, a):
    need(a["mode"] in ("nearest", "linear"), f"resize mode {a['mode']}")
    need(len(a["sizes"]) == t[0].rank, "resize sizes must cover every dimension")
    return TensorType(tuple(a["sizes"]), t[0].dtype)


@define("space_to_depth", "x", attrs=dict(block=REQUIRED), traits=COPIES)
def _space_to_depth(t, a):
    n, c, h, w = t[0].shape
    b = a["block"]
    need(h % b == 0 and w % b == 0, f"{h}x{w} not divisible by block {b}")
    return TensorType((n, c * b * b, h // b, w // b), t[0].dtype)


@define("depth_to_space", "x", attrs=dict(block=REQUIRED, mode="DCR"), traits=COPIES)
def _depth_to_space(t, a):
    n, c, h, w = t[0].shape
    b = a["block"]
    need(c % (b * b) == 0, f"{c} channels not divisible by block {b}^2")
    return TensorType((n, c // (b * b), h * b, w * b), t[0].dtype)


# not data_movement: its zero padding would be code 0 on uint8, not the zero point
@define("space_to_batch", "x", attrs=dict(block=REQUIRED, pads=REQUIRED), traits={"range_preserving"})
def _space_to_batch(t, a):
    n, c, h, w = t[0].shape
    (bh, bw), ((pt, pb), (pl, pr)) = a["block"], a["pads"]
    need((h + pt + pb) % bh == 0 and (w + pl + pr) % bw == 0, "padded size not divisible by block")
    return TensorType((n * bh * bw, c, (h + pt + pb) // bh, (w + pl + pr) // bw), t[0].dtype)


@define("batch_to_space", "x", attrs=dict(block=REQUIRED, crops=REQUIRED), traits=COPIES)
def _batch_to_space(t, a):
    n, c, h, w = t[0].shape
    (bh, bw), ((ct, cb), (cl, cr)) = a["block"], a["crops"]
    need(n % (bh * bw) == 0, f"batch {n} not divisible by block {bh}x{bw}")
    return TensorType((n // (bh * bw), c, h * bh - ct - cb, w * bw - cl - cr), t[0].dtype)


@define("gather", "x indices", attrs=dict(axis=REQUIRED))
def _gather(t, a):
    ax = a["axis"]
    shape = t[0].shape
    return TensorType(shape[:ax] + t[1].shape + shape[ax + 1:], t[0].dtype)


@define("gather_nd", "x indices", attrs=dict(batch_dims=0))
def _gather_nd(t, a):
    x, idx = t
    b = a["batch_dims"]
    need(idx.rank > b and 1 <= idx.shape[-1] <= x.rank - b and idx.shape[:b] == x.shape[:b],
         f"indices {idx.shape} do not index {x.shape} with {b} batch dims")
    return TensorType(idx.shape[:-1] + x.shape[b + idx.shape[-1]:], x.dtype)


@define("arg_reduce", "x", attrs=dict(op=REQUIRED, axis=REQUIRED, keepdims=True, select_last_index=False))
def _arg_reduce(t, a):
    need(a["op"] in ("max", "min"), f"unknown arg_reduce op {a['op']}")
    shape, ax = t[0].shape, a["axis"]
    need(0 <= ax < len(shape), f"axis {ax} not normalized for rank {len(shape)}")
    return TensorType(shape[:ax] + ((1,) if a["keepdims"] else ()) + shape[ax + 1:], "int32")


# ------------------------------------------------------------------ comparison and selection
# No traits: they make or take bool tensors, which nothing quantizes or moves transposes through.
@define("compare", "a b", attrs=dict(op=REQUIRED))
@define("logical", "a b", attrs=dict(op=REQUIRED))
def _compare(t, a):
    need(a["op"] in COMPARE_OPS + LOGICAL_OPS, f"unknown comparison or logical op {a['op']}")
    return TensorType(broadcast(t[0].shape, t[1].shape), "bool")


@define("logical_not", "x")
def _logical_not(t, a):
    return TensorType(t[0].shape, "bool")


@define("where", "cond x y")
def _where(t, a):
    need(t[1].dtype == t[2].dtype, f"where selects between {t[1].dtype} and {t[2].dtype}")
    return TensorType(broadcast(t[0].shape, t[1].shape, t[2].shape), t[1].dtype)


@define("floor_div", "a b")
@define("mod", "a b", attrs=dict(fmod=False))
def _floor_binary(t, a):
    return TensorType(broadcast(t[0].shape, t[1].shape), t[0].dtype)
