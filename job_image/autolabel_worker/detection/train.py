"""Training the class-agnostic detector on a few labeled images.

Augmentation for few labels (measured on digit-boxes, docs/detection.md): scale jitter 0.7-1.3 with a
random placement on a canvas of the input size, brightness/contrast jitter, and copy-paste: labeled
objects (their box crops, rescaled) pasted where the scene is free, so that six labeled images show the
detector hundreds of object placements. No flips: a mirrored glyph, sign or text is not the same object,
and the worker cannot tell which kind of objects a dataset has.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .model import DetectorSpec, build_detector

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scene:
    """One labeled image for training: uint8 3 x H x W and its boxes (float [k, 4], pixels)."""

    image: torch.Tensor
    boxes: torch.Tensor


@dataclass
class DetectorTrainConfig:
    steps: int = 600
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    copy_paste: float = 0.7
    """Share of training samples that get 1-3 pasted objects."""
    scale: tuple[float, float] = (0.7, 1.3)


def _free(box: list[float], taken: list[list[float]]) -> bool:
    return all(
        max(0.0, min(box[2], o[2]) - max(box[0], o[0])) * max(0.0, min(box[3], o[3]) - max(box[1], o[1])) == 0
        for o in taken
    )


def augment(
    scene: Scene, pool: list[Scene], side: int, cfg: DetectorTrainConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training sample: (float image 3 x side x side in 0..1, boxes [k, 4])."""
    x = scene.image.float() / 255.0
    h, w = x.shape[1:]
    fit = side / max(h, w)
    s = fit * float(rng.uniform(*cfg.scale))
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    x = torch.nn.functional.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
    canvas = x.mean(dim=(1, 2), keepdim=True).expand(3, side, side).clone()  # the image's mean colour
    ox = int(rng.integers(min(0, side - nw), max(0, side - nw) + 1))
    oy = int(rng.integers(min(0, side - nh), max(0, side - nh) + 1))
    sx, sy, dx, dy = max(0, -ox), max(0, -oy), max(0, ox), max(0, oy)
    cw, ch = min(nw - sx, side - dx), min(nh - sy, side - dy)
    canvas[:, dy : dy + ch, dx : dx + cw] = x[:, sy : sy + ch, sx : sx + cw]
    boxes = scene.boxes * s
    boxes[:, [0, 2]] += ox
    boxes[:, [1, 3]] += oy
    clipped = boxes.clone()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clamp(0, side)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clamp(0, side)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept_area = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    # An object mostly cut off is dropped as a target; one a little cut keeps its visible part.
    taken = clipped[kept_area > 0.6 * area].tolist()
    if pool and rng.random() < cfg.copy_paste:
        for _ in range(int(rng.integers(1, 4))):
            donor = pool[int(rng.integers(len(pool)))]
            if len(donor.boxes) == 0:
                continue
            x0, y0, x1, y1 = (round(v) for v in donor.boxes[int(rng.integers(len(donor.boxes)))].tolist())
            patch = donor.image[:, y0:y1, x0:x1].float() / 255.0
            if patch.shape[1] < 2 or patch.shape[2] < 2:
                continue
            ps = fit * float(rng.uniform(*cfg.scale))
            ph, pw = max(4, round(patch.shape[1] * ps)), max(4, round(patch.shape[2] * ps))
            if ph >= side or pw >= side:
                continue
            patch = torch.nn.functional.interpolate(patch[None], size=(ph, pw), mode="bilinear", align_corners=False)[0]
            for _try in range(10):
                px, py = int(rng.integers(0, side - pw)), int(rng.integers(0, side - ph))
                box = [float(px), float(py), float(px + pw), float(py + ph)]
                if _free(box, taken):
                    canvas[:, py : py + ph, px : px + pw] = patch
                    taken.append(box)
                    break
    canvas = (canvas * float(rng.uniform(0.7, 1.3)) + float(rng.uniform(-0.1, 0.1))).clamp(0, 1)
    return canvas, torch.tensor(taken, dtype=torch.float32).reshape(-1, 4)


def train_detector(
    scenes: list[Scene],
    spec: DetectorSpec,
    cfg: DetectorTrainConfig,
    seed: int,
    deadline: float,
    init: dict[str, torch.Tensor] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[nn.Module, int, bool]:
    """Train one detector on `scenes`; returns (detector in eval mode, steps done, cut by the deadline?).
    `init` is a state_dict to start from (pretrained weights)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    detector = build_detector(spec)
    if init is not None:
        detector.load_state_dict(init, strict=False)
    detector.train()
    optimizer = torch.optim.AdamW(detector.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, truncated = 0, False
    for step in range(1, cfg.steps + 1):
        if time.monotonic() > deadline:
            truncated = True
            step -= 1
            break
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / cfg.steps))
        images, targets = [], []
        for i in rng.integers(0, len(scenes), cfg.batch_size):
            image, boxes = augment(scenes[int(i)], scenes, spec.input_side, cfg, rng)
            images.append(image)
            targets.append({"boxes": boxes, "labels": torch.ones(len(boxes), dtype=torch.int64)})
        losses = detector(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if progress is not None and step % 20 == 0:
            progress(step, cfg.steps)
    detector.eval()
    if truncated:
        log.warning("detector training stopped by the time budget after %d of %d steps", step, cfg.steps)
    return detector, step, truncated


@torch.inference_mode()
def detect(detector: nn.Module, images: list[torch.Tensor], batch: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Raw detections (boxes, object scores) for uint8 3 x H x W images."""
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    for i in range(0, len(images), batch):
        chunk = [im.float() / 255.0 for im in images[i : i + batch]]
        for det in detector(chunk):
            out.append((det["boxes"], det["scores"]))
    return out
