"""Storage, manifest reading, preconditions and preflight against a real S3 server (MinIO on loopback)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from autolabel_worker.preflight import run_preflight
from PIL import Image

from autolabel.api import AutoLabelJobSpec, Task
from autolabel.manifest import CLASSIFICATION_TYPE, read_manifest
from autolabel.preconditions import check_manifest, check_model
from autolabel.storage import (
    ObjectNotFound,
    ScopedWriter,
    Storage,
    StorageConfig,
    StorageError,
    StorageUnreachable,
)

pytestmark = pytest.mark.needs_s3


@pytest.fixture
def bucket(s3_server: Any) -> str:
    name = f"io-{uuid.uuid4().hex[:12]}"
    s3_server.make_bucket(name)
    return name


def png(mode: str = "L", size: tuple[int, int] = (8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, "PNG")
    return buf.getvalue()


def test_write_read_exists(storage: Storage, bucket: str) -> None:
    uri = f"s3://{bucket}/a/b/c.json"
    assert not storage.exists(uri)
    storage.write_bytes(uri, b'{"x": 1}')
    assert storage.exists(uri)
    assert storage.read_bytes(uri) == b'{"x": 1}'
    storage.write_bytes(uri, b"{}")
    assert storage.read_bytes(uri) == b"{}"


def test_missing_object_and_bucket(storage: Storage, bucket: str) -> None:
    with pytest.raises(ObjectNotFound) as err:
        storage.read_bytes(f"s3://{bucket}/nope.manifest")
    assert str(err.value) == f"s3://{bucket}/nope.manifest: cannot read: no such object"
    with pytest.raises(ObjectNotFound, match="the bucket does not exist"):
        storage.read_bytes("s3://no-such-bucket-here/x")
    assert not storage.exists("s3://no-such-bucket-here/x")


def test_wrong_credentials_are_named_not_retried(s3_server: Any, bucket: str) -> None:
    bad = Storage(StorageConfig(endpoint_url=s3_server.endpoint_url, access_key="wrong", secret_key="wrong-secret"))
    with pytest.raises(StorageError) as err:
        bad.read_bytes(f"s3://{bucket}/x")
    assert not isinstance(err.value, StorageUnreachable | ObjectNotFound)
    assert "access denied" in str(err.value) and "check the credentials" in str(err.value)


def test_streamed_lines_large_manifest(storage: Storage, bucket: str) -> None:
    lines = [json.dumps({"source": f"img/{i:06d}.png", "usage": "TRAIN"}) for i in range(60_000)]
    body = ("\ufeff" + "\r\n".join(lines)).encode()  # BOM, CRLF, no final newline
    uri = f"s3://{bucket}/set.manifest"
    storage.write_bytes(uri, body)
    count = 0
    for count, (got, want) in enumerate(zip(storage.iter_lines(uri), lines, strict=True), start=1):  # noqa: B007
        assert got == want
    assert count == len(lines)


def test_multipart_upload(storage: Storage, bucket: str, tmp_path: Path) -> None:
    big = tmp_path / "model.pt"
    big.write_bytes(os.urandom(17 << 20))  # above the 16 MiB multipart threshold
    writer = ScopedWriter(storage, f"s3://{bucket}/results/job-1/")
    writer.upload_file(str(big), "model/model.pt")
    data = storage.read_bytes(f"s3://{bucket}/results/job-1/model/model.pt")
    assert hashlib.sha256(data).digest() == hashlib.sha256(big.read_bytes()).digest()


def test_upload_to_a_missing_bucket_is_named(storage: Storage, tmp_path: Path) -> None:
    src = tmp_path / "r.manifest"
    src.write_text("{}\n")
    with pytest.raises(ObjectNotFound, match="the bucket does not exist"):
        storage.upload_file(str(src), "s3://no-such-bucket-here/r.manifest")


def test_list_paginates(storage: Storage, bucket: str) -> None:
    keys = [f"many/{i:05d}.txt" for i in range(1100)]  # more than one 1000-key page
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: storage.write_bytes(f"s3://{bucket}/{k}", b"x"), keys))
    storage.write_bytes(f"s3://{bucket}/other/y.txt", b"y")
    listed = list(storage.list(f"s3://{bucket}/many/"))
    assert listed == [f"s3://{bucket}/{k}" for k in keys]


def test_fetch_many_in_order_with_errors(storage: Storage, bucket: str) -> None:
    uris = []
    for i in range(200):
        uri = f"s3://{bucket}/f/{i}.bin"
        if i != 77:
            storage.write_bytes(uri, str(i).encode())
        uris.append(uri)
    got = list(storage.fetch_many(uris, max_workers=8))
    assert [u for u, _ in got] == uris
    for i, (_, data) in enumerate(got):
        if i == 77:
            assert isinstance(data, ObjectNotFound)
        else:
            assert data == str(i).encode()


def test_scoped_writer_and_protected_manifest_on_s3(storage: Storage, bucket: str) -> None:
    manifest = f"s3://{bucket}/data/set.manifest"
    storage.write_bytes(manifest, b'{"source": "a.png"}\n')
    storage.protect(manifest)
    writer = ScopedWriter(storage, f"s3://{bucket}/data/")
    with pytest.raises(ValueError, match="refusing to overwrite"):
        writer.write_bytes("set.manifest", b"gone")
    with pytest.raises(ValueError, match="refusing to write"):
        writer.write_bytes("../elsewhere.json", b"x")
    assert storage.read_bytes(manifest) == b'{"source": "a.png"}\n'


def test_unreachable_endpoint(s3_server: Any) -> None:
    st = Storage(StorageConfig(endpoint_url="http://127.0.0.1:1", access_key="a", secret_key="b", connect_retries=2))
    st._sleep = lambda s: None
    with pytest.raises(StorageUnreachable, match="unreachable after 3 attempts"):
        st.read_bytes("s3://bucket/x")


@pytest.fixture
def s3_dataset(storage: Storage, bucket: str) -> Iterator[str]:
    """A small classification dataset in the bucket: 2 labels x 5, 3 unlabeled, 1 RGBA, 1 corrupt."""
    lines = []
    for label in ("cat", "dog"):
        for i in range(5):
            storage.write_bytes(f"s3://{bucket}/ds/img/{label}{i}.png", png())
            lines.append(json.dumps({"source": f"img/{label}{i}.png",
                                     "annotation": [{"type": CLASSIFICATION_TYPE, "name": label}]}))  # fmt: skip
    for i in range(3):
        storage.write_bytes(f"s3://{bucket}/ds/img/u{i}.png", png("RGB"))
        lines.append(json.dumps({"source": f"img/u{i}.png"}))
    storage.write_bytes(f"s3://{bucket}/ds/img/rgba.png", png("RGBA"))
    storage.write_bytes(f"s3://{bucket}/ds/img/broken.png", b"\x89PNG not really")
    lines += [json.dumps({"source": "img/rgba.png"}), json.dumps({"source": "img/broken.png"})]
    uri = f"s3://{bucket}/ds/set.manifest"
    storage.write_bytes(uri, "\n".join(lines).encode())
    yield uri


def test_preconditions_and_preflight_on_s3(storage: Storage, bucket: str, s3_dataset: str) -> None:
    summary, failures = check_manifest(storage, s3_dataset, Task.IMAGE_CLASSIFICATION)
    assert failures == [] and summary is not None
    assert summary.label_counts == {"cat": 5, "dog": 5} and summary.unlabeled == 5

    spec = AutoLabelJobSpec.model_validate(
        {"task": "ImageClassification", "mode": "ActiveLearning", "dataset": {"manifest": s3_dataset},
         "images": {"maxUnreadableFraction": 0.1}}
    )  # fmt: skip
    result = run_preflight(read_manifest(storage, s3_dataset), storage, spec)
    assert result.failures == [] and result.classes == ["cat", "dog"]
    assert len(result.labeled) == 10 and len(result.unlabeled) == 4
    assert result.converted == 1
    assert [u["source"] for u in result.unreadable] == [f"s3://{bucket}/ds/img/broken.png"]

    _, failures = check_manifest(storage, f"s3://{bucket}/ds/absent.manifest", Task.IMAGE_CLASSIFICATION)
    assert [f.reason for f in failures] == ["ManifestUnreadable"]


def test_check_model_on_s3(storage: Storage, bucket: str) -> None:
    storage.write_bytes(f"s3://{bucket}/models/m1/model.pt", b"ts")
    storage.write_bytes(f"s3://{bucket}/models/m1/labels.json",
                        json.dumps({"task": "ImageClassification", "labels": ["a", "b"]}).encode())  # fmt: skip
    assert check_model(storage, f"s3://{bucket}/models/m1", Task.IMAGE_CLASSIFICATION) == []
    assert check_model(storage, f"s3://{bucket}/models/m1/model.pt", Task.IMAGE_CLASSIFICATION) == []
    (failure,) = check_model(storage, f"s3://{bucket}/models/m1", Task.OBJECT_DETECTION)
    assert failure.reason == "ModelTaskMismatch"
    (failure,) = check_model(storage, f"s3://{bucket}/models/none", Task.IMAGE_CLASSIFICATION)
    assert failure.reason == "ModelNotFound" and f"s3://{bucket}/models/none" in failure.message
