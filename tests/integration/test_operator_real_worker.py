"""The operator with the real worker (``autolabel-worker``, torch) in the pods: ActiveLearning jobs on a
small digits dataset (ImageClassification) and on a small digit-boxes dataset (ObjectDetection) go to
Succeeded with the worker's real results in their status."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from autolabel_worker.data import write_digits_dataset
from autolabel_worker.detection_data import write_detection_dataset
from devenv.cluster import LocalCluster
from devenv.s3 import MinioServer

from autolabel.manifest import parse_voc

from .operator_fixtures import (
    BUCKET,
    OperatorProcess,
    Process,
    alj,
    apply,
    condition,
    get,
    get_json,
    job_manifest,
    running_operator,
    wait_for,
)

pytestmark = [pytest.mark.needs_cluster, pytest.mark.needs_s3, pytest.mark.e2e]

UNLABELED = 120
BOX_IMAGES = 24


@pytest.fixture(scope="module")
def real_operator(
    cluster: LocalCluster,
    s3_server: MinioServer,
    s3_bucket: str,
    operator_node_runner: Process,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    """The operator with the real ``autolabel-worker`` in its Jobs' pods."""
    with running_operator(cluster, s3_server, tmp_path_factory.mktemp("real-operator"), worker_command="") as op:
        yield op


def upload_digits(s3: MinioServer, folder: Path) -> str:
    ds = write_digits_dataset(folder, labeled_per_class=5, seed=1, max_unlabeled=UNLABELED)
    prefix = f"digits-{uuid.uuid4().hex[:8]}"
    client = s3.client()
    for path in sorted((folder / "images").iterdir()):
        client.upload_file(str(path), BUCKET, f"{prefix}/images/{path.name}")
    client.upload_file(str(ds.manifest), BUCKET, f"{prefix}/digits.manifest")
    return f"s3://{BUCKET}/{prefix}/digits.manifest"


def upload_folder(s3: MinioServer, folder: Path, prefix: str) -> None:
    """Every file under ``folder`` to ``s3://BUCKET/<prefix>/<relative path>``."""
    client = s3.client()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(folder).as_posix()}")


def follow(cluster: LocalCluster, namespace: str, name: str, timeout: float) -> tuple[dict[str, Any], list[str]]:
    """The AutoLabelJob once Succeeded or Failed, and the progress stages seen on the way."""
    stages: list[str] = []
    deadline = time.monotonic() + timeout
    obj: dict[str, Any] = {}
    while time.monotonic() < deadline:
        obj = alj(cluster, namespace, name)
        status = obj.get("status") or {}
        stage = (status.get("progress") or {}).get("stage")
        if stage and (not stages or stages[-1] != stage):
            stages.append(stage)
        if status.get("phase") in ("Succeeded", "Failed"):
            break
        time.sleep(0.5)
    return obj, stages


def test_real_worker_active_learning_job_succeeds(
    cluster: LocalCluster,
    namespace: str,
    s3_server: MinioServer,
    real_operator: OperatorProcess,
    tmp_path: Path,
) -> None:
    manifest = upload_digits(s3_server, tmp_path / "digits")
    spec: dict[str, Any] = {"activeLearning": {"algorithm": "Fast", "timeBudgetSeconds": 15, "seed": 0}}
    apply(cluster, namespace, job_manifest("real", manifest, **spec))
    obj, stages = follow(cluster, namespace, "real", 300)
    status = obj["status"]
    assert status["phase"] == "Succeeded", f"{json.dumps(status, indent=1)}\n{real_operator.tail()}"
    assert condition(obj, "Succeeded")["status"] == "True"
    result = status["result"]
    assert result["total"] == UNLABELED
    assert result["autoLabeled"] + result["hardExamples"] == UNLABELED
    summary = get_json(s3_server, result["uri"].removeprefix(f"s3://{BUCKET}/") + "summary.json")
    # The status carries the worker's numbers (estimatedPrecision is null when nothing was auto-labeled).
    assert result.get("estimatedPrecision") == summary.get("estimatedPrecision")
    assert result["targetVerifiable"] is summary["targetVerifiable"] is False
    assert len(stages) >= 2 and stages[-1] == "done", stages
    key = result["uri"].removeprefix(f"s3://{BUCKET}/")
    labels = get_json(s3_server, key + "model/labels.json")
    assert labels["task"] == "ImageClassification" and labels["labels"] == [str(i) for i in range(10)]
    lines = s3_server.client().get_object(Bucket=BUCKET, Key=key + "result.manifest")["Body"].read().splitlines()
    assert len(lines) == UNLABELED


def test_real_worker_object_detection_job_succeeds(
    cluster: LocalCluster,
    namespace: str,
    s3_server: MinioServer,
    real_operator: OperatorProcess,
    tmp_path: Path,
) -> None:
    """An ObjectDetection ActiveLearning job through the operator: Succeeded, result counts in the status,
    the stages moved, a detection model/ and VOC files behind every result line. Training is cut short by
    the time budget: quality is not the point here (benchmarks/ measures it)."""
    ds = write_detection_dataset(tmp_path / "boxes", seed=2, unlabeled=BOX_IMAGES)
    prefix = f"boxes-{uuid.uuid4().hex[:8]}"
    upload_folder(s3_server, ds.folder, prefix)  # images/, annotations/*.xml, boxes.manifest: relative paths hold
    manifest = f"s3://{BUCKET}/{prefix}/{ds.manifest.name}"
    spec: dict[str, Any] = {
        "task": "ObjectDetection",
        "activeLearning": {"algorithm": "Fast", "targetPrecision": 0.9, "timeBudgetSeconds": 10, "seed": 0},
    }
    apply(cluster, namespace, job_manifest("boxes", manifest, **spec))
    obj, stages = follow(cluster, namespace, "boxes", 300)
    status = obj["status"]
    assert status["phase"] == "Succeeded", f"{json.dumps(status, indent=1)}\n{real_operator.tail()}"
    assert condition(obj, "Succeeded")["status"] == "True"
    assert condition(obj, "PreconditionsMet")["status"] == "True"
    result = status["result"]
    assert result["total"] == BOX_IMAGES
    assert result["autoLabeled"] + result["hardExamples"] == BOX_IMAGES
    assert status["progress"]["stage"] == "done" and status["progress"]["percent"] == 100
    assert len(stages) >= 2 and stages[-1] == "done", stages
    key = result["uri"].removeprefix(f"s3://{BUCKET}/")
    summary = get_json(s3_server, key + "summary.json")
    assert summary["task"] == "ObjectDetection" and summary["total"] == BOX_IMAGES
    assert result.get("estimatedPrecision") == summary.get("estimatedPrecision")
    labels = get_json(s3_server, key + "model/labels.json")
    assert labels["task"] == "ObjectDetection" and labels["labels"] == list(ds.classes)
    client = s3_server.client()
    client.head_object(Bucket=BUCKET, Key=key + "model/model.pt")
    lines = [json.loads(x) for x in client.get_object(Bucket=BUCKET, Key=key + "result.manifest")["Body"].iter_lines()]
    unlabeled = {
        f"s3://{BUCKET}/{prefix}/{line['source']}"
        for line in map(json.loads, ds.manifest.read_text().splitlines())
        if not line.get("annotation")
    }
    assert len(lines) == BOX_IMAGES and {line["source"] for line in lines} == unlabeled
    for line in lines:
        (annotation,) = line["annotation"]
        assert annotation["type"] == "modelarts/object_detection", line
        loc = annotation["annotation-loc"]
        assert loc.startswith(result["uri"]), loc  # written under the job's results prefix
        voc = client.get_object(Bucket=BUCKET, Key=loc.removeprefix(f"s3://{BUCKET}/"))["Body"].read()
        parse_voc(voc, loc)  # exists and is PASCAL VOC
        assert isinstance(line["hard"], bool) and "hard-coefficient" in line, line

    def reasons() -> set[str]:
        listed = get(cluster, namespace, "events", None, "--field-selector", "involvedObject.name=boxes") or {}
        return {e.get("reason", "") for e in listed.get("items") or []}

    wait_for(lambda: {"JobCreated", "Running", "Succeeded"} <= reasons(), 20, "the job's Events")
