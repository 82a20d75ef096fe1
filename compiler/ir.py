"""The kpuc graph IR: Values flow between Nodes; a Graph keeps the nodes in topological order.

- A `Value` is one tensor: a static `TensorType` (shape, dtype; 4-D activations are NCHW), optional
  constant `data` and optional `QuantParam`. It knows its producer and its users (node, slot).
- A `Node` is one op: ordered input Values, one or more output Values, hashable `attrs` and a free
  `meta` dict for analysis results (calibration ranges, why-not-KPU, source op). Assigning
  `node.inputs` re-links the users of old and new inputs, so use-def information is never stale.
- Graph inputs are `input` nodes, constants are `constant` nodes (the array lives on the Value), so
  folding, quantization and dead-code elimination treat weights like any other value.
- `Graph.add` infers output types from the op table in `compiler.ops` and fills in the attributes'
  defaults there, so nobody sets shapes by hand and nobody re-reads a default (`attrs["strides"]`).

networkx is used for whole-graph algorithms only (`Graph.nx()` is a MultiDiGraph keyed by operand
slot, so `add(x, x)` keeps both edges); it is never the store of edges.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from compiler.errors import KpucError
from compiler.ops import OPS, infer_types
from compiler.types import TensorType

if TYPE_CHECKING:
    import networkx as nx


@dataclass(frozen=True)
class QuantParam:
    """real = (q - zero_point) * scale; per-channel along `axis` when scale is a tuple."""
    scale: float | tuple[float, ...]
    zero_point: int | tuple[int, ...]
    axis: int | None = None


class Value:
    """One tensor in the graph: produced by exactly one node output slot."""

    def __init__(self, name: str, type: TensorType, producer: Node | None = None, index: int = 0,
                 data: np.ndarray | None = None, quant: QuantParam | None = None):
        self.name, self.type, self.producer, self.index = name, type, producer, index
        self.data, self.quant = data, quant
        self.users: list[tuple[Node, int]] = []

    shape = property(lambda self: self.type.shape)
    dtype = property(lambda self: self.type.dtype)
    is_constant = property(lambda self: self.data is not None)

    def user_nodes(self) -> list[Node]:
        """Distinct consuming nodes in first-use order."""
        return list(dict.fromkeys(n for n, _ in self.users))

    def __repr__(self):
        return f"%{self.name}: {self.type}"


class Node:
    """One op. `inputs` is a re-linking property; `outputs` are created by the graph."""

    def __init__(self, name: str, op: str, attrs: dict[str, Any]):
        self.name, self.op, self.attrs = name, op, attrs
        self._inputs: tuple[Value, ...] = ()
        self.outputs: tuple[Value, ...] = ()
        self.meta: dict[str, Any] = {}

    @property
    def inputs(self) -> tuple[Value, ...]:
        return self._inputs

    @inputs.setter
    def inputs(self, values: Iterable[Value]):
        for slot, v in enumerate(self._inputs):
            v.users.remove((self, slot))
        self._inputs = tuple(values)
        for slot, v in enumerate(self._inputs):
            v.users.append((self, slot))

    @property
    def output(self) -> Value:
        assert len(self.outputs) == 1, f"{self.name} ({self.op}) has {len(self.outputs)} outputs"
        return self.outputs[0]

    def users(self) -> list[Node]:
        return list(dict.fromkeys(n for v in self.outputs for n, _ in v.users))

    def __repr__(self):
        return f"<Node {self.name}: {self.op}>"

    def __str__(self):
        outs = ", ".join(repr(v) for v in self.outputs)
        args = ", ".join(f"%{v.name}" for v in self.inputs)
        attrs = " {" + ", ".join(f"{k}={_fmt(a)}" for k, a in self.attrs.items()) + "}" if self.attrs else ""
        return f"{outs} = {self.op}({args}){attrs}"


def _fmt(a):
    return str(a).replace(" ", "")


@dataclass
class Graph:
    nodes: list[Node] = field(default_factory=list)
    inputs: list[Value] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)
    _names: set[str] = field(default_factory=set, repr=False)
    _insert_before: Node | None = field(default=None, repr=False)

    # ------------------------------------------------------------ building
    def unique_name(self, base: str) -> str:
        """`base`, or `base_1`, `base_2`… if taken (torch.fx's namespace)."""
        base = base or "v"
        name, k = base, 0
        while name in self._names:
            k += 1
            name = f"{base}_{k}"
        self._names.add(name)
        return name

    def add(self, op: str, inputs: Iterable[Value] = (), /, *, name: str | None = None,
            before: Node | None = None, **attrs) -> Node:
        """Append (or insert before `before`) a node; its output types come from the op table, and the
        attributes not given take the op's defaults (unknown or missing required ones are an error)."""
        inputs = tuple(inputs)
        node = Node(self.unique_name(name or op), op, attrs)
        try:
            if op not in OPS:
                raise KpucError(f"unknown IR op '{op}'")
            node.attrs = attrs = OPS[op].complete(attrs)
            types = infer_types(op, [v.type for v in inputs], attrs, [v.data for v in inputs])
        except KpucError as e:
            raise KpucError(f"{node.name}: {e}") from e
        node.outputs = tuple(Value(node.name if len(types) == 1 else f"{node.name}:{i}", t, node, i)
                             for i, t in enumerate(types))
        node.inputs = inputs
        self._insert(node, before)
        return node

    def input(self, name: str, type: TensorType, quant: QuantParam | None = None) -> Value:
        """Declare a graph input."""
        node = Node(self.unique_name(name), "input", {})
        node.outputs = (Value(node.name, type, node, 0, quant=quant),)
        self._insert(node, None)
        self.inputs.append(node.output)
        return node.output

    def const(self, data, *, name: str | None = None, dtype=None, quant: QuantParam | None = None,
              before: Node | None = None) -> Value:
        """A constant node holding `data` (made read-only so no pass edits a shared weight in place)."""
        arr = np.array(data, dtype=dtype)
        arr.flags.writeable = False
        node = Node(self.unique_name(name or "const"), "constant", {})
        node.outputs = (Value(node.name, TensorType(arr.shape, arr.dtype), node, 0, data=arr, quant=quant),)
        self._insert(node, before)
        return node.output

    @contextmanager
    def inserting_before(self, node: Node) -> Iterator[None]:
        """New nodes go before `node` while the context is open."""
        old, self._insert_before = self._insert_before, node
        try:
            yield
        finally:
            self._insert_before = old

    def _insert(self, node: Node, before: Node | None):
        before = before or self._insert_before
        if before is None:
            self.nodes.append(node)
        else:
            self.nodes.insert(self.nodes.index(before), node)

    def clone(self) -> Graph:
        """An independent copy: same names, attrs, quantization and meta; constant arrays shared (read-only)."""
        g, values = Graph(), {}
        for n in self.nodes:
            if n.op == "input":
                values[n.output] = g.input(n.name, n.output.type, quant=n.output.quant)
            elif n.op == "constant":
                values[n.output] = g.const(n.output.data, name=n.name, quant=n.output.quant)
            else:
                copy = g.add(n.op, [values[v] for v in n.inputs], name=n.name, **n.attrs)
                for old, new in zip(n.outputs, copy.outputs):
                    new.quant, values[old] = old.quant, new
            values[n.outputs[0]].producer.meta.update(n.meta)
        g.inputs = [values[v] for v in self.inputs]
        g.outputs = [values[v] for v in self.outputs]
        return g

    # ------------------------------------------------------------ editing
    def replace_all_uses(self, old: Value, new: Value) -> None:
        """Point every consumer of `old` (and the graph outputs) at `new`.

        The producer of `new` keeps reading `old`, so `new = f(old)` can be spliced in after `old`.
        """
        for user in old.user_nodes():
            if user is new.producer:
                continue
            user.inputs = [new if v is old else v for v in user.inputs]
        self.outputs = [new if v is old else v for v in self.outputs]

    def erase(self, node: Node) -> None:
        """Remove a node nobody uses."""
        if node.users() or any(v in self.outputs for v in node.outputs):
            raise KpucError(f"cannot erase {node.name} ({node.op}): its outputs are still used")
        node.inputs = ()
        self.nodes.remove(node)
        if node.op == "input":
            self.inputs = [v for v in self.inputs if v.producer is not node]

    def eliminate_dead_code(self) -> bool:
        """Drop nodes that no graph output reaches (graph inputs stay). Returns whether any went."""
        live: set[int] = set()
        stack = [v.producer for v in self.outputs]
        while stack:
            n = stack.pop()
            if id(n) not in live:
                live.add(id(n))
                stack.extend(v.producer for v in n.inputs)
        dead = [n for n in reversed(self.nodes) if id(n) not in live and n.op != "input"]
        for n in dead:
            n.inputs = ()
            self.nodes.remove(n)
        return bool(dead)

    # ------------------------------------------------------------ queries
    def nodes_of(self, *ops: str) -> list[Node]:
        """Snapshot list of the nodes with one of `ops`, in graph order (safe to mutate while looping)."""
        return [n for n in self.nodes if n.op in ops]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def nx(self) -> nx.MultiDiGraph:
        """The data-flow graph for algorithms: nodes by name, one edge per operand slot."""
        import networkx as nx  # here, not at the top: `kpuc infer` on a kmodel never needs it (start-up time)

        g = nx.MultiDiGraph()
        g.add_nodes_from(n.name for n in self.nodes)
        for n in self.nodes:
            for slot, v in enumerate(n.inputs):
                g.add_edge(v.producer.name, n.name, key=slot, value=v.name)
        return g

    def toposort(self) -> None:
        """Reorder `nodes` topologically, stable with respect to the current order."""
        import networkx as nx

        order = {n.name: i for i, n in enumerate(self.nodes)}
        by_name = {n.name: n for n in self.nodes}
        names = nx.lexicographical_topological_sort(self.nx(), key=order.__getitem__)
        self.nodes = [by_name[k] for k in names]

    def validate(self) -> None:
        """Check ownership, names, topological order, cycles, dangling values, attributes and shapes."""
        problems = []
        seen: set[int] = set()
        names: set[str] = set()
        for n in self.nodes:
            if n.name in names:
                problems.append(f"duplicate node name {n.name}")
            names.add(n.name)
            for slot, v in enumerate(n.inputs):
                if v.producer is None or id(v.producer) not in seen:
                    problems.append(f"{n.name} ({n.op}) input {slot} %{v.name} is dangling or defined later")
                if (n, slot) not in v.users:
                    problems.append(f"{n.name} input {slot} %{v.name} does not list it as a user")
            for v in n.outputs:
                for user, slot in v.users:
                    if slot >= len(user.inputs) or user.inputs[slot] is not v:
                        problems.append(f"%{v.name} lists a stale user {user.name}")
            if n.op not in ("input", "constant"):
                try:
                    if n.op in OPS and set(OPS[n.op].complete(n.attrs)) != set(n.attrs):
                        problems.append(f"{n.name} ({n.op}) lacks attributes "
                                        f"{sorted(set(OPS[n.op].attrs) - set(n.attrs))}")
                    want = infer_types(n.op, [v.type for v in n.inputs], n.attrs, [v.data for v in n.inputs])
                    got = [v.type for v in n.outputs]
                    if list(want) != got:
                        problems.append(f"{n.name} ({n.op}) has types {got}, its inputs give {list(want)}")
                except KpucError as e:
                    problems.append(f"{n.name} ({n.op}): {e}")
            seen.add(id(n))
        for v in self.inputs + self.outputs:
            if v.producer is None or id(v.producer) not in seen:
                problems.append(f"graph input/output %{v.name} is not produced by a node of this graph")
        if any("defined later" in p for p in problems):   # nodes in order rule out cycles: look only now
            import networkx as nx
            if not nx.is_directed_acyclic_graph(self.nx()):
                problems.insert(0, "the graph has a cycle: " + str(nx.find_cycle(self.nx())))
        if problems:
            raise KpucError("invalid graph: " + "; ".join(problems[:10])
                            + (f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""))

    lint = validate

    def __str__(self):
        head = "graph(" + ", ".join(repr(v) for v in self.inputs) + "):"
        body = [f"  {n}" for n in self.nodes if n.op != "input"]
        tail = "  return " + ", ".join(f"%{v.name}" for v in self.outputs)
        return "\n".join([head, *body, tail])

    def to_dot(self) -> str:
        """Graphviz text for `--dump-ir`."""
        def q(s):
            return '"' + str(s).replace('"', r'\"') + '"'
        lines = ["digraph kpuc {", "  rankdir=TB; node [shape=box, fontname=monospace];"]
        for n in self.nodes:
            label = f"{n.name}\\n{n.op}"
            if n.op == "constant":
                label += f"\\n{n.output.type}"
            lines.append(f"  {q(n.name)} [label={q(label)}{', style=dashed' if n.op == 'constant' else ''}];")
        for n in self.nodes:
            for v in n.inputs:
                lines.append(f"  {q(v.producer.name)} -> {q(n.name)} [label={q(str(v.type))}];")
        for i, v in enumerate(self.outputs):
            lines.append(f"  {q('output' + str(i))} [shape=oval];  {q(v.producer.name)} -> {q('output' + str(i))};")
        lines.append("}")
        return "\n".join(lines) + "\n"
