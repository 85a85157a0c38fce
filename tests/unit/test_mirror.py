"""Whether mirror images keep the class is read off the labeled and unlabeled images (`mirror.mirror_check`)."""

from __future__ import annotations

import numpy as np
import torch
from autolabel_worker.mirror import mirror_check, mirror_images, spectrum

from autolabel.api import MirrorImages

SIDE = 32


def _images(draw, classes: int, per_class: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for cls in range(classes):
        for _ in range(per_class):
            image = draw(cls, rng) + 0.1 * rng.standard_normal((SIDE, SIDE))
            images.append(np.repeat(image[None], 3, axis=0))
            labels.append(cls)
    return torch.tensor(np.stack(images), dtype=torch.float32), np.array(labels)


def _stripes(cls: int, rng: np.random.Generator) -> np.ndarray:
    """Class 0 horizontal stripes, class 1 vertical, class 2 a checkerboard; any phase: mirror-symmetric classes."""
    rows, cols = np.mgrid[:SIDE, :SIDE]
    phase, across = rng.uniform(0, 2 * np.pi, size=2)
    waves = [np.sin(rows / 2 + phase), np.sin(cols / 2 + phase), np.sin(rows / 2 + phase) * np.sin(cols / 2 + across)]
    return waves[cls]


def _chiral(cls: int, rng: np.random.Generator) -> np.ndarray:
    """A 'Γ' (class 0), its mirror image (1), a '/' (2) and its mirror image, a '\\' (3), of random size
    somewhere in the image, as b and d or 2 and a mirrored 2: mirroring turns each class into another."""
    image = np.zeros((SIDE, SIDE))
    top, left = rng.integers(2, 14, size=2)
    size = int(rng.integers(10, 16))
    if cls < 2:
        image[top : top + size, left : left + 2] = 1.0
        image[top : top + 2, left : left + size // 2 + 2] = 1.0
    else:
        for i in range(size):
            image[top + i, left + size - 1 - i : left + size + 1 - i] = 1.0
    return image[:, ::-1].copy() if cls % 2 else image


def test_classes_that_look_the_same_mirrored_are_trained_with_mirror_images() -> None:
    x, y = _images(_stripes, classes=3, per_class=5)
    check = mirror_check(x, y)
    assert check.keeps_class, check.reason
    assert "as close to their class" in check.reason and "layout" in check.reason and "spectrum" in check.reason


def test_classes_whose_mirror_images_are_each_other_are_trained_without_them() -> None:
    x, y = _images(_chiral, classes=4, per_class=5)
    check = mirror_check(x, y)
    assert not check.keeps_class, check.reason
    assert "farther from their class" in check.reason
    (note,) = check.notes()  # the summary says how to overrule it
    assert note.startswith("mirror images were left out in training") and "mirrorImages: Never" in note


def _chiral_and_ring(cls: int, rng: np.random.Generator) -> np.ndarray:
    """A 'Γ' (class 0) and a '/' (1), neither of whose mirror images is a class, and a square ring (2)."""
    if cls < 2:
        return _chiral(2 * cls, rng)
    image = np.zeros((SIDE, SIDE))
    top, left = rng.integers(2, 14, size=2)
    size = int(rng.integers(10, 16))
    image[top : top + size, left : left + size] = 1.0
    image[top + 2 : top + size - 2, left + 2 : left + size - 2] = 0.0
    return image


def test_shapes_whose_mirror_images_are_no_class_at_all_are_trained_without_them() -> None:
    # as capital letters: a mirrored shape often stays nearest to its own class (round 10's test, which
    # asked for a change of class, kept mirror images on 3 of these 8 draws), but is farther from it
    for seed in range(8):
        x, y = _images(_chiral_and_ring, classes=3, per_class=5, seed=seed)
        check = mirror_check(x, y)
        assert not check.keeps_class, (seed, check.reason)


def test_with_too_few_labeled_images_mirror_images_stay() -> None:
    x, y = _images(_chiral, classes=2, per_class=1)
    assert mirror_check(x, y).keeps_class
    x, y = _images(_chiral, classes=1, per_class=5)
    assert mirror_check(x, y).keeps_class
    x, y = _images(_chiral, classes=4, per_class=1)  # no class has a second image to be near
    assert mirror_check(x, y).reason.startswith("too few images")


def test_unlabeled_images_unlike_their_mirror_images_leave_mirror_images_out_where_the_labels_are_too_few() -> None:
    # one labeled image per class: the labeled test cannot be made; 120 unlabeled shapes facing one way can
    x, y = _images(_chiral_and_ring, classes=3, per_class=1)
    assert mirror_check(x, y).keeps_class
    pool, _ = _images(_chiral_and_ring, classes=3, per_class=40, seed=1)
    check = mirror_check(x, y, pool)
    assert not check.keeps_class, check.reason
    assert check.reason.startswith("mirrored unlabeled images are farther from one another (layout: ")


def test_unlabeled_images_as_likely_mirrored_as_not_keep_mirror_images() -> None:
    x, y = _images(_stripes, classes=3, per_class=5)
    pool, _ = _images(_stripes, classes=3, per_class=40, seed=1)
    check = mirror_check(x, y, pool)
    assert check.keeps_class, check.reason
    assert "labeled images are as close to their class" in check.reason
    assert "unlabeled images are as close to one another" in check.reason


def test_classes_that_are_each_others_mirror_images_are_seen_by_the_labels_not_by_the_pool() -> None:
    # a pool of b's and d's looks the same mirrored; only the labels say a mirrored b is no b
    x, y = _images(_chiral, classes=4, per_class=5)
    pool, _ = _images(_chiral, classes=4, per_class=30, seed=1)
    check = mirror_check(x, y, pool)
    assert not check.keeps_class, check.reason
    assert "labeled images are farther from their class" in check.reason
    assert "unlabeled images are as close to one another" in check.reason


def test_the_spectrum_ignores_where_a_shape_is_and_sees_which_way_it_points() -> None:
    shape = np.zeros((SIDE, SIDE))
    shape[4:12, 4:6], shape[4:6, 4:10] = 1.0, 1.0  # an L drawn as a 'Γ'
    moved = np.roll(shape, (9, 13), axis=(0, 1))
    as_tensor = torch.tensor(np.stack([shape, moved, shape[:, ::-1].copy()])[:, None], dtype=torch.float32)
    features = spectrum(as_tensor)
    assert torch.allclose(features[0], features[1], atol=1e-4)
    assert not torch.allclose(features[0], features[2], atol=1e-2)


def test_the_job_can_say_always_or_never_and_auto_never_mirrors_small_images() -> None:
    x, y = _images(_stripes, classes=3, per_class=5)  # mirror-symmetric classes: Auto would mirror them
    assert mirror_images(MirrorImages.AUTO, 32, x, y).keeps_class
    never = mirror_images(MirrorImages.NEVER, 32, x, y)
    assert not never.keeps_class and never.reason == "activeLearning.mirrorImages is Never"
    assert never.notes() == []  # the job said so: nothing to add
    x, y = _images(_chiral, classes=4, per_class=5)
    assert mirror_images(MirrorImages.ALWAYS, 32, x, y).keeps_class
    small = mirror_images(MirrorImages.AUTO, 8, x, y, unlabeled=_never_decoded)
    assert not small.keeps_class and small.reason == "images under 32 px are never mirrored"
    assert mirror_images(MirrorImages.NEVER, 32, x, y, unlabeled=_never_decoded).reason.endswith("Never")


def _never_decoded() -> torch.Tensor:
    raise AssertionError("the unlabeled images are decoded only when they decide")
