"""targets/k210/bias_correction.py and weight_rounding.py: bias correction removes the per-channel mean
error of a KPU layer, GPTQ rounding lowers ||(W - W̃)X||², both change only integer field values and are
deterministic."""
from __future__ import annotations

import numpy as np
import pytest

from compiler.calibration import calibrate
from compiler.executor import Executor
from compiler.ir import Graph, TensorType
from compiler.kernels.conv import conv2d
from compiler.quantization import QuantParamU8, quantize_u8
from targets.k210.bias_correction import bn_scale, correct_biases, kpu_bn_output, kpu_finish
from targets.k210.kernels import QuantizedExecutor, kpu_conv2d_q
from targets.k210.quantize import quantize_k210
from targets.k210.weight_rounding import gptq_round, kpu_patches


def biased_graph(c=8, oc=8, hw=8, seed=0) -> Graph:
    """Two 1x1 KPU layers whose weights have one outlier per tensor, so the common 8-bit grid is coarse
    and rounding shifts each channel's mean on an all-positive input."""
    rng = np.random.default_rng(seed)
    g = Graph()
    x = g.input("x", TensorType((1, c, hw, hw)))
    w1 = rng.standard_normal((oc, c, 1, 1)).astype(np.float32) * 0.05
    w1[0, 0] = 3.0
    w2 = rng.standard_normal((oc, oc, 1, 1)).astype(np.float32) * 0.05
    w2[1, 2] = -3.0
    y = g.add("kpu_conv2d", [x, g.const(w1, name="w1"), g.const(np.full(oc, 0.1, np.float32), name="b1")],
              name="l1", activation=()).output
    g.outputs = [g.add("kpu_conv2d", [y, g.const(w2, name="w2"), g.const(np.zeros(oc, np.float32), name="b2")],
                       name="l2", activation=()).output]
    return g


def data(n, seed):
    rng = np.random.default_rng(seed)
    return [rng.uniform(0.0, 1.0, (1, 8, 8, 8)).astype(np.float32) for _ in range(n)]


def channel_mean_error(g: Graph, q: Graph, xs) -> np.ndarray:
    fe, qe = Executor(g), QuantizedExecutor(q)
    err = [qe.run([x])["l2"].astype(np.float64) - fe.run([x])["l2"] for x in xs]
    return np.mean(err, axis=(0, 1, 3, 4))


def test_bias_correction_removes_the_mean_error_and_changes_only_norm_add():
    g = biased_graph()
    calib, held_out = data(8, 1), data(8, 2)
    q = quantize_k210(g, calibrate(g, calib))
    before = {n.name: [v.data.copy() for v in n.inputs[1:]] for n in q.nodes_of("kpu_conv2d_q")}
    err_before = channel_mean_error(g, q, held_out)
    shifts = correct_biases(g, q, calib)
    err_after = channel_mean_error(g, q, held_out)
    step = q.node("l2_q").output.quant.scale
    assert set(shifts) == {"l1", "l2"} and any(np.any(s != 0) for s in shifts.values())
    assert np.abs(err_before).max() > 2 * step                       # the rounding bias is real ...
    assert np.abs(err_after).max() < 0.5 * np.abs(err_before).max()  # ... and mostly gone on unseen data
    assert np.abs(err_after).mean() < 0.5 * np.abs(err_before).mean()
    for n in q.nodes_of("kpu_conv2d_q"):
        w, bn, act = (v.data for v in n.inputs[1:])
        w0, bn0, act0 = before[n.name]
        assert np.array_equal(w, w0) and np.array_equal(act, act0)
        assert np.array_equal(bn[:, :2], bn0[:, :2])                 # norm_mul, norm_shift untouched
        assert bn.dtype == np.int64 and np.abs(bn[:, 2]).max() < 2 ** 31


def test_corrected_layer_mean_matches_the_float_mean_on_the_calibration_data():
    g = biased_graph()
    calib = data(6, 3)
    q = quantize_k210(g, calibrate(g, calib))
    correct_biases(g, q, calib)
    node = q.node("l1_q")
    x_codes = [QuantizedExecutor(q).run([x], keep_all=True)[node.inputs[0].name] for x in calib]
    bn_mean = np.mean([kpu_bn_output(xc, *(v.data for v in node.inputs[1:]), node.attrs) for xc in x_codes],
                      axis=(0, 1, 3, 4))
    f = np.mean([Executor(g).run([x], keep_all=True)["l1"].astype(np.float64) for x in calib], axis=(0, 1, 3, 4))
    s = bn_scale(g.node("l1"), node)
    assert np.abs(bn_mean - f * s).max() <= 0.5 + 1e-9                # within the norm_add rounding


def test_correction_and_rounding_are_deterministic():
    g = biased_graph()
    calib = data(4, 4)
    r = calibrate(g, calib)
    graphs = []
    for _ in range(2):
        q = quantize_k210(g, r)
        correct_biases(g, q, calib, round_weights=True)
        graphs.append({n.name: [v.data for v in n.inputs[1:]] for n in q.nodes_of("kpu_conv2d_q")})
    for name, arrays in graphs[0].items():
        assert all(np.array_equal(a, b) for a, b in zip(arrays, graphs[1][name]))


def test_gptq_with_a_diagonal_gram_matrix_is_nearest_rounding():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 7))
    wq = QuantParamU8(128, 40.0)
    codes = gptq_round(w, np.diag(rng.uniform(1, 2, 7)), wq)
    assert np.array_equal(codes, np.clip(np.floor(w * 40.0 + 128 + 0.5), 0, 255).astype(np.uint8))


def test_gptq_lowers_the_output_error_of_correlated_inputs():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((3, 2000))
    x = np.repeat(base, 4, axis=0) + 0.3 * rng.standard_normal((12, 2000))    # correlated input taps
    w = rng.standard_normal((16, 12)) * 0.5
    wq = QuantParamU8(128, 20.0)
    nearest = np.clip(np.floor(w * 20.0 + 128 + 0.5), 0, 255)
    codes = gptq_round(w, x @ x.T, wq, damp=0.01).astype(np.float64)
    assert codes.min() >= 0 and codes.max() <= 255

    def err(c):
        return float(np.sum(((w - (c - 128) / 20.0) @ x) ** 2))
    assert err(codes) < 0.7 * err(nearest)


def test_kpu_patches_follow_the_weight_layout():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 5, 5))
    w = rng.standard_normal((4, 3, 3, 3))
    want = conv2d(x.astype(np.float32), w.astype(np.float32), np.zeros(4, np.float32), padding=((1, 1), (1, 1)))
    got = (w.reshape(4, -1) @ kpu_patches(x, 3, False)).reshape(4, 2, 5, 5).transpose(1, 0, 2, 3)
    assert np.allclose(got, want, atol=1e-4)
    dw = rng.standard_normal((3, 1, 3, 3))
    want = conv2d(x.astype(np.float32), dw.astype(np.float32), np.zeros(3, np.float32), padding=((1, 1), (1, 1)),
                  groups=3)
    got = np.einsum("cd,cdn->cn", dw.reshape(3, 9), kpu_patches(x, 3, True)).reshape(3, 2, 5, 5).transpose(1, 0, 2, 3)
    assert np.allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("pool, depthwise", [("bypass", False), ("max_2_s2", True), ("left_top_2_s2", False),
                                             ("mean_2_s2", True)])
def test_finishing_from_the_batch_norm_output_is_the_kpu_kernel(pool, depthwise):
    """correct_biases runs each corrected layer as kpu_bn_output -> kpu_finish; that must be the kernel."""
    rng = np.random.default_rng(5)
    g = Graph()
    x = g.input("x", TensorType((2, 4, 8, 8)))
    w = g.const(rng.standard_normal((4, 1 if depthwise else 4, 3, 3)).astype(np.float32) * 0.4, name="w")
    b = g.const(rng.standard_normal(4).astype(np.float32) * 0.3, name="b")
    g.outputs = [g.add("kpu_conv2d", [x, w, b], name="layer", depthwise=depthwise, pool=pool,
                       activation=(("clamp", 0.0, 6.0),)).output]
    xs = [rng.uniform(-1, 1, (2, 4, 8, 8)).astype(np.float32) for _ in range(3)]
    q = quantize_k210(g, calibrate(g, xs))
    node = q.node("layer_q")
    codes = quantize_u8(xs[0], QuantParamU8.from_ir(node.inputs[0].quant))
    _, wt, bn, act = (v.data if v.is_constant else None for v in node.inputs)
    want = kpu_conv2d_q(codes, wt, bn, act, **node.attrs)
    got = kpu_finish(kpu_bn_output(codes, wt, bn, act, node.attrs), act, pool)
    assert np.array_equal(got, want)


@pytest.mark.parametrize("method", ["no_clip", "l2"])
def test_conv_means_come_from_the_calibration_pass_unchanged(method):
    """ConvMeanCalibrator calibrates exactly as Calibrator does (every range equal) and, in the first pass
    only, sums each kpu_conv2d's conv output before its activation: for 1x1 layers that mean is
    W @ mean(input) + b, computed here with numpy on the data the layer reads."""
    from functools import partial

    from targets.k210.bias_correction import ConvMeanCalibrator, ConvMeans
    g = biased_graph()
    g.node("l1").attrs = {**g.node("l1").attrs, "activation": (("clamp", 0.0, 6.0),), "pool": "max_2_s2"}
    calib = data(5, 6)
    plain = calibrate(g, calib, method=method)
    means = ConvMeans()
    measured = calibrate(g, calib, method=method, calibrator=partial(ConvMeanCalibrator, means=means))
    assert measured == plain
    x = np.stack(calib).astype(np.float64)                                     # [N, 1, C, H, W]
    w1, b1 = (g.node("l1").inputs[i].data.astype(np.float64) for i in (1, 2))
    want = w1[:, :, 0, 0] @ x.mean(axis=(0, 1, 3, 4)) + b1
    assert means.counts["l1"] == 5 * 8 * 8
    np.testing.assert_allclose(means.sums["l1"] / means.counts["l1"], want, rtol=1e-5, atol=1e-6)
    assert means.counts["l2"] == 5 * 4 * 4                                     # after l1's 2x2 pool


def test_bias_correction_is_the_same_with_the_calibration_means():
    g = biased_graph()
    calib = data(6, 7)
    results = []
    for use_means in (False, True):
        from functools import partial

        from targets.k210.bias_correction import ConvMeanCalibrator, ConvMeans
        means = ConvMeans() if use_means else None
        cal = partial(ConvMeanCalibrator, means=means) if use_means else None
        q = quantize_k210(g, calibrate(g, calib, **({"calibrator": cal} if cal else {})))
        shifts = correct_biases(g, q, calib, round_weights=True, means=means)
        results.append((shifts, [v.data for n in q.nodes_of("kpu_conv2d_q") for v in n.inputs[1:]]))
    (s0, a0), (s1, a1) = results
    assert s0.keys() == s1.keys() and all(np.array_equal(s0[k], s1[k]) for k in s0)
    assert all(np.array_equal(a, b) for a, b in zip(a0, a1))


def _gram_by_pixel(x, k, depthwise):
    """H = Σ patches patchesᵀ, written out per output pixel with numpy."""
    n, c, h, w = x.shape
    p = k // 2
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (p, p), (p, p)))
    cols = np.stack([xp[i, :, y:y + k, z:z + k] for i in range(n) for y in range(h) for z in range(w)])  # [M, C, k, k]
    if depthwise:
        v = cols.reshape(len(cols), c, k * k)
        return np.einsum("mcd,mce->cde", v, v)
    v = cols.reshape(len(cols), -1)
    return v.T @ v


@pytest.mark.parametrize("k, depthwise", [(1, False), (3, False), (3, True)])
def test_gram_is_the_patch_outer_product_whatever_the_chunking(k, depthwise):
    """Integer inputs make H exact, however it is summed."""
    from targets.k210.weight_rounding import gram
    x = np.random.default_rng(8).integers(-255, 256, (3, 4, 5, 6)).astype(np.int16)
    want = _gram_by_pixel(x, k, depthwise)
    for chunk in (1, 500, 1 << 30):
        assert np.array_equal(gram(x, k, depthwise, chunk_bytes=chunk), want)


@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (2, 3, 1, 4), (2, 3, 4, 1), (1, 2, 1, 1), (2, 5, 2, 2)])
@pytest.mark.parametrize("k, depthwise", [(1, False), (3, False), (3, True)])
def test_gram_from_shifted_correlations_is_the_patch_product(shape, k, depthwise):
    """shift_gram (wide dense layers) builds H from the input's self-correlations less the map edges a tap
    never reads: it must be the per-pixel patch product exactly, thin maps included."""
    from targets.k210.weight_rounding import shift_gram
    x = np.random.default_rng(sum(shape)).integers(-255, 256, shape).astype(np.int16)
    want = _gram_by_pixel(x, k, depthwise)
    for chunk in (1, 1 << 30):
        assert np.array_equal(shift_gram(x, k, depthwise, chunk_bytes=chunk), want)


def test_a_shared_gptq_factor_rounds_like_gptq_round():
    from targets.k210.weight_rounding import gptq_factor, gptq_round_factored
    rng = np.random.default_rng(9)
    x = rng.standard_normal((6, 300))
    h = x @ x.T
    h[2, :] = h[:, 2] = 0.0                               # a dead tap
    wq = QuantParamU8(120, 30.0)
    factor = gptq_factor(h)
    for _ in range(2):
        w = rng.standard_normal((4, 6))
        assert np.array_equal(gptq_round_factored(w, factor, wq), gptq_round(w, h, wq))
