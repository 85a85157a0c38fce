"""Do mirror images keep their class? Read off the labeled images before training.

Mirroring is a free doubling of the data for photographs and textures, and wrong for writing: a mirrored
b is a d, a mirrored 2 no digit at all. Image size alone cannot tell them apart (glyphs and digits come at
32 px and more), so the labeled images decide. Where a class looks the same mirrored (its images as likely
mirrored as not), a labeled image mirrored is as close to the other labeled images of its class as the
image itself: which of the two is closer is a coin toss. Where mirroring changes the shape, the mirrored
image is farther from its class, nearly every time. So each labeled image's distance to its nearest
labeled neighbour of its own class (itself left out) is measured as it is and mirrored, and a one-sided
sign test asks whether the mirrored images are farther more often than a coin would make them. Two views of
an image are compared, because neither alone sees both kinds of data: its layout (grey, pooled to at most
16 px, standardized; it separates the digits) and its spectrum (the log magnitude of its Fourier transform
around the lowest frequencies; blind to shifts, it separates glyphs drawn in many places and fonts; blind
to a half turn too, so it cannot tell a shape from its mirror image when that is the shape turned upside
down, as '<' and '>'). Mirror images are left out when either view is significant (`MIRROR_ALPHA` each,
Bonferroni over the two). With little evidence, the mirror stays.

Chosen on the tuning group (issue 12, docs/benchmarks.md). Round 10 asked instead whether each image's
nearest labeled neighbour changes class when mirrored (McNemar's test): right for letters whose mirror
images are other letters of the set (b and d), too weak for capitals whose mirror images are no letter at
all (few of them become another capital); it left mirror images out on 16 of 24 runs of the tuning
capitals (`glyphs-upper32`), and on 2 of 10 of the report's. Round 11's distance test: 23 of 24 of the
tuning capitals, 16 of 16 lower-case glyph and digit runs, and 1 of 24 and 0 of 8 photograph runs at 32
and 64 px (the photographs' mirror images are drawn as often as not, so that is its false alarm rate: the
test's level). Without mirror images the lower-case glyphs' models went from 0.78 to 0.92 right (round
10); the photographs' fell from 0.77 to 0.73.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from autolabel.api import MirrorImages

from .calibrate import binom_tail_ge

MIRROR_MIN_SIDE = 32
"""Smaller images (8x8 digits and the like) are never mirrored under `MirrorImages.AUTO`."""
MIRROR_ALPHA = 0.025
"""The level of each of the two tests (0.05 over both)."""
LAYOUT_SIDE = 16
SPECTRUM_SIDE = 32
"""Images are pooled to at most this side before their spectrum (as chosen, at 32 px; it bounds the cost
of 224 px images)."""
MAX_IMAGES = 2000
"""At most this many labeled images, drawn at random, take part (the distances grow with the square)."""


@dataclass(frozen=True)
class MirrorCheck:
    keeps_class: bool
    reason: str
    tested: bool = False
    """The labeled images decided (not the job's setting or the images' size)."""

    def notes(self) -> list[str]:
        """For the summary's notes, when the labeled images decided: how to overrule them."""
        if not self.tested:
            return []
        used = "used" if self.keeps_class else "left out"
        return [
            f"mirror images were {used} in training: {self.reason}; activeLearning.mirrorImages: Never (text, "
            "digits) or Always (photographs) overrules this"
        ]


def _standardized(rows: torch.Tensor) -> torch.Tensor:
    rows = rows.flatten(1)
    return (rows - rows.mean(dim=1, keepdim=True)) / (rows.std(dim=1, keepdim=True) + 1e-6)


def layout(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) images -> (N, D) grey pixels pooled to at most `LAYOUT_SIDE` px a side, per image standardized."""
    grey = x.float().mean(dim=1, keepdim=True)
    side = min(LAYOUT_SIDE, grey.shape[-2]), min(LAYOUT_SIDE, grey.shape[-1])
    return _standardized(F.adaptive_avg_pool2d(grey, side))


def spectrum(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) images -> (N, D) log magnitudes of the centred 2-D Fourier transform, the central half of
    each side (the lower frequencies), per image standardized. A shift of the image leaves it unchanged; a
    mirror image mirrors it."""
    grey = x.float().mean(dim=1, keepdim=True)
    side = min(SPECTRUM_SIDE, grey.shape[-2]), min(SPECTRUM_SIDE, grey.shape[-1])
    grey = F.adaptive_avg_pool2d(grey, side)[:, 0]
    grey = (grey - grey.mean(dim=(1, 2), keepdim=True)) / (grey.std(dim=(1, 2), keepdim=True) + 1e-6)
    mag = torch.fft.fftshift(torch.fft.fft2(grey).abs(), dim=(-2, -1))
    h, w = mag.shape[-2:]
    top, left = h // 2 - h // 4, w // 2 - w // 4
    return _standardized(torch.log1p(mag[:, top : top + max(1, h // 2), left : left + max(1, w // 2)]))


def own_class_distance(queries: torch.Tensor, references: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
    """Each query's distance to its nearest reference of the same label, the reference at the query's own
    index left out; queries and references are (N, D) rows of the same N labeled images (inf for a label
    with one image)."""
    dist = torch.cdist(queries, references)
    dist.fill_diagonal_(float("inf"))
    other_class = torch.from_numpy(labels[:, None] != labels[None, :])
    return dist.masked_fill(other_class, float("inf")).min(dim=1).values


def mirror_check(x: torch.Tensor, labels: np.ndarray, alpha: float = MIRROR_ALPHA) -> MirrorCheck:
    """Whether to train with mirror images: see the module docstring. `x`: (N, C, H, W) labeled images,
    `labels`: their N class indices."""
    labels = np.asarray(labels)
    if len(labels) > MAX_IMAGES:
        pick = np.sort(np.random.default_rng(0).permutation(len(labels))[:MAX_IMAGES])
        x, labels = x[torch.from_numpy(pick)], labels[pick]
    if len(labels) < 3 or len(np.unique(labels)) < 2:
        return MirrorCheck(True, "too few labeled images to test whether mirroring keeps the class")
    mirrored = torch.flip(x, dims=[3])
    found = []
    for name, features in (("layout", layout), ("spectrum", spectrum)):
        reference = features(x)
        as_is = own_class_distance(reference, reference, labels)
        change = own_class_distance(features(mirrored), reference, labels) - as_is
        farther, nearer = int((change > 0).sum()), int((change < 0).sum())
        p = binom_tail_ge(farther, farther + nearer, 0.5)
        found.append((p < alpha, f"{name}: {farther} farther, {nearer} nearer, p={p:.2g}"))
    counts = "; ".join(text for _, text in found)
    if any(significant for significant, _ in found):
        return MirrorCheck(False, f"mirrored labeled images are farther from their class ({counts})", True)
    return MirrorCheck(True, f"mirrored labeled images are as close to their class ({counts})", True)


def mirror_images(setting: MirrorImages, image_side: int, x: torch.Tensor, labels: np.ndarray) -> MirrorCheck:
    """The job's `activeLearning.mirrorImages`: as set, or under Auto, never below `MIRROR_MIN_SIDE` (the
    images' median side) and else as `mirror_check` finds."""
    if setting != MirrorImages.AUTO:
        return MirrorCheck(setting == MirrorImages.ALWAYS, f"activeLearning.mirrorImages is {setting}")
    if image_side < MIRROR_MIN_SIDE:
        return MirrorCheck(False, f"images under {MIRROR_MIN_SIDE} px are never mirrored")
    return mirror_check(x, labels)
