"""Storage on local paths, URI handling, the scoped writer, and connection-error handling."""

from __future__ import annotations

import io
import os
import socket
import threading
import time
from pathlib import Path

import pytest
from botocore.exceptions import ConnectionClosedError

from autolabel import storage as storage_mod
from autolabel.storage import (
    ObjectNotFound,
    ScopedWriter,
    Storage,
    StorageConfig,
    StorageError,
    StorageUnreachable,
    join_uri,
)


def test_join_uri_resolves_against_the_manifest_folder() -> None:
    assert join_uri("s3://b/data/set.manifest", "img/1.png") == "s3://b/data/img/1.png"
    assert join_uri("s3://b/data/set.manifest", "./img/../x.png") == "s3://b/data/x.png"
    assert join_uri("s3://b/set.manifest", "img/1.png") == "s3://b/img/1.png"
    assert join_uri("s3://b/data/", "a.json") == "s3://b/data/a.json"
    assert join_uri("s3://b/data/set.manifest", "s3://other/k.png") == "s3://other/k.png"
    assert join_uri("/srv/d/set.manifest", "img/1.png") == "/srv/d/img/1.png"
    assert join_uri("/srv/d/set.manifest", "/abs/1.png") == "/abs/1.png"
    with pytest.raises(ValueError, match="escapes the bucket"):
        join_uri("s3://b/set.manifest", "../other/1.png")


def test_config_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ak")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sk")
    cfg = StorageConfig.from_env()
    assert (cfg.endpoint_url, cfg.region, cfg.access_key, cfg.secret_key) == (
        "http://127.0.0.1:9",
        "eu-west-3",
        "ak",
        "sk",
    )
    # Explicit values win over the environment.
    assert StorageConfig(endpoint_url="http://x:1").resolved().endpoint_url == "http://x:1"
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    assert StorageConfig.from_env().region == "us-east-1"


def test_local_write_read_creates_folders_and_leaves_no_temp_files(tmp_path: Path) -> None:
    st = Storage()
    target = tmp_path / "a" / "b" / "c.json"
    st.write_bytes(str(target), b"one")
    st.write_bytes(str(target), b"two")
    assert st.read_bytes(str(target)) == b"two"
    assert os.listdir(target.parent) == ["c.json"]
    assert st.exists(str(target)) and not st.exists(str(tmp_path / "nope"))


def test_local_write_is_atomic_when_it_fails_midway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    st = Storage()
    target = tmp_path / "summary.json"
    st.write_bytes(str(target), b"old content")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage_mod.os, "replace", broken_replace)
    with pytest.raises(StorageError, match=r"summary\.json: cannot write: No space left on device"):
        st.write_bytes(str(target), b"new content")
    monkeypatch.undo()
    assert target.read_bytes() == b"old content"
    assert os.listdir(tmp_path) == ["summary.json"]  # the temp file was removed


def test_local_upload_file_copies_atomically(tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(3 << 20))
    st = Storage()
    st.upload_file(str(src), str(tmp_path / "out" / "big.bin"))
    assert (tmp_path / "out" / "big.bin").read_bytes() == src.read_bytes()
    with pytest.raises(StorageError, match="no such file"):
        st.upload_file(str(tmp_path / "missing"), str(tmp_path / "out" / "x"))


def test_missing_objects_name_the_uri(tmp_path: Path) -> None:
    st = Storage()
    missing = str(tmp_path / "nope.manifest")
    with pytest.raises(ObjectNotFound) as err:
        st.read_bytes(missing)
    assert err.value.uri == missing and str(err.value).startswith(missing)
    with pytest.raises(ObjectNotFound):
        list(st.iter_lines(missing))


def test_iter_lines_streams_and_normalises(tmp_path: Path) -> None:
    path = tmp_path / "m.manifest"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\r\n\n{"b": 2}')
    lines = Storage().iter_lines(str(path))
    assert not isinstance(lines, list)
    assert list(lines) == ['{"a": 1}', "", '{"b": 2}']
    path.write_bytes(b"\xff\xfe bad")
    with pytest.raises(StorageError, match="not UTF-8"):
        list(Storage().iter_lines(str(path)))


def test_list_local_prefix(tmp_path: Path) -> None:
    st = Storage()
    for rel in ("r/a.txt", "r/sub/b.txt", "r2/c.txt"):
        st.write_bytes(str(tmp_path / rel), b"x")
    assert list(st.list(str(tmp_path / "r"))) == [str(tmp_path / "r/a.txt"), str(tmp_path / "r/sub/b.txt")]
    assert sorted(st.list(str(tmp_path) + "/r")) == sorted([str(tmp_path / "r/a.txt"), str(tmp_path / "r/sub/b.txt")])
    assert list(st.list(str(tmp_path / "absent/"))) == []


class _SlowStorage(Storage):
    """Counts concurrent reads so the bound on in-flight fetches can be observed."""

    def __init__(self) -> None:
        super().__init__()
        self.active = 0
        self.peak = 0
        self.lock = threading.Lock()

    def read_bytes(self, uri: str) -> bytes:
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(0.01 if int(uri) % 3 else 0.03)  # out-of-order completion
        with self.lock:
            self.active -= 1
        if uri == "13":
            raise ObjectNotFound(uri, "cannot read: no such object")
        return uri.encode()


def test_fetch_many_is_ordered_bounded_and_lazy() -> None:
    st = _SlowStorage()
    consumed = 0

    def uris():
        nonlocal consumed
        for i in range(40):
            consumed += 1
            yield str(i)

    results = st.fetch_many(uris(), max_workers=4)
    first = next(results)
    assert first == ("0", b"0")
    assert consumed <= 2 * 4 + 1  # not the whole input up front
    rest = list(results)
    assert [u for u, _ in rest] == [str(i) for i in range(1, 40)]
    errors = [(u, d) for u, d in rest if isinstance(d, StorageError)]
    assert len(errors) == 1 and errors[0][0] == "13" and isinstance(errors[0][1], ObjectNotFound)
    assert st.peak <= 4


def test_fetch_many_reads_real_files(tmp_path: Path) -> None:
    st = Storage()
    uris = []
    for i in range(50):
        p = tmp_path / f"{i}.bin"
        p.write_bytes(bytes([i]) * i)
        uris.append(str(p))
    got = list(st.fetch_many([*uris, str(tmp_path / "missing")], max_workers=3))
    assert [u for u, _ in got] == [*uris, str(tmp_path / "missing")]
    assert all(d == bytes([i]) * i for i, (_, d) in enumerate(got[:-1]))
    assert isinstance(got[-1][1], ObjectNotFound)


# ----------------------------------------------------------------------------------- scoped writer


def test_scoped_writer_writes_inside_its_prefix(tmp_path: Path) -> None:
    writer = ScopedWriter(Storage(), str(tmp_path / "out"))
    writer.write_bytes("model/labels.json", b"{}")
    assert (tmp_path / "out" / "model" / "labels.json").read_bytes() == b"{}"
    assert writer.uri("summary.json") == str(tmp_path / "out" / "summary.json")
    shard = writer.scoped("shards/2/")
    shard.write_bytes("progress.json", b"{}")
    assert (tmp_path / "out" / "shards" / "2" / "progress.json").exists()


@pytest.mark.parametrize("key", ["../x.json", "a/../../x", "/etc/passwd", "s3://b/k", "", "a//b", "./a", "a/"])
def test_scoped_writer_refuses_keys_that_escape(tmp_path: Path, key: str) -> None:
    writer = ScopedWriter(Storage(), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="refusing to write"):
        writer.write_bytes(key, b"x")
    assert not (tmp_path / "x.json").exists()


def test_scoped_writer_refuses_symlinks_out_of_the_prefix(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "out" / "link")
    writer = ScopedWriter(Storage(), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="resolves outside"):
        writer.write_bytes("link/x.json", b"x")


def test_scoped_writer_s3_keys() -> None:
    writer = ScopedWriter(Storage(), "s3://bucket/results/job-1234")
    assert writer.uri("model/model.pt") == "s3://bucket/results/job-1234/model/model.pt"
    with pytest.raises(ValueError):
        writer.uri("../job-other/summary.json")


def test_input_manifest_is_never_overwritten(tmp_path: Path) -> None:
    manifest = tmp_path / "data" / "set.manifest"
    manifest.parent.mkdir()
    manifest.write_text("{}\n")
    st = Storage()
    st.protect(str(manifest))
    with pytest.raises(ValueError, match="refusing to overwrite"):
        st.write_bytes(str(tmp_path / "data" / "." / "set.manifest"), b"gone")
    # A results prefix that contains the manifest (output: the dataset folder itself).
    writer = ScopedWriter(Storage(), str(tmp_path / "data"), protected=[str(manifest)])
    with pytest.raises(ValueError, match="refusing to overwrite"):
        writer.write_bytes("set.manifest", b"gone")
    assert manifest.read_text() == "{}\n"


# ------------------------------------------------------------------------------- connection errors


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_endpoint_retries_with_backoff_then_raises() -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    cfg = StorageConfig(
        endpoint_url=endpoint, access_key="a", secret_key="b", max_attempts=1, connect_retries=3, connect_timeout=1
    )
    st = Storage(cfg)
    delays: list[float] = []
    st._sleep = delays.append
    with pytest.raises(StorageUnreachable) as err:
        st.read_bytes("s3://bucket/data/set.manifest")
    assert "s3://bucket/data/set.manifest" in str(err.value)
    assert endpoint in str(err.value) and "after 4 attempts" in str(err.value)
    assert len(delays) == 3 and delays[0] < delays[2]  # exponential backoff (with jitter)


class _Body:
    """A streaming body that drops the connection after ``cut`` bytes."""

    def __init__(self, data: bytes, cut: int | None):
        self.data, self.cut = data, cut

    def iter_chunks(self, chunk_size: int = 1024):
        stream = io.BytesIO(self.data)
        sent = 0
        while chunk := stream.read(7):
            if self.cut is not None and sent + len(chunk) > self.cut:
                raise ConnectionClosedError(endpoint_url="http://s3")
            sent += len(chunk)
            yield chunk

    def close(self) -> None:
        pass


class _FlakyClient:
    """get_object honours Range; the first response dies midway, like a reset connection."""

    def __init__(self, data: bytes):
        self.data = data
        self.ranges: list[str | None] = []

    def get_object(self, Bucket: str, Key: str, Range: str | None = None):
        self.ranges.append(Range)
        start = int(Range.removeprefix("bytes=").rstrip("-")) if Range else 0
        cut = 40 if len(self.ranges) == 1 else None
        return {"Body": _Body(self.data[start:], cut)}


def test_s3_line_stream_resumes_after_a_lost_connection() -> None:
    lines = [f'{{"source": "img/{i}.png"}}' for i in range(20)]
    st = Storage(StorageConfig(endpoint_url="http://s3", access_key="a", secret_key="b"))
    client = _FlakyClient(("\n".join(lines) + "\n").encode())
    st._client = client
    st._sleep = lambda s: None
    assert list(st.iter_lines("s3://b/set.manifest")) == lines
    assert client.ranges[0] is None and client.ranges[1] is not None
    resumed_at = int(client.ranges[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= 40 and client.data[resumed_at - 1 : resumed_at] == b"\n"


def test_client_errors_are_mapped() -> None:
    from botocore.exceptions import ClientError

    def err(code: str, status: int) -> ClientError:
        return ClientError(
            {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op"
        )

    mapped = Storage._map_client_error
    assert type(mapped("s3://b/k", "read", err("NoSuchKey", 404))) is ObjectNotFound
    assert "bucket does not exist" in str(mapped("s3://b/k", "read", err("NoSuchBucket", 404)))
    denied = mapped("s3://b/k", "read", err("AccessDenied", 403))
    assert type(denied) is StorageError and "check the credentials" in str(denied)
    assert type(mapped("s3://b/k", "read", err("SlowDown", 503))) is StorageUnreachable
    # a store stopping in the middle of the request (MinIO), a timeout, throttling: the store, not the object
    assert type(mapped("s3://b/k", "read", err("ClientDisconnected", 499))) is StorageUnreachable
    assert type(mapped("s3://b/k", "read", err("RequestTimeout", 400))) is StorageUnreachable
    assert type(mapped("s3://b/k", "read", err("TooManyRequests", 429))) is StorageUnreachable
    assert type(mapped("s3://b/k", "read", err("InvalidRange", 416))) is StorageError


def test_unsupported_schemes_are_storage_errors() -> None:
    from autolabel.storage import UnsupportedURI

    got = list(Storage().fetch_many(["https://example.com/a.png"]))
    assert isinstance(got[0][1], UnsupportedURI) and "unsupported URI scheme" in str(got[0][1])
    with pytest.raises(ValueError):
        Storage().read_bytes("obs://bucket/key")


class _EndlessLine:
    """A body that yields 'x' forever (a huge line): reading must stop at the limit, not buffer it all."""

    def __init__(self) -> None:
        self.served = 0

    def iter_chunks(self, chunk_size: int):
        while True:
            self.served += chunk_size
            yield b"x" * chunk_size

    def close(self) -> None:
        pass


def test_a_line_longer_than_the_limit_stops_the_read_naming_the_line(tmp_path: Path) -> None:
    body = _EndlessLine()

    class Client:
        def get_object(self, Bucket: str, Key: str, **_: str):
            return {"Body": body}

    st = Storage(StorageConfig(endpoint_url="http://s3", access_key="a", secret_key="b", max_line_bytes=1 << 20))
    st._client = Client()
    with pytest.raises(storage_mod.LineTooLong, match=r"line 1 is longer than 1,048,576 bytes") as err:
        list(st.iter_lines("s3://b/set.manifest"))
    assert err.value.line_no == 1 and body.served < 2 << 20  # stopped near the limit, not at the end
    path = tmp_path / "m.manifest"
    path.write_bytes(b'{"a": 1}\n' + b"y" * 5000 + b"\n")
    small = Storage(StorageConfig(max_line_bytes=1000))
    with pytest.raises(storage_mod.LineTooLong, match="line 2 is longer than 1,000 bytes"):
        list(small.iter_lines(str(path)))
    assert next(iter(Storage().iter_lines(str(path)))) == '{"a": 1}'
    # On S3 (what the operator reads) a line that is not UTF-8 is named too.
    st._client = _FlakyClient(b'{"a": 1}\n\xff\xfe bad\n')
    with pytest.raises(StorageError, match="line 2: not UTF-8"):
        list(st.iter_lines("s3://b/set.manifest"))
