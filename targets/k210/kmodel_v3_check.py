"""Check a parsed kmodel v3 against its memory before anything runs or is allocated.

The reader (kmodel_v3.py) only checks what parsing needs: every count and offset against the file. A
damaged file can still parse into layers that address past the `main_mem_usage` buffer or the 2 MiB KPU
RAM, declare gigabytes of main memory, or pool with a 0 stride. `check_v3` finds those first, so the CLI
answers with one KpucError naming the layer and the field.
"""
from __future__ import annotations

from compiler.errors import MalformedModel
from targets.k210.kmodel_limits import MAIN_MEMORY_LIMIT_BYTES, MAX_WINDOW_TAPS, check_kpu_args
from targets.k210.kmodel_v3 import KModelV3, LayerType, V3Layer, layer_io
from targets.k210.kpu_layout import KPU_RAM_ROWS

POOLS = (LayerType.MaxPool2d, LayerType.QuantizedMaxPool2d, LayerType.AveragePool2d)


def check_layer(layer: V3Layer, main_bytes: int) -> None:
    """Window fields and every region the layer reads or writes (kmodel-v3.md §8); raises MalformedModel."""
    b = layer.body
    if layer.type in POOLS:
        for field in ("kernel_width", "kernel_height", "stride_width", "stride_height"):
            if getattr(b, field) < 1:
                raise MalformedModel(f"{field} is {getattr(b, field)}, must be >= 1")
        if b.kernel_width * b.kernel_height > MAX_WINDOW_TAPS:
            raise MalformedModel(f"a {b.kernel_width}x{b.kernel_height} window has more than {MAX_WINDOW_TAPS} taps")
    if layer.type == LayerType.K210Conv:
        check_kpu_args(b.args)
    ins, outs = layer_io(layer)
    for role, reg in [("input", r) for r in ins] + [("output", r) for r in outs]:
        if reg.mem == "main" and reg.address + reg.size > main_bytes:
            raise MalformedModel(f"{role} bytes {reg.address}..{reg.address + reg.size} outside the "
                                 f"{main_bytes}-byte main memory (main_mem_usage)")
        if reg.mem == "kpu" and reg.address + reg.size > KPU_RAM_ROWS:
            raise MalformedModel(f"{role} KPU rows {reg.address}..{reg.address + reg.size} outside the "
                                 f"{KPU_RAM_ROWS} rows of KPU RAM")


def check_v3(model: KModelV3) -> None:
    """Raise MalformedModel on the first header field, output or layer the SDK could not run."""
    if not model.layers:
        raise MalformedModel("kmodel v3: the model has no layers")
    main_bytes = model.header.main_mem_usage
    if main_bytes > MAIN_MEMORY_LIMIT_BYTES:
        raise MalformedModel(f"kmodel v3: main_mem_usage is {main_bytes} bytes, more than the "
                             f"{MAIN_MEMORY_LIMIT_BYTES} any K210 kmodel can use")
    for i, o in enumerate(model.outputs):
        if o.address + o.size > main_bytes:
            raise MalformedModel(f"kmodel v3: output {i}: bytes {o.address}..{o.address + o.size} outside the "
                                 f"{main_bytes}-byte main memory (main_mem_usage)")
    for i, layer in enumerate(model.layers):
        try:
            check_layer(layer, main_bytes)
        except MalformedModel as e:
            raise MalformedModel(f"kmodel v3: layer {i} ({layer.type_name}): {e}") from None
