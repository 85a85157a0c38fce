"""The worker Job, its ConfigMap and credentials Secret, built from an AutoLabelJob."""

from __future__ import annotations

import json
from typing import Any

from autolabel_operator.config import Flavor, Settings, parse_flavors
from autolabel_operator.credentials import JobCredentials
from autolabel_operator.jobs import (
    JOB_CONFIG_KEY,
    build_configmap,
    build_credentials_secret,
    build_job,
    credentials_secret_name,
    issues_job_credentials,
)
from autolabel_operator.names import (
    DATASET_LABEL,
    JOB_LABEL,
    JOB_UID_LABEL,
    KUEUE_QUEUE_LABEL,
    child_name,
    dataset_key,
    lease_name,
)

from autolabel.api import AutoLabelJob, results_prefix

UID = "7f3c2a1b-0000-4000-8000-000000000001"
FLAVORS = parse_flavors(
    """
flavors:
  cpu: {resources: {requests: {cpu: "1"}}}
  gpu-1:
    resources: {limits: {nvidia.com/gpu: 1}}
    nodeSelector: {gpu: "yes"}
    tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
""",
    "test",
)
SETTINGS = Settings(
    flavors=FLAVORS,
    s3_endpoint="http://minio:9000",
    s3_region="eu-1",
    access_key="op-key",
    secret_key="op-secret",
    default_credentials_namespaces=("team-a",),
    allowed_buckets=("datasets",),
    worker_image="registry/worker:1",
    worker_command=("autolabel-worker",),
)


def body(name: str = "digits-al", **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "task": "ImageClassification",
        "mode": "ActiveLearning",
        "dataset": {"manifest": "s3://datasets/digits/digits.manifest"},
    }
    base.update(spec)
    return {
        "apiVersion": "autolabel.dev/v1alpha1",
        "kind": "AutoLabelJob",
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "uid": UID,
            "generation": 1,
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "x" * 1000, "note": "n"},
        },
        "spec": base,
    }


def model(raw: dict[str, Any]) -> AutoLabelJob:
    return AutoLabelJob.model_validate(raw)


def container(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]["containers"][0]


def env_of(job: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(job)["env"]}


def test_active_learning_job_shape() -> None:
    raw = body(activeDeadlineSeconds=3600, ttlSecondsAfterFinished=60)
    job = model(raw)
    manifest = build_job(raw, job, SETTINGS, FLAVORS.flavors["cpu"])
    assert manifest["metadata"]["name"] == "digits-al-7f3c2a1b" == child_name(job)
    assert manifest["metadata"]["ownerReferences"][0] | {} == {
        "apiVersion": "autolabel.dev/v1alpha1",
        "kind": "AutoLabelJob",
        "name": "digits-al",
        "uid": UID,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    spec = manifest["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 1
    assert spec["suspend"] is False  # no Kueue: never suspended
    assert KUEUE_QUEUE_LABEL not in manifest["metadata"]["labels"]
    assert spec["activeDeadlineSeconds"] == 3600 and spec["ttlSecondsAfterFinished"] == 60
    assert spec["backoffLimitPerIndex"] >= 1 and spec["maxFailedIndexes"] == 0
    assert spec["podFailurePolicy"]["rules"][0] == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget"}],
    }
    fail_index = spec["podFailurePolicy"]["rules"][1]
    assert fail_index["action"] == "FailIndex"
    assert fail_index["onExitCodes"] == {"containerName": "worker", "operator": "In", "values": [2, 3, 5]}
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    labels = spec["template"]["metadata"]["labels"]
    assert labels[JOB_LABEL] == "digits-al" and labels[JOB_UID_LABEL] == UID
    assert labels[DATASET_LABEL] == dataset_key("s3://datasets/digits/digits.manifest")
    c = container(manifest)
    assert c["command"] == ["autolabel-worker"] and c["image"] == "registry/worker:1"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    # The only volume is an emptyDir for /tmp.
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {}}]
    assert c["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert "topologySpreadConstraints" not in pod and "nodeSelector" not in pod
    assert c["resources"] == {"requests": {"cpu": "1"}}


def test_env_contract_credentials_only_by_reference() -> None:
    raw = body()
    job = model(raw)
    env = env_of(build_job(raw, job, SETTINGS, FLAVORS.flavors["cpu"]))
    assert env["AUTOLABEL_JOB"] == {"configMapKeyRef": {"name": "digits-al-7f3c2a1b", "key": JOB_CONFIG_KEY}}
    assert env["AUTOLABEL_OUTPUT"] == results_prefix(job) == "s3://datasets/digits/autolabel/digits-al-7f3c2a1b/"
    assert env["AUTOLABEL_SHARDS"] == "1"
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000" and env["AWS_REGION"] == "eu-1"
    secret = credentials_secret_name(job, SETTINGS)
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": secret, "key": "AWS_ACCESS_KEY_ID"}}
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": secret, "key": "AWS_SECRET_ACCESS_KEY"}}
    text = json.dumps(build_job(raw, job, SETTINGS, FLAVORS.flavors["cpu"]))
    assert "op-secret" not in text and "op-key" not in text


def test_the_per_job_secret_holds_the_scoped_credentials_only_for_jobs_without_a_secret_ref() -> None:
    raw = body()
    job = model(raw)
    assert issues_job_credentials(job, SETTINGS)
    secret = build_credentials_secret(raw, job, JobCredentials("tmp-key", "tmp-secret", "tmp-token", "later"))
    assert secret["stringData"] == {
        "AWS_ACCESS_KEY_ID": "tmp-key",
        "AWS_SECRET_ACCESS_KEY": "tmp-secret",
        "AWS_SESSION_TOKEN": "tmp-token",
    }
    assert secret["metadata"]["ownerReferences"][0]["uid"] == UID
    env = env_of(build_job(raw, job, SETTINGS, FLAVORS.flavors["cpu"]))
    assert env["AWS_SESSION_TOKEN"]["secretKeyRef"] == {
        "name": secret["metadata"]["name"], "key": "AWS_SESSION_TOKEN", "optional": True
    }
    own = body(storage={"endpoint": "https://s3.example", "secretRef": {"name": "mine"}})
    own_job = model(own)
    assert not issues_job_credentials(own_job, SETTINGS)
    env = env_of(build_job(own, own_job, SETTINGS, FLAVORS.flavors["cpu"]))
    assert env["AWS_ACCESS_KEY_ID"]["secretKeyRef"]["name"] == "mine"
    assert env["AWS_ENDPOINT_URL"] == "https://s3.example"
    anonymous = Settings(flavors=FLAVORS, default_credentials_namespaces=("*",))
    assert not issues_job_credentials(job, anonymous)
    assert "AWS_ACCESS_KEY_ID" not in env_of(build_job(raw, job, anonymous, FLAVORS.flavors["cpu"]))


def test_prelabeling_is_indexed_with_one_shard_per_node_spread_over_nodes() -> None:
    raw = body(
        mode="PreLabeling",
        preLabeling={"model": {"uri": "s3://models/m/"}},
        resources={"computeNodes": 3, "flavor": "gpu-1"},
        activeLearning=None,
    )
    job = model(raw)
    flavor = FLAVORS.get("gpu-1")
    assert flavor is not None
    manifest = build_job(raw, job, SETTINGS, flavor)
    spec = manifest["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 3
    assert env_of(manifest)["AUTOLABEL_SHARDS"] == "3"
    pod = spec["template"]["spec"]
    spread = pod["topologySpreadConstraints"][0]
    assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["maxSkew"] == 1
    assert pod["nodeSelector"] == {"gpu": "yes"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert container(manifest)["resources"]["requests"]["nvidia.com/gpu"] == "1"


def test_queue_name_creates_suspended_job_with_kueue_label() -> None:
    raw = body(queueName="gpu-queue")
    job = model(raw)
    manifest = build_job(raw, job, SETTINGS, Flavor())
    assert manifest["spec"]["suspend"] is True
    assert manifest["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "gpu-queue"


def test_configmap_carries_the_job_without_bulky_annotations() -> None:
    raw = body()
    cm = build_configmap(raw, model(raw))
    described = json.loads(cm["data"][JOB_CONFIG_KEY])
    assert described["metadata"] == {
        "name": "digits-al",
        "namespace": "team-a",
        "uid": UID,
        "labels": {},
        "annotations": {"note": "n"},
    }
    assert described["spec"] == raw["spec"]
    assert AutoLabelJob.model_validate(described).run_name == "digits-al-7f3c2a1b"


def test_names_fit_in_63_characters_and_stay_distinct() -> None:
    long = "a" * 70
    raw = body(name=long)
    job = model(raw)
    assert len(child_name(job)) <= 63 and child_name(job).endswith("-7f3c2a1b")
    assert lease_name("s3://a/b.manifest") != lease_name("s3://a/c.manifest")
    assert len(lease_name("s3://a/b.manifest")) <= 63
