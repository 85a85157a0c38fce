"""cli/autolabel_cli/review/labelstudio.py without a server: an in-memory stand-in for Label Studio's REST API
(the real server: tests/integration/test_label_studio.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from autolabel_cli.review.confirm import BoxCorrection
from autolabel_cli.review.errors import ReviewError
from autolabel_cli.review.labelstudio import LabelStudio, label_config, pull, push, reviewed_boxes, same_boxes
from review_fixtures import BOX_PROPOSALS, DET_RUN, make_dataset, make_detection_dataset

from autolabel.manifest import VocBox, parse_voc, read_manifest
from autolabel.storage import Storage


class FakeLabelStudio(LabelStudio):
    """Projects and tasks in memory; ``annotate`` plays the reviewer."""

    def __init__(self) -> None:
        super().__init__("http://ls.test", "token")
        self.projects: list[dict[str, Any]] = []
        self.tasks: dict[int, list[dict[str, Any]]] = {}

    def call(self, method: str, path: str, body: Any = None, **query: Any) -> Any:
        parts = path.strip("/").split("/")
        if (method, path) == ("GET", "/api/projects"):
            return {"results": [p for p in self.projects if p["title"] == query.get("title")], "next": None}
        if (method, path) == ("POST", "/api/projects"):
            project = {"id": len(self.projects) + 1, **body}
            self.projects.append(project)
            self.tasks[project["id"]] = []
            return project
        if method == "GET" and parts[-1] == "export":
            return copy.deepcopy(self.tasks[int(parts[2])])
        if method == "POST" and parts[-1] == "import":
            tasks = self.tasks[int(parts[2])]
            for task in body:
                tasks.append({"id": len(tasks) + 1, "data": task["data"], "predictions": task["predictions"],
                              "annotations": []})  # fmt: skip
            return {"task_count": len(body)}
        raise AssertionError(f"unexpected call {method} {path}")

    def annotate(self, source_stem: str, result: list[dict[str, Any]], cancelled: bool = False) -> None:
        for task in self.tasks[1]:
            if Path(task["data"]["source"]).stem == source_stem:
                n = len(task["annotations"]) + 1
                task["annotations"].append({"id": n, "result": result, "was_cancelled": cancelled,
                                            "updated_at": f"2026-11-29T20:00:0{n}Z"})  # fmt: skip
                return
        raise AssertionError(source_stem)


def prediction(ls: FakeLabelStudio, stem: str) -> list[dict[str, Any]]:
    [task] = [t for t in ls.tasks[1] if Path(t["data"]["source"]).stem == stem]
    return copy.deepcopy(task["predictions"][0]["result"])


def test_label_configs() -> None:
    assert '<Choices name="label" toName="image"' in label_config(["a", "b"])
    config = label_config(["cat", 'd"og'], detection=True)
    assert config == (
        '<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
        '<Label value="cat"/><Label value=\'d"og\'/></RectangleLabels></View>'
    )


def test_detection_push_then_pull(tmp_path: Path) -> None:
    storage = Storage()
    manifest, results = make_detection_dataset(tmp_path)
    ls = FakeLabelStudio()
    report = push(storage, ls, manifest, results, title="autolabel: ns/det", run=DET_RUN)
    assert (report.created, report.imported, report.hard, report.already) == (True, 5, 2, 0)
    assert (
        "<RectangleLabels" in ls.projects[0]["label_config"]
        and '<Label value="dog"/>' in ls.projects[0]["label_config"]
    )
    tasks = ls.tasks[1]
    assert [Path(t["data"]["source"]).stem for t in tasks] == ["d3", "d5", "d1", "d2", "d4"]  # hard first
    d1 = prediction(ls, "d1")
    assert [(r["type"], r["value"]["rectanglelabels"], r["score"]) for r in d1] == [
        ("rectanglelabels", ["cat"], 0.95), ("rectanglelabels", ["dog"], 0.91)]  # fmt: skip
    assert d1[0]["value"]["x"] == pytest.approx(100 * 2 / 40) and d1[0]["original_width"] == 40
    again = push(storage, ls, manifest, results, title="autolabel: ns/det", run=DET_RUN)
    assert (again.created, again.imported, again.already) == (False, 0, 5)

    # The reviewer: accepts d1 as predicted, moves d2's box, relabels d3's second box, skips d4; d5 untouched.
    ls.annotate("d1", prediction(ls, "d1"))
    moved = prediction(ls, "d2")
    moved[0]["value"].update(x=10.0, y=20.0)  # of 50x40: (5, 8) .. (25, 28)
    ls.annotate("d2", moved)
    relabeled = prediction(ls, "d3")
    relabeled[1]["value"]["rectanglelabels"] = ["dog"]
    ls.annotate("d3", relabeled)
    ls.annotate("d4", [], cancelled=True)
    pulled = pull(storage, ls, manifest, results, title="autolabel: ns/det", job_name="det")
    assert (pulled.reviewed, pulled.accepted, pulled.changed) == (3, 1, 2)
    assert (pulled.confirm.corrected, pulled.confirm.left) == (3, 2)
    boxes = {}
    for e in read_manifest(storage, pulled.confirm.uri):
        for ann in e.annotations:
            assert ann.annotation_loc is not None
            boxes[Path(e.source).stem] = [tuple(b)[:5] for b in parse_voc(Path(ann.annotation_loc).read_bytes())]
    assert sorted(boxes) == ["d1", "d2", "d3", "l1", "l2"]
    assert boxes["d1"] == [tuple(b[:5]) for b in BOX_PROPOSALS["d1"][0]]
    assert boxes["d2"] == [("dog", 5.0, 8.0, 25.0, 28.0)]
    assert boxes["d3"] == [("cat", 0.0, 0.0, 64.0, 48.0), ("dog", 5.0, 5.0, 15.0, 15.0)]
    lines = [json.loads(x) for x in Path(pulled.confirm.uri).read_text().splitlines()]
    assert all(x["annotation"][0]["annotated-by"] == "human" for x in lines[2:5])
    unchanged = pull(storage, ls, manifest, results, title="autolabel: ns/det", job_name="det")
    assert (unchanged.confirm.uri, unchanged.confirm.written) == (pulled.confirm.uri, False)


def test_reviewed_boxes_convert_clamp_and_refuse_degenerate() -> None:
    def task(*items: dict[str, Any]) -> dict[str, Any]:
        return {"id": 7, "data": {"source": "s3://b/a.png"}, "annotations": [{"id": 3, "result": list(items)}]}

    def rect(x: float, y: float, w: float, h: float, **extra: Any) -> dict[str, Any]:
        value = {"x": x, "y": y, "width": w, "height": h, "rectanglelabels": ["cat"], **extra}
        return {"from_name": "label", "to_name": "image", "type": "rectanglelabels", "value": value,
                "original_width": 200, "original_height": 100}  # fmt: skip

    got = reviewed_boxes([task(rect(10, 10, 95, 20))], {})
    assert got["s3://b/a.png"] == BoxCorrection((VocBox("cat", 20, 10, 200, 30),), "Label Studio task 7 annotation 3")
    rotated = reviewed_boxes([task(rect(50, 50, 10, 10, rotation=90))], {})["s3://b/a.png"].boxes[0]
    assert tuple(rotated)[:5] == pytest.approx(("cat", 80, 50, 100, 60))
    with pytest.raises(ReviewError, match=r"Label Studio task 7 annotation 3 rectangle 1 \(cat\): degenerate box"):
        reviewed_boxes([task(rect(10, 10, 0, 20))], {})
    no_size = rect(10, 10, 10, 10)
    del no_size["original_width"], no_size["original_height"]
    assert reviewed_boxes([task(no_size)], {"s3://b/a.png": (50, 50, 3)})["s3://b/a.png"].boxes[0][1:5] == (
        5,
        5,
        10,
        10,
    )
    with pytest.raises(ReviewError, match="rectangle 1: not a rectangle"):
        reviewed_boxes([task(no_size)], {})
    assert same_boxes((VocBox("a", 1, 1, 5, 5),), (VocBox("a", 1.3, 1, 5, 5, 0.9),))
    assert not same_boxes((VocBox("a", 1, 1, 5, 5),), (VocBox("b", 1, 1, 5, 5),))


def test_classification_push_then_pull(tmp_path: Path) -> None:
    storage = Storage()
    manifest, results = make_dataset(tmp_path)
    ls = FakeLabelStudio()
    push(storage, ls, manifest, results, title="t", run="job-abc123")
    assert "<Choices" in ls.projects[0]["label_config"]
    ls.annotate("u1", prediction(ls, "u1"))
    changed = prediction(ls, "u2")
    changed[0]["value"]["choices"] = ["cat"]
    ls.annotate("u2", changed)
    pulled = pull(storage, ls, manifest, results, title="t", job_name="j")
    assert (pulled.reviewed, pulled.accepted, pulled.changed, pulled.confirm.left) == (2, 1, 1, 3)
