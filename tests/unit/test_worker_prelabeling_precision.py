"""PreLabeling's precision is measured, never taken on trust: the user's model is run on the dataset's
labeled images, and estimatedPrecision is the share of its auto-accepted (not hard) predictions there that
are right, with targetVerifiable from Clopper-Pearson as for ActiveLearning. What labels.json says about
the model (``createdBy``, its confidences) earns it nothing.

The model is a TorchScript lookup table over the digits (tests/worker_fixtures.py) that answers a chosen
class for each true class with the same confidence (about 0.978) whether it is right or wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from autolabel_worker.pipeline import run_job
from worker_fixtures import UNLABELED, digits, lookup_model, prelabeling_job

from autolabel.api import results_prefix
from autolabel.storage import Storage

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/unit/conftest.py

OURS = {"createdBy": "autolabel/active-learning"}
HALF_WRONG = [0, 1, 2, 3, 4, 5, 7, 8, 9, 0]  # right on 0-5, wrong on 6-9: 30 of 50 labeled images right


def test_a_model_that_claims_to_be_ours_gets_the_precision_measured_on_the_labeled_images(tmp_path: Path) -> None:
    ds = digits(tmp_path)
    job = prelabeling_job(ds, lookup_model(tmp_path / "model", HALF_WRONG, **OURS), tmp_path / "out", target=0.6)

    summary = run_job(job, Storage(), results_prefix(job))

    # 30 of the 50 labeled images are right, all at the same confidence: nothing to separate them, so
    # every prediction is accepted (0.6 is the target) and the estimate is what was measured, not 0.978.
    assert summary["autoLabeled"] == UNLABELED
    assert summary["estimatedPrecision"] == pytest.approx(0.6)
    assert summary["targetVerifiable"] is False  # the 95% lower bound of 30/50 is about 0.48
    calibration = summary["calibration"]
    assert (calibration["heldOutPoints"], calibration["heldOutAccepted"], calibration["heldOutAcceptedCorrect"]) == (
        50,
        50,
        30,
    )


def test_a_model_that_claims_to_be_ours_but_is_wrong_on_every_labeled_image_auto_labels_nothing(
    tmp_path: Path,
) -> None:
    ds = digits(tmp_path)
    shifted = [(c + 1) % 10 for c in range(10)]
    job = prelabeling_job(ds, lookup_model(tmp_path / "model", shifted, **OURS), tmp_path / "out")

    summary = run_job(job, Storage(), results_prefix(job))

    assert summary["calibration"]["heldOutAccuracy"] == 0.0
    assert summary["autoLabeled"] == 0 and summary["hardExamples"] == UNLABELED
    assert summary["estimatedPrecision"] is None and summary["targetVerifiable"] is False


def test_a_model_right_on_sixty_labeled_images_certifies_the_target_whoever_made_it(tmp_path: Path) -> None:
    ds = digits(tmp_path, per_class=6)
    job = prelabeling_job(ds, lookup_model(tmp_path / "model"), tmp_path / "out")  # no createdBy at all

    summary = run_job(job, Storage(), results_prefix(job))

    assert summary["autoLabeled"] == UNLABELED
    assert summary["estimatedPrecision"] == 1.0
    assert summary["targetVerifiable"] is True  # 60 of 60: the lower bound 0.05 ** (1 / 60) = 0.9513 >= 0.95
    assert summary["calibration"]["lowerBound95"] == pytest.approx(0.05 ** (1 / 60), abs=1e-6)


def test_every_shard_measures_the_same_labeled_images_and_the_merge_keeps_the_measurement(tmp_path: Path) -> None:
    ds = digits(tmp_path)
    labeled = [json.loads(x)["source"] for x in ds.manifest.read_text().splitlines() if "annotation" in x]
    lost = ds.folder / labeled[0]  # a labeled image that is gone
    lost.unlink()
    job = prelabeling_job(ds, lookup_model(tmp_path / "model", HALF_WRONG, **OURS), tmp_path / "out", target=0.6)
    out = results_prefix(job)

    shards = [run_job(job, Storage(), out, shard_index=i, shard_count=2) for i in range(2)]

    merged = json.loads(Path(out, "summary.json").read_text())
    assert [s["calibration"]["heldOutPoints"] for s in shards] == [49, 49]
    measured = shards[0]["calibration"]["heldOutAcceptedCorrect"] / shards[0]["calibration"]["heldOutAccepted"]
    assert [s["estimatedPrecision"] for s in shards] == [pytest.approx(measured)] * 2
    assert merged["estimatedPrecision"] == pytest.approx(measured) and merged["targetVerifiable"] is False
    assert merged["total"] == UNLABELED
    # the missing labeled image is listed once (by shard 0), not once per shard
    assert [u["source"] for u in merged["unreadableImages"]] == [str(lost)]
