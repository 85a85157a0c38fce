"""Supervised training (algorithm Fast) and the K-fold ensemble that both algorithms share.

Both algorithms train K models, each with one stratified fold of the labeled images held out. The held-out
predictions ("out-of-fold") are the only honest evidence of how right the models are on images they did
not see, so calibration (calibrate.py) uses them; the K models together form the ensemble that labels
the unlabeled images. No model is ever scored on images it trained on.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .augment import AugmentPolicy, apply_tta, strong, weak
from .models import ModelSpec, build_model

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]  # (steps done, steps planned)


@dataclass
class TrainConfig:
    folds: int = 5
    repeats: int = 1
    """Cross-validation repeats: the ensemble has folds x repeats models."""
    steps: int = 400
    """Optimizer steps per fold model (Fast); the time budget may cut them short."""
    batch_size: int = 64
    lr: float = 0.03
    weight_decay: float = 5e-4
    eval_every: int = 50
    patience: int = 4
    """Early stopping: evaluations without a 1% improvement of the smoothed training loss."""
    seed: int = 0
    pretrained: bool = True
    device: str = "cpu"
    # Precise (semi.py)
    ssl_steps: int = 400
    unlabeled_ratio: int = 4
    """FixMatch uses 7; 4 learned digits as well in half the time (docs/benchmarks.md)."""
    ema_decay: float = 0.99
    threshold_momentum: float = 0.99
    unlabeled_weight: float = 1.0
    max_unlabeled: int = 20000
    """At most this many unlabeled images are held in memory for semi-supervised training."""


@dataclass
class FoldEnsemble:
    members: list[nn.Module]
    oof_logits: np.ndarray  # (R, n_labeled, C): per repeat, each row from the model that did not see it
    labels: np.ndarray  # (n_labeled,)
    steps_done: int
    truncated: bool  # the time budget stopped training early
    oof_view_preds: np.ndarray | None = None
    """(R, V, n_labeled): the held-out model's predicted class under each test-time view (calibrate.py)."""


def to_input(x_u8: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """uint8 N x 3 x H x W -> normalized float tensor."""
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x_u8.float() / 255.0 - mean) / std


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


def cosine_lr(base: float, step: int, total: int) -> float:
    """FixMatch's schedule: lr * cos(7 pi k / (16 K))."""
    return base * math.cos(7 * math.pi * step / (16 * max(total, 1)))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or "bn" in name else decay).append(p)
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        momentum=0.9,
        nesterov=True,
    )


def balanced_batch(labels: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Indices drawn with replacement, each class equally likely (tiny, unbalanced labeled sets)."""
    classes = torch.unique(labels)
    picks = classes[torch.randint(len(classes), (size,), generator=generator)]
    out = torch.empty(size, dtype=torch.long)
    for c in classes.tolist():
        where = (picks == c).nonzero(as_tuple=True)[0]
        members = (labels == c).nonzero(as_tuple=True)[0]
        out[where] = members[torch.randint(len(members), (len(where),), generator=generator)]
    return out


def train_supervised(
    spec: ModelSpec,
    x: torch.Tensor,
    y: torch.Tensor,
    policy: AugmentPolicy,
    cfg: TrainConfig,
    deadline: float,
    seed: int,
    progress: ProgressFn | None = None,
) -> tuple[nn.Module, int, bool]:
    """Train one model on labeled images (uint8 tensor) with augmentation and early stopping.

    Returns the model (eval mode), the steps done and whether the deadline cut training short.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    device = torch.device(cfg.device)
    model = build_model(spec, pretrained=cfg.pretrained).to(device)
    opt = make_optimizer(model, cfg)
    xf = to_input(x, spec).to(device)
    y = y.to(device)
    model.train()
    smoothed, best, stale = None, math.inf, 0
    step, truncated = 0, False
    for step in range(1, cfg.steps + 1):
        if time.monotonic() > deadline:
            truncated = True
            break
        for group in opt.param_groups:
            group["lr"] = cosine_lr(cfg.lr, step, cfg.steps)
        idx = balanced_batch(y.cpu(), cfg.batch_size, gen).to(device)
        # Half the batch weakly, half strongly augmented: with 5 images per class the strong views are
        # what keeps the model from memorizing them.
        xb = xf[idx]
        half = cfg.batch_size // 2
        xb = torch.cat([weak(xb[:half], policy, gen), strong(xb[half:], policy, gen)])
        with autocast(device):
            loss = F.cross_entropy(model(xb).float(), y[idx], label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = float(loss.detach())
        smoothed = value if smoothed is None else 0.9 * smoothed + 0.1 * value
        if step % cfg.eval_every == 0:
            if progress:
                progress(step, cfg.steps)
            if smoothed < best * 0.99:
                best, stale = smoothed, 0
            else:
                stale += 1
                if stale >= cfg.patience:
                    log.info("early stop at step %d (loss %.4f)", step, smoothed)
                    break
    model.eval()
    return model, step, truncated


def autocast(device: torch.device) -> torch.autocast:
    """bf16 mixed precision on CUDA; a no-op on the CPU."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Logits on the CPU, computed on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model(x[i : i + batch].to(device)).float().cpu() for i in range(0, len(x), batch)])


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
) -> FoldEnsemble:
    """Train one model per fold and repeat (supervised, or FixMatch when `x_unlab` is given) in the budget.

    With R repeats (different fold splits), every labeled image is held out by R models, and its
    out-of-fold prediction is their average, like the R x K ensemble's own averaging (a single held-out
    model would calibrate an ensemble as if it were as unsure as one model). The budget is shared evenly:
    each model gets its slice, so a slow machine truncates every model a little instead of dropping some.
    """
    from .semi import train_fixmatch  # local import: semi imports this module

    k = choose_folds(y_lab, cfg.folds)
    repeats = max(1, cfg.repeats)
    y_t = torch.as_tensor(y_lab, dtype=torch.long)
    oof = np.zeros((repeats, len(y_lab), spec.num_classes), dtype=np.float64)
    views = list(views or [])
    oof_views = np.zeros((repeats, len(views), len(y_lab)), dtype=np.int64)
    members: list[nn.Module] = []
    start = time.monotonic()
    steps_total, truncated_any = 0, False
    planned = cfg.ssl_steps if x_unlab is not None else cfg.steps
    total_models = repeats * k
    for r in range(repeats):
        folds = stratified_folds(y_lab, k, cfg.seed + 7919 * r)
        for f, held in enumerate(folds):
            j = r * k + f
            train_idx = np.setdiff1d(np.arange(len(y_lab)), held)
            deadline = start + budget_seconds * (j + 1) / total_models

            def fold_progress(done: int, _planned: int, j: int = j) -> None:
                if progress:
                    progress(j * planned + done, total_models * planned)

            seed = cfg.seed * 1000 + j
            if x_unlab is None:
                model, steps, truncated = train_supervised(
                    spec, x_lab[train_idx], y_t[train_idx], policy, cfg, deadline, seed, fold_progress
                )
            else:
                # The held-out labeled images join the unlabeled pool (without labels): they must be
                # exactly as "seen" as the images they stand for, or calibration would be fitted on points
                # the model is less sure of than the unlabeled ones it pseudo-labeled.
                pool = torch.cat([x_unlab, x_lab[held]])
                model, steps, truncated = train_fixmatch(
                    spec, x_lab[train_idx], y_t[train_idx], pool, policy, cfg, deadline, seed, fold_progress
                )
            steps_total += steps
            truncated_any |= truncated
            x_held = to_input(x_lab[held], spec)
            oof[r, held] = predict_logits(model, x_held).double().numpy()
            for v, view in enumerate(views):
                oof_views[r, v, held] = predict_logits(model, apply_tta(x_held, view)).argmax(dim=1).numpy()
            members.append(model)
            log.info(
                "model %d/%d: %d steps%s", j + 1, total_models, steps, " (time budget reached)" if truncated else ""
            )
    return FoldEnsemble(members, oof, y_lab.copy(), steps_total, truncated_any, oof_views if views else None)


def clone_eval(model: nn.Module) -> nn.Module:
    m = copy.deepcopy(model)
    m.eval()
    return m
