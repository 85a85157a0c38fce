"""Training smoke tests on scikit-learn's digits: the models learn, runs are deterministic, export works."""

from __future__ import annotations

import ast
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from autolabel_worker import calibrate as cal
from autolabel_worker import ensemble
from autolabel_worker.augment import AugmentPolicy, apply_tta
from autolabel_worker.data import load_digits_arrays, split_labeled, write_digits_dataset
from autolabel_worker.ensemble import member_spec, predict_held_out, stratified_folds, train_fold_ensemble
from autolabel_worker.models import (
    CalibratedEnsemble,
    ModelSpec,
    build_model,
    choose_model_spec,
    export_model,
    load_model,
)
from autolabel_worker.predict import Predictor
from autolabel_worker.semi import AdaptiveThreshold, train_fixmatch
from autolabel_worker.train import TrainConfig, TrainingRun, predict_logits, to_input, train_supervised

POLICY = AugmentPolicy(hflip=False)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, np.ndarray]:
    images, labels = load_digits_arrays()
    x = torch.from_numpy(images).unsqueeze(1).repeat(1, 3, 1, 1)
    return x, labels


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def split(labels: np.ndarray, per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    lab = split_labeled(labels, per_class, seed)
    return lab, np.setdiff1d(np.arange(len(labels)), lab)


def training_run(
    spec: ModelSpec, x: torch.Tensor, labels: np.ndarray, cfg: TrainConfig, seconds: float, seed: int = 0
) -> TrainingRun:
    return TrainingRun(spec, x, torch.as_tensor(labels), POLICY, cfg, time.monotonic() + seconds, seed)


def test_training_modules_import_in_one_direction() -> None:
    """train <- semi <- ensemble <- pipeline: the shared helpers import neither algorithm's caller."""
    root = Path(__file__).resolve().parents[2] / "job_image" / "autolabel_worker"

    def imported(module: str) -> set[str]:
        tree = ast.parse((root / f"{module}.py").read_text())
        return {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}

    assert not imported("train") & {"semi", "ensemble", "pipeline"}
    assert "train" in imported("semi") and not imported("semi") & {"ensemble", "pipeline"}
    assert {"train", "semi"} <= imported("ensemble")


def test_model_spec_follows_the_image_size() -> None:
    small = choose_model_spec([(8, 8)] * 5, 10)
    assert small.arch == "smallcnn" and small.input_size == (8, 8)
    odd = choose_model_spec([(30, 17), (31, 20), (29, 18)], 3)
    assert odd.arch == "smallcnn" and odd.input_size == (32, 32)
    big = choose_model_spec([(640, 480)], 3, accelerated=True)
    assert big.arch == "resnet18" and big.input_size == (224, 224)
    big_on_cpu = choose_model_spec([(640, 480)], 3)
    assert big_on_cpu.arch == "smallcnn" and big_on_cpu.input_size == (64, 64)


def test_standardized_members_answer_the_same_for_an_image_brighter_or_with_more_contrast() -> None:
    spec = choose_model_spec([(32, 32)], 6)
    assert [member_spec(spec, f, 5, 2).standardize for f in range(5)] == [False, True, False, True, False]
    assert not any(member_spec(spec, f, 5, 0).standardize for f in range(5))  # the worker's default
    backbone = choose_model_spec([(640, 480)], 3, accelerated=True)
    assert not member_spec(backbone, 1, 5, 2).standardize  # a pretrained backbone keeps its normalization
    torch.manual_seed(0)
    model = build_model(member_spec(spec, 1, 5, 2), pretrained=False).eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), model(1.7 * x + 0.4), atol=1e-4)  # contrast and brightness
        assert torch.allclose(torch.jit.script(model)(x), model(x), atol=1e-5)  # the exported model does the same
        assert torch.isfinite(model(torch.zeros(1, 3, 32, 32))).all()  # a blank image divides by no zero


def test_supervised_training_learns_digits(digits: tuple[torch.Tensor, np.ndarray]) -> None:
    x, labels = digits
    lab, held = split(labels, 10)
    spec = choose_model_spec([(8, 8)], 10)
    cfg = TrainConfig(steps=200, seed=0)
    model, steps, truncated = train_supervised(training_run(spec, x[lab], labels[lab], cfg, 120))
    acc = (predict_logits(model, to_input(x[held], spec)).argmax(1).numpy() == labels[held]).mean()
    assert not truncated and steps > 0
    assert acc > 0.7, f"held-out accuracy {acc:.3f} (chance is 0.1)"


def test_time_budget_truncates_training(digits: tuple[torch.Tensor, np.ndarray]) -> None:
    x, labels = digits
    lab, _ = split(labels, 5)
    spec = choose_model_spec([(8, 8)], 10)
    _, steps, truncated = train_supervised(training_run(spec, x[lab], labels[lab], TrainConfig(steps=10_000), 0.5))
    assert truncated and steps < 10_000


def record_training_images(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """The images each fold model of `train_fold_ensemble` trains on, in training order."""
    trained_on: list[torch.Tensor] = []
    real = ensemble.train_supervised

    def spy(run: TrainingRun) -> tuple[torch.nn.Module, int, bool]:
        trained_on.append(run.images.clone())
        return real(run)

    monkeypatch.setattr(ensemble, "train_supervised", spy)
    return trained_on


def assert_every_row_is_out_of_fold(
    ens: ensemble.FoldEnsemble,
    x_lab: torch.Tensor,
    spec: ModelSpec,
    folds: list[np.ndarray],
    trained_on: list[torch.Tensor],
    views: list[str],
) -> None:
    """Each labeled image's out-of-fold row (logits, and the test-time views' predictions) was written by
    the fold model that held it out, which never trained on it, and not by one that did."""
    pixels = [img.numpy().tobytes() for img in x_lab]
    assert len(set(pixels)) == len(pixels)  # the labeled images are told apart by their pixels
    assert len(trained_on) == len(folds) == len(ens.members)
    for f, held in enumerate(folds):
        seen = {img.numpy().tobytes() for img in trained_on[f]}
        assert len(seen) == len(x_lab) - len(held)
        assert not seen & {pixels[i] for i in held}, f"fold model {f} trained on an image it holds out"
        xi = to_input(x_lab[held], spec)
        rows = ens.oof_logits[0, held]
        assert np.all(np.abs(rows).sum(axis=1) > 0), f"fold {f}: out-of-fold rows never written"
        np.testing.assert_allclose(rows, predict_logits(ens.members[f], xi).double().numpy(), rtol=1e-6)
        trained_on_them = ens.members[(f + 1) % len(folds)]
        assert not np.allclose(rows, predict_logits(trained_on_them, xi).double().numpy())
        for v, view in enumerate(views):
            assert ens.oof_view_preds is not None
            expected = predict_logits(ens.members[f], apply_tta(xi, view, spec.mean, spec.std)).argmax(dim=1).numpy()
            np.testing.assert_array_equal(ens.oof_view_preds[0, v, held], expected)


def test_fold_ensemble_is_deterministic_and_out_of_fold(
    digits: tuple[torch.Tensor, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    x, labels = digits
    lab, _ = split(labels, 5)
    spec = choose_model_spec([(8, 8)], 10)
    cfg = TrainConfig(folds=5, steps=60, seed=7)
    views = ["crop", "translate", "darker"]
    trained_on = record_training_images(monkeypatch)
    a = train_fold_ensemble(spec, x[lab], labels[lab], POLICY, cfg, budget_seconds=300, views=views)
    folds = stratified_folds(labels[lab], 5, 7)
    assert sorted(np.concatenate(folds).tolist()) == list(range(50))
    assert all(len(np.unique(labels[lab][f])) == 10 for f in folds)  # one image of every class per fold
    assert len(a.members) == 5 and a.oof_logits.shape == (1, 50, 10)
    assert_every_row_is_out_of_fold(a, x[lab], spec, folds, trained_on, views)
    b = train_fold_ensemble(spec, x[lab], labels[lab], POLICY, cfg, budget_seconds=300, views=views)
    np.testing.assert_array_equal(a.oof_logits, b.oof_logits)
    assert a.oof_view_preds is not None and b.oof_view_preds is not None
    np.testing.assert_array_equal(a.oof_view_preds, b.oof_view_preds)


def test_fixmatch_learns_and_thresholds_adapt(digits: tuple[torch.Tensor, np.ndarray]) -> None:
    x, labels = digits
    lab, held = split(labels, 5)
    spec = choose_model_spec([(8, 8)], 10)
    cfg = TrainConfig(ssl_steps=120, seed=0)
    model, steps, _ = train_fixmatch(training_run(spec, x[lab], labels[lab], cfg, 120), x[held])
    acc = (predict_logits(model, to_input(x[held], spec)).argmax(1).numpy() == labels[held]).mean()
    assert steps == 120
    assert acc > 0.6, f"held-out accuracy {acc:.3f}"
    th = AdaptiveThreshold(3, momentum=0.5)
    th.update(torch.tensor([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1]]))
    t = th.thresholds()
    assert t[0] == pytest.approx(float(th.global_level)) and t[1] < t[0]  # rarer class, lower threshold


def test_held_out_predictions_run_under_the_same_autocast_as_inference(
    digits: tuple[torch.Tensor, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The temperature is fitted on the held-out logits and applied at inference: both must come from the
    same numerics (bf16 autocast on CUDA, none on the CPU), on the device the model runs on."""
    x, _ = digits
    spec = choose_model_spec([(8, 8)], 10)
    torch.manual_seed(0)
    member = build_model(spec, pretrained=False).eval()
    calls: list[tuple[str, torch.dtype | None, bool]] = []
    real = torch.autocast

    def spy(device_type: str, dtype: torch.dtype | None = None, enabled: bool = True, **kw: object) -> torch.autocast:
        calls.append((device_type, dtype, enabled))
        return real(device_type, dtype=dtype, enabled=enabled)

    monkeypatch.setattr(torch, "autocast", spy)
    predict_held_out(member, x[:20], spec, ["crop"])
    held_out, calls[:] = list(calls), []
    model = CalibratedEnsemble([member], temperature=1.0).eval()
    Predictor(model, spec.input_size, spec.mean, spec.std, ["crop"], torch.device("cpu")).predict(x[:20])
    inference = list(calls)

    assert held_out, "the held-out predictions ran outside any autocast context"
    assert set(held_out) == set(inference) == {("cpu", torch.bfloat16, False)}


def test_export_and_load_round_trip(
    digits: tuple[torch.Tensor, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, labels = digits
    lab, held = split(labels, 5)
    spec = choose_model_spec([(8, 8)], 10)
    views = ["crop", "scale", "translate"]
    trained_on = record_training_images(monkeypatch)
    ens = train_fold_ensemble(spec, x[lab], labels[lab], POLICY, TrainConfig(folds=2, steps=20), 60, views=views)
    # every labeled image's held-out model also predicted each test-time view of it (calibrate.py)
    assert ens.oof_view_preds is not None and ens.oof_view_preds.shape == (1, 3, len(lab))
    assert_every_row_is_out_of_fold(ens, x[lab], spec, stratified_folds(labels[lab], 2, 0), trained_on, views)
    class_temperatures = [0.5 + 0.05 * c for c in range(10)]  # the ensemble's, one per predicted class
    model = CalibratedEnsemble(
        ens.members, temperature=0.8, ensemble_temperature=class_temperatures, point_temperature=0.6
    ).eval()
    names = [str(i) for i in range(10)]
    model_path, labels_path = export_model(model, spec, names, tmp_path, task="ImageClassification")
    bundle = load_model(model_path.read_bytes(), labels_path.read_bytes(), str(tmp_path))
    assert bundle.labels == names and bundle.input_size == (8, 8) and bundle.meta["task"] == "ImageClassification"
    xi = to_input(x[held[:64]], spec)
    with torch.no_grad():
        np.testing.assert_allclose(bundle.model(xi).numpy(), model(xi).numpy(), atol=1e-5)
        probs = torch.exp(bundle.model(xi)).sum(1)
        member_logits = torch.stack([m.eval()(xi) for m in ens.members]).double().numpy()
    np.testing.assert_allclose(probs.numpy(), 1.0, atol=1e-4)
    # the exported model gives the confidences the calibration computed, each class at its own temperature
    expected = cal.sharpened(cal.ensemble_probs(member_logits, 0.8), np.array(class_temperatures))
    np.testing.assert_allclose(torch.exp(bundle.model(xi)).detach().numpy(), expected, atol=1e-4)
    assert bundle.has_features
    # and, for estimatedPrecision, each label's probability at the point temperature and the members' votes
    with torch.no_grad():
        _, _, estimate = bundle.model.forward_with_estimate(xi)
    label = expected.argmax(axis=1)
    at_point = cal.sharpened(cal.ensemble_probs(member_logits, 0.6), np.array(class_temperatures))
    np.testing.assert_allclose(estimate[:, 0].numpy(), at_point[np.arange(len(label)), label], atol=1e-4)
    np.testing.assert_allclose(estimate[:, 1].numpy(), (member_logits.argmax(axis=2) == label).mean(axis=0))
    with pytest.raises(ValueError, match="labels"):
        load_model(model_path.read_bytes(), b'{"labels": ["only-one"]}', "m/")


def test_another_ensemble_rates_the_labels_it_is_given_not_its_own(digits: tuple[torch.Tensor, np.ndarray]) -> None:
    """`estimate_of` (a Precise run's Fast models rating the semi-supervised models' labels): the given
    label's probability at the point temperature, the share of members voting for it, and whether it is
    the rating ensemble's own label; the Predictor returns it beside the model's own estimate."""
    x, _ = digits
    spec = choose_model_spec([(8, 8)], 10)
    torch.manual_seed(1)
    members = [build_model(spec, pretrained=False).eval() for _ in range(3)]
    class_temperatures = [0.6 + 0.03 * c for c in range(10)]
    witness = CalibratedEnsemble(
        members, temperature=1.3, ensemble_temperature=class_temperatures, point_temperature=0.9
    )
    xi = to_input(x[:40], spec)
    with torch.no_grad():
        member_logits = torch.stack([m(xi) for m in members]).double().numpy()
    own = cal.sharpened(cal.ensemble_probs(member_logits, 1.3), np.array(class_temperatures)).argmax(axis=1)
    given = (own + np.arange(40) % 2) % 10  # its own label on every other image, another class on the rest
    with torch.no_grad():
        rating = witness.estimate_of(xi, torch.as_tensor(given)).numpy()
    mean_at_point = cal.ensemble_probs(member_logits, 0.9)
    # the ensemble temperature goes by the rater's own label (the argmax at the point temperature here)
    at_point = cal.sharpened(mean_at_point, np.array(class_temperatures))
    np.testing.assert_allclose(rating[:, 0], at_point[np.arange(40), given], atol=1e-4)
    np.testing.assert_allclose(rating[:, 1], (member_logits.argmax(axis=2) == given).mean(axis=0))
    np.testing.assert_array_equal(rating[:, 2], (given == own).astype(np.float32))
    model = CalibratedEnsemble(members[:2], temperature=1.0).eval()
    out = Predictor(model, spec.input_size, spec.mean, spec.std, [], torch.device("cpu"), witness=witness).predict(
        x[:40]
    )
    assert out.estimate is not None and out.witness is not None and out.witness.shape == (40, 3)
    with torch.no_grad():
        expected = witness.estimate_of(xi, torch.as_tensor(out.probs.argmax(axis=1))).numpy()
    np.testing.assert_allclose(out.witness, expected, atol=1e-5)
    plain = Predictor(model, spec.input_size, spec.mean, spec.std, [], torch.device("cpu")).predict(x[:40])
    assert plain.witness is None


def test_digits_dataset_writer(tmp_path: Path) -> None:
    ds = write_digits_dataset(tmp_path / "d", labeled_per_class=5, seed=1)
    lines = ds.manifest.read_text().splitlines()
    assert ds.labeled == 50 and ds.unlabeled == 1747 and len(lines) == 1797
    assert sum('"annotation"' in line for line in lines) == 50
    truth = __import__("json").loads(ds.ground_truth.read_text())
    assert len(truth) == 1747 and "annotation" not in ds.ground_truth.read_text()
    big = write_digits_dataset(tmp_path / "d", labeled_per_class=5, seed=1, repeat=3)
    assert big.unlabeled == 3 * 1747
