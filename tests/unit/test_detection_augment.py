"""The detector's training samples: labeled scenes jittered, and synthetic scenes of pasted objects."""

from __future__ import annotations

import numpy as np
import torch
from autolabel_worker.detection.train import DetectorTrainConfig, Scene, SceneSampler, free_region


def grey_scene_with_square(box: tuple[int, int, int, int] = (40, 50, 70, 80), side: int = 128) -> Scene:
    """A flat grey image with one red square, boxed tightly."""
    image = torch.full((3, side, side), 128, dtype=torch.uint8)
    x0, y0, x1, y1 = box
    image[:, y0:y1, x0:x1] = torch.tensor([220, 20, 20], dtype=torch.uint8).view(3, 1, 1)
    return Scene(image, torch.tensor([box], dtype=torch.float32))


def overlaps(a: list[float], b: list[float]) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def test_a_synthetic_scene_takes_its_background_where_no_labeled_object_is() -> None:
    scene = grey_scene_with_square()
    rng = np.random.default_rng(0)
    regions = [free_region(scene, rng) for _ in range(200)]
    found = [r for r in regions if r is not None]
    assert len(found) > 150
    for left, top, side in found:
        assert not overlaps([left, top, left + side, top + side], scene.boxes[0].tolist())


def test_an_image_covered_by_its_objects_has_no_background_region() -> None:
    scene = grey_scene_with_square(box=(0, 0, 128, 128))
    assert free_region(scene, np.random.default_rng(0)) is None


def test_a_pasted_object_is_cut_out_of_its_crop_not_pasted_as_a_rectangle() -> None:
    """On a flat background, everything outside the pasted objects' boxes (and the mask's one-pixel blur)
    stays one flat colour: no edge of the crop's rectangle is left for the detector to learn."""
    sampler = SceneSampler([grey_scene_with_square()], 128, DetectorTrainConfig(synthetic=1.0), seed=3)
    for _ in range(20):
        image, boxes = sampler.sample()
        assert len(boxes) >= 1
        outside = torch.ones(128, 128, dtype=torch.bool)
        for x0, y0, x1, y1 in boxes.tolist():
            assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128
            outside[max(0, int(y0) - 2) : int(y1) + 3, max(0, int(x0) - 2) : int(x1) + 3] = False
        background = image[:, outside]
        assert (background.amax(dim=1) - background.amin(dim=1)).max() < 0.02
        inside = image[:, int(boxes[0, 1]) + 2 : int(boxes[0, 3]) - 2, int(boxes[0, 0]) + 2 : int(boxes[0, 2]) - 2]
        assert (inside - background[:, :1, None]).abs().amax() > 0.05  # the object is visible


def test_the_samples_are_the_same_for_the_same_seed() -> None:
    scenes = [grey_scene_with_square(), grey_scene_with_square(box=(10, 10, 30, 40))]
    a = SceneSampler(scenes, 128, DetectorTrainConfig(), seed=5)
    b = SceneSampler(scenes, 128, DetectorTrainConfig(), seed=5)
    for _ in range(10):
        (xa, ba), (xb, bb) = a.sample(), b.sample()
        assert torch.equal(xa, xb) and torch.equal(ba, bb)
