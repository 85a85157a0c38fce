"""Detection Precise (issue 8), run through the worker's pipeline on local files: the self-trained
detector's boxes are proposed, but an image is accepted only where they are the Fast model's boxes and
that model's calibrated confidence passes; where they differ the image is hard with reason 2.

Fast and Precise run with the same seed and the same (short) training, so Precise's teacher is Fast's
model: Precise can accept no image Fast did not. The pseudo-label bar is lowered to 0 so that the student
is trained however unsure the short-trained teacher is, and the target to 0.05 so that images are
accepted at all (the wiring, not the quality, is under test; benchmarks/ measures the quality)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from autolabel_worker.detection import run as detection_run
from autolabel_worker.detection_data import write_detection_dataset
from autolabel_worker.pipeline import run_job

from autolabel.api import AutoLabelJob, results_prefix
from autolabel.manifest import read_voc
from autolabel.storage import Storage

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/unit/conftest.py

STEPS = 30
UID = "11111111-0000-4000-8000-000000000000"


def run(manifest: Path, algorithm: str, output: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    job = AutoLabelJob.model_validate(
        {
            "metadata": {"name": f"boxes-{algorithm.lower()}", "namespace": "test", "uid": UID},
            "spec": {
                "task": "ObjectDetection",
                "mode": "ActiveLearning",
                "dataset": {"manifest": str(manifest)},
                "activeLearning": {"algorithm": algorithm, "seed": 1, "targetPrecision": 0.05},
                "output": str(output),
            },
        }
    )
    out = results_prefix(job)
    summary = run_job(job, Storage(), out, train_steps=STEPS)
    lines = [json.loads(line) for line in Path(out, "result.manifest").read_text().splitlines()]
    return summary, lines


def boxes_of(line: dict[str, Any]) -> list[tuple[str, float, float, float, float]]:
    loc = line["annotation"][0]["annotation-loc"]
    return sorted((b.name, b.xmin, b.ymin, b.xmax, b.ymax) for b in read_voc(Path(loc).read_bytes(), loc).boxes)


def test_precise_accepts_only_images_where_its_student_agrees_with_the_calibrated_fast_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = write_detection_dataset(tmp_path / "ds", seed=4, labeled_per_class=5, unlabeled=24, size=64)
    fast, fast_lines = run(ds.manifest, "Fast", tmp_path / "fast")
    monkeypatch.setattr(detection_run, "PSEUDO_MIN_CONFIDENCE", 0.0)
    precise, precise_lines = run(ds.manifest, "Precise", tmp_path / "precise")

    assert precise["training"]["pseudoLabeledImages"] > 0, "the student was not trained"
    assert precise["calibration"]["imageThreshold"] == fast["calibration"]["imageThreshold"]
    (note,) = [n for n in precise["notes"] if "self-trained detector" in n]
    disagreeing = [line for line in precise_lines if "2" in line["hard-reasons"].split("-")]
    assert f"on {len(disagreeing)} of {len(precise_lines)} images" in note
    assert all(line["hard"] for line in disagreeing)

    fast_accepted = {line["source"]: boxes_of(line) for line in fast_lines if not line["hard"]}
    precise_accepted = [line for line in precise_lines if not line["hard"]]
    assert {line["source"] for line in precise_accepted} <= set(fast_accepted)
    assert precise_accepted, "nothing accepted: the subset would hold trivially (lower targetPrecision)"
    for line in precise_accepted:  # the same objects (IoU >= 0.5), so the same labels
        assert [b[0] for b in boxes_of(line)] == [b[0] for b in fast_accepted[line["source"]]]
    assert len(precise_lines) == len(fast_lines) == 24
