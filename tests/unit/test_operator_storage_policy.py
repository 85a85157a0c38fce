"""The operator's rights are not the users' rights (issue 10, items 6 and 7): the operator's storage
credentials are used only in namespaces the cluster admin allowed, only against the operator's own
endpoint, and only for allowed buckets; a job with its own Secret is not limited."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from autolabel_operator import preconditions
from autolabel_operator.config import ConfigError, Settings, same_endpoint
from autolabel_operator.credentials import JobCredentials, duration_seconds, session_policy
from autolabel_operator.jobs import build_credentials_secret, build_job, credentials_secret_name, issues_job_credentials
from autolabel_operator.kube import Kube
from autolabel_operator.preconditions import Credentials, storage_config
from autolabel_operator.reconcile import Children, Reconciler, candidate_of
from fakes import FakeKube, LocalS3Storage, issue_fake_credentials

from autolabel.api import AutoLabelJob, results_prefix
from autolabel.preconditions import PreconditionFailure, check_manifest
from autolabel.storage import ObjectNotFound, Storage

OPERATOR = {"access_key": "op-key", "secret_key": "op-secret", "s3_endpoint": "http://minio.storage:9000"}
LABELED = [
    json.dumps({"source": f"img/{c}{i}.png", "annotation": [{"type": "modelarts/image_classification", "name": c}]})
    for c in ("cat", "dog")
    for i in range(5)
]


class MemoryStorage(Storage):
    """s3:// objects in memory; records every object it was asked about."""

    def __init__(self, objects: dict[str, str]) -> None:
        super().__init__()
        self.objects = objects
        self.asked: list[str] = []

    def iter_lines(self, uri: str) -> Iterator[str]:
        self.asked.append(uri)
        if uri not in self.objects:
            raise ObjectNotFound(uri, "no such object")
        return iter(self.objects[uri].splitlines())

    def read_bytes(self, uri: str) -> bytes:
        self.asked.append(uri)
        if uri not in self.objects:
            raise ObjectNotFound(uri, "no such object")
        return self.objects[uri].encode()

    def exists(self, uri: str) -> bool:
        self.asked.append(uri)
        return uri in self.objects


def settings(**kw: Any) -> Settings:
    base: dict[str, Any] = {**OPERATOR, "storage_retries": 1, "storage_backoff": 0.01}
    return Settings(**(base | kw))


def body(namespace: str = "team-a", manifest: str = "s3://datasets/ds/data.manifest", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "autolabel.dev/v1alpha1",
        "kind": "AutoLabelJob",
        "metadata": {"name": "j", "namespace": namespace, "uid": "uid-j", "generation": 1,
                     "creationTimestamp": "2026-11-27T10:00:00Z"},
        "spec": {"task": "ImageClassification", "mode": "ActiveLearning", "dataset": {"manifest": manifest}, **spec},
        "status": {},
    }  # fmt: skip


def job(raw: dict[str, Any]) -> AutoLabelJob:
    return AutoLabelJob.model_validate(raw)


def manifest_store(extra: list[str] | None = None) -> MemoryStorage:
    lines = [*LABELED, json.dumps({"source": "img/u.png"}), *(extra or [])]
    return MemoryStorage({"s3://datasets/ds/data.manifest": "\n".join(lines) + "\n"})


def check(raw: dict[str, Any], config: Settings, storage: Storage) -> list[PreconditionFailure]:
    return asyncio.run(preconditions.check(job(raw), config, storage))


# ------------------------------------------------------------------------------------------ settings
def test_the_allowed_namespaces_and_buckets_are_read_from_the_environment() -> None:
    config = Settings.from_env({"AUTOLABEL_DEFAULT_CREDENTIALS_NAMESPACES": " team-a, team-b,,team-a",
                                "AUTOLABEL_ALLOWED_BUCKETS": "datasets,models.v2"})  # fmt: skip
    assert config.default_credentials_namespaces == ("team-a", "team-b")
    assert config.allowed_buckets == ("datasets", "models.v2")
    assert config.default_credentials_allowed("team-b") and not config.default_credentials_allowed("team-c")
    assert config.bucket_allowed("models.v2") and not config.bucket_allowed("other")


def test_by_default_no_namespace_and_no_bucket_may_use_the_operators_credentials() -> None:
    config = Settings.from_env({})
    assert config.default_credentials_namespaces == () and config.allowed_buckets == ()
    assert not config.default_credentials_allowed("default") and not config.bucket_allowed("datasets")


def test_a_star_allows_every_namespace_and_every_bucket() -> None:
    config = Settings.from_env({"AUTOLABEL_DEFAULT_CREDENTIALS_NAMESPACES": "*", "AUTOLABEL_ALLOWED_BUCKETS": "*"})
    assert config.default_credentials_allowed("anything") and config.bucket_allowed("anything")
    assert config.buckets_for_operator_credentials() is None


@pytest.mark.parametrize(
    ("variable", "value", "item"),
    [
        ("AUTOLABEL_DEFAULT_CREDENTIALS_NAMESPACES", "team-a,Team_B", "'Team_B' is not a valid namespace name"),
        ("AUTOLABEL_ALLOWED_BUCKETS", "datasets, s3://other", "'s3://other' is not a valid bucket name"),
    ],
)
def test_a_bad_namespace_or_bucket_setting_is_named(variable: str, value: str, item: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({variable: value})
    assert str(info.value).startswith(f"{variable}=") and item in str(info.value)


# ---------------------------------------------------------------------- item 6: whose credentials, where
def test_only_an_allowed_namespace_gets_credentials_and_never_the_operators_keys() -> None:
    config = settings(default_credentials_namespaces=("team-a",), allowed_buckets=("datasets",))
    flavor = config.flavors.flavors["cpu"]
    allowed, other = body("team-a"), body("team-b")
    assert issues_job_credentials(job(allowed), config) and not issues_job_credentials(job(other), config)
    issued = JobCredentials("tmp-key", "tmp-secret", "tmp-token", "later")
    text = json.dumps([build_credentials_secret(allowed, job(allowed), issued),
                       build_job(allowed, job(allowed), config, flavor)])  # fmt: skip
    assert "op-key" not in text and "op-secret" not in text and "tmp-key" in text
    assert credentials_secret_name(job(other), config) is None
    text = json.dumps(build_job(other, job(other), config, flavor))
    assert "AWS_ACCESS_KEY_ID" not in text and "op-key" not in text and "op-secret" not in text
    everywhere = settings(default_credentials_namespaces=("*",))
    assert issues_job_credentials(job(other), everywhere)


def test_the_scoped_credentials_read_the_allowed_buckets_and_write_only_the_jobs_results() -> None:
    config = settings(default_credentials_namespaces=("team-a",), allowed_buckets=("datasets", "shared"))
    the_job = job(body("team-a"))
    policy = session_policy(the_job, config)
    read, write = policy["Statement"]
    assert set(read["Resource"]) == {"arn:aws:s3:::datasets", "arn:aws:s3:::datasets/*",
                                     "arn:aws:s3:::shared", "arn:aws:s3:::shared/*"}  # fmt: skip
    assert "s3:PutObject" not in read["Action"] and "s3:DeleteObject" not in write["Action"]
    bucket, key = results_prefix(the_job).removeprefix("s3://").split("/", 1)
    assert write["Resource"] == [f"arn:aws:s3:::{bucket}/{key}*"] and key.endswith("/")
    assert duration_seconds(the_job, config) == min(86400 + 900, config.job_credentials_seconds)


def test_a_job_without_a_secret_ref_in_a_namespace_not_allowed_fails_before_any_storage_request() -> None:
    storage = manifest_store()
    failures = check(body("team-b"), settings(default_credentials_namespaces=("team-a",)), storage)
    assert [f.reason for f in failures] == ["CredentialsRequired"]
    message = failures[0].message
    for words in ("spec.storage.secretRef", "'team-b'", "AUTOLABEL_DEFAULT_CREDENTIALS_NAMESPACES",
                  "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):  # fmt: skip
        assert words in message, (words, message)
    assert storage.asked == []  # the operator's keys were not used to read anything for it


def test_a_job_with_its_own_secret_needs_neither_an_allowed_namespace_nor_an_allowed_bucket() -> None:
    raw = body("team-b", storage={"secretRef": {"name": "mine"}})
    assert check(raw, settings(), manifest_store(['{"source": "s3://elsewhere/x.png"}'])) == []


def test_a_job_in_a_namespace_not_allowed_fails_and_no_secret_with_the_operators_keys_is_created() -> None:
    kube = FakeKube()
    reconciler = Reconciler(settings(default_credentials_namespaces=("team-a",)), cast(Kube, kube))
    raw = body("team-b")
    outcome = asyncio.run(reconciler.reconcile(raw, Children(competitors=[candidate_of(raw)])))
    assert outcome.status["phase"] == "Failed"
    reasons = {c["type"]: c["reason"] for c in outcome.status["conditions"]}
    assert reasons["PreconditionsMet"] == reasons["Failed"] == "CredentialsRequired"
    assert kube.created == {"configmaps": [], "secrets": []} and kube.jobs == {} and kube.objects == {}


def test_settings_narrowed_after_the_preconditions_passed_copy_no_keys_at_job_creation(tmp_path: Path) -> None:
    """The operator restarted with fewer allowed namespaces between the check and the Job."""
    kube = FakeKube()
    store = LocalS3Storage(tmp_path)
    manifest = store.write_text("s3://datasets/ds/data.manifest",
                                "\n".join([*LABELED, json.dumps({"source": "img/u.png"})]) + "\n")  # fmt: skip
    raw = body("team-a", manifest=manifest)
    first = Reconciler(settings(default_credentials_namespaces=("team-a",), allowed_buckets=("datasets",)),
                       cast(Kube, kube), store.for_config, issue_fake_credentials)  # fmt: skip
    children = Children(competitors=[candidate_of(raw)])
    # The preconditions pass; the Lease is taken; a crash before the Job (simulated: nothing created yet).
    outcome = asyncio.run(first.reconcile(raw, children))
    assert kube.created["secrets"] and kube.jobs
    kube.jobs.clear()
    kube.created = {"configmaps": [], "secrets": []}
    raw["status"] = {k: v for k, v in outcome.status.items() if v is not None}
    raw["status"].pop("jobName", None)
    narrowed = Reconciler(settings(default_credentials_namespaces=("team-z",), allowed_buckets=("datasets",)),
                          cast(Kube, kube), store.for_config, issue_fake_credentials)  # fmt: skip
    outcome = asyncio.run(narrowed.reconcile(raw, children))
    assert outcome.status["phase"] == "Failed", outcome.status
    assert {c["type"]: c["reason"] for c in outcome.status["conditions"]}["Failed"] == "CredentialsRequired"
    assert kube.created["secrets"] == [] and kube.jobs == {}


# ------------------------------------------------------------------------------ item 7: where, which bucket
def test_a_spec_endpoint_other_than_the_operators_fails_with_endpoint_not_allowed_naming_the_field() -> None:
    config = settings(default_credentials_namespaces=("team-a",), allowed_buckets=("datasets",))
    storage = manifest_store()
    failures = check(body(storage={"endpoint": "https://attacker.example"}), config, storage)
    assert [f.reason for f in failures] == ["EndpointNotAllowed"]
    assert "spec.storage.endpoint 'https://attacker.example'" in failures[0].message
    assert "spec.storage.secretRef" in failures[0].message and "http://minio.storage:9000" in failures[0].message
    assert storage.asked == []
    # The operator's own endpoint, written differently, is fine; with the user's own Secret, any endpoint is.
    assert check(body(storage={"endpoint": "HTTP://Minio.Storage:9000/"}), config, manifest_store()) == []
    own = body(storage={"endpoint": "https://s3.example", "secretRef": {"name": "mine"}})
    assert check(own, config, manifest_store()) == []


def test_with_the_operators_credentials_requests_go_to_the_operators_endpoint_only() -> None:
    """Even past the preconditions (belt and braces): the worker's env and the operator's own client."""
    config = settings(default_credentials_namespaces=("team-a",))
    raw = body(storage={"endpoint": "https://attacker.example"})
    env = {e["name"]: e.get("value") for e in
           build_job(raw, job(raw), config, config.flavors.flavors["cpu"])["spec"]["template"]["spec"]
           ["containers"][0]["env"]}  # fmt: skip
    assert env["AWS_ENDPOINT_URL"] == "http://minio.storage:9000"
    creds = Credentials("op-key", "op-secret")
    assert storage_config(job(raw), config, creds).endpoint_url == "http://minio.storage:9000"
    own = body(storage={"endpoint": "https://s3.example", "secretRef": {"name": "mine"}})
    assert storage_config(job(own), config, Credentials("mine", "x")).endpoint_url == "https://s3.example"


def test_endpoints_compare_without_case_of_scheme_and_host_or_a_trailing_slash() -> None:
    assert same_endpoint("http://Minio:9000/", "http://minio:9000")
    assert not same_endpoint("http://minio:9000", "https://minio:9000")
    assert not same_endpoint("http://minio:9000", None) and same_endpoint(None, "")


@pytest.mark.parametrize(
    ("spec", "field", "bucket"),
    [
        ({"output": "s3://results-elsewhere/out/"}, "spec.output s3://results-elsewhere/out/", "results-elsewhere"),
        ({"mode": "PreLabeling", "preLabeling": {"model": {"uri": "s3://models-x/m/model.pt"}},
          "resources": {"computeNodes": 1}}, "spec.preLabeling.model.uri s3://models-x/m/model.pt", "models-x"),
    ],
)  # fmt: skip
def test_an_output_or_model_in_a_bucket_not_allowed_fails_naming_the_field_and_the_bucket(
    spec: dict[str, Any], field: str, bucket: str
) -> None:
    config = settings(default_credentials_namespaces=("team-a",), allowed_buckets=("datasets",))
    storage = manifest_store()
    failures = check(body(**spec), config, storage)
    assert [f.reason for f in failures] == ["BucketNotAllowed"], failures
    assert field in failures[0].message and f"bucket {bucket!r}" in failures[0].message
    assert "AUTOLABEL_ALLOWED_BUCKETS: datasets" in failures[0].message
    assert storage.asked == []


def test_a_manifest_in_a_bucket_not_allowed_is_not_read() -> None:
    storage = manifest_store()
    failures = check(body(), settings(default_credentials_namespaces=("team-a",)), storage)
    assert [f.reason for f in failures] == ["BucketNotAllowed"]
    assert "spec.dataset.manifest" in failures[0].message and "AUTOLABEL_ALLOWED_BUCKETS: none" in failures[0].message
    assert storage.asked == []


def test_a_manifest_line_in_another_bucket_fails_naming_the_line_and_the_bucket() -> None:
    config = settings(default_credentials_namespaces=("team-a",), allowed_buckets=("datasets",))
    storage = manifest_store(['{"source": "s3://other-bucket/secret.png"}'])
    failures = check(body(), config, storage)
    assert [f.reason for f in failures] == ["BucketNotAllowed"]
    message = failures[0].message
    assert message.startswith("s3://datasets/ds/data.manifest line 12: ")
    assert "s3://other-bucket/secret.png" in message and "'other-bucket'" in message
    assert "spec.storage.secretRef" in message
    # A ModelArts obs:// source is the same object store: its bucket counts too.
    obs = manifest_store(['{"source": "obs://other-bucket/a.png"}'])
    assert [f.reason for f in check(body(), config, obs)] == ["BucketNotAllowed"]
    # Every bucket allowed ("*"), or the job's own Secret: the line is fine.
    assert check(body(), settings(default_credentials_namespaces=("team-a",), allowed_buckets=("*",)), storage) == []


def test_check_manifest_refuses_a_voc_file_in_another_bucket_and_accepts_allowed_ones() -> None:
    detection = {"source": "img/d.png", "annotation": [{"type": "modelarts/object_detection",
                 "annotation-loc": "s3://labels-elsewhere/d.xml"}]}  # fmt: skip
    storage = MemoryStorage({"s3://datasets/m": json.dumps(detection) + "\n"})
    _, failures = check_manifest(storage, "s3://datasets/m", "ObjectDetection", allowed_buckets={"datasets"})
    assert [f.reason for f in failures] == ["BucketNotAllowed"]
    assert '"annotation-loc" s3://labels-elsewhere/d.xml' in failures[0].message and "line 1" in failures[0].message
    _, failures = check_manifest(storage, "s3://datasets/m", "ObjectDetection",
                                 allowed_buckets={"datasets", "labels-elsewhere"})  # fmt: skip
    assert "BucketNotAllowed" not in [f.reason for f in failures]
    _, failures = check_manifest(storage, "s3://datasets/m", "ObjectDetection")  # None: no bucket rule (the worker)
    assert "BucketNotAllowed" not in [f.reason for f in failures]
