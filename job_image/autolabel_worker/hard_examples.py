"""Hard examples: which predictions a person should check, why, and how badly.

Reason IDs follow ModelArts' numbering (docs/architecture.md, "Sources"):

- 1: low confidence: the calibrated confidence is below the threshold of the predicted class;
- 3: far from the training data of its class: in the models' feature space, the nearest labeled image of
  the predicted class is farther away than labeled images of one class usually are from each other;
- 20, 21, 23, 24: the prediction changes under a test-time augmentation (flip left-right, crop, scale,
  translate) that the model was trained to be invariant to;
- 28: the prediction changes when the image is made a little brighter or darker (augment.BRIGHTNESS_VIEWS);
- 31 (this worker's own, beyond ModelArts' 0-30): a second model of another kind, fitted on the same labeled
  images, finds the predicted class unlikely (second_opinion.py; only where that model is skilled enough).

Reason 0 ("no object found") does not apply to classification.

What makes an image hard: reason 1 alone; or reason 28 alone; or reason 31 alone; or at least two of the other
test-time views disagreeing; or being far from its class *and* one view disagreeing. A single signal of the
weaker kinds does not: on the digits benchmark, images whose only flag was one disagreeing view were labeled
right 100% of the time and those only far from their class 86% (docs/benchmarks.md), so flagging them cost
coverage for no precision.
Where the second opinion *confirms* the label (gives it at least `second_opinion.CONFIRMS_AT`), the views and
the distance make nothing hard: on the recorded texture runs 382 of the 387 images this let through on Fast
were right (docs/benchmarks.md, round 20).
Reasons are listed on hard lines only. The hard coefficient (0..1, higher means more in need of a person)
is ``1 - confidence * agreement * nearness * seconded``: the calibrated confidence, discounted by the share of
test-time views that agree, halved when the image is far from its class and halved again when the second
opinion disputes the label; it ranks every image, hard or not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .augment import BRIGHTNESS_VIEWS
from .second_opinion import confirmed, disputed

LOW_CONFIDENCE = 1
FAR_FROM_CLASS = 3
SECOND_OPINION_DISPUTES = 31
"""Beyond ModelArts' numbering: its nearest, 2 ("clustering disagrees with the prediction"), is a clustering
of the unlabeled images, not a second classifier."""


@dataclass
class Verdicts:
    hard: np.ndarray  # bool (n,)
    coefficient: np.ndarray  # float (n,)
    reasons: list[list[int]]


@dataclass
class HardExampleRule:
    thresholds: np.ndarray
    """Per class: predictions below their class's threshold get reason 1 (a value > 1 means never trust)."""
    tta_reasons: dict[str, int]
    """Test-time view name -> reason ID."""
    distance_limits: np.ndarray | None = None
    """Per class: feature distances above this get reason 3 (None: reason 3 not used)."""
    min_disagreeing_views: int = 2
    """Test-time views that must disagree for an image to be hard on that ground alone."""
    decisive_views: frozenset[str] = field(default_factory=lambda: frozenset(BRIGHTNESS_VIEWS))
    """Views whose disagreement alone makes an image hard."""

    def judge(
        self,
        pred: np.ndarray,
        conf: np.ndarray,
        tta_pred: dict[str, np.ndarray] | None = None,
        distance: np.ndarray | None = None,
        support: np.ndarray | None = None,
    ) -> Verdicts:
        """`support`: the second opinion's probability of the predicted class over chance per image (NaN where it
        has no say; `second_opinion.SecondOpinion.support`)."""
        n = len(pred)
        found: list[list[int]] = [[] for _ in range(n)]

        low = conf < self.thresholds[pred]
        for i in np.flatnonzero(low):
            found[i].append(LOW_CONFIDENCE)

        far = np.zeros(n, dtype=bool)
        if distance is not None and self.distance_limits is not None:
            far = distance > self.distance_limits[pred]
            for i in np.flatnonzero(far):
                found[i].append(FAR_FROM_CLASS)

        views = sorted((tta_pred or {}).items(), key=lambda kv: self.tta_reasons[kv[0]])
        disagree, decisive = self._disagreements(pred, dict(views))
        for view, view_pred in views:
            for i in np.flatnonzero(view_pred != pred):
                found[i].append(self.tta_reasons[view])
        disputes = np.zeros(n, dtype=bool) if support is None else disputed(support)
        for i in np.flatnonzero(disputes):
            found[i].append(SECOND_OPINION_DISPUTES)
        flagged = low | disputes | self._unconfirmed(self._other_flags(disagree, decisive, far, len(views)), support)
        agreement = 1.0 - disagree / max(len(views), 1)
        nearness = np.where(far, 0.5, 1.0)
        seconded = np.where(disputes, 0.5, 1.0)
        coefficient = np.clip(1.0 - conf * agreement * nearness * seconded, 0.0, 1.0)
        reasons = [sorted(set(r)) if flagged[i] else [] for i, r in enumerate(found)]
        return Verdicts(flagged, coefficient, reasons)

    def _disagreements(self, pred: np.ndarray, views: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Per image: how many views disagree, and whether a decisive one does."""
        disagree = np.zeros(len(pred), dtype=np.int64)
        decisive = np.zeros(len(pred), dtype=bool)
        for view, view_pred in views.items():
            differs = view_pred != pred
            disagree += differs
            if view in self.decisive_views:
                decisive |= differs
        return disagree, decisive

    def _other_flags(self, disagree: np.ndarray, decisive: np.ndarray, far: np.ndarray, views: int) -> np.ndarray:
        needed = min(self.min_disagreeing_views, views) if views else 1
        return ((disagree >= needed) & (views > 0)) | decisive | (far & (disagree >= 1))

    def _unconfirmed(self, other: np.ndarray, support: np.ndarray | None) -> np.ndarray:
        return other if support is None else other & ~confirmed(support, len(self.thresholds))

    def flagged_apart_from_confidence(
        self,
        pred: np.ndarray,
        tta_pred: dict[str, np.ndarray] | None = None,
        distance: np.ndarray | None = None,
        support: np.ndarray | None = None,
    ) -> np.ndarray:
        """Which predictions are hard whatever their confidence (test-time views, distance), unless the second
        opinion confirms them (`support`, as in `judge`).

        Calibration sets the confidence thresholds over the *other* predictions, so that the set finally
        auto-labeled (not flagged here and above its threshold) is the one whose precision is estimated.
        """
        views = tta_pred or {}
        disagree, decisive = self._disagreements(pred, views)
        far = np.zeros(len(pred), dtype=bool)
        if distance is not None and self.distance_limits is not None:
            far = distance > self.distance_limits[pred]
        return self._unconfirmed(self._other_flags(disagree, decisive, far, len(views)), support)


def nearest_same_class_distance(
    feats: np.ndarray, ref_feats: np.ndarray, ref_labels: np.ndarray, pred: np.ndarray, num_classes: int
) -> np.ndarray:
    """Cosine distance (0..2) from each row of `feats` to the nearest reference row of its predicted class.

    Rows of `feats`/`ref_feats` are unit-norm (or concatenations of K unit-norm parts, scaled by 1/sqrt(K)).
    A predicted class without references gets distance 2 (as far as possible).
    """
    sims = feats @ ref_feats.T  # (n, m)
    out = np.full(len(feats), 2.0)
    for cls in range(num_classes):
        rows = np.flatnonzero(pred == cls)
        cols = np.flatnonzero(ref_labels == cls)
        if len(rows) and len(cols):
            out[rows] = 1.0 - sims[np.ix_(rows, cols)].max(axis=1)
    return out


def distance_limits(ref_feats: np.ndarray, ref_labels: np.ndarray, num_classes: int, factor: float = 2.0) -> np.ndarray:
    """Per-class reason-3 limits: `factor` times the largest leave-one-out nearest-neighbour distance
    among the class's labeled images (the pooled median over classes when a class has a single image)."""
    sims = ref_feats @ ref_feats.T
    np.fill_diagonal(sims, -np.inf)
    loo = np.full(len(ref_feats), np.nan)
    for cls in range(num_classes):
        members = np.flatnonzero(ref_labels == cls)
        if len(members) > 1:
            loo[members] = 1.0 - sims[np.ix_(members, members)].max(axis=1)
    pooled = float(np.nanmedian(loo)) if np.isfinite(loo).any() else 1.0
    limits = np.full(num_classes, pooled * factor)
    for cls in range(num_classes):
        vals = loo[ref_labels == cls]
        vals = vals[np.isfinite(vals)]
        if len(vals):
            limits[cls] = max(float(vals.max()), pooled) * factor
    return np.minimum(limits, 2.0)
