"""Precise never silently worse than Fast, and training fitted to the time budget (issue 12, item 4)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from autolabel_worker.augment import AugmentPolicy
from autolabel_worker.ensemble import FoldEnsemble, choose_precise
from autolabel_worker.models import ModelSpec, choose_model_spec
from autolabel_worker.pipeline import run_job
from autolabel_worker.train import MIN_FITTED_SIDE, BudgetSchedule, TrainConfig, fit_input_to_budget, side_for_budget
from PIL import Image
from worker_fixtures import active_learning_job, digits

from autolabel.api import results_prefix
from autolabel.storage import Storage


def ensemble(right: int, n: int = 50, *, cut: bool = False, scheduled: int = 2000) -> FoldEnsemble:
    """An ensemble whose out-of-fold predictions get exactly `right` of `n` labeled images right."""
    labels = np.arange(n) % 10
    logits = np.zeros((1, n, 10))
    pred = labels.copy()
    pred[right:] = (labels[right:] + 1) % 10
    logits[0, np.arange(n), pred] = 5.0
    return FoldEnsemble(
        [],
        logits,
        labels,
        steps_done=scheduled - (100 if cut else 0),
        truncated=cut,
        steps_configured=2000,
        steps_scheduled=scheduled,
        cut_by_deadline=cut,
    )


def test_held_out_accuracy_is_that_of_the_averaged_out_of_fold_predictions() -> None:
    assert ensemble(45).held_out_accuracy() == 0.9
    assert ensemble(50).held_out_accuracy() == 1.0


def test_precise_is_kept_when_at_least_as_accurate() -> None:
    choice = choose_precise(ensemble(45), ensemble(47))
    assert choice.use_precise and "47/50 against 45/50" in choice.reason
    assert choose_precise(ensemble(45), ensemble(45)).use_precise  # a tie keeps Precise


def test_precise_falls_back_to_fast_when_less_accurate() -> None:
    choice = choose_precise(ensemble(46), ensemble(44))
    assert not choice.use_precise
    assert "44/50 against 46/50" in choice.reason
    doc = choice.to_json(ensemble(46), ensemble(44))
    assert doc["fellBackToFast"] and doc["modelsUsed"] == "Fast"
    assert doc["heldOutAccuracyFast"] == 0.92 and doc["heldOutAccuracyPrecise"] == 0.88


def test_precise_falls_back_when_the_deadline_cut_its_schedule() -> None:
    choice = choose_precise(ensemble(40), ensemble(48, cut=True))
    assert not choice.use_precise and "before the end of its schedule" in choice.reason
    # a schedule shortened to fit the budget but completed is judged by its held-out accuracy alone
    assert choose_precise(ensemble(40), ensemble(48, scheduled=900)).use_precise


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_schedule_fits_the_steps_into_the_deadline() -> None:
    """1 s per step and 100 s left: after the probe the schedule plans about 90 steps (90% of the time
    left, refitted as it goes), and training then ends on schedule, before the deadline."""
    clock = Clock()
    sched = BudgetSchedule(400, deadline=100.0, clock=clock)
    step = 0
    while step < sched.total and not sched.expired():
        step += 1
        clock.now += 1.0
        sched.done(step)
    assert sched.total == step
    assert 85 <= sched.total <= 100
    assert sched.shortened and not sched.cut and clock.now <= 100.0


def test_slow_first_steps_do_not_shorten_the_schedule() -> None:
    """The first steps pay one-time costs (here 10 s each); the steps after them take 0.1 s, and 400 of
    them fit in the time left: the schedule keeps its configured length."""
    clock = Clock()
    sched = BudgetSchedule(400, deadline=100.0, clock=clock)
    step = 0
    while step < sched.total and not sched.expired():
        step += 1
        clock.now += 10.0 if step <= 2 else 0.1
        sched.done(step)
    assert step == 400 and not sched.shortened and not sched.cut


def test_schedule_is_kept_when_the_budget_allows_it() -> None:
    clock = Clock()
    sched = BudgetSchedule(50, deadline=1000.0, clock=clock)
    for step in range(1, 51):
        assert not sched.expired()
        clock.now += 1.0
        sched.done(step)
    assert sched.total == 50 and not sched.shortened and not sched.cut


def test_a_machine_that_slows_down_after_the_estimate_is_cut_by_the_deadline() -> None:
    clock = Clock()
    sched = BudgetSchedule(400, deadline=100.0, clock=clock)
    step = 0
    while step < sched.total and not sched.expired():
        step += 1
        clock.now += 1.0 if step <= 7 else 30.0  # 30x slower after the first estimate (step 7)
        sched.done(step)
    assert sched.cut and step < sched.total


def test_the_input_side_shrinks_with_the_pixels_a_budget_affords() -> None:
    """A quarter of the steps fit at 64 px: half the side (a quarter of the pixels) fits them all."""
    assert side_for_budget(64, step_seconds=1.0, steps=1000, seconds=1000 / 0.9) == 64
    assert side_for_budget(64, step_seconds=1.0, steps=1000, seconds=250 / 0.9) == 32
    assert side_for_budget(64, step_seconds=1.0, steps=1000, seconds=560 / 0.9) == 44  # 64 x 0.748 = 47.9
    assert side_for_budget(64, step_seconds=1.0, steps=1000, seconds=1.0) == MIN_FITTED_SIDE
    assert side_for_budget(24, step_seconds=1.0, steps=1000, seconds=1.0) == 24  # never enlarged


def test_a_budget_too_short_for_64_px_trains_the_small_cnn_at_a_smaller_size() -> None:
    """The probe trains a throwaway model for a few steps on this machine: 2 s cannot hold 2,000 steps
    at 64 px, 10 days can; a pretrained backbone keeps its input size whatever the budget."""
    torch.set_num_threads(1)
    spec = choose_model_spec([(64, 64)] * 3, 4)
    cfg = TrainConfig(steps=400)
    short, fitted_from = fit_input_to_budget(spec, AugmentPolicy(hflip=True), cfg, budget=2.0)
    assert short.input_size == (MIN_FITTED_SIDE, MIN_FITTED_SIDE) and fitted_from == (64, 64)
    assert short.arch == spec.arch and short.num_classes == 4
    assert fit_input_to_budget(spec, AugmentPolicy(hflip=True), cfg, budget=864_000.0) == (spec, None)
    resnet = ModelSpec("resnet18", (224, 224), 4)
    assert fit_input_to_budget(resnet, AugmentPolicy(hflip=True), cfg, budget=2.0) == (resnet, None)


def test_64_px_images_on_a_short_budget_are_trained_and_labeled_at_32_px_and_the_summary_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOLABEL_TORCH_THREADS", "1")
    ds = digits(tmp_path, unlabeled=40)
    for png in (ds.manifest.parent / "images").glob("*.png"):
        Image.open(png).resize((64, 64), Image.Resampling.BILINEAR).save(png)
    uid = "0f0f0f0f-0000-4000-8000-000000000064"
    job = active_learning_job(ds, tmp_path / "out", "big-images", uid, algorithm="Fast", seed=0, timeBudgetSeconds=10)
    out = results_prefix(job)
    summary = run_job(job, Storage(), out)
    assert summary["training"]["inputSize"] == [32, 32]
    assert summary["training"]["inputSizeFittedFrom"] == [64, 64]
    assert any("at 32x32 px instead of 64x64" in note for note in summary["notes"])
    mirror = summary["training"]["mirrorImages"]  # digits of 32 px and more: the images decide
    assert mirror["used"] is False and "labeled images are farther from their class" in mirror["reason"]
    assert "unlabeled images are farther from one another" in mirror["reason"]  # the 40 of the pool
    assert any(note.startswith("mirror images were left out in training") for note in summary["notes"])
    assert summary["total"] == 40 and summary["autoLabeled"] + summary["hardExamples"] == 40
    exported = json.loads(Storage().read_bytes(out + "model/labels.json"))
    assert exported["inputSize"] == [32, 32]  # PreLabeling with this model resizes to what it was trained at
