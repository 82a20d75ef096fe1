"""matmul_to_kpu_conv2d: (M,K) @ constant (K,N) [+ bias] [+ activations] becomes a 1x1 kpu_conv2d on 4x4."""
import numpy as np
from hypothesis import given, settings, strategies as st

from targets.k210.passes.matmul_to_kpu_conv2d import matmul_to_kpu_conv2d


@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 3), k=st.integers(1, 40), n=st.integers(1, 40),
       bias=st.sampled_from([None, "row", "vec", "scalar"]),
       clamp_on=st.sampled_from([None, "matmul", "add"]), acts=st.lists(st.integers(0, 6), max_size=2),
       swap=st.booleans())
def test_random_fully_connected_layers_become_a_1x1_kpu_conv(kpu, m, k, n, bias, clamp_on, acts, swap):
    g, (a,) = kpu.graph_with_inputs((m, k))
    b = kpu.const(g, (k, n), 1, scale=1 / np.sqrt(k))
    y = kpu.op(g, "matmul", a, b, **(dict(fused_clamp=(-0.5, 1.0)) if clamp_on == "matmul" else {}))
    if bias is not None:
        v = kpu.const(g, {"row": (1, n), "vec": (n,), "scalar": ()}[bias], 2)
        extra = dict(fused_clamp=(-0.5, 1.0)) if clamp_on == "add" else {}
        y = kpu.op(g, "binary", *((v, y) if swap else (y, v)), op="add", **extra)
    g = kpu.check_rewrite(matmul_to_kpu_conv2d, kpu.finish(g, kpu.activate(g, y, acts)))
    absorbed = bias is not None and clamp_on != "matmul"   # a clamp before the add keeps the add outside
    assert "matmul" not in kpu.ops(g)
    assert ("binary" in kpu.ops(g)) == (bias is not None and not absorbed)
    (layer,) = g.nodes_of("kpu_conv2d")
    assert layer.inputs[0].shape == (m, k, 4, 4) and layer.inputs[1].shape == (n, k, 1, 1)


def test_digits_fc_layer(kpu):
    g, (a,) = kpu.graph_with_inputs((1, 16))
    y = kpu.op(g, "matmul", a, kpu.const(g, (16, 10), 1))
    y = kpu.op(g, "binary", y, kpu.const(g, (10,), 2), op="add", name="logits")
    g = kpu.check_rewrite(matmul_to_kpu_conv2d, kpu.finish(g, y))
    assert kpu.ops(g) == ["reshape", "pad", "kpu_conv2d", "strided_slice", "reshape"]


def test_run_time_weights_other_ranks_and_oversized_layers_stay_on_the_cpu(kpu):
    g, (a, b) = kpu.graph_with_inputs((2, 8), (8, 4))
    kpu.check_untouched(matmul_to_kpu_conv2d, kpu.finish(g, kpu.op(g, "matmul", a, b)))
    assert "constant" in g.nodes_of("matmul")[0].meta["why_not_kpu"]
    g, (a,) = kpu.graph_with_inputs((2, 3, 8))
    kpu.check_untouched(matmul_to_kpu_conv2d, kpu.finish(g, kpu.op(g, "matmul", a, kpu.const(g, (8, 4)))))
    assert "rank 3" in g.nodes_of("matmul")[0].meta["why_not_kpu"]
    g, (a,) = kpu.graph_with_inputs((1, 1025))
    kpu.check_untouched(matmul_to_kpu_conv2d, kpu.finish(g, kpu.op(g, "matmul", a, kpu.const(g, (1025, 2)))))
    assert "1025 input channels" in g.nodes_of("matmul")[0].meta["why_not_kpu"]


def test_a_bias_add_whose_matmul_is_also_returned_stays_outside(kpu):
    g, (a,) = kpu.graph_with_inputs((1, 6))
    y = kpu.op(g, "matmul", a, kpu.const(g, (6, 5), 1))
    out = kpu.op(g, "binary", y, kpu.const(g, (5,), 2), op="add")
    g = kpu.check_rewrite(matmul_to_kpu_conv2d, kpu.finish(g, out, y))
    assert "binary" in kpu.ops(g)
