"""The operator <-> worker contract (autolabel.contract): both sides, and the fake worker, read and merge
the workers' documents through it, so they cannot disagree. Jobs name s3:// URIs (the only ones the
operator reads), served from a temporary folder by ``fakes.LocalS3Storage``."""

from __future__ import annotations

import asyncio
import json
import runpy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from autolabel_operator.jobs import build_job
from autolabel_operator.results import read_progress, read_result
from autolabel_worker.outputs import ResultWriter, merge_shards
from fakes import LocalS3Storage

from autolabel import storage as storage_module
from autolabel.api import AutoLabelJob, results_prefix
from autolabel.contract import (
    EXIT_CODES,
    Env,
    ExitCode,
    ProgressDoc,
    format_time,
    merge_progress,
    merge_summaries,
    non_retryable_exit_codes,
    parse_progress,
    parse_time,
    run_prefix,
    shard_prefix,
    summary_to_result,
)
from autolabel.storage import ScopedWriter, Storage, StorageConfig

REPO = Path(__file__).resolve().parents[2]
MANIFEST = "s3://datasets/ds/data.manifest"


def prelabeling_job(shards: int, name: str = "pre") -> AutoLabelJob:
    return AutoLabelJob.model_validate(
        {
            "metadata": {"name": name, "namespace": "ns", "uid": "0123abcd-0000-0000-0000-000000000000"},
            "spec": {
                "task": "ImageClassification",
                "mode": "PreLabeling",
                "dataset": {"manifest": MANIFEST},
                "output": "s3://datasets/ds/results",
                "preLabeling": {"model": {"uri": "s3://models/m/"}},
                "resources": {"computeNodes": shards},
            },
        }
    )


def write_shard(storage: Storage, prefix: str, index: int, count: int, summary: dict[str, Any]) -> None:
    writer = ScopedWriter(storage, run_prefix(prefix, index, count))
    with ResultWriter(writer) as results:
        for i in range(summary["total"]):
            hard = i >= summary["autoLabeled"]
            results.add_classification(f"s{index}-{i}.png", "cat" if i % 2 else "dog", 0.9, hard, 0.1)
        results.close()
        results.write_summary({k: v for k, v in summary.items() if k not in ("total", "autoLabeled", "hardExamples")})


SHARD_SUMMARIES = [
    {"total": 4, "autoLabeled": 3, "hardExamples": 1, "estimatedPrecision": 0.98, "targetVerifiable": True,
     "durationSeconds": 2.0, "labels": ["cat", "dog"], "targetPrecision": 0.95, "hardReasons": {"1": 1}},
    {"total": 3, "autoLabeled": 1, "hardExamples": 2, "estimatedPrecision": 0.90, "targetVerifiable": False,
     "durationSeconds": 3.0, "labels": ["cat", "dog"], "targetPrecision": 0.95, "hardReasons": {"1": 1, "21": 1}},
]  # fmt: skip


def test_the_worker_and_the_operator_merge_shards_to_the_same_result(tmp_path: Path) -> None:
    store = LocalS3Storage(tmp_path)
    operator = store.for_config(StorageConfig(local_paths=False))  # as the operator's own
    job = prelabeling_job(shards=2)
    prefix = results_prefix(job)
    for index, summary in enumerate(SHARD_SUMMARIES):
        write_shard(store, prefix, index, 2, summary)
    # The operator, before any shard has merged: it merges the shards' summaries itself.
    from_shards = asyncio.run(read_result(operator, job)).result
    # The worker's merge (the last shard to finish), then the operator reads the top-level summary.
    merged = merge_shards(store, ScopedWriter(store, prefix), 2)
    assert merged is not None
    from_top = asyncio.run(read_result(operator, job)).result
    assert from_shards == from_top
    assert from_top.total == 7 and from_top.auto_labeled == 4 and from_top.hard_examples == 3
    assert from_top.target_verifiable is False  # one shard could not certify the target: neither can the job
    assert from_top.estimated_precision == pytest.approx((0.98 * 3 + 0.90 * 1) / 4)
    assert merged["labelCounts"] == {"cat": 3, "dog": 4} and merged["hardReasons"] == {"1": 2, "21": 1}
    assert merged["labels"] == ["cat", "dog"] and merged["shards"] == 2 and "shard" not in merged


def test_the_fake_worker_writes_and_merges_shards_through_the_same_contract(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [{"source": f"l{i}.png", "annotation": [{"type": "modelarts/image_classification", "name": "a"}]}
             for i in range(3)] + [{"source": f"u{i}.png"} for i in range(7)]  # fmt: skip
    store = LocalS3Storage(tmp_path)
    store.write_text(MANIFEST, "\n".join(json.dumps(x) for x in lines) + "\n")
    # The fake worker's Storage(StorageConfig.from_env()) is served from the same folder.
    monkeypatch.setattr(storage_module, "Storage", lambda config=None: store.for_config(config or StorageConfig()))
    job = prelabeling_job(shards=3)
    prefix = results_prefix(job)
    doc = {"metadata": job.metadata.model_dump(), "spec": job.spec.to_wire()}
    doc["metadata"]["annotations"] = {"fakeworker.autolabel.dev/seconds": "0"}
    monkeypatch.setenv(Env.JOB, json.dumps(doc))
    monkeypatch.setenv(Env.OUTPUT, prefix)
    monkeypatch.setenv(Env.SHARDS, "3")
    for index in range(3):
        monkeypatch.setenv(Env.SHARD_INDEX, str(index))
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_path(str(REPO / "tests" / "fakeworker.py"), run_name="__main__")
        assert exit_info.value.code == ExitCode.OK
    shard_docs = [json.loads(store.path(run_prefix(prefix, i, 3) + "summary.json").read_text()) for i in range(3)]
    top = json.loads(store.path(prefix + "summary.json").read_text())
    assert top == json.loads(json.dumps(merge_summaries(shard_docs)))
    sources = [json.loads(x)["source"] for x in store.path(prefix + "result.manifest").read_text().splitlines()]
    assert top["total"] == 7 and sorted(Path(s).name for s in sources) == [f"u{i}.png" for i in range(7)]
    progress = asyncio.run(read_progress(store.for_config(StorageConfig(local_paths=False)), job))
    assert progress is not None and (progress.stage, progress.processed, progress.percent) == ("done", 7, 100)


def test_progress_documents_parse_leniently_and_merge_to_the_slowest_shard() -> None:
    doc = parse_progress({"stage": "train", "processed": 1, "total": 4, "updatedAt": "t"})
    assert doc is not None and doc.percent == 25
    assert parse_progress("garbage") is None
    assert parse_progress({"processed": -1}) == ProgressDoc()  # a bad count is dropped, not fatal
    shards = [
        parse_progress({"stage": "done", "processed": 10, "total": 10}),
        parse_progress({"stage": "inference", "processed": 5, "total": 10}),
        None,
    ]
    merged = merge_progress(shards)
    assert merged is not None
    assert merged.to_status().to_wire() == {"stage": "inference", "processed": 15, "total": 20, "percent": 75}
    assert merge_progress([None, None]) is None
    failed = merge_progress(
        [parse_progress({"stage": "failed", "error": "disk", "reason": "DatasetInvalid"}), shards[0]]
    )
    assert failed is not None and failed.stage == "failed"
    assert (failed.error, failed.reason) == ("shard 0: disk", "DatasetInvalid")
    # A shard that has not written anything is not "done" even when every other shard is.
    assert merge_progress([shards[0], None]).stage == "inference"  # type: ignore[union-attr]


def test_a_long_error_is_cut_to_fit_a_condition_message() -> None:
    written = json.loads(ProgressDoc(stage="failed", error="x" * 10_000).to_json())
    assert len(written["error"]) == 4000 and written["error"].endswith("…")


def test_status_result_takes_only_well_typed_fields() -> None:
    summary = {"total": 10, "autoLabeled": 8, "hardExamples": 2, "estimatedPrecision": 0.96, "x": 1,
               "targetVerifiable": "yes"}  # fmt: skip
    assert summary_to_result(summary, "s3://b/out/").to_wire() == {
        "uri": "s3://b/out/",
        "total": 10,
        "autoLabeled": 8,
        "hardExamples": 2,
        "estimatedPrecision": 0.96,
    }
    assert summary_to_result(None, "s3://b/out/").to_wire() == {"uri": "s3://b/out/"}


def test_status_result_carries_the_workers_first_notes_such_as_a_precise_fallback() -> None:
    fallback = "Precise fell back to the Fast models: held-out accuracy Precise 26/30 < Fast 29/30"
    summary = {"total": 3, "notes": [fallback, 7, "", *(f"note {i}" for i in range(10)), "x" * 9000]}
    notes = summary_to_result(summary, "s3://b/out/").notes
    assert notes == [fallback, "note 0", "note 1", "note 2", "note 3"]
    assert summary_to_result({"notes": ["y" * 9000]}, "u").notes == ["y" * 500]
    assert summary_to_result({"notes": "not a list"}, "u").notes is None


def test_a_shard_that_auto_labeled_nothing_does_not_hide_the_estimate() -> None:
    merged = merge_summaries(
        [
            {"total": 2, "autoLabeled": 2, "estimatedPrecision": 0.97, "targetVerifiable": True},
            {"total": 1, "autoLabeled": 0, "estimatedPrecision": None, "targetVerifiable": True},
        ]
    )
    assert merged["estimatedPrecision"] == 0.97 and merged["targetVerifiable"] is True


def test_the_jobs_failure_policy_follows_the_exit_code_table() -> None:
    from autolabel_operator.config import Flavor, Settings

    assert non_retryable_exit_codes() == [2, 3, 5]
    assert {code for code, info in EXIT_CODES.items() if info.retryable} == {ExitCode.INTERNAL, 4}
    job = prelabeling_job(shards=2)
    meta = {"name": "pre", "namespace": "ns", "uid": job.metadata.uid}
    body = {"apiVersion": "autolabel.dev/v1alpha1", "kind": "AutoLabelJob", "metadata": meta,
            "spec": job.spec.to_wire()}  # fmt: skip
    manifest = build_job(body, job, Settings(), Flavor())
    rule = manifest["spec"]["podFailurePolicy"]["rules"][1]
    assert rule["action"] == "FailIndex" and rule["onExitCodes"]["values"] == non_retryable_exit_codes()
    env = {e["name"]: e.get("value") for e in manifest["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env[Env.SHARDS] == "2" and env[Env.OUTPUT] == results_prefix(job)
    assert all(type(name) is str for name in env)  # plain strings, so YAML dumpers take the Job as is


def test_shard_folders_and_timestamps() -> None:
    assert run_prefix("s3://b/out", 0, 1) == "s3://b/out/"
    assert run_prefix("s3://b/out/", 2, 3) == "s3://b/out/" + shard_prefix(2) == "s3://b/out/shards/2/"
    moment = datetime(2026, 11, 29, 17, 34, 5, 123456, tzinfo=UTC)
    assert format_time(moment) == "2026-11-29T17:34:05Z"
    assert format_time(moment, micro=True) == "2026-11-29T17:34:05.123456Z"
    assert parse_time(format_time(moment, micro=True)) == moment and parse_time("") is None


def test_long_job_names_give_one_run_name_for_results_and_the_worker_job() -> None:
    job = prelabeling_job(shards=1, name="n" * 80)
    assert len(job.run_name) == 63 and job.run_name.endswith("-0123abcd")
    assert results_prefix(job).endswith(f"/{job.run_name}/")


def test_merged_summary_recomputes_the_accepted_share_and_takes_the_slowest_shards_inference() -> None:
    shards = [
        {"total": 10, "autoLabeled": 8, "hardExamples": 2, "acceptedShare": 0.8, "inferenceSeconds": 2.0,
         "inferenceImagesPerSecond": 5.0, "durationSeconds": 3.0},
        {"total": 30, "autoLabeled": 6, "hardExamples": 24, "acceptedShare": 0.2, "inferenceSeconds": 5.0,
         "inferenceImagesPerSecond": 6.0, "durationSeconds": 6.0},
    ]  # fmt: skip
    merged = merge_summaries(shards)
    assert merged["acceptedShare"] == 0.35
    assert merged["inferenceSeconds"] == 5.0 and merged["inferenceImagesPerSecond"] == 8.0
