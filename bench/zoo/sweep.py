"""Try every zoo model the way a new user would, and measure what works.

    python bench/zoo/sweep.py [--only NAME ...] [--timeout S] [--mem-gb G] [--jobs N] [--write-docs]
    python bench/zoo/sweep.py --render-only --write-docs      # re-render the last results

Per model (each step a child process with a timeout and an address-space cap, so one bad model
cannot stop the sweep):
1. `kpuc info --json`: does it import? (the unsupported ops and the error line if not);
2. the framework (reference.py: LiteRT reference kernels / onnxruntime) on a seeded random input;
3. `kpuc infer` of the .tflite/.onnx on the same input (float executor) against it: the largest error
   beyond FRAMEWORK_ATOL (the framework's own float32 approximation error), relative to the output's
   peak (pass at 1e-4) for float outputs; for int8/uint8 outputs the largest error in quantization steps
   of that output (pass at 1 step);
4. `kpuc check --format json --kmodel-version both`: the verdict for v3 and v4 and what blocks;
5. for each version that fits: `kpuc compile` with 3 random calibration samples (a float picture input
   with --input-mean/--input-std for the manifest's range), then `kpuc infer` of the kmodel on the parity
   input (as uint8 codes when the kmodel takes codes): cosine similarity to the framework's output (the
   worst output).
Results go to $KPUC_ZOO/sweep-results.json; `--write-docs` writes docs/zoo.md (report.py).
Models must be fetched first (fetch.py).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
from fetch import cache_dir, load_manifest, model_path  # noqa: E402
from report import print_table, write_docs  # noqa: E402


def _limit_memory(gigabytes: float):
    def apply():
        cap = int(gigabytes * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    return apply


def run_child(cmd: list[str], timeout: float, mem_gb: float) -> dict:
    """Run one step; returns rc, stdout, the last error line, seconds (rc None on timeout)."""
    start = time.monotonic()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                              preexec_fn=_limit_memory(mem_gb))
    except subprocess.TimeoutExpired:
        return dict(rc=None, stdout="", error=f"timeout after {timeout:.0f} s", seconds=timeout)
    lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
    error = next((ln for ln in reversed(lines) if ln.startswith("kpuc: error")), lines[-1] if lines else "")
    if done.returncode < 0:
        error = f"killed by signal {-done.returncode} (memory cap {mem_gb} GiB?) {error}".strip()
    return dict(rc=done.returncode, stdout=done.stdout, error=error[:400], seconds=time.monotonic() - start)


def kpuc(*args) -> list[str]:
    """A kpuc command line that runs this checkout's code."""
    return [sys.executable, str(ROOT / "cli.py"), *map(str, args)]


def _shape_options(entry: dict, supported: set[str]) -> list[str]:
    """`--input-shape NAME=dims` for models with dynamic dims, once kpuc has the option."""
    if "--input-shape" not in supported:
        return []
    return [a for name, dims in entry.get("input_shapes", {}).items()
            for a in ("--input-shape", f"{name}={','.join(map(str, dims))}")]


def _nchw(a: np.ndarray, layout: str) -> np.ndarray:
    return a.transpose(0, 3, 1, 2) if layout == "nhwc" and a.ndim == 4 else a


def write_dataset(folder: Path, arrays: list[np.ndarray], meta: dict, ir_inputs: list[dict]) -> Path:
    """One sample as kpuc reads it: NCHW .npy, dequantized unless the IR input is integer; several inputs
    as one sub-folder per input name (issue 12 item 4)."""
    folder.mkdir(parents=True)
    for a, info, ir in zip(arrays, meta["inputs"], ir_inputs or [{}] * len(arrays)):
        if info["quant"] and ir.get("dtype", "float32") == "float32":
            scale, zero_point = info["quant"]
            a = ((a.astype(np.float32) - zero_point) * scale).astype(np.float32)
        sub = folder / info["name"].replace("/", "_") if len(arrays) > 1 else folder
        sub.mkdir(exist_ok=True)
        np.save(sub / "sample.npy", _nchw(a, meta["layout"]))
    return folder


# The frameworks' own float32 error on transcendental ops: onnxruntime's Sigmoid (MLAS, a rational
# approximation) is up to 1.7e-7 off the exact value (measured over [-20, 20]). An output whose values
# all sit near 0 (ppocrv4_det's probability map on a random input: peak 3.4e-4, ORT 1.25e-7 off the exact
# sigmoid of its own input, kpuc 2.8e-9) would fail the relative test on that alone, so the float error
# is counted beyond this absolute allowance.
FRAMEWORK_ATOL = 2e-7


def compare(outdir: Path, ref: dict, meta: dict, kind: str) -> dict:
    """kpuc's output files against the framework's outputs (float error, steps, cosine)."""
    worst = dict(rel=0.0, rel_raw=0.0, steps=None, cosine=1.0)
    for k, info in enumerate(meta["outputs"]):
        got_file = outdir / f"sample.out{k}.bin"
        if not got_file.exists():
            return dict(error=f"no output file {got_file.name}")
        got = np.fromfile(got_file, dtype=np.float32)
        want = _nchw(ref[f"out{k}"], meta["layout"])
        if info["quant"]:
            scale, zero_point = info["quant"]
            want = (want.astype(np.float64) - zero_point) * scale
        want = np.asarray(want, dtype=np.float64).ravel()
        if got.size != want.size:
            return dict(error=f"output {k} has {got.size} values, the framework gives {want.size}")
        diff = np.abs(got - want)
        beyond = diff if info["quant"] else np.maximum(diff - FRAMEWORK_ATOL, 0.0)
        peak = max(np.abs(want).max(), 1e-12)
        worst["rel"] = max(worst["rel"], float(beyond.max() / peak))
        worst["rel_raw"] = max(worst["rel_raw"], float(diff.max() / peak))     # without the allowance
        if info["quant"] and kind == "model":
            worst["steps"] = max(worst["steps"] or 0.0, float(diff.max() / info["quant"][0]))
        denom = np.linalg.norm(got) * np.linalg.norm(want)
        worst["cosine"] = min(worst["cosine"], float(got @ want / denom) if denom else float(np.allclose(got, want)))
    return worst


def sweep_model(entry: dict, opts, supported: set[str]) -> dict:
    """Every step for one model; never raises for a model's fault."""
    path = model_path(entry)
    res = dict(name=entry["name"])
    if not path.exists():
        return res | dict(import_ok=False, import_error="not fetched (bench/zoo/fetch.py)")
    shape_opts = _shape_options(entry, supported)
    with tempfile.TemporaryDirectory(prefix=f"zoo-{entry['name']}-") as tmp:
        work = Path(tmp)
        info = run_child(kpuc("info", path, "--json", *shape_opts), opts.timeout, opts.mem_gb)
        summary = _json(info["stdout"]) or {}
        res["import_ok"] = info["rc"] == 0
        res["import_error"] = "" if res["import_ok"] else info["error"]
        res["unsupported"] = summary.get("unsupported") or []
        res["ops"] = summary.get("ops") or {}
        ref = run_child([sys.executable, str(HERE / "reference.py"), entry["name"], work / "ref.npz"],
                        opts.timeout, opts.mem_gb)
        ref_data = np.load(work / "ref.npz") if ref["rc"] == 0 else None
        res["reference_error"] = "" if ref_data is not None else ref["error"]
        meta = json.loads(str(ref_data["meta"])) if ref_data is not None else None
        if meta:
            res["quantized"] = any(i["quant"] for i in meta["inputs"] + meta["outputs"])
        if res["import_ok"] and meta:
            res["parity"] = _parity(path, work, ref_data, meta, summary, shape_opts, opts)
        check = run_child(kpuc("check", path, "--format", "json", "--kmodel-version", "both", *shape_opts),
                          opts.check_timeout, opts.mem_gb)
        report = _json(check["stdout"])
        res["check"] = _check_summary(report) if report else dict(error=check["error"] or "no report")
        if meta and not opts.skip_compile:
            res["kmodel"] = {v: _kmodel(path, v, work, ref_data, meta, summary, shape_opts, opts, entry)
                             for v in res["check"].get("fits_versions", [])}
    return res


def _json(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None


def _parity(path, work, ref_data, meta, summary, shape_opts, opts) -> dict:
    arrays = [ref_data[f"in{k}"] for k in range(len(meta["inputs"]))]
    data = write_dataset(work / "in", arrays, meta, summary.get("ir_inputs"))
    dataset = data if len(arrays) > 1 else data / "sample.npy"
    step = run_child(kpuc("infer", path, work / "out", "--dataset", dataset, "--dataset-format", "raw", *shape_opts),
                     opts.timeout, opts.mem_gb)
    if step["rc"] != 0:
        return dict(error=step["error"])
    return compare(work / "out", ref_data, meta, "model")


def _check_summary(report: dict) -> dict:
    versions = {str(v["version"]): dict(status=v["status"], error=v.get("error") or "",
                                        blockers=sorted({b["op"] for b in v.get("blockers") or []}))
                for v in report.get("versions", [])}
    return dict(verdict=report.get("verdict"), fits_versions=[str(v) for v in report.get("fits_versions", [])],
                versions=versions, kpu_mac_share=(report.get("kpu") or {}).get("mac_share"),
                unsupported=sorted({u["op"] for u in report.get("unsupported") or []}))


def _kmodel(path, version, work, ref_data, meta, summary, shape_opts, opts, entry) -> dict:
    n_in = len(meta["inputs"])
    calib = work / f"cal{version}"
    for c in range(opts.calibration):
        arrays = [ref_data[f"cal{c}_in{k}"] for k in range(n_in)]
        write_dataset(calib / f"s{c}", arrays, meta, summary.get("ir_inputs"))
    # A float picture input gets ncc's --input-mean/--input-std for the manifest's range, as a user compiles it:
    # a kmodel whose first layer runs on the KPU then takes uint8 codes, code c meaning low + c/255 (high - low).
    low, high = entry["input"]["range"]
    picture = n_in == 1 and not meta["inputs"][0]["quant"] and high > low
    range_opts = ["--input-mean", -low / (high - low), "--input-std", 1 / (high - low)] if picture else []
    if not picture and version == "4":   # a quantized model's input: the kmodel takes the dequantized values
        range_opts = ["--input-type", "float"]
    kmodel = work / f"v{version}.kmodel"
    # --allow-over-budget: this step measures compile + infer; whether the kmodel fits is the check step's figure
    step = run_child(kpuc("compile", path, kmodel, "--kmodel-version", version, "--dataset", calib,
                          "--dataset-format", "raw", "--allow-over-budget", *range_opts, *shape_opts),
                     opts.check_timeout, opts.mem_gb)
    if step["rc"] != 0:
        return dict(error=f"compile: {step['error']}")
    sample = work / "in" if n_in > 1 else work / "in" / "sample.npy"
    out = work / f"kout{version}"
    step = run_child(kpuc("infer", kmodel, out, "--dataset", sample, "--dataset-format", "raw"),
                     opts.timeout, opts.mem_gb)
    if step["rc"] != 0 and picture and "not its codes" in step["error"]:
        x = np.load(sample)
        codes = work / "in_codes" / "sample.npy"
        codes.parent.mkdir(exist_ok=True)
        np.save(codes, np.clip(np.round((x - low) / (high - low) * 255), 0, 255).astype(np.uint8))
        step = run_child(kpuc("infer", kmodel, out, "--dataset", codes, "--dataset-format", "raw"),
                         opts.timeout, opts.mem_gb)
    if step["rc"] != 0:
        return dict(error=f"infer: {step['error']}")
    return compare(out, ref_data, meta, "kmodel")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="model names (default: all)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per step (info, infer)")
    ap.add_argument("--check-timeout", type=float, default=600, help="seconds for check and compile")
    ap.add_argument("--mem-gb", type=float, default=8.0, help="address-space cap per child")
    ap.add_argument("--jobs", type=int, default=1, help="models at once")
    ap.add_argument("--calibration", type=int, default=3, help="random calibration samples per compile")
    ap.add_argument("--skip-compile", action="store_true", help="no compile + infer of the kmodels")
    ap.add_argument("--write-docs", action="store_true", help="write docs/zoo.md")
    ap.add_argument("--render-only", action="store_true", help="re-render the saved results")
    opts = ap.parse_args(argv)
    entries = load_manifest()
    results_file = cache_dir() / "sweep-results.json"
    if opts.render_only:
        results = json.loads(results_file.read_text())
    else:
        chosen = [e for e in entries if not opts.only or e["name"] in opts.only]
        helps = run_child(kpuc("info", "--help"), 60, opts.mem_gb)["stdout"]
        supported = {w.strip(",") for w in helps.split() if w.startswith("--")}
        with ThreadPoolExecutor(opts.jobs) as pool:
            results = list(pool.map(lambda e: _logged(e, opts, supported), chosen))
        results = _merged(results_file, entries, results) if opts.only else results
        results_file.parent.mkdir(parents=True, exist_ok=True)
        results_file.write_text(json.dumps(results, indent=1) + "\n")
    print_table(entries, results)
    if opts.write_docs:
        write_docs(entries, results, ROOT / "docs" / "zoo.md")
    return 0


def _merged(results_file: Path, entries: list[dict], fresh: list[dict]) -> list[dict]:
    """`--only` replaces the chosen models' results in the saved ones and keeps the others (manifest order)."""
    saved = json.loads(results_file.read_text()) if results_file.exists() else []
    by_name = {r["name"]: r for r in saved} | {r["name"]: r for r in fresh}
    order = [e["name"] for e in entries]
    return sorted(by_name.values(), key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))


def _logged(entry, opts, supported) -> dict:
    start = time.monotonic()
    res = sweep_model(entry, opts, supported)
    res["seconds"] = round(time.monotonic() - start, 1)
    print(f"# {entry['name']}: {res['seconds']} s", file=sys.stderr, flush=True)
    return res


if __name__ == "__main__":
    os.environ.setdefault("NO_COLOR", "1")
    sys.exit(main())
