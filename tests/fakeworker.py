"""A small stand-in for the worker container, for operator tests: the same contract, no training.

Run as the pod's command (``python tests/fakeworker.py``). Everything it shares with the real worker comes
from the same code: the environment, stages, file names and shard folders from :mod:`autolabel.contract`,
``result.manifest``/``summary.json`` from the worker's own :class:`~autolabel_worker.outputs.ResultWriter`,
the shard merge from the worker's :func:`~autolabel_worker.outputs.merge_shards` (neither imports torch).
It labels every unlabeled image with the most frequent class, confidence 0.5, every line hard.

Annotations on the AutoLabelJob steer it (so a test can make one job slow or failing):
``fakeworker.autolabel.dev/seconds`` total run time (default 1.0), ``fakeworker.autolabel.dev/fail``
("true": write stage ``failed`` with an error and reason ``FakeWorkerFailed``, exit 3 as the real
worker does for an unusable dataset). ``summary.json`` also records ``startedAt``
and ``finishedAt`` (epoch seconds, high resolution) so tests can check that runs never overlap.
"""

from __future__ import annotations

import json
import os
import sys
import time
import zlib
from collections import Counter
from typing import Any

from autolabel_worker.outputs import ResultWriter, merge_shards

from autolabel.contract import PROGRESS_FILE, Env, ExitCode, ProgressDoc, Stage, format_time, run_prefix
from autolabel.manifest import read_manifest
from autolabel.storage import ScopedWriter, Storage, StorageConfig, StorageUnreachable

ANNOTATION = "fakeworker.autolabel.dev/"


def main() -> int:
    started = time.time()
    job: dict[str, Any] = json.loads(os.environ[Env.JOB])
    output = os.environ[Env.OUTPUT]
    shards = int(os.environ.get(Env.SHARDS, "1"))
    index = int(os.environ.get(Env.SHARD_INDEX, "0"))
    annotations = job["metadata"].get("annotations") or {}
    seconds = float(annotations.get(ANNOTATION + "seconds", "1.0"))
    fail = annotations.get(ANNOTATION + "fail") == "true"
    storage = Storage(StorageConfig.from_env())
    writer = ScopedWriter(storage, run_prefix(output, index, shards))

    def progress(stage: Stage, processed: int, total: int, **extra: Any) -> None:
        percent = int(100 * processed / total) if total else 0
        doc = ProgressDoc(
            stage=stage, processed=processed, total=total, percent=percent, updated_at=format_time(), **extra
        )
        writer.write_bytes(PROGRESS_FILE, doc.to_json())

    progress(Stage.PREFLIGHT, 0, 0)
    entries = list(read_manifest(storage, job["spec"]["dataset"]["manifest"]))
    counts = Counter(label for e in entries if e.is_labeled for label in e.labels)
    top = counts.most_common(1)[0][0] if counts else "unknown"
    # The real worker's sharding rule: a source hashes to one shard.
    mine = [e for e in entries if not e.is_labeled and zlib.crc32(e.source.encode()) % shards == index]
    steps = 5
    for step in range(steps):
        if fail and step == 2:
            error = "fake worker told to fail (annotation fakeworker.autolabel.dev/fail)"
            progress(Stage.FAILED, step, steps, error=error, reason="FakeWorkerFailed")
            print("fake worker: failing as told", file=sys.stderr)
            return ExitCode.DATA
        progress(Stage.INFERENCE, int(len(mine) * step / steps), len(mine))
        time.sleep(seconds / steps)
    progress(Stage.WRITE, len(mine), len(mine))
    with ResultWriter(writer, task=job["spec"]["task"]) as results:
        for entry in mine:
            results.add_classification(entry.source, top, 0.5, hard=True, hard_coefficient=0.5, hard_reasons=[1])
        results.close()
        results.write_summary(
            {
                "targetPrecision": 0.95,
                "estimatedPrecision": None,
                "targetVerifiable": False,
                "labels": sorted(counts),
                "durationSeconds": round(time.time() - started, 3),
                "algorithm": "Fake",
                "mode": job["spec"]["mode"],
                "task": job["spec"]["task"],
                "unreadableImages": [],
                "convertedImages": 0,
                "duplicates": [],
                "shard": index,
                "shards": shards,
                "startedAt": started,
                "finishedAt": time.time(),
            }
        )
    progress(Stage.DONE, len(mine), len(mine))
    if shards > 1:
        merge_shards(storage, ScopedWriter(storage, output), shards)
    return ExitCode.OK


if __name__ == "__main__":
    try:
        sys.exit(main())
    except StorageUnreachable as exc:  # as the real worker: retryable, exit 4
        print(f"fake worker: {exc}", file=sys.stderr)
        sys.exit(ExitCode.STORAGE_UNREACHABLE)
