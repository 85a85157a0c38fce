"""A small stand-in for the worker container, for operator tests: same contract, no training.

Run as the pod's command (``python tests/fakeworker.py``). It reads the job from ``AUTOLABEL_JOB``, the
manifest from object storage, and writes under ``AUTOLABEL_OUTPUT`` exactly the objects the real worker
writes: ``progress.json`` (stages preflight → inference → write → done, updated as it goes),
``result.manifest`` (one line per unlabeled image, labelled with the most frequent class, confidence 0.5,
every line hard) and ``summary.json``; sharded (``AUTOLABEL_SHARDS`` > 1, ``JOB_COMPLETION_INDEX``) it
writes ``shards/<i>/…`` and whichever shard finds all shard summaries present merges the top level.

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
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from autolabel.manifest import read_manifest
from autolabel.storage import Storage, StorageConfig

ANNOTATION = "fakeworker.autolabel.dev/"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def main() -> int:
    started = time.time()
    job: dict[str, Any] = json.loads(os.environ["AUTOLABEL_JOB"])
    output = os.environ["AUTOLABEL_OUTPUT"]
    shards = int(os.environ.get("AUTOLABEL_SHARDS", "1"))
    index = int(os.environ.get("JOB_COMPLETION_INDEX", "0"))
    annotations = job["metadata"].get("annotations") or {}
    seconds = float(annotations.get(ANNOTATION + "seconds", "1.0"))
    fail = annotations.get(ANNOTATION + "fail") == "true"
    storage = Storage(StorageConfig.from_env())
    base = output if shards == 1 else f"{output}shards/{index}/"

    def progress(stage: str, processed: int, total: int, **extra: Any) -> None:
        percent = int(100 * processed / total) if total else 0
        doc = {"stage": stage, "processed": processed, "total": total, "percent": percent, "updatedAt": _now()}
        storage.write_bytes(f"{base}progress.json", json.dumps({**doc, **extra}).encode())

    progress("preflight", 0, 0)
    entries = list(read_manifest(storage, job["spec"]["dataset"]["manifest"]))
    counts = Counter(label for e in entries if e.is_labeled for label in e.labels)
    top = counts.most_common(1)[0][0] if counts else "unknown"
    mine = [e for i, e in enumerate(e for e in entries if not e.is_labeled) if i % shards == index]
    steps = 5
    for step in range(steps):
        if fail and step == 2:
            error = "fake worker told to fail (annotation fakeworker.autolabel.dev/fail)"
            progress("failed", step, steps, error=error, reason="FakeWorkerFailed")
            print("fake worker: failing as told", file=sys.stderr)
            return 3
        progress("inference", int(len(mine) * step / steps), len(mine))
        time.sleep(seconds / steps)
    progress("write", len(mine), len(mine))
    lines = [
        json.dumps(
            {
                "source": e.source,
                "annotation": [
                    {
                        "type": "modelarts/image_classification",
                        "name": top,
                        "annotated-by": "autolabel/active-learning",
                        "confidence": 0.5,
                    }
                ],
                "hard": True,
                "hard-coefficient": 0.5,
                "hard-reasons": "1",
            }
        )
        for e in mine
    ]
    storage.write_bytes(f"{base}result.manifest", ("\n".join(lines) + "\n").encode() if lines else b"")
    summary = {
        "total": len(mine),
        "autoLabeled": 0,
        "hardExamples": len(mine),
        "targetPrecision": 0.95,
        "estimatedPrecision": 0.0,
        "targetVerifiable": False,
        "labels": sorted(counts),
        "durationSeconds": round(time.time() - started, 3),
        "imagesPerSecond": 0.0,
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
    storage.write_bytes(f"{base}summary.json", json.dumps(summary).encode())
    progress("done", len(mine), len(mine))
    if shards > 1:
        merge(storage, output, shards)
    return 0


def merge(storage: Storage, output: str, shards: int) -> None:
    parts = []
    for i in range(shards):
        uri = f"{output}shards/{i}/summary.json"
        if not storage.exists(uri):
            return
        parts.append(json.loads(storage.read_bytes(uri)))
    merged = dict(parts[0])
    for key in ("total", "autoLabeled", "hardExamples"):
        merged[key] = sum(p[key] for p in parts)
    merged.pop("shard", None)
    merged["startedAt"] = min(p["startedAt"] for p in parts)
    merged["finishedAt"] = max(p["finishedAt"] for p in parts)
    lines = b"".join(storage.read_bytes(f"{output}shards/{i}/result.manifest") for i in range(shards))
    storage.write_bytes(f"{output}result.manifest", lines)
    storage.write_bytes(f"{output}summary.json", json.dumps(merged).encode())
    total = merged["total"]
    storage.write_bytes(
        f"{output}progress.json",
        json.dumps({"stage": "done", "processed": total, "total": total, "percent": 100, "updatedAt": _now()}).encode(),
    )


if __name__ == "__main__":
    sys.exit(main())
