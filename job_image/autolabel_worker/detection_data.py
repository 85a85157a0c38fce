"""The digit-boxes sample dataset: a synthetic object-detection dataset made offline from packaged data.

Each image is a crop of one of scikit-image's bundled photographs or textures (astronaut, coffee, a cat,
bricks, gravel, a galaxy field, …) with a few of scikit-learn's 8x8 digits pasted on it, upscaled
(bilinear) to 14..44 pixels, in a random colour, blended with the digit's own intensity as the alpha mask
so the background shows around the stroke. Nothing is downloaded: both image sets ship inside the wheels.

``write_detection_dataset`` writes ``images/NNNNN.png``, one PASCAL VOC file ``annotations/NNNNN.xml``
per *labeled* image, a ModelArts-style manifest ``boxes.manifest`` (labeled lines point at their VOC file
through ``annotation-loc``; unlabeled lines carry only ``source``; paths are relative to the manifest's
folder) and ``ground_truth.json`` with the boxes of *every* image, which the worker never reads (the
benchmarks score against it).

Boxes are ``(name, xmin, ymin, xmax, ymax)`` in pixel coordinates as floats: the tight box of the pixels
where the pasted digit's alpha exceeds :data:`BOX_ALPHA`, ``xmin``/``ymin`` the first such column/row and
``xmax``/``ymax`` one past the last (exclusive), so ``xmax - xmin`` is the box's width in pixels.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from autolabel.manifest import DETECTION_TYPE, VOC_FORMAT, VocBox, voc_xml

MANIFEST_NAME = "boxes.manifest"
GROUND_TRUTH_NAME = "ground_truth.json"
IMAGE_DIR = "images"
ANNOTATION_DIR = "annotations"
DEFAULT_CLASSES = ("0", "1", "2")
BACKGROUND_NAMES = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "camera",
    "brick",
    "grass",
    "gravel",
    "immunohistochemistry",
    "hubble_deep_field",
)
MIN_SIDE = 14
MAX_SIDE = 44
BOX_ALPHA = 0.3
"""A pixel belongs to a digit's box when the digit's alpha there exceeds this."""
MAX_IOU = 0.05
"""Objects of one image overlap less than this (intersection over union of their boxes)."""
PLACEMENT_TRIES = 30
MIN_CONTRAST = 90.0
"""Wanted luminance difference between a digit's colour and the background under it (0..255)."""

Box = tuple[str, float, float, float, float]


@dataclass(frozen=True)
class DetectionDataset:
    folder: Path
    manifest: Path
    ground_truth: Path
    labeled: int
    unlabeled: int
    classes: tuple[str, ...]


def load_backgrounds(names: Sequence[str] = BACKGROUND_NAMES) -> list[np.ndarray]:
    """scikit-image's bundled images as H x W x 3 uint8 arrays (gray ones repeated to RGB)."""
    from skimage import data as skdata  # scikit-image is a dev/benchmark dependency only

    images = []
    for name in names:
        image = np.asarray(getattr(skdata, name)())
        if image.dtype != np.uint8:
            raise ValueError(f"background {name!r} is {image.dtype}, expected uint8")
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        images.append(np.ascontiguousarray(image[:, :, :3]))
    return images


def load_digit_bank(classes: Sequence[str]) -> dict[str, np.ndarray]:
    """For each class name ("0".."9"), scikit-learn's 8x8 digits of that class (N x 8 x 8 uint8, 0-255)."""
    from autolabel_worker.data import load_digits_arrays

    _check_classes(classes)
    images, labels = load_digits_arrays()
    return {name: images[labels == int(name)] for name in classes}


def _check_classes(classes: Sequence[str]) -> None:
    if not classes:
        raise ValueError("no classes")
    if len(set(classes)) != len(classes):
        raise ValueError(f"repeated class names in {list(classes)}")
    for name in classes:
        if name not in {str(d) for d in range(10)}:
            raise ValueError(f"class {name!r}: the digit-boxes classes are the digits '0'..'9'")


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _background(rng: np.random.Generator, backgrounds: Sequence[np.ndarray], size: int) -> np.ndarray:
    source = backgrounds[int(rng.integers(len(backgrounds)))]
    height, width = source.shape[:2]
    shortest = min(height, width)
    low = min(shortest, max(32, size // 2))
    side = int(rng.integers(low, shortest + 1))  # random scale: from a 2x zoom to the whole image
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    crop = Image.fromarray(np.ascontiguousarray(source[top : top + side, left : left + side]))
    if side != size:
        crop = crop.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(crop, dtype=np.float32).copy()


def _luminance(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32))


def render_scene(
    rng: np.random.Generator,
    backgrounds: Sequence[np.ndarray],
    digit_bank: Mapping[str, np.ndarray],
    classes: Sequence[str],
    size: int = 128,
    max_objects: int = 4,
) -> tuple[np.ndarray, list[Box]]:
    """One synthetic image (``size`` x ``size`` x 3 uint8) and its boxes ``[(name, xmin, ymin, xmax, ymax)]``.

    ``backgrounds`` are H x W x 3 uint8 images (:func:`load_backgrounds`), each at least 32 pixels high
    and wide; ``digit_bank`` maps each class name to its N x 8 x 8 uint8 digits (:func:`load_digit_bank`).
    1..``max_objects`` digits of ``classes`` are pasted; a digit whose placement keeps overlapping the
    others (IoU >= :data:`MAX_IOU`) after :data:`PLACEMENT_TRIES` tries is left out, so an image has at
    least one object. Box coordinates: see the module docstring.
    """
    if size < MAX_SIDE:
        raise ValueError(f"size {size} is smaller than the largest digit ({MAX_SIDE} pixels)")
    if max_objects < 1:
        raise ValueError("max_objects must be at least 1")
    canvas = _background(rng, backgrounds, size)
    boxes: list[Box] = []
    placed: list[tuple[float, float, float, float]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        name = classes[int(rng.integers(len(classes)))]
        bank = digit_bank[name]
        digit = bank[int(rng.integers(len(bank)))]
        side = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
        alpha = np.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BILINEAR), np.float32) / 255.0
        rows = np.flatnonzero((alpha > BOX_ALPHA).any(axis=1))
        cols = np.flatnonzero((alpha > BOX_ALPHA).any(axis=0))
        if len(rows) == 0:
            continue
        for _try in range(PLACEMENT_TRIES):
            top = int(rng.integers(0, size - side + 1))
            left = int(rng.integers(0, size - side + 1))
            box = (
                float(left + cols[0]),
                float(top + rows[0]),
                float(left + cols[-1] + 1),
                float(top + rows[-1] + 1),
            )
            if all(_iou(box, other) < MAX_IOU for other in placed):
                break
        else:
            continue
        region = canvas[top : top + side, left : left + side]
        under = _luminance(region.reshape(-1, 3).mean(axis=0))
        colour = rng.integers(0, 256, size=3).astype(np.float32)
        for _c in range(10):
            if abs(_luminance(colour) - under) >= MIN_CONTRAST:
                break
            colour = rng.integers(0, 256, size=3).astype(np.float32)
        a = alpha[:, :, None]
        region[...] = region * (1.0 - a) + colour * a
        placed.append(box)
        boxes.append((name, *box))
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), boxes


def _choose_labeled(contents: list[set[str]], classes: Sequence[str], per_class: int) -> list[int]:
    """Greedy set cover: few images such that each class is in at least ``per_class`` of them."""
    need = {name: per_class for name in classes}
    chosen: list[int] = []
    taken: set[int] = set()
    while any(need.values()):
        best, gain = -1, 0
        for i, names in enumerate(contents):
            if i in taken:
                continue
            g = sum(1 for n in names if need.get(n, 0) > 0)
            if g > gain:
                best, gain = i, g
                if g == len(classes):
                    break
        if best < 0:
            short = {n: k for n, k in need.items() if k}
            raise ValueError(f"not enough images to label {per_class} per class (short: {short})")
        taken.add(best)
        chosen.append(best)
        for n in contents[best]:
            if need.get(n, 0) > 0:
                need[n] -= 1
    return sorted(chosen)


def write_detection_dataset(
    folder: str | os.PathLike[str],
    *,
    seed: int = 0,
    classes: Sequence[str] = DEFAULT_CLASSES,
    labeled_per_class: int = 6,
    unlabeled: int = 300,
    size: int = 128,
    max_objects: int = 4,
) -> DetectionDataset:
    """Write the digit-boxes dataset into ``folder`` (see the module docstring); same seed, same bytes.

    The labeled images are chosen so that every class appears on at least ``labeled_per_class`` of them
    (an image counts for every label it contains, as ModelArts counts), with as few labeled images as a
    greedy cover finds. The manifest lists the images in file order, labeled and unlabeled mixed. The
    manifest is written last, so its presence means the dataset is complete.
    """
    classes = tuple(classes)
    _check_classes(classes)
    if labeled_per_class < 0 or unlabeled < 0:
        raise ValueError("labeled_per_class and unlabeled must not be negative")
    root = Path(folder)
    (root / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    (root / ANNOTATION_DIR).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    backgrounds = load_backgrounds()
    bank = load_digit_bank(classes)

    # Render enough candidates for the unlabeled images plus a worst-case cover (one class per image).
    scenes: list[tuple[np.ndarray, list[Box]]] = []
    spare = labeled_per_class * len(classes)
    while True:
        while len(scenes) < unlabeled + spare:
            scenes.append(render_scene(rng, backgrounds, bank, classes, size=size, max_objects=max_objects))
        contents = [{box[0] for box in boxes} for _, boxes in scenes]
        try:
            labeled_idx = _choose_labeled(contents, classes, labeled_per_class)
            break
        except ValueError:  # a class too rare among the candidates (tiny datasets): render more
            spare += labeled_per_class * len(classes)
    labeled_set = set(labeled_idx)
    rest = [i for i in range(len(scenes)) if i not in labeled_set][:unlabeled]
    keep = sorted(labeled_set.union(rest))

    truth: dict[str, list[list[object]]] = {}
    lines: list[str] = []
    for number, i in enumerate(keep):
        pixels, boxes = scenes[i]
        stem = f"{number:05d}"
        source = f"{IMAGE_DIR}/{stem}.png"
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        (root / source).write_bytes(buffer.getvalue())
        truth[source] = [[name, x0, y0, x1, y1] for name, x0, y0, x1, y1 in boxes]
        line: dict[str, object] = {"source": source}
        if i in labeled_set:
            loc = f"{ANNOTATION_DIR}/{stem}.xml"
            xml = voc_xml(
                f"{stem}.png",
                (size, size, 3),
                [VocBox(name, x0, y0, x1, y1) for name, x0, y0, x1, y1 in boxes],
                annotated_by="human",
            )
            (root / loc).write_bytes(xml)
            line["annotation"] = [{"type": DETECTION_TYPE, "annotation-loc": loc, "annotation-format": VOC_FORMAT}]
        lines.append(json.dumps(line))
    gt = root / GROUND_TRUTH_NAME
    _atomic_write(gt, json.dumps(truth))
    manifest = root / MANIFEST_NAME
    _atomic_write(manifest, "\n".join(lines) + "\n")
    return DetectionDataset(
        folder=root,
        manifest=manifest,
        ground_truth=gt,
        labeled=len(labeled_idx),
        unlabeled=len(rest),
        classes=classes,
    )


def ensure_detection_dataset(folder: str | os.PathLike[str]) -> DetectionDataset:
    """Write the digit-boxes dataset with the defaults into ``folder`` unless its manifest is already
    there (what the ``autolabel.dev/sample-dataset: digit-boxes`` annotation relies on)."""
    root = Path(folder)
    manifest = root / MANIFEST_NAME
    gt = root / GROUND_TRUTH_NAME
    if not manifest.exists() or not gt.exists():
        return write_detection_dataset(root)
    labeled = unlabeled = 0
    for text in manifest.read_text().splitlines():
        if text.strip():
            if json.loads(text).get("annotation"):
                labeled += 1
            else:
                unlabeled += 1
    names: Counter[str] = Counter(box[0] for boxes in json.loads(gt.read_text()).values() for box in boxes)
    return DetectionDataset(
        folder=root,
        manifest=manifest,
        ground_truth=gt,
        labeled=labeled,
        unlabeled=unlabeled,
        classes=tuple(sorted(names)),
    )


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
