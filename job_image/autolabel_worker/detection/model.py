"""The detector (torchvision FCOS over a small CNN with a feature pyramid), the crop classifier's inputs,
and the exported model that joins both.

Exported contract (``model/model.pt``, TorchScript; docs/detection.md): called with a list of float
images ``[3, H, W]`` in 0..1 (any size), it returns one dict per image with ``boxes`` (float ``[N, 4]``,
x1 y1 x2 y2 in that image's pixels), ``labels`` (int64 ``[N]``, indices into labels.json ``labels``)
and ``scores`` (float ``[N]``, the calibrated probability that the box is an object of that label),
plus ``detector_scores`` (float ``[N]``, the detector's own score). Candidates down to ``labels.json``
``candidateThreshold`` are returned; those whose detector score is at or above ``keepThreshold`` are the
proposed boxes (a model without ``detector_scores``: score at or above it), the others are evidence of
doubt.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead, FCOSRegressionHead
from torchvision.ops import FeaturePyramidNetwork, roi_align

log = logging.getLogger(__name__)

CROP_SIZE = 32
"""Side of the square box crops the classifier sees: the 14-44 px digits of the sample keep their
strokes; larger objects are downscaled."""
CROP_PAD = 0.15
"""Context around a box, as a share of its side, for the classifier's crop."""
CANDIDATE_THRESHOLD = 0.05
CLASSIFY_MIN = 0.1
"""Candidates below this P(object) are not classified, unless proposed (detector score >= KEEP):
ExportedDetector.forward, literals there."""
MAX_OBJECTS = 20


@dataclass(frozen=True)
class DetectorSpec:
    """What the detector is built for: the side its input is resized to, the channel widths and the
    object sizes each pyramid level answers for."""

    input_side: int
    width: int = 32
    fpn_channels: int = 64
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)


INPUT_ZOOM = 1.25
"""The detector sees the images enlarged by this much: small objects get more locations of its finest
level (stride 8). With the slim stem, 160 px for the sample's 128 px images trains faster than 128 px
did with the old stem and finds more objects (docs/detection.md)."""


def choose_detector_spec(sizes: list[tuple[int, int]]) -> DetectorSpec:
    """Input side from the labeled images' sizes: the median longer side times INPUT_ZOOM, rounded to a
    multiple of 32, between 64 and 512 (one core trains the sample's 160 px detector in about 0.15 s per
    batch of 8)."""
    sides = sorted(max(w, h) for w, h in sizes) or [128]
    median = sides[len(sides) // 2] * INPUT_ZOOM
    return DetectorSpec(input_side=int(min(512, max(64, round(median / 32) * 32))))


class PyramidBody(nn.Module):
    """Five stride-2 conv stages; the last three feed a feature pyramid (strides 8, 16, 32)."""

    def __init__(self, width: int, fpn_channels: int):
        super().__init__()

        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, 2, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        # A slim stem (w/2, w channels at strides 2 and 4): the full-resolution stages were most of the
        # training time; halving them paid for a 1.25x input (docs/detection.md).
        w = width
        self.stem = nn.Sequential(stage(3, w // 2), stage(w // 2, w))
        self.c3 = stage(w, 3 * w)
        self.c4 = stage(3 * w, 4 * w)
        self.c5 = stage(4 * w, 4 * w)
        self.fpn = FeaturePyramidNetwork([3 * w, 4 * w, 4 * w], fpn_channels)
        self.out_channels = fpn_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        c3 = self.c3(self.stem(x))
        c4 = self.c4(c3)
        c5 = self.c5(c4)
        return self.fpn(OrderedDict([("p3", c3), ("p4", c4), ("p5", c5)]))


class SoftplusRegressionHead(nn.Module):
    """torchvision's FCOS regression head with softplus instead of ReLU on the box distances.

    With ReLU, a box output whose input goes negative everywhere gets no gradient again: the detector
    keeps scoring objects but answers zero-size boxes for every one (which the worker drops). Measured:
    3 of 8 ActiveLearning runs on the digit-boxes sample (6 or 12 labeled images) ended with no box at
    all on 300 unlabeled images; their final detectors, trained again alone, answered 20 candidates per
    image scored up to 0.93, none within IoU 0.5 of an object. Softplus is never flat.
    """

    def __init__(self, head: FCOSRegressionHead):
        super().__init__()  # takes over the head's layers: same parameter names, same initial weights
        self.conv = head.conv
        self.bbox_reg = head.bbox_reg
        self.bbox_ctrness = head.bbox_ctrness

    def forward(self, x: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        all_regression: list[torch.Tensor] = []
        all_ctrness: list[torch.Tensor] = []
        for features in x:
            feature = self.conv(features)
            regression = nn.functional.softplus(self.bbox_reg(feature))
            ctrness = self.bbox_ctrness(feature)
            n, _, h, w = regression.shape
            all_regression.append(regression.view(n, -1, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4))
            all_ctrness.append(ctrness.view(n, -1, 1, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 1))
        return torch.cat(all_regression, dim=1), torch.cat(all_ctrness, dim=1)


def build_detector(spec: DetectorSpec) -> FCOS:
    """A one-class ("object") FCOS: torchvision's loss, box coding, NMS and resizing."""
    body = PyramidBody(spec.width, spec.fpn_channels)
    anchors = AnchorGenerator(sizes=((8,), (16,), (32,)), aspect_ratios=((1.0,),) * 3)
    head = FCOSHead(spec.fpn_channels, num_anchors=1, num_classes=2, num_convs=2)
    head.regression_head = SoftplusRegressionHead(head.regression_head)
    return FCOS(
        body,
        num_classes=2,  # index 1 is "object"; FCOS's sigmoid head leaves index 0 unused
        min_size=spec.input_side,
        max_size=spec.input_side,
        image_mean=list(spec.mean),
        image_std=list(spec.std),
        anchor_generator=anchors,
        head=head,
        score_thresh=CANDIDATE_THRESHOLD,
        nms_thresh=0.5,
        detections_per_img=MAX_OBJECTS,
        topk_candidates=200,
    )


def load_pretrained(detector: FCOS, path: Path) -> str:
    """Load a state_dict saved from this architecture (a detector's, its backbone's, or an exported model's
    detector); tensors whose names and shapes fit are loaded. Returns what was
    loaded, for the summary; raises ValueError when nothing in the file fits."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state_dict")
    target = detector.state_dict()
    renamings = (  # the detector's own keys; its backbone's; an exported model's ("detector." + own)
        lambda k: k,
        lambda k: "backbone." + k,
        lambda k: k.removeprefix("detector.") if k.startswith("detector.") else "",
    )
    for rename in renamings:
        renamed = {rename(k): v for k, v in state.items()}
        fitted = {k: v for k, v in renamed.items() if k in target and target[k].shape == v.shape}
        if fitted:
            detector.load_state_dict(fitted, strict=False)
            return f"{len(fitted)} of {len(target)} tensors"
    raise ValueError(f"{path}: no tensor fits the detector ({detector.backbone.__class__.__name__})")


def crop_boxes(images: torch.Tensor, boxes: list[torch.Tensor], size: int = 32, pad: float = 0.15) -> torch.Tensor:
    """Square crops (float, same scale as `images`) around each box, `pad` (a share of the box's longer
    side) of context on every side, for a batch of same-size images N x 3 x H x W and one [k, 4] box tensor
    per image. The defaults are CROP_SIZE and CROP_PAD (TorchScript takes literals only)."""
    padded = []
    for b in boxes:
        side = torch.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) * (1 + 2 * pad)
        cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
        padded.append(torch.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], dim=1))
    if not padded or sum(len(p) for p in padded) == 0:
        return torch.zeros((0, images.shape[1], size, size), dtype=images.dtype)
    return roi_align(images, padded, output_size=(size, size), spatial_scale=1.0, sampling_ratio=2, aligned=True)


class ExportedDetector(nn.Module):
    """Detector + calibrated crop classifier, one TorchScript module (see the module docstring).

    Box score = P(object) * P(label | object): the detector's score mapped by a Platt fit on held-out
    boxes (`obj_a`, `obj_b`), times the classifier ensemble's calibrated class probability. Loops index
    lists instead of zipping them: TorchScript has no zip(strict=).
    """

    def __init__(
        self,
        detector: FCOS,
        classifier: nn.Module,
        classifier_mean: tuple[float, float, float],
        classifier_std: tuple[float, float, float],
        obj_a: float,
        obj_b: float,
    ):
        super().__init__()
        self.detector = detector
        self.classifier = classifier
        self.register_buffer("cls_mean", torch.tensor(classifier_mean).view(1, 3, 1, 1))
        self.register_buffer("cls_std", torch.tensor(classifier_std).view(1, 3, 1, 1))
        self.register_buffer("obj_a", torch.tensor(float(obj_a)))
        self.register_buffer("obj_b", torch.tensor(float(obj_b)))

    def objectness(self, raw: torch.Tensor) -> torch.Tensor:
        logit = torch.logit(raw.clamp(1e-6, 1 - 1e-6))
        return torch.sigmoid(self.obj_a * logit + self.obj_b)  # type: ignore[operator]

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        found = self.detector(images)
        # scripted torchvision detectors return (losses, detections)
        detections = found[1] if torch.jit.is_scripting() else found
        for i in range(len(detections)):  # FCOS can answer zero-width boxes; no reader takes them
            b = detections[i]["boxes"]
            sized = ((b[:, 2] - b[:, 0]) >= 0.01) & ((b[:, 3] - b[:, 1]) >= 0.01)
            detections[i] = {"boxes": b[sized], "scores": detections[i]["scores"][sized]}
        # Only proposed candidates (detector score >= KEEP) and those with P(object) >= CLASSIFY_MIN are
        # classified, in one call for every image (the classifier is most of the inference time); the
        # others keep P(object) as their score, an upper bound of P(object of that label), with label 0.
        objectness: list[torch.Tensor] = []
        crops: list[torch.Tensor] = []
        for i in range(len(images)):
            q = self.objectness(detections[i]["scores"])
            objectness.append(q)
            named = (q >= 0.1) | (detections[i]["scores"] >= 0.5)
            crops.append(crop_boxes(images[i].unsqueeze(0), [detections[i]["boxes"][named]]))
        out: list[dict[str, torch.Tensor]] = []
        if len(crops) == 0:
            return out
        all_crops = torch.cat(crops)
        probs = torch.zeros((0, 1))
        if all_crops.shape[0] > 0:
            x = (all_crops - self.cls_mean) / self.cls_std  # type: ignore[operator]
            probs = torch.exp(self.classifier(x))
        start = 0
        for i in range(len(detections)):
            q = objectness[i]
            raw = detections[i]["scores"]
            scores = q.clone()
            labels = torch.zeros(q.shape[0], dtype=torch.int64)
            n = crops[i].shape[0]
            if n > 0:
                best, named = probs[start : start + n].max(dim=1)
                classified = (q >= 0.1) | (raw >= 0.5)
                scores[classified] = q[classified] * best
                labels[classified] = named
                start += n
            out.append({"boxes": detections[i]["boxes"], "labels": labels, "scores": scores, "detector_scores": raw})
        return out


def script_detector(model: ExportedDetector) -> torch.jit.ScriptModule:
    model = model.cpu().eval()
    return torch.jit.script(model)
