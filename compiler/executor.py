"""The float reference executor: runs an IR graph with the numpy kernels of `compiler.kernels`.

Like torch.fx's Interpreter: `run` walks the nodes in order keeping a Value -> array environment and
`run_node` dispatches to `KERNELS[node.op]`; subclass and override `run_node` to observe or change
execution (calibration, quantized execution). Values are freed after their last use unless every
intermediate is asked for (`keep_all=True`, for layer-by-layer comparison).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

import compiler.kernels.all  # noqa: F401  (fills KERNELS)
from compiler.errors import KpucError
from compiler.ir import Graph, Node, Value
from compiler.kernels import KERNELS


class Executor:
    def __init__(self, graph: Graph, kernels: Mapping = KERNELS):
        self.graph, self.kernels = graph, kernels
        # Last node index that reads each value, so it can be dropped right after.
        self._last_use: dict[Value, int] = {}
        for i, n in enumerate(graph.nodes):
            for v in n.inputs:
                self._last_use[v] = i

    def run(self, feeds: Mapping[str, np.ndarray] | Sequence[np.ndarray], *,
            keep_all: bool = False) -> dict[str, np.ndarray]:
        """Run the graph; returns graph outputs by value name (every value when `keep_all`)."""
        g = self.graph
        if not isinstance(feeds, Mapping):
            feeds = {v.name: a for v, a in zip(g.inputs, feeds, strict=True)}
        env: dict[Value, np.ndarray] = {}
        for v in g.inputs:
            if v.name not in feeds:
                raise KpucError(f"no data for graph input '{v.name}'")
            arr = np.asarray(feeds[v.name])
            if arr.shape != v.shape:
                if arr.size != v.type.size:
                    raise KpucError(f"input '{v.name}' expects shape {v.shape}, got {arr.shape}")
                arr = arr.reshape(v.shape)
            env[v] = arr.astype(v.dtype, copy=False)
        keep = set(g.outputs)
        for i, node in enumerate(g.nodes):
            if node.op == "input":
                continue
            results = self.run_node(node, [env[v] for v in node.inputs])
            for v, r in zip(node.outputs, results, strict=True):
                env[v] = r
            if not keep_all:
                for v in dict.fromkeys(node.inputs):  # add(x, x) reads x twice but frees it once
                    if self._last_use.get(v) == i and v not in keep:
                        del env[v]
        if keep_all:
            return {v.name: a for v, a in env.items()}
        return {v.name: env[v] for v in g.outputs}

    def run_node(self, node: Node, args: list[np.ndarray]) -> tuple[np.ndarray, ...]:
        """Compute one node's outputs from its input arrays."""
        if node.op == "constant":
            return (node.output.data,)
        fn = self.kernels.get(node.op)
        if fn is None:
            raise KpucError(f"{node.name}: no kernel for op '{node.op}'")
        try:
            out = fn(*args, **node.attrs)
        except KpucError:
            raise
        except Exception as e:
            raise KpucError(f"{node.name} ({node.op}) failed: {type(e).__name__}: {e}") from e
        out = out if isinstance(out, tuple) else (out,)
        return tuple(np.asarray(o, dtype=v.dtype) if np.asarray(o).dtype != v.dtype else np.asarray(o)
                     for o, v in zip(out, node.outputs))


def run_graph(graph: Graph, *inputs: np.ndarray) -> list[np.ndarray]:
    """Convenience: run with positional inputs, return outputs in graph order."""
    out = Executor(graph).run(list(inputs))
    return [out[v.name] for v in graph.outputs]
