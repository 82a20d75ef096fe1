"""What to change so an op runs (on the KPU, or at all): the hint column of `kpuc check`.

The reasons come from the importers and targets/k210/constraints.py; this file only adds advice, keyed
by source op type (unsupported ops) or by the reason's wording (CPU fallbacks), so it never decides
anything on its own.
"""
from __future__ import annotations

import re

KPU_ACT = "ReLU/LeakyReLU would run on the KPU"
HOST = "remove it from the model and do it on the host after the kmodel runs (MaixPy or C)"

# Source op type, upper case without '_' (TFLite and ONNX spellings meet) -> hint.
UNSUPPORTED_HINTS = {
    "PRELU": "PReLU runs on the CPU; LeakyReLU would run on the KPU",
    "ELU": f"ELU: not supported; {KPU_ACT}",
    "SELU": f"SELU: not supported; {KPU_ACT}",
    "CELU": f"CELU: not supported; {KPU_ACT}",
    "GELU": f"GELU: not supported; {KPU_ACT} (tanh/sigmoid too, in the KPU activation table)",
    "SILU": f"SiLU/Swish: not supported here; {KPU_ACT} (hard-swish too)",
    "SWISH": f"SiLU/Swish: not supported here; {KPU_ACT} (hard-swish too)",
    "MISH": f"Mish: not supported; {KPU_ACT}",
    "HARDSWISH": f"hard-swish is not supported here; {KPU_ACT}",
    "RELUN1TO1": "use ReLU6 or a Clip to [0, 6]: those are fused into the KPU layer",
    "LSTM": "recurrent layers are not supported (nncase v0.2 had none); use convolutions over time instead",
    "GRU": "recurrent layers are not supported (nncase v0.2 had none); use convolutions over time instead",
    "RNN": "recurrent layers are not supported (nncase v0.2 had none); use convolutions over time instead",
    "UNIDIRECTIONALSEQUENCELSTM": "recurrent layers are not supported; use convolutions over time instead",
    "BIDIRECTIONALSEQUENCELSTM": "recurrent layers are not supported; use convolutions over time instead",
    "UNIDIRECTIONALSEQUENCERNN": "recurrent layers are not supported; use convolutions over time instead",
    "ARGMAX": f"post-processing: {HOST}",
    "ARGMIN": f"post-processing: {HOST}",
    "TOPK": f"post-processing: {HOST}",
    "TOPKV2": f"post-processing: {HOST}",
    "NONMAXSUPPRESSION": f"post-processing: {HOST}",
    "NONMAXSUPPRESSIONV4": f"post-processing: {HOST}",
    "NONMAXSUPPRESSIONV5": f"post-processing: {HOST}",
    "TFLITEDETECTIONPOSTPROCESS": f"post-processing: {HOST}",
    "WHERE": f"data-dependent selection: {HOST}",
    "SELECT": f"data-dependent selection: {HOST}",
    "SELECTV2": f"data-dependent selection: {HOST}",
    "NONZERO": f"data-dependent shapes: {HOST}",
    "INSTANCENORMALIZATION": "use BatchNormalization: it folds into the conv before it and runs on the KPU",
    "LAYERNORMALIZATION": "use BatchNormalization: it folds into the conv before it and runs on the KPU",
    "LRN": "drop the local response normalization or use BatchNormalization (folded into the KPU conv)",
    "LOCALRESPONSENORMALIZATION": "drop the local response normalization or use BatchNormalization (folded into the KPU conv)",
    "CONV3D": "use 2-D convs: 1x1 and 3x3 run on the KPU",
    "CONVINTEGER": "export the float model and let kpuc quantize it",
    "QLINEARCONV": "export the float model and let kpuc quantize it",
    "QLINEARMATMUL": "export the float model and let kpuc quantize it",
    "MATMULINTEGER": "export the float model and let kpuc quantize it",
    "EINSUM": "rewrite it as MatMul/Transpose/Reshape before export",
    "LOOP": "control flow is not supported: export a static graph",
    "IF": "control flow is not supported: export a static graph",
    "WHILE": "control flow is not supported: export a static graph",
    "SCAN": "control flow is not supported: export a static graph",
    "CUSTOM": "custom ops cannot be compiled: convert with builtin ops only",
    "EMBEDDINGLOOKUP": "a table lookup on the input: do it on the host and feed the result",
    "GATHERND": "rewrite with Gather/Slice (supported) or do it on the host",
    "SCATTERND": "do it on the host",
    "CUMSUM": "do it on the host, or as a conv with a constant triangular kernel",
    "RANDOMNORMAL": "random ops make the model non-deterministic: remove them for inference",
    "RANDOMUNIFORM": "random ops make the model non-deterministic: remove them for inference",
}


def cut_hint(output_tensors: str) -> str:
    """Advice when post-processing is all that blocks a model: where to cut it off."""
    return (f"cut the graph before the post-processing with --output-tensors {output_tensors} "
            "and run that part on the host (MaixPy or C)")


def _key(op_type: str) -> str:
    return re.sub(r"[^A-Z0-9]", "", op_type.upper())


def unsupported_hint(op_type: str, fmt: str | None = None) -> str:
    """Advice for an op (or attribute) the importer cannot translate."""
    if (hint := UNSUPPORTED_HINTS.get(_key(op_type))) is not None:
        return hint
    if op_type in ("model", "input", "output"):
        return "re-export the model with a static float32 input and output"
    if op_type.upper().startswith("FLEX"):
        return "TensorFlow (Flex) ops cannot be compiled: convert with TFLite builtin ops only"
    if _imports(op_type, fmt):
        return f"kpuc imports {op_type}, but not in this form (see the reason); re-export it in a supported form"
    return f"kpuc has no converter for {op_type}; replace it before export (`kpuc info` lists every such op)"


def _imports(op_type: str, fmt: str | None) -> bool:
    """Whether the importer has a converter for this op type at all."""
    if fmt == "onnx":
        from compiler.importers.onnx import supported_ops
        return op_type in supported_ops()
    if fmt == "tflite":
        from compiler.importers.tflite import CONVERTERS
        return op_type in CONVERTERS
    return False


def _stacked_3x3(k: int) -> str:
    n = max((k - 1 + 1) // 2, 1)
    words = {1: "one", 2: "two", 3: "three", 4: "four"}
    return f"{words.get(n, str(n))} 3x3 convs" if n > 1 else "a 3x3 conv"


def cpu_hint(row: dict) -> str | None:
    """Advice for an op that stays on the CPU, from its op and the reason constraints.py gave."""
    op, reason = row["op"], row.get("reason") or ""
    if op == "prelu":
        return "PReLU runs on the CPU; LeakyReLU would run on the KPU"
    if m := re.search(r"filter is 1x1 or 3x3, not (\d+)x(\d+)", reason):
        kh, kw = int(m.group(1)), int(m.group(2))
        if kh != kw:
            return "square 1x1 or 3x3 filters run on the KPU (a 1xk/kx1 pair is two CPU convs)"
        if kh % 2 == 0:
            return f"a 3x3 conv would run on the KPU (a {kh}x{kw} filter has no centre)"
        return f"{_stacked_3x3(kh)} would run on the KPU (same {kh}x{kw} receptive field)"
    if "channels (the KPU takes" in reason:
        return "split the layer into convs of at most 1024 channels and concatenate"
    if "is outside the KPU's" in reason:
        return "resize (or crop) the input so every map is within 512x256 (WxH) and at least 4x4"
    if "bytes of KPU RAM" in reason:
        return "fewer channels or a smaller map for this layer (its maps must fit the 2 MiB KPU RAM together)"
    if "KiB, more than the KPU's" in reason:
        return "fewer input or output channels (each weight load holds 30 KiB of whole output channels, 64 loads)"
    if reason.startswith("groups="):
        return "split the grouped conv into groups=1 convs (+ concat), or make it depthwise"
    if "weights are computed at run time" in reason:
        return "make the weights constants of the model (fold them before export)"
    if "--output-quantize-threshold" in reason:
        return "a smaller --output-quantize-threshold would put it on the KPU (ncc's rule keeps it float)"
    if "weights_quantize_threshold" in reason:
        return "raise --weights-quantize-threshold (less accurate) or retrain with weight decay to narrow the weights"
    if "A has rank" in reason:
        return "flatten A to 2-D (M, K) before the MatMul: it then runs as a 1x1 KPU conv"
    if op == "reduce_window2d":
        if "depthwise" in reason:
            return "pool after a non-depthwise conv (e.g. the 1x1 that follows): the KPU fuses it there"
        return "a 2x2 stride-2 or 4x4 stride-4 pool right after a conv is fused into the KPU layer"
    if op in ("clamp", "leaky_relu", "unary", "hard_sigmoid") and "fused into the layer before it" in reason:
        return "put the activation right after a conv that runs on the KPU"
    return None


def compile_hint(message: str) -> str | None:
    """Advice for a compile that stops before lowering."""
    if "calibration feeds one input" in message:
        return "kpuc calibrates and compiles single-input models: merge the inputs into one tensor (e.g. concat)"
    if "dataset" in message:
        return "check the --dataset files against the model input (see kpuc infer for the formats)"
    return None
