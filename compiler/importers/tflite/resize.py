"""RESIZE_BILINEAR / RESIZE_NEAREST_NEIGHBOR: TF's coordinate rules as IR resize modes.

TF flags -> ONNX-style modes (checked against LiteRT's reference kernels):
  bilinear  default -> asymmetric, align_corners -> align_corners, half_pixel_centers -> half_pixel
  nearest   default -> asymmetric + floor, align_corners -> align_corners + round_prefer_ceil (std::round),
            half_pixel_centers -> tf_half_pixel_for_nn + floor
"""
from __future__ import annotations

from compiler.errors import KpucError
from compiler.importers.tflite.context import TFLiteContext, converter, option
from compiler.importers.tflite.reader import OpInfo

MODES = {  # (op, align_corners, half_pixel_centers) -> attrs
    ("RESIZE_BILINEAR", False, False): {"mode": "linear", "coordinate_transformation_mode": "asymmetric"},
    ("RESIZE_BILINEAR", True, False): {"mode": "linear", "coordinate_transformation_mode": "align_corners"},
    ("RESIZE_BILINEAR", False, True): {"mode": "linear", "coordinate_transformation_mode": "half_pixel"},
    ("RESIZE_NEAREST_NEIGHBOR", False, False): {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                                                "nearest_mode": "floor"},
    ("RESIZE_NEAREST_NEIGHBOR", True, False): {"mode": "nearest", "coordinate_transformation_mode": "align_corners",
                                               "nearest_mode": "round_prefer_ceil"},
    ("RESIZE_NEAREST_NEIGHBOR", False, True): {"mode": "nearest",
                                               "coordinate_transformation_mode": "tf_half_pixel_for_nn",
                                               "nearest_mode": "floor"},
}


@converter("RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR")
def resize(ctx: TFLiteContext, op: OpInfo):
    x = ctx.nchw(op, 0)
    size = [int(s) for s in ctx.array(op, 1).reshape(-1)]
    if len(size) != 2:
        raise KpucError(f"size {size} must hold (height, width)")
    key = (op.op_type, bool(option(op, "AlignCorners", False)), bool(option(op, "HalfPixelCenters", False)))
    if key not in MODES:
        raise KpucError("align_corners and half_pixel_centers cannot both be set")
    y = ctx.add("resize", [x], name=ctx.name(op), sizes=(*x.shape[:2], *size), **MODES[key])
    ctx.set_output(op, 0, y, nchw=True)
