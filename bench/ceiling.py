"""What 8-bit activations can reach at best, per zoo model: the ceiling under any uint8 flow.

    python bench/ceiling.py [--models NAME ...] [--jobs 2] [--bits 8] [--write-docs]

For each float image model of bench/accuracy.py (same 20 calibration and 28 judged photos, same reference:
the framework itself), kpuc's float graph runs with every computed tensor rounded to 2^bits levels and
judged as bench/accuracy.py judges a kmodel (per photo the worst output cosine; worst and mean over photos).
Everything else is ideal: weights stay float, the graph's outputs and tensors of fewer than 1,024 values
(what kpuc keeps float by default) are not rounded, copies (reshape, concat, max pool, ...) add nothing.
Four ways to choose the grids:

- per-tensor, calibrated: one grid per tensor over the calibration photos' min and max (what a KPU layer
  and the runtime's quantized ops have);
- per-tensor, oracle: one grid per tensor over the judged photo's own min and max (no calibration can know
  these);
- per-channel, calibrated / oracle: the same with one grid per channel (axis 1).

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
SCHEMES = ("per-tensor calibrated", "per-tensor oracle", "per-channel calibrated", "per-channel oracle")


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
        for name, a in Executor(graph).run({graph.inputs[0].name: s}, keep_all=True).items():
            a = np.asarray(a)
            if a.ndim < 2 or not np.issubdtype(a.dtype, np.floating):
                continue
            lo, hi = channel_extremes(a)
            grids[name] = (np.minimum(grids[name][0], lo), np.maximum(grids[name][1], hi)) if name in grids else (lo, hi)
    return grids


def evaluate(case: dict, bits: int) -> dict:
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
    for scheme in SCHEMES:
        per_channel = scheme.startswith("per-channel")
        if scheme.endswith("calibrated"):
            grids = grids_of(graph, calibration, per_channel)
            res[scheme] = judge(lambda x, g=grids: Rounding(graph, g, bits).run({feed: x}))
        else:
            res[scheme] = judge(lambda x, pc=per_channel: Rounding(graph, grids_of(graph, [x], pc), bits).run({feed: x}))
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
        cells += [f"{r[s]['worst']:.4f} ({r[s]['mean']:.4f})" for s in ("float", *SCHEMES)]
        lines.append("| " + " | ".join([r["name"], *cells]) + " |")
    return lines


def totals(results: list[dict], kpuc: dict, line: float = 0.98) -> list[str]:
    judged = [r for r in results if "skipped" not in r]
    out = [f"- float models: {len(judged)}"]
    for s in ("float", *SCHEMES):
        below = [r["name"] for r in judged if r[s]["worst"] < line]
        out.append(f"- {s}: worst below {line} on {len(below)}" + (f" ({', '.join(below)})" if below else ""))
    ours = [(kpuc[r["name"]]["worst"], r) for r in judged if "worst" in kpuc.get(r["name"], {})]
    for s in SCHEMES[:2]:
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
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--render-only", action="store_true", help="re-render the saved results")
    a = ap.parse_args(argv)
    results_file = cache_dir() / "ceiling-results.json"
    if a.render_only:
        results = json.loads(results_file.read_text())
    else:
        cases = shared_cases(a.models) + zoo_cases(a.models)
        with ThreadPoolExecutor(a.jobs) as pool:
            results = list(pool.map(lambda c: evaluate(c, a.bits), cases))
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
