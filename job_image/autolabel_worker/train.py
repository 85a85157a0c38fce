"""Supervised training (algorithm Fast) and the training helpers both algorithms share.

`TrainingRun` is what training one model needs; `train_supervised` (here) and `train_fixmatch` (semi.py)
both take one and return the model, the steps done and whether the time budget cut them short (both fit
their learning-rate schedule into the deadline with `BudgetSchedule`). The K-fold
ensemble that calls them lives in ensemble.py; this module imports neither semi.py nor ensemble.py.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .augment import AugmentPolicy, strong, weak
from .models import ModelSpec, build_model

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]  # (steps done, steps planned)
BatchMix = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
"""Makes new training samples from a batch of labeled uint8 images (N x 3 x H x W -> the same shape and
dtype), keeping each one's label: e.g. the object set on another background (detection/crops.py)."""


@dataclass
class TrainConfig:
    folds: int = 5
    repeats: int = 1
    """Cross-validation repeats: the ensemble has folds x repeats models."""
    standardized_members: int = 0
    """Of each repeat's fold models (small CNN only), this many, every other one from the second, see each
    image standardized (`models.standardize_per_image`): members that make other mistakes. Measured with 2
    (issue 12 round 9, docs/benchmarks.md): on the report's textures more runs hold the target precision
    and less of the pool is auto-labeled; 0 (off) until that trade is chosen."""
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


@dataclass(frozen=True)
class TrainingRun:
    """The inputs of training one model, the same for both algorithms (semi.py adds the unlabeled pool)."""

    spec: ModelSpec
    """Architecture, input size and normalization of the model to build."""
    images: torch.Tensor
    """Labeled training images, uint8 N x 3 x H x W."""
    labels: torch.Tensor
    """Their class indices, int64 (N,)."""
    policy: AugmentPolicy
    cfg: TrainConfig
    deadline: float
    """time.monotonic() value at which training stops (the result is then marked truncated)."""
    seed: int
    """Seeds torch's global generator and the run's own batch/augmentation generator."""
    progress: ProgressFn | None = None
    schedule: BudgetSchedule | None = None
    """Fits the learning-rate schedule into the deadline (made from `cfg` and `deadline` when None); the
    caller keeps it to read how many steps were scheduled and whether the deadline cut them."""
    mix: BatchMix | None = None
    """Applied to each supervised batch before the weak/strong augmentation."""

    def budget_schedule(self, configured: int) -> BudgetSchedule:
        return self.schedule if self.schedule is not None else BudgetSchedule(configured, self.deadline)


WARMUP_STEPS = 2
"""Steps not timed: the first ones pay one-time costs (allocation, lazy initialization) that would make
the machine look many times slower than it is."""
PROBE_STEPS = 3
"""Steps timed after the warm-up before the schedule is first fitted to the time left."""
REFIT_EVERY = 10
CUT_SHARE = 0.9
"""A schedule stopped by the deadline before this share of its steps is `cut`."""
SCHEDULE_SAFETY = 0.9
"""Share of the time left that the fitted schedule plans to use (the rest absorbs a slower machine)."""


class BudgetSchedule:
    """The number of optimizer steps one model's cosine schedule runs, fitted to its deadline.

    Planned at the configured steps; after `WARMUP_STEPS` + `PROBE_STEPS` steps (and every `REFIT_EVERY`
    after them) the time per step measured since the warm-up, on this machine at this image size,
    predicts how many steps fit before the deadline, and the schedule is set to that (at most the
    configured steps; it may grow back when the machine speeds up). A schedule cut by the deadline halfway
    never decays its learning rate (the model of the last steps is a high-learning-rate one); a shorter
    schedule that completes does. `cut` says the deadline still stopped training before the schedule's
    end (a machine that slowed down after the estimate).
    """

    def __init__(self, configured: int, deadline: float, clock: Callable[[], float] = time.monotonic):
        self.configured = configured
        self.total = configured
        self.deadline = deadline
        self.clock = clock
        self.steps = 0
        self.cut = False
        self.seconds_per_step: float | None = None
        """The latest time per step measured since the warm-up (None before the first refit)."""
        self._mark: tuple[float, int] | None = None

    def expired(self) -> bool:
        if self.clock() > self.deadline:
            # The last tenth of a cosine schedule changes the learning rate little (0.22 -> 0.20 of its
            # peak): stopping there is not a cut.
            self.cut = self.steps < CUT_SHARE * self.total
            return True
        return False

    def done(self, step: int) -> None:
        """Record that `step` steps are done and refit the schedule when it is time to."""
        self.steps = step
        if step == WARMUP_STEPS or (self._mark is None and step > WARMUP_STEPS):
            self._mark = (self.clock(), step)
            return
        if self._mark is None:
            return
        since = step - self._mark[1]
        if since < PROBE_STEPS or (since - PROBE_STEPS) % REFIT_EVERY:
            return
        now = self.clock()
        per_step = (now - self._mark[0]) / since
        if per_step <= 0:
            return
        self.seconds_per_step = per_step
        affordable = step + int(max(0.0, self.deadline - now) * SCHEDULE_SAFETY / per_step)
        self.total = max(step, min(self.configured, affordable))

    @property
    def shortened(self) -> bool:
        return self.total < self.configured


MIN_FITTED_SIDE = 32
"""`side_for_budget` never goes below this: the 32 px benchmark sets train all their steps in 300 s on
this 2-core machine, and smaller inputs lose the detail that made the images larger."""


def seconds_per_step(spec: ModelSpec, policy: AugmentPolicy, cfg: TrainConfig) -> float:
    """Seconds one supervised training step takes on this machine at `spec`'s input size: a throwaway
    model trained on random images for `WARMUP_STEPS` + `PROBE_STEPS` steps, timed as `BudgetSchedule`
    times a real one (after the warm-up)."""
    n = 2 * spec.num_classes
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, *spec.input_size), generator=gen, dtype=torch.uint8)
    probe = dataclasses.replace(cfg, steps=WARMUP_STEPS + PROBE_STEPS, pretrained=False)
    schedule = BudgetSchedule(probe.steps, time.monotonic() + 3600.0)
    labels = torch.arange(n) % spec.num_classes
    train_supervised(TrainingRun(spec, images, labels, policy, probe, schedule.deadline, seed=0, schedule=schedule))
    assert schedule.seconds_per_step is not None  # the probe's last step is a refit
    return schedule.seconds_per_step


def side_for_budget(side: int, step_seconds: float, steps: int, seconds: float) -> int:
    """The input side (a multiple of 4, at least `MIN_FITTED_SIDE`, at most `side`) at which `steps`
    training steps fit in `seconds` (with `SCHEDULE_SAFETY`), given that one step takes `step_seconds` at
    `side`. A step's cost grows with the pixels (the small CNN's convolutions): on this machine, one
    thread, 64 px steps took 4.8-5.2 times as long as 32 px ones (two probes each, two benchmark runs
    beside them), a little more than the pixels' 4, so the fitted side can be a little too large; the
    schedule (`BudgetSchedule`) then fits the steps to what is left."""
    affordable = seconds * SCHEDULE_SAFETY / step_seconds if step_seconds > 0 else math.inf
    if affordable >= steps or side <= MIN_FITTED_SIDE:
        return side
    fitted = int(side * math.sqrt(affordable / steps)) // 4 * 4
    return max(MIN_FITTED_SIDE, fitted)


def fit_input_to_budget(
    spec: ModelSpec, policy: AugmentPolicy, cfg: TrainConfig, budget: float
) -> tuple[ModelSpec, tuple[int, int] | None]:
    """The model spec with the input side the time budget affords (`side_for_budget`), and the input
    size it was reduced from (None when kept). Only the small CNN, which is trained from scratch: a
    pretrained backbone keeps the input size its weights were trained at.

    Why (docs/benchmarks.md, issue 12 round 7): on a 2-core machine in 300 s, 64 px images trained about
    500 of their 2,000 configured steps; trained at 32 px with all of them, the 64 px inverted digits went
    from 0.734 to 0.897 right (10 seeds) and 64 px lower-case glyphs from 0.44 to 0.82, while 64 px
    photograph patches went from 0.774 to 0.760 (3 seeds), and every run took 60% of the time."""
    side = spec.input_size[0]
    if spec.arch != "smallcnn" or side <= MIN_FITTED_SIDE:
        return spec, None
    models = max(1, cfg.folds) * max(1, cfg.repeats)
    fitted = side_for_budget(side, seconds_per_step(spec, policy, cfg), cfg.steps * models, budget)
    if fitted == side:
        return spec, None
    log.info(
        "input side %d px -> %d px: %d steps do not fit %.0f s at %d px", side, fitted, cfg.steps * models, budget, side
    )
    return dataclasses.replace(spec, input_size=(fitted, fitted)), spec.input_size


def to_input(x_u8: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """uint8 N x 3 x H x W -> normalized float tensor."""
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x_u8.float() / 255.0 - mean) / std


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


def train_supervised(run: TrainingRun) -> tuple[nn.Module, int, bool]:
    """Train one model on the run's labeled images with augmentation and early stopping.

    Returns the model (eval mode), the steps done and whether the time budget cut training short (its
    schedule fitted to fewer steps than configured, or the deadline reached before the schedule's end).
    """
    spec, cfg, policy, progress = run.spec, run.cfg, run.policy, run.progress
    torch.manual_seed(run.seed)
    gen = torch.Generator().manual_seed(run.seed)
    device = torch.device(cfg.device)
    model = build_model(spec, pretrained=cfg.pretrained).to(device)
    opt = make_optimizer(model, cfg)
    xf = to_input(run.images, spec).to(device)
    y = run.labels.to(device)
    model.train()
    smoothed, best, stale = None, math.inf, 0
    step = 0
    schedule = run.budget_schedule(cfg.steps)
    for step in range(1, cfg.steps + 1):
        if step > schedule.total or schedule.expired():
            step -= 1
            break
        for group in opt.param_groups:
            group["lr"] = cosine_lr(cfg.lr, step, schedule.total)
        idx = balanced_batch(y.cpu(), cfg.batch_size, gen).to(device)
        # Half the batch weakly, half strongly augmented: with 5 images per class the strong views are
        # what keeps the model from memorizing them.
        xb = xf[idx] if run.mix is None else to_input(run.mix(run.images[idx.cpu()], gen), spec).to(device)
        half = cfg.batch_size // 2
        xb = torch.cat([weak(xb[:half], policy, gen), strong(xb[half:], policy, gen)])
        with autocast(device):
            loss = F.cross_entropy(model(xb).float(), y[idx], label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.done(step)
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
    return model, step, schedule.cut or schedule.shortened


def autocast(device: torch.device) -> torch.autocast:
    """bf16 mixed precision on CUDA; a no-op on the CPU. The one setting of training, held-out predictions
    (`predict_logits`) and inference (predict.Predictor)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Logits on the CPU, computed on the model's device under the same `autocast` as inference
    (predict.Predictor): the temperature fitted on held-out logits then applies to logits of the same
    numerics (bf16 on CUDA)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(x), batch):
        with autocast(device):
            logits = model(x[i : i + batch].to(device))
        out.append(logits.float().cpu())
    return torch.cat(out)
