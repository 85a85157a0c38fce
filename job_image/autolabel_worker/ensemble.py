"""The K-fold ensemble that both algorithms share, and its out-of-fold predictions.

Both algorithms train K models, each with one stratified fold of the labeled images held out: Fast with
`train.train_supervised`, Precise with `semi.train_fixmatch`. The held-out predictions ("out-of-fold") are
the only honest evidence of how right the models are on images they did not see, so calibration
(calibrate.py) uses them; the K models together form the ensemble that labels the unlabeled images. No
model is ever scored on images it trained on.

Imports train.py and semi.py; neither of them imports this module.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from .augment import AugmentPolicy, apply_tta
from .models import ModelSpec
from .semi import train_fixmatch
from .train import (
    BatchMix,
    BudgetSchedule,
    ProgressFn,
    TrainConfig,
    TrainingRun,
    predict_logits,
    to_input,
    train_supervised,
)

log = logging.getLogger(__name__)


@dataclass
class FoldEnsemble:
    members: list[nn.Module]
    oof_logits: np.ndarray  # (R, n_labeled, C): per repeat, each row from the model that did not see it
    labels: np.ndarray  # (n_labeled,)
    steps_done: int
    truncated: bool  # the time budget stopped training early (a shortened schedule, or cut by the deadline)
    oof_view_preds: np.ndarray | None = None
    """(R, V, n_labeled): the held-out model's predicted class under each test-time view (calibrate.py)."""
    steps_configured: int = 0
    """Steps all members would have run without a time budget (configured steps x members)."""
    steps_scheduled: int = 0
    """Steps of the members' learning-rate schedules after fitting them to the budget."""
    cut_by_deadline: bool = False
    """Some member was stopped by its deadline before its (fitted) schedule ended: its learning rate never
    decayed."""

    def held_out_accuracy(self) -> float:
        """Accuracy of the out-of-fold predictions (mean over repeats of the held-out models' logits)."""
        if len(self.labels) == 0:
            return float("nan")
        return float((self.oof_logits.mean(axis=0).argmax(axis=1) == self.labels).mean())


@dataclass
class PreciseChoice:
    """Which ensemble a Precise run keeps, and why (summary.json's `precise`, with a note)."""

    use_precise: bool
    reason: str
    fast_accuracy: float
    precise_accuracy: float
    held_out: int

    def to_json(self, fast: FoldEnsemble, precise: FoldEnsemble) -> dict:
        return {
            "modelsUsed": "Precise" if self.use_precise else "Fast",
            "fellBackToFast": not self.use_precise,
            "reason": self.reason,
            "heldOutImages": self.held_out,
            "heldOutAccuracyFast": round(self.fast_accuracy, 6),
            "heldOutAccuracyPrecise": round(self.precise_accuracy, 6),
            "preciseSteps": precise.steps_done,
            "preciseStepsScheduled": precise.steps_scheduled,
            "preciseStepsConfigured": precise.steps_configured,
            "preciseCutByDeadline": precise.cut_by_deadline,
            "fastSteps": fast.steps_done,
        }


def choose_precise(fast: FoldEnsemble, precise: FoldEnsemble) -> PreciseChoice:
    """Keep the semi-supervised ensemble only when it is at least as right as the supervised one on the
    same held-out labeled images, and its training was not cut by the deadline halfway through its
    schedule (a model stopped at a high learning rate). A schedule shortened to fit the budget is not a
    reason by itself: the held-out comparison judges the models it produced."""
    n = len(precise.labels)
    fast_acc, precise_acc = fast.held_out_accuracy(), precise.held_out_accuracy()
    right_fast = round(fast_acc * n)
    right_precise = round(precise_acc * n)
    if precise.cut_by_deadline:
        return PreciseChoice(
            False,
            f"the time budget stopped semi-supervised training before the end of its schedule "
            f"({precise.steps_done} of {precise.steps_scheduled} scheduled steps, {precise.steps_configured} "
            f"configured); held-out accuracy Precise {right_precise}/{n}, Fast {right_fast}/{n}",
            fast_acc,
            precise_acc,
            n,
        )
    if precise_acc < fast_acc:
        return PreciseChoice(
            False,
            f"semi-supervised models are less accurate on the held-out labeled images than the supervised "
            f"ones ({right_precise}/{n} against {right_fast}/{n})",
            fast_acc,
            precise_acc,
            n,
        )
    return PreciseChoice(
        True,
        f"semi-supervised models at least as accurate on the held-out labeled images as the supervised ones "
        f"({right_precise}/{n} against {right_fast}/{n})",
        fast_acc,
        precise_acc,
        n,
    )


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """Split indices into k folds so each class is spread as evenly as possible."""
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    offset = 0
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        for j, idx in enumerate(members):
            folds[(offset + j) % k].append(int(idx))
        offset += len(members)
    return [np.array(sorted(f), dtype=np.int64) for f in folds]


def choose_folds(labels: np.ndarray, wanted: int) -> int:
    """As many folds as wanted, but no more than the smallest class has images (each fold sees every
    class in training) and at least 2."""
    smallest = int(np.bincount(labels).min())
    return max(2, min(wanted, smallest))


def member_spec(spec: ModelSpec, fold: int, folds: int, standardized: int) -> ModelSpec:
    """The spec of one fold's model: `standardized` of the folds (the 2nd, 4th, ...) standardize each image."""
    if spec.arch == "smallcnn" and fold in range(1, folds, 2)[:standardized]:
        return replace(spec, standardize=True)
    return spec


def predict_held_out(
    model: nn.Module, x_held: torch.Tensor, spec: ModelSpec, views: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """One fold model on its held-out labeled images (uint8): the logits (n, C) and, per test-time view,
    the predicted class (V, n)."""
    x = to_input(x_held, spec)
    logits = predict_logits(model, x).double().numpy()
    view_preds = np.zeros((len(views), len(x_held)), dtype=np.int64)
    for v, view in enumerate(views):
        view_preds[v] = predict_logits(model, apply_tta(x, view, spec.mean, spec.std)).argmax(dim=1).numpy()
    return logits, view_preds


def train_fold_ensemble(
    spec: ModelSpec,
    x_lab: torch.Tensor,
    y_lab: np.ndarray,
    policy: AugmentPolicy,
    cfg: TrainConfig,
    budget_seconds: float,
    x_unlab: torch.Tensor | None = None,
    progress: ProgressFn | None = None,
    views: list[str] | None = None,
    init_members: list[nn.Module] | None = None,
    mix: BatchMix | None = None,
) -> FoldEnsemble:
    """Train one model per fold and repeat (supervised, or FixMatch when `x_unlab` is given) in the budget.

    With R repeats (different fold splits), every labeled image is held out by R models, and its
    out-of-fold prediction is their average, like the R x K ensemble's own averaging (a single held-out
    model would calibrate an ensemble as if it were as unsure as one model). The budget is shared evenly:
    each model gets its slice, so a slow machine truncates every model a little instead of dropping some.

    `init_members`: semi-supervised models start from these (an ensemble of the same folds and repeats,
    trained on the same labeled images: Fast's, so no held-out image leaks into its fold model).
    `mix`: see `TrainingRun.mix` (supervised training only).
    """
    k = choose_folds(y_lab, cfg.folds)
    repeats = max(1, cfg.repeats)
    y_t = torch.as_tensor(y_lab, dtype=torch.long)
    oof = np.zeros((repeats, len(y_lab), spec.num_classes), dtype=np.float64)
    views = list(views or [])
    oof_views = np.zeros((repeats, len(views), len(y_lab)), dtype=np.int64)
    members: list[nn.Module] = []
    start = time.monotonic()
    steps_total, truncated_any, scheduled_total, cut_any = 0, False, 0, False
    planned = cfg.ssl_steps if x_unlab is not None else cfg.steps
    total_models = repeats * k
    for r in range(repeats):
        folds = stratified_folds(y_lab, k, cfg.seed + 7919 * r)
        for f, held in enumerate(folds):
            j = r * k + f
            train_idx = np.setdiff1d(np.arange(len(y_lab)), held)

            def fold_progress(done: int, _planned: int, j: int = j) -> None:
                if progress:
                    progress(j * planned + done, total_models * planned)

            deadline = start + budget_seconds * (j + 1) / total_models
            schedule = BudgetSchedule(planned, deadline)
            run = TrainingRun(
                spec=member_spec(spec, f, k, cfg.standardized_members),
                images=x_lab[train_idx],
                labels=y_t[train_idx],
                policy=policy,
                cfg=cfg,
                deadline=deadline,
                seed=cfg.seed * 1000 + j,
                progress=fold_progress,
                schedule=schedule,
                mix=mix,
            )
            if x_unlab is None:
                model, steps, truncated = train_supervised(run)
            else:
                # The held-out labeled images join the unlabeled pool (without labels): they must be
                # exactly as "seen" as the images they stand for, or calibration would be fitted on points
                # the model is less sure of than the unlabeled ones it pseudo-labeled.
                init = init_members[j] if init_members is not None else None
                model, steps, truncated = train_fixmatch(run, torch.cat([x_unlab, x_lab[held]]), init=init)
            steps_total += steps
            truncated_any |= truncated
            scheduled_total += schedule.total
            cut_any |= schedule.cut
            oof[r, held], oof_views[r][:, held] = predict_held_out(model, x_lab[held], spec, views)
            members.append(model)
            log.info(
                "model %d/%d: %d of %d scheduled steps (%d configured)%s",
                j + 1,
                total_models,
                steps,
                schedule.total,
                planned,
                " (cut by the deadline)" if schedule.cut else "",
            )
    return FoldEnsemble(
        members,
        oof,
        y_lab.copy(),
        steps_total,
        truncated_any,
        oof_views if views else None,
        steps_configured=planned * total_models,
        steps_scheduled=scheduled_total,
        cut_by_deadline=cut_any,
    )
