"""coral_movenet_lightning_ptq's int8 patterns (and RESIZE_BILINEAR's uint8 twin), built here, against LiteRT's reference kernels: the FPN's
RESIZE_BILINEAR upsampling and the centre heatmap's MUL by a quantized constant map. `kpuc infer`
(GridExecutor) must give LiteRT's exact output codes (0 steps)."""
from __future__ import annotations

import numpy as np
import pytest
from test_int8_parity import steps
from test_tflite_ops import Op, T, build, opts

R = np.random.default_rng(20240612)


def _int8(shape) -> np.ndarray:
    return R.integers(-128, 128, shape).astype(np.int8)


def _resize(in_hw, out_hw, flags: str, dtype: str, zero_point: int) -> bytes:
    grid = dict(scale=(11.426336288452148,), zero_point=(zero_point,))      # movenet's up_sampling2d grid
    tensors = [T("x", (1, *in_hw, 16), dtype, **grid),
               T("size", (2,), "int32", np.array(out_hw, np.int32)),
               T("y", (1, *out_hw, 16), dtype, **grid)]
    options = opts("ResizeBilinearOptions", AlignCorners=flags == "align", HalfPixelCenters=flags == "half")
    return build(tensors, [Op("RESIZE_BILINEAR", ["x", "size"], ["y"], options)], ["x"], ["y"])


SIZES = [((6, 6), (12, 12)), ((12, 12), (24, 24)), ((5, 7), (13, 9)), ((9, 8), (4, 3))]


@pytest.mark.parametrize("flags", ["half", "align", "default"])
@pytest.mark.parametrize("in_hw, out_hw", SIZES)
def test_int8_resize_bilinear_is_exact(tmp_path, flags, in_hw, out_hw):
    """LiteRT's int8 RESIZE_BILINEAR works in 1/1024 steps: the scale in/out is rounded to 10 bits, the
    four weights are products of 10-bit fractions and the 2^20-scaled sum of raw codes is rounded half away
    from zero. The exact float weights were 1 step off on 440 of 9216 outputs of movenet's first
    upsampling, 5 steps after the next two (cosine 0.997 on the keypoints)."""
    for zero_point in (24, -100):       # negative sums: ties away from zero, not toward +inf
        model = _resize(in_hw, out_hw, flags, "int8", zero_point)
        assert max(steps(tmp_path, model, [_int8((1, *in_hw, 16))]) for _ in range(2)) == 0


@pytest.mark.parametrize("flags", ["half", "align", "default"])
@pytest.mark.parametrize("in_hw, out_hw", SIZES)
def test_uint8_resize_bilinear_is_exact(tmp_path, flags, in_hw, out_hw):
    """LiteRT's uint8 RESIZE_BILINEAR is its float template: float32 coordinates and weights, the four
    products summed in order, rounded half away from zero; the float64 interpolation was 1 step off on
    up to 15% of the outputs."""
    model = _resize(in_hw, out_hw, flags, "uint8", 128)
    x = [R.integers(0, 256, (1, *in_hw, 16)).astype(np.uint8) for _ in range(2)]
    assert max(steps(tmp_path, model, [a]) for a in x) == 0


def test_int8_mul_by_a_quantized_constant_is_exact(tmp_path):
    """movenet's centre heatmap (sigmoid codes) times a constant int8 weight map (these are its scales):
    the constant's codes are an integer operand of LiteRT's MUL like any activation's; the product
    rounded in float was 1 step off on 27 of 2304 outputs, which moved the ARG_MAX picking the person."""
    weights = R.integers(-128, 128, (48, 48, 1)).astype(np.int8)
    tensors = [T("x", (1, 48, 48, 1), "int8", scale=(0.00390625,), zero_point=(-128,)),
               T("w", weights.shape, "int8", weights, scale=(0.002178649418056011,), zero_point=(-128,)),
               T("y", (1, 48, 48, 1), "int8", scale=(0.0020440402440726757,), zero_point=(-128,))]
    model = build(tensors, [Op("MUL", ["x", "w"], ["y"], opts("MulOptions"))], ["x"], ["y"])
    assert max(steps(tmp_path, model, [_int8((1, 48, 48, 1))]) for _ in range(3)) == 0
