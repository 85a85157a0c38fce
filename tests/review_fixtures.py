"""A small dataset and a run's results on local folders, for the review tests (confirm, export, import)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

CLS = "modelarts/image_classification"
BY = "autolabel/active-learning"

# image -> (label, confidence, hard)
PROPOSALS: dict[str, tuple[str, float, bool]] = {
    "u1": ("cat", 0.97, False),
    "u2": ("dog", 0.91, False),
    "u3": ("dog", 0.62, False),
    "u4": ("cat", 0.55, True),
    "u5": ("cat", 0.99, False),
}


def write_image(path: Path, size: tuple[int, int] = (12, 8), color: tuple[int, int, int] = (200, 10, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def make_dataset(root: Path) -> tuple[str, str]:
    """``(manifest path, result.manifest path)``: 2 labeled images (cat, dog), 5 unlabeled with proposals;
    sources relative in the manifest, absolute in the results (as the worker writes them)."""
    lines: list[dict[str, Any]] = []
    for name, label in (("l1", "cat"), ("l2", "dog")):
        write_image(root / "images" / f"{name}.png")
        lines.append({"source": f"images/{name}.png", "annotation": [{"type": CLS, "name": label}], "usage": "TRAIN"})
    for i, name in enumerate(PROPOSALS):
        write_image(root / "images" / f"{name}.png", size=(10 + i, 6 + i))
        lines.append({"source": f"images/{name}.png"})
    manifest = root / "data.manifest"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    results = root / "out" / "job-abc123" / "result.manifest"
    results.parent.mkdir(parents=True)
    result_lines = []
    for name, (label, conf, hard) in PROPOSALS.items():
        ann = {"type": CLS, "name": label, "annotated-by": BY, "confidence": conf}
        line = {"source": str(root / "images" / f"{name}.png"), "annotation": [ann], "hard": hard,
                "hard-coefficient": 1 - conf, "hard-reasons": "0" if hard else ""}  # fmt: skip
        result_lines.append(json.dumps(line))
    results.write_text("\n".join(result_lines) + "\n")
    return str(manifest), str(results)


# ------------------------------------------------------------------------------------------ detection

DET = "modelarts/object_detection"
DET_RUN = "det-abc123"
DET_SIZES: dict[str, tuple[int, int]] = {"d1": (40, 30), "d2": (50, 40), "d3": (64, 48), "d4": (30, 30), "d5": (20, 20)}

# image -> (boxes [(label, xmin, ymin, xmax, ymax, confidence)], hard)
BOX_PROPOSALS: dict[str, tuple[list[tuple[str, float, float, float, float, float]], bool]] = {
    "d1": ([("cat", 2, 3, 20, 25, 0.95), ("dog", 22, 5, 39, 29, 0.91)], False),
    "d2": ([("dog", 10, 10, 30, 30, 0.88)], False),
    "d3": ([("cat", 0, 0, 64, 48, 0.42), ("cat", 5, 5, 15, 15, 0.97)], True),
    "d4": ([("dog", 1, 1, 29, 29, 0.99)], False),
    "d5": ([], True),
}


def write_detection_results(storage: Any, images: dict[str, str], out_prefix: str) -> str:
    """A detection run's results under ``out_prefix`` (``result.manifest``, ``annotations/``, ``summary.json``),
    written by the worker's own ResultWriter for BOX_PROPOSALS; ``images`` maps the names to their URIs."""
    from autolabel_worker.outputs import ResultWriter

    from autolabel.api import Task
    from autolabel.manifest import VocBox
    from autolabel.storage import ScopedWriter

    writer = ScopedWriter(storage, out_prefix)
    with ResultWriter(writer, annotated_by=BY, task=Task.OBJECT_DETECTION) as results:
        for name, (boxes, hard) in BOX_PROPOSALS.items():
            width, height = DET_SIZES[name]
            lowest = min((b[5] for b in boxes), default=0.0)
            results.add_detection(images[name], [VocBox(*b) for b in boxes], (width, height, 3), hard,
                                  round(1 - lowest, 6), [1] if hard else [])  # fmt: skip
        uri = results.close()
        results.write_summary({"task": Task.OBJECT_DETECTION.value, "targetPrecision": 0.9})
    return uri


def labeled_voc(name: str, size: tuple[int, int], boxes: Sequence[tuple[str, float, float, float, float]]) -> bytes:
    from autolabel.manifest import VocBox, voc_xml

    return voc_xml(name, (*size, 3), [VocBox(*b) for b in boxes], "human")


def make_detection_dataset(root: Path) -> tuple[str, str]:
    """``(manifest path, result.manifest path)`` of a detection dataset: 2 labeled images (VOC files with
    cat and dog boxes), 5 unlabeled ones with the BOX_PROPOSALS of a run written by the real ResultWriter."""
    from autolabel.storage import Storage

    lines: list[dict[str, Any]] = []
    labeled = {"l1": [("cat", 1, 1, 10, 7)], "l2": [("dog", 2, 2, 11, 7), ("cat", 0, 0, 5, 5)]}
    for name, boxes in labeled.items():
        write_image(root / "images" / f"{name}.png")
        (root / "voc").mkdir(parents=True, exist_ok=True)
        (root / "voc" / f"{name}.xml").write_bytes(labeled_voc(f"{name}.png", (12, 8), boxes))
        ann = {"type": DET, "annotation-loc": f"voc/{name}.xml", "annotation-format": "PASCAL VOC"}
        lines.append({"source": f"images/{name}.png", "annotation": [ann], "usage": "TRAIN"})
    for name, size in DET_SIZES.items():
        write_image(root / "images" / f"{name}.png", size=size)
        lines.append({"source": f"images/{name}.png"})
    manifest = root / "data.manifest"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    images = {name: str(root / "images" / f"{name}.png") for name in DET_SIZES}
    results = write_detection_results(Storage(), images, str(root / "out" / DET_RUN))
    return str(manifest), results
