"""One labeling run, stage by stage: manifest -> preflight -> train -> calibrate -> predict -> hard
examples -> write. Shared by the container entrypoint and ``autolabel run --local``. This module holds
image classification; ObjectDetection runs go to ``detection/run.py`` (same stages, see docs/detection.md),
and what both share is in ``stages.py``.

ActiveLearning trains a K-fold ensemble on the labeled images (Fast: supervised; Precise: FixMatch with
the unlabeled images too), calibrates it on the out-of-fold predictions, labels every unlabeled image and
exports the ensemble as ``model/``. PreLabeling runs a given TorchScript model over this shard's share of
the unlabeled images and flags hard examples without changing its predictions; its precision is measured
on the dataset's labeled images (every shard alike), never taken from the model's own confidence or from
what its labels.json says.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autolabel.api import Algorithm, AutoLabelJob, Mode, SecondOpinionMode, Task
from autolabel.contract import DEFAULT_TIME_BUDGET_SECONDS, Stage, shard_prefix, time_budget
from autolabel.manifest import ManifestEntry, read_manifest
from autolabel.storage import ScopedWriter, Storage

from . import calibrate as cal
from .augment import TTA_REASONS, AugmentPolicy, tta_views
from .detection import run as detection_run
from .ensemble import FoldEnsemble, choose_precise, train_fold_ensemble
from .errors import PipelineError
from .hard_examples import HardExampleRule, distance_limits, nearest_same_class_distance
from .mirror import MIRROR_MIN_SIDE, MIRROR_POOL_SAMPLE, mirror_images
from .models import CalibratedEnsemble, ModelSpec, choose_model_spec, export_model, load_model, median_size
from .outputs import ACTIVE_LEARNING_BY, PRE_LABELING_BY, ResultWriter, merge_shards
from .predict import Predictor, iter_batches
from .preflight import PreflightError, PreflightResult, check_unreadable_share
from .progress import ProgressReporter
from .second_opinion import SecondOpinion, fit_second_opinion
from .stages import (
    RunContext,
    close_results,
    decoder,
    load_images,
    read_and_check,
    read_prelabeling_model,
    run_summary,
    shard_share,
)
from .train import ProgressFn, TrainConfig, fit_input_to_budget, to_input

log = logging.getLogger(__name__)

UNLABELED_MEMORY_BYTES = 512 * 2**20
FAST_SHARE_OF_PRECISE = 1.0
"""Share of a Precise run's time budget that its Fast ensemble (the fallback and the starting point) may
use: all of it, so that Precise starts from exactly the models a Fast run with the same budget would
have (Fast stops early on small images, and whatever it leaves goes to semi-supervised training). With
0.3, on a machine where Fast needed the whole budget, Precise's Fast was weaker than a Fast run's and a
Precise run that kept its semi-supervised models (better than *that* Fast) labeled 0.33 of a pool right
against a Fast run's 0.80 (docs/benchmarks.md, "Quality beyond the tuning set")."""


def run_job(
    job: AutoLabelJob,
    storage: Storage,
    output_prefix: str,
    shard_index: int = 0,
    shard_count: int = 1,
    train_steps: int | None = None,
) -> dict:
    """Run the job (or one PreLabeling shard) and return the summary written to ``summary.json``.

    ``train_steps`` replaces the optimizer steps per fold model of both algorithms (tests and benchmarks
    shorten training with it; the time budget still applies); None keeps ``TrainConfig``'s defaults.
    """
    spec = job.spec
    if str(spec.mode) == Mode.ACTIVE_LEARNING.value and shard_count != 1:
        raise PipelineError("InvalidJob", f"ActiveLearning runs as one worker, got {shard_count} shards")
    results = writer = ScopedWriter(storage, output_prefix)
    if shard_count > 1:
        writer = writer.scoped(shard_prefix(shard_index))
    seed = spec.active_learning.seed if spec.active_learning else 0
    torch.manual_seed(seed)
    threads = os.environ.get("AUTOLABEL_TORCH_THREADS")
    if threads:  # small models on shared CPUs run faster single-threaded than with contended threads
        torch.set_num_threads(int(threads))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with ProgressReporter(writer, stage=Stage.PREFLIGHT) as progress:
        ctx = RunContext(job, storage, writer, progress, time.monotonic(), device, shard_index, shard_count, results)
        try:
            detection = str(spec.task) == Task.OBJECT_DETECTION.value
            if str(spec.mode) == Mode.ACTIVE_LEARNING.value:
                summary = (detection_run.active_learning if detection else _active_learning)(ctx, train_steps)
            else:
                summary = (detection_run.pre_labeling if detection else _pre_labeling)(ctx)
        except BaseException as exc:
            progress.fail(str(exc) or type(exc).__name__)
            raise
        progress.done()
    if shard_count > 1:
        # Every shard tries the merge once its own summary is written; only the run that finds all
        # shards' summaries merges (idempotent, so two finishing together write the same objects).
        top = ScopedWriter(storage, output_prefix)
        merged = merge_shards(storage, top, shard_count, manifest=spec.dataset.manifest)
        if merged:
            log.info("all %d shards done: merged into %s", shard_count, output_prefix)
        else:
            log.info("shard %d/%d done; other shards still running, not merged yet", shard_index, shard_count)
    return summary


# ----------------------------------------------------------------------------------------- stages


def train_config(job: AutoLabelJob, steps: int | None = None) -> tuple[TrainConfig, float, bool]:
    """Training settings for the job: (config, budget seconds, semi-supervised?). `steps`, when given,
    replaces the steps per fold model of both algorithms (see `run_job`)."""
    al = job.spec.active_learning
    assert al is not None
    budget = float(time_budget(job) or DEFAULT_TIME_BUDGET_SECONDS)
    cfg = TrainConfig(seed=al.seed, device="cuda" if torch.cuda.is_available() else "cpu")
    if steps is not None:
        cfg.steps = cfg.ssl_steps = steps
    return cfg, budget, str(al.algorithm) == Algorithm.PRECISE.value


def _active_learning(ctx: RunContext, train_steps: int | None = None) -> dict:
    job, spec = ctx.job, ctx.job.spec
    al = spec.active_learning
    assert al is not None
    pre = read_and_check(ctx, read_manifest(ctx.storage, spec.dataset.manifest))
    classes = pre.classes
    unreadable = list(pre.unreadable)

    # ---- train
    cfg, budget, semi = train_config(job, train_steps)
    sizes = [size for size, n in pre.sizes.items() for _ in range(min(n, 1000))]
    model_spec = choose_model_spec(sizes, len(classes), accelerated=ctx.device.type == "cuda")
    image_side = min(median_size(sizes))
    # Whether to mirror is decided once the labeled images are decoded (`mirror_images`); a mirror costs
    # the probe nothing measurable either way.
    policy = AugmentPolicy(hflip=image_side >= MIRROR_MIN_SIDE)
    ctx.progress.set_stage(Stage.TRAIN, total=100)
    fast_budget = budget * FAST_SHARE_OF_PRECISE if semi else budget
    probe_started = time.monotonic()
    model_spec, fitted_from = fit_input_to_budget(model_spec, policy, cfg, fast_budget)
    probe_seconds = time.monotonic() - probe_started
    x_lab, kept = load_images(ctx, pre.labeled, model_spec.input_size, unreadable)
    check_unreadable_share(unreadable, pre.total_images, spec)
    labeled = [pre.labeled[i] for i in kept]
    y_lab = np.array([pre.class_index[_single_label(e)] for e in labeled], dtype=np.int64)
    _check_counts_after_decoding(y_lab, classes)

    def unlabeled_sample() -> torch.Tensor:
        pick = np.sort(np.random.default_rng(al.seed).permutation(len(pre.unlabeled))[:MIRROR_POOL_SAMPLE])
        return load_images(ctx, [pre.unlabeled[i] for i in pick], model_spec.input_size, [])[0]

    mirror = mirror_images(al.mirror_images, image_side, x_lab, y_lab, unlabeled_sample)
    policy = AugmentPolicy(hflip=mirror.keeps_class)
    log.info("mirror images %s: %s", "used" if mirror.keeps_class else "not used", mirror.reason)
    x_unlab = None
    precise_notes: list[str] = []
    if semi:
        # Unlabeled images for semi-supervised training are held in memory as uint8: cap them by bytes too
        # (20,000 digits are 4 MB; at 224 px the cap allows about 3,400 images).
        per_image = 3 * model_spec.input_size[0] * model_spec.input_size[1]
        cfg.max_unlabeled = max(1, min(cfg.max_unlabeled, UNLABELED_MEMORY_BYTES // per_image))
        rng = np.random.default_rng(al.seed)
        pick = np.sort(rng.permutation(len(pre.unlabeled))[: cfg.max_unlabeled])
        x_unlab, _ = load_images(ctx, [pre.unlabeled[i] for i in pick], model_spec.input_size, [])
        if len(x_unlab) == 0:
            raise PipelineError("NoUnlabeledImages", "no unlabeled image could be decoded for semi-supervised training")
    train_started = time.monotonic() - probe_seconds  # the probe's time is the training's
    views = tta_views(policy)
    fast_share = 0.5 if semi else 1.0  # of the progress bar

    def report(start: float, share: float) -> ProgressFn:
        return lambda done, total: ctx.progress.update(int(100 * (start + share * done / max(total, 1))))

    ensemble = train_fold_ensemble(
        model_spec,
        x_lab,
        y_lab,
        policy,
        cfg,
        fast_budget - probe_seconds,
        progress=report(0.0, fast_share),
        views=views,
    )
    precise_info: dict[str, Any] | None = None
    witness_of: FoldEnsemble | None = None
    if semi:
        # Precise trains Fast's ensemble first (on its share of the budget), starts each semi-supervised
        # fold model from Fast's model of the same fold, and keeps the semi-supervised ensemble only when
        # it does at least as well on the same held-out labeled images (`choose_precise`): a Precise run
        # is never silently worse than Fast.
        fast = ensemble
        left = max(budget - (time.monotonic() - train_started), 0.0)
        precise = train_fold_ensemble(
            model_spec,
            x_lab,
            y_lab,
            policy,
            cfg,
            left,
            x_unlab=x_unlab,
            progress=report(fast_share, 1 - fast_share),
            views=views,
            init_members=fast.members,
        )
        choice = choose_precise(fast, precise)
        ensemble = precise if choice.use_precise else fast
        witness_of = fast if choice.use_precise else None
        precise_info = choice.to_json(fast, precise)
        if not choice.use_precise:
            precise_notes.append(f"Precise fell back to the Fast models: {choice.reason}")
            log.warning("Precise fell back to the Fast models: %s", choice.reason)
        else:
            log.info("Precise kept: %s", choice.reason)
    train_seconds = time.monotonic() - train_started
    del x_unlab

    # Before the run's own calibration: the benchmark's recorder keeps the last temperatures it sees.
    # One decoded sample of the pool for both ensembles' temperatures (the witness's and the run's own).
    sample = _sharpness_sample(ctx, pre.unlabeled, model_spec, al.seed)
    witness = _witness(witness_of, sample, model_spec, ctx.device, al.seed) if witness_of is not None else None

    # ---- calibrate (temperature from out-of-fold predictions; thresholds after inference)
    ctx.progress.set_stage(Stage.CALIBRATE)
    temperature = cal.fit_temperature(ensemble.oof_logits, ensemble.labels)
    cautious_t = cal.cautious_temperature(ensemble.oof_logits, ensemble.labels, seed=al.seed)
    sharpness = _ensemble_sharpness(ensemble, sample, model_spec, ctx.device, cautious_t)
    del sample
    log.info("ensemble temperature: %s", sharpness.reason)
    model = CalibratedEnsemble(
        [m.cpu() for m in ensemble.members],
        cautious_t,
        sharpness.temperatures(model_spec.num_classes).tolist(),
        point_temperature=temperature,
    )
    model.eval()
    with torch.inference_mode():
        _, ref_feats_t = model.forward_with_features(to_input(x_lab, model_spec))
    ref_feats = ref_feats_t.double().numpy()
    limits = distance_limits(ref_feats, y_lab, len(classes))
    flags = HardExampleRule(np.zeros(len(classes)), TTA_REASONS, limits)  # thresholds come after inference
    opinion = (
        fit_second_opinion(x_lab, y_lab, len(classes), al.seed)
        if al.second_opinion == SecondOpinionMode.AUTO
        else SecondOpinion.silent("not used: activeLearning.secondOpinion is Never")
    )
    log.info("second opinion (texture statistics) %s", opinion.reason)
    oof_correct, oof_flagged, check_flagged = _held_out_view_flags(ensemble, flags, tta_views(policy), opinion)
    likelihood_ratio = cal.views_likelihood_ratio(oof_correct, oof_flagged)

    # ---- inference
    predictor = Predictor(
        model, model_spec.input_size, model_spec.mean, model_spec.std, tta_views(policy), ctx.device, witness=witness
    )
    scratch, hist, infer_seconds = _infer(
        ctx, predictor, pre.unlabeled, len(classes), unreadable, ref_feats, y_lab, flags, likelihood_ratio, opinion
    )

    # ---- thresholds, hard examples, write
    calibration = cal.finish(
        hist,
        ensemble.oof_logits,
        ensemble.labels,
        target=al.target_precision,
        temperature=temperature,
        cautious_temperature=cautious_t,
        oof_flagged=check_flagged,
        likelihood_ratio=likelihood_ratio,
        min_confidence=al.min_confidence,
    )
    calibration.sharpness = sharpness
    calibration.notes[:0] = (
        precise_notes
        + _input_notes(fitted_from, model_spec, budget)
        + _schedule_notes(ensemble, budget)
        + mirror.notes()
        + opinion.notes()
    )
    rule = HardExampleRule(calibration.thresholds_array(len(classes)), TTA_REASONS, limits)
    with tempfile.TemporaryDirectory(prefix="autolabel-model-") as tmp:
        export_model(
            model,
            model_spec,
            classes,
            Path(tmp),
            task=str(spec.task),
            extra={
                "ttaViews": tta_views(policy),
                "calibration": calibration.to_json(classes),
                "trainedOn": {"manifest": spec.dataset.manifest, "labeledImages": len(y_lab)},
            },
        )
        summary = _write_results(
            ctx,
            scratch,
            rule,
            classes,
            ACTIVE_LEARNING_BY,
            calibration,
            pre,
            unreadable,
            model_dir=tmp,
            extra={
                "algorithm": str(al.algorithm),
                "training": {
                    "architecture": model_spec.arch,
                    "inputSize": list(model_spec.input_size),
                    "inputSizeFittedFrom": list(fitted_from) if fitted_from else None,
                    "mirrorImages": {"used": mirror.keeps_class, "reason": mirror.reason},
                    "folds": len(ensemble.members),
                    "steps": ensemble.steps_done,
                    "stepsScheduled": ensemble.steps_scheduled,
                    "stepsConfigured": ensemble.steps_configured,
                    "truncatedByTimeBudget": ensemble.truncated,
                    "cutByDeadline": ensemble.cut_by_deadline,
                    "timeBudgetSeconds": budget,
                    "seconds": round(train_seconds, 3),
                    "labeledImages": len(y_lab),
                    "unlabeledImagesUsed": min(cfg.max_unlabeled, len(pre.unlabeled)) if semi else 0,
                },
                "precise": precise_info,
                "secondOpinion": opinion.to_json(),
                "inferenceSeconds": round(infer_seconds, 3),
                "inferenceImagesPerSecond": round(scratch.count / infer_seconds, 3) if infer_seconds > 0 else None,
            },
        )
    return summary


def _input_notes(fitted_from: tuple[int, int] | None, spec: ModelSpec, budget: float) -> list[str]:
    if not fitted_from:
        return []
    return [
        f"the images were trained and labeled at {spec.input_size[1]}x{spec.input_size[0]} px instead of "
        f"{fitted_from[1]}x{fitted_from[0]}: the time budget ({budget:g} s) could not train the configured steps "
        "at the larger size on this machine (a larger activeLearning.timeBudgetSeconds keeps more detail)"
    ]


def _schedule_notes(ensemble: FoldEnsemble, budget: float) -> list[str]:
    """What the time budget did to the training of the models that label the images."""
    if ensemble.cut_by_deadline:
        return [
            f"the time budget ({budget:g} s) stopped training before the end of its schedule "
            f"({ensemble.steps_done} of {ensemble.steps_scheduled} scheduled steps over all models, "
            f"{ensemble.steps_configured} configured): the models are weaker than they could be"
        ]
    if ensemble.steps_scheduled < ensemble.steps_configured:
        return [
            f"training was fitted to the time budget ({budget:g} s): {ensemble.steps_scheduled} of "
            f"{ensemble.steps_configured} configured steps over all models (a larger "
            "activeLearning.timeBudgetSeconds trains longer)"
        ]
    return []


def _pre_labeling(ctx: RunContext) -> dict:
    spec = ctx.job.spec
    assert spec.pre_labeling is not None
    model_uri, model_bytes, labels_bytes = read_prelabeling_model(ctx)
    try:
        bundle = load_model(model_bytes, labels_bytes, model_uri)
    except ValueError as exc:
        raise PipelineError("ModelInvalid", str(exc)) from exc

    pre = read_and_check(ctx, shard_share(ctx))
    unreadable = list(pre.unreadable)
    views = bundle.meta.get("ttaViews", ["crop", "scale", "translate"])
    views = [v for v in views if v in TTA_REASONS]
    predictor = Predictor(
        bundle.model, bundle.input_size, bundle.mean, bundle.std, views, ctx.device, with_features=False
    )
    flags = HardExampleRule(np.zeros(len(bundle.labels)), TTA_REASONS, None)
    evidence = _labeled_evidence(ctx, predictor, bundle.labels, flags)
    images_read = pre.total_images
    if ctx.shard_index == 0:  # every shard reads the same labeled images; the first one lists and counts them
        unreadable += evidence.unreadable
        images_read += evidence.images
    elif evidence.unreadable:
        log.warning("%d labeled images cannot be used (listed by shard 0)", len(evidence.unreadable))
    trained_on = bundle.meta.get("trainedOn")
    if isinstance(trained_on, dict) and trained_on.get("manifest") == spec.dataset.manifest:
        evidence.notes.append(
            "labels.json says the model was trained on this dataset's labeled images: the precision measured "
            "on them is optimistic"
        )
    scratch, hist, infer_seconds = _infer(
        ctx, predictor, pre.unlabeled, len(bundle.labels), unreadable, None, None, flags
    )
    target = spec.active_learning.target_precision if spec.active_learning else 0.95
    min_confidence = spec.active_learning.min_confidence if spec.active_learning else None
    # Never trusted: whoever made the model (labels.json's createdBy is the user's to write), its precision
    # is what it achieves on the labeled images, checked the way ActiveLearning's held-out predictions are.
    calibration = cal.finish(
        hist,
        evidence.log_probs,
        evidence.labels,
        target=target,
        temperature=1.0,
        cautious_temperature=1.0,
        trusted=False,
        oof_flagged=evidence.flagged,
        min_confidence=min_confidence,
    )
    calibration.notes.extend(evidence.notes)
    rule = HardExampleRule(calibration.thresholds_array(len(bundle.labels)), TTA_REASONS, None)
    return _write_results(
        ctx,
        scratch,
        rule,
        bundle.labels,
        PRE_LABELING_BY,
        calibration,
        pre,
        unreadable,
        model_dir=None,
        images_read=images_read,
        extra={
            "model": {"uri": model_uri, "version": spec.pre_labeling.model.version},
            "inferenceSeconds": round(infer_seconds, 3),
            "inferenceImagesPerSecond": round(scratch.count / infer_seconds, 3) if infer_seconds > 0 else None,
        },
    )


@dataclass
class LabeledEvidence:
    """A given model's predictions on the dataset's labeled images, for `cal.finish` (PreLabeling)."""

    log_probs: np.ndarray  # (1, n, C): log-probabilities, as one "repeat" of held-out logits
    labels: np.ndarray  # (n,): the class index in the model's labels, -1 for a label the model lacks
    flagged: np.ndarray  # (n,): flagged by the test-time views (never accepted)
    unreadable: list[dict[str, str]]
    images: int  # labeled images read (readable or not)
    notes: list[str]


def _labeled_evidence(
    ctx: RunContext, predictor: Predictor, model_labels: list[str], flags: HardExampleRule
) -> LabeledEvidence:
    """Run the model over every labeled image of the manifest (first occurrence of each source): the only
    evidence of how often it is right. A store that cannot be reached raises; an image that cannot be used
    is listed in `unreadable`."""
    first: dict[str, list[str]] = {}
    for entry in read_manifest(ctx.storage, ctx.job.spec.dataset.manifest):
        if entry.is_labeled:
            first.setdefault(entry.source, entry.labels)
    label_of = {source: labels[0] for source, labels in first.items() if len(labels) == 1}
    index = {name: i for i, name in enumerate(model_labels)}
    truth = {source: index.get(label, -1) for source, label in label_of.items()}
    unknown = sorted({label for label in label_of.values() if label not in index})
    ctx.progress.set_stage(Stage.CALIBRATE, total=len(label_of))
    probs, labels, flagged, unreadable = [], [], [], []
    done = 0
    batches = iter_batches(
        ctx.storage,
        iter(label_of),
        decoder(ctx),
        predictor.input_size,
        batch_size=256,
        decode_workers=max(2, min(8, os.cpu_count() or 2)),
        pin_memory=ctx.device.type == "cuda",
    )
    for batch in batches:
        unreadable += [{"source": source, "reason": reason} for source, reason in batch.failures]
        if len(batch.sources):
            out = predictor.predict(batch.x)
            probs.append(out.probs)
            labels.append(np.array([truth[s] for s in batch.sources], dtype=np.int64))
            flagged.append(flags.flagged_apart_from_confidence(out.probs.argmax(axis=1), out.tta_pred, None))
        done += len(batch.sources) + len(batch.failures)
        ctx.progress.update(done)
    num_classes = len(model_labels)
    p = np.concatenate(probs) if probs else np.zeros((0, num_classes))
    notes = []
    if len(label_of) < len(first):
        notes.append(f"{len(first) - len(label_of)} labeled image(s) with more than one label are not measured")
    if unknown:
        listed = ", ".join(f'"{name}"' for name in unknown[:5]) + (" and more" if len(unknown) > 5 else "")
        notes.append(
            f"labeled images carry {len(unknown)} label(s) the model does not know ({listed}): its predictions "
            "on them count as wrong"
        )
    return LabeledEvidence(
        log_probs=np.log(np.maximum(p, 1e-300))[None],
        labels=np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64),
        flagged=np.concatenate(flagged) if flagged else np.zeros(0, dtype=bool),
        unreadable=unreadable,
        images=len(label_of),
        notes=notes,
    )


# -------------------------------------------------------------------------------------- inference


# The test-time views' results in the scratch file: one bit per view, bit i set when the i-th view of
# `Scratch.views` (the predictor's `tta_views`, in that order) predicted another class than the image
# itself. The hard-example rule needs only whether a view disagreed, not which class it chose, so one
# uint16 per image holds them all: the scratch file keeps a fixed-size record per image on disk, and
# memory stays flat whether a run labels a thousand images or over 100k.
VIEW_FLAGS_DTYPE = np.uint16
MAX_VIEWS = np.iinfo(VIEW_FLAGS_DTYPE).bits


def pack_view_flags(pred: np.ndarray, view_preds: dict[str, np.ndarray], views: list[str]) -> np.ndarray:
    """Per image, bit i set where `view_preds[views[i]]` differs from `pred`."""
    if len(views) > MAX_VIEWS:
        raise ValueError(f"{len(views)} test-time views do not fit in {MAX_VIEWS} bits")
    flags = np.zeros(len(pred), dtype=VIEW_FLAGS_DTYPE)
    for bit, view in enumerate(views):
        flags |= (view_preds[view] != pred).astype(VIEW_FLAGS_DTYPE) << VIEW_FLAGS_DTYPE(bit)
    return flags


def unpack_view_flags(flags: np.ndarray, pred: np.ndarray, views: list[str]) -> dict[str, np.ndarray]:
    """The views' predictions as far as `HardExampleRule` needs them: `pred` where view i agreed, -1 (no
    class) where it differed."""
    return {view: np.where((flags >> VIEW_FLAGS_DTYPE(bit)) & 1 == 1, -1, pred) for bit, view in enumerate(views)}


class Scratch:
    """Per-image predictions kept on local disk between inference and writing (memory stays flat)."""

    # "tta": the test-time views' flags (`pack_view_flags`, a VIEW_FLAGS_DTYPE)
    # "support": the second opinion's probability of "pred" over chance (second_opinion.py), NaN where it has no say
    # "estimate": what `cal.expected_correct` reads (`CalibratedEnsemble.forward_with_estimate`), NaN without it
    # "witness": the same of the witness for the label (`CalibratedEnsemble.estimate_of`), NaN without one
    DTYPE = np.dtype(
        [
            ("pred", "<i4"),
            ("conf", "<f8"),
            ("tta", "<u2"),
            ("dist", "<f4"),
            ("support", "<f4"),
            ("estimate", "<f4", (2,)),
            ("witness", "<f4", (3,)),
        ]
    )

    def __init__(self, views: list[str]):
        self.views = views
        self.dir = tempfile.TemporaryDirectory(prefix="autolabel-scratch-")
        self.sources = open(os.path.join(self.dir.name, "sources"), "w", encoding="utf-8")  # noqa: SIM115
        self.records = open(os.path.join(self.dir.name, "records"), "wb")  # noqa: SIM115
        self.count = 0

    def append(
        self,
        sources: list[str],
        pred: np.ndarray,
        conf: np.ndarray,
        tta: np.ndarray,
        dist: np.ndarray,
        support: np.ndarray | None = None,
        estimate: np.ndarray | None = None,
        witness: np.ndarray | None = None,
    ) -> None:
        rec = np.zeros(len(sources), dtype=self.DTYPE)
        rec["pred"], rec["conf"], rec["tta"], rec["dist"] = pred, conf, tta, dist
        rec["support"] = np.nan if support is None else support
        rec["estimate"] = np.nan if estimate is None else estimate
        rec["witness"] = np.nan if witness is None else witness
        rec.tofile(self.records)
        for s in sources:
            self.sources.write(s.replace("\n", " ") + "\n")
        self.count += len(sources)

    def read(self, chunk: int = 4096) -> Iterator[tuple[list[str], np.ndarray]]:
        self.sources.close()
        self.records.close()
        with (
            open(os.path.join(self.dir.name, "sources"), encoding="utf-8") as src,
            open(os.path.join(self.dir.name, "records"), "rb") as rec_file,
        ):
            while True:
                rec = np.fromfile(rec_file, dtype=self.DTYPE, count=chunk)
                if len(rec) == 0:
                    return
                yield [src.readline().rstrip("\n") for _ in range(len(rec))], rec

    def close(self) -> None:
        for f in (self.sources, self.records):
            if not f.closed:
                f.close()
        self.dir.cleanup()


def _infer(
    ctx: RunContext,
    predictor: Predictor,
    entries: list[ManifestEntry],
    num_classes: int,
    unreadable: list[dict[str, str]],
    ref_feats: np.ndarray | None,
    ref_labels: np.ndarray | None,
    flags: HardExampleRule,
    likelihood_ratio: float = 1.0,
    opinion: SecondOpinion | None = None,
) -> tuple[Scratch, cal.ConfidenceHistogram, float]:
    """Stage inference: predict every image, keep results in a Scratch and, for the images not already
    hard for other reasons (`flags`), their confidences (adjusted for having passed those checks, see
    `cal.flag_adjusted`) in the histogram that sets the thresholds. The second opinion (`opinion`) enters
    the histogram only where it confirms a label the views or the distance would flag; its disputes are
    kept for the verdicts, after the thresholds, and only take images out of what they accept."""
    ctx.progress.set_stage(Stage.INFERENCE, total=len(entries))
    scratch = Scratch(predictor.tta_views)
    hist = cal.ConfidenceHistogram(num_classes)
    started = time.monotonic()
    cuda = ctx.device.type == "cuda"
    batches = iter_batches(
        ctx.storage,
        (e.source for e in entries),
        decoder(ctx),
        predictor.input_size,
        batch_size=256,
        decode_workers=max(2, min(8, os.cpu_count() or 2)),
        pin_memory=cuda,
    )
    done = 0
    try:
        for batch in batches:
            for source, reason in batch.failures:
                unreadable.append({"source": source, "reason": reason})
            done += len(batch.sources) + len(batch.failures)
            if len(batch.sources):
                out = predictor.predict(batch.x)
                pred = out.probs.argmax(axis=1)
                conf = out.probs.max(axis=1)
                tta = pack_view_flags(pred, out.tta_pred, scratch.views)
                dist = np.zeros(len(pred))
                if out.features is not None and ref_feats is not None and ref_labels is not None:
                    dist = nearest_same_class_distance(out.features, ref_feats, ref_labels, pred, num_classes)
                support = opinion.support(batch.x, pred) if opinion is not None and opinion.used else None
                scratch.append(batch.sources, pred, conf, tta, dist, support, out.estimate, out.witness)
                other = flags.flagged_apart_from_confidence(
                    pred, out.tta_pred, dist if out.features is not None and ref_feats is not None else None, support
                )
                hist.add(pred[~other], np.asarray(cal.flag_adjusted(conf[~other], likelihood_ratio)))
            ctx.progress.update(done)
    except BaseException:
        scratch.close()
        raise
    return scratch, hist, time.monotonic() - started


def _write_results(
    ctx: RunContext,
    scratch: Scratch,
    rule: HardExampleRule,
    classes: list[str],
    annotated_by: str,
    calibration: cal.Calibration,
    pre: PreflightResult,
    unreadable: list[dict[str, str]],
    model_dir: str | None,
    extra: dict[str, Any],
    images_read: int | None = None,
) -> dict:
    """Stage write: hard-example verdicts, result.manifest, model/, summary.json (last).

    Before anything is uploaded: every unlabeled image of the run has a result line or is listed in
    `unreadable` (else ImagesUnaccounted), and the images found unusable over the whole run (preflight,
    training, inference) are within spec.images.maxUnreadableFraction of the `images_read` (default: the
    preflight's images; else TooManyUnreadableImages)."""
    spec = ctx.job.spec
    ctx.progress.set_stage(Stage.WRITE, total=scratch.count)
    reasons_seen: Counter[str] = Counter()
    expected_correct_sum = 0.0  # over the auto-labels, for estimatedPrecision (ActiveLearning)
    witness_sum, witnessed = 0.0, 0  # the same by the witness (Precise), over the auto-labels it rated
    use_distance = rule.distance_limits is not None
    written_sources: set[str] = set()
    try:
        with ResultWriter(ctx.writer, annotated_by, spec.task) as results:
            written = 0
            for sources, rec in scratch.read():
                written_sources.update(sources)
                pred = rec["pred"].astype(np.int64)
                conf = rec["conf"]
                tta_pred = unpack_view_flags(rec["tta"], pred, scratch.views)
                verdicts = rule.judge(
                    pred, conf, tta_pred, rec["dist"].astype(np.float64) if use_distance else None, rec["support"]
                )
                auto = ~np.asarray(verdicts.hard, dtype=bool)
                expected = cal.expected_correct(conf[auto], rec["estimate"][auto], calibration.likelihood_ratio)
                expected_correct_sum += float(expected.sum())
                rated = auto & ~np.isnan(rec["witness"][:, 0])
                rating = cal.expected_correct(conf[rated], rec["witness"][rated, :2], calibration.likelihood_ratio)
                witness_sum += float(rating.sum())
                witnessed += int(rated.sum())
                for i, source in enumerate(sources):
                    reasons = verdicts.reasons[i]
                    reasons_seen.update(str(r) for r in reasons)
                    results.add_classification(
                        source,
                        classes[int(pred[i])],
                        float(min(max(conf[i], 0.0), 1.0)),
                        bool(verdicts.hard[i]),
                        float(verdicts.coefficient[i]),
                        reasons,
                    )
                written += len(sources)
                ctx.progress.update(written)
            close_results(results, pre, written_sources, unreadable, images_read, spec, model_dir)
            estimated = calibration.estimated_precision
            if results.auto_labeled and calibration.trusted:
                estimated = expected_correct_sum / results.auto_labeled
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
                "calibration": calibration.to_json(classes),
                "notes": calibration.notes,
                **extra,
            }
            if results.auto_labeled == 0:
                summary["estimatedPrecision"] = None
            if witnessed and isinstance(summary.get("precise"), dict):
                summary["precise"]["estimates"] = {
                    "semiSupervisedModels": round(expected_correct_sum / results.auto_labeled, 6),
                    "fastModels": round(witness_sum / witnessed, 6),
                }
            return results.write_summary(summary)
    finally:
        scratch.close()


ENSEMBLE_SAMPLE = 1000
"""Unlabeled images on which the members' disagreement is measured (`cal.ensemble_temperature`): the
standard error of a disagreement rate near 0.1 is below 0.01 at this size, and on a 100,000-image run
they are 1% more decodes (not timed separately)."""


def _sharpness_sample(ctx: RunContext, unlabeled: list[ManifestEntry], spec: ModelSpec, seed: int) -> torch.Tensor:
    """Up to `ENSEMBLE_SAMPLE` unlabeled images (uint8), drawn with the job's seed, on which the members'
    disagreement is measured (`_ensemble_sharpness`)."""
    pick = np.sort(np.random.default_rng(seed).permutation(len(unlabeled))[:ENSEMBLE_SAMPLE])
    return load_images(ctx, [unlabeled[i] for i in pick], spec.input_size, [])[0]


def _ensemble_sharpness(
    ensemble: FoldEnsemble, sample: torch.Tensor, spec: ModelSpec, device: torch.device, member_temperature: float
) -> cal.EnsembleSharpness:
    """The ensemble's temperature from its members' disagreement on `sample` (`_sharpness_sample`)."""
    errors, points = held_out_member_errors(ensemble)
    logits = member_logits(ensemble.members, sample, spec, device)
    return cal.ensemble_temperature(logits, errors, points, member_temperature)


def _witness(
    fast: FoldEnsemble, sample: torch.Tensor, spec: ModelSpec, device: torch.device, seed: int
) -> CalibratedEnsemble:
    """A Precise run's Fast models calibrated as a Fast run would calibrate them, to rate the labels of the
    semi-supervised models (`CalibratedEnsemble.estimate_of`): they never trained on pseudo-labels, so
    they do not share the errors those labels taught the semi-supervised members."""
    point = cal.fit_temperature(fast.oof_logits, fast.labels)
    cautious = cal.cautious_temperature(fast.oof_logits, fast.labels, seed=seed)
    sharpness = _ensemble_sharpness(fast, sample, spec, device, cautious)
    witness = CalibratedEnsemble(
        [m.cpu() for m in fast.members], cautious, sharpness.temperatures(spec.num_classes).tolist(), point
    )
    return witness.eval()


def held_out_member_errors(ensemble: FoldEnsemble) -> tuple[int, int]:
    """(errors, points) of the single held-out members on the labeled images (over repeats, as a rate)."""
    oof_pred = ensemble.oof_logits.argmax(axis=2)  # (R, n): one held-out member per image and repeat
    points = len(ensemble.labels)
    return round(float((oof_pred != ensemble.labels[None, :]).mean()) * points), points


def member_logits(
    members: list[torch.nn.Module], x_u8: torch.Tensor, spec: ModelSpec, device: torch.device
) -> np.ndarray:
    """(K, n, C) logits of each member on uint8 images."""
    out = []
    with torch.inference_mode():
        for member in members:
            member.eval().to(device)
            batches = [member(to_input(b, spec).to(device)).float().cpu() for b in x_u8.split(256)]
            out.append(torch.cat(batches) if batches else torch.zeros((0, spec.num_classes)))
    return torch.stack(out).double().numpy()


def _held_out_view_flags(
    ensemble: FoldEnsemble, flags: HardExampleRule, views: list[str], opinion: SecondOpinion | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The test-time-view flags on the held-out labeled predictions, for `cal.views_likelihood_ratio`:
    (right?, flagged?) per held-out prediction of every repeat, and the flags of the averaged out-of-fold
    prediction that `cal.finish` checks (flagged by any repeat). Distance (reason 3) is left out: a
    held-out image has no labeled neighbours of its own, so the flags here are the views' alone; where the
    second opinion's held-out probability confirms a held-out prediction, it is not flagged (as in the pool)."""
    if ensemble.oof_view_preds is None or not views:
        pred = ensemble.oof_logits.mean(axis=0).argmax(axis=1)
        return pred == ensemble.labels, np.zeros(len(pred), dtype=bool), None
    correct, flagged = [], []
    for r in range(ensemble.oof_logits.shape[0]):
        pred = ensemble.oof_logits[r].argmax(axis=1)
        view_preds = {view: ensemble.oof_view_preds[r, v] for v, view in enumerate(views)}
        correct.append(pred == ensemble.labels)
        support = opinion.held_out_support(pred) if opinion is not None else None
        flagged.append(flags.flagged_apart_from_confidence(pred, view_preds, None, support))
    return np.concatenate(correct), np.concatenate(flagged), np.any(flagged, axis=0)


def _single_label(entry: ManifestEntry) -> str:
    labels = entry.labels
    if len(labels) != 1:
        raise PreflightError(
            "ManifestInvalid",
            f"line {entry.line_no} ({entry.source}): image classification needs exactly one label, got {labels}",
        )
    return labels[0]


def _check_counts_after_decoding(y: np.ndarray, classes: list[str]) -> None:
    counts = np.bincount(y, minlength=len(classes))
    short = [f'"{classes[c]}" ({counts[c]})' for c in range(len(classes)) if counts[c] < 2]
    if short:
        raise PipelineError(
            "TooFewImagesPerLabel",
            "after dropping images that could not be decoded, these labels have fewer than 2 images: "
            + ", ".join(short),
        )
