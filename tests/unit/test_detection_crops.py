"""The crop classifier's training samples: an object cut out of its crop and set on other backgrounds."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from autolabel_worker.augment import AugmentPolicy
from autolabel_worker.detection.crops import BackgroundSwap, foreground_alpha
from autolabel_worker.models import ModelSpec
from autolabel_worker.train import TrainConfig, TrainingRun, train_supervised


def square_on_flat(size: int = 32, inner: slice = slice(10, 22)) -> torch.Tensor:
    """A grey crop with a red square in the middle (float 1 x 3 x S x S in 0..1)."""
    crop = torch.full((1, 3, size, size), 0.5)
    crop[0, :, inner, inner] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    return crop


def test_the_foreground_mask_is_the_object_and_not_its_flat_surroundings() -> None:
    alpha = foreground_alpha(square_on_flat())[0, 0]
    assert alpha[12:20, 12:20].min() > 0.99
    assert alpha[:6].max() < 0.01 and alpha[:, :6].max() < 0.01 and alpha[27:].max() < 0.01


def test_the_foreground_mask_of_a_textured_crop_without_an_object_stays_low() -> None:
    """Fine texture (a checkerboard) is mostly blurred away: no pixel is taken as a solid object."""
    grid = ((torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2).float()
    crop = (0.4 + 0.2 * grid).expand(1, 3, 32, 32)
    assert foreground_alpha(crop).max() < 0.8


def test_a_swapped_crop_keeps_the_object_and_takes_the_background_of_another_image() -> None:
    crop = (square_on_flat() * 255).to(torch.uint8)
    blue = torch.zeros(3, 64, 64, dtype=torch.uint8)
    blue[2] = 200
    out = BackgroundSwap([blue], share=1.0)(crop, torch.Generator().manual_seed(0))
    assert out.shape == crop.shape and out.dtype == torch.uint8
    corner = out[0, :, :6, :6].float()
    assert torch.allclose(corner, torch.tensor([0.0, 0.0, 200.0]).view(3, 1, 1).expand(3, 6, 6), atol=1)
    inside = out[0, :, 14:18, 14:18].float().mean(dim=(1, 2))
    assert not torch.allclose(inside, corner.mean(dim=(1, 2)), atol=5), "the object was not set on the new background"


def test_a_share_of_zero_changes_nothing_and_the_same_generator_seed_gives_the_same_samples() -> None:
    crops = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    backgrounds = [torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8)]
    assert torch.equal(BackgroundSwap(backgrounds, share=0.0)(crops, torch.Generator().manual_seed(1)), crops)
    swap = BackgroundSwap(backgrounds, share=0.5)
    a = swap(crops, torch.Generator().manual_seed(3))
    b = swap(crops, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, crops)


def test_background_images_smaller_than_a_patch_still_give_patches() -> None:
    crops = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    out = BackgroundSwap([torch.zeros(3, 5, 9, dtype=torch.uint8)], share=1.0)(crops, torch.Generator().manual_seed(0))
    assert out.shape == crops.shape


def test_no_background_image_is_an_error() -> None:
    with pytest.raises(ValueError, match="no background"):
        BackgroundSwap([])


def test_supervised_training_draws_every_batch_through_the_mix() -> None:
    calls: list[int] = []

    def mix(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        assert images.dtype == torch.uint8
        calls.append(len(images))
        return images

    spec = ModelSpec("smallcnn", (16, 16), 2, mean=(0.5,) * 3, std=(0.25,) * 3, width=8)
    x = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    labels = torch.as_tensor(np.array([0, 1] * 4))
    cfg = TrainConfig(steps=5, batch_size=4, eval_every=100, device="cpu")
    run = TrainingRun(spec, x, labels, AugmentPolicy(), cfg, time.monotonic() + 60, seed=0, mix=mix)
    _, steps, _ = train_supervised(run)
    assert calls == [4] * steps and steps == 5
