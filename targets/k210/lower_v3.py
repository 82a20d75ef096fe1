"""Lower an IR graph to a kmodel v3 (nncase v0.1 / K210 SDK `kpu.c`): layers, memory plan, file.

One function per IR op in `LOWER_V3` (nncase's emitters). Each reads the node, may absorb the nodes
nncase fused into the same layer (a bias add and a ReLU after a matmul; the pad and quantize before a
fully connected KPU layer), and emits layers: a `LayerType`, the buffers it reads and writes, and a
function from addresses to the body. Once every layer is known, `planner.plan_memory` places the
buffers (main memory with nncase v0.1's allocator, KPU RAM likewise with an offline fallback;
kmodel-v3.md §12) and the bodies are built.

    graph --prepare_v3--> graph' --LOWER_V3--> layers + schedule --plan_memory--> KModelV3 --write_v3--> bytes

Layer order is nncase's: depth-first from the graph outputs, producers before consumers in operand
order (§12). Reshapes alias their input and emit nothing. Float graphs (`--inference-type float`) use
the float CPU layers; quantized graphs (targets/k210/quantize.py) become K210Conv with K210Upload /
K210AddPadding / K210RemovePadding around it as nncase v0.1 did, plus the quantized CPU layers. v3 has
no pad or slice layer: pads before a KPU layer fold into its ring (`fold_pad_into_kpu_conv2d_q`) and
slices become a nearest resize read from an offset (or a Concatenation of byte ranges).

Exactness: every KPU layer, upload, slice, table and max pool computes the quantized executor's value
bit for bit. Where the SDK's CPU arithmetic cannot (Dequantize with a zero point: q·scale + bias against
(q − zp)·scale; quantized add), the closest form is chosen and the layer is listed in the summary's
"inexact" entry with how often and by how much it differs. Float layers sum in float32 in the SDK's
order where the executor sums in float64. compile_model lowers the graph rewritten by
targets/k210/device_semantics.py instead, whose device ops (dequantize_v3, quantize_v3, quantized_add_v3,
reduce_f32, matmul_f32, ...) say what these layers compute, so that graph and the file agree bit for bit.

Everything v3 cannot say is collected and reported at once, suggesting kmodel v4.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from compiler.errors import Blocker, CannotLower, DoesNotFit
from compiler.ir import Graph, Node, Value
from targets.k210.kmodel_v3 import V3_HEADER, V3_OUTPUT, KModelV3, LayerType, V3Layer, write_v3
from targets.k210.kpu_layout import KPU_RAM_ROWS, KPU_ROW_BYTES
from targets.k210.lower_v3_core import (  # noqa: F401
    ACTIVATIONS,
    EXACT_DEQUANTIZE_MAX,
    KPU,
    LOWER_V3,
    MAIN,
    NO_CLAMP,
    Emitted,
    Lowering,
    Ref,
    Unexpressible,
    chw,
    fixed,
    lowers,
    nbytes,
    reshape,
    sole_user,
    vector_len,
)

# Importing the op modules fills LOWER_V3; the names other modules and tests use stay importable from here.
from targets.k210.lower_v3_float import (  # noqa: F401
    binary,
    concat,
    conv2d,
    lp_normalize,
    matmul,
    pad,
    reduce,
    reduce_window2d,
    resize,
    softmax,
    strided_slice,
    transpose,
    unary,
)
from targets.k210.lower_v3_kpu import WEIGHT_LOAD_LIMIT, _claim_inputs, kpu_args, kpu_conv2d_q  # noqa: F401
from targets.k210.lower_v3_prepare import SELECTIONS, fold_pad_into_kpu_conv2d_q, prepare_v3  # noqa: F401
from targets.k210.lower_v3_quant import (  # noqa: F401
    _float_add,
    _sdk_quantized_add,
    dequantize,
    dequantize_params,
    dequantize_v3,
    quantize,
    quantize_params,
    quantize_v3,
    quantized_add_v3,
    quantized_binary,
    requantize,
    sdk_add_form,
    table_lookup1d,
)
from targets.k210.planner import Plan, plan_memory


# ---------------------------------------------------------------- driver
def schedule(graph: Graph) -> list[Node]:
    """nncase's layer order: depth-first from the outputs, producers first, in operand order (§12)."""
    order, seen = [], set()
    for out in graph.outputs:
        stack = [(out.producer, 0)]
        while stack:
            node, i = stack.pop()
            if i == 0 and id(node) in seen:
                continue
            if i < len(node.inputs):
                stack.append((node, i + 1))
                if id(node.inputs[i].producer) not in seen:
                    stack.append((node.inputs[i].producer, 0))
                continue
            if id(node) not in seen:
                seen.add(id(node))
                order.append(node)
    return order


@dataclass
class LoweredV3:
    """A lowering's results: the model, the memory plan, and what the CLI reports."""
    model: KModelV3
    plan: Plan
    graph: Graph               # the prepared graph the layers were emitted from
    layer_names: list[str]     # the node each layer comes from, in layer order
    input: dict
    inexact: list[str]


def lower_v3_detailed(graph: Graph) -> LoweredV3:
    """`lower_v3` with the memory plan, the prepared graph the layers come from, and the layer names."""
    if len(graph.inputs) != 1:
        raise _cannot(f"a kmodel v3 has exactly one input, this graph has {len(graph.inputs)}; "
                      "try --kmodel-version 4")
    graph = prepare_v3(graph)
    ctx, problems = Lowering(graph), []
    _claim_inputs(ctx)
    for node in schedule(graph):
        if node in ctx.absorbed:
            continue
        fn = LOWER_V3.get(node.op)
        try:
            if fn is None:
                raise Unexpressible(f"no kmodel v3 layer for IR op '{node.op}'")
            fn(ctx, node)
        except Unexpressible as e:
            problems.append(Blocker(node.op, node.name, str(e)))
    for v in graph.outputs:
        if v.producer.op in ("input", "constant"):
            problems.append(Blocker(None, None, f"output '{v.name}' is a graph {v.producer.op}, "
                                                "not computed by any layer"))
    if problems:
        raise CannotLower(f"kmodel v3 cannot express {len(problems)} op(s): " + "; ".join(map(str, problems))
                          + ". Try --kmodel-version 4", problems, 3)
    x = _check_first_layer(ctx)
    outputs = [ctx.main(v) for v in graph.outputs]
    try:
        plan = plan_memory(ctx.steps, ctx.buffers.values(), [MAIN, KPU], keep=[r.buffer for r in outputs])
    except DoesNotFit as e:
        raise _cannot(str(e), node=e.step if any(n.name == e.step for n in graph.nodes) else None) from None

    def addr(ref: Ref) -> int:
        return plan.offset(ref.buffer) + ref.offset

    layers = [V3Layer(e.type, e.make(addr)) for e in ctx.layers]
    kpu_plan, main_plan = plan.pools.get("kpu"), plan.pools.get("main")
    header = V3_HEADER.make(
        version=3, flags=int(ctx.eight_bit), arch=0, layers_length=len(layers),
        max_start_address=kpu_plan.lowest if kpu_plan and kpu_plan.lowest is not None else KPU_RAM_ROWS,
        main_mem_usage=main_plan.used if main_plan else 0, output_count=len(outputs))
    out_table = [V3_OUTPUT.make(address=addr(r), size=nbytes(v)) for r, v in zip(outputs, graph.outputs)]
    model = KModelV3(header, out_table, layers, tail_padding=True)
    entry = {"shape": list(x.shape), "dtype": x.dtype, "memory": "kpu" if x in ctx.kpu_refs else "main"}
    if x is not graph.inputs[0]:      # the kmodel takes the codes of the graph input's quantize_u8
        q = x.producer.attrs
        entry["quant"] = {"scale": q["scale"], "zero_point": q["zero_point"]}
    return LoweredV3(model, plan, graph, [e.name for e in ctx.layers], entry, ctx.inexact)


def _check_first_layer(ctx: Lowering) -> Value:
    """The SDK starts a v3 model only at a K210Conv or a FullyConnected reading the input (§10).
    Returns the value the kmodel's input is."""
    if not ctx.layers:
        raise _cannot("the graph has no layer to run; kmodel v3 needs at least one")
    first, x = ctx.layers[0], ctx.model_input or ctx.graph.inputs[0]
    ok_type = first.type in (LayerType.K210Conv, LayerType.FullyConnected)
    refs = [r.buffer for r in (ctx.main_refs.get(x), ctx.kpu_refs.get(x)) if r is not None]
    reads_input = any(b in ctx.steps[0].reads for b in refs)
    if not (ok_type and reads_input):
        raise _cannot(f"the first layer is {first.type.name} '{first.name}'"
                      f"{'' if reads_input else ' not reading the input'}; the K210 SDK starts a v3 model only at a "
                      "K210Conv or a FullyConnected that reads the input. Try --kmodel-version 4", node=first.name)
    if len(refs) > 1:
        raise _cannot("the input feeds both a K210Conv and a CPU layer; the SDK only fills layer 0's copy of it "
                      "(kmodel-v3.md §15). Try --kmodel-version 4")
    return x


def _cannot(message: str, node: str | None = None) -> CannotLower:
    """A whole-model blocker (`node` names the layer it is about, when there is one)."""
    return CannotLower(message, [Blocker(None, node, message)], 3)


def lower_v3(graph: Graph) -> KModelV3:
    """The kmodel v3 for a float or quantized graph; raises KpucError naming every op v3 cannot express."""
    return lower_v3_detailed(graph).model


def compile_v3(graph: Graph) -> tuple[bytes, dict]:
    """The kmodel v3 file and a summary for the CLI (layers on KPU and CPU, memory, size)."""
    low = lower_v3_detailed(graph)
    data = write_v3(low.model)
    types = Counter(l.type.name for l in low.model.layers)
    kpu_layers = types.get("K210Conv", 0)
    kpu = low.plan.pools.get("kpu")
    header = low.model.header
    summary = {
        "kmodel_version": 3,
        "layers": len(low.model.layers),
        "kpu_ops": kpu_layers,
        "cpu_ops": len(low.model.layers) - kpu_layers,
        "layer_types": dict(sorted(types.items())),
        "kpu_ram_peak": (kpu.live_peak if kpu else 0) * KPU_ROW_BYTES,
        "main_memory": header.main_mem_usage,
        "file_size": len(data),
        "input": low.input,
        "outputs": [{"address": o.address, "size": o.size} for o in low.model.outputs],
    }
    if kpu and kpu.peak_step:
        summary["kpu_ram_peak_layer"] = kpu.peak_step
    if low.inexact:
        summary["inexact"] = low.inexact
    return data, summary
