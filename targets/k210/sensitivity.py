"""How much each layer's quantization costs at the model's outputs, measured on held-out samples.

For every KPU layer of a quantized graph, three worst-case output cosines against the float model, each with
that layer alone changed and everything else float:
    alone   the layer as the quantizer made it (uint8 input codes, uint8 weights, its integer pipeline, uint8 output),
    act     only its output rounded to its uint8 grid (what `split` halves),
    half    an estimate of `act` on a grid of half that step (what `split` buys): rounding noise power falls
            4x, and 1 - cosine follows the noise power (measured on MobileNet: it falls 5-20x, so this is cautious).
Kept-float convs get `act` too (their output on the grid a calibration gives them: what `quantize` costs).

Fast: one float run per held-out sample keeps every intermediate; a layer's variants run only the nodes
after it, from those intermediates (nothing before the layer is recomputed, no kmodel is written).
MobileNet v1 0.25/128, 2 held-out samples: 27 KPU layers in ~9 s (each tail costs a float run of the rest).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compiler.executor import Executor
from compiler.ir import Graph, Node, QuantParam
from compiler.quantization import get_quant_param
from targets.k210.kernels import QuantizedExecutor, dequantize, quantize
from targets.k210.precision import layer_of

HOLDOUT_EVERY = 4     # every 4th calibration sample is held out ...
MIN_HOLDOUT = 2       # ... and at least this many


def holdout_indices(n: int) -> list[int]:
    """The indices holdout() holds out of n samples, ascending (all of them when none can be spared)."""
    held_idx = list(range(HOLDOUT_EVERY - 1, n, HOLDOUT_EVERY))
    for i in range(n - 1, -1, -1):          # top up from the end
        if len(held_idx) >= MIN_HOLDOUT:
            break
        if i not in held_idx:
            held_idx.append(i)
    if n - len(held_idx) < MIN_HOLDOUT:
        return list(range(n))
    return sorted(held_idx)


def holdout(samples: list) -> tuple[list, list]:
    """(fit, held): every HOLDOUT_EVERY-th sample held out, at least MIN_HOLDOUT; with too few samples to
    spare any, both are all of them (the choices are then judged on what they were fitted to)."""
    held_idx = holdout_indices(len(samples))
    if len(held_idx) == len(samples):
        return list(samples), list(samples)
    held = set(held_idx)
    return [s for i, s in enumerate(samples) if i not in held], [samples[i] for i in held_idx]


def mirrored(samples: list) -> list:
    """The samples flipped left-right, when every one is a single NCHW image array (W > 1): images the
    fitted ranges and corrections never saw, from the same distribution; [] otherwise."""
    data = [_payload(s) for s in samples]
    if not all(isinstance(d, np.ndarray) and d.ndim == 4 and d.shape[-1] > 1 for d in data):
        return []
    return [np.ascontiguousarray(d[..., ::-1]) for d in data]


def _payload(sample):
    """An array, a dict or a list as it is; a dataset Sample's .data (an ndarray's .data is its buffer)."""
    return sample if isinstance(sample, (np.ndarray, dict, list, tuple)) else getattr(sample, "data", sample)


def feeds_of(graph: Graph, sample) -> dict[str, np.ndarray]:
    data = _payload(sample)
    if isinstance(data, dict):
        return data
    arrays = data if isinstance(data, (list, tuple)) else [data]
    return {v.name: a for v, a in zip(graph.inputs, arrays)}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(a @ b / (na * nb))


def worst_cosine(reference: list[dict], got: list[dict]) -> float:
    """The lowest cosine over samples and outputs."""
    return min(cosine(r[k], g[k]) for r, g in zip(reference, got) for k in r)


def outputs_of(executor: Executor, graph: Graph, samples: list) -> list[dict]:
    return [executor.run(feeds_of(graph, s)) for s in samples]


@dataclass
class Sensitivity:
    layer: str
    kind: str                 # "kpu" or "float"
    alone: float | None       # worst output cosine with only this layer quantized (KPU layers)
    act: float                # ... with only its output rounded to its uint8 grid
    half: float | None        # ... rounded to half that step (KPU layers)
    weights: int              # weight elements


class _Tail:
    """Runs a float graph from the node after a given value, from a full run's intermediates."""

    def __init__(self, graph: Graph, samples: list):
        self.graph, self.exe = graph, Executor(graph)
        self.index = {n: i for i, n in enumerate(graph.nodes)}
        self.envs = [self._full_env(feeds_of(graph, s)) for s in samples]
        self.reference = [{v.name: env[v] for v in graph.outputs} for env in self.envs]

    def _full_env(self, feeds) -> dict:
        env = {v: np.asarray(feeds[v.name]).reshape(v.shape).astype(v.dtype, copy=False) for v in self.graph.inputs}
        for node in self.graph.nodes:
            if node.op != "input":
                for v, r in zip(node.outputs, self.exe.run_node(node, [env[i] for i in node.inputs])):
                    env[v] = r
        return env

    def worst_with(self, node: Node, replace) -> float:
        """Worst output cosine when `node`'s output is replace(float output, sample index) in every sample."""
        nodes = self.graph.nodes[self.index[node] + 1:]
        got = []
        for k, env in enumerate(self.envs):
            local = dict(env)
            local[node.output] = replace(env[node.output], k)
            for n in nodes:
                if n.op != "input":
                    for v, r in zip(n.outputs, self.exe.run_node(n, [local[i] for i in n.inputs])):
                        local[v] = r
            got.append({v.name: local[v] for v in self.graph.outputs})
        return worst_cosine(self.reference, got)


def _on_grid(y: np.ndarray, q: QuantParam) -> np.ndarray:
    """y rounded to q's uint8 grid, clipped to the codes 0..255."""
    s, zp = float(q.scale), float(q.zero_point)
    codes = np.clip(np.round(y / s + zp), 0, 255)
    return ((codes - zp) * s).astype(np.float32)


def layer_sensitivity(legalized: Graph, quantized: Graph, held: list) -> list[Sensitivity]:
    """The table above for every KPU layer and kept-float conv / matmul of `legalized` (graph order)."""
    tail = _Tail(legalized, held)
    qexe = QuantizedExecutor(quantized)
    kpu_q = {n.meta.get("float_value"): n for n in quantized.nodes_of("kpu_conv2d_q")}
    rows = []
    for node in legalized.nodes:
        if node.op == "kpu_conv2d" and node.output.name in kpu_q:
            qn = kpu_q[node.output.name]
            xq, oq = qn.inputs[0].quant, qn.output.quant
            consts = [v.data for v in qn.inputs[1:]]
            x_name = node.inputs[0]

            def alone(y, k, qn=qn, xq=xq, oq=oq, consts=consts, x=x_name):
                codes = quantize(tail.envs[k][x], scale=xq.scale, zero_point=xq.zero_point)
                out = qexe.run_node(qn, [codes, *consts])[0]
                return dequantize(out, scale=oq.scale, zero_point=oq.zero_point).astype(np.float32)
            act = tail.worst_with(node, lambda y, k, oq=oq: _on_grid(y, oq))
            rows.append(Sensitivity(layer_of(node), "kpu", tail.worst_with(node, alone), act, 1 - (1 - act) / 4,
                                    int(node.inputs[1].type.size)))
        elif node.op in ("conv2d", "matmul") and "range" in node.meta and node.inputs[1].is_constant:
            p = get_quant_param(node.meta["range"])
            oq = QuantParam(float(1.0 / p.scale), int(p.zero_point))
            rows.append(Sensitivity(layer_of(node), "float", None,
                                    tail.worst_with(node, lambda y, k, oq=oq: _on_grid(y, oq)), None,
                                    int(node.inputs[1].type.size)))
    return rows


def _cell(x: float | None, width: int) -> str:
    return f"{x:{width}.4f}" if x is not None else "-".rjust(width)


def format_sensitivity(rows: list[Sensitivity], chosen: dict[str, str] | None = None, width: int = 44) -> str:
    """The per-layer table `kpuc compile --target-cosine` and `kpuc check --dataset` print."""
    chosen = chosen or {}
    head = (f"{'layer':{width}s} {'kind':5s} {'alone':>7s} {'8-bit out':>9s} {'9-bit est':>9s} "
            f"{'weights':>8s}  choice")
    lines = [head]
    for r in rows:
        name = r.layer if len(r.layer) <= width else "…" + r.layer[-(width - 1):]
        lines.append(f"{name:{width}s} {r.kind:5s} {_cell(r.alone, 7)} {_cell(r.act, 9)} {_cell(r.half, 9)} "
                     f"{r.weights:8d}  {chosen.get(r.layer, '')}")
    return "\n".join(lines)


__all__ = ["Sensitivity", "holdout", "holdout_indices", "mirrored", "layer_sensitivity", "format_sensitivity",
           "worst_cosine", "cosine", "outputs_of", "feeds_of"]
