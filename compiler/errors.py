"""The one error family kpuc raises; `cli.py` turns each into one line and an exit code."""


class KpucError(Exception):
    """Bad input or a limit we cannot meet; the message names the op, tensor and limit."""


class MalformedModel(KpucError):
    """The model file cannot be parsed."""


class UnsupportedOps(KpucError):
    """The importer met ops or attributes it cannot handle; `problems` lists every one of them."""

    def __init__(self, problems: list["Unsupported"]):
        self.problems = problems
        items = [f"{printable(p.op_type)} '{printable(p.node)}' ({printable(p.reason)})" for p in problems]
        self.full = f"{len(problems)} unsupported op(s): " + "; ".join(items)  # for -v and `kpuc check`
        super().__init__(f"{len(problems)} unsupported op(s): " + shorten(items))


class Unsupported:
    """One op the importer cannot translate: its type, node name and why."""

    def __init__(self, op_type: str, node: str, reason: str):
        self.op_type, self.node, self.reason = op_type, node, reason

    def __repr__(self):
        return f"Unsupported({self.op_type!r}, {self.node!r}, {self.reason!r})"


class Blocker:
    """One thing that stops a lowering: the op and node (None when the whole model is meant), why, and a hint."""

    def __init__(self, op: str | None, node: str | None, reason: str, hint: str | None = None):
        self.op, self.node, self.reason, self.hint = op, node, reason, hint

    def __str__(self):
        """How a lowering error lists it: `op 'node' (reason)`, or the reason alone for the whole model."""
        return f"{self.op} '{self.node}' ({self.reason})" if self.node is not None else self.reason

    def __repr__(self):
        return f"Blocker({self.op!r}, {self.node!r}, {self.reason!r})"


class CannotLower(KpucError):
    """A kmodel version cannot express the graph; `blockers` lists every reason, `version` says which format."""

    def __init__(self, message: str, blockers: list[Blocker], version: int | None = None):
        self.blockers, self.version = blockers, version
        super().__init__(message)


class DoesNotFit(KpucError):
    """A memory pool overflows; `step` names the layer (planner step) where it does."""

    def __init__(self, message: str, step: str | None = None):
        self.step = step
        super().__init__(message)


def printable(name) -> str:
    """A name from a model file, safe for one terminal line: control and non-printable characters
    escaped as repr does (a damaged file's tensor name can hold newlines or escape sequences)."""
    s = name.decode("utf-8", "backslashreplace") if isinstance(name, bytes) else str(name)
    return s if s.isprintable() else repr(s)[1:-1]


def shorten(items: list[str], limit: int = 300, sep: str = "; ") -> str:
    """`items` joined by `sep`, cut to about `limit` characters with '… and N more'."""
    out = []
    for k, item in enumerate(items):
        if out and len(sep.join(out + [item])) > limit:
            return sep.join(out) + f"{sep}… and {len(items) - k} more"
        out.append(item)
    return sep.join(out)
