"""Datasets for the quality benchmark (bench_quality.py), all made offline from installed packages.

Each dataset is a folder of image files, a ModelArts-style manifest with `labeled_per_class` labeled images
per class (drawn with the seed) and a pool of unlabeled ones, and `ground_truth.json` for the pool, which
the worker never reads. The images themselves do not depend on the seed (they are generated once with a
fixed generator, so every seed shares the files); the seed draws which are labeled and which form the pool.

- ``digits8``: scikit-learn's 8x8 digits, as in bench_worker.py (the data the worker was designed on).
- ``digits-inv32`` / ``digits-inv64``: the same digits dark on light paper, upscaled to 32 or 64 px, light
  noise, one image in seven saved as RGBA PNG, the others as JPEG at quality 60-85 (artefacts).
- ``textures32``: 32 px patches (40-64 px crops, rotated by multiples of 90 degrees, mirrored, contrast and
  brightness jitter) of scikit-image's bundled grey images, one class per image: brick, grass, gravel,
  moon (surface), cell (microscopy), text (a scanned page).
- ``glyphs32``: ten capital letters rendered in the system's DejaVu fonts (22 faces on Debian's
  fonts-dejavu-core/-extra; Pillow's bundled default font at several sizes when none is installed, which
  makes an easier dataset: say which in the results), 15-26 px, rotated up to 15 degrees, shifted, grey
  noise, 32 px.
- ``photos32``: as ``textures32``, from scikit-image's photographs (camera, coffee, astronaut, coins, the
  Hubble deep field, an immunohistochemistry slide; colour ones made grey), one class per photograph, with
  120-200 px crops (with 40-64 px crops two runs got 0.55 and 0.62 right: nothing to tune on).
- ``glyphs-lower32``: as ``glyphs32``, with ten lower-case letters (a b d e g h n q r t).
- ``glyphs-upper32``: as ``glyphs32``, with ten other capitals (L M N P Q R S T U Z), for tuning what
  `glyphs32` showed (round 11: whether mirror images keep the class).
- ``photos32-upright``: the crops of ``photos32`` as the photographs hold them (neither turned nor
  mirrored): a collection whose images all face one way and overlap, as photographs of one scene do (round
  14: whether mirrored images are like the images to label).
- ``photos64`` / ``glyphs-lower64``: the same two at 64 px (glyphs drawn at twice the size, 30-52 px):
  images larger than a 2-core CPU trains on fully within a 300 s budget (round 7).
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

IMAGE_SEED = 20261129
"""The generator of the images themselves (fixed: every seed shares the files)."""
CLASSIFICATION_TYPE = "modelarts/image_classification"
FONT_GLOB = "/usr/share/fonts/truetype/dejavu/*.ttf"
LETTERS = "ABCDEFGHJK"
LOWER_LETTERS = "abdeghnqrt"
OTHER_CAPITALS = "LMNPQRSTUZ"
"""`glyphs-upper32` (tuning, round 11): capitals that `glyphs32` (report) does not use."""
TEXTURES = ("brick", "grass", "gravel", "moon", "cell", "text")
PHOTOS = ("camera", "coffee", "astronaut", "coins", "hubble_deep_field", "immunohistochemistry")


@dataclass(frozen=True)
class QualityDataset:
    name: str
    folder: Path
    manifest: Path
    ground_truth: Path
    labeled: int
    unlabeled: int
    classes: int
    note: str


@dataclass(frozen=True)
class Source:
    """A generated image collection: per image a writer (folder, stem) -> file name, and its label."""

    names: list[str]
    labels: np.ndarray
    write: Callable[[Path, int], str]
    note: str


# ----------------------------------------------------------------------------------------- generators


def _digits8() -> Source:
    from autolabel_worker.data import load_digits_arrays

    images, labels = load_digits_arrays()

    def write(folder: Path, i: int) -> str:
        name = f"{i:05d}.png"
        Image.fromarray(images[i]).save(folder / name, format="PNG")
        return name

    return Source([f"{i:05d}" for i in range(len(images))], labels, write, "scikit-learn digits, 8x8 grey PNG")


def _digits_inverted(side: int) -> Source:
    from autolabel_worker.data import load_digits_arrays

    images, labels = load_digits_arrays()
    rng = np.random.default_rng(IMAGE_SEED + side)
    quality = rng.integers(60, 86, len(images))
    rgba = rng.random(len(images)) < 1 / 7
    noise_seeds = rng.integers(0, 2**31, len(images))

    def write(folder: Path, i: int) -> str:
        img = Image.fromarray(255 - images[i]).resize((side, side), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.float64)
        arr += np.random.default_rng(int(noise_seeds[i])).normal(0, 6, arr.shape)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        if rgba[i]:
            name = f"{i:05d}.png"
            out = img.convert("RGBA")
            out.putalpha(255)
            out.save(folder / name, format="PNG")
        else:
            name = f"{i:05d}.jpg"
            img.convert("RGB").save(folder / name, format="JPEG", quality=int(quality[i]))
        return name

    return Source(
        [f"{i:05d}" for i in range(len(images))],
        labels,
        write,
        f"digits dark on light, {side} px, 1 in 7 RGBA PNG, others JPEG q60-85",
    )


def _textures(
    names: tuple[str, ...] = TEXTURES,
    image_seed: int = IMAGE_SEED + 1,
    crop: tuple[int, int] = (40, 64),
    per_class: int = 300,
    side: int = 32,
    dihedral: bool = True,
) -> Source:
    """`dihedral`: each patch turned by a multiple of 90 degrees and mirrored half the time (the draws are
    made either way, so `dihedral=False` gives the same crops upright)."""
    from skimage import data as skdata
    from skimage.color import rgb2gray

    rng = np.random.default_rng(image_seed)
    sources = []
    for name in names:
        image = getattr(skdata, name)()
        if image.ndim == 3:  # the photos are RGB: grey like the textures
            image = rgb2gray(image[..., :3]) * 255
        sources.append(np.asarray(image, dtype=np.uint8))
    specs: list[tuple[int, int, int, int, int, bool, float, float]] = []
    labels: list[int] = []
    for cls, src in enumerate(sources):
        h, w = src.shape[:2]
        for _ in range(per_class):
            size = int(rng.integers(crop[0], crop[1] + 1))
            y, x = int(rng.integers(0, h - size)), int(rng.integers(0, w - size))
            rot, flip = int(rng.integers(0, 4)), bool(rng.random() < 0.5)
            specs.append((y, x, size, rot, cls, flip, rng.uniform(0.7, 1.3), rng.normal(0, 15)))
            labels.append(cls)

    def write(folder: Path, i: int) -> str:
        y, x, size, rot, cls, flip, contrast, shift = specs[i]
        patch = sources[cls][y : y + size, x : x + size].astype(np.float64)
        if dihedral:
            patch = np.rot90(patch, rot)
            if flip:
                patch = patch[:, ::-1]
        patch = (patch - patch.mean()) * contrast + patch.mean() + shift
        img = Image.fromarray(np.clip(patch, 0, 255).astype(np.uint8)).resize((side, side), Image.Resampling.BILINEAR)
        name = f"{i:05d}.png"
        img.save(folder / name, format="PNG")
        return name

    return Source(
        [f"{i:05d}" for i in range(len(specs))],
        np.array(labels, dtype=np.int64),
        write,
        "scikit-image " + ", ".join(names) + f": {side} px patches",
    )


def _fonts() -> tuple[list[str], str]:
    fonts = sorted(glob.glob(FONT_GLOB))
    if fonts:
        return fonts, f"{len(fonts)} DejaVu faces"
    return [], "Pillow's default font only (no DejaVu fonts installed)"


def _glyphs(letters: str = LETTERS, image_seed: int = IMAGE_SEED + 2, per_class: int = 200, scale: int = 1) -> Source:
    """Letters on a 32 x `scale` px image; the random draws do not depend on `scale`."""
    rng = np.random.default_rng(image_seed)
    fonts, what = _fonts()
    specs: list[tuple[int, int, int, float, int, int, int, int]] = []
    labels: list[int] = []
    for cls in range(len(letters)):
        for _ in range(per_class):
            specs.append(
                (
                    cls,
                    int(rng.integers(0, max(len(fonts), 1))),
                    int(rng.integers(15, 27)),
                    float(rng.uniform(-15, 15)),
                    int(rng.integers(-3, 4)),
                    int(rng.integers(-3, 4)),
                    int(rng.integers(180, 256)),
                    int(rng.integers(0, 2**31)),
                )
            )
            labels.append(cls)

    def write(folder: Path, i: int) -> str:
        cls, font_i, size, angle, dx, dy, paper, noise_seed = specs[i]
        size, dx, dy = size * scale, dx * scale, dy * scale
        font = ImageFont.truetype(fonts[font_i], size) if fonts else ImageFont.load_default(size=size)
        canvas = Image.new("L", (48 * scale, 48 * scale), color=paper)
        draw = ImageDraw.Draw(canvas)
        ink = max(0, paper - 160)
        draw.text((24 * scale + dx, 24 * scale + dy), letters[cls], fill=ink, font=font, anchor="mm")
        canvas = canvas.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=paper)
        arr = np.asarray(canvas.crop((8 * scale, 8 * scale, 40 * scale, 40 * scale)), dtype=np.float64)
        arr += np.random.default_rng(noise_seed).normal(0, 8, arr.shape)
        name = f"{i:05d}.png"
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(folder / name, format="PNG")
        return name

    return Source(
        [f"{i:05d}" for i in range(len(specs))],
        np.array(labels, dtype=np.int64),
        write,
        f"letters {letters} in {what}, {32 * scale} px",
    )


GENERATORS: dict[str, Callable[[], Source]] = {
    "digits8": _digits8,
    "digits-inv32": lambda: _digits_inverted(32),
    "digits-inv64": lambda: _digits_inverted(64),
    "textures32": _textures,
    "glyphs32": _glyphs,
    "photos32": lambda: _textures(PHOTOS, IMAGE_SEED + 3, crop=(120, 200)),
    "glyphs-lower32": lambda: _glyphs(LOWER_LETTERS, IMAGE_SEED + 4),
    "photos64": lambda: _textures(PHOTOS, IMAGE_SEED + 3, crop=(120, 200), side=64),
    "glyphs-lower64": lambda: _glyphs(LOWER_LETTERS, IMAGE_SEED + 4, scale=2),
    "glyphs-upper32": lambda: _glyphs(OTHER_CAPITALS, IMAGE_SEED + 5),
    "photos32-upright": lambda: _textures(PHOTOS, IMAGE_SEED + 3, crop=(120, 200), dihedral=False),
}


# ------------------------------------------------------------------------------------------------ write


def write_dataset(
    name: str, folder: str | os.PathLike[str], seed: int, labeled_per_class: int = 5, pool: int | None = None
) -> QualityDataset:
    """Write dataset `name` under `folder` (images once; the manifest and ground truth for `seed`).

    `pool`: at most this many unlabeled images, drawn with the seed from the images not labeled
    (stratified by nothing: a uniform draw); None keeps them all."""
    source = GENERATORS[name]()
    root = Path(folder)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labeled: list[int] = []
    for cls in np.unique(source.labels):
        members = np.flatnonzero(source.labels == cls)
        labeled.extend(rng.choice(members, size=labeled_per_class, replace=False).tolist())
    rest = np.setdiff1d(np.arange(len(source.labels)), labeled)
    if pool is not None and pool < len(rest):
        rest = np.sort(rng.choice(rest, size=pool, replace=False))
    index_file = images / "files.json"
    files: dict[str, str] = json.loads(index_file.read_text()) if index_file.exists() else {}
    for i in sorted(labeled) + rest.tolist():
        if source.names[i] not in files:
            files[source.names[i]] = source.write(images, i)
    _atomic_write(index_file, json.dumps(files))
    lines, truth = [], {}
    for i in sorted(labeled):
        annotation = [{"type": CLASSIFICATION_TYPE, "name": str(int(source.labels[i])), "annotated-by": "human"}]
        lines.append(json.dumps({"source": f"images/{files[source.names[i]]}", "annotation": annotation}))
    for i in rest.tolist():
        src = f"images/{files[source.names[i]]}"
        lines.append(json.dumps({"source": src}))
        truth[src] = str(int(source.labels[i]))
    stem = f"s{seed}-p{pool}" + (f"-l{labeled_per_class}" if labeled_per_class != 5 else "")
    manifest = root / f"{stem}.manifest"
    _atomic_write(manifest, "\n".join(lines) + "\n")
    gt = root / f"{stem}.ground_truth.json"
    _atomic_write(gt, json.dumps(truth))
    return QualityDataset(
        name, root, manifest, gt, len(labeled), len(truth), len(np.unique(source.labels)), source.note
    )


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
