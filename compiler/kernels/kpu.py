"""Float kernel of the K210 KPU layer: kpu_conv2d = conv (1x1/3x3, stride 1, "same") -> activation -> pool.

This is the float meaning of a legalized KPU layer (kmodel-v4.md §10.5 with the integer steps
replaced by real arithmetic), so a legalized graph still runs, calibrates and is compared with the
source model before anything is quantized.

Pools in float (kpu.md §6, kmodel-v4.md §10.5 step 4): the output is H div stride × W div stride.
A max pool counts taps outside the map as 0 *in u8*, which is the bottom of the output range, so in
float such a tap never wins: the max is over the taps inside the map. A mean pool clamps the
coordinates into the map (edge replication) and divides by filter² (no integer truncation in float).
Only max_2_s1 and mean_2_s1 ever reach outside the map.
"""
from __future__ import annotations

import numpy as np

from compiler.kernels import kernel
from compiler.kernels.conv import conv2d
from compiler.kernels.elementwise import clamp, hard_sigmoid, leaky_relu, unary
from compiler.ops import KPU_POOLS

# activation step name -> the float kernel applying it with the step's parameters
ACTIVATION_STEPS = {
    "clamp": lambda y, lo, hi: clamp(y, min=lo, max=hi),
    "leaky_relu": lambda y, alpha: leaky_relu(y, alpha=alpha),
    "unary": lambda y, op: unary(y, op=op),
    "hard_sigmoid": lambda y, alpha, beta: hard_sigmoid(y, alpha=alpha, beta=beta),
}


def kpu_pool(y: np.ndarray, pool: str) -> np.ndarray:
    """A KPU pool type on the float N×C×H×W map `y` (semantics in the module docstring)."""
    f, s = KPU_POOLS[pool]
    h, w = y.shape[-2:]
    oh, ow = h // s, w // s
    if pool == "bypass":
        return y
    if pool in ("left_top_2_s2", "left_top_4_s4", "right_top_2_s2"):
        dx = 1 if pool == "right_top_2_s2" else 0
        return y[..., 0:oh * s:s, dx:dx + ow * s:s]
    rows = np.minimum(np.arange(oh)[:, None] * s + np.arange(f)[None, :], h - 1)   # (oh, f), edge-clamped
    cols = np.minimum(np.arange(ow)[:, None] * s + np.arange(f)[None, :], w - 1)
    taps = [y[..., rows[:, i][:, None], cols[:, j][None, :]] for i in range(f) for j in range(f)]
    if pool.startswith("max"):
        # A clamped coordinate repeats a tap that is inside the window anyway, so max over valid taps.
        return np.maximum.reduce(taps)
    return (np.sum(np.asarray(taps, np.float64), axis=0) / (f * f)).astype(y.dtype)


@kernel("kpu_conv2d")
def kpu_conv2d(x, w, b, *, depthwise=False, pool="bypass", activation=()):
    """One float KPU layer: "same" stride-1 conv (zero ring for 3x3), the activation steps, the pool."""
    k = w.shape[-1]
    p = k // 2
    y = conv2d(x, w, b, padding=((p, p), (p, p)), groups=x.shape[1] if depthwise else 1)
    for name, *params in activation:
        y = ACTIVATION_STEPS[name](y, *params)
    return kpu_pool(y, pool)
