"""The Kendryte K210 target. `targets.k210.ops` registers its ops, float KPU kernel and calibration stages in
the target-neutral tables; the compile path imports it (target.py), while reading and running a kmodel
(`kpuc inspect`, `kpuc infer` on a .kmodel) never needs it and so stays quick to start."""
