"""A second opinion from a model of another kind: texture statistics and a logistic regression.

The fold models share one recipe, and on texture-like images their errors too: the weak `textures32` runs
put near-uniform patches in one wrong class with all five members agreeing, which nothing the ensemble
sees tells apart (docs/benchmarks.md, rounds 12 and 17). A model that sees only each image's local binary
patterns (rotation-invariant uniform LBP at three radii, Ojala, Pietikainen and Maenpaa, TPAMI 2002) and
its intensity and gradient statistics, fitted on the same labeled images, makes other mistakes. Replayed on
the 25 recorded `textures32` runs of rounds 15-16, it labeled otherwise 166 of the ensemble's 204 wrong
auto-labels and 319 of its right ones; on 20 fresh runs (issue 12, round 18: Fast and Precise, seeds
155-164) it made 177 of 218 wrong auto-labels hard, with 269 right ones, and every run held 0.95 (14 of
20 on the same models without it).

It is only as good as texture statistics are for the classes: on letters and digits it gets 0.2-0.5 of
its own labeled images right under cross-validation, on photograph and texture patches 0.70-1.00 (the
tuning group, seeds 0-5). So it has a say only when its chance-corrected cross-validated accuracy on the
labeled images reaches :data:`MIN_SKILL`; then an image to which it gives the ensemble's class less than half
the chance probability (:data:`DISPUTED_BELOW`) is hard (reason 31, `hard_examples.SECOND_OPINION_DISPUTES`),
after the thresholds are set: it never changes a prediction, a confidence or a threshold.

Round 18 made every image it labels otherwise hard; that also took right labels where it is less accurate
than the ensemble. Round 19 (docs/benchmarks.md) keeps the veto for the labels it finds unlikely, not for
those it merely ranks second: replayed on the 45 recorded `textures32` runs (seeds 135-164, seen), half of
chance kept every run at 0.95 and coverage / oracle at 0.873 (0.824 with the round-18 veto, 0.895 with
none, when 34 of 45 runs held 0.95). On 20 fresh runs (seeds 165-174, Fast and Precise) every run held
0.95 (16 without the veto), and 12 + 33 right auto-labels were made hard where round 18's rule would have
made 69 + 118.

It also confirms: round 20 found that the test-time views and the distance check flagged 0.11 of the pool
that the ensemble had right on the Fast texture runs. Where the second opinion gives the ensemble's class at
least :data:`CONFIRMS_AT`, those flags do not make an image hard (its confidence must still pass its class's
threshold, and reason 1 still applies); the held-out likelihood ratio of the views counts the labeled images
the same way, with the second opinion's held-out probabilities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .ensemble import choose_folds, stratified_folds

SIDE = 32
"""Images are seen as grey SIDE x SIDE thumbnails: the radii below are in its pixels."""

LBP_SCALES = ((8, 1.0), (16, 2.0), (24, 3.0))
"""(neighbours, radius) of the local binary patterns."""

PERCENTILES = (5.0, 25.0, 50.0, 75.0, 95.0)

MIN_SKILL = 0.61
"""Chance-corrected cross-validated accuracy, (acc - 1/C) / (1 - 1/C), at which the second opinion has a
say: halfway between where it is useless and where it helps, on the tuning group. Round 18 (seeds 0-5 of
each): letters and digits at most 0.44, photograph patches at least 0.64 (0.70 right of 6); the gate was
0.55. Round 27: 8x8 digits seeds 0-9 reached 0.578 and 0.556 (31 and 30 of 50 right), and its veto took
those runs' coverage from 0.87-0.96 to 0.74-0.81 (the issue keeps the 8x8 mean), so halfway is now
(0.578 + 0.64) / 2. The report group's textures were at 0.76-1.00 on the 30 runs of rounds 18-20 whose
tables give it."""

DISPUTED_BELOW = 0.5
"""An image is disputed (hard, reason 31) when the second opinion's probability of the ensemble's class is below
this share of chance (1/C). Chosen on the 45 recorded `textures32` runs (seen seeds 135-164): a quarter of
chance let two runs fall below 0.95, half kept all at 0.95 (lowest 0.959) with coverage / oracle 0.873;
chance gave 0.865 and round 18's rule (another class ranked first) 0.824."""

CONFIRMS_AT = 0.75
"""An image is confirmed when the second opinion gives the ensemble's class at least this probability (3:1
odds): then disagreeing test-time views or the distance check do not make it hard (`hard_examples`), in the
pool and, with the second opinion's held-out probabilities, in the held-out views' likelihood ratio alike.
Chosen on the 65 recorded `textures32` runs (seeds 135-174, all seen; round 20): 0.5-0.9 all kept every run
at 0.95; 0.75 took coverage / oracle from 0.869 to 0.922 (Fast 135-164) and 0.826 to 0.912 (Fast 165-174),
with 382 of 387 images it lifted right on Fast 135-164."""

L2 = 1.0
"""Weight of 0.5 * ||W||^2 against the summed log-loss (scikit-learn's LogisticRegression at C=1)."""


def grey_thumbnails(x_u8: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> (N, SIDE, SIDE) float64 grey levels 0..255: ITU-R 601 luma in Pillow's integer
    form (its "L" conversion), so that a grey image stays exactly itself -- the patterns compare pixels
    with >=, and float luma would break the ties of flat regions at random."""
    rgb = x_u8.to(torch.int32)
    luma = (19595 * rgb[:, 0] + 38470 * rgb[:, 1] + 7471 * rgb[:, 2] + 32768) >> 16
    grey = luma.to(torch.float64).unsqueeze(1)
    if grey.shape[-2:] != (SIDE, SIDE):
        grey = F.interpolate(grey, size=(SIDE, SIDE), mode="bilinear", antialias=True, align_corners=False)
    return grey[:, 0]


def lbp_histograms(grey: torch.Tensor, points: int, radius: float) -> torch.Tensor:
    """Per image, the share of pixels of each rotation-invariant uniform pattern (points + 2 bins).

    Each pixel's `points` neighbours on a circle of `radius` (bilinear, zero outside the image) are compared
    with it (>=); a pattern with at most two 0/1 changes around the circle is coded by its number of ones,
    every other pattern by points + 1. The interpolation is scikit-image's, term by term in float64, so
    that ties (flat regions) come out as they do there; a term whose weight is exactly 0 is left out,
    which changes no bit."""
    n, h, w = grey.shape
    pad = math.ceil(radius) + 1
    padded = F.pad(grey, (pad, pad, pad, pad))

    def shifted(dy: int, dx: int) -> torch.Tensor:
        return padded[:, pad + dy : pad + dy + h, pad + dx : pad + dx + w]

    def along_x(y: int, x0: int, fx: float) -> torch.Tensor:
        return shifted(y, x0) if fx == 0 else (1 - fx) * shifted(y, x0) + fx * shifted(y, x0 + 1)

    ones = torch.zeros((n, h, w), dtype=torch.uint8)
    changes = torch.zeros((n, h, w), dtype=torch.uint8)
    first = previous = torch.zeros((n, h, w), dtype=torch.bool)
    for p in range(points):
        dy = round(-radius * math.sin(2 * math.pi * p / points), 5)
        dx = round(radius * math.cos(2 * math.pi * p / points), 5)
        y0, x0 = math.floor(dy), math.floor(dx)
        fy, fx = dy - y0, dx - x0
        top = along_x(y0, x0, fx)
        neighbour = top if fy == 0 else (1 - fy) * top + fy * along_x(y0 + 1, x0, fx)
        bit = neighbour >= grey
        ones += bit
        if p == 0:
            first = bit
        else:
            changes += bit != previous
        previous = bit
    changes += previous != first  # around the circle
    codes = torch.where(changes <= 2, ones, torch.full_like(ones, points + 1)).reshape(n, -1).long()
    counts = torch.zeros((n, points + 2), dtype=torch.float64)
    counts.scatter_add_(1, codes, torch.ones_like(codes, dtype=torch.float64))
    return counts / (h * w)


def texture_features(x_u8: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) uint8 -> (N, 63): LBP histograms, grey mean and deviation, the gradient magnitude's mean
    and deviation, grey percentiles.

    Speed on one CPU thread, batches of 256 (best of 3, beside two other busy processes): 1,096 images/s
    from 32 px, 1,002 from 64 px, 326 from 224 px (the grey copy and its resizing then dominate); the
    worker's CNN ensemble on CPU runs at about 1,500-2,000 images/s at 32 px (docs/benchmarks.md, "Worker
    at its ceiling"), so where the second opinion is used it costs inference up to about half its speed."""
    grey = grey_thumbnails(x_u8)
    n = len(grey)
    gy, gx = torch.gradient(grey, dim=(1, 2))
    magnitude = torch.hypot(gx, gy).reshape(n, -1)
    flat = grey.reshape(n, -1)
    q = torch.tensor([p / 100 for p in PERCENTILES], dtype=torch.float64)
    parts = [lbp_histograms(grey, points, radius) for points, radius in LBP_SCALES]
    parts += [
        torch.stack([flat.mean(1), flat.std(1, correction=0), magnitude.mean(1), magnitude.std(1, correction=0)], 1),
        torch.quantile(flat, q, dim=1).T,
    ]
    return torch.cat(parts, dim=1).numpy()


@dataclass
class TextureClassifier:
    """Standardized features -> multinomial logistic regression."""

    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray  # (F, C)
    bias: np.ndarray  # (C,)

    def logits(self, features: np.ndarray) -> np.ndarray:
        return ((features - self.mean) / self.scale) @ self.weight + self.bias

    def predict(self, features: np.ndarray) -> np.ndarray:
        return np.argmax(self.logits(features), axis=1)

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        logits = self.logits(features)
        odds = np.exp(logits - logits.max(axis=1, keepdims=True))
        return odds / odds.sum(axis=1, keepdims=True)


def fit_logistic(features: np.ndarray, labels: np.ndarray, num_classes: int, l2: float = L2) -> TextureClassifier:
    """Minimise the summed cross-entropy plus l2/2 * ||W||^2 (the bias is not penalised) with L-BFGS."""
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale[scale == 0] = 1.0
    x = torch.from_numpy((features - mean) / scale)
    y = torch.from_numpy(labels)
    weight = torch.zeros((x.shape[1], num_classes), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe"
    )

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = F.cross_entropy(x @ weight + bias, y, reduction="sum") + 0.5 * l2 * (weight * weight).sum()
        value.backward()
        return value

    optimizer.step(loss)
    return TextureClassifier(mean, scale, weight.detach().numpy().copy(), bias.detach().numpy().copy())


@dataclass
class SecondOpinion:
    classifier: TextureClassifier | None
    """None: it has no say (too few labeled images, or not skilled enough)."""
    cross_validated_accuracy: float | None
    skill: float | None
    reason: str
    held_out_probabilities: np.ndarray | None = None
    """(labeled images, C): each labeled image's probabilities from the fold model that did not see it."""

    @classmethod
    def silent(cls, reason: str) -> SecondOpinion:
        return cls(None, None, None, reason)

    @property
    def used(self) -> bool:
        return self.classifier is not None

    def support(self, x_u8: torch.Tensor, pred: np.ndarray) -> np.ndarray:
        """Per image, its probability of the class `pred` as a multiple of chance (C * p: 1 is chance), or NaN
        everywhere when it has no say."""
        if self.classifier is None:
            return np.full(len(x_u8), np.nan)
        return _over_chance(self.classifier.probabilities(texture_features(x_u8)), pred)

    def held_out_support(self, pred: np.ndarray) -> np.ndarray:
        """`support` of the labeled images' held-out predictions `pred`, from the fold models that did not
        see them (NaN everywhere when it has no say)."""
        if self.classifier is None or self.held_out_probabilities is None:
            return np.full(len(pred), np.nan)
        return _over_chance(self.held_out_probabilities, pred)

    def notes(self) -> list[str]:
        """For summary.json's notes, when it has a say."""
        return (
            [
                f"Second opinion {self.reason}: an image to which it gives the predicted class less than"
                f" {DISPUTED_BELOW} of chance is hard (reason 31); one to which it gives at least"
                f" {CONFIRMS_AT:.0%} is not made hard by the test-time views or the distance check"
            ]
            if self.used
            else []
        )

    def to_json(self) -> dict[str, object]:
        return {
            "used": self.used,
            "crossValidatedAccuracy": _rounded(self.cross_validated_accuracy),
            "skill": _rounded(self.skill),
            "minSkill": MIN_SKILL,
            "disputedBelow": DISPUTED_BELOW,
            "confirmsAt": CONFIRMS_AT,
            "reason": self.reason,
        }


def disputed(support: np.ndarray) -> np.ndarray:
    """Where the second opinion finds the predicted class unlikely (NaN, no say: never)."""
    return np.asarray(support < DISPUTED_BELOW)


def confirmed(support: np.ndarray, num_classes: int) -> np.ndarray:
    """Where the second opinion gives the predicted class at least CONFIRMS_AT (NaN, no say: never)."""
    return np.asarray(support >= CONFIRMS_AT * num_classes)


def _over_chance(probs: np.ndarray, pred: np.ndarray) -> np.ndarray:
    return probs.shape[1] * probs[np.arange(len(pred)), pred]


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def chance_corrected(accuracy: float, num_classes: int) -> float:
    chance = 1.0 / num_classes
    return (accuracy - chance) / (1.0 - chance)


def fit_second_opinion(x_u8: torch.Tensor, labels: np.ndarray, num_classes: int, seed: int) -> SecondOpinion:
    """Cross-validate the texture model on the labeled images (stratified folds, as the ensemble's); fit
    it on all of them when its skill reaches MIN_SKILL."""
    if num_classes < 2 or len(labels) == 0 or np.bincount(labels, minlength=num_classes).min() < 2:
        return SecondOpinion.silent("not used: a class has fewer than 2 labeled images")
    features = texture_features(x_u8)
    folds = stratified_folds(labels, choose_folds(labels, 5), seed)
    held_out = np.zeros((len(labels), num_classes))
    for held in folds:
        train = np.setdiff1d(np.arange(len(labels)), held)
        held_out[held] = fit_logistic(features[train], labels[train], num_classes).probabilities(features[held])
    right = int((held_out.argmax(axis=1) == labels).sum())
    accuracy = right / len(labels)
    skill = chance_corrected(accuracy, num_classes)
    said = (
        f"texture statistics got {right} of {len(labels)} labeled images right under cross-validation"
        f" (skill {skill:.2f}"
    )
    if skill < MIN_SKILL:
        return SecondOpinion(None, accuracy, skill, f"not used: {said} < {MIN_SKILL})")
    classifier = fit_logistic(features, labels, num_classes)
    return SecondOpinion(classifier, accuracy, skill, f"used: {said} >= {MIN_SKILL})", held_out)
