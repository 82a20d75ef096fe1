"""conv2d_to_kpu_conv2d: a KPU-shaped conv2d, its activations and a fitting pool become one kpu_conv2d."""
from hypothesis import given, settings, strategies as st

from targets.k210.passes.conv2d_to_kpu_conv2d import conv2d_to_kpu_conv2d


@settings(max_examples=25, deadline=None)
@given(c=st.integers(1, 5), out_c=st.integers(1, 5), depthwise=st.booleans(), k=st.sampled_from([1, 3]),
       h=st.integers(4, 17), w=st.integers(4, 17), acts=st.lists(st.integers(0, 6), max_size=2),
       fused=st.booleans(), pool=st.one_of(st.none(), st.integers(0, 5)))
def test_random_kpu_shaped_convs_become_one_kpu_conv2d(kpu, c, out_c, depthwise, k, h, w, acts, fused, pool):
    g, (x,) = kpu.graph_with_inputs((1, c, h, w))
    p = k // 2
    extra = dict(fused_clamp=(-1.0, 3.0)) if fused else {}
    y = kpu.conv(g, x, c if depthwise else out_c, k, groups=c if depthwise else 1, padding=((p, p), (p, p)), **extra)
    y = kpu.activate(g, y, acts)
    if pool is not None:
        y = kpu.op(g, "reduce_window2d", y, **kpu.POOLS[pool][0])
    g = kpu.check_rewrite(conv2d_to_kpu_conv2d, kpu.finish(g, y))
    (layer,) = g.nodes_of("kpu_conv2d")
    assert "conv2d" not in kpu.ops(g)
    assert len(layer.attrs["activation"]) == len(acts) + fused
    stride = kpu.POOLS[pool][2] if pool is not None else 1
    if pool is not None and not (c > 1 and depthwise) and min(h, w) // stride >= 4:
        assert kpu.ops(g) == ["kpu_conv2d"] and layer.attrs["pool"] == kpu.POOLS[pool][1]
    else:
        assert layer.attrs["pool"] == "bypass"


def test_relu6_conv_and_max_pool_fuse(kpu):
    g, (x,) = kpu.graph_with_inputs((1, 3, 16, 16))
    y = kpu.op(g, "clamp", kpu.conv(g, x, 8, padding=((1, 1), (1, 1))), min=0.0, max=6.0)
    y = kpu.op(g, "reduce_window2d", y, op="max", kernel=(2, 2), strides=(2, 2))
    g = kpu.check_rewrite(conv2d_to_kpu_conv2d, kpu.finish(g, y))
    (layer,) = g.nodes_of("kpu_conv2d")
    assert kpu.ops(g) == ["kpu_conv2d"]
    assert layer.name == "conv_kpu"
    assert layer.attrs == dict(depthwise=False, pool="max_2_s2", activation=(("clamp", 0.0, 6.0),))


def test_an_activation_with_a_second_user_stays_outside(kpu):
    g, (x,) = kpu.graph_with_inputs((1, 3, 8, 8))
    y = kpu.conv(g, x, 4, padding=((1, 1), (1, 1)))
    relu = kpu.op(g, "clamp", y, min=0.0)
    g = kpu.check_rewrite(conv2d_to_kpu_conv2d, kpu.finish(g, relu, y))
    assert kpu.ops(g) == ["kpu_conv2d", "clamp"]
    assert g.nodes_of("kpu_conv2d")[0].attrs["activation"] == ()


def test_prelu_and_pools_on_depthwise_layers_stay_on_the_cpu(kpu):
    g, (x,) = kpu.graph_with_inputs((1, 4, 8, 8))
    y = kpu.conv(g, x, 4, groups=4, padding=((1, 1), (1, 1)))
    y = kpu.op(g, "prelu", y, kpu.const(g, (4, 1, 1), 3))
    g = kpu.check_rewrite(conv2d_to_kpu_conv2d, kpu.finish(g, kpu.op(g, "reduce_window2d", y, op="max",
                                                                      kernel=(2, 2), strides=(2, 2))))
    assert kpu.ops(g) == ["kpu_conv2d", "prelu", "reduce_window2d"]


def test_convs_other_passes_must_reshape_first_are_left_alone(kpu):
    for attrs in (dict(strides=(2, 2), padding=((1, 1), (1, 1))), dict(padding=((0, 1), (0, 1))),
                  dict(dilations=(2, 2), padding=((2, 2), (2, 2)))):
        g, (x,) = kpu.graph_with_inputs((1, 3, 8, 8))
        g = kpu.finish(g, kpu.conv(g, x, 4, **attrs))
        kpu.check_untouched(conv2d_to_kpu_conv2d, g)
        assert "why_not_kpu" not in g.nodes_of("conv2d")[0].meta


def test_a_conv_the_kpu_cannot_run_gets_a_reason(kpu):
    g, (x,) = kpu.graph_with_inputs((1, 3, 8, 8))
    g = kpu.finish(g, kpu.conv(g, x, 4, 5, padding=((2, 2), (2, 2))))
    kpu.check_untouched(conv2d_to_kpu_conv2d, g)
    assert "5x5" in g.nodes_of("conv2d")[0].meta["why_not_kpu"]
