"""Benchmark: time `kpuc compile` (with calibration) and `kpuc infer` per sample, and their peak memory;
optionally beside nncase 1.9 compiling the same model on the same calibration images.

    .venv/bin/python bench/bench_compile.py [--versions 3 4] [--models ...]
    .venv/bin/python bench/bench_compile.py --versions 4 --models mobilenet_v1_0.25_128 ulffd_landmark \\
        --nncase-python /path/to/nncase-1.9-venv/bin/python          # or $KPUC_NNCASE_PYTHON

Runs the real command line in child processes (so peak RSS is the child's own), on the sample model,
mobilenet_v1_0.25_128 and ulffd_landmark (the golden's own compile command). kpuc's time is its whole
process (start-up, imports, calibration, writing the file), with its bytecode compiled beforehand as in an
installation (PYTHONDONTWRITEBYTECODE would add ~0.2 s of recompiling to every start).

With an nncase 1.x Python (never a kpuc dependency: a separate venv with `nncase` installed), each
TFLite model is also compiled by nncase in a child process running this file with --nncase-child:
PTQ for target k210, uint8, on the very tensors kpuc calibrates with (kpuc's own image loader, mean and
std, transposed to the model's NHWC), timed in-process from `nncase.Compiler(...)` to
`gencode_tobytes()` (nncase's whole compile, not its interpreter start-up). The ratio column is
kpuc / nncase. A benchmark, not a test: nothing here asserts a time.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("KPUC_SHARED", ROOT.parent / "shared"))
KPUC = [sys.executable, "-c", "import cli; cli.main()"]
NNCASE_ENV = "KPUC_NNCASE_PYTHON"

MODELS = {
    "digits_cnn": (ROOT / "models/digits_cnn.onnx", ROOT / "models/digits", []),
    "mobilenet_v1_0.25_128": (SHARED / "models/tflite-ops/mobilenet_v1_0.25_128.tflite",
                              SHARED / "golden/ulffd_landmark-v4/dataset",
                              ["--input-mean", "0.5", "--input-std", "0.5"]),
    "ulffd_landmark": (SHARED / "golden/ulffd_landmark-v4/ulffd_landmark.tflite",
                       SHARED / "golden/ulffd_landmark-v4/dataset", ["--input-mean", "0.5", "--input-std", "1"]),
}


def installed_env() -> dict:
    """The environment of a kpuc child: an installed kpuc's modules are compiled once (pip writes their .pyc),
    so PYTHONDONTWRITEBYTECODE, which would recompile every module on every start, is dropped."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def compile_sources() -> None:
    """Write kpuc's bytecode before timing (gitignored __pycache__ folders), as an installation has it."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", *(str(ROOT / p) for p in ("cli.py", "compiler", "passes",
                                                                                       "targets"))],
                   env=installed_env(), check=True, stdout=subprocess.DEVNULL)


def run(args: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one child process running kpuc."""
    start = time.perf_counter()
    proc = subprocess.Popen(KPUC + args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=installed_env())
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"kpuc {' '.join(args)} failed: {proc.stderr.read().decode().strip()}")
    return seconds, usage.ru_maxrss * 1024  # Linux reports KiB


def best_of(repeat: int, measure, *args):
    """The fastest of `repeat` calls of measure(*args) (tuples whose first item is seconds): the one least
    disturbed by other processes on a busy machine."""
    return min((measure(*args) for _ in range(max(1, repeat))), key=lambda m: m[0])


# ------------------------------------------------------------------ nncase 1.x side by side
def calibration_tensors(model: Path, dataset: Path, extra: list[str], folder: Path) -> Path:
    """The float32 tensors kpuc calibrates `model` with, as one NHWC .npy for nncase (N samples stacked)."""
    import numpy as np

    sys.path.insert(0, str(ROOT))       # this worktree's kpuc, not an installed one
    from compiler.datasets import iter_dataset
    from compiler.importers import import_model
    value = dict(zip(extra[::2], extra[1::2]))
    shape = import_model(model, None).inputs[0].shape
    samples = [s.data for s in iter_dataset(dataset, shape, mean=float(value.get("--input-mean", 0.0)),
                                            std=float(value.get("--input-std", 1.0)))]
    path = folder / f"{model.stem}.calib.npy"
    np.save(path, np.stack([np.asarray(s, np.float32).transpose(0, 2, 3, 1) for s in samples]))
    return path


def run_nncase(python: str, model: Path, calib: Path, out: Path) -> tuple[float, float, int]:
    """(in-process compile seconds, child wall seconds, child peak RSS bytes) of nncase 1.x."""
    start = time.perf_counter()
    proc = subprocess.Popen([python, str(Path(__file__).resolve()), "--nncase-child", str(model), str(calib),
                             str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=out.parent)       # nncase writes a kmodel_info.txt into its working directory
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"nncase on {model.name} failed: {proc.stderr.read().decode().strip()[-300:]}")
    return json.loads(proc.stdout.read().decode().strip().splitlines()[-1])["seconds"], wall, usage.ru_maxrss * 1024


def nncase_compile(model_file: str, calibration, layout: str = "NHWC") -> tuple[bytes, float]:
    """Inside an nncase 1.x venv: PTQ-compile a TFLite or ONNX model for the K210 (uint8, float in and out)
    on `calibration` (samples stacked on a new first axis); returns the kmodel and the in-process seconds."""
    import nncase
    import numpy as np
    start = time.perf_counter()
    options = nncase.CompileOptions()
    options.target, options.quant_type = "k210", "uint8"
    options.input_type = options.output_type = "float32"
    options.input_layout = options.output_layout = layout
    compiler = nncase.Compiler(options)
    content = Path(model_file).read_bytes()
    if model_file.endswith(".onnx"):
        compiler.import_onnx(content, nncase.ImportOptions())
    else:
        compiler.import_tflite(content, nncase.ImportOptions())
    ptq = nncase.PTQTensorOptions()
    ptq.samples_count = len(calibration)
    ptq.set_tensor_data(np.ascontiguousarray(calibration).tobytes())
    compiler.use_ptq(ptq)
    compiler.compile()
    kmodel = compiler.gencode_tobytes()
    return kmodel, time.perf_counter() - start


def nncase_child(model: str, calib: str, out: str) -> None:
    """Inside the nncase venv: PTQ-compile `model` for the K210 on the tensors of `calib`, print the time."""
    import numpy as np
    kmodel, seconds = nncase_compile(model, np.load(calib))   # calib: [N, 1, H, W, C] float32
    Path(out).write_bytes(kmodel)
    print(json.dumps({"seconds": seconds, "bytes": len(kmodel)}))


# ------------------------------------------------------------------ main
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--versions", nargs="+", type=int, default=[3, 4])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--no-infer", action="store_true", help="time compile only")
    ap.add_argument("--kpuc-flags", default="", help="extra `kpuc compile` flags, e.g. '--no-auto-precision'")
    ap.add_argument("--repeat", type=int, default=1, help="run each compile N times and keep the best (noisy machines)")
    ap.add_argument("--nncase-python", default=os.environ.get(NNCASE_ENV),
                    help=f"a Python with nncase 1.x to time beside kpuc (default ${NNCASE_ENV})")
    ap.add_argument("--nncase-child", nargs=3, metavar=("MODEL", "CALIB", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.nncase_child:
        return nncase_child(*a.nncase_child)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs"
          + (f", best of {a.repeat}" if a.repeat > 1 else ""))
    nn = bool(a.nncase_python)
    print(f"{'model':24} {'v':>2} {'compile s':>10} {'compile MiB':>12} "
          + (f"{'nncase s':>9} {'ratio':>6} {'nncase proc s':>14} " if nn else "")
          + f"{'infer s/sample':>15} {'infer MiB':>10} {'kmodel B':>10}")
    compile_sources()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in a.models:
            model, dataset, extra = MODELS[name]
            samples = sorted(p for p in dataset.iterdir() if p.is_file())
            calib = calibration_tensors(model, dataset, extra, tmp) if nn and model.suffix == ".tflite" else None
            for version in a.versions:
                out = tmp / f"{name}.v{version}.kmodel"
                try:
                    c_s, c_rss = best_of(a.repeat, run, ["compile", str(model), str(out), "--kmodel-version",
                                                          str(version), "--dataset", str(dataset), *extra,
                                                          *a.kpuc_flags.split()])
                except SystemExit as e:
                    print(f"{name:24} {version:>2} {str(e)[:80]}")
                    continue
                line = f"{name:24} {version:>2} {c_s:10.2f} {c_rss / 2**20:12.1f} "
                if nn:
                    if calib is None:
                        line += f"{'-':>9} {'-':>6} {'-':>14} "
                    else:
                        n_s, n_wall, _ = best_of(a.repeat, run_nncase, a.nncase_python, model, calib,
                                                 tmp / f"{name}.nncase.kmodel")
                        line += f"{n_s:9.2f} {c_s / n_s:6.2f} {n_wall:14.2f} "
                if a.no_infer:
                    print(line + f"{'-':>15} {'-':>10} {out.stat().st_size:10,}")
                    continue
                outdir = tmp / "out"
                shutil.rmtree(outdir, ignore_errors=True)
                i_s, i_rss = run(["infer", str(out), str(outdir), "--dataset", str(dataset)])
                print(line + f"{i_s / len(samples):15.3f} {i_rss / 2**20:10.1f} {out.stat().st_size:10,}")


if __name__ == "__main__":
    main()
