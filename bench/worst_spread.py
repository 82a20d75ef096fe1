"""How much bench/accuracy.py's "worst cosine" moves when the judged photos change invisibly.

    python bench/worst_spread.py NAME [NAME ...] [--seeds 5] [--target-cosine C]

Compiles the model as bench/accuracy.py does (kmodel v4, default flags or --target-cosine C, the same 20
calibration photos), then
judges it on the 28 judged photos as they are and on copies with every pixel moved by -1, 0 or +1 of 255
(seeded; still 8-bit pictures, as a K210 camera gives), each against the framework on the same copy. The
kmodel runs as QuantizedExecutor on its device graph, which computes what the file computes
(targets/k210/device_semantics.py). The spread of the worst over the seeds is the metric's own noise on
that model: a line inside it is passed or failed by the draw of photos. A benchmark, not a test.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import Model, compile_options, cosine, load_photo, shared_cases, zoo_cases  # noqa: E402

from compiler.pipeline import compile_model  # noqa: E402
from targets import get_target  # noqa: E402
from targets.k210.kernels import QuantizedExecutor  # noqa: E402


def spread(name: str, seeds: int, target_cosine: float | None = None) -> list[tuple[int, float, float]]:
    """(seed, worst, mean) per judging: seed -1 is the photos as they are."""
    case = (zoo_cases([name]) or shared_cases([name]))[0]
    with tempfile.TemporaryDirectory() as tmp:
        model = Model(case, Path(tmp))
    calibration = [model.kpuc_tensor(x, "float32") for x in model.calibration]
    graph = compile_model(case["path"], compile_options(case, target_cosine=target_cosine), get_target("k210"),
                          samples=calibration).graph
    kmodel = QuantizedExecutor(graph)
    photos = [load_photo(p, model.nchw, case["mean"], case["std"]) for p in case["judged"]]
    step = 1 / 255 / case["std"]              # one pixel level in the model's input units
    low, high = -case["mean"] / case["std"], (1 - case["mean"]) / case["std"]
    rows = []
    for seed in range(-1, seeds):
        rng = np.random.default_rng(seed) if seed >= 0 else None
        per = []
        for x in photos:
            if rng is not None:
                x = np.clip(x + rng.integers(-1, 2, x.shape) * step, low, high).astype(np.float32)
            fx = model.framework_input(x)
            ref = [model.kpuc_order(model.dequantized(np.asarray(o), k)) for k, o in enumerate(model.run_framework([fx]))]
            out = kmodel.run({graph.inputs[0].name: model.kpuc_tensor(fx, "float32")})
            per.append(min(cosine(out[v.name], r) for v, r in zip(graph.outputs, ref)))
        rows.append((seed, min(per), float(np.mean(per))))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="+")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--target-cosine", type=float)
    a = ap.parse_args(argv)
    for name in a.names:
        rows = spread(name, a.seeds, a.target_cosine)
        noisy = [w for s, w, _ in rows if s >= 0]
        print(f"{name}: as judged {rows[0][1]:.4f} (mean {rows[0][2]:.4f}); pixels +-1: worst "
              f"{min(noisy):.4f} .. {max(noisy):.4f} over {len(noisy)} seeds (means "
              f"{min(m for s, _, m in rows if s >= 0):.4f} .. {max(m for s, _, m in rows if s >= 0):.4f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
