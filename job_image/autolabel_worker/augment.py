"""Batched augmentations on normalized image tensors (N x C x H x W), cheap enough for CPU training.

Every geometric transform is one `affine_grid`/`grid_sample` call with per-sample parameters, so a batch
of a few hundred small images costs about as much as one convolution. `hflip` is only used for images
where a mirror image keeps its class; the pipeline turns it off for small images such as digits, whose
mirror images are different symbols (and then test-time augmentation does not use flips either).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentPolicy:
    hflip: bool = False
    """Mirror images keep their class (natural photos: yes; digits and text: no)."""


def _affine(
    x: torch.Tensor,
    angle: torch.Tensor,
    scale: torch.Tensor,
    shear: torch.Tensor,
    tx: torch.Tensor,
    ty: torch.Tensor,
    flip: torch.Tensor,
) -> torch.Tensor:
    """Apply one affine transform per sample; parameters are 1-D tensors of length N (radians, factor,
    shear, translation as a fraction of the half-size, flip as +1/-1)."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    inv = 1.0 / scale
    a = inv * cos * flip
    b = inv * (-sin + shear * cos)
    c = inv * sin * flip
    d = inv * (cos + shear * sin)
    theta = torch.stack([torch.stack([a, b, tx], dim=1), torch.stack([c, d, ty], dim=1)], dim=1)
    theta = theta.to(device=x.device, dtype=x.dtype)  # parameters are drawn on the CPU (seeded generator)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def weak(x: torch.Tensor, policy: AugmentPolicy, generator: torch.Generator) -> torch.Tensor:
    """Small shifts and zooms (and mirror when allowed): the 'weak' view of FixMatch."""
    n = x.shape[0]
    u = torch.rand(n, 5, generator=generator)
    zeros = torch.zeros(n)
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0) if policy.hflip else torch.ones(n)
    return _affine(
        x,
        angle=(u[:, 0] - 0.5) * math.radians(20),
        scale=1.0 + (u[:, 1] - 0.5) * 0.2,
        shear=zeros,
        tx=(u[:, 2] - 0.5) * 0.5,  # up to 1/8 of the side each way
        ty=(u[:, 3] - 0.5) * 0.5,
        flip=flip,
    )


def strong(x: torch.Tensor, policy: AugmentPolicy, generator: torch.Generator) -> torch.Tensor:
    """Large geometric and photometric distortions plus cutout: the 'strong' view of FixMatch.

    A RandAugment-like mix built from transforms that are cheap on batched tensors: rotation, shear, scale,
    translation, contrast, brightness, noise and a cutout square of 1/4 to 1/2 of the side.
    """
    n, _, h, w = x.shape
    u = torch.rand(n, 10, generator=generator)
    flip = torch.where(u[:, 9] < 0.5, -1.0, 1.0) if policy.hflip else torch.ones(n)
    y = _affine(
        x,
        angle=(u[:, 0] - 0.5) * math.radians(50),
        scale=1.0 + (u[:, 1] - 0.5) * 0.4,
        shear=(u[:, 2] - 0.5) * 0.6,
        tx=(u[:, 3] - 0.5) * 0.6,
        ty=(u[:, 4] - 0.5) * 0.6,
        flip=flip,
    )
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    contrast = (0.5 + u[:, 5]).view(n, 1, 1, 1).to(y.device)
    brightness = ((u[:, 6] - 0.5) * 0.6).view(n, 1, 1, 1).to(y.device)
    y = (y - mean) * contrast + mean + brightness
    y = y + 0.1 * torch.randn(y.shape, generator=generator).to(y.device)
    # Cutout: one square per image set to the dataset mean (0 after normalization).
    side = (torch.minimum(torch.tensor(h), torch.tensor(w)) * (0.25 + 0.25 * u[:, 7])).long().clamp(min=1)
    cy = (u[:, 8] * h).long()
    cx = (torch.rand(n, generator=generator) * w).long()
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    half = (side // 2).view(n, 1, 1)
    mask = ((rows - cy.view(n, 1, 1)).abs() <= half) & ((cols - cx.view(n, 1, 1)).abs() <= half)
    return y.masked_fill(mask.unsqueeze(1).to(y.device), 0.0)


# Test-time augmentations for hard examples, numbered as ModelArts' hard-example reasons
# (docs/architecture.md, "Sources"):
# 20 flip left-right, 21 crop, 23 scale, 24 translate, 28 add (a brightness shift, either way).
TTA_REASONS = {"flip_lr": 20, "crop": 21, "scale": 23, "translate": 24, "brighter": 28, "darker": 28}

BRIGHTNESS_VIEWS = ("brighter", "darker")
"""Views whose disagreement alone makes an image hard (hard_examples.py): a prediction that a small change
of brightness overturns rests on the image's grey level, not on what it shows. On the 32 px textures of
issue 12 (near-uniform grey patches taken for one another with all five members agreeing) this caught 42%
of the wrong auto-labels and 5.2% of the right ones; on letters 10% and 0.8%, on 8x8 digits 4% and 0.3%
(docs/benchmarks.md, issue 12 round 13)."""

BRIGHTNESS_SHIFT = 0.05
"""The brightness views' shift, as a share of the pixel range (0.05: about 13 of 255 grey levels)."""


def tta_views(policy: AugmentPolicy) -> list[str]:
    """The test-time augmentations that the model was trained to be invariant to, then the brightness
    views (small enough that a person would give the same label)."""
    views = ["crop", "scale", "translate", *BRIGHTNESS_VIEWS]
    if policy.hflip:
        views.insert(0, "flip_lr")
    return views


def apply_tta(
    x: torch.Tensor, view: str, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> torch.Tensor:
    """One deterministic test-time view of a batch normalized with `mean` and `std` (per channel; needed by
    the brightness views, which shift the pixels and keep them inside the pixel range)."""
    n = x.shape[0]
    ones, zeros = torch.ones(n), torch.zeros(n)
    if view == "flip_lr":
        return torch.flip(x, dims=[3])
    if view == "crop":  # central 80% crop, resized back up
        return _affine(x, zeros, ones * 1.25, zeros, zeros, zeros, ones)
    if view == "scale":  # zoom out to 85%
        return _affine(x, zeros, ones * 0.85, zeros, zeros, zeros, ones)
    if view == "translate":  # shift by 1/8 of the side, right and down
        return _affine(x, zeros, ones, zeros, ones * -0.25, ones * -0.25, ones)
    if view in BRIGHTNESS_VIEWS:
        if mean is None or std is None:
            raise ValueError(f"test-time view {view!r} needs the normalization's mean and std")
        m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        shift = BRIGHTNESS_SHIFT if view == "brighter" else -BRIGHTNESS_SHIFT
        return torch.clamp(x + shift / s, min=-m / s, max=(1.0 - m) / s)
    raise ValueError(f"unknown test-time augmentation {view!r}")
