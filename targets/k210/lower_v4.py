"""Lowering of an IR graph to a kmodel v4 file (nncase v0.2's codegen + scheduler, kmodel-v4.md §6-§12).

`lower_v4(graph, target=...)` walks the graph in order and calls one emitter per IR op from `LOWER_V4`
(nncase's `codegen/ops/*`: one function per op, filled by decorator in the family files
`lower_v4_math.py` (float math), `lower_v4_shape.py` (data movement) and `lower_v4_quant.py` (uint8 and
KPU ops)). An emitter builds kmodel body dataclasses (targets/k210/kmodel_v4.py) whose memory-range
fields hold `Buffer` placeholders; once every node is emitted the steps are ordered, the buffers placed
and the placeholders become `MemoryRange`s. So emitters never think about addresses:

    graph --LOWER_V4--> steps (body + buffers read / written) --order, place--> KModelV4 --write_v4--> bytes

Decisions taken before the emitters run, each exact (the file computes what the graph computes):
- model inputs (lower_v4_quant.input_buffer): a float input the graph only quantizes becomes a uint8
  input (ncc's --input-type default), a uint8 input read only by KPU layers lives in KPU RAM;
- in-place concats (lower_v4_shape.plan_inplace_concats): inputs are written straight into their
  slot of the output;
- subsampling (lower_v4_quant.plan_kpu_subsampling): a stride-2/4 slice between a KPU layer and 1x1
  KPU layers becomes their `left_top` pool.
After: the node order fills the KPU tables' alignment gaps with CPU bodies (lower_v4_schedule).

Memory (§6): every buffer lives in one pool. Constants go into the constants blob in first-use order,
each 8-aligned, equal ones shared, never freed. Main (8-byte unit) and KPU (64-byte unit) buffers live
from the step that writes them to the last step that reads them; model outputs live to the end. A
`Buffer` may be a view of another at a byte offset (a reshape is a view of its input), so such ops cost
neither a node nor memory. Placement is the shared planner (`targets.k210.planner`), see `place`.

Header (§3, §17): target 1 (nncase writes 1 for `-t cpu` too), flags 0, reserved0 0.
"""

from __future__ import annotations

from compiler.errors import Blocker, CannotLower, DoesNotFit, KpucError
from compiler.ir import Graph
from targets.k210 import kmodel_v4 as k4, lower_v4_math, lower_v4_quant, lower_v4_schedule, lower_v4_shape, planner  # noqa: F401  (fill LOWER_V4)
from targets.k210.bits import align_up
from targets.k210.kpu_layout import KPU_RAM_BYTES
from targets.k210.lower_v4_core import (  # noqa: F401
    DATATYPES,
    INPUT_TYPES,
    KPU_OPCODES,
    LOWER_V4,
    POOL_ALIGN,
    TARGETS,
    Buffer,
    Emitter,
    Lowering,
    Step,
    emitter,
    resolve_body,
    shape4,
    value_range,
)

# ---------------------------------------------------------------- placement
POOLS = {k4.MEM_MAIN: ("main", None, "main memory"), k4.MEM_KPU: ("kpu", KPU_RAM_BYTES, "KPU RAM")}


def _pools(nncase: bool) -> list[planner.Pool]:
    return [planner.Pool("main", None, POOL_ALIGN[k4.MEM_MAIN], "bytes", "nncase_main" if nncase else "offline",
                         "main memory"),
            planner.Pool("kpu", KPU_RAM_BYTES, POOL_ALIGN[k4.MEM_KPU], "bytes", "nncase_kpu" if nncase else "offline",
                         "KPU RAM")]


def place(steps: list[Step], inputs: list[Buffer], outputs: list[Buffer]) -> dict[int, int]:
    """Give every main and KPU root buffer its `start` with the shared planner; returns each pool's size.

    Lifetimes: a model input exists before the first step (a pseudo step writes it), a buffer lives
    from the step that writes it to the last step that reads it, model outputs to the end. Per pool
    two placements are made, nncase's online allocator replayed and the offline planner, and the lower
    high-water mark wins (a tie keeps nncase's choice, so small graphs come out as ncc lays them out:
    the iris golden file). ncc v0.2.0-beta4 itself minimises with CP-SAT (§6.2); any placement in which
    live buffers do not overlap is valid.
    """
    names: dict[Buffer, str] = {}

    def name(b: Buffer) -> str:
        return names.setdefault(b.root, f"{len(names)}:{b.root.name}")

    def roots(bufs) -> tuple[str, ...]:
        return tuple(dict.fromkeys(name(b) for b in bufs if b.root.pool in POOLS))

    plan_steps = [planner.Step("inputs", writes=roots(inputs))]
    plan_steps += [planner.Step(f"{i}:{s.body.op_name}:{s.source}", roots(s.reads), roots(s.writes))
                   for i, s in enumerate(steps)]
    buffers = [planner.Buffer(n, POOLS[b.pool][0], b.size) for b, n in names.items()]
    keep = roots(outputs)
    try:
        plans = [planner.plan_memory(plan_steps, buffers, _pools(nncase), keep) for nncase in (True, False)]
    except DoesNotFit as e:
        at = {p.name: s for p, s in zip(plan_steps[1:], steps)}.get(e.step)
        node = at.source if at is not None and at.source else None
        raise CannotLower(str(e), [Blocker(None, node, str(e))], 4) from None
    sizes = {}
    for mem, (pool, _, _) in POOLS.items():
        chosen = min(plans, key=lambda p: p.pools[pool].used if pool in p.pools else 0)
        sizes[mem] = chosen.pools[pool].used
        for b, n in names.items():
            if b.pool == mem:
                b.start = chosen.offset(n)
    return sizes


# ---------------------------------------------------------------- the driver
def lower_steps(graph: Graph, target: str = "k210", input_type: str = "default") -> Lowering:
    """Run the emitters over the graph (no placement yet)."""
    ctx = Lowering(graph, target, input_type)
    for v in graph.inputs:
        ctx.node = v.producer
        try:
            lower_v4_quant.input_buffer(ctx, v)    # main memory or KPU RAM, float or uint8
        except CannotLower:
            raise
        except KpucError as e:                     # the model input itself cannot be a v4 input
            raise CannotLower(str(e), [Blocker("input", v.producer.name, str(e))], 4) from e
    lower_v4_shape.plan_inplace_concats(ctx)
    lower_v4_quant.plan_kpu_subsampling(ctx)
    problems, failed = [], set()
    for node in graph.nodes:
        if node.op in ("input", "constant") or node in ctx.absorbed:
            continue
        ctx.node = node
        fn = LOWER_V4.get(node.op)
        if fn is None:
            problems.append(Blocker(node.op, node.name, f"kmodel v4 has no lowering for IR op '{node.op}'"))
            failed.update(node.outputs)
            continue
        if any(v in failed for v in node.inputs):  # its input could not be lowered: nothing to say about it
            failed.update(node.outputs)
            continue
        try:
            fn(ctx, node)
        except KpucError as e:
            msg = str(e).removeprefix(f"{node.name}: ").removeprefix(f"{node.name} ({node.op}): ")
            problems.append(Blocker(node.op, node.name, msg))
            failed.update(node.outputs)
    if problems:  # every op that stops v4, not just the first (kpuc check lists them all)
        raise CannotLower(f"kmodel v4 cannot express {len(problems)} op(s): "
                          + "; ".join(map(str, problems)), problems, 4)
    ctx.node = None
    return ctx


def graph_outputs(ctx: Lowering) -> list[Buffer]:
    """The buffers the host reads the outputs from (a constant output is copied to main memory)."""
    outs = []
    for v in ctx.graph.outputs:
        if v not in ctx.main and v in ctx.kpu:
            raise KpucError(f"graph output %{v.name} lives in KPU RAM only")
        buf = ctx.buffer(v)
        if buf.root.pool == k4.MEM_CONST:
            ctx.node = v.producer
            buf = lower_v4_shape.copy_to_main(ctx, buf, v.shape, f"{v.name}/copy")
        outs.append(buf)
    return outs


def assemble(ctx: Lowering, outputs: list[Buffer]) -> k4.KModelV4:
    """Place every buffer, resolve the bodies and build the model."""
    inputs = [ctx.inputs[v] for v in ctx.graph.inputs]
    # constants: first-use order, 8-aligned, pinned (§5.2)
    used: dict[Buffer, None] = {}
    for s in ctx.steps:
        for b in s.reads:
            if b.root.pool == k4.MEM_CONST:
                used[b.root] = None
    for b in outputs:
        if b.root.pool == k4.MEM_CONST:
            used[b.root] = None
    blob, placed = bytearray(), {}
    for b in used:                      # equal constants share one slot
        if b.data in placed:
            b.start = placed[b.data]
            continue
        b.start = placed[b.data] = len(blob)
        blob += b.data
        blob += bytes(align_up(len(blob), POOL_ALIGN[k4.MEM_CONST]) - len(blob))
    bodies_start = 40 + 16 * (2 * len(inputs) + len(outputs)) + len(blob) + 8 * len(ctx.steps)
    ctx.steps = lower_v4_schedule.order_for_kpu_alignment(ctx.steps, bodies_start)
    main_mem = place(ctx.steps, inputs, outputs)[k4.MEM_MAIN]
    nodes = []
    for s in ctx.steps:
        body = s.finish(s.body) if s.finish else resolve_body(s.body)
        nodes.append(k4.Node(body.opcode, body))
    model = k4.KModelV4(inputs=[b.range() for b in inputs],
                        input_shapes=[shape4(v.shape) for v in ctx.graph.inputs],
                        outputs=[b.range() for b in outputs], constants=bytes(blob), main_mem=main_mem,
                        nodes=nodes, target=1, flags=0, reserved0=0)
    return model


def lower_v4(graph: Graph, *, target: str = "k210", input_type: str = "default") -> k4.KModelV4:
    """Lower a (float, or quantized for uint8) IR graph to a kmodel v4 model; serialize with write_v4.

    `target`: "k210" (KPU layers allowed) or "cpu" (neutral ops only; the header says 1 either way).
    `input_type` (ncc's --input-type): "default" makes a float model input that the graph only quantizes
    (a uint8 compile) a uint8 input fed with the codes, as ncc's default does; "float" keeps it float
    (the file then quantizes it); "uint8" insists on the former."""
    ctx = lower_steps(graph, target, input_type)
    return assemble(ctx, graph_outputs(ctx))


def compile_v4(graph: Graph, *, target: str = "k210", input_type: str = "default") -> tuple[bytes, dict]:
    """The file bytes and a summary for the CLI: nodes on the KPU vs the CPU, KPU RAM peak, main memory,
    constants and file size (bytes)."""
    model = lower_v4(graph, target=target, input_type=input_type)
    data = k4.write_v4(model)
    return data, summarize(model, data, target)


def summarize(model: k4.KModelV4, data: bytes, target: str = "k210") -> dict:
    """Node counts and memory figures of a v4 model, measured as describe_v4 measures any file (so ours
    and nncase's compare like for like): KPU RAM peak = highest end of a KPU range."""
    d = k4.describe_v4(model)
    kpu_nodes = d["ops"].get("kpu_conv2d", 0)
    return {"kmodel_version": 4, "target": target, "nodes": len(model.nodes), "kpu_ops": kpu_nodes,
            "cpu_ops": len(model.nodes) - kpu_nodes, "ops": d["ops"], "kpu_ram_peak": d["memory"]["kpu"]["used"],
            "main_memory": model.main_mem, "constants": len(model.constants), "file_size": len(data)}

