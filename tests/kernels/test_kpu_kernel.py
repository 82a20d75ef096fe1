"""The float kpu_conv2d kernel: conv + activation steps against conv2d and friends, pools against the
KPU layer simulator (targets/k210/kpu.py; test_kmodel_v3/v4 check it on nncase's golden outputs) on u8 maps."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from numpy.testing import assert_allclose, assert_array_equal

import compiler.kernels.all  # noqa: F401
from compiler.ir import TensorType
from compiler.kernels import KERNELS
from compiler.ops import infer_types
from targets.k210.kpu import POOL_TYPES, pool as kpu_pool_u8
from targets.k210.ops import KPU_POOLS, kpu_pool

POOL_NUMBER = {name: number for number, (name, _, _) in POOL_TYPES.items()}


@settings(max_examples=25, deadline=None)
@given(c=st.integers(1, 6), h=st.integers(4, 13), w=st.integers(4, 13), pool=st.sampled_from(sorted(KPU_POOLS)),
       seed=st.integers(0, 2**16))
def test_float_pools_match_the_kpu_simulator_on_u8_maps(c, h, w, pool, seed):
    y = np.random.default_rng(seed).integers(0, 256, (c, h, w), dtype=np.uint8)
    want = kpu_pool_u8(y, POOL_NUMBER[pool])
    got = kpu_pool(y.astype(np.float32)[None], pool)[0]
    # the KPU truncates a mean to an integer, the float layer keeps the fraction
    assert_array_equal(np.floor(got) if pool.startswith("mean") else got, want)


@settings(max_examples=25, deadline=None)
@given(c=st.integers(1, 5), o=st.integers(1, 5), depthwise=st.booleans(), k=st.sampled_from([1, 3]),
       h=st.integers(4, 10), w=st.integers(4, 10), seed=st.integers(0, 2**16))
def test_conv_and_activation_steps_equal_the_separate_ops(c, o, depthwise, k, h, w, seed):
    rng = np.random.default_rng(seed)
    o = c if depthwise else o
    x = rng.standard_normal((2, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((o, 1 if depthwise else c, k, k)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    steps = (("clamp", -1.0, 2.0), ("leaky_relu", 0.1), ("unary", "tanh"), ("hard_sigmoid", 0.2, 0.5))
    got = KERNELS["kpu_conv2d"](x, wt, b, depthwise=depthwise, activation=steps)
    p = k // 2
    want = KERNELS["conv2d"](x, wt, b, padding=((p, p), (p, p)), groups=c if depthwise else 1)
    want = KERNELS["hard_sigmoid"](KERNELS["unary"](KERNELS["leaky_relu"](KERNELS["clamp"](want, min=-1.0, max=2.0),
                                                                         alpha=0.1), op="tanh"), alpha=0.2, beta=0.5)
    assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_tf_same_max_2_s1_is_max_over_the_taps_inside():
    y = -np.arange(1.0, 10.0, dtype=np.float32).reshape(1, 1, 3, 3)   # all negative: an outside 0 would win
    assert_array_equal(kpu_pool(y, "max_2_s1")[0, 0], [[-1, -2, -3], [-4, -5, -6], [-7, -8, -9]])
    assert_array_equal(kpu_pool(y, "mean_2_s1")[0, 0, 2], [-7.5, -8.5, -9])   # edge replicated, /4


@pytest.mark.parametrize("pool, shape", [("bypass", (1, 4, 7, 9)), ("max_2_s2", (1, 4, 3, 4)),
                                         ("left_top_4_s4", (1, 4, 1, 2)), ("mean_2_s1", (1, 4, 7, 9))])
def test_shape_rule(pool, shape):
    types = [TensorType((1, 3, 7, 9)), TensorType((4, 3, 3, 3)), TensorType((4,))]
    assert infer_types("kpu_conv2d", types, dict(pool=pool))[0].shape == shape


def test_shape_rule_rejects_what_no_kpu_layer_is():
    from compiler.errors import KpucError
    x, b = TensorType((1, 3, 8, 8)), TensorType((4,))
    for w, attrs in ((TensorType((4, 3, 5, 5)), {}), (TensorType((4, 1, 3, 3)), dict(depthwise=True)),
                     (TensorType((4, 3, 3, 3)), dict(pool="max_3_s3")),
                     (TensorType((4, 3, 3, 3)), dict(activation=(("prelu", 0.1),)))):
        with pytest.raises(KpucError):
            infer_types("kpu_conv2d", [x, w, b], attrs)
