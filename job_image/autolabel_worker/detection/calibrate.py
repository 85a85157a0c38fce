"""Image-level acceptance for detection, calibrated on held-out predictions of the labeled images.

An image is right only when all its boxes are: every object found at IoU >= 0.5 with the right label and
no extra box (objects marked ``difficult`` need not be found, and a box on one is not extra). Each box
keeps its own score s = P(object) * P(label | object). Boxes are proposed where the detector's own score
is >= KEEP (the model's decision); the image's confidence is the probability that those boxes are all
right and the dropped candidates are all not objects,
``prod(s kept) * prod(1 - s dropped)``, raised to an exponent gamma >= 1 fitted on the held-out images
(the boxes are not independent, and an object with no candidate at all is not in the product; gamma
absorbs both, never making the model more confident).

The threshold follows the classification path (calibrate.py): the smallest t at which the mean image
confidence of the unlabeled images accepted (confidence >= t, not flagged for another reason) is >= the
target; then a check against the held-out images, and the conservative Clopper-Pearson rule when they
contradict it. ``targetVerifiable`` needs enough held-out images to certify the target at 95%.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import calibrate as cal

KEEP = 0.5
IOU = 0.5


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of [n, 4] and [m, 4] x1 y1 x2 y2 boxes."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def match(
    boxes: np.ndarray,
    scores: np.ndarray,
    gt_boxes: np.ndarray,
    difficult: np.ndarray | None = None,
    iou: float = IOU,
) -> np.ndarray:
    """Greedy matching in descending score order: for each predicted box the index of the ground-truth
    box it matches (IoU >= `iou`, each ground truth at most once), -1 for none."""
    matched = np.full(len(boxes), -1, dtype=np.int64)
    if len(boxes) == 0 or len(gt_boxes) == 0:
        return matched
    overlaps = box_iou(boxes, gt_boxes)
    used = np.zeros(len(gt_boxes), dtype=bool)
    for i in np.argsort(-scores, kind="stable"):
        candidates = np.where(used, -1.0, overlaps[i])
        j = int(candidates.argmax())
        if candidates[j] >= iou:
            matched[i] = j
            used[j] = True
    return matched


def image_right(
    boxes: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    gt_boxes: np.ndarray,
    gt_labels: np.ndarray,
    difficult: np.ndarray | None = None,
) -> bool:
    """All predicted boxes right and every (non-difficult) object found with its label."""
    if difficult is None:
        difficult = np.zeros(len(gt_boxes), dtype=bool)
    m = match(boxes, scores, gt_boxes)
    for i, j in enumerate(m):
        if j < 0 or labels[i] != gt_labels[j]:
            if j >= 0 and difficult[j]:
                continue
            return False
    found = set(int(j) for j in m if j >= 0)
    return all(difficult[j] or j in found for j in range(len(gt_boxes)))


def image_confidence(
    scores: np.ndarray, keep: float = KEEP, gamma: float = 1.0, kept: np.ndarray | None = None
) -> float:
    """P(the kept boxes are right and the dropped candidates are not objects), see the module docstring.
    `kept` marks the proposed boxes (default: score >= keep)."""
    s = np.clip(scores.astype(np.float64), 0.0, 1.0)
    kept = s >= keep if kept is None else kept.astype(bool)
    log_c = float(np.log(np.maximum(s[kept], 1e-12)).sum() + np.log(np.maximum(1 - s[~kept], 1e-12)).sum())
    return math.exp(gamma * log_c)


def fit_platt(raw: np.ndarray, positive: np.ndarray, prior: float = 1.0) -> tuple[float, float]:
    """P(object | raw detector score) = sigmoid(a * logit(raw) + b), maximum a posteriori with a Gaussian
    prior (sd `prior`) on (a - 1, b): with no evidence it is the detector's own score."""
    z = np.log(np.clip(raw, 1e-6, 1 - 1e-6)) - np.log1p(-np.clip(raw, 1e-6, 1 - 1e-6))
    y = positive.astype(np.float64)
    a, b = 1.0, 0.0
    for _ in range(50):  # Newton's method on a 2-parameter concave objective
        p = 1 / (1 + np.exp(-(a * z + b)))
        grad = np.array([((y - p) * z).sum() - (a - 1) / prior**2, (y - p).sum() - b / prior**2])
        w = p * (1 - p)
        hess = -np.array([[(w * z * z).sum() + 1 / prior**2, (w * z).sum()], [(w * z).sum(), w.sum() + 1 / prior**2]])
        step = np.linalg.solve(hess, grad)
        a, b = a - float(step[0]), b - float(step[1])
        if abs(step).max() < 1e-8:
            break
    return a, b


def fit_gamma(log_conf: np.ndarray, right: np.ndarray, prior_sigma: float = 0.5) -> float:
    """Exponent gamma >= 1 on the image confidence (log-normal prior at 1), by grid search."""
    if len(right) == 0:
        return 1.0
    grid = np.exp(np.linspace(0.0, math.log(8.0), 120))

    def loss(g: float) -> float:
        p = np.clip(np.exp(g * log_conf), 1e-9, 1 - 1e-9)
        return float(-(right * np.log(p) + (~right) * np.log(1 - p)).sum()) + math.log(g) ** 2 / (2 * prior_sigma**2)

    return float(min(grid, key=loss))


@dataclass
class ImageCalibration:
    target: float
    threshold: float
    gamma: float
    estimated_precision: float | None
    verifiable: bool
    held_out_images: int
    held_out_accepted: int
    held_out_right: int
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "imageThreshold": round(self.threshold, 6),
            "imageConfidenceExponent": round(self.gamma, 6),
            "keepThreshold": KEEP,
            "heldOutImages": self.held_out_images,
            "heldOutAccepted": self.held_out_accepted,
            "heldOutAcceptedRight": self.held_out_right,
        }


def choose_threshold(
    unlabeled_conf: np.ndarray, oof_conf: np.ndarray, oof_right: np.ndarray, target: float, gamma: float
) -> ImageCalibration:
    """The image threshold (see the module docstring). `unlabeled_conf` holds the images not flagged
    for other reasons; all confidences already include gamma."""
    notes: list[str] = []
    order = np.sort(unlabeled_conf)[::-1]
    threshold = cal.NEVER
    if len(order):
        running = np.cumsum(order) / np.arange(1, len(order) + 1)
        ok = np.flatnonzero(running >= target)
        if len(ok):
            threshold = float(order[ok.max()])
    above = oof_conf >= threshold
    n, k = int(above.sum()), int(oof_right[above].sum())
    if n and cal.binom_cdf_le(k, n, target) < cal.CHECK_ALPHA:
        conservative = cal.smallest_threshold(oof_conf, oof_right, target, cal.SELECT_ALPHA)
        notes.append(
            f"held-out labeled images contradict the calibrated threshold ({k} of {n} right above "
            f"{threshold:.3f}); raised to the conservative threshold {conservative:.3f}"
        )
        threshold = max(threshold, conservative)
        above = oof_conf >= threshold
        n, k = int(above.sum()), int(oof_right[above].sum())
    accepted = unlabeled_conf[unlabeled_conf >= threshold]
    estimated = float(accepted.mean()) if len(accepted) else None
    verifiable = n > 0 and cal.clopper_pearson_lower(k, n, cal.VERIFY_ALPHA) >= target
    if not verifiable:
        notes.append(
            f"{n} held-out labeled image(s) above the threshold, {k} right: too few to certify "
            f"{target} at 95% confidence; estimatedPrecision is an estimate"
        )
    return ImageCalibration(target, threshold, gamma, estimated, verifiable, len(oof_conf), n, k, notes)
