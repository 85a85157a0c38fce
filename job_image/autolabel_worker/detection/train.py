"""Training the class-agnostic detector on a few labeled images.

Augmentation for few labels (measured on digit-boxes, docs/detection.md). Each sample is one of:

- a labeled scene with scale jitter 0.7-1.3 and a random placement on a canvas of the input size, and,
  on most samples, copy-paste: labeled objects pasted where the scene is free;
- a synthetic scene: a region of a labeled image that holds no labeled box, zoomed to the input size,
  with 1-4 pasted objects, so that six labeled images show the detector many more backgrounds.

A pasted object is cut out of its padded box crop by its colour distance to the crop's border
(`crops.foreground_alpha`) and recoloured (`crops.recolour`), as the crop classifier's samples are: a
pasted rectangle would teach the detector to look for a rectangle's edges, which the real objects do not
have. Brightness/contrast jitter on every sample. No flips: a mirrored glyph, sign or text is not the same
object, and the worker cannot tell which kind of objects a dataset has.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .crops import foreground_alpha, recolour
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
    """Share of the labeled-scene samples that get 1-3 pasted objects."""
    synthetic: float = 0.5
    """Share of the samples that are synthetic scenes (a box-free region of a labeled image, pasted
    objects): on tuning seeds 3 and 4, two training seeds each, it halved the extra boxes per image
    (1.2-1.7 -> 0.6-0.7) and raised the images with every object found and no extra box from 0.21-0.35
    to 0.37-0.43; 0.8 did no better (docs/detection.md)."""
    scale: tuple[float, float] = (0.7, 1.3)


CUT_MARGIN = 0.3
"""Context around a labeled box when it is cut out: the crop's border must be background."""
MIN_REGION = 24
"""Smallest side, in pixels of the labeled image, of a synthetic scene's background region."""


@dataclass(frozen=True)
class Cutout:
    """A labeled object ready to paste: its padded crop (float 3 x h x w in 0..1), the object's soft mask
    (1 x h x w), its tight box within the crop, and the longer side of the image it came from."""

    patch: torch.Tensor
    alpha: torch.Tensor
    box: tuple[float, float, float, float]
    image_side: int


def cut_objects(scenes: list[Scene], margin: float = CUT_MARGIN) -> list[Cutout]:
    cutouts = []
    for scene in scenes:
        h, w = scene.image.shape[1:]
        for x0, y0, x1, y1 in scene.boxes.tolist():
            bw, bh = x1 - x0, y1 - y0
            left, top = max(0, int(x0 - margin * bw)), max(0, int(y0 - margin * bh))
            right, bottom = min(w, math.ceil(x1 + margin * bw)), min(h, math.ceil(y1 + margin * bh))
            if right - left < 2 or bottom - top < 2:
                continue
            patch = scene.image[:, top:bottom, left:right].float() / 255.0
            alpha = foreground_alpha(patch[None])[0]
            box = (x0 - left, y0 - top, x1 - left, y1 - top)
            cutouts.append(Cutout(patch, alpha, box, max(h, w)))
    return cutouts


def free_region(scene: Scene, rng: np.random.Generator, tries: int = 20) -> tuple[int, int, int] | None:
    """(left, top, side) of a random square of `scene` that overlaps none of its boxes, or None."""
    h, w = scene.image.shape[1:]
    if min(h, w) < MIN_REGION:
        return None
    taken = scene.boxes.tolist()
    for _ in range(tries):
        side = int(rng.integers(MIN_REGION, min(h, w) + 1))
        left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        if _free([left, top, left + side, top + side], taken):
            return left, top, side
    return None


def _free(box: list[float], taken: list[list[float]]) -> bool:
    return all(
        max(0.0, min(box[2], o[2]) - max(box[0], o[0])) * max(0.0, min(box[3], o[3]) - max(box[1], o[1])) == 0
        for o in taken
    )


class SceneSampler:
    """Training samples (float image 3 x side x side in 0..1, boxes [k, 4]) drawn from the labeled scenes,
    as the module docstring says. Deterministic for a seed."""

    def __init__(self, scenes: list[Scene], side: int, cfg: DetectorTrainConfig, seed: int):
        self.scenes, self.side, self.cfg = scenes, side, cfg
        self.cutouts = cut_objects(scenes)
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator().manual_seed(seed)

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        scene = self.scenes[int(self.rng.integers(len(self.scenes)))]
        out = None
        if self.cutouts and self.rng.random() < self.cfg.synthetic:
            out = self._synthetic(scene)
        if out is None:
            out = self._jittered(scene)
        canvas, taken = out
        canvas = (canvas * float(self.rng.uniform(0.7, 1.3)) + float(self.rng.uniform(-0.1, 0.1))).clamp(0, 1)
        return canvas, torch.tensor(taken, dtype=torch.float32).reshape(-1, 4)

    def _synthetic(self, scene: Scene) -> tuple[torch.Tensor, list[list[float]]] | None:
        region = free_region(scene, self.rng)
        if region is None:
            return None
        left, top, side = region
        x = scene.image[None, :, top : top + side, left : left + side].float() / 255.0
        canvas = F.interpolate(x, size=(self.side, self.side), mode="bilinear", align_corners=False)[0]
        taken: list[list[float]] = []
        for _ in range(int(self.rng.integers(1, 5))):
            self._paste(canvas, taken)
        return (canvas, taken) if taken else None

    def _jittered(self, scene: Scene) -> tuple[torch.Tensor, list[list[float]]]:
        side, rng = self.side, self.rng
        x = scene.image.float() / 255.0
        h, w = x.shape[1:]
        s = side / max(h, w) * float(rng.uniform(*self.cfg.scale))
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
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
        if self.cutouts and rng.random() < self.cfg.copy_paste:
            for _ in range(int(rng.integers(1, 4))):
                self._paste(canvas, taken)
        return canvas, taken

    def _paste(self, canvas: torch.Tensor, taken: list[list[float]]) -> None:
        """One random cutout, recoloured and rescaled as its own image would be, where the canvas is free."""
        cut = self.cutouts[int(self.rng.integers(len(self.cutouts)))]
        scale = self.side / cut.image_side * float(self.rng.uniform(*self.cfg.scale))
        ph, pw = max(4, round(cut.patch.shape[1] * scale)), max(4, round(cut.patch.shape[2] * scale))
        if ph >= self.side or pw >= self.side:
            return
        patch = F.interpolate(recolour(cut.patch[None], self.gen), size=(ph, pw), mode="bilinear", align_corners=False)
        alpha = F.interpolate(cut.alpha[None], size=(ph, pw), mode="bilinear", align_corners=False)[0]
        sy, sx = ph / cut.patch.shape[1], pw / cut.patch.shape[2]
        for _try in range(10):
            px, py = int(self.rng.integers(0, self.side - pw)), int(self.rng.integers(0, self.side - ph))
            box = [px + cut.box[0] * sx, py + cut.box[1] * sy, px + cut.box[2] * sx, py + cut.box[3] * sy]
            if _free(box, taken):
                region = canvas[:, py : py + ph, px : px + pw]
                canvas[:, py : py + ph, px : px + pw] = region * (1 - alpha) + patch[0] * alpha
                taken.append(box)
                return


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
    sampler = SceneSampler(scenes, spec.input_side, cfg, seed)
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
        for _ in range(cfg.batch_size):
            image, boxes = sampler.sample()
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
