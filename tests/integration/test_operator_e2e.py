"""The operator end to end against the real local control plane, the S3 server and the local node runner,
with the fake worker (tests/fakeworker.py) in the pods. One operator process serves the module; the last
test SIGKILLs and restarts it."""

from __future__ import annotations

import itertools
import json
import re
import time
import uuid
from typing import Any

import pytest
from autolabel_operator.names import JOB_UID_LABEL, dataset_key, lease_name
from devenv.cluster import LocalCluster
from devenv.s3 import MinioServer

from autolabel.manifest import DETECTION_TYPE, VOC_FORMAT

from .operator_fixtures import (
    BUCKET,
    OperatorProcess,
    alj,
    apply,
    condition,
    dataset,
    get,
    get_json,
    job_manifest,
    put,
    wait_for,
    wait_phase,
)

pytestmark = [pytest.mark.needs_cluster, pytest.mark.needs_s3, pytest.mark.usefixtures("autolabel_operator")]

FAST = {"fakeworker.autolabel.dev/seconds": "0.5"}


def seconds(n: float) -> dict[str, str]:
    return {"fakeworker.autolabel.dev/seconds": str(n)}


def worker_jobs(cluster: LocalCluster, namespace: str, uid: str) -> list[dict[str, Any]]:
    listed = get(cluster, namespace, "jobs.batch", None, "-l", f"{JOB_UID_LABEL}={uid}") or {}
    return list(listed.get("items") or [])


def lease_holder(cluster: LocalCluster, namespace: str, manifest: str) -> str | None:
    lease = get(cluster, namespace, "leases.coordination.k8s.io", lease_name(manifest)) or {}
    return (lease.get("spec") or {}).get("holderIdentity")


def events_for(cluster: LocalCluster, namespace: str, name: str) -> list[str]:
    listed = get(cluster, namespace, "events", None, "--field-selector", f"involvedObject.name={name}") or {}
    return [e.get("reason", "") for e in listed.get("items") or []]


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        sample_labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if all(sample_labels.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_valid_job_runs_pending_running_succeeded_with_progress_and_result(
    cluster: LocalCluster, namespace: str, s3_server: MinioServer, autolabel_operator: OperatorProcess
) -> None:
    manifest = dataset(s3_server, {"cat": 5, "dog": 7}, unlabeled=9)
    apply(cluster, namespace, job_manifest("digits", manifest, seconds(5)))
    phases: list[str] = []
    progress: list[int] = []
    deadline = time.monotonic() + 90
    obj: dict[str, Any] = {}
    while time.monotonic() < deadline:
        obj = alj(cluster, namespace, "digits")
        status = obj.get("status") or {}
        if status.get("phase") and (not phases or phases[-1] != status["phase"]):
            phases.append(status["phase"])
        if status.get("phase") == "Running" and status.get("progress", {}).get("processed") is not None:
            progress.append(status["progress"]["processed"])
        if status.get("phase") in ("Succeeded", "Failed"):
            break
        time.sleep(0.2)
    status = obj["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
    assert "Running" in phases and phases[-1] == "Succeeded"
    assert set(phases) <= {"Pending", "Running", "Succeeded"}, phases
    assert len(set(progress)) >= 2, f"progress never moved: {progress}"
    uid = obj["metadata"]["uid"]
    prefix = f"{manifest.rsplit('/', 1)[0]}/autolabel/digits-{uid.replace('-', '')[:8]}/"
    assert status["result"] == {
        "uri": prefix,
        "total": 9,
        "autoLabeled": 0,
        "hardExamples": 9,
        "targetVerifiable": False,
    }  # no estimatedPrecision: nothing was auto-labeled, as with the real worker
    assert status["progress"]["stage"] == "done" and status["progress"]["percent"] == 100
    assert status["jobName"] == f"digits-{uid.replace('-', '')[:8]}"
    assert status["startTime"] and status["completionTime"] and status["observedGeneration"] == 1
    assert condition(obj, "PreconditionsMet")["status"] == "True"
    assert condition(obj, "Succeeded")["status"] == "True"
    assert condition(obj, "LockAcquired")["reason"] == "Released"
    assert obj["metadata"]["labels"]["autolabel.dev/dataset"] == dataset_key(manifest)
    assert lease_holder(cluster, namespace, manifest) is None
    key = prefix.removeprefix(f"s3://{BUCKET}/")
    lines = s3_server.client().get_object(Bucket=BUCKET, Key=key + "result.manifest")["Body"].read().splitlines()
    assert len(lines) == 9
    # The history view: AutoLabelJobs of a dataset by label.
    listed = get(cluster, namespace, "autolabeljobs", None, "-l", f"autolabel.dev/dataset={dataset_key(manifest)}")
    assert [i["metadata"]["name"] for i in listed["items"]] == ["digits"]
    wanted = {"Pending", "JobCreated", "Running", "Succeeded"}  # Pending may be too short to see above
    wait_for(lambda: wanted <= set(events_for(cluster, namespace, "digits")), 20, f"events {wanted}")
    assert wait_for(autolabel_operator.healthz, 10, "the liveness endpoint")
    text = autolabel_operator.metrics()
    assert metric(text, "autolabel_jobs", phase="Succeeded") >= 1
    assert "autolabel_reconcile_errors_total{" in text
    assert metric(text, "autolabel_images_labeled_total", mode="ActiveLearning") >= 9
    assert metric(text, "autolabel_hard_examples_total", mode="ActiveLearning") >= 9
    assert metric(text, "autolabel_job_duration_seconds_count", outcome="Succeeded", mode="ActiveLearning") >= 1


def test_each_precondition_failure_names_what_is_wrong(
    cluster: LocalCluster, namespace: str, s3_server: MinioServer, autolabel_operator: OperatorProcess
) -> None:
    bad_line = put(
        s3_server,
        "bad/data.manifest",
        b'{"source": "a.png", "annotation": [{"type": "modelarts/image_classification", "name": "x"}]}\n'
        b'{"source": "b.png"}\n{"source": oops\n',
    )
    missing = f"s3://{BUCKET}/nowhere/data.manifest"
    good = dataset(s3_server)
    cases: dict[str, tuple[str, dict[str, Any], list[str]]] = {
        "one-label": (dataset(s3_server, {"cat": 9}), {}, ["TooFewLabels", '"cat"']),
        "few-dogs": (dataset(s3_server, {"cat": 5, "dog": 3}), {}, ["TooFewImagesPerLabel", '"dog" has 3']),
        "all-labeled": (dataset(s3_server, unlabeled=0), {}, ["NoUnlabeledImages"]),
        "no-manifest": (missing, {}, ["ManifestUnreadable", missing]),
        "bad-line": (bad_line, {}, ["ManifestInvalid", "line 3"]),
        "no-flavor": (good, {"resources": {"flavor": "tpu-9"}}, ["UnknownFlavor", "tpu-9"]),
        "no-model": (
            good,
            {
                "mode": "PreLabeling",
                "preLabeling": {"model": {"uri": f"s3://{BUCKET}/models/none/model.pt"}},
            },
            ["ModelNotFound", "models/none/model.pt"],
        ),
        # A user's own endpoint needs the user's own credentials; the operator's go only to its endpoint.
        "no-storage": (good, {"storage": {"endpoint": "http://127.0.0.1:9", "secretRef": {"name": "own-keys"}}},
                       ["StorageUnreachable", good]),
        "foreign-endpoint": (good, {"storage": {"endpoint": "http://127.0.0.1:9"}},
                             ["EndpointNotAllowed", "spec.storage.endpoint", "spec.storage.secretRef"]),
    }
    cluster.kubectl("create", "secret", "generic", "own-keys", "-n", namespace,
                    f"--from-literal=AWS_ACCESS_KEY_ID={s3_server.access_key}",
                    f"--from-literal=AWS_SECRET_ACCESS_KEY={s3_server.secret_key}")
    docs = [job_manifest(name, uri, FAST, **spec) for name, (uri, spec, _) in cases.items()]
    apply(cluster, namespace, "---\n".join(docs))
    for name, (_, _, expected) in cases.items():
        obj = wait_phase(cluster, namespace, name, {"Failed", "Succeeded"}, timeout=90)
        reason, words = expected[0], expected[1:]
        cond = condition(obj, "PreconditionsMet")
        assert obj["status"]["phase"] == "Failed", (name, obj["status"])
        assert cond["status"] == "False" and cond["reason"] == reason, (name, cond)
        assert condition(obj, "Failed")["reason"] == reason
        for word in words:
            assert word in cond["message"] and word in obj["status"]["message"], (name, word, cond["message"])
        assert not worker_jobs(cluster, namespace, obj["metadata"]["uid"]), name  # nothing was scheduled
    text = autolabel_operator.metrics()
    for reason in ("TooFewLabels", "ManifestInvalid", "UnknownFlavor", "StorageUnreachable"):
        assert metric(text, "autolabel_precondition_failures_total", reason=reason) >= 1, reason


def test_worker_failure_ends_failed_with_the_workers_error_and_frees_the_lock(
    cluster: LocalCluster, namespace: str, s3_server: MinioServer
) -> None:
    manifest = dataset(s3_server)
    annotations = {**FAST, "fakeworker.autolabel.dev/fail": "true"}
    apply(cluster, namespace, job_manifest("breaks", manifest, annotations))
    apply(cluster, namespace, job_manifest("after-it", manifest, FAST))
    obj = wait_phase(cluster, namespace, "breaks", {"Failed", "Succeeded"}, timeout=120)
    assert obj["status"]["phase"] == "Failed", obj["status"]
    failed = condition(obj, "Failed")
    # The worker's own reason and words; exit code 3 is not retried (podFailurePolicy FailIndex).
    assert failed["status"] == "True" and failed["reason"] == "FakeWorkerFailed", failed
    assert "fake worker told to fail" in obj["status"]["message"]
    job = worker_jobs(cluster, namespace, obj["metadata"]["uid"])[0]
    assert job["status"].get("failed") == 1, job["status"]
    assert condition(obj, "PreconditionsMet")["status"] == "True"
    assert obj["status"]["completionTime"]
    # The next job on the dataset gets the lock.
    nxt = wait_phase(cluster, namespace, "after-it", {"Failed", "Succeeded"}, timeout=120)
    assert nxt["status"]["phase"] == "Succeeded"
    wait_for(lambda: "Failed" in events_for(cluster, namespace, "breaks"), 20, "a Failed event")


def test_twenty_jobs_for_one_dataset_run_one_at_a_time_in_creation_order(
    cluster: LocalCluster, namespace: str, s3_server: MinioServer
) -> None:
    manifest = dataset(s3_server)
    names = [f"run-{i:02d}" for i in range(20)]
    apply(cluster, namespace, "---\n".join(job_manifest(n, manifest, seconds(0.3)) for n in names))
    # While they run: the others wait, naming the holder.
    waiting = wait_for(
        lambda: [o for n in names if (o := alj(cluster, namespace, n)).get("status", {}).get("phase") == "Waiting"],
        60,
        "a Waiting job",
    )
    lock = condition(waiting[0], "LockAcquired")
    assert lock["status"] == "False" and lock["reason"] == "DatasetBusy" and "AutoLabelJob run-" in lock["message"]
    objs = [wait_phase(cluster, namespace, n, {"Succeeded", "Failed"}, timeout=400) for n in names]
    assert [o["status"]["phase"] for o in objs] == ["Succeeded"] * 20
    runs = []
    for obj in objs:
        key = obj["status"]["result"]["uri"].removeprefix(f"s3://{BUCKET}/") + "summary.json"
        summary = get_json(s3_server, key)
        runs.append((obj["metadata"]["name"], summary["startedAt"], summary["finishedAt"]))
    # Never two at once, and in creation order (same creation second: by name, as created).
    for (name_a, _, end_a), (name_b, start_b, _) in itertools.pairwise(runs):
        assert end_a <= start_b, f"{name_b} started before {name_a} finished: {runs}"
    assert lease_holder(cluster, namespace, manifest) is None


def test_prelabeling_with_three_nodes_creates_one_indexed_job_of_three(
    cluster: LocalCluster, namespace: str, s3_server: MinioServer
) -> None:
    manifest = dataset(s3_server, unlabeled=10)
    put(s3_server, "models/m1/model.pt", b"not really torchscript")
    put(
        s3_server,
        "models/m1/labels.json",
        json.dumps({"task": "ImageClassification", "labels": ["cat", "dog"]}).encode(),
    )
    spec = {
        "mode": "PreLabeling",
        "preLabeling": {"model": {"uri": f"s3://{BUCKET}/models/m1/"}},
        "resources": {"computeNodes": 3},
    }
    apply(cluster, namespace, job_manifest("shards", manifest, FAST, **spec))
    obj = wait_phase(cluster, namespace, "shards", {"Succeeded", "Failed"}, timeout=120)
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    jobs = worker_jobs(cluster, namespace, obj["metadata"]["uid"])
    assert len(jobs) == 1
    job_spec = jobs[0]["spec"]
    assert job_spec["completionMode"] == "Indexed"
    assert job_spec["completions"] == job_spec["parallelism"] == 3
    assert jobs[0]["status"]["succeeded"] == 3
    assert obj["status"]["result"]["total"] == 10


def test_gpu_request_that_cannot_fit_is_queued_with_the_schedulers_reason(
    cluster: LocalCluster, namespace: str, s3_server: MinioServer
) -> None:
    manifest = dataset(s3_server)
    apply(cluster, namespace, job_manifest("big", manifest, FAST, resources={"flavor": "gpu-8"}))
    obj = wait_phase(cluster, namespace, "big", "Queued", timeout=60)
    running = condition(obj, "Running")
    assert running["reason"] == "Unschedulable"
    assert "nvidia.com/gpu" in running["message"] and "nvidia.com/gpu" in obj["status"]["message"]
    job = worker_jobs(cluster, namespace, obj["metadata"]["uid"])[0]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "8"


def test_queue_name_creates_the_job_suspended_with_the_kueue_label(
    cluster: LocalCluster, namespace: str, s3_server: MinioServer
) -> None:
    manifest = dataset(s3_server)
    apply(cluster, namespace, job_manifest("kueued", manifest, FAST, queueName="gpu-queue"))
    obj = wait_phase(cluster, namespace, "kueued", "Queued", timeout=60)
    job = worker_jobs(cluster, namespace, obj["metadata"]["uid"])[0]
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert condition(obj, "Admitted")["reason"] == "WaitingForAdmission"
    time.sleep(3)  # nothing resumes it but Kueue
    assert alj(cluster, namespace, "kueued")["status"]["phase"] == "Queued"


def active_pods(cluster: LocalCluster, namespace: str, uid: str) -> list[str]:
    listed = get(cluster, namespace, "pods", None, "-l", f"{JOB_UID_LABEL}={uid}") or {}
    return [
        p["metadata"]["name"]
        for p in listed.get("items") or []
        if p["status"].get("phase") in ("Pending", "Running") and not p["metadata"].get("deletionTimestamp")
    ]


def test_suspend_then_resume(cluster: LocalCluster, namespace: str, s3_server: MinioServer) -> None:
    manifest = dataset(s3_server)
    apply(cluster, namespace, job_manifest("pausable", manifest, seconds(8)))
    obj = wait_phase(cluster, namespace, "pausable", "Running", timeout=60)
    uid = obj["metadata"]["uid"]
    cluster.kubectl("patch", "alj", "pausable", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    obj = wait_phase(cluster, namespace, "pausable", "Suspended", timeout=30)
    assert condition(obj, "LockAcquired")["reason"] == "Suspended"
    assert worker_jobs(cluster, namespace, uid)[0]["spec"]["suspend"] is True
    wait_for(lambda: not active_pods(cluster, namespace, uid), 30, "the pods to go away")
    assert lease_holder(cluster, namespace, manifest) is None
    cluster.kubectl("patch", "alj", "pausable", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    wait_phase(cluster, namespace, "pausable", "Running", timeout=60)
    obj = wait_phase(cluster, namespace, "pausable", {"Succeeded", "Failed"}, timeout=90)
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    assert len(worker_jobs(cluster, namespace, uid)) == 1


def test_delete_mid_run_removes_job_and_pods_frees_lock_keeps_results(
    cluster: LocalCluster, namespace: str, s3_server: MinioServer
) -> None:
    manifest = dataset(s3_server)
    apply(cluster, namespace, job_manifest("doomed", manifest, seconds(20)))
    obj = wait_phase(cluster, namespace, "doomed", "Running", timeout=60)
    uid = obj["metadata"]["uid"]
    wait_for(lambda: alj(cluster, namespace, "doomed")["status"].get("progress"), 30, "progress")
    assert lease_holder(cluster, namespace, manifest) == uid
    cluster.kubectl("delete", "alj", "doomed", "-n", namespace, "--timeout=120s")
    wait_for(lambda: not worker_jobs(cluster, namespace, uid), 30, "the Job to be deleted")
    wait_for(
        lambda: not (get(cluster, namespace, "pods", None, "-l", f"{JOB_UID_LABEL}={uid}") or {}).get("items"),
        60,
        "pods gone",
    )
    assert lease_holder(cluster, namespace, manifest) is None
    prefix = obj["status"].get("jobName")
    key = f"{manifest.rsplit('/', 1)[0].removeprefix(f's3://{BUCKET}/')}/autolabel/{prefix}/progress.json"
    assert get_json(s3_server, key)["stage"]  # results already written are kept


def test_operator_sigkilled_mid_run_and_restarted_converges(
    cluster: LocalCluster, namespace: str, s3_server: MinioServer, autolabel_operator: OperatorProcess
) -> None:
    manifest = dataset(s3_server)
    apply(cluster, namespace, job_manifest("survivor", manifest, seconds(8)))
    apply(cluster, namespace, job_manifest("next-in-line", manifest, FAST))
    obj = wait_phase(cluster, namespace, "survivor", "Running", timeout=60)
    uid = obj["metadata"]["uid"]
    autolabel_operator.kill()
    time.sleep(2)
    autolabel_operator.start()
    obj = wait_phase(cluster, namespace, "survivor", {"Succeeded", "Failed"}, timeout=120)
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    assert len(worker_jobs(cluster, namespace, uid)) == 1
    nxt = wait_phase(cluster, namespace, "next-in-line", {"Succeeded", "Failed"}, timeout=120)
    assert nxt["status"]["phase"] == "Succeeded"
    assert len(worker_jobs(cluster, namespace, nxt["metadata"]["uid"])) == 1
    assert lease_holder(cluster, namespace, manifest) is None
    summary_a = get_json(s3_server, obj["status"]["result"]["uri"].removeprefix(f"s3://{BUCKET}/") + "summary.json")
    summary_b = get_json(s3_server, nxt["status"]["result"]["uri"].removeprefix(f"s3://{BUCKET}/") + "summary.json")
    assert summary_a["finishedAt"] <= summary_b["startedAt"]  # the lock held across the restart


def detection_dataset(s3: MinioServer, unlabeled: int = 3) -> str:
    """A detection manifest (labeled lines point at VOC files through annotation-loc) in a fresh folder."""
    folder = f"det-{uuid.uuid4().hex[:8]}"
    voc = "<annotation><size><width>8</width><height>8</height><depth>3</depth></size></annotation>"
    lines = []
    for n in range(6):
        put(s3, f"{folder}/voc/{n}.xml", voc.encode())
        ann = {"type": DETECTION_TYPE, "annotation-loc": f"voc/{n}.xml", "annotation-format": VOC_FORMAT}
        lines.append(json.dumps({"source": f"img/{n}.png", "annotation": [ann]}))
    lines += [json.dumps({"source": f"img/u{n}.png"}) for n in range(unlabeled)]
    return put(s3, f"{folder}/data.manifest", ("\n".join(lines) + "\n").encode())


def model_for(s3: MinioServer, task: str) -> str:
    """A model folder: any model.pt bytes (the operator never loads it) and a labels.json for ``task``."""
    folder = f"models/{task.lower()}-{uuid.uuid4().hex[:8]}"
    put(s3, f"{folder}/model.pt", b"not read by the operator")
    put(s3, f"{folder}/labels.json", json.dumps({"task": task, "labels": ["cat", "dog"]}).encode())
    return f"s3://{BUCKET}/{folder}/"


def test_model_for_the_other_task_fails_before_any_job_or_lock(
    cluster: LocalCluster, namespace: str, s3_server: MinioServer
) -> None:
    """ModelTaskMismatch both ways: the operator reads labels.json before taking the dataset lock, so the
    AutoLabelJob fails with no batch/v1 Job, no pod and a free Lease."""
    boxes, classes = detection_dataset(s3_server), dataset(s3_server)
    cases = {
        # (manifest, job task, model task)
        "boxes-with-classifier": (boxes, "ObjectDetection", "ImageClassification"),
        "classes-with-detector": (classes, "ImageClassification", "ObjectDetection"),
    }
    docs = [
        job_manifest(
            name,
            manifest,
            FAST,
            task=task,
            mode="PreLabeling",
            preLabeling={"model": {"uri": model_for(s3_server, model_task)}},
            resources={"computeNodes": 2},
        )
        for name, (manifest, task, model_task) in cases.items()
    ]
    apply(cluster, namespace, "---\n".join(docs))
    for name, (manifest, task, model_task) in cases.items():
        obj = wait_phase(cluster, namespace, name, {"Failed", "Succeeded"}, timeout=90)
        status = obj["status"]
        assert status["phase"] == "Failed", (name, status)
        cond = condition(obj, "PreconditionsMet")
        assert cond["status"] == "False" and cond["reason"] == "ModelTaskMismatch", (name, cond)
        assert condition(obj, "Failed")["reason"] == "ModelTaskMismatch"
        assert f"is for {model_task}; the job's task is {task}" in status["message"], status["message"]
        assert not worker_jobs(cluster, namespace, obj["metadata"]["uid"]), name
        assert not status.get("jobName") and not status.get("startTime"), status
        assert lease_holder(cluster, namespace, manifest) is None
        assert "JobCreated" not in events_for(cluster, namespace, name)
    assert not (get(cluster, namespace, "jobs.batch") or {}).get("items")  # none at all in the namespace
    assert not (get(cluster, namespace, "pods") or {}).get("items")


def test_pretrained_weights_are_checked_before_the_lock(
    cluster: LocalCluster, namespace: str, s3_server: MinioServer
) -> None:
    """spec.activeLearning.pretrainedWeights on the operator's credentials: another bucket is BucketNotAllowed
    (like the manifest), a missing object ModelNotFound; neither gets a Job."""
    boxes = detection_dataset(s3_server)
    weights = put(s3_server, f"weights/{uuid.uuid4().hex[:8]}/fcos.pt", b"a state_dict")
    cases = {
        "foreign-weights": ("s3://other-bucket/fcos.pt", ["BucketNotAllowed", "spec.activeLearning.pretrainedWeights"]),
        "missing-weights": (f"s3://{BUCKET}/weights/none.pt", ["ModelNotFound", "weights/none.pt"]),
    }
    docs = [
        job_manifest(name, boxes, FAST, task="ObjectDetection", activeLearning={"pretrainedWeights": uri})
        for name, (uri, _) in cases.items()
    ]
    apply(cluster, namespace, "---\n".join(docs))
    for name, (_, expected) in cases.items():
        obj = wait_phase(cluster, namespace, name, {"Failed", "Succeeded"}, timeout=90)
        cond = condition(obj, "PreconditionsMet")
        assert obj["status"]["phase"] == "Failed" and cond["reason"] == expected[0], (name, cond)
        assert expected[1] in cond["message"], cond["message"]
        assert not worker_jobs(cluster, namespace, obj["metadata"]["uid"]), name
    # Weights that exist in an allowed bucket pass the operator's check (the fake worker runs the job).
    apply(cluster, namespace, job_manifest("with-weights", boxes, FAST, task="ObjectDetection",
                                           activeLearning={"pretrainedWeights": weights}))
    obj = wait_phase(cluster, namespace, "with-weights", {"Failed", "Succeeded"}, timeout=90)
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
