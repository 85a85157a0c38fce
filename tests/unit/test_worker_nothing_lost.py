"""Nothing is lost between the manifest and the results (issue 10): an image the worker cannot use is a
data problem, listed in summary.json and counted against spec.images.maxUnreadableFraction over the whole
run; a store it cannot reach is an infrastructure problem that fails the run with the retryable storage
exit code; and no run (or shard merge) reports success unless every unlabeled image has a result line or
is listed as unreadable.

The runs here are PreLabeling runs on local files with a tiny TorchScript "lookup" model (no training),
with a Storage subclass that fails chosen reads."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from autolabel_worker import pipeline
from autolabel_worker.data import DigitsDataset
from autolabel_worker.entrypoint import classify_error, execute
from autolabel_worker.errors import PipelineError
from autolabel_worker.outputs import PRE_LABELING_BY, ResultWriter, merge_shards, write_json
from autolabel_worker.predict import iter_batches
from autolabel_worker.preflight import PreflightError
from PIL import Image
from worker_fixtures import UNLABELED, digits, lookup_model, prelabeling_job

from autolabel.api import results_prefix
from autolabel.contract import ExitCode, shard_prefix
from autolabel.storage import ObjectNotFound, ScopedWriter, Storage, StorageError, StorageUnreachable

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/unit/conftest.py


# ------------------------------------------------------------------------------------------ helpers


def unlabeled_sources(ds: DigitsDataset) -> set[str]:
    return {str(ds.folder / src) for src in json.loads(ds.ground_truth.read_text())}


def result_sources(out: str) -> list[str]:
    return [json.loads(line)["source"] for line in Path(out, "result.manifest").read_text().splitlines()]


class FailingReads(Storage):
    """Local files; every read but the first (preflight reads each image once, inference again) of the
    chosen unlabeled images fails with ``error(uri)``. Chosen: the n-th unlabeled image in name (manifest)
    order for each n where ``fails(n)``, decided per image rather than by counting reads, because inference
    reads in the worker's loading processes, whose counters this test cannot see (they inherit the
    preflight's counts at the fork)."""

    def __init__(self, unlabeled: set[str], fails: Callable[[int], bool], error: Callable[[str], StorageError]):
        super().__init__()
        self.failing = [uri for n, uri in enumerate(sorted(unlabeled)) if fails(n)]
        self.error = error
        self.reads: Counter[str] = Counter()
        self.lock = threading.Lock()

    def read_bytes(self, uri: str) -> bytes:
        if uri in self.failing:
            with self.lock:
                self.reads[uri] += 1
                if self.reads[uri] >= 2:
                    raise self.error(uri)
        return super().read_bytes(uri)


def unreachable(uri: str) -> StorageError:
    return StorageUnreachable(uri, "cannot read: http://s3.test unreachable after 7 attempts (connection refused)")


def not_found(uri: str) -> StorageError:
    return ObjectNotFound(uri, "cannot read: no such object")


# ------------------------------------------------------------------------- the store goes away


def test_a_store_that_goes_away_mid_inference_fails_the_run_with_the_retryable_storage_code(tmp_path: Path) -> None:
    ds = digits(tmp_path)
    job = prelabeling_job(ds, lookup_model(tmp_path / "model"), tmp_path / "out")
    storage = FailingReads(unlabeled_sources(ds), lambda n: n >= 20, unreachable)
    out = results_prefix(job)

    code = execute(job, storage, out)

    assert code == ExitCode.STORAGE_UNREACHABLE == 4
    # nothing claims success with fewer lines: no results at all, and progress.json says why
    assert not Path(out, "summary.json").exists() and not Path(out, "result.manifest").exists()
    progress = json.loads(Path(out, "progress.json").read_text())
    assert progress["stage"] == "failed" and progress["reason"] == "StorageUnreachable"
    assert "unreachable" in progress["error"] and any(uri in progress["error"] for uri in storage.failing)


def test_an_unreachable_store_stops_the_inference_batches() -> None:
    class Stub:
        def fetch_many(self, uris: Iterable[str], max_workers: int = 16) -> Iterator[tuple[str, bytes | StorageError]]:
            for uri in uris:
                yield uri, (unreachable(uri) if uri == "s3://b/2.png" else png_bytes())

    batches = iter_batches(Stub(), ["s3://b/1.png", "s3://b/2.png", "s3://b/3.png"], decode, (8, 8), batch_size=2)
    with pytest.raises(StorageUnreachable, match=r"s3://b/2\.png"):
        list(batches)


def test_an_unreachable_store_stops_the_loading_of_labeled_images() -> None:
    class Stub:
        def fetch_many(self, uris: Iterable[str], max_workers: int = 16) -> Iterator[tuple[str, bytes | StorageError]]:
            for uri in uris:
                yield uri, (unreachable(uri) if uri == "s3://b/2.png" else png_bytes())

    spec = SimpleNamespace(images=SimpleNamespace(alpha="Convert"))
    ctx = SimpleNamespace(storage=Stub(), job=SimpleNamespace(spec=spec))
    entries = [SimpleNamespace(source=f"s3://b/{i}.png") for i in (1, 2, 3)]
    unreadable: list[dict[str, str]] = []
    with pytest.raises(StorageUnreachable, match=r"s3://b/2\.png"):
        pipeline.load_images(ctx, entries, (8, 8), unreadable)
    assert unreadable == []


def test_a_missing_image_is_a_data_problem_listed_with_its_cause() -> None:
    class Stub:
        def fetch_many(self, uris: Iterable[str], max_workers: int = 16) -> Iterator[tuple[str, bytes | StorageError]]:
            for uri in uris:
                yield uri, (not_found(uri) if uri == "s3://b/2.png" else png_bytes())

    batches = list(iter_batches(Stub(), ["s3://b/1.png", "s3://b/2.png"], decode, (8, 8)))
    assert [b.sources for b in batches] == [["s3://b/1.png"]]
    assert batches[0].failures == [("s3://b/2.png", "cannot read: no such object")]


def test_a_model_check_that_cannot_reach_the_store_exits_with_the_storage_code() -> None:
    code, reason = classify_error(PipelineError("StorageUnreachable", "s3://m/labels.json: cannot read: unreachable"))
    assert (code, reason) == (ExitCode.STORAGE_UNREACHABLE, "StorageUnreachable")


# ------------------------------------------------------------------------ images that cannot be used


def test_images_lost_during_inference_count_against_the_unreadable_share_of_the_whole_run(tmp_path: Path) -> None:
    ds = digits(tmp_path)
    job = prelabeling_job(ds, lookup_model(tmp_path / "model"), tmp_path / "out", maxUnreadableFraction=0.05)
    storage = FailingReads(unlabeled_sources(ds), lambda n: 10 <= n < 20, not_found)  # 10 of 60 (17%)
    out = results_prefix(job)

    with pytest.raises(PreflightError, match=r"maxUnreadableFraction") as info:
        pipeline.run_job(job, storage, out)

    assert info.value.reason == "TooManyUnreadableImages"
    # the run read 110 images: its 60 unlabeled ones and the 50 labeled ones it measures the model on
    assert "10 of 110 images" in str(info.value) and storage.failing[0] in str(info.value)
    assert classify_error(info.value) == (ExitCode.DATA, "TooManyUnreadableImages")
    assert not Path(out, "summary.json").exists() and not Path(out, "result.manifest").exists()


def test_a_few_images_lost_during_inference_are_listed_and_every_image_is_accounted_for(tmp_path: Path) -> None:
    ds = digits(tmp_path)
    job = prelabeling_job(ds, lookup_model(tmp_path / "model"), tmp_path / "out", maxUnreadableFraction=0.05)
    expected = unlabeled_sources(ds)
    storage = FailingReads(expected, lambda n: n in (5, 40), not_found)  # 2 of 60 (3%)
    out = results_prefix(job)

    summary = pipeline.run_job(job, storage, out)

    listed = [u["source"] for u in summary["unreadableImages"]]
    assert sorted(listed) == sorted(storage.failing) and len(listed) == 2
    assert all(u["reason"] == "cannot read: no such object" for u in summary["unreadableImages"])
    lines = result_sources(out)
    assert summary["total"] == len(lines) == UNLABELED - 2
    assert set(lines) | set(listed) == expected and not set(lines) & set(listed)


def test_a_run_that_lost_an_image_without_listing_it_does_not_report_success(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug that drops an image between the loader and the result file (simulated here by a loader that
    forgets one) is caught before anything claims the run succeeded."""
    ds = digits(tmp_path)
    job = prelabeling_job(ds, lookup_model(tmp_path / "model"), tmp_path / "out")
    expected = unlabeled_sources(ds)
    dropped: list[str] = []
    real = pipeline.iter_batches

    def forgetful(*args: Any, **kwargs: Any) -> Iterator[Any]:
        for batch in real(*args, **kwargs):
            forget = next((i for i, s in enumerate(batch.sources) if s in expected), None) if not dropped else None
            if forget is not None:
                dropped.append(batch.sources[forget])
                keep = [i for i in range(len(batch.sources)) if i != forget]
                sources = [batch.sources[i] for i in keep]
                batch = SimpleNamespace(sources=sources, x=batch.x[keep], failures=batch.failures)
            yield batch

    monkeypatch.setattr(pipeline, "iter_batches", forgetful)
    out = results_prefix(job)
    with pytest.raises(PipelineError) as info:
        pipeline.run_job(job, Storage(), out)

    assert len(dropped) == 1
    assert info.value.reason == "ImagesUnaccounted"
    assert f"1 of {UNLABELED} unlabeled images" in str(info.value) and dropped[0] in str(info.value)
    assert not Path(out, "summary.json").exists() and not Path(out, "result.manifest").exists()


# ------------------------------------------------------------------------------------- shard merge


def write_shard(
    top: ScopedWriter, index: int, sources: list[str], unreadable: list[str], claimed: int | None = None
) -> None:
    """One finished shard: its result lines, and a summary.json that lists `unreadable` and counts the
    lines (or claims `claimed` of them)."""
    results = ResultWriter(top.scoped(shard_prefix(index)), annotated_by=PRE_LABELING_BY)
    for source in sources:
        results.add_classification(source, "a", 0.9, False, 0.1)
    results.close()
    summary: dict[str, Any] = {"unreadableImages": [{"source": s, "reason": "r"} for s in unreadable]}
    if claimed is not None:
        summary["total"] = claimed
    write_json(top.scoped(shard_prefix(index)), "summary.json", {**results.counts(), **summary})


def test_a_shard_merge_refuses_a_shard_whose_result_file_has_fewer_lines_than_it_claims(tmp_path: Path) -> None:
    st = Storage()
    top = ScopedWriter(st, str(tmp_path / "out"))
    write_shard(top, 0, ["u0.png", "u1.png"], [])
    write_shard(top, 1, ["u2.png"], [], claimed=2)
    with pytest.raises(PipelineError, match="shard 1") as info:
        merge_shards(st, top, 2)
    assert info.value.reason == "ImagesUnaccounted" and "1 of 2" in str(info.value)
    assert not (tmp_path / "out" / "summary.json").exists() and not (tmp_path / "out" / "result.manifest").exists()


def test_a_shard_merge_refuses_when_an_unlabeled_image_of_the_manifest_is_in_no_shard(tmp_path: Path) -> None:
    manifest = tmp_path / "data.manifest"
    lines: list[dict[str, Any]] = [
        {"source": "l0.png", "annotation": [{"type": "modelarts/image_classification", "name": "a"}]}
    ]
    lines += [{"source": f"u{i}.png"} for i in range(5)] + [{"source": "u4.png"}]  # a repeated source
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    st = Storage()
    top = ScopedWriter(st, str(tmp_path / "out"))
    u = [str(tmp_path / f"u{i}.png") for i in range(5)]
    write_shard(top, 0, [u[0], u[1]], [u[4]])
    write_shard(top, 1, [u[2]], [])
    with pytest.raises(PipelineError) as info:
        merge_shards(st, top, 2, manifest=str(manifest))
    assert info.value.reason == "ImagesUnaccounted"
    assert "1 of 5 unlabeled images" in str(info.value) and u[3] in str(info.value)
    assert not (tmp_path / "out" / "summary.json").exists()

    write_shard(top, 1, [u[2], u[3]], [])  # the shard ran again and labeled it
    merged = merge_shards(st, top, 2, manifest=str(manifest))
    assert merged is not None and merged["total"] == 4 and len(merged["unreadableImages"]) == 1


# ------------------------------------------------------------------------------------------- bits


def png_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), 128, dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def decode(data: bytes, source: str) -> Image.Image:
    import io

    return Image.open(io.BytesIO(data)).convert("RGB")
