"""`--target-cosine`'s rules against overfitting (targets/k210/plan_search.py): the judging folds, the verdict
on a trial, and the two cases where the start plan is the answer without a trial."""
from __future__ import annotations

import numpy as np
import pytest

from compiler.pipeline import CompileOptions, compile_model, prepare_model
from shared_data import TFLITE_OPS, needs
from targets import get_target
from targets.k210.plan_search import Candidate, Score, judging_folds, verdict
from targets.k210.sensitivity import holdout, holdout_indices, mirrored

QUANT_CONV = TFLITE_OPS / "conv-relu.uint8.tflite"


def test_holdout_indices_are_the_samples_holdout_holds_out():
    for n in range(30):
        samples = [f"s{i}" for i in range(n)]
        assert holdout(samples)[1] == [samples[i] for i in holdout_indices(n)]


def test_a_photo_and_its_mirror_share_a_fold_and_the_folds_split_the_photos_in_halves():
    held = holdout_indices(20)                       # 3, 7, 11, 15, 19
    folds = judging_folds(20, held, mirror=True)
    sources = held + list(range(20))
    assert len(folds) == len(sources)
    by_photo = {}
    for s, f in zip(sources, folds):
        assert by_photo.setdefault(s, f) == f
    assert [by_photo[i] for i in range(20)] == [0] * 10 + [1] * 10
    assert list(judging_folds(12, [3, 7, 11], mirror=False)) == [0, 0, 1]


def _score(cosines, folds=None) -> Score:
    c = np.asarray(cosines, float)
    return Score(c, np.asarray(folds if folds is not None else np.arange(len(c)) % 2))


SPLIT = Candidate((("conv", "split"),), 0.01, 100, 0)
QUANTIZE = Candidate((("logits", "quantize"),), -0.01, -100, 0)


def test_a_gain_must_show_on_both_folds_and_keep_the_worst(monkeypatch):
    import targets.k210.plan_search as plan_search
    monkeypatch.setattr(plan_search, "STRICT", True)      # the strict rules, off by default (module docstring)
    now = _score([0.95, 0.95, 0.97, 0.97, 0.99, 0.99, 0.99, 0.99])
    both = _score([0.97, 0.97, 0.97, 0.97, 0.99, 0.99, 0.99, 0.99])       # the worst quarter's loss 0.05 -> 0.03
    assert verdict(SPLIT, now, both) == ""
    small = _score([0.96, 0.96, 0.97, 0.97, 0.99, 0.99, 0.99, 0.99])      # 0.05 -> 0.04: a fifth, not a quarter
    assert verdict(SPLIT, now, small) == "gain within the noise"
    one_fold = _score([0.97, 0.95, 0.97, 0.97, 0.99, 0.99, 0.99, 0.99])    # only sample 0 (fold 0) rose
    assert verdict(SPLIT, now, one_fold) == "gain on one fold only"
    worse_worst = _score([0.99, 0.99, 0.99, 0.99, 0.99, 0.99, 0.99, 0.94])
    assert verdict(SPLIT, now, worse_worst) == "worst sample drops"
    assert verdict(SPLIT, now, now) == "no gain"


def test_a_freeing_choice_stays_only_when_nothing_drops():
    now = _score([0.95, 0.96, 0.99, 0.99])
    assert verdict(QUANTIZE, now, now) == ""
    assert verdict(QUANTIZE, now, _score([0.949, 0.96, 0.99, 0.99])) == "loses accuracy"


@needs(QUANT_CONV)
def test_a_prequantized_model_keeps_its_own_grids():
    """The float graph is not a pre-quantized model's function (its integer arithmetic is): the search makes
    no trial and the file is the plain compile's."""
    rng = np.random.default_rng(3)
    p = prepare_model(QUANT_CONV, CompileOptions(), get_target("k210"), samples=None)
    shape = p.float_graph.inputs[0].shape
    xs = [rng.uniform(0, 1, shape).astype(np.float32) for _ in range(8)]
    plain = compile_model(QUANT_CONV, CompileOptions(), get_target("k210"), samples=xs)
    searched = compile_model(QUANT_CONV, CompileOptions(target_cosine=0.9999), get_target("k210"), samples=xs)
    assert searched.kmodel == plain.kmodel
    assert [s.label for s in searched.plan_search.steps] == ["(start plan kept)"]
    assert "pre-quantized" in searched.plan_search.steps[0].why


@pytest.mark.parametrize("goal", [0.5])
def test_a_start_plan_at_the_goal_is_the_answer(goal, tmp_path):
    from test_precision import classifier, images, opts
    model = classifier(tmp_path / "c.onnx")
    xs = images(12)
    plain = compile_model(model, opts(), get_target("k210"), samples=xs)
    searched = compile_model(model, opts(target_cosine=goal), get_target("k210"), samples=xs)
    assert searched.kmodel == plain.kmodel and searched.plan_search.worst >= goal
    assert searched.plan_search.steps[0].why == "the start plan reaches the goal"
    assert mirrored(xs)           # images: judged on the held-out and the mirrored samples


def test_a_searched_plan_passes_the_final_check_on_every_sample(tmp_path, monkeypatch):
    """The damaged classifier (test_precision.py): the search changes the plan, so the final check built both
    plans on all samples; the plan returned is the searched one only when that check kept it, and it is
    better than the plain compile on images no choice saw (onnxruntime)."""
    from test_precision import damaged_classifier, worst_cosine_vs_onnxruntime

    import targets.k210.plan_search as plan_search
    monkeypatch.setattr(plan_search, "FINAL_CHECK", True)   # off by default (module docstring)
    model = damaged_classifier(tmp_path / "damaged.onnx")
    xs = images_for_test()
    plain = prepare_model(model, CompileOptions(input_mean=0.5, input_std=0.5), get_target("k210"), samples=xs)
    base = worst_cosine_vs_onnxruntime(model, plain.quantized)
    search = compile_model(model, CompileOptions(input_mean=0.5, input_std=0.5, target_cosine=1 - (1 - base) / 4),
                           get_target("k210"), samples=xs).plan_search
    check = search.steps[-1]
    assert check.label == "(final check)"
    if check.kept:
        chosen = prepare_model(model, CompileOptions(input_mean=0.5, input_std=0.5, layer_plan=search.plan),
                               get_target("k210"), samples=xs)
        assert worst_cosine_vs_onnxruntime(model, chosen.quantized) > base
    else:
        assert search.worst == search.base_worst


def images_for_test():
    from test_precision import images
    return images(12)
