"""Calibration to the target precision, from out-of-fold predictions on the labeled images only.

Two steps:

1. Temperature scaling (Guo et al. 2017): one scalar T that minimizes the negative log-likelihood of the
   out-of-fold logits; it changes confidences, never the predicted label.
2. Thresholds in the manner of threshold-based auto-labeling (anchors §3): among candidate thresholds t,
   take the smallest whose out-of-fold predictions with confidence >= t are correct often enough that a
   one-sided Clopper-Pearson lower bound on their precision is >= the target. Per class (precision of the
   predictions *of* that class) when the class has enough out-of-fold predictions, otherwise one global
   threshold. If no threshold qualifies, nothing is auto-labeled (threshold above 1).

The bound used to *choose* is at confidence 1 - `select_alpha` (default 80%): the safety margin. Whether the
target is *certified* is a separate, stricter question answered at 95% (`verify_alpha`): with every
prediction above the threshold correct, that needs at least 59 of them for a 0.95 target, so small labeled
sets report `targetVerifiable: false` instead of pretending. `estimatedPrecision` is the Laplace estimate
(k+1)/(n+2) over the out-of-fold predictions that pass their thresholds, or None when none pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

SELECT_ALPHA = 0.2
VERIFY_ALPHA = 0.05
MIN_CLASS_POINTS = 30
NEVER = 1.01  # a threshold no probability reaches


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimizing NLL, by a log-spaced grid search refined once (deterministic, no
    optimizer state). Returns 1.0 for empty input."""
    if len(labels) == 0:
        return 1.0

    def nll(t: float) -> float:
        lp = log_softmax(logits / t)
        return float(-lp[np.arange(len(labels)), labels].mean())

    grid = np.exp(np.linspace(math.log(0.05), math.log(20.0), 121))
    best = min(grid, key=nll)
    fine = best * np.exp(np.linspace(-0.06, 0.06, 25))
    return float(min(fine, key=nll))


def binom_tail_ge(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed in log space."""
    if k <= 0:
        return 1.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
        for i in range(k, n + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided lower confidence bound on a success probability after k successes in n trials."""
    if n == 0 or k == 0:
        return 0.0
    if k == n:
        return alpha ** (1.0 / n)
    lo, hi = 0.0, k / n
    for _ in range(60):  # bisection: the tail probability grows with p
        mid = (lo + hi) / 2
        if binom_tail_ge(k, n, mid) < alpha:
            lo = mid
        else:
            hi = mid
    return lo


def smallest_threshold(conf: np.ndarray, correct: np.ndarray, target: float, alpha: float) -> float:
    """Smallest confidence t such that the predictions with conf >= t pass the lower-bound test.

    Returns NEVER when no threshold passes.
    """
    if len(conf) == 0:
        return NEVER
    order = np.argsort(-conf, kind="stable")
    c_sorted, ok_sorted = conf[order], correct[order].astype(np.int64)
    cum_ok = np.cumsum(ok_sorted)
    best = NEVER
    # Candidate thresholds are the observed confidences; with ties, only the last of a run is a valid cut.
    for i in range(len(c_sorted)):
        if i + 1 < len(c_sorted) and c_sorted[i + 1] == c_sorted[i]:
            continue
        n, k = i + 1, int(cum_ok[i])
        if clopper_pearson_lower(k, n, alpha) >= target:
            best = float(c_sorted[i])
    return best


@dataclass
class Calibration:
    temperature: float
    global_threshold: float
    class_thresholds: dict[int, float]  # classes with their own threshold; the others use the global one
    target: float
    estimated_precision: float | None
    verifiable: bool
    supporting_points: int  # out-of-fold predictions above their thresholds
    supporting_correct: int
    oof_points: int
    oof_accuracy: float
    lower_bound_95: float | None
    notes: list[str] = field(default_factory=list)

    def threshold_for(self, cls: int) -> float:
        return self.class_thresholds.get(cls, self.global_threshold)

    def thresholds_array(self, num_classes: int) -> np.ndarray:
        return np.array([self.threshold_for(c) for c in range(num_classes)], dtype=np.float64)

    def to_json(self, labels: list[str]) -> dict:
        return {
            "temperature": round(self.temperature, 6),
            "globalThreshold": round(self.global_threshold, 6),
            "classThresholds": {labels[c]: round(t, 6) for c, t in sorted(self.class_thresholds.items())},
            "targetPrecision": self.target,
            "estimatedPrecision": self.estimated_precision,
            "targetVerifiable": self.verifiable,
            "supportingPoints": self.supporting_points,
            "supportingCorrect": self.supporting_correct,
            "outOfFoldPoints": self.oof_points,
            "outOfFoldAccuracy": round(self.oof_accuracy, 6),
            "lowerBound95": self.lower_bound_95,
            "selectionConfidence": 1 - SELECT_ALPHA,
            "notes": self.notes,
        }


def calibrate(
    oof_logits: np.ndarray,
    labels: np.ndarray,
    target: float,
    select_alpha: float = SELECT_ALPHA,
    verify_alpha: float = VERIFY_ALPHA,
    min_class_points: int = MIN_CLASS_POINTS,
) -> Calibration:
    """Temperature and thresholds from out-of-fold logits (n x C) and true labels (n)."""
    temperature = fit_temperature(oof_logits, labels)
    probs = np.exp(log_softmax(oof_logits / temperature))
    conf = probs.max(axis=1)
    pred = probs.argmax(axis=1)
    correct = pred == labels
    notes: list[str] = []

    global_t = smallest_threshold(conf, correct, target, select_alpha)
    class_t: dict[int, float] = {}
    for cls in np.unique(pred):
        sel = pred == cls
        if sel.sum() >= min_class_points:
            class_t[int(cls)] = smallest_threshold(conf[sel], correct[sel], target, select_alpha)
    if not class_t:
        notes.append(
            f"one global threshold: no class has {min_class_points} out-of-fold predictions for its own"
        )

    thresholds = np.array([class_t.get(int(c), global_t) for c in pred])
    accepted = conf >= thresholds
    n, k = int(accepted.sum()), int((accepted & correct).sum())
    estimated = (k + 1) / (n + 2) if n else None
    lower95 = clopper_pearson_lower(k, n, verify_alpha) if n else None
    verifiable = lower95 is not None and lower95 >= target
    if global_t >= NEVER and not class_t:
        notes.append("no threshold meets the target on the labeled images: nothing is auto-labeled")
    if not verifiable:
        need = math.ceil(math.log(verify_alpha) / math.log(target)) if target < 1 else None
        notes.append(
            f"target not verifiable: {k} of {n} held-out labeled predictions above the threshold are "
            f"correct; certifying {target} at 95% confidence needs at least "
            f"{need if need is not None else 'infinitely many'} correct ones (label more images)"
        )
    return Calibration(
        temperature=temperature,
        global_threshold=global_t,
        class_thresholds=class_t,
        target=target,
        estimated_precision=estimated,
        verifiable=verifiable,
        supporting_points=n,
        supporting_correct=k,
        oof_points=len(labels),
        oof_accuracy=float(correct.mean()) if len(labels) else 0.0,
        lower_bound_95=lower95,
        notes=notes,
    )
