"""targets/k210/weight_rounding.py: GPTQ rounds each weight row on its own, so the shortcuts a split
layer's weights allow (equal rows rounded once, a row's leading zero taps skipped) give the codes of the
rows rounded one at a time with the plain error feedback written out below (GPTQ, Frantar et al. 2022)."""
from __future__ import annotations

import numpy as np

from compiler.quantization import QuantParamU8
from targets.k210.weight_rounding import gptq_factor, gptq_round_factored


def textbook_gptq(w: np.ndarray, u: np.ndarray, wq: QuantParamU8) -> np.ndarray:
    """One row, tap after tap: round, then push the error onto the later taps by U's row (H⁻¹ = UᵀU)."""
    w = np.array(w, np.float64)
    codes = np.empty(len(w), np.int64)
    for i in range(len(w)):
        q = np.clip(np.floor(w[i] * wq.scale + wq.zero_point + 0.5), 0, 255)
        codes[i] = q
        w[i + 1:] -= (w[i] - (q - wq.zero_point) / wq.scale) / u[i, i] * u[i, i + 1:]
    return codes


def split_depthwise_weights(rng, c: int) -> np.ndarray:
    """A split layer's dense copy of a depthwise 3x3 conv (targets/k210/split_activations.py): output o
    reads input copies o % c and c + o % c with half the weight, and the two output copies are equal."""
    wd = rng.standard_normal((c, 3, 3))
    o, i = np.arange(2 * c)[:, None], np.arange(2 * c)[None, :]
    dense = np.where((o % c == i % c)[:, :, None, None], wd[o % c] / 2, 0.0)
    return dense.reshape(2 * c, -1)


def test_split_layer_rows_round_as_each_row_alone():
    rng = np.random.default_rng(3)
    c = 6
    x = rng.integers(-100, 120, (2 * c * 9, 400)).astype(np.float64)
    h = x @ x.T
    h[5, :] = h[:, 5] = 0.0                                     # a dead tap
    factor = gptq_factor(h)
    w = split_depthwise_weights(rng, c)
    wq = QuantParamU8(128, float(255 / np.ptp(w)))
    w_alive = np.where(factor.dead[0], 0.0, w)
    expected = np.stack([textbook_gptq(row, factor.u[0], wq) for row in w_alive])
    codes = gptq_round_factored(w, factor, wq)
    assert codes.dtype == np.uint8
    assert np.array_equal(codes, expected)
    assert np.array_equal(codes[:c], codes[c:])                 # the two output copies


def test_rows_out_of_order_and_per_row_factors_round_as_each_row_alone():
    rng = np.random.default_rng(4)
    d = 12
    hs = np.stack([(lambda x: x @ x.T)(rng.standard_normal((d, 50))) for _ in range(5)])
    factor = gptq_factor(hs)
    w = rng.standard_normal((5, d))
    w[0, :7] = 0.0                                              # starts later than the rows below it
    w[2, :3] = 0.0
    w[3] = 0.0
    wq = QuantParamU8(100, 40.0)
    expected = np.stack([textbook_gptq(w[r], factor.u[r], wq) for r in range(5)])
    assert np.array_equal(gptq_round_factored(w, factor, wq), expected)
