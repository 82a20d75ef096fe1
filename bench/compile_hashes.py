"""Record (or compare) the sha256 of every kmodel and `kpuc check --format json` report kpuc makes from
the models in ../shared, so a refactor can prove it changed no byte.

    python bench/compile_hashes.py --record bench/compile_hashes.json     # before
    python bench/compile_hashes.py --compare bench/compile_hashes.json    # after: exit 1 on any difference

The shared folder is ../shared next to the repository, or $KPUC_SHARED. The tflite-ops models are
calibrated on fixed data: four seeded random float32 tensors per model (raw dataset).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("KPUC_SHARED", ROOT.parent / "shared"))
KPUC = [sys.executable, str(ROOT / "cli.py")]


def run(args, cwd):
    return subprocess.run(KPUC + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=900)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def jobs(work: Path) -> list[tuple[str, list]]:
    """(label, compile arguments after MODEL OUTPUT) — MODEL is a path relative to SHARED."""
    golden, ops = "golden", "models/tflite-ops"
    ds = "golden/ulffd_landmark-v4/dataset"
    out = [
        ("iris-float-v3", [f"{golden}/iris-v3/iris.tflite", "--inference-type", "float", "--kmodel-version", "3"]),
        ("iris-float-v4", [f"{golden}/iris-v4/iris.tflite", "--inference-type", "float", "--kmodel-version", "4"]),
        ("digits-v3", [str(ROOT / "models/digits_cnn.onnx"), "--dataset", str(ROOT / "models/digits"),
                       "--kmodel-version", "3"]),
        ("digits-v4", [str(ROOT / "models/digits_cnn.onnx"), "--dataset", str(ROOT / "models/digits"),
                       "--kmodel-version", "4"]),
        ("mobilenet-v3", [f"{ops}/mobilenet_v1_0.25_128.tflite", "--dataset", ds, "--kmodel-version", "3"]),
        ("mobilenet-v4", [f"{ops}/mobilenet_v1_0.25_128.tflite", "--dataset", ds, "--kmodel-version", "4"]),
        ("ulffd-v4", [f"{golden}/ulffd_landmark-v4/ulffd_landmark.tflite", "--kmodel-version", "4", "--dataset", ds,
                      "--input-mean", "0.5", "--input-std", "1"]),
    ]
    for model in sorted((SHARED / ops).glob("*.tflite")):
        if model.name.startswith("mobilenet"):
            continue
        data = fixed_dataset(model, work)
        for v in (3, 4):
            extra = ["--dataset", data, "--dataset-format", "raw"] if data else ["--inference-type", "float"]
            out.append((f"{model.stem}-v{v}", [f"{ops}/{model.name}", "--kmodel-version", str(v), *extra]))
    return out


def fixed_dataset(model: Path, work: Path) -> str | None:
    """Four seeded random samples shaped like the model's single float input (None: not one float input)."""
    r = run(["info", model, "--json"], SHARED)
    if r.returncode != 0:
        return None
    inputs = json.loads(r.stdout)["ir_inputs"] or []
    if len(inputs) != 1 or inputs[0]["dtype"] != "float32":
        return None
    folder = work / model.stem
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(int.from_bytes(model.name.encode()[:8], "little"))
    for i in range(4):
        rng.standard_normal(inputs[0]["shape"]).astype("<f4").tofile(folder / f"s{i}.bin")
    return str(folder)


def one(label, args, work: Path) -> tuple[str, dict]:
    out = work / f"{label}.kmodel"
    r = run(["compile", args[0], out, *args[1:]], SHARED)
    row = {"exit": r.returncode}
    if r.returncode == 0:
        row["kmodel"] = sha(out.read_bytes())
    else:
        row["error"] = (r.stderr.strip().splitlines() or [""])[-1]
    # The report without --dataset (synthetic calibration), for the same model and version.
    c = run(["check", args[0], "--kmodel-version", label[-1], "--format", "json"], SHARED)
    row["check_exit"], row["check"] = c.returncode, sha(c.stdout.encode())
    return label, row


def collect() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        todo = jobs(work)
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            rows = dict(pool.map(lambda j: one(*j, work), todo))
    return dict(sorted(rows.items()))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--record", type=Path)
    g.add_argument("--compare", type=Path)
    a = ap.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"no shared folder at {SHARED} (set KPUC_SHARED)")
    rows = collect()
    if a.record:
        a.record.write_text(json.dumps(rows, indent=1) + "\n")
        print(f"{len(rows)} compiles recorded, {sum('kmodel' in r for r in rows.values())} kmodels, "
              f"{sum('check' in r for r in rows.values())} check reports -> {a.record}")
        return
    want = json.loads(a.compare.read_text())
    diff = [k for k in sorted(set(want) | set(rows)) if want.get(k) != rows.get(k)]
    for k in diff:
        print(f"DIFF {k}: was {want.get(k)}, now {rows.get(k)}")
    kmodels = sum("kmodel" in r for r in rows.values())
    checks = sum("check" in r for r in rows.values())
    print(f"{len(rows) - len(diff)}/{len(rows)} identical ({kmodels} kmodels, {checks} check reports)")
    sys.exit(1 if diff else 0)


if __name__ == "__main__":
    main()
