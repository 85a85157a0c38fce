"""The fault campaign's bad inputs (issue 11 §1): each one fails with a named reason whose message names the
file, line or field at fault, and nothing is overwritten (the manifest is unchanged, nothing is written
under the job's output folder when the job fails before running).

Two halves:

- manifests, models and spec/cluster mistakes go through the real operator (one batch of AutoLabelJobs
  applied at once; the fake worker runs the few that are accepted);
- images go through the real worker in-process (PreLabeling over the digits with a small TorchScript
  model), where images are read.

The "1 GB line" is a 3 MiB line here: lines are read up to ``StorageConfig.max_line_bytes`` (1 MiB), so any
longer line takes the same path (the read stops at the limit, see tests/unit/test_storage.py).
A queue that does not exist is tested against a real Kueue in tests/integration/test_kueue.py.
"""

from __future__ import annotations

import io
import json
import struct
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from devenv.cluster import LocalCluster
from devenv.s3 import MinioServer

from .operator_fixtures import BUCKET, OperatorProcess, alj, condition, get, job_manifest, wait_phase

pytestmark = [pytest.mark.needs_cluster, pytest.mark.needs_s3]

CLS = "modelarts/image_classification"
FAST = {"fakeworker.autolabel.dev/seconds": "0.3"}
DETECTION = {"type": "modelarts/object_detection", "annotation-loc": "b.xml"}


def good_lines(n_unlabeled: int = 3) -> list[str]:
    lines = []
    for i in range(12):
        label = "cat" if i < 6 else "dog"
        lines.append(json.dumps({"source": f"img/{i}.png", "annotation": [{"type": CLS, "name": label}]}))
    lines += [json.dumps({"source": f"img/u{i}.png"}) for i in range(n_unlabeled)]
    return lines


GOOD = "\n".join(good_lines()) + "\n"


def plus(line: str) -> bytes:
    """The good manifest with one more line (line 16)."""
    return (GOOD + line + "\n").encode()


@dataclass
class Case:
    manifest: bytes | None  # None: no manifest object at all
    reason: str  # PreconditionsMet's reason, or "Succeeded" for inputs that must be accepted
    words: list[str] = field(default_factory=list)  # in the message ("{uri}": the manifest's URI)
    spec: dict[str, Any] = field(default_factory=dict)
    model: dict[str, bytes] | None = None  # PreLabeling with these files in the model folder
    model_bucket: str | None = None
    secret: dict[str, str] | None = None  # a Secret named "creds" with these keys, named in the spec
    manifest_bucket: str | None = None


def _long_line() -> bytes:
    return plus(json.dumps({"source": "img/long.png", "pad": "x" * (3 << 20)}))


CASES: dict[str, Callable[[], Case]] = {
    # ---------------------------------------------------------------- manifests
    "manifest-empty": lambda: Case(b"", "ManifestInvalid", ["{uri}: empty"]),
    "manifest-blank-lines": lambda: Case(b"\n \n\r\n", "ManifestInvalid", ["{uri}: empty"]),
    "manifest-binary": lambda: Case(
        b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8, "ManifestUnreadable", ["{uri}", "line 1", "not UTF-8"]
    ),
    "manifest-gzip": lambda: Case(zlib.compress(GOOD.encode()), "ManifestUnreadable", ["{uri}", "not UTF-8"]),
    "manifest-utf16": lambda: Case(GOOD.encode("utf-16"), "ManifestUnreadable", ["{uri}", "line 1", "not UTF-8"]),
    "manifest-long-line": lambda: Case(_long_line(), "ManifestInvalid", ["{uri}", "line 16 is longer than 1,048,576"]),
    "manifest-not-json": lambda: Case(plus('{"source": oops'), "ManifestInvalid", ["{uri} line 16", "invalid JSON"]),
    "manifest-array-line": lambda: Case(plus("[1, 2]"), "ManifestInvalid", ["line 16", "JSON object, got list"]),
    "manifest-source-number": lambda: Case(
        plus('{"source": 42}'), "ManifestInvalid", ["line 16", '"source" must be a string']
    ),
    "manifest-source-missing": lambda: Case(
        plus('{"src": "a.png"}'), "ManifestInvalid", ["line 16", 'missing "source"']
    ),
    "manifest-source-empty": lambda: Case(plus('{"source": " "}'), "ManifestInvalid", ["line 16", '"source" is empty']),
    "manifest-annotation-object": lambda: Case(
        plus('{"source": "a.png", "annotation": {"type": "x"}}'), "ManifestInvalid", ["line 16", "must be a list"]
    ),
    "manifest-unknown-annotation-type": lambda: Case(
        plus(json.dumps({"source": "a.png", "annotation": [{"type": "modelarts/segmentation", "name": "x"}]})),
        "ManifestInvalid",
        ["line 16", 'unknown annotation type "modelarts/segmentation"'],
    ),
    "manifest-label-not-string": lambda: Case(
        plus(json.dumps({"source": "a.png", "annotation": [{"type": CLS, "name": ["cat"]}]})),
        "ManifestInvalid",
        ["line 16", '"name" must be a string, got list'],
    ),
    "manifest-label-missing": lambda: Case(
        plus(json.dumps({"source": "a.png", "annotation": [{"type": CLS}]})), "ManifestInvalid", ["line 16", '"name"']
    ),
    "manifest-confidence-out-of-range": lambda: Case(
        plus(json.dumps({"source": "a.png", "annotation": [{"type": CLS, "name": "cat", "confidence": 7}]})),
        "ManifestInvalid",
        ["line 16", '"confidence" 7 is outside 0..1'],
    ),
    "manifest-path-escapes-bucket": lambda: Case(
        plus('{"source": "../../../elsewhere/a.png"}'), "ManifestInvalid", ["line 16", "escapes the bucket"]
    ),
    "manifest-local-path": lambda: Case(
        plus('{"source": "/etc/passwd"}'), "ManifestInvalid", ["line 16", "local path"]
    ),
    "manifest-http-source": lambda: Case(
        plus('{"source": "http://example.com/a.png"}'), "ManifestInvalid", ["line 16", "unsupported URI scheme"]
    ),
    "manifest-other-bucket": lambda: Case(
        plus('{"source": "s3://not-allowed/a.png"}'), "BucketNotAllowed", ["line 16", "not-allowed"]
    ),
    "manifest-missing": lambda: Case(None, "ManifestUnreadable", ["{uri}"]),
    "manifest-too-few-labels": lambda: Case(
        ("\n".join(good_lines()[:6] + good_lines()[12:]) + "\n").encode(), "TooFewLabels", ['"cat"']
    ),
    "manifest-detection-for-classification": lambda: Case(
        plus(json.dumps({"source": "b.png", "annotation": [DETECTION]})),
        "ManifestInvalid",
        ["the task is ImageClassification", "modelarts/object_detection"],
    ),
    # Accepted: a BOM, CRLF line ends and a repeated source are read as meant (the worker lists repeats).
    "manifest-bom": lambda: Case(b"\xef\xbb\xbf" + GOOD.encode(), "Succeeded"),
    "manifest-crlf": lambda: Case(GOOD.replace("\n", "\r\n").encode(), "Succeeded"),
    "manifest-duplicate-sources": lambda: Case(plus(good_lines()[-1]), "Succeeded"),
    # ---------------------------------------------------------------- models (checked before the lock)
    "model-wrong-task": lambda: Case(
        GOOD.encode(),
        "ModelTaskMismatch",
        ["is for ObjectDetection"],
        model={"model.pt": b"x", "labels.json": json.dumps({"task": "ObjectDetection", "labels": ["a", "b"]}).encode()},
    ),
    "model-missing": lambda: Case(GOOD.encode(), "ModelNotFound", ["model.pt"], model={}),
    "model-labels-not-json": lambda: Case(
        GOOD.encode(), "ModelInvalid", ["labels.json", "not valid JSON"], model={"model.pt": b"x", "labels.json": b"{"}
    ),
    "model-labels-not-a-list": lambda: Case(
        GOOD.encode(),
        "ModelInvalid",
        ["labels.json", '"labels"'],
        model={"model.pt": b"x", "labels.json": json.dumps({"labels": "cat,dog"}).encode()},
    ),
    "model-other-bucket": lambda: Case(
        GOOD.encode(), "BucketNotAllowed", ["spec.preLabeling.model.uri"], model={}, model_bucket="not-allowed"
    ),
    # ---------------------------------------------------------------- spec and cluster
    "spec-unknown-flavor": lambda: Case(
        GOOD.encode(), "UnknownFlavor", ["tpu-9"], spec={"resources": {"flavor": "tpu-9"}}
    ),
    "spec-missing-secret": lambda: Case(
        GOOD.encode(), "SecretNotFound", ["no-such-secret"], spec={"storage": {"secretRef": {"name": "no-such-secret"}}}
    ),
    "spec-wrong-credentials": lambda: Case(
        GOOD.encode(),
        "ManifestUnreadable",
        ["{uri}"],
        secret={"AWS_ACCESS_KEY_ID": "nobody", "AWS_SECRET_ACCESS_KEY": "wrong-secret-key"},
    ),
    "spec-bucket-missing": lambda: Case(
        GOOD.encode(), "ManifestUnreadable", ["no-such-bucket-"], secret={}, manifest_bucket="no-such-bucket-"
    ),
    "spec-output-other-bucket": lambda: Case(
        GOOD.encode(), "BucketNotAllowed", ["spec.output"], spec={"output": "s3://not-allowed/out/"}
    ),
}


@dataclass
class Applied:
    uri: str
    etag: str | None
    case: Case


@pytest.fixture(scope="module")
def applied(
    cluster: LocalCluster, s3_server: MinioServer, autolabel_operator: OperatorProcess
) -> Iterator[tuple[str, dict[str, Applied]]]:
    """Every case as an AutoLabelJob in one fresh namespace, applied at once."""
    namespace = f"bad-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", namespace)
    client = s3_server.client()
    out: dict[str, Applied] = {}
    docs = []
    for name, make in CASES.items():
        case = make()
        folder = f"bad/{name}-{uuid.uuid4().hex[:6]}"
        if case.manifest_bucket is not None:
            uri, etag = f"s3://{case.manifest_bucket}{uuid.uuid4().hex[:8]}/{folder}/data.manifest", None
        elif case.manifest is None:
            uri, etag = f"s3://{BUCKET}/{folder}/data.manifest", None
        else:
            etag = client.put_object(Bucket=BUCKET, Key=f"{folder}/data.manifest", Body=case.manifest)["ETag"]
            uri = f"s3://{BUCKET}/{folder}/data.manifest"
        spec: dict[str, Any] = dict(case.spec)
        if case.model is not None:
            bucket = case.model_bucket or BUCKET
            for file, data in case.model.items():
                client.put_object(Bucket=BUCKET, Key=f"{folder}/model/{file}", Body=data)
            spec |= {"mode": "PreLabeling", "preLabeling": {"model": {"uri": f"s3://{bucket}/{folder}/model/"}}}
        if case.secret is not None:
            keys = case.secret or {"AWS_ACCESS_KEY_ID": s3_server.access_key,
                                   "AWS_SECRET_ACCESS_KEY": s3_server.secret_key}  # fmt: skip
            secret = f"creds-{len(out)}"
            cluster.kubectl("create", "secret", "generic", secret, "-n", namespace,
                            *[f"--from-literal={k}={v}" for k, v in keys.items()])  # fmt: skip
            spec["storage"] = {"secretRef": {"name": secret}}
        out[name] = Applied(uri, etag, case)
        docs.append(job_manifest(name, uri, FAST, **spec))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input="---\n".join(docs))
    yield namespace, out
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_fails_with_a_named_reason_and_overwrites_nothing(
    name: str, cluster: LocalCluster, s3_server: MinioServer, applied: tuple[str, dict[str, Applied]]
) -> None:
    namespace, cases = applied
    item = cases[name]
    obj = wait_phase(cluster, namespace, name, {"Failed", "Succeeded"}, timeout=180)
    status = obj["status"]
    if item.case.reason == "Succeeded":
        assert status["phase"] == "Succeeded", status
    else:
        cond = condition(obj, "PreconditionsMet")
        assert status["phase"] == "Failed" and cond.get("reason") == item.case.reason, (cond, status.get("message"))
        for word in item.case.words:
            word = word.replace("{uri}", item.uri)
            assert word in cond["message"], (word, cond["message"])
        jobs = get(cluster, namespace, "jobs.batch", None, "-l", f"autolabel.dev/job-uid={obj['metadata']['uid']}")
        assert not (jobs or {}).get("items"), "a Job was created for a job that failed its preconditions"
    client = s3_server.client()
    if item.etag is not None:  # the manifest is never touched
        assert client.head_object(Bucket=BUCKET, Key=item.uri.removeprefix(f"s3://{BUCKET}/"))["ETag"] == item.etag
    if item.case.reason != "Succeeded" and item.uri.startswith(f"s3://{BUCKET}/"):
        prefix = item.uri.removeprefix(f"s3://{BUCKET}/").rsplit("/", 1)[0] + "/autolabel/"
        written = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
        assert not written, [o["Key"] for o in written]
    assert alj(cluster, namespace, name)["status"]["phase"] == status["phase"]  # and it stays there


# ------------------------------------------------------------------------------ images, in the worker


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header says ``width`` x ``height`` (a 20k x 20k image) with one tiny data chunk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def bad_images() -> dict[str, tuple[bytes, str | None]]:
    """name -> (bytes, None when the worker must label it, else a word its unreadable reason contains)."""
    from PIL import Image

    def save(img: Any, fmt: str, **kw: Any) -> bytes:
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        return buf.getvalue()

    rgb = Image.new("RGB", (8, 8), (200, 30, 30))
    png = save(rgb, "PNG")
    frames = [Image.new("P", (8, 8), i) for i in (1, 2, 3)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><rect width="8" height="8"/></svg>'
    return {
        "zero-bytes.png": (b"", "empty"),
        "truncated.png": (png[: len(png) // 2], "trunc"),
        "svg.svg": (svg, "identify"),
        "text-named.png": (b"hello, not an image\n", "identify"),
        "huge-20000x20000.png": (_png_header_only(20000, 20000), "pixels"),
        "cmyk.jpg": (save(Image.new("CMYK", (8, 8), (0, 50, 50, 0)), "JPEG"), None),
        "gray16.png": (save(Image.new("I;16", (8, 8), 40000), "PNG"), None),
        "animated.gif": (gif.getvalue(), None),
        "png-named.jpg": (png, None),
    }


def test_bad_images_are_each_listed_with_a_reason_or_converted(
    s3_server: MinioServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from autolabel_worker.entrypoint import execute
    from autolabel_worker.models import SmallCNN
    from worker_fixtures import upload_digits

    from autolabel.api import AutoLabelJob, results_prefix
    from autolabel.contract import ExitCode
    from autolabel.storage import Storage, StorageConfig

    monkeypatch.setenv("AUTOLABEL_TORCH_THREADS", "1")
    storage = Storage(StorageConfig(endpoint_url=s3_server.endpoint_url, access_key=s3_server.access_key,
                                    secret_key=s3_server.secret_key, region=s3_server.region))  # fmt: skip
    bucket = f"badimg-{uuid.uuid4().hex[:8]}"
    s3_server.make_bucket(bucket)
    base, _ = upload_digits(storage, bucket, tmp_path / "digits", seed=0, unlabeled=10)
    images = bad_images()
    for file, (data, _) in images.items():
        storage.write_bytes(f"{base}bad/{file}", data)
    manifest = base + "digits.manifest"
    text = storage.read_bytes(manifest).decode() + "".join(json.dumps({"source": f"bad/{f}"}) + "\n" for f in images)
    storage.write_bytes(base + "bad.manifest", text.encode())
    torch.manual_seed(0)
    model = tmp_path / "model.pt"
    torch.jit.script(SmallCNN(10, (8, 8), 8).eval()).save(str(model))
    storage.upload_file(str(model), f"{base}model/model.pt")
    labels = {"task": "ImageClassification", "labels": [str(i) for i in range(10)], "inputSize": [8, 8]}
    storage.write_bytes(f"{base}model/labels.json", json.dumps(labels).encode())
    job = AutoLabelJob.model_validate({
        "metadata": {"name": "bad-images", "namespace": "test", "uid": str(uuid.uuid4())},
        "spec": {"task": "ImageClassification", "mode": "PreLabeling", "dataset": {"manifest": base + "bad.manifest"},
                 "preLabeling": {"model": {"uri": f"{base}model/"}}, "images": {"maxUnreadableFraction": 1.0}},
    })  # fmt: skip
    out = results_prefix(job)

    assert execute(job, storage, out) == ExitCode.OK
    summary = json.loads(storage.read_bytes(out + "summary.json"))
    unreadable = {u["source"].rsplit("/", 1)[1]: u for u in summary["unreadableImages"]}
    results = {json.loads(line)["source"].rsplit("/", 1)[1] for line in storage.iter_lines(out + "result.manifest")
               if line.strip()}  # fmt: skip
    problems = []
    for file, (_, word) in images.items():
        if word is None and file not in results:
            problems.append(f"{file}: expected a result line (converted), got {unreadable.get(file)}")
        elif word is not None and (file in results or word not in json.dumps(unreadable.get(file, "")).lower()):
            problems.append(f"{file}: expected unreadable with {word!r}, got {unreadable.get(file)}")
    assert not problems, "\n".join(problems) + f"\nunreadable: {json.dumps(unreadable, indent=1)}"
    assert storage.read_bytes(base + "bad.manifest") == text.encode()  # the input is never overwritten
    assert storage.read_bytes(manifest).decode() in text


# ------------------------------------------------------------------------------ models, in the worker

MODEL_CASES = {
    "model-corrupt": (b"PK\x03\x04 not a TorchScript archive", 10, "not a TorchScript model"),
    "model-fewer-labels-than-outputs": (None, 3, "labels"),
    "model-more-labels-than-outputs": (None, 12, "labels"),
}


@pytest.mark.parametrize("name", list(MODEL_CASES))
def test_bad_prelabeling_model_fails_the_worker_with_model_invalid(
    name: str, s3_server: MinioServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the operator cannot see (it never loads the model): the worker refuses it with ModelInvalid,
    exit 3 (not retried), naming the model folder, and writes no result."""
    import torch
    from autolabel_worker.entrypoint import execute
    from autolabel_worker.models import SmallCNN
    from worker_fixtures import upload_digits

    from autolabel.api import AutoLabelJob, results_prefix
    from autolabel.contract import ExitCode
    from autolabel.storage import Storage, StorageConfig

    monkeypatch.setenv("AUTOLABEL_TORCH_THREADS", "1")
    storage = Storage(StorageConfig(endpoint_url=s3_server.endpoint_url, access_key=s3_server.access_key,
                                    secret_key=s3_server.secret_key, region=s3_server.region))  # fmt: skip
    bucket = f"badmodel-{uuid.uuid4().hex[:8]}"
    s3_server.make_bucket(bucket)
    base, _ = upload_digits(storage, bucket, tmp_path / "digits", seed=0, unlabeled=10)
    data, n_labels, word = MODEL_CASES[name]
    if data is None:
        torch.manual_seed(0)
        torch.jit.script(SmallCNN(10, (8, 8), 8).eval()).save(str(tmp_path / "model.pt"))
        data = (tmp_path / "model.pt").read_bytes()
    model = f"{base}model/"
    storage.write_bytes(model + "model.pt", data)
    labels = {"task": "ImageClassification", "labels": [str(i) for i in range(n_labels)], "inputSize": [8, 8]}
    storage.write_bytes(model + "labels.json", json.dumps(labels).encode())
    job = AutoLabelJob.model_validate({
        "metadata": {"name": name, "namespace": "test", "uid": str(uuid.uuid4())},
        "spec": {"task": "ImageClassification", "mode": "PreLabeling",
                 "dataset": {"manifest": base + "digits.manifest"}, "preLabeling": {"model": {"uri": model}}},
    })  # fmt: skip
    out = results_prefix(job)

    code = execute(job, storage, out)

    progress = json.loads(storage.read_bytes(out + "progress.json"))
    assert (code, progress.get("reason")) == (ExitCode.DATA, "ModelInvalid"), progress
    assert model in progress["error"] and word in progress["error"], progress["error"]
    assert not storage.exists(out + "summary.json") and not storage.exists(out + "result.manifest")
