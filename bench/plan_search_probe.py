"""Why does `--target-cosine` end where it does? Every plan the search built, judged on the zoo's photos.

    python bench/plan_search_probe.py NAME [NAME ...] [--goal 0.99] [--out DIR]

For one model of bench/accuracy.py (same 20 calibration and 28 judged photos, same framework reference):
runs the plan search in-process and records, for every plan it built, the per-sample cosines it measured
(held-out originals and mirrored copies, fitted on 3/4 of the calibration photos); then compiles each
plan the way the final compile does (calibrated on all 20) and scores it on the judged photos against
the framework (QuantizedExecutor; per image the worst output). Writes DIR/NAME.json and prints a table:
what the search saw next to what the judged photos say. A diagnosis tool, not a test.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import accuracy  # noqa: E402

from compiler.datasets import load_feeds  # noqa: E402
from compiler.pipeline import CompileOptions, Prepared, prepare_float, quantize  # noqa: E402
from targets import get_target  # noqa: E402
from targets.k210 import plan_search  # noqa: E402
from targets.k210.sensitivity import cosine, feeds_of  # noqa: E402


def per_sample(reference: list[dict], got: list[dict]) -> list[float]:
    """Each sample's worst output cosine."""
    return [min(cosine(r[k], g[k]) for k in r) for r, g in zip(reference, got)]


def judged_scores(prepared_q, samples: list, refs: list[list[np.ndarray]]) -> list[float]:
    from targets.k210.kernels import QuantizedExecutor
    exe = QuantizedExecutor(prepared_q)
    out = []
    for x, ref in zip(samples, refs):
        run = exe.run(feeds_of(prepared_q, x))
        out.append(min(cosine(run[v.name], r) for v, r in zip(prepared_q.outputs, ref)))
    return out


def probe(case: dict, goal: float, kept_only: bool = False) -> dict:
    target = get_target("k210")
    with tempfile.TemporaryDirectory(prefix=f"kpuc-probe-{case['name']}-") as tmp:
        work = Path(tmp)
        model = accuracy.Model(case, work)
        opts = CompileOptions(kmodel_version=4, input_type="float", dataset=str(work / "calibration"),
                              dataset_format="raw", target_cosine=goal,
                              input_shapes=tuple((k, tuple(v)) for k, v in case["input_shapes"].items()),
                              output_tensors=tuple(case.get("output_tensors", [])))
        prepared = prepare_float(case["path"], opts)
        ir_dtype = prepared.generic.inputs[0].type.dtype
        for role, tensors in (("calibration", model.calibration), ("judged", model.judged)):
            (work / role).mkdir()
            for i, x in enumerate(tensors):
                np.save(work / role / f"{i:02d}.npy", model.kpuc_tensor(x, ir_dtype))
        cal = load_feeds(work / "calibration", prepared.generic.inputs, format="raw", mean=0.0, std=1.0)
        judged = load_feeds(work / "judged", prepared.generic.inputs, format="raw", mean=0.0, std=1.0)
        refs = [[model.kpuc_order(r).reshape(-1) for r in ref] for ref in model.refs]

        builds: list[dict] = []
        original_build, original_measure = plan_search._Builder.build, plan_search._Builder.measure

        def build(self, plan):
            builds.append(dict(plan=[list(p) for p in plan]))
            return original_build(self, plan)

        def measure(self, q):
            score = original_measure(self, q)
            builds[-1]["held"] = [float(c) for c in score.cosines]
            return score

        plan_search._Builder.build, plan_search._Builder.measure = build, measure
        try:
            start = time.monotonic()
            graph = prepared.float_graph.clone()
            record = Prepared(generic=graph.clone(), float_graph=graph)
            searched = quantize(record, opts, target, samples=cal)
            seconds = time.monotonic() - start
        finally:
            plan_search._Builder.build, plan_search._Builder.measure = original_build, original_measure
        trials = [st for st in record.plan_search.steps if not st.label.startswith("(")]
        for b, st in zip(builds[1:], trials):       # the final check's two builds come last
            b.update(label=st.label, kept=st.kept, why=st.why)
        for b in builds:
            if "held" not in b or kept_only and b is not builds[0] and not b.get("kept"):   # failed, or skipped
                b["judged"] = [np.nan]
                continue
            g = prepared.generic.clone()
            q = quantize(Prepared(generic=g.clone(), float_graph=g), replace(opts, target_cosine=None,
                                                                             layer_plan=tuple(map(tuple, b["plan"]))),
                         target, samples=cal)
            b["judged"] = judged_scores(q, judged, refs)
        final = judged_scores(searched, judged, refs)
    return dict(name=case["name"], goal=goal, seconds=seconds, builds=builds, final_judged=final,
                final_plan=[list(p) for p in record.plan_search.plan])


def report(res: dict, held_n: int | None = None) -> str:
    lines = [f"== {res['name']} (goal {res['goal']}, search+final {res['seconds']:.0f} s)",
             f"{'#':>3s} {'held worst':>10s} {'held tail':>9s} {'orig worst':>10s} {'judged worst':>12s} "
             f"{'judged mean':>11s}  plan change"]
    for i, b in enumerate(res["builds"]):
        held = b.get("held") or [np.nan] * 5
        h = np.sort(held)
        orig = held[:held_n or max(1, len(held) // 5)]
        j = np.asarray(b["judged"], float)
        what = f"{'kept' if b.get('kept') else '-':4s} {b.get('label', '?')} {b.get('why', '')}" if i else "(start)"
        lines.append(f"{i:3d} {h[0]:10.4f} {h[:max(1, len(h) // 4)].mean():9.4f} {min(orig):10.4f} {j.min():12.4f} "
                     f"{j.mean():11.4f}  {what}")
    lines.append(f"final plan: {res['final_plan']}")
    lines.append(f"final compile judged: worst {min(res['final_judged']):.4f} mean {np.mean(res['final_judged']):.4f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--goal", type=float, default=0.99)
    ap.add_argument("--out", default="/tmp/plan-search-probe")
    ap.add_argument("--kept-only", action="store_true", help="judge only the start plan and the kept trials")
    ap.add_argument("--render", action="store_true", help="print the saved results only")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.render:
        for name in a.models:
            print(report(json.loads((out / f"{name}.json").read_text())))
        return 0
    for case in accuracy.shared_cases(a.models) + accuracy.zoo_cases(a.models):
        res = probe(case, a.goal, a.kept_only)
        (out / f"{case['name']}.json").write_text(json.dumps(res))
        print(report(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
