"""Limits the kmodel checks (kmodel_v3_check, kmodel_v4_check) share: what no real K210 kmodel exceeds."""
from __future__ import annotations

from compiler.errors import MalformedModel
from targets.k210.kpu import POOL_TYPES

# The K210 has 8 MiB of SRAM in all; a kmodel declaring more main memory than 8 times that is damaged, and the
# checks refuse it before the pool is allocated (real models stay under 6 MiB).
MAIN_MEMORY_LIMIT_BYTES = 64 * 1024 * 1024
# The interpreters loop over pooling / conv kernel taps in Python; 2**20 taps cover every real window (a
# global pool over the K210's largest 320x240 map is 76800 taps) and keep a damaged one from looping for hours.
MAX_WINDOW_TAPS = 1 << 20


def check_kpu_args(args) -> None:
    """The pool type exists and the output map is the pooled input map (kpu.md §3: H div s x W div s), checked
    before the layer's convolution runs."""
    if args.pool_type not in POOL_TYPES:
        raise MalformedModel(f"KPU pool_type {args.pool_type} does not exist (0..{len(POOL_TYPES) - 1})")
    _, _, stride = POOL_TYPES[args.pool_type]
    (_, in_h, in_w), (out_c, out_h, out_w) = args.in_shape, args.out_shape
    if (out_h, out_w) != (in_h // stride, in_w // stride):
        raise MalformedModel(f"KPU layer: input {args.in_shape} with pool type {args.pool_type} gives "
                             f"{(out_c, in_h // stride, in_w // stride)}, the argument words say {args.out_shape}")
