"""A full worker run against the real S3 server: ActiveLearning on a small digits dataset, then PreLabeling
with the model it exported, split over two shards."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from autolabel_worker.data import write_digits_dataset
from autolabel_worker.models import load_model
from autolabel_worker.pipeline import run_job
from worker_fixtures import upload_digits

from autolabel.api import AutoLabelJob, results_prefix
from autolabel.storage import Storage

pytestmark = pytest.mark.needs_s3

UNLABELED = 240


@pytest.fixture
def dataset(s3_server: Any, storage: Storage, tmp_path: Path) -> tuple[str, dict[str, str]]:
    """The digits with 5 labels per class and 240 unlabeled images, uploaded; returns (manifest URI, truth)."""
    bucket = f"wml-{uuid.uuid4().hex[:10]}"
    s3_server.make_bucket(bucket)
    base, ds = upload_digits(storage, bucket, tmp_path / "digits", seed=3, unlabeled=UNLABELED)
    truth = {f"{base}{src}": label for src, label in json.loads(ds.ground_truth.read_text()).items()}
    return f"{base}digits.manifest", truth


def make_job(manifest: str, mode: str = "ActiveLearning", **spec: Any) -> AutoLabelJob:
    doc: dict[str, Any] = {
        "metadata": {"name": f"t-{mode.lower()}", "namespace": "test", "uid": str(uuid.uuid4())},
        "spec": {
            "task": "ImageClassification",
            "mode": mode,
            "dataset": {"manifest": manifest},
            "activeLearning": {"algorithm": "Fast", "seed": 0, "timeBudgetSeconds": 120},
            **spec,
        },
    }
    return AutoLabelJob.model_validate(doc)


def read_lines(storage: Storage, uri: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in storage.iter_lines(uri) if line.strip()]


def test_active_learning_then_sharded_prelabeling(
    storage: Storage, dataset: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest, truth = dataset
    manifest_before = storage.read_bytes(manifest)
    monkeypatch.setenv("AUTOLABEL_TORCH_THREADS", "1")

    job = make_job(manifest)
    out = results_prefix(job)
    summary = run_job(job, storage, out, train_steps=150)  # a short but real training run

    # --- results: one line per unlabeled image, in the documented format (job_image/README.md)
    lines = read_lines(storage, out + "result.manifest")
    assert len(lines) == UNLABELED == summary["total"]
    assert {line["source"] for line in lines} == set(truth)
    for line in lines:
        (ann,) = line["annotation"]
        assert ann["type"] == "modelarts/image_classification"
        assert ann["annotated-by"] == "autolabel/active-learning"
        assert 0.0 <= ann["confidence"] <= 1.0
        assert isinstance(line["hard"], bool) and 0.0 <= line["hard-coefficient"] <= 1.0
        reasons = line["hard-reasons"]
        assert (reasons == "") == (not line["hard"])
        assert all(r in {"1", "3", "21", "23", "24", "28"} for r in reasons.split("-") if r)
    correct = sum(truth[line["source"]] == line["annotation"][0]["name"] for line in lines)
    assert correct / len(lines) > 0.6, "the model did not learn"

    # --- summary and progress
    assert summary["autoLabeled"] + summary["hardExamples"] == UNLABELED
    assert summary["autoLabeled"] == sum(not line["hard"] for line in lines)
    assert summary["targetPrecision"] == 0.95
    assert summary["targetVerifiable"] is False  # 50 labeled images cannot certify 0.95
    assert any("not verifiable" in note for note in summary["notes"])
    assert summary["labels"] == [str(i) for i in range(10)]
    assert summary["algorithm"] == "Fast" and summary["mode"] == "ActiveLearning"
    assert summary["durationSeconds"] > 0 and summary["imagesPerSecond"] > 0
    assert summary["unreadableImages"] == [] and summary["duplicates"] == []
    assert summary["training"]["mirrorImages"] == {"used": False, "reason": "images under 32 px are never mirrored"}
    assert summary["secondOpinion"]["used"] is False  # texture statistics cannot tell digits apart
    assert summary["secondOpinion"]["reason"].startswith("not used: texture statistics got")
    ensemble = summary["calibration"]["ensemble"]  # the ensemble's own temperature, from the pool
    assert 0 < ensemble["ensembleTemperature"] <= 1 and ensemble["memberErrorFrom"] in {"pool", "held-out"}
    assert all(0 < t <= 1 for t in ensemble["classTemperatures"].values())  # per predicted class, by label
    assert ensemble["poolSample"] == min(UNLABELED, 1000)
    assert json.loads(storage.read_bytes(out + "summary.json")) == summary
    progress = json.loads(storage.read_bytes(out + "progress.json"))
    assert progress["stage"] == "done" and progress["percent"] == 100
    assert storage.read_bytes(manifest) == manifest_before  # the input is never touched

    # --- the exported model is a loadable TorchScript model with its labels
    labels_json = json.loads(storage.read_bytes(out + "model/labels.json"))
    assert labels_json["task"] == "ImageClassification" and labels_json["inputSize"] == [8, 8]
    assert labels_json["ttaViews"] == ["crop", "scale", "translate", "brighter", "darker"]  # PreLabeling reruns them
    bundle = load_model(storage.read_bytes(out + "model/model.pt"), json.dumps(labels_json).encode(), out)
    assert bundle.labels == summary["labels"]

    # --- PreLabeling with that model over two shards: same predictions, merged once both are done
    pre_job = make_job(manifest, mode="PreLabeling", preLabeling={"model": {"uri": out + "model/"}})
    pre_out = results_prefix(pre_job)
    first = run_job(pre_job, storage, pre_out, shard_index=1, shard_count=2)
    assert not storage.exists(pre_out + "result.manifest")  # shard 0 has not finished: nothing merged
    second = run_job(pre_job, storage, pre_out, shard_index=0, shard_count=2)
    assert first["total"] + second["total"] == UNLABELED and first["total"] > 0 and second["total"] > 0
    merged = json.loads(storage.read_bytes(pre_out + "summary.json"))
    assert merged["total"] == UNLABELED and merged["shards"] == 2
    pre_lines = read_lines(storage, pre_out + "result.manifest")
    assert len(pre_lines) == UNLABELED
    by_source = {line["source"]: line["annotation"][0]["name"] for line in lines}
    assert all(line["annotation"][0]["annotated-by"] == "autolabel/pre-labeling" for line in pre_lines)
    assert {line["source"]: line["annotation"][0]["name"] for line in pre_lines} == by_source
    # the exported model carries the ensemble temperature: the same confidences as the run that made it
    confidence = {line["source"]: line["annotation"][0]["confidence"] for line in lines}
    pre_confidence = {line["source"]: line["annotation"][0]["confidence"] for line in pre_lines}
    assert pre_confidence == pytest.approx(confidence, abs=1e-5)

    # Re-running a shard is idempotent: same objects, same merged result.
    run_job(pre_job, storage, pre_out, shard_index=1, shard_count=2)
    assert len(read_lines(storage, pre_out + "result.manifest")) == UNLABELED


def test_a_classification_dataset_given_to_a_detection_job_is_refused_naming_the_annotation_type(
    storage: Storage, dataset: tuple[str, dict[str, str]]
) -> None:
    from autolabel_worker.preflight import PreflightError

    manifest, _ = dataset
    job = make_job(manifest)
    job = AutoLabelJob.model_validate(
        {**job.model_dump(by_alias=True, mode="json"), "spec": {**job.spec.to_wire(), "task": "ObjectDetection"}}
    )
    with pytest.raises(PreflightError, match="modelarts/image_classification") as info:
        run_job(job, storage, results_prefix(job))
    assert info.value.reason == "ManifestInvalid"
    assert not storage.exists(results_prefix(job) + "result.manifest")


def test_too_few_labels_fail_before_training(
    storage: Storage, s3_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from autolabel_worker.preflight import PreflightError

    bucket = f"wml-{uuid.uuid4().hex[:10]}"
    s3_server.make_bucket(bucket)
    ds = write_digits_dataset(tmp_path / "d", labeled_per_class=5, seed=0, max_unlabeled=5)
    lines = ds.manifest.read_text().splitlines()
    # Drop the labels of class "7" except three.
    kept, sevens = [], 0
    for line in lines:
        if '"name": "7"' in line:
            sevens += 1
            if sevens > 3:
                continue
        kept.append(line)
    for path in (tmp_path / "d" / "images").iterdir():
        storage.upload_file(str(path), f"s3://{bucket}/d/images/{path.name}")
    storage.write_bytes(f"s3://{bucket}/d/digits.manifest", ("\n".join(kept) + "\n").encode())
    job = make_job(f"s3://{bucket}/d/digits.manifest")
    with pytest.raises(PreflightError, match='"7"') as info:
        run_job(job, storage, results_prefix(job))
    assert info.value.reason == "TooFewImagesPerLabel"
    progress = json.loads(storage.read_bytes(results_prefix(job) + "progress.json"))
    assert progress["stage"] == "failed"


def test_prelabeling_a_users_model_over_more_shards_than_images(tmp_path: Path) -> None:
    """A user's own TorchScript model (raw logits, uncalibrated) on local files: 5 shards for 3 images, so
    some shards get nothing and must still finish; no precision is claimed for an uncalibrated model."""
    import torch
    from autolabel_worker.models import SmallCNN

    ds = write_digits_dataset(tmp_path / "d", labeled_per_class=5, seed=0, max_unlabeled=3)
    torch.manual_seed(0)
    model_dir = tmp_path / "user-model"
    model_dir.mkdir()
    torch.jit.script(SmallCNN(10, (8, 8), 8).eval()).save(str(model_dir / "model.pt"))
    (model_dir / "labels.json").write_text(
        json.dumps({"task": "ImageClassification", "labels": [f"d{i}" for i in range(10)], "inputSize": [8, 8]})
    )
    job = make_job(str(ds.manifest), mode="PreLabeling", preLabeling={"model": {"uri": str(model_dir) + "/"}})
    job = AutoLabelJob.model_validate(
        {**job.model_dump(by_alias=True, mode="json"), "spec": {**job.spec.to_wire(), "output": str(tmp_path / "out")}}
    )
    out = results_prefix(job)
    storage = Storage()
    totals = [run_job(job, storage, out, shard_index=i, shard_count=5)["total"] for i in range(5)]
    assert sum(totals) == 3 and 0 in totals
    merged = json.loads(Path(out, "summary.json").read_text())
    assert merged["total"] == 3 and merged["shards"] == 5
    assert merged["estimatedPrecision"] is None
    lines = [json.loads(line) for line in Path(out, "result.manifest").read_text().splitlines()]
    assert len(lines) == 3
    assert all(line["annotation"][0]["name"].startswith("d") for line in lines)
    assert all(line["annotation"][0]["annotated-by"] == "autolabel/pre-labeling" for line in lines)


def test_same_seed_same_results_on_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOLABEL_TORCH_THREADS", "1")
    ds = write_digits_dataset(tmp_path / "d", labeled_per_class=5, seed=2, max_unlabeled=100)
    outputs = []
    for run in range(2):
        job = make_job(str(ds.manifest))
        job = AutoLabelJob.model_validate(
            {
                **job.model_dump(by_alias=True, mode="json"),
                "spec": {**job.spec.to_wire(), "output": str(tmp_path / f"out{run}")},
            }
        )
        out = results_prefix(job)
        run_job(job, Storage(), out, train_steps=40)
        outputs.append(Path(out, "result.manifest").read_text())
    assert outputs[0] == outputs[1]
    assert len(outputs[0].splitlines()) == 100


def test_no_image_below_min_confidence_is_auto_labeled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOLABEL_TORCH_THREADS", "1")
    ds = write_digits_dataset(tmp_path / "d", labeled_per_class=5, seed=2, max_unlabeled=100)
    job = make_job(str(ds.manifest))
    spec = job.spec.to_wire()
    spec["activeLearning"]["minConfidence"] = 0.9
    job = AutoLabelJob.model_validate(
        {**job.model_dump(by_alias=True, mode="json"), "spec": {**spec, "output": str(tmp_path / "out")}}
    )
    out = results_prefix(job)
    summary = run_job(job, Storage(), out, train_steps=150)
    lines = [json.loads(line) for line in Path(out, "result.manifest").read_text().splitlines()]
    below = [line for line in lines if line["annotation"][0]["confidence"] < 0.9]
    assert below, "the model is sure of everything: the floor is not tested"
    assert all(line["hard"] and "1" in line["hard-reasons"].split("-") for line in below)
    assert summary["calibration"]["minConfidence"] == 0.9
    assert all(t >= 0.9 for t in summary["calibration"]["classThresholds"].values())
