"""Resize and Upsample, onto the IR's `resize` (nearest or linear, given output sizes).

The IR resize maps output pixels back with the ratio output/input. ONNX maps them with the given
scale, which is the same thing when in * scale is a whole number; other scales are reported
unsupported rather than approximated. Opset-10 Resize and Upsample use asymmetric coordinates and
ONNX Runtime's "simple" nearest rounding: floor when enlarging, ceil when shrinking.
"""
from __future__ import annotations

import math

from compiler.importers.onnx.context import NotConvertible, converter, normalize_axis

COORDINATE_MODES = ("half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel", "tf_half_pixel_for_nn")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def _sizes_from_scales(x, scales):
    """floor(in * scale) per axis, when the IR's out/in ratio reproduces the scale exactly."""
    scales = [float(s) for s in scales]
    if len(scales) != x.type.rank:
        raise NotConvertible(f"{len(scales)} scales for a rank-{x.type.rank} input")
    sizes = []
    for axis, (size, scale) in enumerate(zip(x.shape, scales)):
        if not math.isfinite(scale) or scale <= 0:
            raise NotConvertible(f"scale {scale} on axis {axis} is not a positive finite number")
        out = int(math.floor(size * scale + 1e-6))
        if out < 1:
            raise NotConvertible(f"scale {scale} leaves no output on axis {axis}")
        if not math.isclose(size * scale, out, rel_tol=1e-6):
            raise NotConvertible(f"scale {scale} on axis {axis} gives {size * scale:g} pixels; kpuc resizes by "
                                 "whole output sizes (use sizes, or a scale that divides evenly)")
        sizes.append(out)
    return tuple(sizes)


def _check_modes(mode, coordinate_mode, nearest_mode):
    if mode not in ("nearest", "linear"):
        raise NotConvertible(f"mode={mode!r} (nearest and linear are supported)")
    if coordinate_mode not in COORDINATE_MODES:
        raise NotConvertible(f"coordinate_transformation_mode={coordinate_mode!r} is not supported")
    if mode == "nearest" and nearest_mode not in NEAREST_MODES:
        raise NotConvertible(f"nearest_mode={nearest_mode!r} is not supported")


def _resize(ctx, x, sizes, mode, coordinate_mode, nearest_mode):
    _check_modes(mode, coordinate_mode, nearest_mode)
    if len(sizes) != x.type.rank or any(int(s) < 1 for s in sizes):
        raise NotConvertible(f"output sizes {list(sizes)} for a rank-{x.type.rank} input")
    if tuple(sizes) == x.shape:
        return x
    attrs = {"nearest_mode": nearest_mode} if mode == "nearest" else {}
    return ctx.add("resize", [x], sizes=tuple(int(s) for s in sizes), mode=mode,
                   coordinate_transformation_mode=coordinate_mode, **attrs)


def _simple_nearest(scales) -> str:
    """ONNX Runtime's opset-10 rounding: floor for enlarging axes, ceil for shrinking ones."""
    if all(s >= 1 for s in scales):
        return "floor"
    if all(s <= 1 for s in scales):
        return "ceil"
    raise NotConvertible("opset-10 nearest resize that enlarges some axes and shrinks others")


def _upsample(ctx, x, scales, mode):
    _check_modes(mode, "asymmetric", "floor")
    scales = [float(s) for s in scales]
    sizes = _sizes_from_scales(x, scales)
    return _resize(ctx, x, sizes, mode, "asymmetric", _simple_nearest(scales))


@converter("Upsample", since=7)
def upsample_v7(ctx, x, *, scales, mode="nearest"):
    return _upsample(ctx, x, scales, mode)


@converter("Upsample", since=9)
def upsample_v9(ctx, x, scales, *, mode="nearest"):
    return _upsample(ctx, x, ctx.data(scales, "scales"), mode)


@converter("Resize", since=10)
def resize_v10(ctx, x, scales, *, mode="nearest"):
    return _upsample(ctx, x, ctx.data(scales, "scales"), mode)


@converter("Resize", since=11)
def resize_v11(ctx, x, roi=None, scales=None, sizes=None, *, antialias=0, axes=None,
               coordinate_transformation_mode="half_pixel", cubic_coeff_a=-0.75, exclude_outside=0,
               extrapolation_value=0.0, keep_aspect_ratio_policy="stretch", mode="nearest",
               nearest_mode="round_prefer_floor"):
    """Opsets 11-19. `roi` and `extrapolation_value` only serve tf_crop_and_resize, and
    `cubic_coeff_a` / `exclude_outside` only cubic mode, all of which are rejected."""
    _check_modes(mode, coordinate_transformation_mode, nearest_mode)
    rank = x.type.rank
    axes = tuple(normalize_axis(a, rank) for a in axes) if axes is not None else tuple(range(rank))
    scales, sizes = ctx.data(scales, "scales"), ctx.data(sizes, "sizes")
    if sizes is not None and sizes.size:
        out = _sizes_with_policy(x, axes, [int(s) for s in sizes.reshape(-1)], keep_aspect_ratio_policy)
    elif scales is not None and scales.size:
        scales = scales.reshape(-1)
        if len(scales) != len(axes):
            raise NotConvertible(f"{len(scales)} scales for axes {axes}")
        full_scales = [1.0] * rank
        for a, s in zip(axes, scales.reshape(-1)):
            full_scales[a] = float(s)
        out = _sizes_from_scales(x, full_scales)
    else:
        raise NotConvertible("Resize needs scales or sizes")
    if antialias and mode != "nearest" and any(o < d for o, d in zip(out, x.shape)):
        raise NotConvertible("antialias=1 when downscaling is not supported")
    return _resize(ctx, x, out, mode, coordinate_transformation_mode, nearest_mode)


def _sizes_with_policy(x, axes, sizes, policy):
    """Output sizes from the sizes input; keep_aspect_ratio_policy scales all `axes` by one factor,
    the largest that fits inside (not_larger) or the smallest that covers (not_smaller) `sizes`."""
    if len(sizes) != len(axes):
        raise NotConvertible(f"{len(sizes)} sizes for axes {axes}")
    full = list(x.shape)
    if policy == "stretch":
        for a, s in zip(axes, sizes):
            full[a] = s
        return full
    if policy not in ("not_larger", "not_smaller"):
        raise NotConvertible(f"keep_aspect_ratio_policy={policy!r}")
    ratios = [s / x.shape[a] for a, s in zip(axes, sizes)]
    scale = min(ratios) if policy == "not_larger" else max(ratios)
    for a in axes:
        full[a] = int(math.floor(x.shape[a] * scale + 0.5))  # rounded half up, as the spec says
        if not math.isclose(x.shape[a] * scale, full[a], rel_tol=1e-6):
            raise NotConvertible(f"keep_aspect_ratio_policy={policy!r} scales axis {a} by {scale:g}, "
                                 "which does not give a whole output size")
    return full
