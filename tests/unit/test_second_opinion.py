"""The second opinion: texture statistics and a logistic regression, with a say only where they are skilled."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import numpy as np
import pytest
import torch
from autolabel_worker import second_opinion as so
from autolabel_worker.augment import TTA_REASONS
from autolabel_worker.ensemble import FoldEnsemble
from autolabel_worker.hard_examples import SECOND_OPINION_DISPUTES, HardExampleRule
from autolabel_worker.pipeline import Scratch, _held_out_view_flags, run_job
from PIL import Image
from skimage.feature import local_binary_pattern
from sklearn.linear_model import LogisticRegression

from autolabel.api import AutoLabelJob, results_prefix
from autolabel.manifest import CLASSIFICATION_TYPE
from autolabel.storage import Storage


def as_rgb(grey: np.ndarray) -> torch.Tensor:
    """(N, H, W) uint8 grey -> (N, 3, H, W) uint8, as the worker's loader gives images."""
    return torch.from_numpy(np.repeat(grey[:, None], 3, axis=1))


def stripes(rng: np.random.Generator, n: int, period: int) -> np.ndarray:
    """Horizontal stripes of `period` px at a random phase and contrast, with noise."""
    rows = np.arange(so.SIDE)[:, None] + rng.integers(0, period, (n, 1, 1))
    base = 128 + rng.uniform(40, 80, (n, 1, 1)) * np.sign(np.sin(2 * np.pi * rows / period))
    return np.clip(base + rng.normal(0, 8, (n, so.SIDE, so.SIDE)), 0, 255).astype(np.uint8)


def speckle(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, so.SIDE, so.SIDE)).astype(np.uint8)


def smooth(rng: np.random.Generator, n: int) -> np.ndarray:
    """Near-uniform patches: a gentle ramp and faint noise."""
    ramp = np.linspace(0, 30, so.SIDE)[None, None, :] + rng.uniform(60, 190, (n, 1, 1))
    return np.clip(ramp + rng.normal(0, 1.5, (n, so.SIDE, so.SIDE)), 0, 255).astype(np.uint8)


def textures(rng: np.random.Generator, per_class: int) -> tuple[torch.Tensor, np.ndarray]:
    grey = np.concatenate([stripes(rng, per_class, 6), speckle(rng, per_class), smooth(rng, per_class)])
    return as_rgb(grey), np.repeat(np.arange(3), per_class)


def test_a_grey_image_stays_exactly_itself() -> None:
    grey = np.random.default_rng(0).integers(0, 256, (2, so.SIDE, so.SIDE)).astype(np.uint8)
    assert np.array_equal(so.grey_thumbnails(as_rgb(grey)).numpy(), grey.astype(np.float64))


@pytest.mark.parametrize(("points", "radius"), so.LBP_SCALES)
def test_the_patterns_are_scikit_images_rotation_invariant_uniform_ones(points: int, radius: float) -> None:
    rng = np.random.default_rng(points)
    grey = rng.integers(0, 256, (3, so.SIDE, so.SIDE)).astype(np.uint8)
    grey[1, 8:24, 8:24] = 100  # a flat region: every comparison a tie
    grey[2] = smooth(rng, 1)[0]
    ours = so.lbp_histograms(so.grey_thumbnails(as_rgb(grey)), points, radius).numpy()
    for image, hist in zip(grey, ours, strict=True):
        codes = local_binary_pattern(image.astype(np.float64), points, radius, "uniform")
        expected = np.bincount(codes.astype(np.int64).ravel(), minlength=points + 2) / codes.size
        assert np.array_equal(hist, expected)


def test_the_regression_is_scikit_learns_at_c_1() -> None:
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(m, 1.0, (12, 5)) for m in (0.0, 0.7, 1.4)])
    y = np.repeat(np.arange(3), 12)
    ours = so.fit_logistic(x, y, 3)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    theirs = LogisticRegression(C=1.0, max_iter=5000, tol=1e-10).fit((x - mean) / scale, y)
    assert np.allclose(ours.weight, theirs.coef_.T, atol=1e-4)
    assert np.allclose(ours.bias - ours.bias.mean(), theirs.intercept_ - theirs.intercept_.mean(), atol=1e-4)


def test_textures_it_tells_apart_give_it_a_say_and_it_labels_new_ones_right() -> None:
    rng = np.random.default_rng(2)
    x, y = textures(rng, 5)
    opinion = so.fit_second_opinion(x, y, 3, seed=0)
    assert opinion.used and opinion.skill is not None and opinion.skill >= so.MIN_SKILL
    assert opinion.reason.startswith("used: texture statistics got")
    assert any("reason 31" in note for note in opinion.notes())
    new_x, new_y = textures(np.random.default_rng(3), 20)
    assert opinion.classifier is not None
    assert (opinion.classifier.predict(so.texture_features(new_x)) == new_y).mean() >= 0.95
    # support: the probability of the class asked about, as a multiple of chance (3 classes: at most 3)
    probs = opinion.classifier.probabilities(so.texture_features(new_x))
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert np.allclose(opinion.support(new_x, new_y), 3 * probs[np.arange(len(new_y)), new_y])
    assert (opinion.support(new_x, new_y) > 1.0).mean() >= 0.95
    assert so.disputed(opinion.support(new_x, (new_y + 1) % 3)).mean() >= 0.95


def test_classes_texture_statistics_cannot_tell_apart_leave_it_silent() -> None:
    """A bright square on the left or on the right of the same speckle: the same statistics either way."""
    rng = np.random.default_rng(4)
    grey = speckle(rng, 16)
    grey[:8, 10:22, 2:14] = 255
    grey[8:, 10:22, 18:30] = 255
    y = np.repeat(np.arange(2), 8)
    opinion = so.fit_second_opinion(as_rgb(grey), y, 2, seed=0)
    assert not opinion.used and opinion.reason.startswith("not used")
    assert opinion.notes() == []
    assert np.isnan(opinion.support(as_rgb(grey), y)).all()
    assert not so.disputed(opinion.support(as_rgb(grey), y)).any()


def test_a_class_with_one_labeled_image_leaves_it_silent() -> None:
    x, y = textures(np.random.default_rng(5), 2)
    opinion = so.fit_second_opinion(x[:5], y[:5], 3, seed=0)  # class 2 has one image
    assert not opinion.used and opinion.skill is None
    assert opinion.to_json()["used"] is False


def test_an_image_whose_label_the_second_opinion_finds_unlikely_is_hard_for_reason_31() -> None:
    rule = HardExampleRule(np.full(3, 0.5), {})
    pred, conf = np.array([0, 1, 2, 0, 1]), np.full(5, 0.99)
    # over chance: well supported; below half of chance; no say; exactly half; below chance, not below half
    support = np.array([2.0, 0.3, np.nan, 0.5, 0.8])
    verdicts = rule.judge(pred, conf, support=support)
    assert verdicts.hard.tolist() == [False, True, False, False, False]
    assert verdicts.reasons[1] == [SECOND_OPINION_DISPUTES]
    assert verdicts.coefficient[1] == pytest.approx(1 - 0.99 * 0.5)
    assert verdicts.coefficient[4] == pytest.approx(1 - 0.99)
    assert np.array_equal(rule.judge(pred, conf).hard, rule.judge(pred, conf, support=np.full(5, np.nan)).hard)


def test_views_and_distance_make_nothing_hard_where_the_second_opinion_confirms_the_label() -> None:
    rule = HardExampleRule(np.full(3, 0.5), {"flip": 20, "crop": 21}, distance_limits=np.full(3, 0.3))
    pred, conf = np.zeros(4, dtype=np.int64), np.array([0.99, 0.99, 0.99, 0.4])
    views = {"flip": np.array([1, 1, 1, 1]), "crop": np.array([1, 0, 1, 1])}  # two views disagree on 0, 2 and 3
    distance = np.array([0.1, 0.9, 0.1, 0.1])  # image 1: far, and one view disagrees
    confirming = 3 * so.CONFIRMS_AT  # 3 classes: a probability of CONFIRMS_AT, as a multiple of chance
    support = np.array([confirming, confirming, confirming - 0.01, confirming])
    verdicts = rule.judge(pred, conf, views, distance, support)
    # 0 and 1 confirmed; 2 just short of it stays hard; 3 confirmed but below its class's threshold
    assert verdicts.hard.tolist() == [False, False, True, True]
    assert verdicts.reasons[3] == [1, 20, 21]
    assert rule.flagged_apart_from_confidence(pred, views, distance, support).tolist() == [False, False, True, False]
    assert rule.flagged_apart_from_confidence(pred, views, distance).all()
    assert rule.judge(pred, conf, views, distance).hard.all()


def test_the_held_out_support_comes_from_fold_models_that_did_not_see_the_image() -> None:
    x, y = textures(np.random.default_rng(2), 5)
    opinion = so.fit_second_opinion(x, y, 3, seed=0)
    assert opinion.held_out_probabilities is not None and opinion.cross_validated_accuracy is not None
    held_out = opinion.held_out_support(y)
    assert held_out.shape == (15,) and np.all((held_out >= 0) & (held_out <= 3))
    # the held-out accuracy is the cross-validated one the gate reads
    assert (opinion.held_out_probabilities.argmax(axis=1) == y).mean() == opinion.cross_validated_accuracy
    assert np.isnan(so.SecondOpinion.silent("not used").held_out_support(y)).all()


def test_the_views_held_out_ratio_counts_a_confirmed_held_out_prediction_as_passed() -> None:
    labels = np.array([0, 0, 1, 1])
    oof_logits = np.array([[[2.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 0.0]]])  # one repeat; image 3 wrong
    views = ["flip_lr", "crop"]
    oof_view_preds = np.array([[[1, 0, 1, 1], [1, 0, 1, 1]]])  # both views disagree on images 0 and 3
    ensemble = cast(FoldEnsemble, SimpleNamespace(oof_logits=oof_logits, oof_view_preds=oof_view_preds, labels=labels))
    rule = HardExampleRule(np.full(2, 0.5), TTA_REASONS)
    classifier = so.fit_logistic(np.array([[0.0], [1.0], [0.1], [0.9]]), np.array([0, 1, 0, 1]), 2)
    # held out: image 0's class 0 at 0.9 (confirmed), image 3's predicted class 0 at 0.2 (not)
    held_out = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    opinion = so.SecondOpinion(classifier, 1.0, 1.0, "used", held_out)
    correct, flagged, check = _held_out_view_flags(ensemble, rule, views, opinion)
    assert correct.tolist() == [True, True, True, False]
    assert flagged.tolist() == [False, False, False, True]
    assert check is not None and check.tolist() == [False, False, False, True]
    _, unconfirmed, _ = _held_out_view_flags(ensemble, rule, views)
    assert unconfirmed.tolist() == [True, False, False, True]


def test_the_second_opinion_survives_the_scratch_file() -> None:
    scratch = Scratch([])
    try:
        zeros = np.zeros(3)
        support = np.array([2.5, 0.25, 1.0])
        scratch.append(["a", "b", "c"], np.array([0, 1, 2]), zeros, zeros.astype(np.uint16), zeros, support)
        scratch.append(["d"], np.array([1]), np.zeros(1), np.zeros(1, dtype=np.uint16), np.zeros(1))
        recs = np.concatenate([rec for _, rec in scratch.read()])
        assert recs["support"][:3].tolist() == [2.5, 0.25, 1.0] and np.isnan(recs["support"][3])
    finally:
        scratch.close()


def write_textures(folder: Path, labeled_per_class: int, unlabeled_per_class: int) -> Path:
    """Stripes, speckle and near-uniform patches as 32 px PNGs, with a manifest: labeled images first."""
    rng = np.random.default_rng(6)
    (folder / "images").mkdir(parents=True)
    lines = []
    for per_class, labeled in ((labeled_per_class, True), (unlabeled_per_class, False)):
        x, y = textures(rng, per_class)
        for i, (image, label) in enumerate(zip(x[:, 0].numpy(), y, strict=True)):
            name = f"images/{'l' if labeled else 'u'}{i:03d}.png"
            Image.fromarray(image).save(folder / name)
            doc: dict[str, object] = {"source": name}
            if labeled:
                doc["annotation"] = [{"type": CLASSIFICATION_TYPE, "name": str(label), "annotated-by": "human"}]
            lines.append(json.dumps(doc))
    manifest = folder / "textures.manifest"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def run_textures(tmp_path: Path, manifest: Path, **active_learning: object) -> tuple[dict, list[dict]]:
    job = AutoLabelJob.model_validate(
        {
            "metadata": {"name": "textures", "namespace": "test", "uid": str(uuid.uuid4())},
            "spec": {
                "task": "ImageClassification",
                "mode": "ActiveLearning",
                "dataset": {"manifest": str(manifest)},
                "activeLearning": {"algorithm": "Fast", "seed": 0, "timeBudgetSeconds": 10, **active_learning},
                "output": str(tmp_path / "out"),
            },
        }
    )
    out = results_prefix(job)
    summary = run_job(job, Storage(), out)
    lines = [json.loads(line) for line in Path(out, "result.manifest").read_text().splitlines()]
    return summary, lines


def test_an_image_whose_label_the_second_opinion_disputes_is_never_auto_labeled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOLABEL_TORCH_THREADS", "1")
    manifest = write_textures(tmp_path / "data", labeled_per_class=5, unlabeled_per_class=30)
    summary, lines = run_textures(tmp_path / "auto", manifest)
    assert summary["secondOpinion"]["used"] is True
    assert any("Second opinion used" in note for note in summary["notes"])
    # the second opinion, fitted as the worker fits it, on the labeled images as the worker reads them
    docs = [json.loads(line) for line in manifest.read_text().splitlines()]
    read = [np.asarray(Image.open(manifest.parent / d["source"]).convert("RGB")) for d in docs]
    x = torch.from_numpy(np.stack(read)).permute(0, 3, 1, 2).contiguous()
    labeled = np.array(["annotation" in d for d in docs])
    y = np.array([int(d["annotation"][0]["name"]) for d in docs if "annotation" in d])
    by_source = {line["source"]: line for line in lines}
    unlabeled = [by_source[str(manifest.parent / d["source"])] for d in docs if "annotation" not in d]
    pred = np.array([int(line["annotation"][0]["name"]) for line in unlabeled])
    support = so.fit_second_opinion(x[labeled], y, 3, seed=0).support(x[~labeled], pred)
    disputes = so.disputed(support.astype(np.float32))  # as the scratch file keeps it
    assert disputes.any() and not disputes.all()
    for line, disputed in zip(unlabeled, disputes, strict=True):
        assert ("31" in line.get("hard-reasons", "").split("-")) == disputed
        assert line["hard"] or not disputed

    never, never_lines = run_textures(tmp_path / "never", manifest, secondOpinion="Never")
    assert never["secondOpinion"]["used"] is False
    assert "activeLearning.secondOpinion is Never" in never["secondOpinion"]["reason"]
    assert not any("31" in line.get("hard-reasons", "").split("-") for line in never_lines)


def test_the_results_command_names_reason_31() -> None:
    from autolabel_cli.results import reason_name

    assert reason_name(str(SECOND_OPINION_DISPUTES)) == "a second model (texture statistics) finds the label unlikely"
    assert reason_name("32") == "unknown reason"
