"""Mark the convs and matmuls ncc kept in float (--output-quantize-threshold) with meta["keep_float"].

conv2d / matmul (small)  ==>  the same node, meta["keep_float"] = why
Why: ncc never put these on the KPU and kept them float; the KPU legalization and the quantizer respect the mark.
Order: after the generic passes, before legalize_k210.
"""
from __future__ import annotations

from compiler.ir import Graph, Node
from targets.k210.constraints import MIN_IN_H, MIN_IN_W

# Float weights above this stay quantized anyway: the kmodel lives in the same ~6 MiB of main SRAM as the
# tensors (kpuc check's c-sdk budget), and one float classifier (MobileNet v2's 1280x1001 logits: 5.1 MB)
# would take all of it; a third of it (2 MiB) is the most one kept-float layer may cost.
MAX_FLOAT_WEIGHT_BYTES = 2 * 1024 * 1024


def _float_weight_bytes(node: Node) -> int:
    w = node.inputs[1]
    return 4 * w.type.size if w.is_constant else 0


def mark_small_outputs_float(graph: Graph, threshold: int) -> bool:
    """ncc's --output-quantize-threshold, applied where ncc applied it, before KPU legalization.

    ncc moves a matmul to the KPU only when its weights have at least `threshold` elements
    (matmul_to_fake_kpu_conv2d), and it never placed a conv on a map smaller than the KPU's 4x4, so
    such a conv stayed a CPU conv2d, kept float below the threshold (add_quant_checkpoints). kpuc can
    pad small maps to 4x4, but a classifier's last layer (MobileNet's 1001 logits on a 1x1 map) is the
    most quantization-sensitive layer of a network, so it follows ncc here, unless its float weights
    would exceed MAX_FLOAT_WEIGHT_BYTES of main memory."""
    changed = False
    for node in graph.nodes_of("conv2d", "matmul"):
        if node.op == "matmul":
            w = node.inputs[1]
            small = w.is_constant and w.type.size < threshold
            what = f"weights have {w.type.size} elements"
        else:
            h, w = node.inputs[0].shape[-2:]
            small = (h < MIN_IN_H or w < MIN_IN_W) and node.output.type.size < threshold
            what = f"a {w}x{h} map with {node.output.type.size} output elements"
        if small and _float_weight_bytes(node) > MAX_FLOAT_WEIGHT_BYTES:
            continue   # its float weights would crowd main memory: quantize it like the rest
        if small and "keep_float" not in node.meta:
            node.meta["keep_float"] = f"{what}, fewer than --output-quantize-threshold {threshold}: kept in float"
            changed = True
    return changed
