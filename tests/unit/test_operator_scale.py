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

    class FakeSession:
        def client(self, service: str, **_: Any) -> FakeSTS:
            assert service == "sts"
            made.append(FakeSTS())
            return made[-1]

    monkeypatch.setattr(credentials.boto3.session, "Session", FakeSession)
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
