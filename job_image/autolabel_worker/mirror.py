"""Do mirror images keep the class, and are they like the images to label? Read off the images before training.

Mirroring is a free doubling of the data for photographs and textures, and wrong for writing: a mirrored b
is a d, a mirrored 2 or F no character at all. Image size alone cannot tell them apart (glyphs and digits
come at 32 px and more), so the images decide, in two ways.

The labeled images: where a class looks the same mirrored (its images as likely mirrored as not), a
labeled image mirrored is as close to the other labeled images of its class as the image itself; where
mirroring changes the shape, it is farther. So each labeled image's distance to its nearest other labeled
image of its class is measured as it is and mirrored, and the statistic is the mean log ratio of the two.
Its null distribution comes from the labeled images themselves: if mirroring kept the classes, the set with
any of its images mirrored would be as likely as the set as it is, so the statistic is recomputed on
`DRAWS` random mirrorings of the set (a randomization test, exact whatever the images share as long as each
one's orientation is its own coin: two crops of one texture are each other's nearest neighbour, which made
a plain sign test over the images too eager).

The unlabeled images (a sample of `MIRROR_POOL_SAMPLE`): the same statistic with no classes, each image against
its nearest other image of the sample. It asks whether mirrored images look like the images the job must
label. Where they do not (writing, digits, X-rays, frames of fixed cameras, products photographed facing
one way), a mirror image teaches the model about images it will never be asked about, and where it changes
the class, the wrong thing; with 300 images instead of 5 per class, it is the far stronger test (issue 12
round 14: p at its floor on every run of the tuning glyphs and digits, and on all 50 report capital runs of
seeds 85-134, a third of which the labeled test had kept mirror images on). It cannot see a mirror image
that is another class of the set (b and d, both in the pool): the labeled test does.

Two views of an image are compared, because neither alone sees both kinds of data: its layout (grey,
pooled to at most 16 px, standardized; it separates the digits) and its spectrum (the log magnitude of its
Fourier transform around the lowest frequencies; blind to shifts, it separates glyphs drawn in many places
and fonts; blind to a half turn too, so it cannot tell a shape from its mirror image when that is the shape
turned upside down, as '<' and '>'). Mirror images are left out when any of the four tests (two sets, two
views) is significant (`MIRROR_ALPHA` each, Bonferroni over the four). With little evidence, the mirror
stays. Near-duplicate images facing the same way (frames of one video) make mirrored images look farther
in both tests; the summary's note says how to overrule.

Chosen on the tuning group (issue 12, rounds 10, 11 and 14, docs/benchmarks.md). Round 10 asked instead
whether each image's nearest labeled neighbour changes class when mirrored: right for letters whose mirror
images are other letters of the set (b and d), too weak for capitals whose mirror images are no letter.
Round 11's labeled test alone left them out on 23 of 24 runs of the tuning capitals and 19 of 25 of the
report's; without mirror images the tuning capitals' models went from 0.91 to 0.96 right and the
lower-case glyphs' from 0.78 to 0.92, while photographs whose crops are turned and mirrored at random fell
from 0.77 to 0.73 (neither test fires on them: lowest p 0.037).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from autolabel.api import MirrorImages

MIRROR_MIN_SIDE = 32
"""Smaller images (8x8 digits and the like) are never mirrored under `MirrorImages.AUTO`."""
MIRROR_ALPHA = 0.0125
"""The level of each of the four tests (0.05 over all; round 11 had the two labeled ones at 0.025 each)."""
LAYOUT_SIDE = 16
SPECTRUM_SIDE = 32
"""Images are pooled to at most this side before their spectrum (as chosen, at 32 px; it bounds the cost
of 224 px images)."""
DRAWS = 400
"""Random mirrorings of the tested set that make each test's null distribution (p resolves to 1/401)."""
MAX_IMAGES = 2000
"""At most this many labeled images, drawn at random, take part (the distances grow with the square)."""
MIRROR_POOL_SAMPLE = 300
"""Unlabeled images the second test draws (2-4 s for both views on one loaded CPU thread, at 32 px)."""
MIN_POOL = 20
"""Fewer unlabeled images than this: the second test is not made."""


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


def class_distances(as_is: torch.Tensor, mirrored: torch.Tensor, labels: np.ndarray) -> list[torch.Tensor]:
    """Per class with two or more labeled images: the (2n, 2n) distances among its n images' features as
    they are (rows and columns 0..n-1) and mirrored (n..2n-1)."""
    blocks = []
    for cls in np.unique(labels):
        rows = torch.from_numpy(np.flatnonzero(labels == cls))
        if len(rows) >= 2:
            both = torch.cat([as_is[rows], mirrored[rows]])
            blocks.append(torch.cdist(both, both))
    return blocks


def _nearest_other(dist: torch.Tensor, queries: torch.Tensor, standing: torch.Tensor) -> torch.Tensor:
    """Each query's distance to its nearest image of the set as it stands (`standing`: rows of `dist`),
    the query's own image left out either way round."""
    d = dist[queries][:, standing]
    d.fill_diagonal_(float("inf"))
    return d.min(dim=1).values.clamp_min(1e-6)


def mean_log_ratio(blocks: list[torch.Tensor], flips: list[torch.Tensor]) -> float:
    """The labeled set as it stands with the images `flips` marks mirrored (per class block, 0/1 per image):
    over its images, the mean of log(d turned / d), d being an image's distance to its nearest other image
    of its class in the set and "turned" that image alone turned the other way round (> 0: farther)."""
    total, count = 0.0, 0
    for dist, flip in zip(blocks, flips, strict=True):
        n = dist.shape[0] // 2
        standing, turned = torch.arange(n) + n * flip, torch.arange(n) + n * (1 - flip)
        total += float(
            (_nearest_other(dist, turned, standing).log() - _nearest_other(dist, standing, standing).log()).sum()
        )
        count += n
    return total / count


def randomization_test(as_is: torch.Tensor, mirrored: torch.Tensor, labels: np.ndarray) -> tuple[float, float]:
    """(p, relative change of the distance) of the mean log ratio against `DRAWS` random mirrorings."""
    blocks = class_distances(as_is, mirrored, labels)
    observed = mean_log_ratio(blocks, [torch.zeros(d.shape[0] // 2, dtype=torch.long) for d in blocks])
    draws = torch.Generator().manual_seed(0)
    as_large = sum(
        mean_log_ratio(blocks, [torch.randint(0, 2, (d.shape[0] // 2,), generator=draws) for d in blocks]) >= observed
        for _ in range(DRAWS)
    )
    return (1 + as_large) / (DRAWS + 1), math.expm1(observed)


def _at_most(n: int, cap: int) -> torch.Tensor | None:
    """Indices of a fixed random draw of `cap` of `n` items, in order; None when all `n` fit."""
    return torch.from_numpy(np.sort(np.random.default_rng(0).permutation(n)[:cap])) if n > cap else None


def _tested_sets(
    x: torch.Tensor, labels: np.ndarray, pool: torch.Tensor | None
) -> list[tuple[str, str, torch.Tensor, np.ndarray]]:
    sets = []
    classes, sizes = np.unique(labels, return_counts=True)
    if len(labels) >= 3 and len(classes) >= 2 and sizes.max() >= 2:
        if (pick := _at_most(len(labels), MAX_IMAGES)) is not None:
            x, labels = x[pick], labels[pick.numpy()]
        sets.append(("labeled images", "their class", x, labels))
    if pool is not None and len(pool) >= MIN_POOL:
        if (pick := _at_most(len(pool), MIRROR_POOL_SAMPLE)) is not None:
            pool = pool[pick]
        sets.append(("unlabeled images", "one another", pool, np.zeros(len(pool), dtype=np.int64)))
    return sets


def mirror_check(
    x: torch.Tensor, labels: np.ndarray, pool: torch.Tensor | None = None, alpha: float = MIRROR_ALPHA
) -> MirrorCheck:
    """Whether to train with mirror images: see the module docstring. `x`: (N, C, H, W) labeled images,
    `labels`: their N class indices; `pool`: (M, C, H, W) unlabeled images (a sample of `MIRROR_POOL_SAMPLE` is
    tested) or None."""
    sets = _tested_sets(x, np.asarray(labels), pool)
    if not sets:
        return MirrorCheck(True, "too few images to test whether mirroring keeps the class")
    findings, farther = [], False
    for images_of, near_what, images, classes in sets:
        mirrored = torch.flip(images, dims=[3])
        found, significant = [], False
        for name, features in (("layout", layout), ("spectrum", spectrum)):
            p, change = randomization_test(features(images), features(mirrored), classes)
            significant |= p < alpha
            found.append(f"{name}: {abs(change):.1%} {'farther' if change >= 0 else 'nearer'}, p={p:.2g}")
        verdict = "farther from" if significant else "as close to"
        findings.append(f"mirrored {images_of} are {verdict} {near_what} ({'; '.join(found)})")
        farther |= significant
    return MirrorCheck(not farther, "; ".join(findings), True)


def mirror_images(
    setting: MirrorImages,
    image_side: int,
    x: torch.Tensor,
    labels: np.ndarray,
    unlabeled: Callable[[], torch.Tensor] | None = None,
) -> MirrorCheck:
    """The job's `activeLearning.mirrorImages`: as set, or under Auto, never below `MIRROR_MIN_SIDE` (the
    images' median side) and else as `mirror_check` finds. `unlabeled` decodes a sample of the unlabeled
    images, called only when the images decide."""
    if setting != MirrorImages.AUTO:
        return MirrorCheck(setting == MirrorImages.ALWAYS, f"activeLearning.mirrorImages is {setting}")
    if image_side < MIRROR_MIN_SIDE:
        return MirrorCheck(False, f"images under {MIRROR_MIN_SIDE} px are never mirrored")
    return mirror_check(x, labels, unlabeled() if unlabeled is not None else None)
