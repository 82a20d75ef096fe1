"""K210-only legalization passes: rewrites that exist because of the KPU, kept with the target.

Target-neutral rewrites live in `passes/` (nncase's `transforms/hlir/neutral` vs `transforms/hlir/k210`).
Every pass here works on the float graph and keeps its function exactly (up to float rounding), so
the legalized graph still runs on the executor and calibrates before anything is quantized.
`targets.k210.legalize.legalize_k210` runs them in order to a fixpoint.
"""
