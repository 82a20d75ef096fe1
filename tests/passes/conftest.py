"""The generic pass tests' kit (tests/graph_kit.py plus bn_params), handed out by the session fixture `kit`.

(Several test folders have a `conftest` module, so test files cannot import one; a session fixture
shares the kit, and session scope lets hypothesis tests use it.)
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from compiler.ir import Graph, Value
from graph_kit import (
    assert_same_function,
    check_rewrite,
    check_untouched,
    clone,
    const,
    conv,
    finish,
    graph_with_inputs,
    op,
    ops,
    random_feeds,
)


def bn_params(g: Graph, c: int, seed: int = 10, *, run_time: dict[str, Value] | None = None) -> list[Value]:
    """batch_norm's scale, bias, mean, var for c channels as constants, except those given in `run_time`."""
    rng = np.random.default_rng(seed)
    scale, bias, mean = (rng.standard_normal(c).astype(np.float32) for _ in range(3))
    arrays = dict(scale=scale, bias=bias, mean=mean, var=rng.uniform(0.5, 2.0, c).astype(np.float32))
    run_time = run_time or {}
    return [run_time[k] if k in run_time else g.const(a, name=k) for k, a in arrays.items()]


@pytest.fixture(scope="session")
def kit() -> SimpleNamespace:
    return SimpleNamespace(clone=clone, random_feeds=random_feeds, assert_same_function=assert_same_function,
                           check_rewrite=check_rewrite, check_untouched=check_untouched, ops=ops,
                           graph_with_inputs=graph_with_inputs, const=const, conv=conv, bn_params=bn_params,
                           op=op, finish=finish)
