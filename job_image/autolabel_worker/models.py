"""Models sized to the images, the calibrated ensemble, and TorchScript export/import.

Small images (up to 64 px, e.g. the 8x8 digits) get a small CNN whose pooling stops at 2x2, because a
torchvision ResNet would pool an 8x8 input away in its stem. Larger images get torchvision's ResNet-18
at 224 px (MobileNetV3 is one argument away). Pretrained weights are used when a weights file is named
(env ``AUTOLABEL_PRETRAINED_WEIGHTS``) or torchvision's checkpoint is already in the local torch hub cache;
nothing is ever downloaded.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

SMALL_IMAGE_MAX = 64
LARGE_INPUT = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_ENV = "AUTOLABEL_PRETRAINED_WEIGHTS"


@dataclass(frozen=True)
class ModelSpec:
    """What every model of a job shares: architecture, input size and normalization (`standardize` may
    differ between fold models: `ensemble.member_spec`)."""

    arch: str  # "smallcnn" | "resnet18" | "mobilenet_v3_small"
    input_size: tuple[int, int]  # (H, W)
    num_classes: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    width: int = 32
    standardize: bool = False
    """Small CNN only: each image standardized by its own mean and deviation (`standardize_per_image`)."""


def median_size(sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """Median (width, height) of image sizes."""
    if not sizes:
        raise ValueError("no image sizes to choose a model from")
    widths = sorted(w for w, _ in sizes)
    heights = sorted(h for _, h in sizes)
    return widths[len(widths) // 2], heights[len(heights) // 2]


def choose_model_spec(
    sizes: list[tuple[int, int]], num_classes: int, arch: str | None = None, accelerated: bool = False
) -> ModelSpec:
    """Pick architecture and input size from the labeled images' (width, height) sizes.

    Images whose median side is at most 64 px keep their median size (rounded up to a multiple of 4, at
    least 8) and get the small CNN. Larger images get ResNet-18 at 224 x 224 on a GPU (`accelerated`);
    on a CPU, where ResNet-18 at 224 px cannot train within a job's budget, the small CNN at 64 x 64.
    """
    mw, mh = median_size(sizes)
    if arch is None:
        arch = "resnet18" if max(mw, mh) > SMALL_IMAGE_MAX and accelerated else "smallcnn"
    if arch == "smallcnn":
        side = min(SMALL_IMAGE_MAX, max(8, -(-max(mw, mh) // 4) * 4))
        width = 16 if side <= 16 else 32  # 8x8 digits: 16 channels learn as well as 32 at a quarter of the cost
        return ModelSpec(arch, (side, side), num_classes, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), width=width)
    return ModelSpec(arch, (LARGE_INPUT, LARGE_INPUT), num_classes)


def standardize_per_image(x: torch.Tensor) -> torch.Tensor:
    """Each image minus its own mean, over its own standard deviation (all channels together): blind to
    an image's overall brightness and contrast. As the only input of every member it cost the textures
    0.01-0.09 of accuracy, whose classes differ in brightness (docs/benchmarks.md, issue 12 round 9)."""
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    std = x.std(dim=[1, 2, 3], keepdim=True)
    return (x - mean) / std.clamp_min(1e-3)  # a blank image stays blank instead of dividing by zero


class SmallCNN(nn.Module):
    """Three conv stages (w, 2w, 4w channels) with batch norm; pooling only while the map is >= 4 px;
    optionally each image standardized first."""

    def __init__(self, num_classes: int, input_size: tuple[int, int], width: int = 32, standardize: bool = False):
        super().__init__()
        self.standardize = standardize
        layers: list[nn.Module] = []
        channels, size = 3, min(input_size)
        for i, out in enumerate((width, width * 2, width * 4)):
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            if i > 0:
                layers += [nn.Conv2d(out, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            if size >= 4:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            channels = out
        self.body = nn.Sequential(*layers)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(channels, num_classes)
        self.feature_dim = channels

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.standardize:
            x = standardize_per_image(x)
        return torch.flatten(F.adaptive_avg_pool2d(self.body(x), 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.features(x)))


class TorchvisionClassifier(nn.Module):
    """A torchvision backbone with its classifier replaced; `features` is the penultimate layer."""

    def __init__(self, arch: str, num_classes: int, pretrained: bool = True):
        super().__init__()
        import torchvision

        if arch == "resnet18":
            net = torchvision.models.resnet18(weights=None)
            if pretrained:
                _load_pretrained(net, "resnet18-f37072fd.pth")
            self.feature_dim = net.fc.in_features
            net.fc = nn.Identity()
        elif arch == "mobilenet_v3_small":
            net = torchvision.models.mobilenet_v3_small(weights=None)
            if pretrained:
                _load_pretrained(net, "mobilenet_v3_small-047dcff4.pth")
            self.feature_dim = int(net.classifier[0].in_features)
            net.classifier = nn.Identity()
        else:
            raise ValueError(f"unknown architecture {arch!r}")
        self.backbone = net
        self.fc = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.backbone(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _load_pretrained(net: nn.Module, hub_file: str) -> None:
    """Load ImageNet weights from a named file or torch's hub cache if present; never download."""
    candidates = []
    if os.environ.get(WEIGHTS_ENV):
        candidates.append(Path(os.environ[WEIGHTS_ENV]))
    candidates.append(Path(torch.hub.get_dir()) / "checkpoints" / hub_file)
    for path in candidates:
        if path.is_file():
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = {k: v for k, v in state.items() if not k.startswith(("fc.", "classifier."))}
            missing, _ = net.load_state_dict(state, strict=False)
            log.info("pretrained weights loaded from %s (%d head tensors left new)", path, len(missing))
            return
    log.info("no pretrained weights found (%s); training from scratch", ", ".join(map(str, candidates)))


def build_model(spec: ModelSpec, pretrained: bool = True) -> nn.Module:
    if spec.arch == "smallcnn":
        return SmallCNN(spec.num_classes, spec.input_size, spec.width, spec.standardize)
    return TorchvisionClassifier(spec.arch, spec.num_classes, pretrained=pretrained)


class CalibratedEnsemble(nn.Module):
    """Mean of the members' temperature-scaled probabilities, sharpened by the ensemble's own temperature
    (`calibrate.ensemble_temperature`), returned as log-probabilities.

    The output is a valid logit vector (its softmax is the ensemble's calibrated probability), so the
    exported TorchScript model needs no extra post-processing by whoever loads it.
    """

    def __init__(
        self,
        members: list[nn.Module],
        temperature: float = 1.0,
        ensemble_temperature: float | Sequence[float] = 1.0,
        point_temperature: float | None = None,
    ):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        # the best-fit member temperature (`temperature` is the cautious one), for estimatedPrecision only
        point = temperature if point_temperature is None else point_temperature
        self.register_buffer("point_temperature", torch.tensor(float(point)))
        # one value, or one per class, applied by the predicted class (which a temperature does not change)
        temps = torch.as_tensor(ensemble_temperature, dtype=torch.float32).reshape(-1)
        self.register_buffer("ensemble_temperature", temps)

    def _combine(self, probs: torch.Tensor) -> torch.Tensor:
        log_mean = torch.log(probs / len(self.members) + 1e-12)
        temps = self.ensemble_temperature.expand(log_mean.shape[1])  # type: ignore[operator]
        return torch.log_softmax(log_mean / temps[log_mean.argmax(dim=1)].unsqueeze(1), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.zeros(0)
        for i, member in enumerate(self.members):
            p = torch.softmax(member(x) / self.temperature, dim=1)
            probs = p if i == 0 else probs + p
        return self._combine(probs)

    @torch.jit.export
    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities and the members' unit-norm penultimate features, concatenated and scaled by
        1/sqrt(K) so that the whole vector has unit norm (one pass for both)."""
        logp, feats, _ = self.forward_with_estimate(x)
        return logp, feats

    @torch.jit.export
    def forward_with_estimate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`forward_with_features`, and per image what `calibrate.expected_correct` makes estimatedPrecision
        of: (n, 2) = the ensemble label's probability at the point temperature, and the share of members
        whose own label (plain image) is the ensemble's."""
        feats: list[torch.Tensor] = []
        votes: list[torch.Tensor] = []
        probs = torch.zeros(0)
        point = torch.zeros(0)
        for i, member in enumerate(self.members):
            f = member.features(x)  # type: ignore[operator]
            logits = member.fc(f)  # type: ignore[operator]
            p = torch.softmax(logits / self.temperature, dim=1)
            q = torch.softmax(logits / self.point_temperature, dim=1)
            probs = p if i == 0 else probs + p
            point = q if i == 0 else point + q
            votes.append(logits.argmax(dim=1))
            feats.append(F.normalize(f.float(), dim=1))
        scale = 1.0 / math.sqrt(len(self.members))
        logp = self._combine(probs)
        label = logp.argmax(dim=1)
        return logp, torch.cat(feats, dim=1) * scale, self._point_and_agreement(point, votes, label)

    def _point_and_agreement(self, point: torch.Tensor, votes: list[torch.Tensor], label: torch.Tensor) -> torch.Tensor:
        """(n, 2): `label`'s probability at the point temperature (`point`: the members' summed
        probabilities there) and the share of members (`votes`: each one's label) whose label it is."""
        point_conf = self._combine(point).exp().gather(1, label.unsqueeze(1)).squeeze(1)
        agreement = (torch.stack(votes) == label.unsqueeze(0)).float().mean(dim=0)
        return torch.stack([point_conf.float(), agreement], dim=1)

    def estimate_of(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """How this ensemble rates labels another model gave (`label`): (n, 3) = `forward_with_estimate`'s
        two columns for `label`, and 1.0 where this ensemble's own label is `label` (else 0.0). A Precise
        run asks its Fast models, which never trained on pseudo-labels, about the labels of its
        semi-supervised ones (`pipeline._witness`)."""
        votes: list[torch.Tensor] = []
        probs = torch.zeros(0)
        point = torch.zeros(0)
        for i, member in enumerate(self.members):
            logits = member(x)
            p = torch.softmax(logits / self.temperature, dim=1)
            q = torch.softmax(logits / self.point_temperature, dim=1)
            probs = p if i == 0 else probs + p
            point = q if i == 0 else point + q
            votes.append(logits.argmax(dim=1))
        same = (self._combine(probs).argmax(dim=1) == label).float().unsqueeze(1)
        return torch.cat([self._point_and_agreement(point, votes, label), same], dim=1)


@dataclass
class ModelBundle:
    """A loaded model: TorchScript or eager module, plus what labels.json says about it."""

    model: Any  # torch.jit.ScriptModule or nn.Module, called as model(x) -> logits
    labels: list[str]
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def has_features(self) -> bool:
        return hasattr(self.model, "forward_with_features")


def export_model(
    ensemble: CalibratedEnsemble,
    spec: ModelSpec,
    labels: list[str],
    folder: Path,
    task: str,
    extra: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write `model.pt` (TorchScript) and `labels.json` into a local folder."""
    folder.mkdir(parents=True, exist_ok=True)
    ensemble = ensemble.cpu().eval()  # a model file that loads anywhere
    scripted = torch.jit.script(ensemble)
    model_path = folder / "model.pt"
    scripted.save(str(model_path))
    meta = {
        "task": task,
        "labels": labels,
        "inputSize": list(spec.input_size),
        "mean": list(spec.mean),
        "std": list(spec.std),
        "createdBy": "autolabel/active-learning",
        "architecture": spec.arch,
        "ensembleSize": len(ensemble.members),
        "outputs": "log-probabilities (temperature-calibrated)",
    }
    meta.update(extra or {})
    labels_path = folder / "labels.json"
    labels_path.write_text(json.dumps(meta, indent=2))
    return model_path, labels_path


def load_model(model_bytes: bytes, labels_json: bytes, source: str) -> ModelBundle:
    """Load a TorchScript model and its labels.json (pre-labeling); errors name `source`."""
    import io

    try:
        meta = json.loads(labels_json)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: labels.json is not valid JSON: {exc}") from exc
    labels = meta.get("labels")
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) for x in labels):
        raise ValueError(f"{source}: labels.json field 'labels' must be a list of at least 2 names")
    size = meta.get("inputSize", [LARGE_INPUT, LARGE_INPUT])
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise ValueError(f"{source}: labels.json field 'inputSize' must be [height, width]")
    mean = tuple(float(v) for v in meta.get("mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in meta.get("std", IMAGENET_STD))
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"{source}: labels.json fields 'mean' and 'std' need 3 values (RGB)")
    try:
        model = torch.jit.load(io.BytesIO(model_bytes), map_location="cpu")
    except Exception as exc:
        raise ValueError(f"{source}: not a TorchScript model: {exc}") from exc
    model.eval()
    check_outputs(model, len(labels), (size[0], size[1]), source)
    return ModelBundle(model, [str(x) for x in labels], (size[0], size[1]), mean, std, meta)


def check_outputs(model: torch.nn.Module, n_labels: int, size: tuple[int, int], source: str) -> None:
    """One forward pass on a blank image: the model must give one score per label of labels.json (more
    outputs would leave labels never proposed, fewer would fail mid-run on an index)."""
    try:
        with torch.inference_mode():
            out = model(torch.zeros(1, 3, size[0], size[1]))
    except Exception as exc:
        raise ValueError(f"{source}: the model fails on a blank {size[0]}x{size[1]} RGB input: {exc}") from exc
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{source}: the model must return a [batch, labels] tensor of scores, not {shape}")
    if out.shape[1] != n_labels:
        raise ValueError(
            f"{source}: labels.json lists {n_labels} labels but the model gives {out.shape[1]} outputs per image"
        )
