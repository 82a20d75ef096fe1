"""What the user may tell an importer about a model: pinned input shapes and where to cut the graph.

`--input-shape NAME=1,3,240,320` fixes the dynamic (TFLite `shape_signature` -1) or symbolic (ONNX
`dim_param`) dims of an input. A dynamic batch (dim 0) defaults to 1, since the K210 runs one image at a
time; every other dynamic dim must be pinned, and one error lists all of them at once.

`--output-tensors A,B` makes those tensors the graph's outputs and drops what no output reaches, so the
detection post-processing the host runs anyway (TFLite_Detection_PostProcess, NMS, TopK) no longer
blocks a model. `cut_suggestion` finds those tensors for `kpuc info` and `kpuc check`.
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from compiler.errors import KpucError, Unsupported, printable

# Source op types (upper case, '_' dropped, so TFLite and ONNX spellings meet) that only post-process
# the network's outputs on the host: cutting the graph before them loses nothing the K210 would run.
POSTPROCESS_OPS = frozenset({"TFLITEDETECTIONPOSTPROCESS", "NONMAXSUPPRESSION", "NONMAXSUPPRESSIONV4",
                             "NONMAXSUPPRESSIONV5", "COMBINEDNONMAXSUPPRESSION", "TOPK", "TOPKV2"})


class UnpinnedInputs(KpucError):
    """Inputs with dynamic dims that no --input-shape pins."""


class BadInputShape(KpucError):
    """An --input-shape that does not fit the model's input."""


class UnknownTensor(KpucError):
    """An --output-tensors name the model does not have."""


@dataclass(frozen=True)
class ImportOptions:
    """Pinned input shapes ((name, dims), ...) and the tensors to cut the graph at (empty: the file's outputs)."""
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    output_tensors: tuple[str, ...] = ()


NO_OPTIONS = ImportOptions()


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """'NAME=1,3,240,320' -> ('NAME', (1, 3, 240, 320)); the name may hold '=' (the last one splits)."""
    name, sep, dims = text.rpartition("=")
    if not sep or not name or not re.fullmatch(r"\s*\d+\s*(,\s*\d+\s*)*", dims):
        raise BadInputShape(f"--input-shape {text!r}: expected NAME=D0,D1,... with positive integer dims")
    shape = tuple(int(d) for d in dims.split(","))
    if any(d < 1 for d in shape):
        raise BadInputShape(f"--input-shape {text!r}: every dim must be at least 1")
    return name, shape


def parse_output_tensors(text: str) -> tuple[str, ...]:
    """'a,b' -> ('a', 'b'); empty names are refused."""
    names = tuple(n.strip() for n in text.split(","))
    if not all(names):
        raise KpucError(f"--output-tensors {text!r}: expected NAME[,NAME...] without empty names")
    return names


def check_pins_known(options: ImportOptions, inputs: Sequence[str]) -> None:
    """Every pinned name is an input of the model."""
    unknown = [n for n, _ in options.input_shapes if n not in inputs]
    if unknown:
        raise BadInputShape(f"--input-shape names {', '.join(repr(printable(n)) for n in unknown)}, which "
                            f"the model has no input of; its inputs: {', '.join(repr(printable(n)) for n in inputs)}")


def pinned_shape(name: str, declared: Sequence[int], options: ImportOptions,
                 labels: Sequence[str] = ()) -> tuple[tuple[int, ...], list[str]]:
    """The shape input `name` gets and the dims still unpinned ('dim 2 (height)').

    `declared` has -1 for a dynamic dim; `labels` names them (ONNX dim_param). A pin must keep the rank and
    every static dim; without one, a dynamic batch becomes 1."""
    pins = dict(options.input_shapes)
    if name in pins:
        pin = pins[name]
        bad = [i for i, (d, p) in enumerate(zip(declared, pin)) if d >= 0 and d != p]
        if len(pin) != len(declared) or bad:
            raise BadInputShape(f"--input-shape {printable(name)}={','.join(map(str, pin))} does not fit the "
                                f"input's declared shape {_show(declared, labels)}: the rank and static dims must match")
        return tuple(pin), []
    unpinned = [f"dim {i}" + (f" ({labels[i]})" if i < len(labels) and labels[i] else "")
                for i, d in enumerate(declared) if d < 0 and i > 0]
    return tuple(1 if d < 0 else d for d in declared), unpinned


def raise_unpinned(missing: dict[str, tuple[Sequence[int], Sequence[str], list[str]]]) -> None:
    """One error for every input with dynamic dims left: name -> (declared, labels, unpinned dims)."""
    if not missing:
        return
    parts = [f"'{printable(n)}' {_show(d, lab)}: {', '.join(u)}" for n, (d, lab, u) in missing.items()]
    example = " ".join(f"--input-shape {printable(n)}={_template(d)}" for n, (d, _, _) in missing.items())
    raise UnpinnedInputs("the model has dynamic input dims kpuc cannot guess: " + "; ".join(parts)
                         + f"; pin them with {example} (N = the size you will feed)")


def _template(declared: Sequence[int]) -> str:
    """1,3,N,N for [?,3,?,?]: what a pin looks like (a dynamic batch is 1)."""
    return ",".join("1" if d < 0 and i == 0 else "N" if d < 0 else str(d) for i, d in enumerate(declared))


def _show(declared: Sequence[int], labels: Sequence[str] = ()) -> str:
    dims = [str(d) if d >= 0 else (labels[i] if i < len(labels) and labels[i] else "?") for i, d in enumerate(declared)]
    return "[" + ",".join(dims) + "]"


# ------------------------------------------------------------------ cutting the graph
@dataclass(frozen=True)
class SourceOp:
    """A source op as the cut sees it: its type, the name problems give it, and its tensor names."""
    op_type: str
    node: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def unknown_tensor(name: str, valid: Iterable[str]) -> UnknownTensor:
    """The error for an --output-tensors name the model lacks, naming a few it has."""
    valid = list(dict.fromkeys(valid))
    near = difflib.get_close_matches(name, valid, n=4, cutoff=0.5) or valid[-4:]
    return UnknownTensor(f"--output-tensors: the model has no tensor '{printable(name)}'; "
                         f"tensors it has include {', '.join(repr(printable(n)) for n in near)}")


def ops_to_keep(ops: Sequence[SourceOp], outputs: Sequence[str]) -> list[int]:
    """Indices (in order) of the ops some tensor of `outputs` depends on."""
    producer = {o: k for k, op in enumerate(ops) for o in op.outputs}
    needed, keep, stack = set(), set(), list(outputs)
    while stack:
        t = stack.pop()
        if t in needed:
            continue
        needed.add(t)
        k = producer.get(t)
        if k is not None and k not in keep:
            keep.add(k)
            stack.extend(i for i in ops[k].inputs if i)
    return sorted(keep)


def _key(op_type: str) -> str:
    return re.sub(r"[^A-Z0-9]", "", op_type.upper())


def cut_suggestion(ops: Sequence[SourceOp], problems: Sequence[Unsupported], constants: set[str]) -> tuple[str, ...]:
    """The tensors feeding the post-processing ops, when those ops (and what reads their results) are the
    only problems; () otherwise."""
    post = [op for op in ops if _key(op.op_type) in POSTPROCESS_OPS]
    if not post or not problems:
        return ()
    after = {o for op in post for o in op.outputs}
    downstream = {op.node for op in post}
    for op in ops:                       # source order is topological: one pass finds every reader
        if any(i in after for i in op.inputs):
            after.update(op.outputs)
            downstream.add(op.node)
    if not all(p.node in downstream for p in problems):
        return ()
    feeds = [i for op in post for i in op.inputs if i and i not in after and i not in constants]
    return tuple(dict.fromkeys(feeds))
