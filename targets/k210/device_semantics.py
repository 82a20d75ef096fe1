"""Rewrite a graph into the arithmetic a kmodel runtime really does, right before lowering.

The IR's float ops mean what the float reference executor computes (float64 sums, exact roundings), and
`dequantize_u8` means (q − zp)·(1/S). The K210 runtimes do other arithmetic in places: the SDK's
Dequantize computes q·scale + bias (kmodel v3), float layers sum in float32 in their own loop order (both
versions), and some layers are decomposed. `to_v3_semantics` / `to_v4_semantics` turn those nodes into
the device ops of targets/k210/ops.py, whose kernels (targets/k210/kernels.py) run the
interpreters' own layer code, so that

    QuantizedExecutor(to_vN_semantics(g)) == kmodel file of g, bit for bit.

Each returns a rewritten copy; the source graph is untouched. compile_model lowers the copy and returns it
as `Compiled.graph` (the quantized IR executor's graph for that file). The lowering accepts both forms;
nodes left as they are already compute what the file computes (integer ops, KPU layers, data movement,
float32 elementwise ops), or have no device-exact form yet (listed under "Not rewritten" below).

v3 (K210 SDK kpu.c):
- dequantize_u8 -> dequantize_v3 {scale, bias}: the (scale, bias) pair the Dequantize layer holds
  (lower_v3.dequantize_params; exact pairs for zp = 0). Small tensors with an inexact pair stay: the
  lowering makes them exact with Dequantize(1, −zp) + a diagonal FullyConnected.
- quantize_u8 (not the model input's) -> quantize_v3 {scale, bias} (lower_v3.quantize_params).
- quantized_binary add -> whichever form lower_v3 picks: quantized_add_v3 (QuantizedAdd) or
  dequantize_v3 ×2 + add + quantize_v3.
- reduce mean over H, W -> reduce_f32 (GlobalAveragePool2d); float mean pools -> reduce_window2d_f32
  (AveragePool2d); matmul [+ its constant bias add] -> matmul_f32 (FullyConnected); a 1×1 conv of a 1×1 map
  -> conv2d_f32 (FullyConnected); softmax -> softmax_f32 (Softmax).
v4 (nncase v0.2 runtime): dequantize/quantize already agree (kmodel-v4.md §8.4, §8.7).
- reduce mean/sum -> reduce_f32; sum_square -> square + reduce_f32 sum; float mean pools ->
  reduce_window2d_f32; matmul [+ bias add] -> matmul_f32; conv2d -> conv2d_f32;
- softmax -> reduce max, sub, exp, reduce_f32 sum, div (log: log, sub): ncc's decomposition, which
  lower_v4_math.softmax emits.
Not rewritten (the IR still computes them in float64, the file may differ in the last bits): v3
L2Normalization and Logistic; v4 lp_normalize, rsqrt, the ops run as NNIL programs or decomposed (sigmoid,
tanh, hard_swish, hard_sigmoid, leaky_relu, pow, ...), bilinear resize, conv2d_transpose and the float
kpu_conv2d of --inference-type float.
"""
from __future__ import annotations

import math

import numpy as np

from compiler.errors import KpucError
from compiler.ir import Graph, Node, Value
from compiler.ops import OPS

NO_CLAMP = (-math.inf, math.inf)


V3_ONLY = ("dequantize_v3", "quantize_v3", "quantized_add_v3", "softmax_f32")


def _check_version(graph: Graph, kmodel: int) -> None:
    """Device ops of the other runtime cannot be lowered for this one (they compute its arithmetic)."""
    other = [n.name for n in graph.nodes
             if n.attrs.get("kmodel", kmodel) != kmodel or (kmodel == 4 and n.op in V3_ONLY)]
    if other:
        raise KpucError(f"the graph is already in kmodel v{7 - kmodel}'s arithmetic ({', '.join(other[:3])}); "
                        f"rewrite the prepared graph for v{kmodel} instead")


def to_device_semantics(graph: Graph, kmodel_version: int) -> Graph:
    """`to_v3_semantics` or `to_v4_semantics`."""
    if kmodel_version == 3:
        return to_v3_semantics(graph)
    if kmodel_version == 4:
        return to_v4_semantics(graph)
    raise KpucError(f"kmodel v{kmodel_version}: kpuc writes kmodel v3 or v4")


# ---------------------------------------------------------------- shared helpers
def _sole_user(graph: Graph, v: Value) -> Node | None:
    users = v.user_nodes()
    return users[0] if len(users) == 1 and len(v.users) == 1 and v not in graph.outputs else None


def _become(node: Node, new_op: str, inputs=None, /, **attrs) -> Node:
    """Turn `node` into another op in place: same name, output value(s), users, quantization and meta."""
    node.op, node.attrs = new_op, OPS[new_op].complete(attrs)
    if inputs is not None:
        node.inputs = inputs
    return node


def _is_float(*values: Value) -> bool:
    return all(v.dtype == "float32" for v in values)


def _matmul(graph: Graph, node: Node, kmodel: int) -> None:
    """matmul(a, B const 2-D) [-> add(bias const [N])] -> matmul_f32(a, B, bias); the add (when it alone
    reads the product and the matmul has no clamp) becomes the matmul_f32 node, keeping its output name:
    both runtimes fuse it as the layer's bias (lower_v3.matmul, lower_v4_math._bias_add)."""
    a, b = node.inputs
    if not (_is_float(a, b) and b.type.rank == 2):
        return
    if kmodel == 3 and (not b.is_constant or a.type.size != b.shape[0]):
        return                                   # not one FullyConnected: the lowering refuses it
    n = b.shape[1]
    clamp = tuple(node.attrs["fused_clamp"])
    add = _sole_user(graph, node.output)
    if clamp == NO_CLAMP and add is not None and add.op == "binary" and add.attrs["op"] == "add" \
            and add.output.shape == node.output.shape:
        other = add.inputs[1] if add.inputs[0] is node.output else add.inputs[0]
        if other.is_constant and other.dtype == "float32" and other.type.size == n and other.shape[-1:] == (n,):
            bias = graph.const(np.asarray(other.data, np.float32).reshape(n), name=f"{node.name}/bias", before=add)
            _become(add, "matmul_f32", [a, b, bias], fused_clamp=tuple(add.attrs["fused_clamp"]),
                    kmodel=kmodel)
            return                                # the matmul, now unread, goes with the dead code
    bias = graph.const(np.zeros(n, np.float32), name=f"{node.name}/bias", before=node)
    _become(node, "matmul_f32", [a, b, bias], fused_clamp=clamp, kmodel=kmodel)


def _mean_pool(node: Node, kmodel: int) -> None:
    if node.attrs["op"] == "mean" and _is_float(node.inputs[0]):
        _become(node, "reduce_window2d_f32", **node.attrs, kmodel=kmodel)


def _rewrite_all(g: Graph, rewrites: dict) -> Graph:
    """Apply each node's rewrite from `rewrites` to `g` (a copy the caller owns) in node order; `g`."""
    for node in list(g.nodes):
        if node not in g.nodes:
            continue                              # folded away by an earlier rewrite
        rewrite = rewrites.get(node.op)
        if rewrite is not None:
            rewrite(g, node)
    g.eliminate_dead_code()
    g.validate()
    return g


# ---------------------------------------------------------------- v3
def to_v3_semantics(graph: Graph) -> Graph:
    """A copy of `graph` in the SDK's arithmetic (see the module doc); pads are folded into the KPU ring
    first (lower_v3.prepare_v3), as the lowering does."""
    from targets.k210.lower_v3 import prepare_v3
    _check_version(graph, 3)
    return _rewrite_all(prepare_v3(graph), V3_REWRITES)


def _v3_dequantize(graph: Graph, node: Node) -> None:
    from targets.k210.lower_v3 import EXACT_DEQUANTIZE_MAX, dequantize_params
    sc, bias, bad, _ = dequantize_params(node.attrs["scale"], node.attrs["zero_point"])
    if bad and node.output.type.size <= EXACT_DEQUANTIZE_MAX:
        return                                    # lowered exactly as Dequantize(1, −zp) + diagonal FC
    _become(node, "dequantize_v3", scale=sc, bias=bias)


def _v3_quantize(graph: Graph, node: Node) -> None:
    from targets.k210.lower_v3 import quantize_params
    if node.inputs[0] in graph.inputs:
        return                                    # the model input's quantize: the host feeds its codes
    sc, bias, _ = quantize_params(node.attrs["scale"], node.attrs["zero_point"])
    _become(node, "quantize_v3", scale=sc, bias=bias)


def _v3_quantized_add(graph: Graph, node: Node) -> None:
    """The form lower_v3.quantized_binary picks, spelled out in device ops."""
    from targets.k210.lower_v3 import sdk_add_form
    form = sdk_add_form(node)
    if form is None:
        return                                    # not an add v3 expresses: the lowering says why
    kind, params = form[:2]
    if kind == "QuantizedAdd":
        _become(node, "quantized_add_v3", **params)
        return
    (sa, ba), (sb, bb), (sc, bias) = params
    a, b = node.inputs
    with graph.inserting_before(node):
        da = graph.add("dequantize_v3", [a], name=f"{node.name}/dequantize_a", scale=sa, bias=ba)
        db = graph.add("dequantize_v3", [b], name=f"{node.name}/dequantize_b", scale=sb, bias=bb)
        total = graph.add("binary", [da.output, db.output], name=f"{node.name}/add", op="add")
    _become(node, "quantize_v3", [total.output], scale=sc, bias=bias)


def _v3_reduce(graph: Graph, node: Node) -> None:
    x, a = node.inputs[0], node.attrs
    if a["op"] == "mean" and x.type.rank == 4 and tuple(a["axes"]) == (2, 3) and _is_float(x):
        _become(node, "reduce_f32", **a, kmodel=3)


def _v3_conv2d(graph: Graph, node: Node) -> None:
    x, w, b = node.inputs
    a = node.attrs
    if w.is_constant and b.is_constant and _is_float(x) and x.type.rank == 4 and x.shape[0] == 1 \
            and x.shape[2:] == (1, 1) and w.shape[2:] == (1, 1) and a["groups"] == 1 \
            and not any(p for pair in a["padding"] for p in pair):
        _become(node, "conv2d_f32", **a, kmodel=3)


def _v3_softmax(graph: Graph, node: Node) -> None:
    if not node.attrs["log"] and _is_float(node.inputs[0]):
        _become(node, "softmax_f32", axis=node.attrs["axis"], kmodel=3)


V3_REWRITES = {
    "dequantize_u8": _v3_dequantize,
    "quantize_u8": _v3_quantize,
    "quantized_binary": _v3_quantized_add,
    "reduce": _v3_reduce,
    "reduce_window2d": lambda g, n: _mean_pool(n, 3),
    "matmul": lambda g, n: _matmul(g, n, 3),
    "conv2d": _v3_conv2d,
    "softmax": _v3_softmax,
}


# ---------------------------------------------------------------- v4
def to_v4_semantics(graph: Graph) -> Graph:
    """A copy of `graph` in the nncase v0.2 runtime's arithmetic (see the module doc)."""
    _check_version(graph, 4)
    return _rewrite_all(graph.clone(), V4_REWRITES)


def _v4_reduce(graph: Graph, node: Node) -> None:
    x, a = node.inputs[0], node.attrs
    if not _is_float(x):
        return
    if a["op"] in ("mean", "sum"):
        _become(node, "reduce_f32", **a, kmodel=4)
    elif a["op"] == "sum_square":                 # lower_v4_math.reduce: unary square, then reduce sum
        sq = graph.add("unary", [x], name=f"{node.name}/square", before=node, op="square")
        _become(node, "reduce_f32", [sq.output], **{**a, "op": "sum"}, kmodel=4)


def _v4_conv2d(graph: Graph, node: Node) -> None:
    x, w, b = node.inputs
    if w.is_constant and b.is_constant and _is_float(x):
        _become(node, "conv2d_f32", **node.attrs, kmodel=4)


def _v4_softmax(graph: Graph, node: Node) -> None:
    """ncc's decomposition (lower_v4_math.softmax): max, x − max, exp, Σ in order, e / Σ (log: z − log Σ)."""
    x = node.inputs[0]
    if not _is_float(x):
        return
    axis = node.attrs["axis"]
    with graph.inserting_before(node):
        m = graph.add("reduce", [x], name=f"{node.name}/max", op="max", axes=(axis,), keepdims=True)
        z = graph.add("binary", [x, m.output], name=f"{node.name}/sub", op="sub")
        e = graph.add("exp_f32", [z.output], name=f"{node.name}/exp", kmodel=4)
        s = graph.add("reduce_f32", [e.output], name=f"{node.name}/sum", op="sum", axes=(axis,), keepdims=True,
                      kmodel=4)
        if node.attrs["log"]:
            lg = graph.add("unary", [s.output], name=f"{node.name}/log", op="log")
            _become(node, "binary", [z.output, lg.output], op="sub")
        else:
            _become(node, "binary", [e.output, s.output], op="div")


def _v4_unary(graph: Graph, node: Node) -> None:
    if node.attrs["op"] == "exp" and _is_float(node.inputs[0]):
        _become(node, "exp_f32", kmodel=4)


V4_REWRITES = {
    "unary": _v4_unary,
    "reduce": _v4_reduce,
    "reduce_window2d": lambda g, n: _mean_pool(n, 4),
    "matmul": lambda g, n: _matmul(g, n, 4),
    "conv2d": _v4_conv2d,
    "softmax": _v4_softmax,
}
