"""The terminal rendering of a `kpuc check` report: one table of ops, one of versions, the problems.

Plain text; `color=True` (a TTY without NO_COLOR, decided by the caller) adds click styles.
"""
from __future__ import annotations

import click

NAME_WIDTH = 44
PLACEMENT_COLOR = {"kpu": "green", "kpu_after_rewrite": "green", "kpu_fused": "green", "cpu": "yellow",
                   "unknown": "red"}
STATUS_COLOR = {"fits": "green", "over_budget": "red", "cannot_express": "red", "not_compiled": "red"}
STATUS_TEXT = {"fits": "fits", "over_budget": "over the memory budget", "cannot_express": "cannot express it",
               "not_compiled": "not compiled"}


def _shape(s) -> str:
    return "[" + ",".join(map(str, s)) + "]"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]


def _bytes(n) -> str:
    return "-" if n is None else f"{n:,} B"


def placement_text(row: dict) -> str:
    """KPU / KPU after <rewrites> / KPU (fused into X) / CPU: reason."""
    p = row["placement"]
    if p == "kpu":
        return "KPU"
    if p == "kpu_after_rewrite":
        return "KPU after " + " + ".join(row["rewrites"])
    if p == "kpu_fused":
        return f"KPU (fused into {_clip(row['fused_into'], 32)})"
    if p == "unknown":
        return f"? ({row['reason']})"
    return f"CPU: {row['reason']}"


def format_text(doc: dict, *, color: bool = False) -> str:
    """The report as a readable table."""
    def st(text: str, fg: str | None = None, bold: bool = False) -> str:
        return click.style(text, fg=fg, bold=bold) if color and (fg or bold) else text

    out = [st(f"kpuc check {doc['model']} ({doc['format']})", bold=True)]
    for key in ("inputs", "outputs"):
        for v in doc[key]:
            out.append(f"  {key[:-1]:6} {v['name']} {_shape(v['shape'])} {v['dtype']}")
    if doc["calibration"]:
        out.append(f"calibration: {doc['calibration']['note']}")
    out += [f"note: {n}" for n in doc["notes"]]
    if doc["unsupported"]:
        out.append("")
        out.append(st(f"unsupported ops ({len(doc['unsupported'])}):", "red", bold=True))
        for u in doc["unsupported"]:
            out.append(f"  {u['op']:24} {u['node']}: {u['reason']}")
            out.append(f"  {'':24} hint: {u['hint']}")
    if doc["ops"]:
        out.append("")
        out += _ops_table(doc["ops"], st)
    if doc["kpu"]:
        k = doc["kpu"]
        share = "-" if k["mac_share"] is None else f"{100 * k['mac_share']:.1f}%"
        peak = k["peak_layer"]
        out.append("")
        out.append(f"KPU: {k['layers']} layer(s), {share} of {k['total_macs']:,} MACs on the KPU, "
                   f"{k['cpu_ops']} op(s) on the CPU")
        if peak:
            out.append(f"largest KPU layer: {peak['name']} needs {_bytes(peak['kpu_ram_bytes'])} of KPU RAM "
                       f"(limit {doc['limits']['kpu_ram_bytes']:,} B)")
    if doc["versions"]:
        out.append("")
        out += _versions_table(doc, st)
    if doc["sensitivity"]:
        out.append("")
        out += _sensitivity(doc["sensitivity"])
    problems = [p for p in doc["problems"] if p["kind"] != "unsupported"]   # those have their own section
    if problems:
        out.append("")
        out.append(st(f"problems ({len(problems)}):", bold=True))
        for p in problems:
            sev = st(f"{p['severity']:7}", "red" if p["severity"] == "error" else "yellow")
            out.append(f"  {sev} {p['message']}")
            if p["hint"]:
                out.append(f"  {'':7} hint: {p['hint']}")
    out.append("")
    good = doc["verdict"] == "fits"
    out.append(st(f"verdict: {doc['summary']}", "green" if good else "red", bold=True))
    return "\n".join(line.rstrip() for line in out)


def _ops_table(rows: list[dict], st) -> list[str]:
    name_w = min(max(4, *(len(r["name"]) for r in rows)), NAME_WIDTH)
    ops = [(r["op"] + (f" {r['detail']}" if r["detail"] else "")).replace(" stride ", "/").replace("depthwise", "dw")
           for r in rows]
    op_w = min(max(2, *(len(o) for o in ops)), 28)
    shapes = [(_shape(r["inputs"][0]) if r["inputs"] else "-") + " -> " + _shape(r["outputs"][0]) for r in rows]
    sh_w = max(len("input -> output"), *(len(s) for s in shapes))
    macs = [f"{r['macs']:,}" if r["macs"] else "" for r in rows]
    mac_w = max(max(len(m) for m in macs), 4)
    head = f"{'#':>4}  {'node':{name_w}}  {'op':{op_w}}  {'input -> output':{sh_w}}  {'MACs':>{mac_w}}  placement"
    lines = [head, "-" * len(head)]
    for r, o, s, m in zip(rows, ops, shapes, macs):
        place = st(placement_text(r), PLACEMENT_COLOR.get(r["placement"]))
        o = o if len(o) <= op_w else o[:op_w - 3] + "..."
        lines.append(f"{r['index']:>4}  {_clip(r['name'], name_w):{name_w}}  {o:{op_w}}  "
                     f"{s:{sh_w}}  {m:>{mac_w}}  {place}")
        if r["hint"]:
            lines.append(f"{'':4}  {'':{name_w}}  hint: {r['hint']}")
    return lines


def _versions_table(doc: dict, st) -> list[str]:
    vs = doc["versions"]
    fw = doc["firmware"]
    col = 28
    mem = [v["memory"] or {} for v in vs]
    rows = [
        ("", [f"kmodel v{v['version']}" for v in vs]),
        ("status", [st(f"{STATUS_TEXT[v['status']]:{col}}", STATUS_COLOR[v["status"]]) for v in vs]),
        ("KPU RAM (kpuc inspect)", [_bytes(m.get("kpu_ram_bytes")) for m in mem]),
        ("KPU RAM live peak", [_bytes(m.get("kpu_ram_live_peak_bytes")) for m in mem]),
        ("working memory", [_bytes(m.get("working_memory_bytes")) for m in mem]),
        ("kmodel size", [_bytes(m.get("kmodel_bytes")) for m in mem]),
        ("main memory (working+model)", [_bytes(m.get("main_memory_bytes")) for m in mem]),
        ("layers KPU / CPU", [f"{m['kpu_layers']} / {m['cpu_layers']}" if m else "-" for m in mem]),
    ]
    lines = [f"{k:28}  " + "  ".join(c if k == "status" else f"{c:{col}}" for c in cells) for k, cells in rows]
    lines.append(f"main-memory budget: {fw['budget_bytes']:,} B ({fw['note']}); KPU RAM limit "
                 f"{doc['limits']['kpu_ram_bytes']:,} B")
    if any(v["version"] == 3 and v["memory"] for v in vs):
        lines.append("v3 KPU RAM counts from the lowest row nncase's allocator used to the top (its 'KPU memory "
                     "usage'); the live peak is what the layers hold at once")
    for v in vs:
        if v["status"] in ("cannot_express", "not_compiled"):
            names = [f"{b['op']} '{b['node']}'" for b in v["blockers"] if b["node"]]
            lines.append(f"kmodel v{v['version']}: " + (("stopped by " + ", ".join(names)) if names else v["error"]))
    return lines


def _sensitivity(s: dict) -> list[str]:
    lines = [f"quantization sensitivity ({s['samples']} dataset input(s), quantized vs float, per value):",
             f"  {'value':44} {'op':16} {'cosine':>9} {'SQNR dB':>8} {'max |err|':>10}"]
    for layer in s["layers"]:
        cos = "-" if layer["cosine"] is None else f"{layer['cosine']:.5f}"
        sq = "exact" if layer["sqnr_db"] is None else f"{layer['sqnr_db']:.2f}"
        err = "-" if layer["max_abs_error"] is None else f"{layer['max_abs_error']:.4g}"
        mark = "  <- worst" if layer["value"] == s["worst"] else ""
        lines.append(f"  {_clip(layer['value'], 44):44} {layer['op']:16} {cos:>9} {sq:>8} {err:>10}{mark}")
    if s.get("by_layer"):
        lines += ["", "per-layer sensitivity (worst output cosine with only that layer quantized / its 8-bit "
                  "output / a 9-bit split, estimated), and the compile's choice:",
                  f"  {'layer':44} {'kind':5} {'alone':>7} {'8-bit':>7} {'9-bit':>7} {'weights':>8}  choice"]
        for r in s["by_layer"]:
            cells = " ".join("-".rjust(7) if r[k] is None else f"{r[k]:7.4f}" for k in ("alone", "act", "half"))
            lines.append(f"  {_clip(r['layer'], 44):44} {r['kind']:5} {cells} {r['weights']:8d}  {r['choice']}")
    return lines
