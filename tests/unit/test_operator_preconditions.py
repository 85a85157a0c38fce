"""The operator's precondition check: storage that is briefly unreachable is retried with backoff; the
spec's URIs are s3:// (local paths are for ``autolabel run --local``), and the operator's Storage refuses
local paths too."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from autolabel_operator import preconditions
from autolabel_operator.config import Settings
from fakes import LocalS3Storage

from autolabel.api import AutoLabelJob
from autolabel.preconditions import PreconditionFailure, check_manifest, check_model
from autolabel.storage import LocalPathRefused, Storage, StorageConfig, StorageUnreachable


def test_unreachable_storage_is_retried_until_it_answers() -> None:
    answers = [
        [PreconditionFailure("StorageUnreachable", "s3://b/m: down")],
        [PreconditionFailure("StorageUnreachable", "s3://b/m: down")],
        [],
    ]
    calls = []

    def check() -> list[PreconditionFailure]:
        calls.append(1)
        return answers[len(calls) - 1]

    assert asyncio.run(preconditions._retrying(check, attempts=4, backoff=0.01, what="s3://b/m")) == []
    assert len(calls) == 3


def test_unreachable_storage_fails_after_the_last_attempt() -> None:
    down = [PreconditionFailure("StorageUnreachable", "s3://b/m: down")]
    calls = []

    def check() -> list[PreconditionFailure]:
        calls.append(1)
        return down

    assert asyncio.run(preconditions._retrying(check, attempts=3, backoff=0.01, what="s3://b/m")) == down
    assert len(calls) == 3


class FlakyStorage(LocalS3Storage):
    """s3:// objects served from a folder, but the first reads fail as if the endpoint were down."""

    def __init__(self, root: Path, failures: int) -> None:
        super().__init__(root)
        self.failures = failures

    def iter_lines(self, uri: str) -> Iterator[str]:
        if self.failures:
            self.failures -= 1
            raise StorageUnreachable(uri, "connection refused")
        return super().iter_lines(uri)


def test_check_recovers_from_a_short_outage(tmp_path: Path) -> None:
    lines = [json.dumps({"source": f"{c}{i}.png", "annotation": [
        {"type": "modelarts/image_classification", "name": c}]}) for c in "ab" for i in range(5)]  # fmt: skip
    manifest = "s3://datasets/ds/m.manifest"
    LocalS3Storage(tmp_path).write_text(manifest, "\n".join([*lines, json.dumps({"source": "u.png"})]) + "\n")
    job = AutoLabelJob.model_validate(
        {
            "metadata": {"name": "j", "namespace": "n", "uid": "u"},
            "spec": {"task": "ImageClassification", "mode": "ActiveLearning", "dataset": {"manifest": manifest}},
        }
    )
    settings = Settings(storage_retries=3, storage_backoff=0.01, default_credentials_namespaces=("n",),
                        allowed_buckets=("datasets",))  # fmt: skip
    assert asyncio.run(preconditions.check(job, settings, FlakyStorage(tmp_path, failures=2))) == []
    failures = asyncio.run(preconditions.check(job, settings, FlakyStorage(tmp_path, failures=3)))
    assert [f.reason for f in failures] == ["StorageUnreachable"]
    assert str(manifest) in failures[0].message


# ------------------------------------------------------------- local paths are for `autolabel run --local`
def prelabeling(manifest: str, output: str | None, model: str, **extra: Any) -> AutoLabelJob:
    spec: dict[str, Any] = {
        "task": "ImageClassification",
        "mode": "PreLabeling",
        "dataset": {"manifest": manifest},
        "preLabeling": {"model": {"uri": model}},
        "resources": {"computeNodes": 1},
        **extra,
    }
    if output is not None:
        spec["output"] = output
    return AutoLabelJob.model_validate({"metadata": {"name": "j", "namespace": "n", "uid": "u"}, "spec": spec})


@pytest.mark.parametrize(
    ("uri", "what"),
    [
        ("/data/ds/data.manifest", "is a local path"),
        ("relative/data.manifest", "is a local path"),
        ("file:///data/ds/data.manifest", "is a local path"),
        ("https://example.com/data.manifest", "is not an s3:// URI"),
        ("s3:///no-bucket", "has no bucket"),
    ],
)
def test_every_spec_uri_that_is_not_s3_fails_spec_invalid_naming_its_field(uri: str, what: str, tmp_path: Path) -> None:
    store = LocalS3Storage(tmp_path)
    settings = Settings(storage_retries=1, storage_backoff=0.01, default_credentials_namespaces=("n",),
                        allowed_buckets=("*",))  # fmt: skip
    job = prelabeling(uri, uri, uri)
    failures = asyncio.run(preconditions.check(job, settings, store))
    assert [f.reason for f in failures] == ["SpecInvalid"] * 3
    for failure, field in zip(
        failures, ["spec.dataset.manifest", "spec.output", "spec.preLabeling.model.uri"], strict=True
    ):
        assert failure.message.startswith(f"{field} {uri!r} {what}: "), failure.message
        assert "local paths are for `autolabel run --local`" in failure.message
    assert store.asked == []
    # With its own Secret too: the rule is about where the operator reads, not whose credentials.
    own = prelabeling(uri, uri, uri, storage={"secretRef": {"name": "mine"}})
    assert [f.reason for f in asyncio.run(preconditions.check(own, Settings(), store))] == ["SpecInvalid"] * 3
    assert store.asked == []


def test_only_the_field_that_is_local_is_named_and_an_unset_output_is_fine(tmp_path: Path) -> None:
    job = prelabeling("s3://datasets/ds/data.manifest", None, "/models/m/")
    assert [f.message.split(" ")[0] for f in preconditions.local_paths(job)] == ["spec.preLabeling.model.uri"]
    job = prelabeling("s3://datasets/ds/data.manifest", "", "s3://models/m/")
    assert preconditions.local_paths(job) == []


def test_the_operators_storage_refuses_local_paths_and_the_clis_serves_them(tmp_path: Path) -> None:
    file = tmp_path / "data.manifest"
    file.write_text("line\n")
    job = prelabeling("s3://datasets/ds/data.manifest", None, "s3://models/m/")
    config = preconditions.storage_config(job, Settings(), preconditions.Credentials("k", "s"))
    assert config.local_paths is False and config.resolved().local_paths is False
    operator = Storage(config)
    for uri in (str(file), f"file://{file}"):
        with pytest.raises(LocalPathRefused) as info:
            operator.read_bytes(uri)
        assert info.value.uri == uri and "serves s3:// URIs only" in str(info.value)
        with pytest.raises(LocalPathRefused):
            next(operator.iter_lines(uri))
        with pytest.raises(LocalPathRefused):
            operator.exists(uri)
        with pytest.raises(LocalPathRefused):
            list(operator.list(uri))
    with pytest.raises(LocalPathRefused):
        operator.write_bytes(str(tmp_path / "out.json"), b"{}")
    with pytest.raises(LocalPathRefused):
        operator.upload_file(str(file), str(tmp_path / "copy"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.manifest"]
    # The same failures as any other unreadable object, for code that only knows StorageError.
    _, failures = check_manifest(operator, str(file), "ImageClassification")
    assert [f.reason for f in failures] == ["ManifestUnreadable"]
    assert [f.reason for f in check_model(operator, str(tmp_path) + "/", "ImageClassification")] == ["ModelNotFound"]
    # Every other Storage (the CLI's `autolabel run --local`, the worker) still serves local paths.
    assert StorageConfig().local_paths is True
    assert Storage().read_bytes(str(file)) == b"line\n" and list(Storage().iter_lines(f"file://{file}")) == ["line"]
