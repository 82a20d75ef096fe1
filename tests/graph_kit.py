"""Builders and checks shared by the pass tests (tests/passes, tests/targets/passes).

The recipe (STYLE.md, tests): build the smallest graph that triggers the pass, `check_rewrite` it (the
pass returns True, the graph validates, the executor gives the same outputs before and after on seeded
random inputs, and a second run returns False), then assert the pattern is gone; a near miss goes
through `check_untouched` (the pass returns False and the graph prints the same).
Each conftest hands these out through a session fixture, with its own output comparison `close`.
"""
from __future__ import annotations

import numpy as np
from numpy.testing import assert_allclose

from compiler.executor import run_graph
from compiler.ir import Graph, TensorType, Value


def assert_close_abs(got: np.ndarray, want: np.ndarray) -> None:
    """Same shape and dtype, equal to rtol 1e-5 / atol 1e-5."""
    assert got.shape == want.shape and got.dtype == want.dtype
    assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ checks
def clone(graph: Graph) -> Graph:
    """graph.clone(), under the name the tests use."""
    return graph.clone()


def random_feeds(graph: Graph, seed: int = 0) -> list[np.ndarray]:
    """Seeded standard-normal data for each graph input, in order."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(v.shape).astype(v.dtype) for v in graph.inputs]


def assert_same_function(before: Graph, after: Graph, feeds, close=assert_close_abs) -> None:
    """Both graphs give the same outputs (in order) on `feeds`, as judged by `close(got, want)`."""
    want, got = run_graph(before, *feeds), run_graph(after, *feeds)
    assert len(want) == len(got)
    for w, o in zip(want, got):
        close(o, w)


def check_rewrite(pass_fn, graph: Graph, *, seeds=(0, 1), close=assert_close_abs, **kw) -> Graph:
    """Run `pass_fn` on `graph` (in place): it must change it, keep its function and settle."""
    graph.validate()
    before = clone(graph)
    assert pass_fn(graph, **kw) is True, f"{pass_fn.__name__} did not fire on\n{graph}"
    graph.validate()
    for seed in seeds:
        assert_same_function(before, graph, random_feeds(graph, seed), close)
    assert pass_fn(graph, **kw) is False, f"{pass_fn.__name__} fired again on its own result:\n{graph}"
    return graph


def check_untouched(pass_fn, graph: Graph, **kw) -> None:
    """`pass_fn` leaves `graph` exactly as it is and says so."""
    graph.validate()
    text = str(graph)
    assert pass_fn(graph, **kw) is False
    assert str(graph) == text


def ops(graph: Graph) -> list[str]:
    """The ops of the graph's computing nodes, in order (inputs and constants left out)."""
    return [n.op for n in graph.nodes if n.op not in ("input", "constant")]


# ------------------------------------------------------------------ builders
def graph_with_inputs(*shapes) -> tuple[Graph, list[Value]]:
    """A new graph with one float32 input per shape (x0, x1, ...)."""
    g = Graph()
    return g, [g.input(f"x{i}", TensorType(s)) for i, s in enumerate(shapes)]


def const(g: Graph, shape, seed: int = 0, *, scale: float = 1.0, name: str | None = None) -> Value:
    """A seeded standard-normal float32 constant."""
    return g.const((np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32), name=name)


def conv(g: Graph, x: Value, out_c: int, k: int = 3, *, groups: int = 1, seed: int = 0, name: str = "conv",
         op: str = "conv2d", **attrs) -> Value:
    """conv2d (or `op`) of x with seeded weights (scaled so outputs stay near unit size) and bias."""
    in_c = x.shape[1]
    w = const(g, (out_c, in_c // groups, k, k), seed, scale=1 / np.sqrt(in_c // groups * k * k), name=f"{name}.w")
    b = const(g, (out_c,), seed + 1, name=f"{name}.b")
    return g.add(op, [x, w, b], name=name, groups=groups, **attrs).output


def op(g: Graph, op_name: str, *inputs: Value, name: str | None = None, **attrs) -> Value:
    """Add one node and return its output."""
    return g.add(op_name, list(inputs), name=name, **attrs).output


def finish(g: Graph, *outputs: Value) -> Graph:
    """Set the graph's outputs and validate it."""
    g.outputs = list(outputs)
    g.validate()
    return g
