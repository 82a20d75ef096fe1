#!/usr/bin/env python3
"""Seeded fuzzer for kpuc's readers: mutate real models and run each through the command line.

    python bench/fuzz.py --format {tflite,onnx,kv3,kv4} --cases N [--seed S] [--timeout 30] [--mem-gib 2]

Seeds are the models in ../shared (or $KPUC_SHARED) and models/, plus a few small ONNX graphs
built here. A case applies 1-3 mutations: byte-level for every format (bit flips, boundary
values, truncation, duplicated chunks) and, for ONNX, protobuf-level ones (dims, attributes,
rewired inputs, op types, opsets, dtypes). Each case runs `cli.main([...])` in a forked child
with an address-space limit and a time limit, and is classified as

    ok        exit 0/1 (the command answered)
    clean     exit 2 with one `kpuc: error:` line
    internal  exit 3 (a kpuc bug; reported with the exception site)
    hang      no answer within the time limit
    oom       out of memory under the address-space cap
    crash     killed by a signal, another exit status, or a messy error

The same seed always gives the same cases. Prints counts per outcome and the first example of
each internal-error site, and with --save DIR writes those cases there to reproduce them.
"""
from __future__ import annotations

import argparse
import io
import os
import random
import resource
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OUTCOMES = ("ok", "clean", "internal", "hang", "oom", "crash")
BOUNDARY = {1: (0, 1, 0x7F, 0x80, 0xFF), 2: (0, 1, 0x7FFF, 0x8000, 0xFFFF),
            4: (0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x7FC00000, 0x7F800000)}


def shared_dir() -> Path:
    """The shared reference data: $KPUC_SHARED, else ../shared next to the checkout."""
    return Path(os.environ.get("KPUC_SHARED") or ROOT.parent / "shared")


# ------------------------------------------------------------------ seeds
# A v3 file starts with its version word; a v4 file with "LDMK" and then its version (kmodel-v3.md, -v4.md §3).
KMODEL_HEADS = {"kv3": (3).to_bytes(4, "little"), "kv4": b"LDMK" + (4).to_bytes(4, "little")}


def seed_files(fmt: str) -> list[tuple[str, bytes]]:
    """(name, bytes) of the seed models of `fmt`, small ones only (a case must run fast)."""
    shared = shared_dir()
    roots = [shared / "models", shared / "kmodels", shared / "golden", ROOT / "models"]
    suffix = {"tflite": ".tflite", "onnx": ".onnx", "kv3": ".kmodel", "kv4": ".kmodel"}[fmt]
    out = []
    for root in roots:
        if not root.is_dir():
            continue
        for p in sorted(root.rglob(f"*{suffix}")):
            if not p.is_file() or p.stat().st_size > 400_000:
                continue
            data = p.read_bytes()
            if fmt in KMODEL_HEADS and not data.startswith(KMODEL_HEADS[fmt]):
                continue
            out.append((p.name, data))
    if fmt == "onnx":
        out += built_onnx_seeds()
    return out


def built_onnx_seeds() -> list[tuple[str, bytes]]:
    """Small ONNX graphs covering the converters the corpus lacks (built, so no file is needed)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    def model(name, nodes, inputs, outputs, inits=(), opset=13):
        g = helper.make_graph(nodes, name, [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
                              [numpy_helper.from_array(np.asarray(a), n) for n, a in inits])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
        return (f"{name}.onnx", m.SerializeToString())

    rng = np.random.default_rng(0)
    w = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    return [
        model("conv_bn_relu_pool_gemm", [
            helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]),
            helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["n"], epsilon=1e-5),
            helper.make_node("Relu", ["n"], ["r"]),
            helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
            helper.make_node("Flatten", ["p"], ["f"]),
            helper.make_node("Gemm", ["f", "gw", "gb"], ["y"], transB=1)],
            [("x", [1, 3, 8, 8])], ["y"],
            [("w", w(4, 3, 3, 3)), ("b", w(4)), ("s", w(4)), ("bb", w(4)), ("m", w(4)),
             ("v", np.abs(w(4)) + 0.5), ("gw", w(10, 64)), ("gb", w(10))]),
        model("resize_pad_slice", [
            helper.make_node("Resize", ["x", "", "sc"], ["r"], mode="nearest"),
            helper.make_node("Pad", ["r", "pads"], ["p"], mode="constant"),
            helper.make_node("Slice", ["p", "st", "en", "ax"], ["y"])],
            [("x", [1, 2, 4, 4])], ["y"],
            [("sc", np.array([1, 1, 2, 2], np.float32)), ("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)),
             ("st", np.array([1, 1], np.int64)), ("en", np.array([9, 9], np.int64)), ("ax", np.array([2, 3], np.int64))]),
        model("matmul_tile_expand", [
            helper.make_node("MatMul", ["x", "mw"], ["m"]),
            helper.make_node("Tile", ["m", "rep"], ["t"]),
            helper.make_node("Expand", ["t", "shp"], ["y"])],
            [("x", [1, 2, 8])], ["y"],
            [("mw", w(8, 10)), ("rep", np.array([1, 2, 1], np.int64)), ("shp", np.array([3, 4, 10], np.int64))]),
        model("reshape_transpose_concat", [
            helper.make_node("Reshape", ["x", "shape"], ["r"]),
            helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
            helper.make_node("Concat", ["t", "t"], ["c"], axis=1),
            helper.make_node("Softmax", ["c"], ["y"], axis=-1)],
            [("x", [1, 4, 6])], ["y"], [("shape", np.array([1, 6, 4], np.int64))]),
        model("convtranspose_sigmoid_mul", [
            helper.make_node("ConvTranspose", ["x", "w"], ["c"], kernel_shape=[2, 2], strides=[2, 2]),
            helper.make_node("Sigmoid", ["c"], ["s"]),
            helper.make_node("Mul", ["c", "s"], ["u"]),
            helper.make_node("Squeeze", ["u", "ax"], ["y"])],
            [("x", [1, 2, 4, 4])], ["y"], [("w", w(2, 1, 2, 2)), ("ax", np.array([1], np.int64))]),
        model("dwconv_clip_add_gap", [
            helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=4),
            helper.make_node("Clip", ["c", "lo", "hi"], ["k"]),
            helper.make_node("Add", ["k", "x"], ["a"]),
            helper.make_node("GlobalAveragePool", ["a"], ["y"])],
            [("x", [1, 4, 6, 6])], ["y"],
            [("w", w(4, 1, 3, 3)), ("lo", np.array(0, np.float32)), ("hi", np.array(6, np.float32))]),
        model("shape_chain", [
            helper.make_node("Shape", ["x"], ["s"]),
            helper.make_node("ConstantOfShape", ["s"], ["z"]),
            helper.make_node("Add", ["x", "z"], ["a"]),
            helper.make_node("Range", ["r0", "r1", "r2"], ["rg"]),
            helper.make_node("Cast", ["rg"], ["rf"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["a", "rf"], ["y"])],
            [("x", [1, 4])], ["y"],
            [("r0", np.array(0, np.int64)), ("r1", np.array(4, np.int64)), ("r2", np.array(1, np.int64))]),
    ]


# ------------------------------------------------------------------ mutators
def mutate_bytes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One byte-level mutation and its label."""
    b = bytearray(data)
    if not b:
        return bytes(rng.randrange(256) for _ in range(16)), "random16"
    kind = rng.choice(("bitflip", "boundary", "boundary", "truncate", "dup", "insert", "zero"))
    if kind == "bitflip":
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
        return bytes(b), f"bitflip@{i}"
    if kind == "boundary":
        width = rng.choice((1, 2, 4))
        i = rng.randrange(max(1, len(b) - width + 1))
        v = rng.choice(BOUNDARY[width])
        b[i:i + width] = v.to_bytes(width, "little")
        return bytes(b[:max(len(data), i + width)]), f"boundary{width}@{i}={v:#x}"
    if kind == "truncate":
        n = rng.randrange(len(b))
        return bytes(b[:n]), f"truncate@{n}"
    if kind == "dup":
        i = rng.randrange(len(b))
        n = rng.randrange(1, 65)
        return bytes(b[:i] + b[i:i + n] + b[i:]), f"dup{n}@{i}"
    if kind == "insert":
        i = rng.randrange(len(b) + 1)
        return bytes(b[:i] + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9))) + b[i:]), f"insert@{i}"
    i = rng.randrange(len(b))
    n = rng.randrange(1, 17)
    b[i:i + n] = bytes(len(b[i:i + n]))
    return bytes(b), f"zero{n}@{i}"


def mutate_onnx(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One protobuf-level mutation of an ONNX model (falls back to bytes when it does not parse)."""
    import onnx
    try:
        m = onnx.ModelProto.FromString(data)
    except Exception:
        return mutate_bytes(data, rng)
    g = m.graph
    odd_ints = (0, -1, -2, 1, 2, 3, 7, 1 << 20, 1 << 31, -(1 << 31), 16777216)
    kinds = ["input_dim", "init_dim", "attr", "rewire", "op_type", "opset", "init_dtype", "dup_node",
             "swap_nodes", "dup_output", "drop_node", "empty_input", "attr_kind"]
    kind = rng.choice(kinds)
    label = kind
    if kind == "input_dim" and g.input:
        vi = rng.choice(list(g.input))
        dims = vi.type.tensor_type.shape.dim
        if dims:
            d = rng.choice(list(dims))
            d.dim_value = rng.choice(odd_ints[:9] + (10 ** 9,))
    elif kind == "init_dim" and g.initializer:
        t = rng.choice(list(g.initializer))
        if t.dims:
            t.dims[rng.randrange(len(t.dims))] = rng.choice(odd_ints)
    elif kind == "attr":
        nodes = [n for n in g.node if n.attribute]
        if nodes:
            a = rng.choice(list(rng.choice(nodes).attribute))
            label = f"attr {a.name}"
            if a.ints:
                a.ints[rng.randrange(len(a.ints))] = rng.choice(odd_ints)
            elif a.type == onnx.AttributeProto.INT:
                a.i = rng.choice(odd_ints)
            elif a.type == onnx.AttributeProto.FLOAT:
                a.f = rng.choice((float("nan"), float("inf"), -1.0, 0.0, 1e30))
            elif a.type == onnx.AttributeProto.STRING:
                a.s = rng.choice((b"", b"bogus", b"\xff\xfe"))
    elif kind == "rewire" and g.node:
        n = rng.choice(list(g.node))
        names = [i.name for i in g.input] + [t.name for t in g.initializer] + [o for x in g.node for o in x.output] + [""]
        if n.input:
            n.input[rng.randrange(len(n.input))] = rng.choice(names)
        else:
            n.input.append(rng.choice(names))
    elif kind == "op_type" and g.node:
        n = rng.choice(list(g.node))
        n.op_type = rng.choice(("Conv", "Relu", "Reshape", "Tile", "Expand", "Slice", "Split", "Squeeze", "Gather",
                                "Resize", "Pad", "Concat", "MaxPool", "Gemm", "Softmax", "Range", "ConstantOfShape",
                                "Transpose", "ReduceMean", "If", "Loop", "\u2603"))
        label = f"op_type {n.op_type}"
    elif kind == "opset" and m.opset_import:
        m.opset_import[0].version = rng.choice((1, 6, 7, 9, 10, 11, 13, 18, 22, 99, -1))
    elif kind == "init_dtype" and g.initializer:
        rng.choice(list(g.initializer)).data_type = rng.choice((0, 2, 7, 8, 10, 16, 33, 99))
    elif kind == "dup_node" and g.node:
        g.node.append(rng.choice(list(g.node)))
    elif kind == "swap_nodes" and len(g.node) > 1:
        i, j = rng.sample(range(len(g.node)), 2)
        a, b = onnx.NodeProto(), onnx.NodeProto()
        a.CopyFrom(g.node[i])
        b.CopyFrom(g.node[j])
        g.node[i].CopyFrom(b)
        g.node[j].CopyFrom(a)
    elif kind == "dup_output" and g.output:
        g.output.append(rng.choice(list(g.output)))
    elif kind == "drop_node" and g.node:
        del g.node[rng.randrange(len(g.node))]
    elif kind == "empty_input" and g.node:
        n = rng.choice(list(g.node))
        if n.input:
            n.input[rng.randrange(len(n.input))] = ""
    elif kind == "attr_kind":
        nodes = [n for n in g.node if n.attribute]
        if nodes:
            a = rng.choice(list(rng.choice(nodes).attribute))
            a.type = rng.choice((onnx.AttributeProto.GRAPH, onnx.AttributeProto.INT, onnx.AttributeProto.FLOAT,
                                 onnx.AttributeProto.INTS, onnx.AttributeProto.UNDEFINED))
            label = f"attr_kind {a.name}"
    try:
        return m.SerializeToString(), label
    except Exception:
        return mutate_bytes(data, rng)


def make_case(fmt: str, seeds: list[tuple[str, bytes]], rng: random.Random) -> tuple[str, bytes, list[str]]:
    name, data = rng.choice(seeds)
    labels = []
    for _ in range(rng.choice((1, 1, 2, 3))):
        if fmt == "onnx" and rng.random() < 0.6:
            data, label = mutate_onnx(data, rng)
        else:
            data, label = mutate_bytes(data, rng)
        labels.append(label)
    return name, data, labels


def commands(fmt: str, model: Path, work: Path, rng: random.Random) -> list[str]:
    """The kpuc command line one case runs (chosen by the case's own random stream)."""
    if fmt in ("onnx", "tflite"):
        return rng.choice((["info", str(model)], ["check", str(model), "--kmodel-version", "4", "--format", "json"],
                           ["check", str(model)],
                           ["compile", str(model), str(work / "out.kmodel"), "--inference-type", "float"]))
    ds = work / "in.bin"
    ds.write_bytes(bytes(rng.choice((16, 1024, 4 * 4 * 3 * 4, 230400))))
    return rng.choice((["inspect", str(model)], ["inspect", "--json", str(model)],
                       ["infer", str(model), str(work / "out"), "--dataset", str(ds), "--dataset-format", "raw"]))


# ------------------------------------------------------------------ running one case
@dataclass
class Result:
    outcome: str
    detail: str
    rss_kib: int = 0  # the child's peak resident set (ru_maxrss)


def run_case(argv: list[str], timeout: float, mem_bytes: int) -> Result:
    """Run cli.main(argv) in a forked child under the limits and classify how it ended."""
    import cli  # imported in the parent once, so each fork starts warm
    err = tempfile.TemporaryFile()
    pid = os.fork()
    if pid == 0:  # child
        code = 70
        try:
            resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(err.fileno(), 2)
            sys.stdout, sys.stderr = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False)), \
                io.TextIOWrapper(os.fdopen(2, "wb", closefd=False))
            try:
                cli.main(argv)
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except MemoryError:
                code = 71
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.01)
    else:
        os.kill(pid, signal.SIGKILL)
        _, _, usage = os.wait4(pid, 0)
        return Result("hang", f"no answer in {timeout:g} s", usage.ru_maxrss)
    rss = usage.ru_maxrss
    err.seek(0)
    text = err.read().decode("utf-8", "replace")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    if os.WIFSIGNALED(status):
        return Result("crash", f"signal {os.WTERMSIG(status)}", rss)
    code = os.WEXITSTATUS(status)
    if code in (0, 1):
        return Result("ok", "", rss)
    if code == 71 or "out of memory" in last:
        return Result("oom", last[:200], rss)
    if code == 3:
        return Result("internal", last[:300], rss)
    if code == 2 and len(lines) == 1 and lines[0].startswith("kpuc: error:"):
        return Result("clean", last[:200], rss)
    return Result("crash", f"exit {code}, {len(lines)} stderr lines: {last[:200]}", rss)


def warm_imports() -> None:
    """Import in the parent what the commands import lazily, so each forked case starts warm (without
    this, every case pays kpuc's whole start-up again: most of its time)."""
    import cli  # noqa: F401
    import compiler.datasets  # noqa: F401
    import compiler.executor  # noqa: F401
    import compiler.importers  # noqa: F401
    import compiler.importers.onnx  # noqa: F401
    import compiler.importers.tflite  # noqa: F401
    import compiler.pipeline  # noqa: F401
    import compiler.progress  # noqa: F401
    import targets.k210.check  # noqa: F401
    import targets.k210.kmodel  # noqa: F401
    import targets.k210.target  # noqa: F401
    from targets import get_target
    get_target("k210")


def site_of(detail: str) -> str:
    """The `Type at file:line` of an internal error line (the grouping key)."""
    head = detail.removeprefix("kpuc: internal error: ")
    return head.split(": ", 1)[0]


def campaign(fmt: str, cases: int, seed: int, timeout: float = 30.0, mem_gib: float = 2.0,
             save: Path | None = None, quiet: bool = False) -> dict:
    """Run `cases` cases; returns {"counts": {outcome: n}, "examples": {key: (seed model, mutations, argv, detail)},
    "peak_rss_kib": the largest peak RSS of any case, "slowest_s": the longest case}."""
    warm_imports()
    seeds = seed_files(fmt)
    if not seeds:
        raise SystemExit(f"no {fmt} seed models found (looked in {shared_dir()} and {ROOT / 'models'})")
    counts = dict.fromkeys(OUTCOMES, 0)
    examples: dict[str, tuple] = {}
    peak_rss, peak_case, slowest = 0, None, 0.0
    suffix = {"tflite": ".tflite", "onnx": ".onnx"}.get(fmt, ".kmodel")
    with tempfile.TemporaryDirectory(prefix="kpucfuzz") as tmp:
        for k in range(cases):
            rng = random.Random(f"{seed}:{fmt}:{k}")
            name, data, labels = make_case(fmt, seeds, rng)
            work = Path(tmp) / f"case{k}"
            work.mkdir()
            model = work / f"case{suffix}"
            model.write_bytes(data)
            argv = commands(fmt, model, work, rng)
            began = time.monotonic()
            r = run_case(argv, timeout, int(mem_gib * (1 << 30)))
            slowest = max(slowest, time.monotonic() - began)
            if r.rss_kib > peak_rss:
                peak_rss, peak_case = r.rss_kib, (k, name, labels, [a.replace(str(work), "<case>") for a in argv])
                if save and r.rss_kib > 1 << 20:   # over 1 GiB: keep the case to reproduce it
                    save.mkdir(parents=True, exist_ok=True)
                    (save / f"{fmt}_{seed}_{k}_rss{suffix}").write_bytes(data)
            counts[r.outcome] += 1
            if r.outcome not in ("ok", "clean"):
                key = f"{r.outcome}: {site_of(r.detail) if r.outcome == 'internal' else r.detail[:80]}"
                if key not in examples:
                    examples[key] = (name, labels, [a.replace(str(work), "<case>") for a in argv], r.detail, k)
                    if save:
                        save.mkdir(parents=True, exist_ok=True)
                        (save / f"{fmt}_{seed}_{k}{suffix}").write_bytes(data)
                    if not quiet:
                        print(f"  case {k}: {key}\n    {name} {labels} {' '.join(argv[:1])}\n    {r.detail}", flush=True)
            _rmtree(work)
    return {"counts": counts, "examples": examples, "peak_rss_kib": peak_rss, "peak_case": peak_case,
            "slowest_s": slowest}


def _rmtree(path: Path) -> None:
    import shutil
    shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--format", required=True, choices=("tflite", "onnx", "kv3", "kv4"))
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--seed", type=int, default=None, help="default: the clock (printed)")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per case")
    ap.add_argument("--mem-gib", type=float, default=2.0, help="address-space limit per case")
    ap.add_argument("--save", type=Path, help="write the first case of each failure class here")
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else int(time.time())
    print(f"fuzz {a.format}: {a.cases} cases, seed {seed}", flush=True)
    start = time.monotonic()
    res = campaign(a.format, a.cases, seed, a.timeout, a.mem_gib, a.save)
    print(f"{time.monotonic() - start:.0f} s: " + ", ".join(f"{k} {v}" for k, v in res["counts"].items()))
    print(f"peak RSS of any case {res['peak_rss_kib'] / 1024:.0f} MiB (case {res['peak_case'][0]}: "
          f"{res['peak_case'][1]} {res['peak_case'][2]} kpuc {' '.join(res['peak_case'][3])}), "
          f"slowest case {res['slowest_s']:.1f} s")
    for key, (name, labels, argv, detail, k) in res["examples"].items():
        print(f"{key}\n    case {k}: {name} {labels}: kpuc {' '.join(argv)}\n    {detail}")


if __name__ == "__main__":
    main()
