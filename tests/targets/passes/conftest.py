"""Shared builders and checks for the K210 legalization pass tests, handed out by the fixture `kpu`.

(Test files cannot import a module named `conftest` when several exist, so a session fixture shares
them, as in tests/passes/conftest.py; session scope lets hypothesis tests use it.)

`kpu.check_rewrite(pass_fn, graph)`: the pass returns True, the graph validates, the float executor gives
the same outputs before and after on seeded random inputs (rtol 1e-5, atol 1e-5 of the output's largest
magnitude) and a second run returns False. `kpu.check_untouched`: the pass returns False and the graph
prints the same.
"""
from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import numpy as np
import pytest
from numpy.testing import assert_allclose

import graph_kit
from compiler.ir import Graph, Value
from graph_kit import check_untouched, clone, const, conv, finish, graph_with_inputs, op, ops, random_feeds


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    """Equal to 1e-5, relative to each element and to the output's largest magnitude."""
    assert got.shape == want.shape and got.dtype == want.dtype
    assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(float(np.max(np.abs(want), initial=0.0)), 1e-30))


assert_same_function = partial(graph_kit.assert_same_function, close=assert_close)
check_rewrite = partial(graph_kit.check_rewrite, close=assert_close)


def kpu_conv(g: Graph, x: Value, out_c: int, k: int = 3, *, depthwise: bool = False, seed: int = 0,
             name: str = "kpu", **attrs) -> Value:
    """A float kpu_conv2d with seeded weights."""
    in_c = x.shape[1]
    w = const(g, (out_c, 1 if depthwise else in_c, k, k), seed, scale=1 / np.sqrt(in_c * k * k), name=f"{name}.w")
    b = const(g, (out_c,), seed + 1, name=f"{name}.b")
    return g.add("kpu_conv2d", [x, w, b], name=name, depthwise=depthwise, **attrs).output


# Element-wise activations the KPU table absorbs: (op, attrs) pairs for the builders.
ACTIVATIONS = [
    ("clamp", dict(min=0.0, max=6.0)), ("clamp", dict(min=0.0, max=float("inf"))),
    ("leaky_relu", dict(alpha=0.1)), ("unary", dict(op="sigmoid")), ("unary", dict(op="tanh")),
    ("unary", dict(op="hard_swish")), ("hard_sigmoid", dict(alpha=0.2, beta=0.5)),
]


def activate(g: Graph, y: Value, picks) -> Value:
    """Apply ACTIVATIONS[i] for each i in `picks`, in order."""
    for i in picks:
        name, attrs = ACTIVATIONS[i]
        y = op(g, name, y, **attrs)
    return y


# Pools a KPU layer can absorb: (reduce_window2d attrs, KPU pool type, stride).
POOLS = [
    (dict(op="max", kernel=(2, 2), strides=(2, 2)), "max_2_s2", 2),
    (dict(op="mean", kernel=(2, 2), strides=(2, 2)), "mean_2_s2", 2),
    (dict(op="max", kernel=(4, 4), strides=(4, 4)), "max_4_s4", 4),
    (dict(op="mean", kernel=(4, 4), strides=(4, 4)), "mean_4_s4", 4),
    (dict(op="max", kernel=(2, 2), strides=(1, 1), padding=((0, 1), (0, 1))), "max_2_s1", 1),
    (dict(op="mean", kernel=(2, 2), strides=(1, 1), padding=((0, 1), (0, 1))), "mean_2_s1", 1),
]


@pytest.fixture(scope="session")
def kpu() -> SimpleNamespace:
    return SimpleNamespace(clone=clone, random_feeds=random_feeds, assert_close=assert_close,
                           assert_same_function=assert_same_function, check_rewrite=check_rewrite,
                           check_untouched=check_untouched, ops=ops, graph_with_inputs=graph_with_inputs,
                           const=const, conv=conv, kpu_conv=kpu_conv, op=op, finish=finish,
                           ACTIVATIONS=ACTIVATIONS, activate=activate, POOLS=POOLS)
