"""Render the zoo sweep's results: a terminal table with totals last, and docs/zoo.md."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from fetch import source_text

FLOAT_TOLERANCE = 1e-4
QUANT_TOLERANCE = 1.0


def parity_ok(res: dict) -> bool | None:
    """True/False when parity was measured, None when it could not be."""
    p = res.get("parity")
    if not p or "error" in p:
        return None
    if res.get("quantized") and p.get("steps") is not None:
        return p["steps"] <= QUANT_TOLERANCE
    return p["rel"] <= FLOAT_TOLERANCE


def _op_label(op: str) -> str:
    # the importer reports a model input it cannot take (dynamic dims) as the pseudo-op "input"
    return "input (dynamic dims)" if op == "input" else op


def _import_cell(res: dict) -> str:
    if res.get("import_ok"):
        return "ok"
    ops = sorted({_op_label(u["op"]) for u in res.get("unsupported") or []})
    return "no: " + ", ".join(ops) if ops else "no: " + _short(res.get("import_error", ""))


def _parity_cell(res: dict) -> str:
    p = res.get("parity")
    if not res.get("import_ok"):
        return "-"
    if not p:
        return "n/a: reference: " + _short(res.get("reference_error", ""))
    if "error" in p:
        return "error: " + _short(p["error"])
    verdict = "ok" if parity_ok(res) else "FAIL"
    if res.get("quantized") and p.get("steps") is not None:
        return f"{verdict} {p['steps']:.2g} steps"
    return f"{verdict} {p['rel']:.1e}"


def _version_cell(res: dict, version: str) -> str:
    check = res.get("check") or {}
    if "error" in check:
        return "error"
    v = (check.get("versions") or {}).get(version)
    if v is None:
        return "unsupported" if check.get("verdict") == "unsupported" else "-"
    if v["status"] == "fits":
        return "fits"
    if v["blockers"]:
        return "no: " + ", ".join(v["blockers"])
    return v["status"].replace("_", " ")


def _kmodel_cell(res: dict) -> str:
    cells = []
    for version, k in sorted((res.get("kmodel") or {}).items(), reverse=True):
        cells.append(f"v{version} " + ("error" if "error" in k else f"cos {k['cosine']:.4f}"))
    return "; ".join(cells) or "-"


def _short(text: str, width: int = 60) -> str:
    text = text.replace("kpuc: error: ", "").replace("|", "/")
    return text if len(text) <= width else text[:width - 3] + "..."


def rows(entries: list[dict], results: list[dict]) -> list[list[str]]:
    by_name = {e["name"]: e for e in entries}
    out = []
    for res in results:
        e = by_name[res["name"]]
        kind = {True: "quant", False: "float"}.get(res.get("quantized"), "?")  # "?": the framework refused it
        out.append([res["name"], e["format"], kind, e["task"], _import_cell(res), _parity_cell(res),
                    _version_cell(res, "4"), _version_cell(res, "3"), _kmodel_cell(res)])
    return out


HEADER = ["model", "fmt", "type", "task", "import", "parity", "v4", "v3", "kmodel vs framework"]


def totals(results: list[dict]) -> dict:
    """The headline figures (counts and denominators)."""
    n = len(results)
    imported = [r for r in results if r.get("import_ok")]
    floats = [r for r in imported if not r.get("quantized")]
    quants = [r for r in imported if r.get("quantized")]
    fits = {v: sum(v in (r.get("check") or {}).get("fits_versions", []) for r in results) for v in ("4", "3")}
    kmodels = [k for r in results for k in (r.get("kmodel") or {}).values()]
    return dict(models=n, imported=len(imported),
                float_importable=len(floats), float_parity=sum(parity_ok(r) is True for r in floats),
                float_unmeasured=sum(parity_ok(r) is None for r in floats),
                quant_importable=len(quants), quant_parity=sum(parity_ok(r) is True for r in quants),
                quant_unmeasured=sum(parity_ok(r) is None for r in quants),
                fits_v4=fits["4"], fits_v3=fits["3"],
                kmodels=len(kmodels), kmodels_ok=sum("error" not in k for k in kmodels))


def _pct(a: int, b: int) -> str:
    return f"{a}/{b} ({100 * a / b:.0f}%)" if b else f"{a}/0"


def totals_lines(t: dict) -> list[str]:
    return [f"models: {t['models']}",
            f"import: {_pct(t['imported'], t['models'])}",
            f"float parity (importable float models, 1e-4 relative): {_pct(t['float_parity'], t['float_importable'])}"
            f", {t['float_unmeasured']} not measurable",
            f"int8/uint8 parity (importable quantized models, 1 step): {_pct(t['quant_parity'], t['quant_importable'])}"
            f", {t['quant_unmeasured']} not measurable",
            f"fits v4: {_pct(t['fits_v4'], t['models'])}",
            f"fits v3: {_pct(t['fits_v3'], t['models'])}",
            f"kmodel compile + infer: {_pct(t['kmodels_ok'], t['kmodels'])} of the versions that fit"]


def print_table(entries: list[dict], results: list[dict]) -> None:
    table = [HEADER] + [[_short(c, 48) for c in r] for r in rows(entries, results)]
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADER))]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print()
    for line in totals_lines(totals(results)):
        print(line)


def failures(results: list[dict]) -> list[str]:
    """Markdown bullets: every failure, grouped by cause."""
    unsupported = defaultdict(list)
    reasons = {}
    import_errors = []
    for r in results:
        for u in r.get("unsupported") or []:
            if r["name"] not in unsupported[_op_label(u["op"])]:
                unsupported[_op_label(u["op"])].append(r["name"])
            reasons.setdefault(_op_label(u["op"]), u.get("reason", ""))
        if not r.get("import_ok") and not r.get("unsupported"):
            import_errors.append(f"`{r['name']}`: {_short(r.get('import_error', ''), 200)}")
    blockers = defaultdict(set)
    other = []
    for r in results:
        check = r.get("check") or {}
        if "error" in check:
            other.append(f"`{r['name']}`: check: {_short(check['error'], 200)}")
        for v, info in (check.get("versions") or {}).items():
            for op in info["blockers"]:
                blockers[(v, op)].add(r["name"])
            if info["status"] not in ("fits", "cannot_express") and not info["blockers"]:
                other.append(f"`{r['name']}` v{v}: {info['status']} {_short(info['error'], 160)}".rstrip())
    parity = []
    for r in results:
        p = r.get("parity") or {}
        if r.get("import_ok") and parity_ok(r) is False:
            parity.append(f"`{r['name']}`: " + (f"{p['steps']:.3g} steps" if r.get("quantized") and p.get("steps")
                                                 is not None else f"relative error {p['rel']:.2e}"))
        elif r.get("import_ok") and "error" in p:
            parity.append(f"`{r['name']}`: kpuc infer failed: {_short(p['error'], 200)}")
        elif r.get("import_ok") and not p:
            parity.append(f"`{r['name']}`: not measurable, the framework failed: "
                          f"{_short(r.get('reference_error', ''), 160)}")
        for v, k in (r.get("kmodel") or {}).items():
            if "error" in k:
                other.append(f"`{r['name']}` v{v} kmodel: {_short(k['error'], 200)}")
    out = ["### Import: unsupported ops", ""]
    out += [f"- **{op}** ({len(m)}): {', '.join(f'`{x}`' for x in m)} — "
            + (f"out of scope: {OUT_OF_SCOPE[op]}" if op in OUT_OF_SCOPE else _short(reasons[op], 160))
            for op, m in sorted(unsupported.items(), key=lambda kv: (-len(kv[1]), kv[0]))] or ["- none"]
    out += ["", "### Import: other errors", ""] + ([f"- {x}" for x in import_errors] or ["- none"])
    out += ["", "### Parity against the framework", ""] + ([f"- {x}" for x in parity] or ["- none"])
    out += ["", "### What stops a kmodel (check blockers, per version)", ""]
    out += [f"- v{v} **{op}** ({len(m)}): {', '.join(f'`{x}`' for x in sorted(m))}"
            for (v, op), m in sorted(blockers.items(), key=lambda kv: (kv[0][0], -len(kv[1]), kv[0][1]))] or ["- none"]
    out += ["", "### Other (memory, check or compile errors)", ""] + ([f"- {x}" for x in other] or ["- none"])
    return out


# Ops kpuc does not import on purpose, and why: neither the KPU nor nncase v0.2's CPU ops can run them.
OUT_OF_SCOPE = {
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "a recurrent layer (state carried across time steps); nncase v0.2 has no "
                                    "recurrent op and the KPU runs convolutions only",
    "Landmarks2TransformMatrix": "a MediaPipe custom op (an affine crop matrix estimated from landmarks) with no "
                                 "nncase v0.2 equivalent; the host computes it between two model runs",
    "TransformLandmarks": "a MediaPipe custom op (landmarks mapped back through that matrix): host post-processing",
    "TransformTensorBilinear": "a MediaPipe custom op (a bilinear warp by a computed matrix); nncase v0.2's "
                               "resize_image has no affine warp",
}


def write_docs(entries: list[dict], results: list[dict], path: Path) -> None:
    """docs/zoo.md: how to run, totals, the table, failures by cause, sources."""
    measured = {r["name"] for r in results}
    lines = [
        "# The real-model zoo",
        "",
        "Publicly released TFLite and ONNX models, none written here and none in `../shared`, tried the way",
        "a new user would. `bench/zoo/manifest.json` lists them (source, license, sha256, input range);",
        "`python bench/zoo/fetch.py --mirror DIR` puts them in `$KPUC_ZOO` (default `~/.cache/kpuc-zoo`):",
        "PyPI files with `pip download`, GitHub files from local copies of the repositories in DIR.",
        "`python bench/zoo/sweep.py --write-docs` regenerates this page (`--jobs 2` on an idle machine).",
        "",
        "Columns: **import** `kpuc info`; **parity** `kpuc infer` of the model file against LiteRT (reference",
        "kernels) or onnxruntime on one seeded random input in the manifest's range: largest error relative to",
        "the output's peak for float outputs (pass at 1e-4), in quantization steps of the output for",
        "int8/uint8 outputs (pass at 1); **v4/v3** the `kpuc check` verdict and the ops that block a version;",
        "**kmodel** `kpuc compile` (3 random calibration samples) and `kpuc infer` of the kmodel, cosine",
        "similarity to the framework's output (a random input, so only a sanity figure for quantization).",
        "",
        "## Totals",
        "",
        *[f"- {line}" for line in totals_lines(totals(results))],
        "",
        "## Per model",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
        *["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows(entries, results)],
        "",
        "## Failures by cause",
        "",
        *failures(results),
        "",
        "## Sources",
        "",
        "| model | family | source | license | size | sha256 | notes |",
        "|---|---|---|---|---|---|---|",
        *[f"| {e['name']} | {e['family']} | {source_text(e)} | {e['license']} | {e['size']:,} | "
          f"`{e['sha256'][:16]}` | {e.get('notes', '')} |" for e in entries if e["name"] in measured],
        "",
    ]
    # error lines quote the cached model's path: name the cache as the docs do, not this machine's folder
    from fetch import cache_dir
    path.write_text("\n".join(lines).replace(str(cache_dir()), "$KPUC_ZOO"))
