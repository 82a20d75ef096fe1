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

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from compiler.errors import KpucError
from compiler.ir import Graph, Node, Value
from compiler.registry import registrar
from targets.k210 import kmodel_v4 as k4
from targets.k210 import planner
from targets.k210.bits import align_up
from targets.k210.kpu_layout import KPU_RAM_BYTES

TARGETS = ("k210", "cpu")
INPUT_TYPES = ("default", "uint8", "float")
DATATYPES = {"float32": k4.DT_FLOAT32, "uint8": k4.DT_UINT8}
POOL_ALIGN = {k4.MEM_CONST: 8, k4.MEM_MAIN: 8, k4.MEM_KPU: 64}  # §6.1 allocation units
KPU_OPCODES = frozenset({k4.KpuUpload.opcode, k4.KpuConv2D.opcode})

Emitter = Callable[["Lowering", Node], None]
LOWER_V4: dict[str, Emitter] = {}


emitter = registrar(LOWER_V4)   # @emitter(*ops): lowers IR nodes of `ops` (one function may serve several)


# ---------------------------------------------------------------- buffers and steps
@dataclass(eq=False)
class Buffer:
    """One tensor's bytes in a pool; a view (`base` set) shares its base's memory at `offset`."""
    name: str
    pool: int                        # k4.MEM_CONST / MEM_MAIN / MEM_KPU
    datatype: int                    # k4.DT_FLOAT32 / DT_UINT8
    size: int                        # exact bytes (§4.1); KPU maps: kpu_bytes(shape)
    data: bytes | None = None        # constants only
    base: "Buffer | None" = None
    offset: int = 0
    start: int | None = None         # placement, roots only

    @property
    def root(self) -> "Buffer":
        return self if self.base is None else self.base.root

    @property
    def root_offset(self) -> int:
        return self.offset + (self.base.root_offset if self.base is not None else 0)

    def range(self) -> k4.MemoryRange:
        root = self.root
        if root.start is None:
            raise KpucError(f"buffer {self.name} was never placed")
        return k4.MemoryRange(self.pool, self.datatype, root.start + self.root_offset, self.size)


@dataclass(eq=False)
class Step:
    """One kmodel node to be: its body (with Buffer placeholders) and the buffers it reads and writes."""
    body: Any
    reads: tuple[Buffer, ...]
    writes: tuple[Buffer, ...]
    finish: Callable[[Any], Any] | None = None   # body -> body once buffers are placed (KPU addresses)
    source: str = ""                             # IR node name, for error messages and describe


def _resolve(value):
    if isinstance(value, Buffer):
        return value.range()
    if isinstance(value, tuple) and value and all(isinstance(v, Buffer) for v in value):
        return tuple(v.range() for v in value)
    return value


def resolve_body(body):
    """The body with every Buffer placeholder (and tuple of them) replaced by its MemoryRange."""
    return dataclasses.replace(body, **{f.name: _resolve(getattr(body, f.name)) for f in dataclasses.fields(body)
                                        if isinstance(getattr(body, f.name), (Buffer, tuple))})


def _body_buffers(body) -> tuple[list[Buffer], list[Buffer]]:
    """(reads, writes) by field name: `output` is written, every other range field read (node_ranges)."""
    reads, writes = [], []
    for f in dataclasses.fields(body):
        v = getattr(body, f.name)
        for b in (v if isinstance(v, tuple) else (v,)):
            if isinstance(b, Buffer):
                (writes if f.name == "output" else reads).append(b)
    return reads, writes


# ---------------------------------------------------------------- the lowering context
class Lowering:
    """State while lowering one graph: value -> buffer maps, the constants and the emitted steps."""

    def __init__(self, graph: Graph, target: str, input_type: str = "default"):
        if target not in TARGETS:
            raise KpucError(f"unknown target '{target}' (expected one of: {', '.join(TARGETS)})")
        if input_type not in INPUT_TYPES:
            raise KpucError(f"unknown input type '{input_type}' (expected one of: {', '.join(INPUT_TYPES)})")
        self.graph, self.target, self.input_type = graph, target, input_type
        self.inputs: dict[Value, Buffer] = {}  # model input -> the buffer the host writes
        self.steps: list[Step] = []
        self.main: dict[Value, Buffer] = {}    # value -> buffer in main memory (or const / a view)
        self.kpu: dict[Value, Buffer] = {}     # value -> its map in KPU RAM
        self.presets: dict[Value, Buffer] = {}  # outputs an earlier decision placed (in-place concat)
        self.absorbed: set[Node] = set()        # nodes another emitter already lowered (fused bias add)
        self.subsample: dict[Node, tuple] = {}  # KPU layer -> (full map it reads, pool replacing a slice)
        self.subsampled_by: dict[Node, Value] = {}  # slices folded into the pools of their readers
        self.node: Node | None = None

    # -------- buffers
    def new_buffer(self, name: str, shape, dtype: str, pool: int = k4.MEM_MAIN) -> Buffer:
        dt = self.datatype(dtype, name)
        if pool == k4.MEM_KPU:
            size = k4.kpu_bytes(shape4(shape))
        else:
            size = int(np.prod(shape, dtype=np.int64)) * k4.DTYPES[dt].itemsize
        return Buffer(name, pool, dt, size)

    def datatype(self, dtype: str, what: str = "") -> int:
        if dtype not in DATATYPES:
            raise KpucError(f"{what or (self.node and self.node.name)}: kmodel v4 holds float32 and uint8 "
                            f"tensors only, not {dtype}")
        return DATATYPES[dtype]

    def const(self, array: np.ndarray, name: str) -> Buffer:
        """A new constant in the blob (float32 stays float32, uint8 stays uint8)."""
        arr = np.ascontiguousarray(array)
        dt = self.datatype(arr.dtype.name, name)
        data = arr.astype(k4.DTYPES[dt]).tobytes()
        return Buffer(name, k4.MEM_CONST, dt, len(data), data=data)

    def buffer(self, v: Value) -> Buffer:
        """Where value `v` lives in main memory (constants: in the blob), for a CPU op to read."""
        if v in self.main:
            return self.main[v]
        if v.is_constant:
            self.main[v] = self.const(v.data, v.name)
            return self.main[v]
        if v in self.kpu:
            raise KpucError(f"{self.node.name}: %{v.name} lives in KPU RAM only (no main-memory copy was made)")
        raise KpucError(f"{self.node.name}: %{v.name} has not been lowered yet")

    def output(self, v: Value, pool: int = k4.MEM_MAIN) -> Buffer:
        """The buffer an emitter writes value `v` into (created here unless a decision preset it)."""
        if pool == k4.MEM_MAIN and v in self.presets:
            buf = self.presets.pop(v)
        else:
            buf = self.new_buffer(v.name, v.shape, v.dtype, pool)
        (self.kpu if pool == k4.MEM_KPU else self.main)[v] = buf
        return buf

    def temp(self, name: str, shape, dtype: str = "float32", pool: int = k4.MEM_MAIN) -> Buffer:
        """A buffer for an intermediate result that no IR value names."""
        return self.new_buffer(f"{self.node.name}/{name}", shape, dtype, pool)

    def view(self, name: str, base: Buffer, offset: int, size: int) -> Buffer:
        """`size` bytes of `base` from byte `offset` (same pool and datatype)."""
        return Buffer(name, base.pool, base.datatype, size, base=base, offset=offset)

    # -------- steps
    def emit(self, body, *, reads=None, writes=None, finish=None) -> None:
        """Append one kmodel node; reads/writes default to the body's range fields (`output` is written)."""
        if self.target == "cpu" and body.opcode in KPU_OPCODES:
            raise KpucError(f"{self.node.name}: {body.op_name} needs the KPU, but the target is cpu")
        r, w = _body_buffers(body)
        self.steps.append(Step(body, tuple(r if reads is None else reads), tuple(w if writes is None else writes),
                               finish, self.node.name if self.node else ""))


def shape4(shape) -> tuple[int, int, int, int]:
    """A runtime_shape_t: the shape left-padded with 1s to 4-D (§1); leading 1s beyond 4-D are dropped."""
    shape = tuple(int(d) for d in shape)
    while len(shape) > 4 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) > 4:
        raise KpucError(f"kmodel v4 shapes are at most 4-D, not {shape}")
    return (1,) * (4 - len(shape)) + shape


def value_range(clamp) -> k4.ValueRange:
    """A fused clamp (lo, hi) as value_range<float>: infinities become ∓FLT_MAX (§4.2)."""
    lo, hi = clamp if clamp is not None else (-math.inf, math.inf)
    return k4.ValueRange(max(float(lo), -k4.FLT_MAX), min(float(hi), k4.FLT_MAX))


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
    plans = [planner.plan_memory(plan_steps, buffers, _pools(nncase), keep) for nncase in (True, False)]
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
        lower_v4_quant.input_buffer(ctx, v)        # main memory or KPU RAM, float or uint8
    lower_v4_shape.plan_inplace_concats(ctx)
    lower_v4_quant.plan_kpu_subsampling(ctx)
    problems, failed = [], set()
    for node in graph.nodes:
        if node.op in ("input", "constant") or node in ctx.absorbed:
            continue
        ctx.node = node
        fn = LOWER_V4.get(node.op)
        if fn is None:
            problems.append(f"{node.op} '{node.name}' (kmodel v4 has no lowering for IR op '{node.op}')")
            failed.update(node.outputs)
            continue
        if any(v in failed for v in node.inputs):  # its input could not be lowered: nothing to say about it
            failed.update(node.outputs)
            continue
        try:
            fn(ctx, node)
        except KpucError as e:
            msg = str(e).removeprefix(f"{node.name}: ").removeprefix(f"{node.name} ({node.op}): ")
            problems.append(f"{node.op} '{node.name}' ({msg})")
            failed.update(node.outputs)
    if problems:  # every op that stops v4, not just the first (kpuc check lists them all)
        raise KpucError(f"kmodel v4 cannot express {len(problems)} op(s): " + "; ".join(problems))
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


from targets.k210 import lower_v4_math, lower_v4_quant, lower_v4_schedule, lower_v4_shape  # noqa: E402,F401  (fill LOWER_V4)
