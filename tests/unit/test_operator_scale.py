"""Cheap paths the operator takes once per job, found by profiling 20-1,000 jobs started at once
(benchmarks/bench_operator.py --part scale, docs/benchmarks.md "Operator at scale")."""

from __future__ import annotations

from typing import Any

import pytest
from autolabel_operator import credentials
from autolabel_operator.config import Settings
from autolabel_operator.credentials import issue_job_credentials, sts_client

from autolabel.api import AutoLabelJob


def _job(name: str) -> AutoLabelJob:
    return AutoLabelJob.model_validate(
        {
            "metadata": {"name": name, "namespace": "team-a", "uid": f"uid-{name}"},
            "spec": {
                "task": "ImageClassification",
                "mode": "ActiveLearning",
                "dataset": {"manifest": f"s3://datasets/{name}/data.manifest"},
            },
        }
    )


class FakeSTS:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def assume_role(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        n = len(self.calls)
        return {"Credentials": {"AccessKeyId": f"k{n}", "SecretAccessKey": "s", "SessionToken": "t"}}


def test_one_sts_client_serves_every_job(monkeypatch: pytest.MonkeyPatch) -> None:
    """Making a boto3 client per job cost a quarter of the operator's CPU at 20 jobs at once: the client
    is made once per endpoint and account, and each job still gets its own AssumeRole."""
    made: list[FakeSTS] = []

    def fake_client(service: str, **_: Any) -> FakeSTS:
        assert service == "sts"
        made.append(FakeSTS())
        return made[-1]

    monkeypatch.setattr(credentials, "boto3_client", fake_client)
    sts_client.cache_clear()
    settings = Settings(s3_endpoint="http://minio:9000", access_key="op", secret_key="secret")
    first = issue_job_credentials(_job("a"), settings)
    second = issue_job_credentials(_job("b"), settings)
    assert len(made) == 1
    assert [c["RoleSessionName"] for c in made[0].calls] == ["autolabel-" + _job("a").short_uid,
                                                              "autolabel-" + _job("b").short_uid]  # fmt: skip
    assert (first.access_key, second.access_key) == ("k1", "k2")
    # Other keys (rotated) or another endpoint: another client.
    issue_job_credentials(_job("c"), Settings(s3_endpoint="http://minio:9000", access_key="op", secret_key="new"))
    issue_job_credentials(_job("d"), Settings(s3_endpoint="http://other:9000", access_key="op", secret_key="secret"))
    assert len(made) == 3
    sts_client.cache_clear()


def test_a_job_storage_is_kept_per_endpoint_and_keys_and_every_client_comes_from_one_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One Storage (one S3 client) per endpoint and keys, and every boto3 client of the process from one
    session, which loads the service models once."""
    import boto3
    from autolabel_operator.preconditions import storage_for

    from autolabel.storage import _BOTO3, StorageConfig

    sessions: list[Any] = []
    real = boto3.session.Session

    def counting_session(*args: Any, **kwargs: Any) -> Any:
        sessions.append(real(*args, **kwargs))
        return sessions[-1]

    monkeypatch.setattr(boto3.session, "Session", counting_session)
    monkeypatch.setattr(_BOTO3, "_session", None)
    storage_for.cache_clear()
    config = StorageConfig(endpoint_url="http://minio:9000", region="us-east-1", access_key="a", secret_key="s")
    rotated = StorageConfig(endpoint_url="http://minio:9000", region="us-east-1", access_key="a", secret_key="new")
    assert storage_for(config) is storage_for(config)
    assert storage_for(rotated) is not storage_for(config)
    clients = [storage_for(config).client, storage_for(rotated).client]
    assert clients[0] is not clients[1] and clients[0] is storage_for(config).client
    assert len(sessions) == 1
    assert clients[1]._request_signer._credentials.secret_key == "new"
    storage_for.cache_clear()


def test_io_threads_setting_and_default_executor() -> None:
    """Blocking storage calls run on io_threads threads (AUTOLABEL_IO_THREADS, default 32), not on
    asyncio's cores + 4 (6 on 2 cores), which queued 100 jobs created at once behind each other."""
    import asyncio
    import threading

    from autolabel_operator.handlers.startup import use_io_threads

    assert Settings.from_env({}).io_threads == 32
    assert Settings.from_env({"AUTOLABEL_IO_THREADS": "8"}).io_threads == 8
    loop = asyncio.new_event_loop()
    try:
        executor = use_io_threads(loop, Settings(io_threads=40))
        assert executor._max_workers == 40
        name = loop.run_until_complete(asyncio.to_thread(lambda: threading.current_thread().name))
        assert name.startswith("autolabel-io")
    finally:
        loop.close()
        executor.shutdown()
