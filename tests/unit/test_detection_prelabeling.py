"""PreLabeling with a detection model (issue 8), run through the worker's pipeline on local files: sharding
is deterministic (the merge of 3 shards, run in any order, is the 1-shard result: the same images, hard
flags and reasons, line for line, the boxes equal up to float rounding since the shards batch other
images together) and idempotent (a shard run again changes nothing), hard-example filtering never changes
the boxes the model predicted, and a model for the wrong task or one that does not load fails with its
reason.

Two models, neither trained: the exported detector (FCOS + crop classifier) with random weights, scripted
as ActiveLearning exports it, and an "oracle" that looks each image up by its mean colour and answers the
boxes the test chose for it (so that some images are accepted and some are hard, each with boxes)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from autolabel_worker.detection import calibrate as dcal
from autolabel_worker.detection.model import script_detector
from autolabel_worker.detection.run import BATCH
from autolabel_worker.detection_data import DetectionDataset, write_detection_dataset
from autolabel_worker.errors import PipelineError
from autolabel_worker.pipeline import run_job
from PIL import Image
from torch import nn

from autolabel.api import AutoLabelJob, results_prefix
from autolabel.manifest import read_voc
from autolabel.storage import Storage, StorageConfig

from .test_detection import LABELS, exported

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/unit/conftest.py

UNLABELED = BATCH + 1
"""The 1-shard run predicts a full batch and then one image alone; the shards batch them otherwise."""
SIDE = 64


@dataclass(frozen=True)
class Sample:
    ds: DetectionDataset
    model: str
    """URI of the untrained exported detector's folder."""


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    root = tmp_path_factory.mktemp("detection")
    ds = write_detection_dataset(root / "ds", seed=5, labeled_per_class=6, unlabeled=UNLABELED, size=SIDE)
    with torch.random.fork_rng():
        model = exported()
    folder = root / "model"
    folder.mkdir()
    script_detector(model).save(str(folder / "model.pt"))
    (folder / "labels.json").write_text(json.dumps({"task": "ObjectDetection", "labels": LABELS}))
    return Sample(ds, str(folder) + "/")


def detection_job(ds: DetectionDataset, model_uri: str, output: Path, target: float = 0.8) -> AutoLabelJob:
    return AutoLabelJob.model_validate(
        {
            "metadata": {"name": "boxes", "namespace": "test", "uid": "0f0f0f0f-0000-4000-8000-000000000000"},
            "spec": {
                "task": "ObjectDetection",
                "mode": "PreLabeling",
                "dataset": {"manifest": str(ds.manifest)},
                "preLabeling": {"model": {"uri": model_uri}},
                "activeLearning": {"targetPrecision": target},
                "output": str(output),
            },
        }
    )


Box = tuple[str, float, float, float, float, float | None]


@dataclass(frozen=True)
class Line:
    source: str
    hard: bool
    reasons: str
    boxes: tuple[Box, ...]


def result_lines(prefix: str) -> list[Line]:
    """result.manifest under `prefix`, each line with the boxes of the VOC file it points at, sorted by
    source (the VOC files' names differ between runs; their content is what is compared)."""
    lines = []
    for text in Path(prefix, "result.manifest").read_text().splitlines():
        doc = json.loads(text)
        (annotation,) = doc["annotation"]
        loc = annotation["annotation-loc"]
        voc = read_voc(Path(loc).read_bytes(), loc)
        boxes = tuple((b.name, b.xmin, b.ymin, b.xmax, b.ymax, b.confidence) for b in voc.boxes)
        lines.append(Line(doc["source"], bool(doc.get("hard")), str(doc.get("hard-reasons", "")), boxes))
    return sorted(lines, key=lambda line: line.source)


def unlabeled_sources(ds: DetectionDataset) -> list[str]:
    docs = [json.loads(x) for x in ds.manifest.read_text().splitlines()]
    return sorted(str(ds.folder / d["source"]) for d in docs if "annotation" not in d)


def load_image(source: str) -> torch.Tensor:
    """float 3 x H x W in 0..1, as the worker hands images to a detection model."""
    array = np.array(Image.open(source).convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255.0


def kept_boxes(model: torch.jit.ScriptModule, source: str) -> list[Box]:
    """The model's proposals on one image, called alone: candidates whose detector score (or, for a model
    without one, whose score) is at or above the keep threshold."""
    with torch.inference_mode():
        out = model([load_image(source)])[0]
    keep = out.get("detector_scores", out["scores"]) >= dcal.KEEP
    found: list[Box] = []
    for box, lab, score in zip(
        out["boxes"][keep].tolist(), out["labels"][keep].tolist(), out["scores"][keep].tolist(), strict=True
    ):
        found.append((LABELS[lab], box[0], box[1], box[2], box[3], score))
    return found


def assert_same_boxes(written: tuple[Box, ...], predicted: list[Box], tol: float) -> None:
    """The same boxes (as sets: the order in a VOC file is not a contract), coordinates and confidences
    within `tol` (VOC files hold 6 significant digits)."""
    assert len(written) == len(predicted)
    remaining = list(predicted)
    for box in written:
        match = next((p for p in remaining if p[0] == box[0] and close(box, p, tol)), None)
        assert match is not None, f"written box {box} is not among the model's {remaining}"
        remaining.remove(match)


def close(a: Box, b: Box, tol: float) -> bool:
    """Coordinates within `tol`, and confidences (6 significant digits in the VOC file) within 1e-5."""
    coords = all(abs(x - y) <= tol for x, y in zip(a[1:5], b[1:5], strict=True))
    return coords and a[5] is not None and b[5] is not None and abs(a[5] - b[5]) <= 1e-5


# ----------------------------------------------------------------------------------- sharding


@dataclass(frozen=True)
class Runs:
    one: str
    """results prefix of the 1-shard run"""
    three: str
    """results prefix of the 3-shard run (shards run in the order 2, 0, 1)"""
    one_lines: list[Line]
    three_lines: list[Line]
    three_manifest: str
    three_counts: dict[str, object]


COUNTS = ("total", "autoLabeled", "hardExamples", "labelCounts", "hardReasons", "shards")


def counts(prefix: str) -> dict[str, object]:
    summary = json.loads(Path(prefix, "summary.json").read_text())
    return {k: v for k, v in summary.items() if k in COUNTS}


@pytest.fixture(scope="module")
def runs(sample: Sample, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """The untrained exported detector over the sample, as one shard and as three (shared by the tests
    below: each job takes a few seconds). One torch thread, as `one_torch_thread` (function-scoped)."""
    storage = Storage(StorageConfig())
    root = tmp_path_factory.mktemp("runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = detection_job(sample.ds, sample.model, root / "one")
        run_job(one, storage, results_prefix(one))
        three = detection_job(sample.ds, sample.model, root / "three")
        out = results_prefix(three)
        for index in (2, 0, 1):
            run_job(three, storage, out, shard_index=index, shard_count=3)
    finally:
        torch.set_num_threads(threads)
    one_out = results_prefix(one)
    return Runs(
        one_out, out, result_lines(one_out), result_lines(out), Path(out, "result.manifest").read_text(), counts(out)
    )


def test_three_shards_in_any_order_merge_into_the_one_shard_result(sample: Sample, runs: Runs) -> None:
    merged, single = runs.three_lines, runs.one_lines
    assert [line.source for line in merged] == unlabeled_sources(sample.ds)  # every image exactly once
    assert [(x.source, x.hard, x.reasons, len(x.boxes)) for x in merged] == [
        (x.source, x.hard, x.reasons, len(x.boxes)) for x in single
    ]
    for a, b in zip(merged, single, strict=True):
        # the shards batch other images together than the single run: equal up to float rounding
        assert_same_boxes(a.boxes, list(b.boxes), tol=1e-3)
    assert sum(len(line.boxes) for line in merged) > 0  # not a comparison of empty files
    summary = json.loads(Path(runs.three, "summary.json").read_text())
    assert summary["total"] == UNLABELED and summary["shards"] == 3
    assert runs.three_counts == {**counts(runs.one), "shards": 3}


def test_a_shard_run_again_leaves_the_merged_result_unchanged(sample: Sample, runs: Runs) -> None:
    job = detection_job(sample.ds, sample.model, Path(runs.three).parent)
    assert results_prefix(job) == runs.three

    run_job(job, Storage(StorageConfig()), runs.three, shard_index=1, shard_count=3)  # a retried shard

    assert Path(runs.three, "result.manifest").read_text() == runs.three_manifest
    assert result_lines(runs.three) == runs.three_lines  # and the VOC files the lines point at
    assert counts(runs.three) == runs.three_counts


def test_every_line_carries_the_boxes_the_model_predicts_on_that_image(sample: Sample, runs: Runs) -> None:
    model = torch.jit.load(str(Path(sample.model, "model.pt")))
    for line in runs.one_lines:
        # the worker predicts a batch of images, the test one image: equal up to float rounding
        assert_same_boxes(line.boxes, kept_boxes(model, line.source), tol=1e-3)
    assert any(line.hard and line.boxes for line in runs.one_lines)  # hard images keep their boxes


# ------------------------------------------------------------------- hard and accepted lines


class Oracle(nn.Module):
    """Answers the boxes chosen for the known image nearest in mean colour (row k of `boxes`, `labels`,
    `scores`; a score of 0 pads a row). Under the worker's test-time views (the image downscaled, or
    padded with its mean colour at the top left) the mean colour barely moves, and the boxes follow the
    view, so the views agree with the plain prediction."""

    def __init__(self, keys: torch.Tensor, side: int, boxes: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor):
        super().__init__()
        self.keys = keys
        self.side = side
        self.boxes = boxes
        self.labels = labels
        self.scores = scores

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out: list[dict[str, torch.Tensor]] = []
        for image in images:
            k = int(((self.keys - image.mean(dim=(1, 2))) ** 2).sum(dim=1).argmin())
            h = image.shape[1]
            b = self.boxes[k]
            if h > self.side:
                b = b + float(h - self.side)
            elif h < self.side:
                b = b * (float(h) / float(self.side))
            keep = self.scores[k] > 0
            out.append({"boxes": b[keep], "labels": self.labels[k][keep], "scores": self.scores[k][keep]})
        return out


ACCEPTED, DOUBTFUL, NOTHING = "accepted", "doubtful", "nothing"


def oracle_model(ds: DetectionDataset, folder: Path) -> tuple[str, dict[str, str]]:
    """The oracle over every image of `ds`: the true boxes of a labeled image at 0.99; the true boxes of
    an unlabeled one at 0.999 (ACCEPTED), at a score just above the keep threshold (DOUBTFUL: kept, but
    the image's confidence is low) or just below it (NOTHING kept), in turn. Returns its folder URI and
    each unlabeled source's kind."""
    truth = json.loads(ds.ground_truth.read_text())
    unlabeled = set(unlabeled_sources(ds))
    sources = sorted(str(ds.folder / s) for s in truth)
    width = max(len(v) for v in truth.values())
    boxes = torch.zeros(len(sources), width, 4)
    labels = torch.zeros(len(sources), width, dtype=torch.int64)
    scores = torch.zeros(len(sources), width)
    kinds: dict[str, str] = {}
    doubtful = dcal.KEEP + (1 - dcal.KEEP) * 0.1
    for k, source in enumerate(sources):
        objects = truth[str(Path(source).relative_to(ds.folder))]
        if source in unlabeled:
            kinds[source] = (ACCEPTED, DOUBTFUL, NOTHING)[len(kinds) % 3]
            score = {ACCEPTED: 0.999, DOUBTFUL: doubtful, NOTHING: dcal.KEEP / 2}[kinds[source]]
        else:
            score = 0.99
        for n, (name, *coords) in enumerate(objects):
            boxes[k, n] = torch.tensor(coords)
            labels[k, n] = LABELS.index(name)
            scores[k, n] = score
    keys = torch.stack([load_image(s).mean(dim=(1, 2)) for s in sources])
    folder.mkdir(parents=True)
    torch.jit.script(Oracle(keys, SIDE, boxes, labels, scores)).save(str(folder / "model.pt"))
    (folder / "labels.json").write_text(json.dumps({"task": "ObjectDetection", "labels": LABELS}))
    return str(folder) + "/", kinds


def test_hard_example_filtering_never_changes_the_predicted_boxes(sample: Sample, tmp_path: Path) -> None:
    uri, kinds = oracle_model(sample.ds, tmp_path / "oracle")
    # 6 labeled images, all right: the 80% lower bound is 0.2 ** (1 / 6) = 0.76, enough for 0.7
    job = detection_job(sample.ds, uri, tmp_path / "out", target=0.7)

    summary = run_job(job, Storage(StorageConfig()), results_prefix(job))

    model = torch.jit.load(str(tmp_path / "oracle" / "model.pt"))
    lines = result_lines(results_prefix(job))
    assert {line.source for line in lines} == set(kinds)
    for line in lines:
        assert_same_boxes(line.boxes, kept_boxes(model, line.source), tol=1e-4)
        assert line.hard == (kinds[line.source] != ACCEPTED), line
    # accepted and hard images with boxes both exist: the filter decided, the boxes stayed
    assert any(not line.hard and line.boxes for line in lines)
    assert any(line.hard and line.boxes for line in lines)
    assert all(not line.boxes for line in lines if kinds[line.source] == NOTHING)
    assert summary["autoLabeled"] == sum(kind == ACCEPTED for kind in kinds.values())
    assert summary["estimatedPrecision"] == 1.0  # every labeled image is right


class ZeroSize(nn.Module):
    """On every image: one box of zero width (x1 == x2) and one ordinary box, both confident. A user's
    torchvision FCOS answers such boxes whenever its ReLU'd distances are 0 (ours uses softplus)."""

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out: list[dict[str, torch.Tensor]] = []
        for _ in images:
            out.append(
                {
                    "boxes": torch.tensor([[4.0, 4.0, 4.0, 20.0], [8.0, 8.0, 30.0, 30.0]]),
                    "labels": torch.tensor([0, 1]),
                    "scores": torch.tensor([0.9, 0.9]),
                }
            )
        return out


def test_every_written_voc_file_is_readable_even_when_the_model_answers_an_empty_box(
    sample: Sample, tmp_path: Path
) -> None:
    folder = tmp_path / "zero"
    folder.mkdir()
    torch.jit.script(ZeroSize()).save(str(folder / "model.pt"))
    (folder / "labels.json").write_text(json.dumps({"task": "ObjectDetection", "labels": LABELS}))
    job = detection_job(sample.ds, str(folder) + "/", tmp_path / "out")
    run_job(job, Storage(StorageConfig()), results_prefix(job))

    lines = result_lines(results_prefix(job))  # reads every VOC file

    assert all(len(line.boxes) == 1 for line in lines)  # the empty box is dropped, the other kept


# ------------------------------------------------------------------------ a model that cannot run


def test_a_classification_model_for_a_detection_job_fails_with_model_task_mismatch(
    sample: Sample, tmp_path: Path
) -> None:
    folder = tmp_path / "classifier"
    folder.mkdir()
    (folder / "model.pt").write_bytes(Path(sample.model, "model.pt").read_bytes())
    (folder / "labels.json").write_text(json.dumps({"task": "ImageClassification", "labels": LABELS}))
    job = detection_job(sample.ds, str(folder) + "/", tmp_path / "out")

    with pytest.raises(PipelineError) as caught:
        run_job(job, Storage(StorageConfig()), results_prefix(job))

    assert caught.value.reason == "ModelTaskMismatch"
    assert not Path(results_prefix(job), "result.manifest").exists()


def test_a_corrupt_model_file_fails_the_job_with_model_invalid_naming_it(sample: Sample, tmp_path: Path) -> None:
    folder = tmp_path / "corrupt"
    folder.mkdir()
    (folder / "model.pt").write_bytes(np.random.default_rng(0).integers(0, 256, 2048, dtype=np.uint8).tobytes())
    (folder / "labels.json").write_text(json.dumps({"task": "ObjectDetection", "labels": LABELS}))
    job = detection_job(sample.ds, str(folder) + "/", tmp_path / "out")

    with pytest.raises(PipelineError) as caught:
        run_job(job, Storage(StorageConfig()), results_prefix(job))

    assert caught.value.reason == "ModelInvalid"
    assert str(folder) in str(caught.value)
    assert not Path(results_prefix(job), "result.manifest").exists()
