"""The Kendryte K210 target. Importing it registers its ops, float KPU kernel and calibration stages
(targets/k210/ops.py) in the target-neutral tables."""
from targets.k210 import ops  # noqa: F401
