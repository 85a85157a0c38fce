"""Semi-supervised training for algorithm Precise: FixMatch with FreeMatch's self-adaptive thresholds.

Per step: a labeled batch (weakly augmented, cross-entropy) and `unlabeled_ratio` times as many unlabeled
images, each seen twice. The prediction on the weak view becomes a hard pseudo-label for the strong view
when its confidence passes the threshold of its class (FixMatch, Sohn et al. 2020). The threshold is not a
fixed 0.95 but FreeMatch's (Wang et al. 2023): a global level that follows the model's mean confidence on
unlabeled data, scaled per class by the class's mean predicted probability, so that classes the model
learns late are not starved of pseudo-labels early. An exponential moving average of the weights is the
model that is returned (the "EMA model" of FixMatch). Full schedules take 2^20 steps; here training is
truncated to the job's time budget (the cosine schedule is fitted to the time left, `train.BudgetSchedule`),
which the benchmark measures.

Imports the shared helpers of train.py; the K-fold ensemble (ensemble.py) calls `train_fixmatch`.
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from torch import nn

from .augment import strong, weak
from .models import build_model
from .train import TrainingRun, autocast, balanced_batch, cosine_lr, make_optimizer, to_input

log = logging.getLogger(__name__)


class AdaptiveThreshold:
    """FreeMatch's self-adaptive threshold: tau_t(c) = tau_t * p_t(c) / max_c p_t(c)."""

    def __init__(self, num_classes: int, momentum: float):
        self.momentum = momentum
        self.global_level = torch.tensor(1.0 / num_classes)
        self.class_prob = torch.full((num_classes,), 1.0 / num_classes)

    def update(self, probs: torch.Tensor) -> None:
        probs = probs.float().cpu()
        m = self.momentum
        self.global_level = m * self.global_level + (1 - m) * probs.max(dim=1).values.mean()
        self.class_prob = m * self.class_prob + (1 - m) * probs.mean(dim=0)

    def thresholds(self) -> torch.Tensor:
        return self.global_level * self.class_prob / self.class_prob.max()


class EMA:
    """Exponential moving average of parameters; buffers (batch-norm statistics) are copied."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model)
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))  # warm-up: early weights are not averaged in
        for ema_p, p in zip(self.model.parameters(), model.parameters(), strict=True):
            ema_p.mul_(decay).add_(p.detach(), alpha=1 - decay)
        for ema_b, b in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)


def train_fixmatch(
    run: TrainingRun, x_unlab: torch.Tensor, init: nn.Module | None = None
) -> tuple[nn.Module, int, bool]:
    """Train on the run's labeled images and the unlabeled pool `x_unlab` (uint8 N x 3 x H x W).

    `init`: a model of the same spec trained on the same labeled images (Fast's fold model) to start from
    instead of the spec's initial weights: pseudo-labels are then right from the first step, and a run
    the budget keeps short still starts where Fast ended.

    Returns (EMA model, steps done, whether the time budget cut training short: its schedule fitted to
    fewer steps than configured, or the deadline reached before the schedule's end).
    """
    if len(x_unlab) == 0:
        raise ValueError("semi-supervised training needs unlabeled images")
    spec, cfg, policy, progress = run.spec, run.cfg, run.policy, run.progress
    y_lab = run.labels
    torch.manual_seed(run.seed)
    gen = torch.Generator().manual_seed(run.seed)
    device = torch.device(cfg.device)
    model = build_model(spec, pretrained=cfg.pretrained and init is None)
    if init is not None:
        model.load_state_dict(init.state_dict())
    model = model.to(device)
    ema = EMA(model, cfg.ema_decay)
    opt = make_optimizer(model, cfg)
    thresholds = AdaptiveThreshold(spec.num_classes, cfg.threshold_momentum)
    xl = to_input(run.images, spec).to(device)
    y_dev = y_lab.to(device)
    bl = min(cfg.batch_size // 2, 32)
    bu = bl * cfg.unlabeled_ratio
    model.train()
    step = 0
    used = 0.0
    schedule = run.budget_schedule(cfg.ssl_steps)
    for step in range(1, cfg.ssl_steps + 1):
        if step > schedule.total or schedule.expired():
            step -= 1
            break
        for group in opt.param_groups:
            group["lr"] = cosine_lr(cfg.lr, step, schedule.total)
        li = balanced_batch(y_lab, bl, gen)
        ui = torch.randint(len(x_unlab), (bu,), generator=gen)
        xu = to_input(x_unlab[ui], spec).to(device)
        batch = torch.cat([weak(xl[li.to(device)], policy, gen), weak(xu, policy, gen), strong(xu, policy, gen)])
        with autocast(device):
            logits = model(batch).float()
        logits_l = logits[:bl]
        logits_w, logits_s = logits[bl:].chunk(2)
        loss_l = F.cross_entropy(logits_l, y_dev[li.to(device)])
        with torch.no_grad():
            probs_w = torch.softmax(logits_w.detach(), dim=1)
            thresholds.update(probs_w)
            conf, pseudo = probs_w.max(dim=1)
            mask = (conf >= thresholds.thresholds().to(device)[pseudo]).float()
        loss_u = (F.cross_entropy(logits_s, pseudo, reduction="none") * mask).mean()
        loss = loss_l + cfg.unlabeled_weight * loss_u
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(model, step)
        schedule.done(step)
        used = 0.9 * used + 0.1 * float(mask.mean())
        if progress and step % cfg.eval_every == 0:
            progress(step, cfg.ssl_steps)
    log.info(
        "fixmatch: %d steps, pseudo-label share %.2f, global threshold %.3f",
        step,
        used,
        float(thresholds.global_level),
    )
    return ema.model, step, schedule.cut or schedule.shortened
