"""Shared builders and checks for the pass tests, handed out by the session fixture `kit`.

(`tests/kernels/conftest.py` is also a module named `conftest`, so test files cannot import this one;
a fixture is the one way to share it. It is session-scoped so hypothesis tests may use it.)

The recipe (STYLE.md, tests): build the smallest graph that triggers the pass, `kit.check_rewrite`
it (the pass returns True, the graph validates, the executor gives the same outputs before and after
on seeded random inputs, and a second run returns False), then assert the pattern is gone; a near
miss goes through `kit.check_untouched` (the pass returns False and the graph prints the same).
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from numpy.testing import assert_allclose

from compiler.executor import run_graph
from compiler.ir import Graph, TensorType, Value

TOL = dict(rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ checks
def clone(graph: Graph) -> Graph:
    """graph.clone(), under the name the tests use."""
    return graph.clone()


def random_feeds(graph: Graph, seed: int = 0) -> list[np.ndarray]:
    """Seeded standard-normal data for each graph input, in order."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(v.shape).astype(v.dtype) for v in graph.inputs]


def assert_same_function(before: Graph, after: Graph, feeds) -> None:
    """Both graphs give the same outputs (in order) on `feeds`."""
    want, got = run_graph(before, *feeds), run_graph(after, *feeds)
    assert len(want) == len(got)
    for w, o in zip(want, got):
        assert w.shape == o.shape and w.dtype == o.dtype
        assert_allclose(o, w, **TOL)


def check_rewrite(pass_fn, graph: Graph, *, seeds=(0, 1), **kw) -> Graph:
    """Run `pass_fn` on `graph` (in place): it must change it, keep its function and settle."""
    graph.validate()
    before = clone(graph)
    assert pass_fn(graph, **kw) is True, f"{pass_fn.__name__} did not fire"
    graph.validate()
    for seed in seeds:
        assert_same_function(before, graph, random_feeds(graph, seed))
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
         **attrs) -> Value:
    """conv2d of x with seeded weights (scaled so outputs stay near unit size) and bias."""
    in_c = x.shape[1]
    w = const(g, (out_c, in_c // groups, k, k), seed, scale=1 / np.sqrt(in_c // groups * k * k), name=f"{name}.w")
    b = const(g, (out_c,), seed + 1, name=f"{name}.b")
    return g.add("conv2d", [x, w, b], name=name, groups=groups, **attrs).output


def bn_params(g: Graph, c: int, seed: int = 10, *, run_time: dict[str, Value] | None = None) -> list[Value]:
    """batch_norm's scale, bias, mean, var for c channels as constants, except those given in `run_time`."""
    rng = np.random.default_rng(seed)
    scale, bias, mean = (rng.standard_normal(c).astype(np.float32) for _ in range(3))
    arrays = dict(scale=scale, bias=bias, mean=mean, var=rng.uniform(0.5, 2.0, c).astype(np.float32))
    run_time = run_time or {}
    return [run_time[k] if k in run_time else g.const(a, name=k) for k, a in arrays.items()]


def op(g: Graph, op_name: str, *inputs: Value, name: str | None = None, **attrs) -> Value:
    """Add one node and return its output."""
    return g.add(op_name, list(inputs), name=name, **attrs).output


def finish(g: Graph, *outputs: Value) -> Graph:
    g.outputs = list(outputs)
    g.validate()
    return g


@pytest.fixture(scope="session")
def kit() -> SimpleNamespace:
    return SimpleNamespace(clone=clone, random_feeds=random_feeds, assert_same_function=assert_same_function,
                           check_rewrite=check_rewrite, check_untouched=check_untouched, ops=ops,
                           graph_with_inputs=graph_with_inputs, const=const, conv=conv, bn_params=bn_params,
                           op=op, finish=finish)
