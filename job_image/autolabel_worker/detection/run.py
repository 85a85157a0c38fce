"""A detection run, stage by stage: preflight -> train (detector folds, crop classifier) -> calibrate ->
predict (with test-time views) -> hard examples -> write; and PreLabeling with a detection model.

ActiveLearning trains K fold detectors on the labeled images (each holds some images out) for the
held-out evidence, then one detector on all of them; the crop classifier is the worker's K-fold
classification ensemble on the labeled boxes' crops. Calibration (calibrate.py here) uses only the
held-out predictions. PreLabeling runs a given detection model over this shard's images; its precision
is measured on the dataset's labeled images, and hard-example filtering never changes its boxes.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from autolabel.api import Algorithm
from autolabel.contract import DEFAULT_TIME_BUDGET_SECONDS, Stage, time_budget
from autolabel.manifest import ManifestEntry, VocBox, read_manifest, read_voc
from autolabel.storage import StorageError, StorageUnreachable

from .. import calibrate as cal
from ..augment import TTA_REASONS, AugmentPolicy
from ..ensemble import train_fold_ensemble
from ..errors import PipelineError
from ..models import CalibratedEnsemble, ModelSpec
from ..outputs import ACTIVE_LEARNING_BY, PRE_LABELING_BY, ResultWriter
from ..preflight import PreflightResult, check_unreadable_share
from ..stages import (
    RunContext,
    close_results,
    decoded_images,
    read_and_check,
    read_prelabeling_model,
    run_summary,
    shard_share,
)
from ..train import TrainConfig
from . import calibrate as dcal
from .crops import BackgroundSwap
from .model import (
    CROP_SIZE,
    ExportedDetector,
    choose_detector_spec,
    crop_boxes,
    load_pretrained,
    script_detector,
)
from .train import DetectorTrainConfig, Scene, detect, train_detector

log = logging.getLogger(__name__)

NO_OBJECT = 0
LOW_CONFIDENCE = 1
OTHER_MODEL_DISAGREES = 2
"""Precise: the self-trained detector's boxes differ from the Fast model's, whose decision is the one the
held-out images calibrate (ModelArts' 2 is a second opinion, clustering, that disagrees)."""
UNUSUAL_BOX_COUNT = 11
VIEWS = ("scale", "translate")
"""Test-time views for detection (ModelArts reasons 23 and 24): the image downscaled to 80%, and shifted
by an eighth of its side; the boxes are mapped back and compared with the plain prediction."""
DETECTOR_FOLDS = 3
CLASSIFIER_SHARE = 0.2
"""Share of the time budget for the crop classifier; the detectors get the rest."""
BATCH = 16
MIN_SIDE = 0.01
PSEUDO_MIN_CONFIDENCE = 0.8
PSEUDO_PER_LABELED = 8
"""Precise: at most this many pseudo-labeled images per labeled one join the student's training."""


@dataclass
class Prediction:
    """One image's candidates: boxes (float [n, 4], pixels), label indices and scores (descending)."""

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    detector_scores: np.ndarray | None = None
    """The detector's own score per candidate, when the model gives one (ours does): what a box is
    proposed on. Its calibrated `scores` say how far to trust it."""

    def kept_mask(self, keep: float = dcal.KEEP) -> np.ndarray:
        """The proposed boxes: detector score >= keep (the model's decision, like a classifier's argmax),
        or, for a model without detector scores, score >= keep."""
        return (self.detector_scores if self.detector_scores is not None else self.scores) >= keep

    def kept(self, keep: float = dcal.KEEP) -> Prediction:
        k = self.kept_mask(keep)
        raw = self.detector_scores[k] if self.detector_scores is not None else None
        return Prediction(self.boxes[k], self.labels[k], self.scores[k], raw)


@dataclass
class Judged:
    source: str
    size: tuple[int, int, int]
    boxes: list[VocBox]
    confidence: float
    views_disagree: list[str] = field(default_factory=list)
    other_model_disagrees: bool = False


# --------------------------------------------------------------------------------------- images


def fetch_images(
    ctx: RunContext, sources: Iterable[str], unreadable: list[dict[str, str]]
) -> Iterator[tuple[str, torch.Tensor]]:
    """(source, uint8 3 x H x W) at the image's own size; unusable images go to `unreadable`."""
    for _, uri, image in decoded_images(ctx, sources, unreadable):
        array = np.asarray(image.convert("RGB"), dtype=np.uint8)
        yield uri, torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _batches(items: Iterator[tuple[str, torch.Tensor]], size: int) -> Iterator[list[tuple[str, torch.Tensor]]]:
    chunk: list[tuple[str, torch.Tensor]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# ---------------------------------------------------------------------------------- predictions


def _view(image: torch.Tensor, view: str) -> tuple[torch.Tensor, float, float]:
    """The image under a test-time view (float 0..1) and how to map its boxes back: (x, scale, shift)."""
    _, h, w = image.shape
    if view == "scale":
        x = F.interpolate(image[None], size=(max(1, round(h * 0.8)), max(1, round(w * 0.8))), mode="bilinear")[0]
        return x, 0.8, 0.0
    shift = max(1, min(h, w) // 8)
    x = image.mean(dim=(1, 2), keepdim=True).expand(3, h + shift, w + shift).clone()
    x[:, shift:, shift:] = image
    return x, 1.0, float(shift)


def _as_prediction(out: dict[str, torch.Tensor], scale: float = 1.0, shift: float = 0.0) -> Prediction:
    """Candidates by descending score, boxes mapped back to the image; boxes thinner than MIN_SIDE px (FCOS
    can answer zero-width boxes) are dropped: a VOC reader refuses them."""
    boxes = (out["boxes"].detach().double().cpu().numpy().reshape(-1, 4) - shift) / scale
    scores = out["scores"].detach().double().cpu().numpy()
    labels = out["labels"].detach().cpu().numpy().astype(np.int64)
    order = np.argsort(-scores, kind="stable")
    order = order[(boxes[order, 2] - boxes[order, 0] >= MIN_SIDE) & (boxes[order, 3] - boxes[order, 1] >= MIN_SIDE)]
    raw = out.get("detector_scores")
    detector = raw.detach().double().cpu().numpy()[order] if raw is not None else None
    return Prediction(boxes[order], labels[order], scores[order], detector)


@torch.inference_mode()
def predict_images(model: Any, images: list[torch.Tensor], views: Iterable[str] = ()) -> list[dict[str, Prediction]]:
    """Per image: {"plain": candidates, view: candidates under that view, boxes mapped back}."""
    floats = [im.float() / 255.0 for im in images]
    results: list[dict[str, Prediction]] = [{} for _ in images]
    for i, out in enumerate(_call_by_size(model, floats)):
        results[i]["plain"] = _as_prediction(out)
    for view in views:
        viewed = [_view(x, view) for x in floats]
        for i, out in enumerate(_call_by_size(model, [v[0] for v in viewed])):
            results[i][view] = _as_prediction(out, viewed[i][1], viewed[i][2])
    return results


def _call_by_size(model: Any, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """The model on groups of same-size images, never on a single image: a detector pads a batch to its
    largest image, and a batch of one takes other kernels (scores differ by ~1e-5, measured), so an image
    must get the same answer in whichever shard and batch it falls."""
    out: list[dict[str, torch.Tensor] | None] = [None] * len(images)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(i)
    for members in groups.values():
        batch = [images[i] for i in members]
        answers = _call(model, batch if len(batch) > 1 else batch * 2)
        for i, answer in zip(members, answers, strict=False):
            out[i] = answer
    return [o for o in out if o is not None]


def _call(model: Any, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    out = model(images)
    if isinstance(out, tuple):  # a scripted torchvision detector returns (losses, detections)
        out = out[1]
    if not isinstance(out, list) or len(out) != len(images):
        raise PipelineError(
            "ModelInvalid",
            "the detection model must return one dict (boxes, labels, scores) per input image, got "
            f"{type(out).__name__}",
        )
    for det in out:
        if not isinstance(det, dict) or not {"boxes", "labels", "scores"} <= set(det):
            raise PipelineError("ModelInvalid", "each output of the detection model needs boxes, labels and scores")
    return out


def same_voc_boxes(a: list[VocBox], b: list[VocBox]) -> bool:
    """:func:`same_boxes` for written boxes (labels by name)."""
    names = sorted({box.name for box in a + b})

    def prediction(boxes: list[VocBox]) -> Prediction:
        coords = np.array([[x.xmin, x.ymin, x.xmax, x.ymax] for x in boxes], dtype=np.float64).reshape(-1, 4)
        scores = np.array([x.confidence or 0.0 for x in boxes], dtype=np.float64)
        return Prediction(coords, np.array([names.index(x.name) for x in boxes], dtype=np.int64), scores)

    return same_boxes(prediction(a), prediction(b))


def with_teacher(student: Judged, teacher: Judged) -> Judged:
    """Precise: the student's boxes, judged by the teacher (the Fast model) whose image confidence the
    held-out images calibrate. Where the two agree the teacher's confidence applies to the same boxes;
    where they do not, the student's boxes have no calibrated confidence, and a person decides.

    Why: accepting on the student's own confidence broke the target (seed 8: 0.870 and 0.714 of the
    accepted images right at targetPrecision 0.9, estimated 0.90; docs/benchmarks.md), because the
    student, trained on its own pseudo-labels, scores higher than the fold detectors it is calibrated by."""
    agree = same_voc_boxes(student.boxes, teacher.boxes)
    confidence = teacher.confidence if agree else min(teacher.confidence, student.confidence)
    return replace(student, confidence=confidence, other_model_disagrees=not agree)


def same_boxes(a: Prediction, b: Prediction) -> bool:
    """The same objects with the same labels (greedy IoU >= 0.5 matching, counts equal)."""
    if len(a.boxes) != len(b.boxes):
        return False
    m = dcal.match(a.boxes, a.scores, b.boxes)
    return bool((m >= 0).all() and (a.labels == b.labels[m]).all())


# ------------------------------------------------------------------------------- active learning


def active_learning(ctx: RunContext, train_steps: int | None = None) -> dict:
    job, spec = ctx.job, ctx.job.spec
    al = spec.active_learning
    assert al is not None
    pre = read_and_check(ctx, read_manifest(ctx.storage, spec.dataset.manifest))
    classes = pre.classes
    unreadable = list(pre.unreadable)
    budget = float(time_budget(job) or DEFAULT_TIME_BUDGET_SECONDS)
    precise = str(al.algorithm) == Algorithm.PRECISE.value

    # ---- labeled scenes
    ctx.progress.set_stage(Stage.TRAIN, total=100)
    scenes, gt_labels, difficult = [], [], []
    images = dict(fetch_images(ctx, (e.source for e in pre.labeled), unreadable))
    check_unreadable_share(unreadable, pre.total_images, spec)
    for entry in pre.labeled:
        if entry.source not in images:
            continue
        boxes = pre.boxes.get(entry.source, [])
        scenes.append(
            Scene(images[entry.source], torch.tensor([b[1:5] for b in boxes], dtype=torch.float32).reshape(-1, 4))
        )
        gt_labels.append(np.array([pre.class_index[b.name] for b in boxes], dtype=np.int64))
        difficult.append(np.array([b.difficult for b in boxes], dtype=bool))
    if len(scenes) < 2:
        raise PipelineError("TooFewImagesPerLabel", f"only {len(scenes)} labeled image(s) could be decoded")
    det_spec = choose_detector_spec([(int(s.image.shape[2]), int(s.image.shape[1])) for s in scenes])
    det_cfg = DetectorTrainConfig()
    if train_steps is not None:
        det_cfg.steps = train_steps
    init = _pretrained_init(ctx, det_spec)

    # ---- detectors: K folds for held-out evidence, then one on every labeled image
    started = time.monotonic()
    detector_budget = budget * (1 - CLASSIFIER_SHARE)
    k = min(DETECTOR_FOLDS, len(scenes))
    order = np.random.default_rng(al.seed).permutation(len(scenes))
    folds = [np.sort(order[f::k]) for f in range(k)]
    held_out: list[Prediction | None] = [None] * len(scenes)
    raw_scores: list[np.ndarray] = [np.zeros(0)] * len(scenes)
    steps_done, truncated = 0, False
    runs = k + 1
    for f, held in enumerate(folds):
        train_idx = np.setdiff1d(np.arange(len(scenes)), held)
        detector, steps, cut = train_detector(
            [scenes[i] for i in train_idx],
            det_spec,
            det_cfg,
            seed=al.seed * 1000 + f,
            deadline=started + detector_budget * (f + 1) / runs,
            init=init,
            progress=_train_progress(ctx, f, runs),
        )
        steps_done, truncated = steps_done + steps, truncated or cut
        for i, (found, scores) in zip(held, detect(detector, [scenes[i].image for i in held]), strict=True):
            raw_scores[i] = scores.double().numpy()
            held_out[i] = Prediction(found.double().numpy(), np.zeros(len(found), dtype=np.int64), raw_scores[i])
    final_detector, steps, cut = train_detector(
        scenes, det_spec, det_cfg, seed=al.seed * 1000 + k, deadline=started + detector_budget, init=init
    )
    steps_done, truncated = steps_done + steps, truncated or cut
    ctx.progress.update(80)

    # ---- crop classifier (the classification ensemble on the labeled boxes)
    crops, crop_labels, crop_of = _labeled_crops(scenes, gt_labels, difficult)
    cls_spec = ModelSpec("smallcnn", (CROP_SIZE, CROP_SIZE), len(classes), mean=(0.5,) * 3, std=(0.25,) * 3, width=16)
    cfg = TrainConfig(seed=al.seed, device="cpu")
    if train_steps is not None:
        cfg.steps = cfg.ssl_steps = train_steps
    remaining = max(10.0, budget - (time.monotonic() - ctx.started))
    swap = BackgroundSwap([s.image for s in scenes])
    ensemble = train_fold_ensemble(cls_spec, crops, crop_labels, AugmentPolicy(hflip=False), cfg, remaining, mix=swap)
    temperature = cal.cautious_temperature(ensemble.oof_logits, ensemble.labels, seed=al.seed)
    classifier = CalibratedEnsemble([m.cpu() for m in ensemble.members], temperature).eval()
    oof_class_probs = cal.ensemble_probs(ensemble.oof_logits, temperature)
    ctx.progress.update(100)

    # ---- calibrate: objectness on held-out boxes, then image confidence on held-out images
    ctx.progress.set_stage(Stage.CALIBRATE)
    positives = []
    for i, pred in enumerate(held_out):
        assert pred is not None
        gt = scenes[i].boxes.double().numpy()
        positives.append(dcal.match(pred.boxes, pred.scores, gt) >= 0)
    held_raw, held_positive = np.concatenate(raw_scores), np.concatenate(positives)
    obj_a, obj_b = dcal.fit_platt(held_raw, held_positive)
    objectness_fit = {
        "a": round(obj_a, 6),
        "b": round(obj_b, 6),
        "heldOutCandidates": len(held_raw),
        "heldOutObjectsFound": int(held_positive.sum()),
        "heldOutObjects": int(sum(len(s.boxes) for s in scenes)),
    }
    log.info("objectness on held-out candidates: %s", objectness_fit)
    model = ExportedDetector(final_detector, classifier, cls_spec.mean, cls_spec.std, obj_a, obj_b).eval()
    oof_log_conf, oof_right = [], []
    for i, pred in enumerate(held_out):
        assert pred is not None
        scored = _held_out_scores(model, scenes[i], pred, positives[i], crop_of, oof_class_probs, i)
        kept = scored.kept()
        oof_right.append(
            dcal.image_right(
                kept.boxes, kept.labels, kept.scores, scenes[i].boxes.double().numpy(), gt_labels[i], difficult[i]
            )
        )
        oof_log_conf.append(np.log(max(dcal.image_confidence(scored.scores, kept=scored.kept_mask()), 1e-300)))
    right = np.array(oof_right, dtype=bool)
    gamma = dcal.fit_gamma(np.array(oof_log_conf), right)
    oof_conf = np.exp(gamma * np.array(oof_log_conf))
    label_counts = [int((~d).sum()) for d in difficult]
    max_boxes = max(label_counts) if label_counts else 0

    # ---- inference
    judged, infer_seconds = _infer(ctx, model, pre.unlabeled, classes, gamma, unreadable)
    # The threshold is chosen on the pool as the Fast model sees it: that is what the held-out images
    # calibrate (Precise's student is judged through it, `with_teacher`).
    flagged = np.array([len(j.views_disagree) == len(VIEWS) for j in judged], dtype=bool)
    conf = np.array([j.confidence for j in judged])
    calibration = dcal.choose_threshold(conf[~flagged], oof_conf, right, al.target_precision, gamma)
    pseudo_labeled = 0
    if precise:
        # Self-training (teacher -> student): the unlabeled images the Fast model is surest of, with its
        # kept boxes, join the labeled ones, and the final detector is trained again on both.
        pseudo = sorted(
            (j for j in judged if j.boxes and not j.views_disagree and j.confidence >= PSEUDO_MIN_CONFIDENCE),
            key=lambda j: -j.confidence,
        )[: PSEUDO_PER_LABELED * len(scenes)]
        by_source = {j.source: j for j in pseudo}
        extra_scenes = [
            Scene(image, torch.tensor([b[1:5] for b in by_source[source].boxes], dtype=torch.float32).reshape(-1, 4))
            for source, image in fetch_images(ctx, list(by_source), [])
        ]
        pseudo_labeled = len(extra_scenes)
        if extra_scenes and time.monotonic() - ctx.started < budget:
            ctx.progress.set_stage(Stage.TRAIN, total=100)
            student, steps, cut = train_detector(
                scenes + extra_scenes,
                det_spec,
                det_cfg,
                seed=al.seed * 1000 + k + 1,
                deadline=ctx.started + budget,
                init=final_detector.state_dict(),
            )
            steps_done, truncated = steps_done + steps, truncated or cut
            model = ExportedDetector(student, classifier, cls_spec.mean, cls_spec.std, obj_a, obj_b).eval()
            again: list[dict[str, str]] = []
            students, more_seconds = _infer(ctx, model, pre.unlabeled, classes, gamma, again)
            known = {u["source"] for u in unreadable}
            unreadable += [u for u in again if u["source"] not in known]
            infer_seconds += more_seconds
            teachers = {j.source: j for j in judged}
            judged = [with_teacher(j, teachers[j.source]) for j in students if j.source in teachers]
            changed = sum(j.other_model_disagrees for j in judged)
            calibration.notes.append(
                f"Precise: the self-trained detector's boxes differ from the Fast model's on {changed} of "
                f"{len(judged)} images (hard, reason {OTHER_MODEL_DISAGREES}); where they agree, the Fast "
                "model's calibrated image confidence decides"
            )

    # ---- hard examples, write
    if precise and pseudo_labeled == 0:
        calibration.notes.append(
            f"Precise: no unlabeled image reached image confidence {PSEUDO_MIN_CONFIDENCE} with both views "
            "agreeing, so there was nothing to self-train on: these results are Fast's"
        )
    with tempfile.TemporaryDirectory(prefix="autolabel-model-") as tmp:
        meta = _export(
            model,
            det_spec,
            classes,
            Path(tmp),
            calibration,
            extra={
                "trainedOn": {"manifest": spec.dataset.manifest, "labeledImages": len(scenes)},
                "maxBoxes": max_boxes,
            },
        )
        return _write(
            ctx,
            judged,
            calibration,
            classes,
            pre,
            unreadable,
            ACTIVE_LEARNING_BY,
            max_boxes,
            model_dir=tmp,
            extra={
                "algorithm": str(al.algorithm),
                "training": {
                    "architecture": "fcos-smallcnn+crop-classifier",
                    "detectorInputSide": det_spec.input_side,
                    "detectorFolds": k,
                    "detectorSteps": steps_done,
                    "classifierModels": len(ensemble.members),
                    "classifierSteps": ensemble.steps_done,
                    "truncatedByTimeBudget": truncated or ensemble.truncated,
                    "timeBudgetSeconds": budget,
                    "labeledImages": len(scenes),
                    "labeledBoxes": int(sum(len(s.boxes) for s in scenes)),
                    "pretrained": meta.get("pretrained"),
                    "semiSupervised": precise,
                    "pseudoLabeledImages": pseudo_labeled,
                },
                "heldOut": {"images": len(right), "right": int(right.sum()), "objectness": objectness_fit},
                "inferenceSeconds": round(infer_seconds, 3),
                "inferenceImagesPerSecond": round(len(judged) / infer_seconds, 3) if infer_seconds > 0 else None,
            },
        )


def _train_progress(ctx: RunContext, fold: int, runs: int) -> Callable[[int, int], None]:
    """Training progress 0-80% over the detector runs (the crop classifier takes the rest)."""

    def report(done: int, total: int) -> None:
        ctx.progress.update(int(80 * (fold * total + done) / (runs * total)))

    return report


def _pretrained_init(ctx: RunContext, det_spec: Any) -> dict[str, torch.Tensor] | None:
    """spec.activeLearning.pretrainedWeights: a state_dict in object storage for this detector or its
    backbone. Read once; a file that fits nothing fails the job with ModelInvalid."""
    al = ctx.job.spec.active_learning
    uri = getattr(al, "pretrained_weights", None)
    if not uri:
        return None
    from .model import build_detector

    try:
        data = ctx.storage.read_bytes(uri)
    except StorageUnreachable:
        raise
    except StorageError as exc:
        raise PipelineError("ModelNotFound", f"spec.activeLearning.pretrainedWeights {uri}: {exc}") from exc
    detector = build_detector(det_spec)
    with tempfile.NamedTemporaryFile(suffix=".pt") as tmp:
        tmp.write(data)
        tmp.flush()
        try:
            loaded = load_pretrained(detector, Path(tmp.name))
        except Exception as exc:
            raise PipelineError("ModelInvalid", f"spec.activeLearning.pretrainedWeights {uri}: {exc}") from exc
    log.info("pretrained weights from %s: %s", uri, loaded)
    return detector.state_dict()


def _labeled_crops(
    scenes: list[Scene], gt_labels: list[np.ndarray], difficult: list[np.ndarray]
) -> tuple[torch.Tensor, np.ndarray, dict[tuple[int, int], int]]:
    """uint8 crops of every non-difficult labeled box, their labels, and (image, box) -> crop index."""
    crops: list[torch.Tensor] = []
    labels: list[int] = []
    crop_of: dict[tuple[int, int], int] = {}
    for i, scene in enumerate(scenes):
        keep = np.flatnonzero(~difficult[i])
        if len(keep) == 0:
            continue
        x = crop_boxes(scene.image[None].float() / 255.0, [scene.boxes[keep]])
        for n, b in enumerate(keep):
            crop_of[(i, int(b))] = len(labels)
            crops.append((x[n] * 255).round().clamp(0, 255).to(torch.uint8))
            labels.append(int(gt_labels[i][b]))
    return torch.stack(crops), np.array(labels, dtype=np.int64), crop_of


def _held_out_scores(
    model: ExportedDetector,
    scene: Scene,
    pred: Prediction,
    positive: np.ndarray,
    crop_of: dict[tuple[int, int], int],
    oof_class_probs: np.ndarray,
    image_index: int,
) -> Prediction:
    """A held-out image's candidates scored as the exported model scores them, with the class
    probabilities of a classifier that did not see the box (its out-of-fold crop prediction) where the
    candidate matches a labeled box; a candidate on no object is wrong whatever its label."""
    objectness = model.objectness(torch.from_numpy(pred.scores)).double().numpy()
    gt = scene.boxes.double().numpy()
    matched = dcal.match(pred.boxes, pred.scores, gt)
    labels = np.zeros(len(pred.boxes), dtype=np.int64)
    probs = np.zeros(len(pred.boxes))
    unmatched = [n for n, j in enumerate(matched) if (image_index, int(j)) not in crop_of]
    if unmatched:
        with torch.inference_mode():
            crops = crop_boxes(scene.image[None].float() / 255.0, [torch.from_numpy(pred.boxes[unmatched]).float()])
            x = (crops - model.cls_mean) / model.cls_std  # type: ignore[operator]
            p = torch.exp(model.classifier(x)).double().numpy()
        for row, n in enumerate(unmatched):
            labels[n], probs[n] = int(p[row].argmax()), float(p[row].max())
    for n, j in enumerate(matched):
        if (image_index, int(j)) in crop_of:
            p_oof = oof_class_probs[crop_of[(image_index, int(j))]]
            labels[n], probs[n] = int(p_oof.argmax()), float(p_oof.max())
    scores = objectness * probs
    order = np.argsort(-scores, kind="stable")
    return Prediction(pred.boxes[order], labels[order], scores[order], pred.scores[order])


def _infer(
    ctx: RunContext,
    model: Any,
    entries: list[ManifestEntry],
    classes: list[str],
    gamma: float,
    unreadable: list[dict[str, str]],
) -> tuple[list[Judged], float]:
    """Predict every image with its test-time views."""
    ctx.progress.set_stage(Stage.INFERENCE, total=len(entries))
    started = time.monotonic()
    judged: list[Judged] = []
    done = 0
    for chunk in _batches(fetch_images(ctx, (e.source for e in entries), unreadable), BATCH):
        for (source, image), preds in zip(chunk, predict_images(model, [im for _, im in chunk], VIEWS), strict=True):
            plain = preds["plain"]
            kept = plain.kept()
            disagree = [v for v in VIEWS if not same_boxes(kept, preds[v].kept())]
            boxes = [
                VocBox(classes[int(lab)], float(b[0]), float(b[1]), float(b[2]), float(b[3]), float(min(max(s, 0), 1)))
                for b, lab, s in zip(kept.boxes, kept.labels, kept.scores, strict=True)
            ]
            confidence = dcal.image_confidence(plain.scores, gamma=gamma, kept=plain.kept_mask())
            judged.append(Judged(source, (int(image.shape[2]), int(image.shape[1]), 3), boxes, confidence, disagree))
        done = len(judged) + len(unreadable)
        ctx.progress.update(min(done, len(entries)))
    return judged, time.monotonic() - started


def _verdict(j: Judged, threshold: float, max_boxes: int) -> tuple[bool, float, list[int]]:
    reasons: list[int] = []
    if not j.boxes:
        reasons.append(NO_OBJECT)
    if j.confidence < threshold:
        reasons.append(LOW_CONFIDENCE)
    if j.other_model_disagrees:
        reasons.append(OTHER_MODEL_DISAGREES)
    if max_boxes and len(j.boxes) > max_boxes + 1:
        reasons.append(UNUSUAL_BOX_COUNT)
    views_hard = len(j.views_disagree) == len(VIEWS)
    if views_hard:
        reasons += [TTA_REASONS[v] for v in j.views_disagree]
    agreement = 1 - len(j.views_disagree) / len(VIEWS)
    coefficient = 1 - j.confidence * (0.5 + 0.5 * agreement)
    return bool(reasons), float(min(max(coefficient, 0.0), 1.0)), sorted(reasons)


def _write(
    ctx: RunContext,
    judged: list[Judged],
    calibration: dcal.ImageCalibration,
    classes: list[str],
    pre: PreflightResult,
    unreadable: list[dict[str, str]],
    annotated_by: str,
    max_boxes: int,
    model_dir: str | None,
    extra: dict[str, Any],
    images_read: int | None = None,
) -> dict:
    """Stage write: result.manifest with a VOC file per image, model/, summary.json (last)."""
    spec = ctx.job.spec
    ctx.progress.set_stage(Stage.WRITE, total=len(judged))
    reasons_seen: Counter[str] = Counter()
    accepted_conf = []
    with ResultWriter(ctx.writer, annotated_by, spec.task, annotations=ctx.results) as results:
        for n, j in enumerate(judged, start=1):
            hard, coefficient, reasons = _verdict(j, calibration.threshold, max_boxes)
            reasons_seen.update(str(r) for r in reasons)
            if not hard:
                accepted_conf.append(j.confidence)
            results.add_detection(j.source, j.boxes, j.size, hard, coefficient, reasons)
            if n % 256 == 0:
                ctx.progress.update(n)
        close_results(results, pre, {j.source for j in judged}, unreadable, images_read, spec, model_dir)
        estimated = float(np.mean(accepted_conf)) if accepted_conf else None
        summary: dict[str, Any] = {
            **run_summary(
                ctx,
                results,
                pre,
                unreadable,
                target=calibration.target,
                estimated=estimated,
                verifiable=calibration.verifiable,
                labels=classes,
                reasons=reasons_seen,
            ),
            "acceptedShare": round(results.auto_labeled / results.total, 6) if results.total else None,
            "calibration": calibration.to_json(),
            "notes": calibration.notes,
            **extra,
        }
        return results.write_summary(summary)


def _export(
    model: ExportedDetector,
    det_spec: Any,
    classes: list[str],
    folder: Path,
    calibration: dcal.ImageCalibration,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """model.pt (TorchScript, the contract in model.py) and labels.json."""
    script_detector(model).save(str(folder / "model.pt"))
    meta = {
        "task": "ObjectDetection",
        "labels": classes,
        "inputSize": [det_spec.input_side, det_spec.input_side],
        "mean": list(det_spec.mean),
        "std": list(det_spec.std),
        "input": "list of float images [3, H, W] in 0..1, any size",
        "outputs": "per image {boxes [N,4] x1 y1 x2 y2 pixels, labels [N] index into labels, scores [N]}",
        "keepThreshold": dcal.KEEP,
        "candidateThreshold": 0.05,
        "createdBy": ACTIVE_LEARNING_BY,
        "architecture": "fcos-smallcnn+crop-classifier",
        "calibration": calibration.to_json(),
        **extra,
    }
    (folder / "labels.json").write_text(json.dumps(meta, indent=2))
    return meta


# --------------------------------------------------------------------------------- pre-labeling


def pre_labeling(ctx: RunContext) -> dict:
    spec = ctx.job.spec
    assert spec.pre_labeling is not None
    model_uri, model_bytes, labels_bytes = read_prelabeling_model(ctx)
    model, labels, meta = load_detection_model(model_bytes, labels_bytes, model_uri)
    keep = float(meta.get("keepThreshold", dcal.KEEP))
    gamma = float(meta.get("calibration", {}).get("imageConfidenceExponent", 1.0))
    pre = read_and_check(ctx, shard_share(ctx))
    unreadable = list(pre.unreadable)
    oof_conf, right, evidence_unreadable, notes = _labeled_evidence(ctx, model, labels, keep, gamma)
    images_read = pre.total_images
    if ctx.shard_index == 0:  # every shard reads the same labeled images; the first one lists them
        unreadable += evidence_unreadable
        images_read += len(right) + len(evidence_unreadable)
    judged, infer_seconds = _infer(ctx, model, pre.unlabeled, labels, gamma, unreadable)
    target = spec.active_learning.target_precision if spec.active_learning else 0.95
    # A given model's scores are not trusted: its threshold is the conservative one measured on the
    # labeled images (Clopper-Pearson), and its precision is what it achieves there.
    threshold = cal.smallest_threshold(oof_conf, right, target, cal.SELECT_ALPHA)
    above = oof_conf >= threshold
    n, k = int(above.sum()), int(right[above].sum())
    calibration = dcal.ImageCalibration(
        target,
        threshold,
        gamma,
        k / n if n else None,
        n > 0 and cal.clopper_pearson_lower(k, n, cal.VERIFY_ALPHA) >= target,
        len(right),
        n,
        k,
        notes,
    )
    if threshold >= cal.NEVER:
        calibration.notes.append(
            f"no threshold reaches {target} on the {len(right)} labeled image(s) at 80% confidence: every image "
            "is a hard example"
        )
    summary = _write(
        ctx,
        judged,
        calibration,
        labels,
        pre,
        unreadable,
        PRE_LABELING_BY,
        int(meta.get("maxBoxes", 0) or 0),
        model_dir=None,
        images_read=images_read,
        extra={
            "model": {"uri": model_uri, "version": spec.pre_labeling.model.version},
            "inferenceSeconds": round(infer_seconds, 3),
            "inferenceImagesPerSecond": round(len(judged) / infer_seconds, 3) if infer_seconds > 0 else None,
        },
    )
    # Measured on labeled images, not the model's own scores:
    summary["estimatedPrecision"] = round(k / n, 6) if n and summary.get("autoLabeled") else None
    return summary


def load_detection_model(model_bytes: bytes, labels_json: bytes, source: str) -> tuple[Any, list[str], dict]:
    """A TorchScript detection model and its labels.json; errors (ModelInvalid) name `source`."""
    try:
        meta = json.loads(labels_json)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PipelineError("ModelInvalid", f"{source}: labels.json is not valid JSON: {exc}") from exc
    labels = meta.get("labels") if isinstance(meta, dict) else None
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
        raise PipelineError("ModelInvalid", f"{source}: labels.json field 'labels' must be a list of names")
    try:
        model = torch.jit.load(io.BytesIO(model_bytes), map_location="cpu")
    except Exception as exc:
        raise PipelineError("ModelInvalid", f"{source}: not a TorchScript model: {exc}") from exc
    model.eval()
    try:  # a smoke test on one blank image: the contract, not the quality
        _call(model, [torch.zeros(3, 64, 64)])
    except PipelineError:
        raise
    except Exception as exc:
        raise PipelineError(
            "ModelInvalid", f"{source}: the model fails on a 64x64 image (expected the detection contract): {exc}"
        ) from exc
    return model, [str(x) for x in labels], meta


def _labeled_evidence(
    ctx: RunContext, model: Any, labels: list[str], keep: float, gamma: float
) -> tuple[np.ndarray, np.ndarray, list[dict[str, str]], list[str]]:
    """The model on every labeled image (first occurrence of each source): (image confidence, all right?),
    the labeled images that could not be used, and notes."""
    first: dict[str, ManifestEntry] = {}
    for entry in read_manifest(ctx.storage, ctx.job.spec.dataset.manifest):
        if entry.is_labeled:
            first.setdefault(entry.source, entry)
    index = {name: i for i, name in enumerate(labels)}
    unknown: set[str] = set()
    unreadable: list[dict[str, str]] = []
    truth: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for source, entry in first.items():
        boxes: list[VocBox] = []
        try:
            for ann in entry.annotations:
                if ann.annotation_loc:
                    boxes += read_voc(ctx.storage.read_bytes(ann.annotation_loc), ann.annotation_loc).boxes
        except StorageUnreachable:
            raise
        except (StorageError, ValueError) as exc:
            unreadable.append({"source": source, "reason": f"annotation file: {exc}"})
            continue
        unknown.update(b.name for b in boxes if b.name not in index)
        truth[source] = (
            np.array([b[1:5] for b in boxes], dtype=np.float64).reshape(-1, 4),
            np.array([index.get(b.name, -1) for b in boxes], dtype=np.int64),
            np.array([b.difficult for b in boxes], dtype=bool),
        )
    ctx.progress.set_stage(Stage.CALIBRATE, total=len(truth))
    conf, right = [], []
    for chunk in _batches(fetch_images(ctx, iter(truth), unreadable), BATCH):
        for (source, _), preds in zip(chunk, predict_images(model, [im for _, im in chunk]), strict=True):
            plain = preds["plain"]
            kept = plain.kept(keep)
            gt_boxes, gt_labels, difficult = truth[source]
            right.append(dcal.image_right(kept.boxes, kept.labels, kept.scores, gt_boxes, gt_labels, difficult))
            conf.append(dcal.image_confidence(plain.scores, keep, gamma, kept=plain.kept_mask(keep)))
        ctx.progress.update(len(conf))
    notes = []
    if unknown:
        listed = ", ".join(f'"{name}"' for name in sorted(unknown)[:5]) + (" and more" if len(unknown) > 5 else "")
        notes.append(f"labeled boxes carry label(s) the model does not know ({listed}): those images count as wrong")
    return np.array(conf), np.array(right, dtype=bool), unreadable, notes
