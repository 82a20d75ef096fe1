"""ONNX's own node tests through kpuc: import the model, run it on the reference executor and compare
with the outputs ONNX ships (rtol 1e-4, atol 1e-5).

Every test case whose ops all have a converter runs (ops we claim: the importer's converter table).
A case we knowingly do not support is listed in XFAIL with the reason, strictly: it must fail, and a
claimed case outside XFAIL must pass. Nothing is skipped silently.

Adapter: kpuc compiles static graphs, so a test input that only feeds parameter slots (a Reshape's
shape, Slice's starts, Resize's scales, ...; see PARAMETER_INPUTS) is frozen into an initializer
with the test's own value, as a deployed model has it. Data inputs stay graph inputs.
"""
from __future__ import annotations

import collections
import warnings

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from compiler.executor import run_graph
from compiler.importers.onnx import import_model, supported_ops

RTOL, ATOL = 1e-4, 1e-5
RUNNING_FLOOR = 560   # claimed cases that must pass; a drop means converters regressed

# Input slots that hold parameters rather than data, per op (positions in node.input).
REDUCE_OPS = ("ReduceMax ReduceMean ReduceMin ReduceSum ReduceProd ReduceL1 ReduceL2 ReduceSumSquare "
              "ReduceLogSumExp ReduceLogSum").split()
PARAMETER_INPUTS = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "Squeeze": (1,), "Unsqueeze": (1,), "Split": (1,),
    "Slice": (1, 2, 3, 4), "Pad": (1, 2, 3), "Resize": (1, 2, 3), "Upsample": (1,), "Dropout": (1, 2),
    "QuantizeLinear": (1, 2), "DequantizeLinear": (1, 2), "ConstantOfShape": (0,), "Range": (0, 1, 2),
    **{op: (1,) for op in REDUCE_OPS},
}


def _each(reason: str, names: str) -> dict[str, str]:
    return {n: reason for n in names.split()}


XFAIL: dict[str, str] = {
    **_each("int8/int16/uint16/uint32/uint64/bool tensors: the device computes in float32, uint8 and int32", """
        test_add_int8 test_add_int16 test_add_uint16 test_add_uint32 test_add_uint64
        test_castlike_INT4_to_INT8_expanded test_castlike_INT2_to_INT8_expanded test_clip_default_int8_min
        test_clip_default_int8_max test_clip_default_int8_inbounds test_clip_default_int8_inbounds_expanded
        test_div_int8 test_div_int16 test_div_uint16 test_div_uint32 test_div_uint64 test_max_int8
        test_max_int16 test_max_uint16 test_max_uint32 test_max_uint64 test_min_int8 test_min_int16
        test_min_uint16 test_min_uint32 test_min_uint64 test_mul_int8 test_mul_int16 test_mul_uint16
        test_mul_uint32 test_mul_uint64 test_pow_types_float32_uint64 test_pow_types_float32_uint32
        test_reduce_max_bool_inputs test_reduce_max_empty_set_bool test_reduce_min_bool_inputs test_sub_int8
        test_sub_int16 test_sub_uint16 test_sub_uint32 test_sub_uint64"""),
    **_each("int8/int16/uint16/uint32/uint64 inputs of comparisons and Mod (device dtypes: float32, uint8, int32)", """
        test_clip_default_int8_min_expanded test_clip_default_int8_max_expanded
        """ + " ".join(f"test_{op}_{t}" for op in ("equal", "greater", "less", "greater_equal", "less_equal")
                       for t in ("int8", "int16", "uint16", "uint32", "uint64"))
        + " " + " ".join(f"test_{op}_{t}_expanded" for op in ("greater_equal", "less_equal")
                         for t in ("int8", "int16", "uint16", "uint32", "uint64")) + """
        test_mod_mixed_sign_int16 test_mod_mixed_sign_int8 test_mod_uint16 test_mod_uint32 test_mod_uint64"""),
    **_each("string tensors", "test_equal_string test_equal_string_broadcast"),
    **_each("opset 1 (kpuc reads opset 7 and later)", "test_not_2d test_not_3d test_not_4d"),
    **_each("Cast of a computed tensor to float16, bfloat16, float8, 4-bit or 2-bit types", """
        test_cast_FLOAT_to_FLOAT16 test_cast_DOUBLE_to_FLOAT16 test_cast_FLOAT_to_BFLOAT16
        test_cast_FLOAT_to_FLOAT8E4M3FN test_cast_FLOAT16_to_FLOAT8E4M3FN test_cast_FLOAT_to_FLOAT8E4M3FNUZ
        test_cast_FLOAT16_to_FLOAT8E4M3FNUZ test_cast_FLOAT_to_FLOAT8E5M2 test_cast_FLOAT16_to_FLOAT8E5M2
        test_cast_FLOAT_to_FLOAT8E5M2FNUZ test_cast_FLOAT16_to_FLOAT8E5M2FNUZ test_cast_FLOAT_to_UINT4
        test_cast_FLOAT16_to_UINT4 test_cast_FLOAT_to_INT4 test_cast_FLOAT16_to_INT4
        test_cast_FLOAT_to_FLOAT4E2M1 test_cast_FLOAT16_to_FLOAT4E2M1 test_cast_FLOAT_to_UINT2
        test_cast_FLOAT16_to_UINT2 test_cast_FLOAT_to_INT2 test_cast_FLOAT16_to_INT2
        test_cast_no_saturate_FLOAT_to_FLOAT8E4M3FN test_cast_no_saturate_FLOAT_to_FLOAT8E4M3FNUZ
        test_cast_no_saturate_FLOAT_to_FLOAT8E5M2 test_cast_no_saturate_FLOAT_to_FLOAT8E5M2FNUZ
        test_cast_no_saturate_FLOAT16_to_FLOAT8E4M3FN test_cast_no_saturate_FLOAT16_to_FLOAT8E4M3FNUZ
        test_cast_no_saturate_FLOAT16_to_FLOAT8E5M2 test_cast_no_saturate_FLOAT16_to_FLOAT8E5M2FNUZ
        test_cast_e8m0_FLOAT_to_FLOAT8E8M0 test_cast_e8m0_FLOAT16_to_FLOAT8E8M0
        test_castlike_FLOAT_to_FLOAT16_expanded test_castlike_DOUBLE_to_FLOAT16_expanded
        test_castlike_FLOAT_to_BFLOAT16_expanded test_castlike_FLOAT_to_FLOAT8E4M3FN_expanded
        test_castlike_FLOAT16_to_FLOAT8E4M3FN_expanded test_castlike_FLOAT_to_FLOAT8E4M3FNUZ_expanded
        test_castlike_FLOAT16_to_FLOAT8E4M3FNUZ_expanded test_castlike_FLOAT_to_FLOAT8E5M2_expanded
        test_castlike_FLOAT16_to_FLOAT8E5M2_expanded test_castlike_FLOAT_to_FLOAT8E5M2FNUZ_expanded
        test_castlike_FLOAT16_to_FLOAT8E5M2FNUZ_expanded test_castlike_FLOAT_to_UINT4_expanded
        test_castlike_FLOAT16_to_UINT4_expanded test_castlike_FLOAT_to_INT4_expanded
        test_castlike_FLOAT16_to_INT4_expanded test_castlike_FLOAT_to_FLOAT4E2M1_expanded
        test_castlike_FLOAT16_to_FLOAT4E2M1_expanded test_castlike_FLOAT_to_UINT2_expanded
        test_castlike_FLOAT16_to_UINT2_expanded test_castlike_FLOAT_to_INT2_expanded
        test_castlike_FLOAT16_to_INT2_expanded test_castlike_no_saturate_FLOAT_to_FLOAT8E4M3FN_expanded
        test_castlike_no_saturate_FLOAT_to_FLOAT8E4M3FNUZ_expanded
        test_castlike_no_saturate_FLOAT_to_FLOAT8E5M2_expanded
        test_castlike_no_saturate_FLOAT_to_FLOAT8E5M2FNUZ_expanded
        test_castlike_no_saturate_FLOAT16_to_FLOAT8E4M3FN_expanded
        test_castlike_no_saturate_FLOAT16_to_FLOAT8E4M3FNUZ_expanded
        test_castlike_no_saturate_FLOAT16_to_FLOAT8E5M2_expanded
        test_castlike_no_saturate_FLOAT16_to_FLOAT8E5M2FNUZ_expanded test_flexattention_fp16_expanded_ver26"""),
    **_each("float8, 4-bit and 2-bit input tensors", """
        test_cast_FLOAT8E4M3FN_to_FLOAT test_cast_FLOAT8E4M3FN_to_FLOAT16 test_cast_FLOAT8E4M3FNUZ_to_FLOAT
        test_cast_FLOAT8E4M3FNUZ_to_FLOAT16 test_cast_FLOAT8E5M2_to_FLOAT test_cast_FLOAT8E5M2_to_FLOAT16
        test_cast_FLOAT8E5M2FNUZ_to_FLOAT test_cast_FLOAT8E5M2FNUZ_to_FLOAT16 test_cast_UINT4_to_FLOAT
        test_cast_UINT4_to_FLOAT16 test_cast_UINT4_to_UINT8 test_cast_INT4_to_FLOAT
        test_cast_INT4_to_FLOAT16 test_cast_INT4_to_INT8 test_cast_FLOAT4E2M1_to_FLOAT
        test_cast_FLOAT4E2M1_to_FLOAT16 test_cast_UINT2_to_FLOAT test_cast_UINT2_to_FLOAT16
        test_cast_UINT2_to_UINT8 test_cast_INT2_to_FLOAT test_cast_INT2_to_FLOAT16 test_cast_INT2_to_INT8
        test_cast_e8m0_FLOAT8E8M0_to_FLOAT test_cast_e8m0_FLOAT8E8M0_to_FLOAT16
        test_castlike_FLOAT8E4M3FN_to_FLOAT_expanded test_castlike_FLOAT8E4M3FN_to_FLOAT16_expanded
        test_castlike_FLOAT8E4M3FNUZ_to_FLOAT_expanded test_castlike_FLOAT8E4M3FNUZ_to_FLOAT16_expanded
        test_castlike_FLOAT8E5M2_to_FLOAT_expanded test_castlike_FLOAT8E5M2_to_FLOAT16_expanded
        test_castlike_FLOAT8E5M2FNUZ_to_FLOAT_expanded test_castlike_FLOAT8E5M2FNUZ_to_FLOAT16_expanded
        test_castlike_UINT4_to_FLOAT_expanded test_castlike_UINT4_to_FLOAT16_expanded
        test_castlike_UINT4_to_UINT8_expanded test_castlike_INT4_to_FLOAT_expanded
        test_castlike_INT4_to_FLOAT16_expanded test_castlike_FLOAT4E2M1_to_FLOAT_expanded
        test_castlike_FLOAT4E2M1_to_FLOAT16_expanded test_castlike_UINT2_to_FLOAT_expanded
        test_castlike_UINT2_to_FLOAT16_expanded test_castlike_UINT2_to_UINT8_expanded
        test_castlike_INT2_to_FLOAT_expanded test_castlike_INT2_to_FLOAT16_expanded
        test_dequantizelinear_e4m3fn test_dequantizelinear_e4m3fn_float16
        test_dequantizelinear_e4m3fn_zero_point test_dequantizelinear_e5m2 test_dequantizelinear_uint4
        test_dequantizelinear_int4 test_dequantizelinear_uint2 test_dequantizelinear_int2
        test_dequantizelinear_float4e2m1"""),
    **_each("quantization other than uint8/int8 per tensor or per axis", """
        test_dequantizelinear_uint16 test_dequantizelinear_int16 test_dequantizelinear_blocked
        test_quantizelinear_e4m3fn test_quantizelinear_e5m2 test_quantizelinear_uint16
        test_quantizelinear_int16 test_quantizelinear_uint4 test_quantizelinear_int4 test_quantizelinear_uint2
        test_quantizelinear_int2 test_quantizelinear_float4e2m1 test_quantizelinear_blocked_asymmetric
        test_quantizelinear_blocked_symmetric"""),
    **_each("parameters computed from run-time data (a static compiler needs them constant)", """
        test_dynamicquantizelinear_expanded test_dynamicquantizelinear_max_adjusted_expanded
        test_dynamicquantizelinear_min_adjusted_expanded test_blackmanwindow_expanded
        test_blackmanwindow_symmetric_expanded test_hammingwindow_expanded test_hammingwindow_symmetric_expanded
        test_hannwindow_expanded test_hannwindow_symmetric_expanded test_center_crop_pad_crop_expanded
        test_center_crop_pad_pad_expanded test_center_crop_pad_crop_and_pad_expanded
        test_center_crop_pad_crop_axes_hwc_expanded test_center_crop_pad_crop_negative_axes_hwc_expanded
        test_center_crop_pad_crop_axes_chw_expanded"""),
    **_each("3-D convolution and pooling (IR ops are 2-D; 1-D is lifted)", """
        test_averagepool_3d_default test_averagepool_3d_dilations_small
        test_averagepool_3d_dilations_large_count_include_pad_is_0_ceil_mode_is_True
        test_averagepool_3d_dilations_large_count_include_pad_is_0_ceil_mode_is_False
        test_averagepool_3d_dilations_large_count_include_pad_is_1_ceil_mode_is_True
        test_averagepool_3d_dilations_large_count_include_pad_is_1_ceil_mode_is_False test_convtranspose_3d
        test_maxpool_3d_default test_maxpool_3d_dilations test_maxpool_3d_dilations_use_ref_impl
        test_maxpool_3d_dilations_use_ref_impl_large"""),
    **_each("cubic resize", """
        test_resize_upsample_scales_cubic test_resize_upsample_scales_cubic_align_corners
        test_resize_downsample_scales_cubic test_resize_downsample_scales_cubic_align_corners
        test_resize_upsample_sizes_cubic test_resize_downsample_sizes_cubic
        test_resize_upsample_scales_cubic_A_n0p5_exclude_outside
        test_resize_downsample_scales_cubic_A_n0p5_exclude_outside test_resize_upsample_scales_cubic_asymmetric
        test_resize_downsample_scales_cubic_antialias test_resize_downsample_sizes_cubic_antialias"""),
    **_each("resize scale that gives a fractional output size (the IR resizes by output/input)", """
        test_resize_downsample_scales_nearest test_resize_downsample_scales_linear
        test_resize_downsample_scales_linear_align_corners test_resize_downsample_scales_linear_antialias
        test_resize_downsample_sizes_nearest_not_smaller"""),
    **_each("tf_crop_and_resize", """
        test_resize_tf_crop_and_resize test_resize_tf_crop_and_resize_extrapolation_value
        test_resize_tf_crop_and_resize_axes_2_3 test_resize_tf_crop_and_resize_axes_3_2"""),
    **_each("half_pixel_symmetric coordinates (opset 19)", """
        test_resize_downsample_scales_linear_half_pixel_symmetric
        test_resize_upsample_scales_linear_half_pixel_symmetric"""),
    "test_resize_downsample_sizes_linear_antialias": "antialiased downscaling",
    **_each("training mode", """
        test_batchnorm_example_training_mode test_batchnorm_epsilon_training_mode test_training_dropout_default
        test_training_dropout_default_mask test_training_dropout test_training_dropout_mask"""),
    **_each("sequence and optional inputs", "test_identity_sequence test_identity_opt"),
    **_each("MaxPool's Indices output", """
        test_maxpool_with_argmax_2d_precomputed_pads test_maxpool_with_argmax_2d_precomputed_strides"""),
    "test_wrap_pad": "wrap padding (opset 19)",
    **_each("the reference rounds every step to float16/bfloat16; kpuc computes in float32", """
        test_celu_bfloat16 test_swiglu_float16_expanded"""),
    "test_averagepool_2d_ceil_last_window_starts_on_pad": "the test's expected values are rounded to 4 decimals",
}


def _collect():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from onnx.backend.test.case.node import collect_testcases
        return collect_testcases(None)


ALL_CASES = _collect()
CLAIMED = set(supported_ops())


def _ops(case) -> list[str]:
    return sorted({n.op_type for n in case.model.graph.node})


CASES = [c for c in ALL_CASES if c.data_sets and set(_ops(c)) <= CLAIMED]
OUTCOMES: dict[str, str] = {}


def _frozen(model: onnx.ModelProto, inputs: list) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The model with parameter-only inputs turned into initializers, and the feeds for the rest."""
    g = model.graph
    uses = collections.defaultdict(list)
    for node in g.node:
        for slot, name in enumerate(node.input):
            uses[name].append(slot in PARAMETER_INPUTS.get(node.op_type, ()))
    model = onnx.ModelProto.FromString(model.SerializeToString())
    feeds, keep = {}, []
    for vi, arr in zip(g.input, inputs, strict=True):
        if uses[vi.name] and all(uses[vi.name]) and (tensor := _tensor(arr, vi.name)) is not None:
            model.graph.initializer.append(tensor)
        else:
            feeds[vi.name] = np.asarray(arr)
            keep.append(vi)
    del model.graph.input[:]
    model.graph.input.extend(keep)
    return model, feeds


def _tensor(arr, name) -> onnx.TensorProto | None:
    """An initializer holding `arr`, or None for dtypes numpy_helper cannot write (float8, int4)."""
    try:
        return numpy_helper.from_array(np.asarray(arr), name)
    except (NotImplementedError, TypeError, ValueError):
        return None


def _array(x) -> np.ndarray:
    """Test data as numpy (some cases store TensorProtos, e.g. for float16 and bfloat16)."""
    return numpy_helper.to_array(x) if isinstance(x, onnx.TensorProto) else np.asarray(x)


def _check(case, tmp_path):
    for k, (inputs, expected) in enumerate(case.data_sets):
        inputs, expected = [_array(x) for x in inputs], [_array(x) for x in expected]
        model, feeds = _frozen(case.model, inputs)
        path = tmp_path / f"{case.name}_{k}.onnx"
        onnx.save(model, str(path))
        graph = import_model(path)
        got = run_graph(graph, *[feeds[v.name] for v in graph.inputs])
        assert len(got) == len(expected)
        for out, want in zip(got, expected, strict=True):
            want = np.asarray(want)
            assert out.shape == want.shape, f"shape {out.shape} != {want.shape}"
            if want.dtype == bool or want.dtype.kind in "iu":
                np.testing.assert_array_equal(out, want)
            else:
                np.testing.assert_allclose(out.astype(np.float64), want.astype(np.float64), rtol=RTOL, atol=ATOL)


def _params():
    for c in CASES:
        marks = [pytest.mark.xfail(reason=XFAIL[c.name], strict=True)] if c.name in XFAIL else []
        yield pytest.param(c, id=c.name, marks=marks)


@pytest.mark.parametrize("case", _params())
def test_node(case, tmp_path):
    OUTCOMES[case.name] = "failed"
    _check(case, tmp_path)
    OUTCOMES[case.name] = "passed"


def test_xfail_list_is_current():
    """Every XFAIL entry names a claimed case (so fixing a converter cannot leave a stale entry)."""
    names = {c.name for c in CASES}
    assert sorted(n for n in XFAIL if n not in names) == []


def test_conformance_summary(capsys):
    """Per op: how many claimed cases use it, how many must pass and how many are expected failures."""
    per_op = collections.defaultdict(lambda: [0, 0])
    for c in CASES:
        for op in _ops(c):
            per_op[op][c.name in XFAIL] += 1
    running = sum(c.name not in XFAIL for c in CASES)
    seen = collections.Counter("xfailed" if OUTCOMES[n] == "failed" and n in XFAIL else OUTCOMES[n]
                               for n in sorted(OUTCOMES))
    with capsys.disabled():
        print(f"\nONNX node tests: {len(ALL_CASES)} in onnx {onnx.__version__}; {len(CASES)} use only the "
              f"{len(CLAIMED)} claimed ops: {running} must pass, {len(CASES) - running} are expected failures")
        if seen:
            counts = ", ".join(f"{n} {k}" for k, n in sorted(seen.items()))
            print(f"  this session: {sum(seen.values())} ran: {counts}")
        for op in sorted(per_op):
            must, xfail = per_op[op]
            print(f"  {op:<20} in {must + xfail:4d} cases: {must:4d} must pass, {xfail:4d} xfail")
    assert running >= RUNNING_FLOOR
