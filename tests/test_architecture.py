"""Who may import whom (docs/architecture.md), read from the source with `ast`: every import counts, including
the ones inside functions, so a cycle cannot hide behind a late import."""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("compiler", "passes", "targets")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    found = {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}
    found["cli"] = ROOT / "cli.py"
    return found


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports (a `from pkg import mod` names the submodule when there is one)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in modules and t != name)
    return out


def import_graph() -> nx.DiGraph:
    modules = _modules()
    g = nx.DiGraph()
    g.add_nodes_from(modules)
    for name, path in modules.items():
        g.add_edges_from((name, t) for t in _imports(path, name, modules))
    return g


def test_the_walk_sees_the_project():
    g = import_graph()
    assert {"compiler.ir", "compiler.pipeline", "targets.k210.target", "cli"} <= set(g)
    assert ("cli", "compiler.pipeline") in g.edges                 # a function-level import
    assert ("targets.k210.target", "compiler.calibration") in g.edges  # a module-level one


def test_compiler_and_passes_never_import_targets():
    g = import_graph()
    bad = sorted((a, b) for a, b in g.edges if a.split(".")[0] in ("compiler", "passes") and b.startswith("targets"))
    assert not bad, f"target-neutral modules import targets/: {bad}"


def test_passes_do_not_import_importers_or_cli():
    g = import_graph()
    bad = sorted((a, b) for a, b in g.edges
                 if a.startswith(("passes", "compiler.kernels", "compiler.ir", "compiler.ops"))
                 and (b.startswith("compiler.importers") or b == "cli"))
    assert not bad, bad


def test_no_import_cycles():
    cycles = sorted(sorted(c) for c in nx.simple_cycles(import_graph()))
    assert not cycles, f"{len(cycles)} import cycle(s), e.g. {cycles[:3]}"
