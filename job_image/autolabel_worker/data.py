"""The digits sample dataset: scikit-learn's bundled 8x8 digits written as PNG files plus a manifest.

Used by the example job, the benchmark, the tests and the demo. Nothing is downloaded: the images ship
inside the scikit-learn wheel. The ground truth of the unlabeled images is written to a separate file
(``ground_truth.json``) that the worker never reads, so results can be scored honestly afterwards.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

MANIFEST_NAME = "digits.manifest"
GROUND_TRUTH_NAME = "ground_truth.json"
IMAGE_DIR = "images"
CLASSIFICATION_TYPE = "modelarts/image_classification"


@dataclass(frozen=True)
class DigitsDataset:
    folder: Path
    manifest: Path
    ground_truth: Path
    labeled: int
    unlabeled: int


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits as uint8 images (N x 8 x 8, 0-255) and their integer labels."""
    from sklearn.datasets import load_digits  # scikit-learn is a dev/benchmark dependency only

    digits = load_digits()
    images = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return images, digits.target.astype(np.int64)


def split_labeled(labels: np.ndarray, labeled_per_class: int, seed: int) -> np.ndarray:
    """Indices of `labeled_per_class` images of each class, drawn with `seed` (sorted)."""
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if len(members) < labeled_per_class:
            raise ValueError(f"class {cls} has only {len(members)} images, {labeled_per_class} requested")
        chosen.extend(rng.choice(members, size=labeled_per_class, replace=False).tolist())
    return np.array(sorted(chosen), dtype=np.int64)


def write_digits_dataset(
    folder: str | os.PathLike[str],
    labeled_per_class: int = 5,
    seed: int = 0,
    repeat: int = 1,
    max_unlabeled: int | None = None,
) -> DigitsDataset:
    """Write the digits as PNG files, a ModelArts-style manifest and a separate ground-truth file.

    `labeled_per_class` images of each class carry their label in the manifest; all others are unlabeled.
    `repeat` > 1 lists the unlabeled images that many times (same pixels under distinct names, for scale
    tests of the manifest length); `max_unlabeled` keeps only the first that many unlabeled images (small
    datasets for tests). Sources in the manifest are relative to its folder. Existing files are overwritten only inside
    `folder`, which belongs to the dataset.
    """
    root = Path(folder)
    (root / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    images, labels = load_digits_arrays()
    labeled_idx = set(split_labeled(labels, labeled_per_class, seed).tolist())
    unlabeled_idx = [i for i in range(len(images)) if i not in labeled_idx]
    if max_unlabeled is not None:
        unlabeled_idx = unlabeled_idx[:max_unlabeled]
    # File names are the index in scikit-learn's order, so every seed and size shares the same files.
    for i in sorted(labeled_idx) + unlabeled_idx:
        path = root / f"{IMAGE_DIR}/{i:05d}.png"
        if not path.exists():
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            Image.fromarray(images[i]).save(tmp, format="PNG")
            os.replace(tmp, path)

    truth: dict[str, str] = {}
    lines: list[str] = []
    for i in sorted(labeled_idx):
        annotation = [{"type": CLASSIFICATION_TYPE, "name": str(int(labels[i])), "annotated-by": "human"}]
        lines.append(json.dumps({"source": f"{IMAGE_DIR}/{i:05d}.png", "annotation": annotation}))
    for copy in range(repeat):
        if copy:
            (root / f"{IMAGE_DIR}-{copy}").mkdir(exist_ok=True)
        for i in unlabeled_idx:
            source = f"{IMAGE_DIR}/{i:05d}.png"
            if copy:
                # Distinct sources for the same pixels: hard links cost no data blocks.
                alias = f"{IMAGE_DIR}-{copy}/{i:05d}.png"
                _link(root / source, root / alias)
                source = alias
            lines.append(json.dumps({"source": source}))
            truth[source] = str(int(labels[i]))
    manifest = root / MANIFEST_NAME
    _atomic_write(manifest, "\n".join(lines) + "\n")
    gt = root / GROUND_TRUTH_NAME
    _atomic_write(gt, json.dumps(truth))
    return DigitsDataset(
        folder=root,
        manifest=manifest,
        ground_truth=gt,
        labeled=len(labeled_idx),
        unlabeled=len(truth),
    )


def ensure_digits_dataset(folder: str | os.PathLike[str], labeled_per_class: int = 5, seed: int = 0) -> Path:
    """Write the digits dataset into `folder` unless its manifest is already there; returns the manifest.

    This is the documented helper that `autolabel run examples/digits-local.yaml --local` (or anyone) calls
    so the example works from a fresh clone.
    """
    manifest = Path(folder) / MANIFEST_NAME
    if not manifest.exists():
        write_digits_dataset(folder, labeled_per_class=labeled_per_class, seed=seed)
    return manifest


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _link(src: Path, dst: Path) -> None:
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:
        dst.write_bytes(src.read_bytes())
