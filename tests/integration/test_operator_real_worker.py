"""The operator with the real worker (``autolabel-worker``, torch) in the pods: an ActiveLearning job on a
small digits dataset goes to Succeeded with the worker's real results in its status."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from autolabel_worker.data import write_digits_dataset
from devenv.cluster import LocalCluster
from devenv.s3 import MinioServer

from .operator_fixtures import (
    BUCKET,
    OperatorProcess,
    Process,
    alj,
    apply,
    condition,
    get_json,
    job_manifest,
    running_operator,
)

pytestmark = [pytest.mark.needs_cluster, pytest.mark.needs_s3, pytest.mark.e2e]

UNLABELED = 120


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
    stages: list[str] = []
    deadline = time.monotonic() + 300
    obj: dict[str, Any] = {}
    while time.monotonic() < deadline:
        obj = alj(cluster, namespace, "real")
        status = obj.get("status") or {}
        stage = (status.get("progress") or {}).get("stage")
        if stage and (not stages or stages[-1] != stage):
            stages.append(stage)
        if status.get("phase") in ("Succeeded", "Failed"):
            break
        time.sleep(0.5)
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
