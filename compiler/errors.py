"""The one error family kpuc raises; `cli.py` turns each into one line and an exit code."""


class KpucError(Exception):
    """Bad input or a limit we cannot meet; the message names the op, tensor and limit."""


class MalformedModel(KpucError):
    """The model file cannot be parsed."""


class UnsupportedOps(KpucError):
    """The importer met ops or attributes it cannot handle; `problems` lists every one of them."""

    def __init__(self, problems: list["Unsupported"]):
        self.problems = problems
        super().__init__(f"{len(problems)} unsupported op(s): "
                         + "; ".join(f"{p.op_type} '{p.node}' ({p.reason})" for p in problems))


class Unsupported:
    """One op the importer cannot translate: its type, node name and why."""

    def __init__(self, op_type: str, node: str, reason: str):
        self.op_type, self.node, self.reason = op_type, node, reason

    def __repr__(self):
        return f"Unsupported({self.op_type!r}, {self.node!r}, {self.reason!r})"
