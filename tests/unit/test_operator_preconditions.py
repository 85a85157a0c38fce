"""The operator's precondition check: storage that is briefly unreachable is retried with backoff."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

from autolabel_operator import preconditions
from autolabel_operator.config import Settings

from autolabel.api import AutoLabelJob
from autolabel.preconditions import PreconditionFailure
from autolabel.storage import Storage, StorageUnreachable


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


class FlakyStorage(Storage):
    """Local files, but the first reads fail as if the endpoint were down."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def iter_lines(self, uri: str) -> Iterator[str]:
        if self.failures:
            self.failures -= 1
            raise StorageUnreachable(uri, "connection refused")
        return super().iter_lines(uri)


def test_check_recovers_from_a_short_outage(tmp_path: Path) -> None:
    lines = [json.dumps({"source": f"{c}{i}.png", "annotation": [
        {"type": "modelarts/image_classification", "name": c}]}) for c in "ab" for i in range(5)]  # fmt: skip
    manifest = tmp_path / "m.manifest"
    manifest.write_text("\n".join([*lines, json.dumps({"source": "u.png"})]) + "\n")
    job = AutoLabelJob.model_validate(
        {
            "metadata": {"name": "j", "namespace": "n", "uid": "u"},
            "spec": {"task": "ImageClassification", "mode": "ActiveLearning", "dataset": {"manifest": str(manifest)}},
        }
    )
    settings = Settings(storage_retries=3, storage_backoff=0.01, default_credentials_namespaces=("n",))
    assert asyncio.run(preconditions.check(job, settings, FlakyStorage(failures=2))) == []
    failures = asyncio.run(preconditions.check(job, settings, FlakyStorage(failures=3)))
    assert [f.reason for f in failures] == ["StorageUnreachable"]
    assert str(manifest) in failures[0].message
