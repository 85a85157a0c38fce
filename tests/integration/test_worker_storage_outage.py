"""The S3 server goes away in the middle of a worker's inference (the real MinIO, stopped and started
again on the same data, port and credentials): an outage longer than the storage layer's retries fails
the run with the retryable storage exit code and leaves no result that claims success; a short one is
ridden out by the retries and every image is accounted for."""

from __future__ import annotations

import json
import multiprocessing
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from autolabel_worker.entrypoint import execute
from autolabel_worker.models import SmallCNN
from autolabel_worker.pipeline import run_job
from worker_fixtures import upload_digits

from autolabel.api import AutoLabelJob, results_prefix
from autolabel.contract import ExitCode
from autolabel.storage import Storage, StorageConfig, StorageUnreachable

pytestmark = pytest.mark.needs_s3

UNLABELED = 120
OUTAGE_AT = 40  # the inference read that stops the server


@pytest.fixture
def s3(s3_server: Any) -> Iterator[Any]:
    """The session's MinIO, running again after the test whatever happened (other tests share it)."""
    try:
        yield s3_server
    finally:
        s3_server.resume()


@pytest.fixture
def dataset(s3: Any, storage: Storage, tmp_path: Path) -> tuple[str, str, set[str]]:
    """Digits (5 labeled per class, 120 unlabeled) and a small TorchScript model, uploaded; returns
    (manifest URI, model URI, the unlabeled images' URIs)."""
    bucket = f"outage-{uuid.uuid4().hex[:10]}"
    s3.make_bucket(bucket)
    base, ds = upload_digits(storage, bucket, tmp_path / "digits", seed=0, unlabeled=UNLABELED)
    torch.manual_seed(0)
    model = tmp_path / "model.pt"
    torch.jit.script(SmallCNN(10, (8, 8), 8).eval()).save(str(model))
    storage.upload_file(str(model), f"{base}model/model.pt")
    labels = {"task": "ImageClassification", "labels": [str(i) for i in range(10)], "inputSize": [8, 8]}
    storage.write_bytes(f"{base}model/labels.json", json.dumps(labels).encode())
    unlabeled = {f"{base}{src}" for src in json.loads(ds.ground_truth.read_text())}
    return f"{base}digits.manifest", f"{base}model/", unlabeled


def prelabeling_job(manifest: str, model: str) -> AutoLabelJob:
    return AutoLabelJob.model_validate(
        {
            "metadata": {"name": "outage", "namespace": "test", "uid": str(uuid.uuid4())},
            "spec": {
                "task": "ImageClassification",
                "mode": "PreLabeling",
                "dataset": {"manifest": manifest},
                "preLabeling": {"model": {"uri": model}},
            },
        }
    )


class OutageDuringInference(Storage):
    """The storage layer over the real server, which is stopped at the `OUTAGE_AT`-th inference read of an
    image (an unlabeled image's second read: preflight reads each once) and started again after
    `back_after_failures` reads have failed as unreachable (the retries used up), or, when that is None,
    `back_after_seconds` after it stopped (within the retries).

    Inference reads happen in the worker's loading processes (forked), so what they count is shared memory
    made before the forks, and the server is stopped and started by a thread of this process (`control`),
    the only one that owns it: a read that reaches `OUTAGE_AT` asks for the outage and waits until the
    server is down."""

    def __init__(
        self,
        config: StorageConfig,
        server: Any,
        unlabeled: set[str],
        back_after_failures: int | None = None,
        back_after_seconds: float = 2.0,
    ):
        super().__init__(config)
        self.server = server
        self.unlabeled = unlabeled
        self.back_after_failures = back_after_failures
        self.back_after_seconds = back_after_seconds
        shared = multiprocessing.get_context("fork")
        self.reads: Counter[str] = Counter()  # per process: the preflight's counts come with the fork
        self.inference_reads = shared.Value("i", 0)
        self.unreachable_reads = shared.Value("i", 0)
        self.reads_in_outage = shared.Value("i", 0)  # reads started while the server was down
        self.outage_wanted = shared.Event()
        self.down = shared.Event()
        self.back = shared.Event()
        self.control = threading.Thread(target=self._control, daemon=True)
        self.control.start()

    def _control(self) -> None:
        self.outage_wanted.wait()
        assert self.server.pause(), "the S3 server was not running"
        self.down.set()
        if self.back_after_failures is None:
            self.back.wait(self.back_after_seconds)
        else:
            while self.unreachable_reads.value < self.back_after_failures and not self.back.is_set():
                self.back.wait(0.01)
        self.server.resume()
        self.back.set()

    def read_bytes(self, uri: str) -> bytes:
        if uri in self.unlabeled:
            self.reads[uri] += 1
            if self.reads[uri] == 2:
                with self.inference_reads.get_lock():
                    self.inference_reads.value += 1
                    outage_now = self.inference_reads.value == OUTAGE_AT
                if outage_now:
                    self.outage_wanted.set()
                    assert self.down.wait(60), "the S3 server was not stopped"
        if self.down.is_set() and not self.back.is_set():
            with self.reads_in_outage.get_lock():
                self.reads_in_outage.value += 1
        try:
            return super().read_bytes(uri)
        except StorageUnreachable:
            with self.unreachable_reads.get_lock():
                self.unreachable_reads.value += 1
                given_up = self.unreachable_reads.value
            if self.back_after_failures is not None and given_up >= self.back_after_failures:
                # The failure reaches the worker only once the server is back, so that what it writes next
                # (its failed progress, and results if it wrongly went on) lands: without this wait the
                # restart raced the worker's quick retries (a fresh-clone run, 2026-12-04, found progress
                # still "inference").
                assert self.back.wait(60), "the S3 server did not come back"
            raise

    def finish(self) -> None:
        """The server is running again when this returns (whether or not the outage happened)."""
        self.back.set()
        self.outage_wanted.set()
        self.control.join(timeout=120)


def config_for(server: Any, **retries: Any) -> StorageConfig:
    return StorageConfig(
        endpoint_url=server.endpoint_url,
        access_key=server.access_key,
        secret_key=server.secret_key,
        region=server.region,
        **retries,
    )


def test_an_outage_longer_than_the_retries_fails_the_run_retryably_and_claims_nothing(
    s3: Any, dataset: tuple[str, str, set[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest, model, unlabeled = dataset
    monkeypatch.setenv("AUTOLABEL_TORCH_THREADS", "1")
    job = prelabeling_job(manifest, model)
    out = results_prefix(job)
    # Retries used up in well under a second; the server comes back as soon as 3 reads have given up, so
    # the run could still write results afterwards: it must not, with images missing.
    quick = config_for(s3, max_attempts=1, connect_retries=2, backoff_base=0.05, backoff_max=0.1, connect_timeout=2)
    storage = OutageDuringInference(quick, s3, unlabeled, back_after_failures=3)

    try:
        code = execute(job, storage, out)
    finally:
        storage.finish()

    assert storage.down.is_set() and storage.unreachable_reads.value >= 3, "no outage happened"
    assert code == ExitCode.STORAGE_UNREACHABLE == 4
    check = Storage(config_for(s3))
    assert not check.exists(out + "summary.json") and not check.exists(out + "result.manifest")
    progress = json.loads(check.read_bytes(out + "progress.json"))
    assert progress["stage"] == "failed" and progress["reason"] == "StorageUnreachable"
    assert s3.endpoint_url in progress["error"]


def test_a_short_outage_is_ridden_out_by_the_retries_and_every_image_is_accounted_for(
    s3: Any, dataset: tuple[str, str, set[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest, model, unlabeled = dataset
    monkeypatch.setenv("AUTOLABEL_TORCH_THREADS", "1")
    job = prelabeling_job(manifest, model)
    out = results_prefix(job)
    storage = OutageDuringInference(config_for(s3), s3, unlabeled, back_after_seconds=2.0)  # default retries

    try:
        summary = run_job(job, storage, out)
    finally:
        storage.finish()  # the server is back before anything else (the fixture) touches it

    assert storage.down.is_set() and storage.unreachable_reads.value == 0
    assert storage.reads_in_outage.value > 0, "no read met the outage"
    assert summary["unreadableImages"] == []
    lines = [json.loads(line) for line in storage.iter_lines(out + "result.manifest") if line.strip()]
    assert summary["total"] == len(lines) == UNLABELED
    assert {line["source"] for line in lines} == unlabeled
    assert json.loads(storage.read_bytes(out + "summary.json"))["total"] == UNLABELED
