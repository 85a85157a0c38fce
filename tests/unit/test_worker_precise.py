"""A Precise ActiveLearning run through the worker's pipeline on local digits: when it keeps its
semi-supervised models, its summary also says how the Fast models it started from rate the labels it
auto-accepted (`precise.estimates`, issue 12 round 25); when it falls back to the Fast models there is no
second rating to give. Training is short (the wiring, not the quality, is under test: benchmarks/ measures
that), so which ensemble `choose_precise` keeps is forced both ways."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from autolabel_worker import pipeline
from autolabel_worker.ensemble import choose_precise
from autolabel_worker.pipeline import run_job
from worker_fixtures import active_learning_job, digits

from autolabel.api import results_prefix
from autolabel.storage import Storage

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/unit/conftest.py

STEPS = 60


def precise_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep: bool) -> dict[str, Any]:
    def forced(fast: Any, precise: Any) -> Any:
        return dataclasses.replace(choose_precise(fast, precise), use_precise=keep)

    monkeypatch.setattr(pipeline, "choose_precise", forced)
    ds = digits(tmp_path)
    uid = "2f2f2f2f-0000-4000-8000-000000000000"
    # a low target so that the short-trained models auto-label something to rate
    job = active_learning_job(ds, tmp_path / "out", "precise", uid, algorithm="Precise", seed=0, targetPrecision=0.5)
    return run_job(job, Storage(), results_prefix(job), train_steps=STEPS)


def test_a_precise_run_that_keeps_its_models_says_how_its_fast_models_rate_its_labels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = precise_run(tmp_path, monkeypatch, keep=True)

    assert summary["precise"]["modelsUsed"] == "Precise"
    assert summary["autoLabeled"] > 0
    estimates = summary["precise"]["estimates"]
    assert set(estimates) == {"semiSupervisedModels", "fastModels"}
    assert all(0.0 < value <= 1.0 for value in estimates.values())
    # the run's own estimate is the rating by the models that gave the labels
    assert summary["estimatedPrecision"] == pytest.approx(estimates["semiSupervisedModels"], abs=1e-6)


def test_a_precise_run_that_falls_back_to_its_fast_models_gives_no_second_rating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = precise_run(tmp_path, monkeypatch, keep=False)

    assert summary["precise"]["modelsUsed"] == "Fast" and summary["precise"]["fellBackToFast"] is True
    assert "estimates" not in summary["precise"]
