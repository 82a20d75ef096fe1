"""What 8-bit activations can reach at best, per zoo model: the ceiling under any uint8 flow.

    python bench/ceiling.py [--models NAME ...] [--jobs 2] [--bits 8] [--write-docs]

For each float image model of bench/accuracy.py (same 20 calibration and 28 judged photos, same reference:
the framework itself), kpuc's float graph runs with every computed tensor rounded to 2^bits levels and
judged as bench/accuracy.py judges a kmodel (per photo the worst output cosine; worst and mean over photos).
Everything else is ideal: weights stay float, the graph's outputs and tensors of fewer than 1,024 values
(what kpuc keeps float by default) are not rounded, copies (reshape, concat, max pool, ...) add nothing.
Seven ways to choose the grids:

- per-tensor, calibrated: one grid per tensor over the calibration photos' min and max (what a KPU layer
  and the runtime's quantized ops have);
- per-tensor, oracle: one grid per tensor over the judged photo's own min and max (no calibration can know
  these);
- per-channel, calibrated / oracle: the same with one grid per channel (axis 1);
- per-tensor / per-channel, clipped: the calibrated min and max shrunk by the fraction (1 down to 0.3) whose
  grid gives the least squared rounding error on the calibration photos, per tensor or per channel;
- per-channel where free: per-channel calibrated grids on the tensors a KPU could give them at no cost
  (`free_on_kpu`: made by a conv, read only by convs), per-tensor calibrated grids elsewhere. Weights stay
  float here too; on the K210 each channel's scale goes into the reading conv's weight columns, which
  share one grid per output channel, so this column is kinder than a compiled kmodel can be.

The oracle columns are not strict bounds: a clipping range (kpuc's l2, mse) can beat a photo's own min and
max (the totals count where kpuc's default, whose weights are rounded too, is above them). They show what a better
range choice can still win (calibrated -> oracle), and what one grid per tensor costs against one per
channel (per-tensor -> per-channel). The "float" column is kpuc's float graph alone: below 1 only where
the framework's own output is float32 noise (ppocrv4_det on photos without text).
Pre-quantized models are left out: their reference is LiteRT's integer arithmetic, not a float function
(bench/accuracy.py gives them a "LiteRT builtin" row instead).
Results go to $KPUC_ZOO/ceiling-results.json; --write-docs writes docs/ceiling.md. A benchmark, not a test.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import ROOT, Model, cache_dir, compile_options, cosine, shared_cases, zoo_cases  # noqa: E402

from compiler.calibration import calibrate  # noqa: E402
from compiler.executor import Executor  # noqa: E402
from compiler.ops import has_trait  # noqa: E402
from compiler.pipeline import prepare_float  # noqa: E402

KEPT_FLOAT_BELOW = 1024     # kpuc's default output-quantize-threshold: smaller tensors may stay float
SCHEMES = ("per-tensor calibrated", "per-tensor oracle", "per-channel calibrated", "per-channel oracle",
           "per-tensor clipped", "per-channel clipped", "per-channel where free")
CLIP_FRACTIONS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)


def rounded(a: np.ndarray, lo, hi, bits: int) -> np.ndarray:
    """`a` on the uniform grid of 2^bits levels over [lo, hi] (widened to hold 0, as every kpuc grid does)."""
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    levels = (1 << bits) - 1
    step = np.where(hi > lo, (hi - lo) / levels, 1.0)
    zero = np.round(-lo / step)
    return ((np.clip(np.round(a / step) + zero, 0, levels) - zero) * step).astype(a.dtype)


def channel_extremes(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    axes = tuple(i for i in range(a.ndim) if i != 1)
    return a.min(axis=axes, keepdims=True), a.max(axis=axes, keepdims=True)


class Rounding(Executor):
    """The float graph with each computed tensor rounded on its grid: grids[name] = (lo, hi), arrays
    broadcasting along the tensor for per-channel grids."""

    def __init__(self, graph, grids: dict, bits: int):
        super().__init__(graph)
        self.grids, self.bits = grids, bits
        self.outputs = {v.name for v in graph.outputs}

    def run_node(self, node, args):
        results = super().run_node(node, args)
        if node.op == "constant" or has_trait(node, "data_movement"):
            return results
        return tuple(rounded(a, *self.grids[v.name], self.bits) if self.rounds(v, a) else a
                     for v, a in zip(node.outputs, results))

    def rounds(self, v, a) -> bool:
        return (v.name not in self.outputs and v.name in self.grids and a.size >= KEPT_FLOAT_BELOW
                and np.issubdtype(a.dtype, np.floating))


def grids_of(graph, samples: list, per_channel: bool) -> dict:
    """{value: (lo, hi)} over `samples`: per tensor by kpuc's calibration (min/max), or per channel."""
    if not per_channel:
        return calibrate(graph, [[s] for s in samples], label="ceiling")
    grids: dict = {}
    for s in samples:
        for name, a in activations(graph, s).items():
            lo, hi = channel_extremes(a)
            grids[name] = (np.minimum(grids[name][0], lo), np.maximum(grids[name][1], hi)) if name in grids else (lo, hi)
    return grids


def activations(graph, sample) -> dict:
    """Every floating value of at least two dimensions the float graph computes from one sample."""
    out = Executor(graph).run({graph.inputs[0].name: sample}, keep_all=True).items()
    return {n: a for n, a in ((n, np.asarray(a)) for n, a in out) if a.ndim >= 2 and np.issubdtype(a.dtype, np.floating)}


def clipped_grids(graph, samples: list, per_channel: bool, bits: int) -> dict:
    """Each tensor's (or channel's) calibrated min and max, both shrunk by the one fraction of CLIP_FRACTIONS
    whose grid gives the least squared rounding error over the calibration photos: the best a static clipping
    range can do by the tensor's own error, not by the output's."""
    base = grids_of(graph, samples, per_channel=True)
    if not per_channel:
        base = {n: (lo.min(), hi.max()) for n, (lo, hi) in base.items()}
    errors: dict = {}
    for s in samples:
        for name, a in activations(graph, s).items():
            lo, hi = base[name]
            axes = tuple(i for i in range(a.ndim) if i != 1) if per_channel else None
            e = np.stack([np.sum((rounded(a, lo * f, hi * f, bits) - a).astype(np.float64) ** 2, axis=axes,
                                 keepdims=per_channel) for f in CLIP_FRACTIONS])
            errors[name] = errors[name] + e if name in errors else e
    fractions = np.asarray(CLIP_FRACTIONS)
    grids = {}
    for name, (lo, hi) in base.items():
        f = fractions[np.argmin(errors[name], axis=0)].astype(np.float32)
        grids[name] = (lo * f, hi * f)
    return grids


def free_on_kpu(value) -> bool:
    """Whether a KPU could give this tensor one grid per channel at no cost: a conv makes it (its per-channel
    batch norm sets each channel's scale) and only convs read it, as their data input (each folds a channel's
    scale into its weights). The KPU has one input zero point per layer and pads with it, so a tensor whose
    channels' zero points would differ (not all >= 0) only counts when every reader is an unpadded conv."""
    users = value.user_nodes()
    if value.producer is None or value.producer.op != "conv2d" or not users:
        return False
    if any(u.op != "conv2d" or u.inputs[0] is not value for u in users):
        return False
    clamp = value.producer.attrs.get("fused_clamp")
    return (clamp is not None and clamp[0] >= 0) or all(
        not any(any(p) for p in u.attrs.get("padding", ())) for u in users)


def evaluate(case: dict, bits: int, schemes=SCHEMES) -> dict:
    res = dict(name=case["name"], task=case["task"])
    with tempfile.TemporaryDirectory() as tmp:
        try:
            model = Model(case, Path(tmp))
        except (Exception, SystemExit) as e:  # noqa: BLE001 - the framework cannot run it, or not a picture model
            return res | dict(skipped=f"{type(e).__name__}: {e}"[:200])
    if model.prequantized:
        return res | dict(skipped="pre-quantized: judged against LiteRT's integer arithmetic")
    graph = prepare_float(case["path"], compile_options(case)).float_graph
    calibration = [model.kpuc_tensor(x, "float32") for x in model.calibration]
    judged = [model.kpuc_tensor(x, "float32") for x in model.judged]
    refs = [[model.kpuc_order(r) for r in ref] for ref in model.refs]

    def judge(run) -> dict:
        per = [min(cosine(run(x)[v.name], r) for v, r in zip(graph.outputs, ref)) for x, ref in zip(judged, refs)]
        return dict(worst=min(per), mean=float(np.mean(per)))
    feed = graph.inputs[0].name
    res["float"] = judge(lambda x: Executor(graph).run({feed: x}))
    for scheme in schemes:
        per_channel = scheme.startswith("per-channel")
        if scheme.endswith("oracle"):      # each judged photo's own grids
            res[scheme] = judge(lambda x, pc=per_channel: Rounding(graph, grids_of(graph, [x], pc), bits).run({feed: x}))
            continue
        if scheme.endswith("clipped"):
            grids = clipped_grids(graph, calibration, per_channel, bits)
        elif scheme.endswith("free"):
            tensor, channel = grids_of(graph, calibration, False), grids_of(graph, calibration, True)
            free = {v.name for n in graph.nodes for v in n.outputs if free_on_kpu(v)}
            grids = {n: channel[n] if n in free and n in channel else g for n, g in tensor.items()}
        else:
            grids = grids_of(graph, calibration, per_channel)
        res[scheme] = judge(lambda x, g=grids: Rounding(graph, g, bits).run({feed: x}))
    return res


def table(results: list[dict], kpuc: dict) -> list[str]:
    head = ["model", "kpuc default", "float", *SCHEMES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
             "| | worst (mean) | " + " | ".join(["worst (mean)"] * (len(head) - 2)) + " |"]
    for r in results:
        if "skipped" in r:
            continue
        k = kpuc.get(r["name"], {})
        cells = [f"{k['worst']:.4f} ({k['mean']:.4f})" if "worst" in k else "-"]
        cells += [f"{r[s]['worst']:.4f} ({r[s]['mean']:.4f})" if s in r else "-" for s in ("float", *SCHEMES)]
        lines.append("| " + " | ".join([r["name"], *cells]) + " |")
    return lines


def totals(results: list[dict], kpuc: dict, line: float = 0.98) -> list[str]:
    judged = [r for r in results if "skipped" not in r]
    out = [f"- float models: {len(judged)}"]
    for s in ("float", *SCHEMES):
        if not all(s in r for r in judged):
            continue
        below = [r["name"] for r in judged if r[s]["worst"] < line]
        out.append(f"- {s}: worst below {line} on {len(below)}" + (f" ({', '.join(below)})" if below else ""))
    static = [s for s in SCHEMES if not s.endswith("oracle") and all(s in r for r in judged)]
    if static:
        best = {r["name"]: max([r[s]["worst"] for s in static] + [kpuc.get(r["name"], {}).get("worst", 0.0)])
                for r in judged}
        below = [n for n, w in best.items() if w < line]
        out.append(f"- best of kpuc's default and {', '.join(static)}, chosen per model on the judged photos "
                   f"(no compiler can choose so): worst below {line} on {len(below)} ({', '.join(below)})")
    ours = [(kpuc[r["name"]]["worst"], r) for r in judged if "worst" in kpuc.get(r["name"], {})]
    for s in SCHEMES[:2]:
        if not all(s in r for _, r in ours):
            continue
        above = sum(k > r[s]["worst"] + 5e-4 for k, r in ours)
        below = sum(k < r[s]["worst"] - 5e-4 for k, r in ours)
        out.append(f"- kpuc's default against {s}: above on {above}, below on {below}, within 0.0005 on "
                   f"{len(ours) - above - below}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--bits", type=int, default=8)
    ap.add_argument("--schemes", nargs="*", choices=SCHEMES, default=list(SCHEMES),
                    help="compute only these (the saved results keep the others)")
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--render-only", action="store_true", help="re-render the saved results")
    a = ap.parse_args(argv)
    results_file = cache_dir() / "ceiling-results.json"
    if a.render_only:
        results = json.loads(results_file.read_text())
    else:
        cases = shared_cases(a.models) + zoo_cases(a.models)
        with ThreadPoolExecutor(a.jobs) as pool:
            fresh = list(pool.map(lambda c: evaluate(c, a.bits, a.schemes), cases))
        saved = {r["name"]: r for r in json.loads(results_file.read_text())} if results_file.exists() else {}
        for r in fresh:
            saved[r["name"]] = saved.get(r["name"], {}) | r
        results = list(saved.values())
        results_file.write_text(json.dumps(results, indent=1) + "\n")
    acc_file = cache_dir() / "accuracy-results.json"
    kpuc = {r["name"]: r.get("kpuc", {}).get("default", {}) for r in json.loads(acc_file.read_text())} \
        if acc_file.exists() else {}
    lines = [*totals(results, kpuc), "", *table(results, kpuc)]
    print("\n".join(lines))
    if a.write_docs:
        doc = __doc__.split("\n\n", 1)[1].split("Results go to")[0].strip()
        (ROOT / "docs" / "ceiling.md").write_text("\n".join(
            [f"# What {a.bits}-bit activations can reach", "", doc, "", "## Totals", "", *lines, ""]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
