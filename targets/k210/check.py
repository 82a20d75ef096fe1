"""`kpuc check`: will this model run on a K210, and if not, everything that stops it, in one run.

The report is read off the real compile, run in memory (compiler/pipeline.py): import, generic passes,
K210 legalization, calibration, quantization once, then lowering for each requested kmodel version.
Placement and reasons come from the graphs the passes produced (meta["source"], meta["kpu_rewrites"],
meta["why_not_kpu"]); KPU RAM and main memory come from the compiled bytes through the functions
`kpuc inspect` uses (describe_kmodel), so the two never disagree. Without --dataset, calibration runs on
a few seeded synthetic inputs: placement, memory and size do not depend on the ranges, only the
accuracy of the result would. MACs are counted from shapes (multiply-accumulates of convs and matmuls).

The result is one JSON-friendly dict (docs/check-schema.json); `format_text` renders it for a terminal.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from compiler.errors import Blocker, CannotLower, KpucError, UnsupportedOps
from compiler.ir import Graph, Node
from compiler.pipeline import CompileOptions, optimize_generic, output_threshold, prepare_float, quantize
from targets.k210.check_hints import compile_hint, cpu_hint, cut_hint, unsupported_hint
from targets.k210.check_text import format_text  # noqa: F401  (the terminal rendering, re-exported)
from targets.k210.constraints import kpu_pool_type, why_not_kpu, why_not_kpu_layer
from targets.k210.kmodel import describe_kmodel, read_kmodel
from targets.k210.kpu_layout import KPU_RAM_BYTES, KPU_ROW_BYTES, kpu_rows
from targets.k210.legalize import cpu_fallbacks
from targets.k210.ops import HOST_ONLY
from targets.k210.passes.mark_small_outputs_float import mark_small_outputs_float
from targets.k210.target import K210

SCHEMA_VERSION = 1
MIB = 1024 * 1024
# Main memory a kmodel may use (working memory + the model file the runtime keeps in RAM). The K210 has
# 6 MiB of general SRAM; MaixPy documents about 3-4 MiB free with the mini firmware, about 2 MiB with the
# full one (MaixPy docs, "kmodel memory").
FIRMWARE = {
    "c-sdk": (6 * MIB, "K210 C SDK: about 6 MiB of main SRAM"),
    "maixpy-mini": (int(3.5 * MIB), "MaixPy mini firmware: 3-4 MiB documented, 3.5 MiB used"),
    "maixpy-full": (2 * MIB, "MaixPy full firmware: about 2 MiB"),
}
SYNTHETIC_COUNT, SYNTHETIC_SEED = 4, 0
SYNTHETIC_NOTE = ("calibrated on {n} seeded synthetic inputs (uniform [0, 1), seed {seed}): placement, memory "
                  "and size do not depend on the ranges; pass --dataset for the accuracy report")
REWRITES = {   # legalization pass -> what the report calls it
    "insert_pad_crop_for_kpu_conv2d": "pad/crop",
    "decompose_conv2d_stride": "stride decomposition",
    "decompose_conv2d_dilation": "SpaceToBatch",
    "matmul_to_kpu_conv2d": "MatMul as 1x1 conv",
    "conv2d_transpose_to_kpu_conv2d": "transposed conv as zero insertion + conv",
}
CONV_LIKE = ("conv2d", "conv2d_transpose", "matmul")


@dataclass(frozen=True)
class CheckOptions:
    """The subset of compile's flags that changes placement, plus check's own."""
    input_format: str | None = None
    versions: tuple[int, ...] = (3, 4)
    dataset: str | None = None
    dataset_format: str = "image"
    input_mean: float | None = None
    input_std: float | None = None
    firmware: str = "c-sdk"
    weights_quantize_threshold: float = 64.0
    output_quantize_threshold: int | None = None      # None: compiler.pipeline.output_threshold
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    output_tensors: tuple[str, ...] = ()

    @property
    def import_options(self) -> dict:
        """The importer's keyword arguments: pinned input shapes and the output cut."""
        return dict(input_shapes=self.input_shapes, output_tensors=self.output_tensors)

    def compile_options(self, version: int = 4):
        """The CompileOptions `kpuc compile` would get. On synthetic inputs the data-aware refinements
        (bias correction, weight rounding) are off: they change weight values, never sizes or placement."""
        kw = dict(input_format=self.input_format, kmodel_version=version, dataset=self.dataset,
                  dataset_format=self.dataset_format, input_mean=self.input_mean, input_std=self.input_std,
                  weights_quantize_threshold=self.weights_quantize_threshold,
                  output_quantize_threshold=self.output_quantize_threshold, **self.import_options)
        if not self.dataset:
            kw.update(bias_correction=False, weight_rounding=False)
        return CompileOptions(**{k: v for k, v in kw.items() if k in CompileOptions.__dataclass_fields__})


@dataclass
class CheckResult:
    doc: dict                                           # the report (docs/check-schema.json)
    kmodels: dict[int, bytes] = field(default_factory=dict)
    samples: list = field(default_factory=list)          # the calibration inputs used

    @property
    def exit_code(self) -> int:
        return self.doc["exit_code"]


def firmware_budget(value: str) -> tuple[str, int, str]:
    """(name, bytes, note) for --firmware: a known firmware or a number of bytes."""
    if value in FIRMWARE:
        return (value, *FIRMWARE[value])
    if re.fullmatch(r"\d+", value.strip()):
        return ("custom", int(value), f"{int(value):,} bytes given with --firmware")
    raise KpucError(f"--firmware {value!r}: expected {', '.join(FIRMWARE)} or a number of bytes")


def synthetic_samples(shape, *, count: int = SYNTHETIC_COUNT, seed: int = SYNTHETIC_SEED,
                      mean: float | None = None, std: float | None = None) -> list[np.ndarray]:
    """Seeded uniform [0, 1) inputs, then (x - mean) / std like an image dataset."""
    rng = np.random.default_rng(seed)
    mean, std = 0.0 if mean is None else mean, 1.0 if std is None else std
    return [((rng.random(shape, dtype=np.float32) - mean) / std).astype(np.float32) for _ in range(count)]


# ---------------------------------------------------------------- the ops table
def macs(node: Node) -> int:
    """Multiply-accumulates of a conv or matmul, from its shapes (0 for other ops)."""
    if node.op == "conv2d":
        o, cg, kh, kw = node.inputs[1].shape
        return node.output.type.size * cg * kh * kw
    if node.op == "conv2d_transpose":
        _, og, kh, kw = node.inputs[1].shape
        return node.inputs[0].type.size * og * kh * kw
    if node.op == "matmul":
        return node.output.type.size * node.inputs[0].shape[-1]
    return 0


def detail(node: Node) -> str:
    """A short description of what the op does (kernel, stride, sub-op)."""
    a = node.attrs
    if node.op in ("conv2d", "conv2d_transpose"):
        kh, kw = node.inputs[1].shape[-2:]
        s = tuple(a["strides"])
        parts = [f"{kh}x{kw}"] + ([f"stride {s[0]}" if s[0] == s[1] else f"stride {s}"] if s != (1, 1) else [])
        if tuple(a["dilations"]) != (1, 1):
            parts.append(f"dilation {a['dilations'][0]}")
        g = a["groups"]
        if g != 1:
            parts.append("depthwise" if g == node.inputs[0].shape[1] == node.output.shape[1] else f"groups {g}")
        lo, hi = a["fused_clamp"]
        if (lo, hi) != (-math.inf, math.inf):
            parts.append("relu6" if (lo, hi) == (0, 6) else "relu" if lo == 0 and hi == math.inf else f"clamp {lo:g}..{hi:g}")
        return " ".join(parts)
    if node.op == "reduce_window2d":
        k, s = a["kernel"], a["strides"]
        return f"{a['op']} {k[0]}x{k[1]} stride {s[0]}"
    if node.op in ("unary", "binary", "reduce"):
        return a["op"]
    if node.op == "clamp":
        return f"{a['min']:g}..{a['max']:g}"
    return ""


def _op_rows(graph: Graph) -> list[dict]:
    """One row per computing node of the optimized float graph (before KPU legalization)."""
    rows = []
    for node in graph.nodes:
        if node.op in ("input", "constant"):
            continue
        rows.append({"index": len(rows), "name": node.name, "op": node.op, "detail": detail(node),
                     "inputs": [list(v.shape) for v in node.inputs if not v.is_constant],
                     "outputs": [list(v.shape) for v in node.outputs], "macs": macs(node),
                     "placement": "cpu", "rewrites": [], "fused_into": None, "reason": None, "hint": None,
                     "kpu_ram_bytes": None,
                     "_producer": next((v.producer.name for v in node.inputs if not v.is_constant), None)})
    return rows


def _kpu_layer_ram(node: Node) -> int:
    """KPU RAM one layer needs while it runs: its input and output maps, every batch (kpu.md §10)."""
    n, c, h, w = node.inputs[0].shape
    _, oc, oh, ow = node.output.shape
    return n * (kpu_rows(c, h, w) + kpu_rows(oc, oh, ow)) * KPU_ROW_BYTES


def _place(rows: list[dict], legal: Graph, final: Graph | None) -> None:
    """Fill placement, rewrites, reasons and hints from the legalized and the quantized graphs."""
    kpu = {}                                     # source node name -> KPU layer (last graph that has them)
    for n in legal.nodes_of("kpu_conv2d"):
        kpu[n.meta.get("source", n.name)] = n
    fallback = {}                                # source -> reason the quantizer kept a KPU layer in float
    if final is not None:
        placed = {n.meta.get("float_value") for n in final.nodes_of("kpu_conv2d_q")}
        reasons = {n.name: n.meta["why_not_kpu"] for n in final.nodes if "why_not_kpu" in n.meta}
        for src, n in list(kpu.items()):
            if n.output.name not in placed:
                v = n.output.name
                fallback[src] = reasons.get(f"{v}/conv2d", reasons.get(v, "kept in float by the quantizer"))
                del kpu[src]
        for n in final.nodes_of("kpu_conv2d_q"):
            src = n.meta.get("source")
            if src in kpu:
                kpu[src] = n
    cpu = {name: reason for name, _, reason in cpu_fallbacks(legal)}
    cpu.update({n.meta["source"]: n.meta["why_not_kpu"] for n in legal.nodes_of(*CONV_LIKE)
                if "source" in n.meta and "why_not_kpu" in n.meta})
    by_name = {r["name"]: r for r in rows}
    legal_nodes = {n.name: n for n in legal.nodes}
    for r in rows:
        name, op = r["name"], r["op"]
        if name in kpu:
            layer = kpu[name]
            rw = [REWRITES.get(p, p) for p in dict.fromkeys(layer.meta.get("kpu_rewrites", ()))]
            r.update(placement="kpu_after_rewrite" if rw else "kpu", rewrites=rw, kpu_ram_bytes=_kpu_layer_ram(layer))
            continue
        if op in CONV_LIKE:
            reason = fallback.get(name) or cpu.get(name) or "no K210 legalization rule matched it"
            r.update(placement="cpu", reason=reason)
            continue
        node = legal_nodes.get(name)
        if node is not None and node.op == op:
            reason = why_not_kpu(node)
            if reason is None:               # an activation or pool the KPU could take, not after a KPU layer
                prod = node.inputs[0].producer
                pool = node.op == "reduce_window2d" and prod.op == "kpu_conv2d"
                why = pool and why_not_kpu_layer(prod.inputs[0].shape, prod.inputs[1].shape[0],
                                                 prod.inputs[1].shape[-1],
                                                 depthwise=prod.attrs["depthwise"],
                                                 pool=_pool_type(node))
                reason = why or (f"runs on the KPU only fused into the layer before it; its input comes from "
                                 f"{prod.op} '{prod.name}'" + (" (not a KPU layer)" if prod.op != "kpu_conv2d"
                                                               else " (already has its activation/pool or other users)"))
            r.update(placement="cpu", reason=reason)
            continue
        owner = _fused_owner(r, by_name)
        if owner in kpu:
            r.update(placement="kpu_fused", fused_into=owner)
        elif owner in fallback:
            r.update(placement="cpu", reason=f"part of '{owner}', which stays on the CPU: {fallback[owner]}")
        else:
            r.update(placement="cpu", reason="rewritten by the K210 legalization into other CPU ops")
    for r in rows:
        if r["placement"] == "cpu":
            r["hint"] = cpu_hint(r)


def _pool_type(node: Node) -> str:
    return kpu_pool_type(node) or "bypass"


def _fused_owner(row: dict, by_name: dict) -> str | None:
    """The conv (or matmul) a vanished activation/pool/bias follows: the layer it was fused into."""
    seen, name = set(), row["_producer"]
    while name in by_name and name not in seen:
        seen.add(name)
        if by_name[name]["op"] in CONV_LIKE:
            return name
        name = by_name[name]["_producer"]
    return None


# ---------------------------------------------------------------- per version
def _memory(version: int, data: bytes, summary: dict) -> dict:
    """KPU RAM and main memory as `kpuc inspect` shows them for these bytes."""
    d = describe_kmodel(read_kmodel(data))
    m = d["memory"]
    if version == 3:   # nncase prints (32768 - max_start_address) * 64 as "KPU memory usage"
        kpu, working = m["kpu_rows_reserved"] * KPU_ROW_BYTES, m["main_mem_usage"]
        layers = d["layers"]
        kpu_layers = sum(row["type"] == "K210Conv" for row in layers)
    else:
        kpu, working = m["kpu"]["used"], m["main"]["size"]
        layers = d["nodes"]
        kpu_layers = sum(row["op"] == "kpu_conv2d" for row in layers)
    live = summary.get("kpu_ram_peak", kpu)
    return {"kpu_ram_bytes": kpu, "kpu_ram_live_peak_bytes": live, "working_memory_bytes": working,
            "kmodel_bytes": len(data), "main_memory_bytes": working + len(data),
            "layers": len(layers), "kpu_layers": kpu_layers, "cpu_layers": len(layers) - kpu_layers}


def _over_budget(version: int, mem: dict, budget_name: str, budget: int) -> str:
    return (f"kmodel v{version} needs {mem['main_memory_bytes']:,} B of main memory "
            f"({mem['working_memory_bytes']:,} working + {mem['kmodel_bytes']:,} model), more than "
            f"the {budget_name} budget of {budget:,} B")


def budget_problem(version: int, data: bytes, summary: dict, firmware: str) -> str | None:
    """`kpuc check`'s over-budget error for these kmodel bytes under --firmware, None when they fit."""
    name, budget, _ = firmware_budget(firmware)
    mem = _memory(version, data, summary)
    return None if mem["main_memory_bytes"] <= budget else _over_budget(version, mem, name, budget)


def _blockers(error: KpucError, graph: Graph) -> list[dict]:
    """The blockers a lowering error carries (CannotLower lists every op that stops the version). A blocker
    about a node but no op takes the op the quantized graph has under that name."""
    blockers = error.blockers if isinstance(error, CannotLower) else [Blocker(None, None, str(error))]
    ops = {n.name: n.op for n in graph.nodes}
    rows = []
    for b in blockers:
        node = b.node if b.op is not None or b.node in ops else None
        op = b.op if b.op is not None else ops.get(node)
        rows.append({"node": node, "op": op, "reason": HOST_ONLY.get(op, b.reason)})
    return rows


def _source(name: str | None, final: Graph, legal: Graph | None, rows: list[dict]) -> str | None:
    """The ops-table row a node of the quantized graph computes (its name, `_q` or meta["float_value"])."""
    names = {r["name"] for r in rows}
    if name is None:
        return None
    for cand in (name, name.removesuffix("_q")):
        if cand in names:
            return cand
    node = next((n for n in final.nodes if n.name in (name, name.removesuffix("_q"))), None)
    value = node.meta.get("float_value") if node is not None else None
    if value in names:
        return value
    producer = next((n for n in legal.nodes if any(v.name == value for v in n.outputs)), None) if legal else None
    src = producer.meta.get("source") if producer is not None else None
    return src if src in names else None


# ---------------------------------------------------------------- the report
def check_model(path, opts: CheckOptions = CheckOptions()) -> CheckResult:
    """Run the compile in memory for every requested version and report what fits and why not."""
    from compiler.importers import summarize_model
    path = Path(path)
    budget_name, budget, budget_note = firmware_budget(opts.firmware)
    if not set(opts.versions) <= {3, 4} or not opts.versions:
        raise KpucError(f"--kmodel-version: 3, 4 or both, not {opts.versions}")
    summary = summarize_model(path, opts.input_format, **opts.import_options)
    doc = {
        "schema_version": SCHEMA_VERSION, "kpuc_version": _kpuc_version(), "model": str(path),
        "format": summary.format,
        "inputs": [{"name": n, "shape": list(s), "dtype": d} for n, s, d in summary.inputs],
        "outputs": [{"name": n, "shape": list(s), "dtype": d} for n, s, d in summary.outputs],
        "requested_versions": list(opts.versions),
        "firmware": {"name": budget_name, "budget_bytes": budget, "note": budget_note},
        "limits": {"kpu_ram_bytes": _kpu_ram_limit()},
        "calibration": None, "ops": [], "unsupported": [], "kpu": None, "versions": [],
        "sensitivity": None, "problems": [], "notes": [],
    }
    result = CheckResult(doc)
    if summary.unsupported:
        cut = ",".join(summary.cut_suggestion)
        doc["unsupported"] = [{"op": p.op_type, "node": p.node, "reason": p.reason,
                               "hint": cut_hint(cut) if cut else unsupported_hint(p.op_type, summary.format)}
                              for p in summary.unsupported]
        if cut:
            doc["notes"].append(f"only post-processing the host runs anyway blocks the model: {cut_hint(cut)}")
        for u in doc["unsupported"]:
            _problem(doc, "error", "unsupported", list(opts.versions), u["node"], u["op"],
                     f"{u['op']} '{u['node']}': {u['reason']}", u["hint"])
        return _finish(result, opts)

    copts = opts.compile_options()
    target = K210("k210")
    samples, calib = _calibration_inputs(path, opts)
    result.samples = samples
    doc["calibration"] = calib
    prepared = final = None
    try:
        prepared = prepare_float(path, copts)
        final = quantize(prepared, copts, target, samples=samples)
    except UnsupportedOps:
        raise   # summarize_model found none; a disagreement between the two is a bug, not a report
    except KpucError as e:
        final = None
        _problem(doc, "error", "compile", list(opts.versions), None, None,
                 f"the compile stops before lowering: {e}", compile_hint(str(e)))
    rows = _op_rows(prepared.generic) if prepared is not None else []
    legal = prepared.legalized if prepared is not None else None
    if legal is None and rows:       # the compile stopped before legalizing: legalize for the report
        try:
            legal = _legalize_only(path, copts, target)
            doc["notes"].append("placement comes from KPU legalization alone: the compile stops before it")
        except KpucError as e:
            doc["notes"].append(f"placement unknown: KPU legalization fails ({e})")
            for r in rows:
                r.update(placement="unknown", reason="KPU legalization fails")
    if legal is not None:
        _place(rows, legal, final)
    for r in rows:
        r.pop("_producer", None)
    doc["ops"] = rows
    doc["kpu"] = _kpu_summary(rows)
    for r in rows:
        if r["placement"] == "cpu" and r["op"] in CONV_LIKE + ("prelu", "reduce_window2d"):
            _problem(doc, "warning", "cpu_fallback", [], r["name"], r["op"],
                     f"{r['op']} '{r['name']}' runs on the CPU: {r['reason']}", r["hint"])
    for version in opts.versions:
        entry = {"version": version, "status": "not_compiled", "fits": False, "error": None, "blockers": [],
                 "memory": None}
        doc["versions"].append(entry)
        if final is None:
            entry["error"] = doc["problems"][0]["message"] if doc["problems"] else "not compiled"
            continue
        try:
            data, lsum = target.lower(target.device_graph(final, version), replace(copts, kmodel_version=version))
        except KpucError as e:
            entry.update(status="cannot_express", error=str(e), blockers=_blockers(e, final))
            for b in entry["blockers"]:
                b["source"] = _source(b["node"], final, legal, rows)
                src = f" (from {b['source']})" if b["source"] and b["source"] != b["node"] else ""
                _problem(doc, "error", f"v{version}", [version], b["node"], b["op"],
                         f"kmodel v{version} cannot express {b['op'] or 'the model'}"
                         + (f" '{b['node']}'{src}" if b["node"] else "") + f": {b['reason']}", None)
            continue
        result.kmodels[version] = data
        mem = _memory(version, data, lsum)
        mem["fits_budget"] = mem["main_memory_bytes"] <= budget
        entry.update(memory=mem, status="fits" if mem["fits_budget"] else "over_budget", fits=mem["fits_budget"])
        if not mem["fits_budget"]:
            _problem(doc, "error", "memory", [version], None, None, _over_budget(version, mem, budget_name, budget),
                     "use a firmware with more free memory (--firmware), fewer channels, or a smaller input")
    if opts.dataset and final is not None:
        doc["sensitivity"] = _sensitivity(prepared.float_graph, final, samples)
        doc["sensitivity"]["by_layer"] = _by_layer(prepared, samples)
    return _finish(result, opts)


def _legalize_only(path: Path, copts, target: K210) -> Graph:
    """The legalized float graph, when the compile stops before building it (e.g. two inputs)."""
    from compiler.importers import import_model
    graph = optimize_generic(import_model(path, copts.input_format, input_shapes=copts.input_shapes,
                                          output_tensors=copts.output_tensors))
    mark_small_outputs_float(graph, output_threshold(copts, graph))
    return target.legalize(graph)


def _kpuc_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("kpuc")
    except PackageNotFoundError:
        return "unknown"


def _kpu_ram_limit() -> int:
    return KPU_RAM_BYTES


def _calibration_inputs(path: Path, opts: CheckOptions) -> tuple[list, dict]:
    """The dataset's inputs (errors in it are bad input: exit 2), or seeded synthetic ones."""
    from compiler.datasets import load_feeds
    from compiler.importers import import_model
    inputs = import_model(path, opts.input_format, **opts.import_options).inputs
    if opts.dataset:
        mean = 0.0 if opts.input_mean is None else opts.input_mean
        std = 1.0 if opts.input_std is None else opts.input_std
        samples = load_feeds(opts.dataset, inputs, format=opts.dataset_format, mean=mean, std=std)
        return samples, {"source": "dataset", "dataset": str(opts.dataset), "samples": len(samples), "seed": None,
                         "note": f"calibrated on {len(samples)} input(s) of {opts.dataset}"}
    per_input = [synthetic_samples(v.shape, mean=opts.input_mean, std=opts.input_std) for v in inputs]
    samples = per_input[0] if len(inputs) == 1 else [{v.name: a for v, a in zip(inputs, s)} for s in zip(*per_input)]
    return samples, {"source": "synthetic", "dataset": None, "samples": len(samples), "seed": SYNTHETIC_SEED,
                     "note": SYNTHETIC_NOTE.format(n=len(samples), seed=SYNTHETIC_SEED)}


def _kpu_summary(rows: list[dict]) -> dict:
    total = sum(r["macs"] for r in rows)
    on_kpu = sum(r["macs"] for r in rows if r["placement"] in ("kpu", "kpu_after_rewrite"))
    layers = [r for r in rows if r["kpu_ram_bytes"] is not None]
    peak = max(layers, key=lambda r: r["kpu_ram_bytes"], default=None)
    return {"layers": len(layers), "macs": on_kpu, "total_macs": total,
            "mac_share": round(on_kpu / total, 6) if total else None,
            "peak_layer": {"name": peak["name"], "kpu_ram_bytes": peak["kpu_ram_bytes"]} if peak else None,
            "cpu_ops": sum(r["placement"] == "cpu" for r in rows)}


def _sensitivity(float_graph: Graph, final: Graph, samples: list) -> dict:
    """Per-layer SQNR / cosine of the quantized graph against the float one (compiler/accuracy.py)."""
    from compiler.accuracy import compare, worst_layer
    from targets.k210.kernels import QUANTIZED_KERNELS
    report = compare(float_graph, final, samples, quant_kernels=QUANTIZED_KERNELS)
    worst = worst_layer(report)

    def num(x: float) -> float | None:
        return round(x, 4) if math.isfinite(x) else None
    return {"samples": len(samples), "worst": worst.name if worst else None,
            "layers": [{"value": s.name, "op": s.op, "cosine": num(s.cosine), "sqnr_db": num(s.sqnr_db),
                        "max_abs_error": num(s.max_abs)} for s in report.layers]}


def _by_layer(prepared, samples: list) -> list[dict]:
    """The per-layer table of compile --target-cosine (targets/k210/sensitivity.py) on every 4th input
    (at least 2; the compile calibrated on all of them, so this ranks layers rather than predicts accuracy)."""
    from targets.k210.sensitivity import holdout, layer_sensitivity
    chosen: dict[str, str] = {}
    for layer, choice in prepared.layer_plan:
        chosen[layer] = f"{chosen[layer]} + {choice}" if layer in chosen else choice
    rows = layer_sensitivity(prepared.legalized, prepared.quantized, holdout(samples)[1])

    def num(x):
        return None if x is None else round(float(x), 5)
    return [{"layer": r.layer, "kind": r.kind, "alone": num(r.alone), "act": num(r.act), "half": num(r.half),
             "weights": r.weights, "choice": chosen.get(r.layer, "")} for r in rows]


def _problem(doc: dict, severity: str, kind: str, versions: list[int], node, op, message: str, hint) -> None:
    doc["problems"].append({"severity": severity, "kind": kind, "versions": versions, "node": node, "op": op,
                            "message": message, "hint": hint})


def _finish(result: CheckResult, opts: CheckOptions) -> CheckResult:
    doc = result.doc
    fits = [v["version"] for v in doc["versions"] if v["fits"]]
    doc["fits_versions"] = fits
    for p in doc["problems"]:
        if p["kind"] == "v3" and p["hint"] is None and 4 in fits:
            p["hint"] = "kmodel v4 runs this model (--kmodel-version 4)"
    doc["verdict"] = "unsupported" if doc["unsupported"] else "fits" if fits else "does_not_fit"
    doc["exit_code"] = 0 if doc["verdict"] == "fits" else 1
    doc["summary"] = _summary_line(doc)
    first = ("schema_version", "kpuc_version", "model", "format", "verdict", "summary", "exit_code", "fits_versions")
    result.doc = {**{k: doc[k] for k in first}, **{k: v for k, v in doc.items() if k not in first}}
    return result


def _summary_line(doc: dict) -> str:
    if doc["verdict"] == "unsupported":
        return f"unsupported: {len(doc['unsupported'])} op(s) kpuc cannot import"
    fits = doc["fits_versions"]
    no = [v for v in doc["requested_versions"] if v not in fits]
    if not fits:
        return "does not fit: " + ", ".join(f"v{v}" for v in no) + " cannot run it"
    return ("fits kmodel " + " and ".join(f"v{v}" for v in fits)
            + (f" (not {', '.join(f'v{v}' for v in no)})" if no else ""))

