"""QuantizeLinear and DequantizeLinear with constant scales and zero points (uint8 and int8).

A dequantized constant folds to float32 weights at import, so a QDQ model becomes the float graph
that post-training quantization starts from.
"""
from __future__ import annotations

import numpy as np

from compiler.importers.onnx.context import NotConvertible, converter, normalize_axis, numpy_dtype

INTEGER_DTYPES = ("uint8", "int8")


def _params(ctx, x, scale, zero_point, axis, block_size, default_dtype):
    """(scale, zero_point, axis, dtype) as IR attributes: floats/ints, tuples when per axis."""
    if block_size:
        raise NotConvertible("blocked quantization (block_size) is not supported")
    s = ctx.data(scale, "scale").astype(np.float64)
    zp = ctx.data(zero_point, "zero_point")
    dtype = zp.dtype.name if zp is not None else default_dtype
    if dtype not in INTEGER_DTYPES:
        raise NotConvertible(f"{dtype} quantization is not supported (uint8 and int8 are)")
    zp = np.zeros_like(s, dtype=np.int64) if zp is None else zp.astype(np.int64)
    if s.size == 1:
        return float(s.reshape(())), int(zp.reshape(-1)[0]), None, dtype
    if s.ndim != 1:
        raise NotConvertible(f"scale of shape {s.shape}")
    axis = normalize_axis(axis, x.type.rank)
    return tuple(s.tolist()), tuple(zp.reshape(-1).tolist()), axis, dtype


def _onnx_dtype_name(output_dtype):
    return numpy_dtype(output_dtype, "output_dtype") if output_dtype else None


@converter("QuantizeLinear", since=10)
def quantize_linear(ctx, x, y_scale, y_zero_point=None, *, axis=1, block_size=0, output_dtype=0, precision=0,
                    saturate=1):
    """`saturate` only concerns float8 outputs; `precision` only the float16/bfloat16 math of opset 25."""
    default = _onnx_dtype_name(output_dtype) or "uint8"
    scale, zero_point, axis, dtype = _params(ctx, x, y_scale, y_zero_point, axis, block_size, default)
    attrs = {"axis": axis} if axis is not None else {}
    return ctx.add("quantize", [x], scale=scale, zero_point=zero_point, dtype=dtype, **attrs)


@converter("DequantizeLinear", since=10)
def dequantize_linear(ctx, x, x_scale, x_zero_point=None, *, axis=1, block_size=0, output_dtype=0):
    if output_dtype and _onnx_dtype_name(output_dtype) != "float32":
        raise NotConvertible(f"output_dtype {_onnx_dtype_name(output_dtype)} (float32 is supported)")
    scale, zero_point, axis, _ = _params(ctx, x, x_scale, x_zero_point, axis, block_size, x.dtype)
    return ctx.add("dequantize", [x], scale=scale, zero_point=zero_point, axis=axis)
