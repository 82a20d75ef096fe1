"""What both importers share: the summary a model file gives of itself and the importer's final check."""
from __future__ import annotations

from dataclasses import dataclass, field

from compiler.errors import Unsupported, UnsupportedOps
from compiler.ir import Graph


@dataclass
class SourceSummary:
    """What a source model file says about itself, in its own terms (TFLite/ONNX op names)."""
    format: str
    inputs: list[tuple[str, tuple[int, ...], str]]      # (name, shape as the file gives it, dtype)
    outputs: list[tuple[str, tuple[int, ...], str]]
    op_histogram: dict[str, int]                         # source op type -> count, sorted by name
    parameters: int                                      # elements in constant weight tensors
    unsupported: list[Unsupported] = field(default_factory=list)
    cut_suggestion: tuple[str, ...] = ()                 # --output-tensors that leave out the post-processing


def checked_graph(graph: Graph, problems: list[Unsupported]) -> Graph:
    """An importer's result: UnsupportedOps if it met any problem, else the graph swept and validated."""
    if problems:
        raise UnsupportedOps(problems)
    graph.eliminate_dead_code()
    graph.validate()
    return graph
