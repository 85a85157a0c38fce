"""Detection (issue 8): image-level acceptance and its calibration on synthetic cases whose answers are
known, the exported model's contract (a list of images of any size in, one dict of boxes, labels and
scores per image out), and a corrupt, unloadable or wrong-task model failing with a clear reason.

Only behaviour and contracts are tested here, never tuned constants: the thresholds are read from the
modules (``dcal.KEEP``, ``dcal.IOU``) where a case sits on either side of them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from autolabel_worker import calibrate as cal
from autolabel_worker.detection import calibrate as dcal
from autolabel_worker.detection.model import (
    CROP_SIZE,
    ExportedDetector,
    build_detector,
    choose_detector_spec,
    script_detector,
)
from autolabel_worker.detection.run import (
    OTHER_MODEL_DISAGREES,
    Judged,
    _verdict,
    load_detection_model,
    with_teacher,
)
from autolabel_worker.errors import PipelineError
from autolabel_worker.models import CalibratedEnsemble, SmallCNN

from autolabel.manifest import VocBox
from autolabel.preconditions import check_model
from autolabel.storage import Storage, StorageConfig

SOURCE = "s3://b/m/"


def boxes(*rows: tuple[float, float, float, float]) -> np.ndarray:
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


GT = boxes((0, 0, 10, 10), (20, 20, 40, 40))
GT_LABELS = np.array([0, 1])


def right(pred: np.ndarray, labels: list[int], difficult: list[bool] | None = None) -> bool:
    scores = np.linspace(0.9, 0.8, len(pred))
    flags = None if difficult is None else np.array(difficult)
    return dcal.image_right(pred, np.array(labels, dtype=np.int64), scores, GT, GT_LABELS, flags)


# ------------------------------------------------------------------------------ image_right


def test_an_image_whose_boxes_all_match_with_the_right_labels_is_right() -> None:
    assert right(boxes((0.5, 0, 10, 10), (20, 21, 40, 40)), [0, 1])
    assert right(boxes((20, 21, 40, 40), (0.5, 0, 10, 10)), [1, 0])  # the order of the boxes is irrelevant


def test_one_wrong_label_makes_the_image_wrong() -> None:
    assert not right(boxes((0, 0, 10, 10), (20, 20, 40, 40)), [0, 0])


def test_a_missed_object_makes_the_image_wrong() -> None:
    assert not right(boxes((0, 0, 10, 10)), [0])
    assert not right(boxes(), [])  # nothing found on an image with objects


def test_an_extra_box_makes_the_image_wrong_even_with_every_object_found() -> None:
    assert not right(boxes((0, 0, 10, 10), (20, 20, 40, 40), (50, 50, 60, 60)), [0, 1, 0])
    # a second box on an object already taken is extra too
    assert not right(boxes((0, 0, 10, 10), (20, 20, 40, 40), (0, 0, 10, 9)), [0, 1, 0])


def test_an_image_without_objects_is_right_only_with_no_box() -> None:
    none = np.zeros((0, 4))
    empty = np.zeros(0, dtype=np.int64)
    assert dcal.image_right(none, empty, np.zeros(0), none, empty)
    assert not dcal.image_right(boxes((0, 0, 5, 5)), np.array([0]), np.array([0.9]), none, empty)


def test_a_difficult_object_is_neither_required_nor_extra() -> None:
    difficult = [False, True]
    assert right(boxes((0, 0, 10, 10)), [0], difficult)  # not found: fine
    assert right(boxes((0, 0, 10, 10), (20, 20, 40, 40)), [0, 1], difficult)  # found: not an extra box
    assert not right(boxes((20, 20, 40, 40)), [1], difficult)  # the other object is still required
    # the difficult flag does not excuse a box on nothing
    assert not right(boxes((0, 0, 10, 10), (50, 50, 60, 60)), [0, 0], difficult)


def test_iou_just_below_the_bar_misses_and_at_or_just_above_it_matches() -> None:
    gt = boxes((0, 0, 10, 10))
    label = np.array([0])
    score = np.array([0.9])
    # a box [0, 0, 10, h] inside the object has IoU h / 10
    below = boxes((0, 0, 10, 10 * dcal.IOU - 0.01))
    at = boxes((0, 0, 10, 10 * dcal.IOU))
    above = boxes((0, 0, 10, 10 * dcal.IOU + 0.01))
    assert dcal.box_iou(below, gt)[0, 0] < dcal.IOU <= dcal.box_iou(at, gt)[0, 0] < dcal.box_iou(above, gt)[0, 0]
    assert not dcal.image_right(below, label, score, gt, label)
    assert dcal.image_right(at, label, score, gt, label)
    assert dcal.image_right(above, label, score, gt, label)


def test_box_iou_on_known_boxes() -> None:
    a = boxes((0, 0, 10, 10), (0, 0, 2, 2))
    b = boxes((5, 0, 15, 10), (0, 0, 10, 10), (100, 100, 110, 110))
    expected = np.array([[50 / 150, 1.0, 0.0], [0.0, 4 / 100, 0.0]])
    np.testing.assert_allclose(dcal.box_iou(a, b), expected)
    assert dcal.box_iou(boxes(), b).shape == (0, 3) and dcal.box_iou(a, boxes()).shape == (2, 0)


# ------------------------------------------------------------------------------------ match


def test_match_is_greedy_by_score_and_takes_each_ground_truth_once() -> None:
    gt = boxes((0, 0, 10, 10))
    pred = boxes((0, 0, 10, 10), (0, 0, 10, 9))  # the first fits better, the second scores higher
    assert dcal.match(pred, np.array([0.6, 0.9]), gt).tolist() == [-1, 0]
    assert dcal.match(pred, np.array([0.9, 0.6]), gt).tolist() == [0, -1]


def test_a_box_whose_best_object_is_taken_falls_back_to_its_next_best_above_the_bar() -> None:
    gt = boxes((0, 0, 10, 10), (0, 2, 10, 12))
    pred = boxes((0, 0, 10, 10), (0, 1, 10, 11))  # both overlap object 0 best; the second also object 1
    assert dcal.match(pred, np.array([0.9, 0.8]), gt).tolist() == [0, 1]
    apart = boxes((0, 0, 10, 10), (0, 6, 10, 16))  # the second box's IoU with object 1 is 1/3: below the bar
    assert dcal.match(pred, np.array([0.9, 0.8]), apart).tolist() == [0, -1]


def test_match_with_nothing_on_either_side_matches_nothing() -> None:
    assert dcal.match(boxes(), np.zeros(0), GT).tolist() == []
    assert dcal.match(GT, np.array([0.9, 0.8]), boxes()).tolist() == [-1, -1]


# ------------------------------------------------------------------------- image_confidence


def test_image_confidence_is_the_product_of_kept_scores_times_one_minus_the_dropped_ones() -> None:
    keep = dcal.KEEP
    kept = [min(1.0, keep + 0.4), min(1.0, keep + 0.3)]
    dropped = [keep * 0.6, keep * 0.2]
    scores = np.array(kept + dropped)
    expected = kept[0] * kept[1] * (1 - dropped[0]) * (1 - dropped[1])
    assert dcal.image_confidence(scores) == pytest.approx(expected)
    assert dcal.image_confidence(scores, gamma=2.0) == pytest.approx(expected**2)
    assert dcal.image_confidence(scores, gamma=3.5) == pytest.approx(expected**3.5)


def test_a_score_at_the_keep_threshold_counts_as_kept() -> None:
    assert dcal.image_confidence(np.array([0.6]), keep=0.6) == pytest.approx(0.6)
    assert dcal.image_confidence(np.array([0.59]), keep=0.6) == pytest.approx(0.41)


def test_image_confidence_stays_in_zero_to_one_and_falls_with_every_doubtful_candidate() -> None:
    assert dcal.image_confidence(np.array([1.0, 0.0])) == pytest.approx(1.0)
    assert 0.0 <= dcal.image_confidence(np.array([dcal.KEEP, dcal.KEEP - 1e-3] * 50)) < 1e-10
    one = dcal.image_confidence(np.array([0.95]), keep=0.5)
    two = dcal.image_confidence(np.array([0.95, 0.2]), keep=0.5)  # a doubtful candidate
    three = dcal.image_confidence(np.array([0.95, 0.2, 0.9]), keep=0.5)  # one more box to be right about
    assert one > two > three


# ------------------------------------------------------------------------------ calibration


def test_fit_platt_recovers_a_known_logistic_model() -> None:
    rng = np.random.default_rng(0)
    true_a, true_b = 2.0, -1.0
    raw = rng.uniform(0.02, 0.98, 20_000)
    z = np.log(raw / (1 - raw))
    positive = rng.random(len(raw)) < 1 / (1 + np.exp(-(true_a * z + true_b)))
    a, b = dcal.fit_platt(raw, positive)
    assert a == pytest.approx(true_a, abs=0.1)
    assert b == pytest.approx(true_b, abs=0.1)


def test_fit_platt_with_no_evidence_is_the_identity() -> None:
    assert dcal.fit_platt(np.zeros(0), np.zeros(0, dtype=bool)) == (1.0, 0.0)


def test_fit_platt_on_a_handful_of_boxes_stays_near_the_identity() -> None:
    # the prior keeps a tiny sample from collapsing onto a step function
    a, b = dcal.fit_platt(np.array([0.9, 0.8, 0.3]), np.array([True, True, False]))
    assert 0.5 < a < 3 and abs(b) < 2


def test_fit_gamma_recovers_a_known_exponent_and_never_goes_below_one() -> None:
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.3, 1.0, 20_000)
    sharpened = rng.random(len(conf)) < conf**2.0  # the images are right less often than their confidence
    assert dcal.fit_gamma(np.log(conf), sharpened) == pytest.approx(2.0, rel=0.1)
    underconfident = rng.random(len(conf)) < conf**0.5
    assert dcal.fit_gamma(np.log(conf), underconfident) == pytest.approx(1.0)  # never more confident
    assert dcal.fit_gamma(np.zeros(0), np.zeros(0, dtype=bool)) == 1.0


def all_right(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return conf, np.ones(len(conf), dtype=bool)


def test_a_perfectly_calibrated_pool_gets_the_threshold_whose_accepted_mean_is_the_target() -> None:
    # confidences uniform on [0.5, 1]: the mean above t is (1 + t) / 2, so target 0.95 needs t = 0.9
    pool = np.linspace(0.5, 1.0, 5001)
    held_out = all_right(np.full(100, 0.99))
    result = dcal.choose_threshold(pool, *held_out, target=0.95, gamma=1.0)
    assert result.threshold == pytest.approx(0.9, abs=1e-3)
    assert result.estimated_precision == pytest.approx(0.95, abs=1e-3)
    assert not any("contradict" in note for note in result.notes)
    assert result.verifiable  # 100 of 100 right: the 95% lower bound is 0.05 ** (1 / 100) = 0.97


def test_held_out_images_that_contradict_the_threshold_raise_it_and_say_so() -> None:
    pool = np.linspace(0.5, 1.0, 5001)  # alone, this asks for t = 0.9
    oof = np.linspace(0.9, 1.0, 200)
    oof_right = oof > 0.97  # above 0.9 only 30% of the held-out images are right
    result = dcal.choose_threshold(pool, oof, oof_right, target=0.95, gamma=1.0)
    assert result.threshold > 0.96
    assert any("contradict" in note for note in result.notes)
    above = oof >= result.threshold
    assert above.any() and oof_right[above].mean() >= 0.95
    assert (result.held_out_accepted, result.held_out_right) == (int(above.sum()), int(oof_right[above].sum()))


def test_an_all_wrong_held_out_set_accepts_nothing() -> None:
    pool = np.linspace(0.5, 1.0, 501)
    oof = np.linspace(0.8, 1.0, 50)
    result = dcal.choose_threshold(pool, oof, np.zeros(len(oof), dtype=bool), target=0.9, gamma=1.0)
    assert result.threshold == cal.NEVER
    assert not (pool >= result.threshold).any()
    assert result.estimated_precision is None and result.verifiable is False
    assert result.notes


def test_target_verifiable_is_false_with_few_held_out_images_and_true_with_many_all_right() -> None:
    pool = np.full(50, 0.99)
    few = dcal.choose_threshold(pool, *all_right(np.full(5, 0.99)), target=0.9, gamma=1.0)
    many = dcal.choose_threshold(pool, *all_right(np.full(80, 0.99)), target=0.9, gamma=1.0)
    assert few.verifiable is False and any("too few" in note for note in few.notes)
    assert many.verifiable is True and not many.notes
    assert few.estimated_precision == many.estimated_precision == pytest.approx(0.99)


def test_no_held_out_image_leaves_the_target_unverifiable() -> None:
    result = dcal.choose_threshold(np.full(10, 0.99), np.zeros(0), np.zeros(0, dtype=bool), target=0.9, gamma=1.0)
    assert result.verifiable is False and result.held_out_images == 0


def test_an_empty_pool_accepts_nothing() -> None:
    result = dcal.choose_threshold(np.zeros(0), *all_right(np.full(80, 0.99)), target=0.9, gamma=1.0)
    assert result.threshold == cal.NEVER and result.estimated_precision is None


def test_the_calibration_json_has_the_threshold_and_the_held_out_counts() -> None:
    result = dcal.choose_threshold(np.full(10, 0.99), *all_right(np.full(80, 0.99)), target=0.9, gamma=1.5)
    doc = result.to_json()
    assert doc["imageConfidenceExponent"] == 1.5 and doc["keepThreshold"] == dcal.KEEP
    assert (doc["heldOutImages"], doc["heldOutAccepted"], doc["heldOutAcceptedRight"]) == (80, 80, 80)
    json.dumps(doc)


# --------------------------------------------------------------- Precise: the student judged by its teacher


def judged(confidence: float, *objects: tuple[str, float, float, float, float]) -> Judged:
    return Judged("s3://b/i.png", (64, 64, 3), [VocBox(*o, confidence=0.9) for o in objects], confidence)


def test_a_student_that_agrees_with_its_teacher_takes_the_teachers_calibrated_confidence() -> None:
    teacher = judged(0.93, ("cat", 0, 0, 10, 10), ("dog", 20, 20, 40, 40))
    student = judged(0.99, ("dog", 21, 19, 40, 41), ("cat", 1, 0, 10, 10))  # same objects, other order
    got = with_teacher(student, teacher)
    assert got.confidence == 0.93 and not got.other_model_disagrees and got.boxes == student.boxes
    hard, _, reasons = _verdict(got, threshold=0.9, max_boxes=2)
    assert not hard and reasons == []


def test_a_student_whose_boxes_differ_from_its_teachers_is_hard_for_another_model_disagreeing() -> None:
    teacher = judged(0.95, ("cat", 0, 0, 10, 10))
    for student in (
        judged(0.99, ("dog", 0, 0, 10, 10)),  # another label
        judged(0.99, ("cat", 0, 0, 10, 10), ("cat", 20, 20, 40, 40)),  # an extra box
        judged(0.99),  # no box
    ):
        got = with_teacher(student, teacher)
        assert got.other_model_disagrees and got.confidence == 0.95 and got.boxes == student.boxes
        hard, _, reasons = _verdict(got, threshold=0.9, max_boxes=2)
        assert hard and OTHER_MODEL_DISAGREES in reasons
    less_sure = with_teacher(judged(0.4, ("dog", 0, 0, 10, 10)), teacher)
    assert less_sure.confidence == 0.4


# ------------------------------------------------------------------------------ the model


LABELS = ["0", "1", "2"]


def exported(seed: int = 0) -> ExportedDetector:
    """An untrained detector and crop classifier. The objectness map is steep (a = 40) around the
    untrained head's raw scores, the detector's class bias -0.5 (scores around 0.45) and the classifier sharp
    (temperature 0.02), so that some candidates are proposed and some not: the contract is not tested on
    empty outputs. The box regression's bias is set so that every box spans about a pyramid cell each side
    of its centre (softplus(1) = 1.3 cells)."""
    torch.manual_seed(seed)
    detector = build_detector(choose_detector_spec([(64, 64)]))
    with torch.no_grad():  # detector scores around 0.5 (the untrained prior is 0.01): some boxes proposed
        detector.head.classification_head.cls_logits.bias.fill_(-0.5)
        detector.head.regression_head.bbox_reg.bias.fill_(1.0)
    classifier = CalibratedEnsemble([SmallCNN(len(LABELS), (CROP_SIZE, CROP_SIZE), 16)], 0.02)
    return ExportedDetector(detector, classifier, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 40.0, 97.0)


@pytest.fixture(scope="module")
def scripted_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("model") / "model.pt"
    with torch.random.fork_rng():
        script_detector(exported()).save(str(path))
    return path.read_bytes()


def labels_json(**fields: object) -> bytes:
    return json.dumps({"task": "ObjectDetection", "labels": LABELS, **fields}).encode()


@pytest.mark.usefixtures("one_torch_thread")
def test_the_exported_model_answers_one_dict_per_image_of_any_size(scripted_bytes: bytes) -> None:
    model, labels, meta = load_detection_model(scripted_bytes, labels_json(keepThreshold=dcal.KEEP), SOURCE)
    assert labels == LABELS and meta["task"] == "ObjectDetection"
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, h, w, generator=g) for h, w in [(64, 64), (48, 80), (100, 40), (33, 57)]]
    with torch.inference_mode():
        out = model(images)
    assert isinstance(out, list) and len(out) == len(images)
    total = 0
    for det, image in zip(out, images, strict=True):
        _, h, w = image.shape
        assert set(det) == {"boxes", "labels", "scores", "detector_scores"}
        n = len(det["scores"])
        total += n
        assert det["boxes"].shape == (n, 4) and det["boxes"].is_floating_point()
        assert det["labels"].shape == (n,) and det["labels"].dtype == torch.int64
        assert det["scores"].shape == (n,) and det["scores"].is_floating_point()
        b = det["boxes"]
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert (b[:, 0] <= b[:, 2]).all() and (b[:, 1] <= b[:, 3]).all()
        assert ((det["labels"] >= 0) & (det["labels"] < len(labels))).all()
        assert ((det["scores"] >= 0) & (det["scores"] <= 1)).all()
    assert total > 0  # not a vacuous check
    kept = sum(int((d["detector_scores"] >= dcal.KEEP).sum()) for d in out)
    assert 0 < kept < total  # both proposals and doubtful candidates


@pytest.mark.usefixtures("one_torch_thread")
def test_the_exported_model_gives_the_same_answer_after_a_save_and_load(scripted_bytes: bytes) -> None:
    model, _, _ = load_detection_model(scripted_bytes, labels_json(), SOURCE)
    again, _, _ = load_detection_model(scripted_bytes, labels_json(), SOURCE)
    image = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(2))]
    with torch.inference_mode():
        a, b = model(image)[0], again(image)[0]
    for key in ("boxes", "labels", "scores"):
        assert torch.equal(a[key], b[key])


# ------------------------------------------------------------------ a model that cannot be used


def invalid(model_bytes: bytes, labels: bytes) -> PipelineError:
    with pytest.raises(PipelineError) as caught:
        load_detection_model(model_bytes, labels, SOURCE)
    assert caught.value.reason == "ModelInvalid"
    assert SOURCE in str(caught.value)
    return caught.value


def test_random_bytes_as_the_model_are_model_invalid_naming_the_source() -> None:
    noise = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    assert "TorchScript" in str(invalid(noise, labels_json()))


def test_labels_json_that_is_not_json_is_model_invalid_naming_the_source(scripted_bytes: bytes) -> None:
    assert "JSON" in str(invalid(scripted_bytes, b"{labels: [0, 1"))
    assert "JSON" in str(invalid(scripted_bytes, b"\xff\xfe not text"))


def test_labels_json_without_labels_is_model_invalid_naming_the_source(scripted_bytes: bytes) -> None:
    docs: list[object] = [{"task": "ObjectDetection"}, {"labels": []}, {"labels": "0,1,2"}, {"labels": ["a", ""]}, [1]]
    for doc in docs:
        assert "labels" in str(invalid(scripted_bytes, json.dumps(doc).encode()))


@pytest.mark.usefixtures("one_torch_thread")
def test_a_torchscript_classifier_given_to_a_detection_job_fails_the_contract_smoke_test(tmp_path: Path) -> None:
    path = tmp_path / "classifier.pt"
    torch.jit.script(SmallCNN(3, (32, 32), 8).eval()).save(str(path))
    error = invalid(path.read_bytes(), labels_json())
    assert "detection" in str(error)


def write_model(folder: Path, **fields: object) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.pt").write_bytes(b"not read by the precondition check")
    (folder / "labels.json").write_text(json.dumps({"labels": LABELS, **fields}))
    return str(folder) + "/"


def test_a_classification_model_for_a_detection_job_is_a_task_mismatch(tmp_path: Path) -> None:
    storage = Storage(StorageConfig())
    uri = write_model(tmp_path / "classifier", task="ImageClassification")
    failures = check_model(storage, uri, "ObjectDetection")
    assert [f.reason for f in failures] == ["ModelTaskMismatch"]
    assert uri in failures[0].message and "ImageClassification" in failures[0].message
    # and the other way round
    detector = write_model(tmp_path / "detector", task="ObjectDetection")
    assert [f.reason for f in check_model(storage, detector, "ImageClassification")] == ["ModelTaskMismatch"]
    assert check_model(storage, detector, "ObjectDetection") == []


def test_the_precondition_check_names_a_labels_json_that_is_not_json(tmp_path: Path) -> None:
    uri = write_model(tmp_path / "m", task="ObjectDetection")
    (tmp_path / "m" / "labels.json").write_text("{not json")
    failures = check_model(Storage(StorageConfig()), uri, "ObjectDetection")
    assert [f.reason for f in failures] == ["ModelInvalid"]
    assert "labels.json" in failures[0].message
