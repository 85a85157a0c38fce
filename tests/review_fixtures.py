"""A small dataset and a run's results on local folders, for the review tests (confirm, export, import)."""

from __future__ import annotations

import json
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
