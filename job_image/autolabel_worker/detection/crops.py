"""Training samples for the crop classifier: each labeled object set on other backgrounds, in other colours.

With a few labeled boxes, a classifier of their crops learns the backgrounds. On the digit-boxes sample
(23 labeled crops; accuracy on the 737-749 unlabeled crops of the same dataset, tuning seeds 3 and 4),
the worker's 5-model crop ensemble named 0.62 of them right (seed 3) from the stroke map it used before;
cutting each object out of its crop (`foreground_alpha`) and setting it on a random patch of the labeled
images, its colours permuted, inverted and pulled towards a random colour (`BackgroundSwap`), made that
0.85 (seed 3) and 0.80 (seed 4) from the RGB crops (docs/detection.md). Recolouring is much of it: one small CNN on the
stroke map (seed 3) went from 0.65 to 0.77 with the swap and to 0.87 with the swap and recolouring.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SWAP_SHARE = 0.8
"""Share of the samples of a batch set on another background (the rest keep their own)."""
RECOLOUR_KEEP = 0.5
"""At most this much of the object's own (permuted, maybe inverted) colours is kept; the rest is a random
flat colour. Classes told apart by colour alone are therefore not learned (docs/detection.md)."""
MIN_PATCH = 16
"""Smallest side, in pixels of the source image, of a background patch."""


def foreground_alpha(crops: torch.Tensor) -> torch.Tensor:
    """A soft mask of the object in each crop (float N x 3 x S x S in 0..1 -> N x 1 x S x S in 0..1).

    A labeled box is tight and its crop has a margin around it, so the crop's border is background: the
    mask is each pixel's colour distance to the border's median colour (largest over the channels, after a
    3 x 3 blur against texture noise), scaled so that the crop's 90th percentile is 1.
    """
    x = F.avg_pool2d(crops, 3, stride=1, padding=1, count_include_pad=False)
    border = torch.cat([x[:, :, 0, :], x[:, :, -1, :], x[:, :, :, 0], x[:, :, :, -1]], dim=2)
    background = border.median(dim=2).values[:, :, None, None]
    distance = (x - background).abs().amax(dim=1, keepdim=True)
    scale = distance.flatten(1).quantile(0.9, dim=1).clamp(min=0.05).view(-1, 1, 1, 1)
    return (distance / scale).clamp(0, 1)


def recolour(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each image of `x` (float N x 3 x H x W in 0..1) in other colours: channels permuted, each maybe
    inverted, then pulled at least halfway towards a random flat colour (see the module docstring)."""
    permuted = torch.stack([x[i, torch.randperm(3, generator=gen)] for i in range(len(x))])
    invert = (torch.rand(len(x), 3, 1, 1, generator=gen) < 0.5).float()
    own = permuted * (1 - invert) + (1 - permuted) * invert
    keep = torch.rand(len(x), 1, 1, 1, generator=gen) * RECOLOUR_KEEP
    colour = torch.rand(len(x), 3, 1, 1, generator=gen)
    return keep * own + (1 - keep) * colour


class BackgroundSwap:
    """A `train.BatchMix`: sets a share of the batch's crops on random patches of `images` (uint8
    3 x H x W, the labeled images), each object recoloured (see the module docstring). Every fold model
    draws patches from all labeled images, its held-out ones too: a patch is background, whatever it
    shows, and never carries the held-out boxes' labels."""

    def __init__(self, images: list[torch.Tensor], share: float = SWAP_SHARE):
        if not images:
            raise ValueError("no background images")
        self.images = images
        self.share = share

    def _patch(self, size: int, gen: torch.Generator) -> torch.Tensor:
        image = self.images[int(torch.randint(len(self.images), (1,), generator=gen))]
        h, w = image.shape[1:]
        largest = max(1, min(h, w) // 2)
        side = int(torch.randint(min(MIN_PATCH, largest), largest + 1, (1,), generator=gen))
        top = int(torch.randint(h - side + 1, (1,), generator=gen))
        left = int(torch.randint(w - side + 1, (1,), generator=gen))
        patch = image[None, :, top : top + side, left : left + side].float() / 255.0
        return F.interpolate(patch, size=(size, size), mode="bilinear", align_corners=False)[0]

    def __call__(self, crops: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, _, size, _ = crops.shape
        swap = (torch.rand(n, generator=gen) < self.share).nonzero(as_tuple=True)[0]
        if len(swap) == 0:
            return crops
        x = crops[swap].float() / 255.0
        alpha = foreground_alpha(x)
        foreground = recolour(x, gen)
        background = torch.stack([self._patch(size, gen) for _ in range(len(swap))])
        mixed = background * (1 - alpha) + foreground * alpha
        out = crops.clone()
        out[swap] = (mixed * 255).round().clamp(0, 255).to(torch.uint8)
        return out
