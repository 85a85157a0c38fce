"""Hard-example reasons (ModelArts numbering) and coefficients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from autolabel_worker.augment import TTA_REASONS, AugmentPolicy, apply_tta, tta_views
from autolabel_worker.hard_examples import (
    FAR_FROM_CLASS,
    LOW_CONFIDENCE,
    HardExampleRule,
    distance_limits,
    nearest_same_class_distance,
)


def rule(limits: np.ndarray | None = None) -> HardExampleRule:
    return HardExampleRule(thresholds=np.array([0.9, 0.6]), tta_reasons=TTA_REASONS, distance_limits=limits)


def test_low_confidence_is_reason_1_per_class_threshold() -> None:
    pred = np.array([0, 0, 1, 1])
    conf = np.array([0.95, 0.85, 0.65, 0.55])
    v = rule().judge(pred, conf)
    assert v.hard.tolist() == [False, True, False, True]
    assert v.reasons == [[], [LOW_CONFIDENCE], [], [LOW_CONFIDENCE]]


def test_tta_disagreement_gives_the_view_reasons_in_order() -> None:
    pred = np.array([0, 1, 0])
    conf = np.array([0.99, 0.99, 0.99])
    tta = {
        "translate": np.array([0, 0, 0]),  # image 1 changes under translation only
        "crop": np.array([1, 1, 0]),  # image 0 changes under crop and flip
        "flip_lr": np.array([1, 1, 0]),
    }
    v = rule().judge(pred, conf, tta)
    assert v.reasons[0] == [TTA_REASONS["flip_lr"], TTA_REASONS["crop"]] == [20, 21]
    assert v.hard.tolist() == [True, False, False]  # one disagreeing view alone is not enough
    assert v.reasons[1] == [] and v.reasons[2] == []  # reasons are listed on hard lines only
    assert v.coefficient[1] > v.coefficient[2]  # but the disagreement still ranks image 1 harder
    one_view = HardExampleRule(np.array([0.5, 0.5]), TTA_REASONS, min_disagreeing_views=1)
    assert one_view.judge(pred, conf, tta).reasons[1] == [24]


def test_a_prediction_that_a_small_brightness_change_overturns_is_hard_alone_as_reason_28() -> None:
    pred = np.array([0, 1, 0, 1])
    conf = np.full(4, 0.99)
    tta = {
        "brighter": np.array([1, 1, 0, 1]),  # image 0 turns into class 1 when brightened
        "darker": np.array([0, 0, 1, 1]),  # images 1 and 2 change when darkened
        "crop": np.array([0, 1, 0, 0]),  # image 3: one geometric view alone, as before
    }
    v = rule().judge(pred, conf, tta)
    assert v.hard.tolist() == [True, True, True, False]
    assert v.reasons[:3] == [[28], [28], [28]]  # one reason for the shift either way
    assert rule().flagged_apart_from_confidence(pred, tta).tolist() == [True, True, True, False]
    geometric_only = HardExampleRule(np.array([0.9, 0.6]), TTA_REASONS, decisive_views=frozenset())
    assert geometric_only.judge(pred, conf, tta).hard.tolist() == [False, False, False, False]


class _BrightOrDark(torch.nn.Module):
    """Class 1 when the image's mean pixel (undoing the normalization) is above 0.5."""

    def __init__(self, mean: float, std: float):
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        brightness = (x * self.std + self.mean).mean(dim=(1, 2, 3))
        score = (brightness - 0.5) * 100
        return torch.stack([-score, score], dim=1)


def test_the_predictor_flags_images_whose_class_rests_on_their_grey_level_alone() -> None:
    from autolabel_worker.predict import Predictor

    grey = torch.tensor([0.30, 0.47, 0.53, 0.70])  # mean pixel of four uniform images
    x_u8 = (grey * 255).round().to(torch.uint8).view(4, 1, 1, 1).expand(4, 3, 8, 8).contiguous()
    predictor = Predictor(_BrightOrDark(0.5, 0.25), (8, 8), (0.5,) * 3, (0.25,) * 3, ["brighter", "darker"])
    out = predictor.predict(x_u8)
    pred = out.probs.argmax(axis=1)
    assert pred.tolist() == [0, 0, 1, 1]
    verdicts = rule().judge(pred, np.full(4, 0.99), out.tta_pred)
    assert verdicts.hard.tolist() == [False, True, True, False]  # 0.47 and 0.53 are 0.05 from the boundary
    assert verdicts.reasons[1] == verdicts.reasons[2] == [28]


def test_far_from_its_class_is_reason_3_with_a_disagreeing_view() -> None:
    pred = np.array([0, 1, 0])
    conf = np.array([0.99, 0.99, 0.99])
    tta = {"crop": np.array([0, 0, 1]), "scale": np.array([0, 0, 0])}
    v = rule(limits=np.array([0.3, 0.3])).judge(pred, conf, tta, distance=np.array([0.5, 0.1, 0.5]))
    assert v.reasons == [[], [21, 23], [FAR_FROM_CLASS, 21]]
    assert v.hard.tolist() == [False, True, True]  # far alone: not hard; far and one view: hard


def test_hard_coefficient_is_in_unit_range_and_grows_with_doubt() -> None:
    pred = np.zeros(4, dtype=np.int64)
    conf = np.array([0.99, 0.99, 0.99, 0.6])
    tta = {"crop": np.array([0, 1, 1, 0]), "scale": np.array([0, 0, 1, 0])}
    v = rule(limits=np.array([0.3, 0.3])).judge(pred, conf, tta, distance=np.array([0.0, 0.0, 0.0, 0.9]))
    c = v.coefficient
    assert np.all((c >= 0) & (c <= 1))
    assert c[0] == pytest.approx(0.01)  # confident, stable, near its class: 1 - confidence
    assert c[1] == pytest.approx(1 - 0.99 * 0.5)  # half the views disagree
    assert c[2] == pytest.approx(1.0)  # every view disagrees
    assert c[3] == pytest.approx(1 - 0.6 * 0.5)  # far from its class halves the trust


def test_nearest_same_class_distance_and_limits() -> None:
    ref = np.array([[1.0, 0.0], [0.96, 0.28], [0.0, 1.0], [0.28, 0.96]])
    ref_labels = np.array([0, 0, 1, 1])
    feats = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    pred = np.array([0, 1, 1])
    d = nearest_same_class_distance(feats, ref, ref_labels, pred, 2)
    assert d[0] == pytest.approx(0.0)
    assert d[1] == pytest.approx(0.0)
    assert d[2] == pytest.approx(1 - 0.28)  # predicted 1 but sits on class 0
    limits = distance_limits(ref, ref_labels, 2, factor=2.0)
    assert limits == pytest.approx([2 * 0.04, 2 * 0.04])
    v = rule(limits=limits).judge(pred, np.full(3, 0.99), {"crop": np.array([0, 1, 0])}, distance=d)
    assert v.reasons[2] == [FAR_FROM_CLASS, 21] and not v.hard[0]


def test_tta_views_follow_the_augmentation_policy() -> None:
    assert "flip_lr" not in tta_views(AugmentPolicy(hflip=False))  # digits: a mirrored 2 is not a 2
    assert tta_views(AugmentPolicy(hflip=True))[0] == "flip_lr"
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    assert torch.equal(apply_tta(x, "flip_lr"), torch.flip(x, dims=[3]))
    for view in ("crop", "scale", "translate"):
        y = apply_tta(x, view)
        assert y.shape == x.shape and not torch.equal(y, x)
    with pytest.raises(ValueError, match="unknown test-time augmentation"):
        apply_tta(x, "invert")
    assert tta_views(AugmentPolicy(hflip=False))[-2:] == ["brighter", "darker"]


def test_brightness_views_shift_the_pixels_and_keep_them_in_the_pixel_range() -> None:
    mean, std = (0.5, 0.4, 0.3), (0.25, 0.2, 0.1)
    pixels = torch.tensor([0.0, 0.02, 0.5, 0.98, 1.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    x = (pixels - m) / s
    brighter = apply_tta(x, "brighter", mean, std) * s + m
    darker = apply_tta(x, "darker", mean, std) * s + m
    expected_up = torch.tensor([0.05, 0.07, 0.55, 1.0, 1.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    expected_down = torch.tensor([0.0, 0.0, 0.45, 0.93, 0.95]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    assert torch.allclose(brighter, expected_up, atol=1e-5)
    assert torch.allclose(darker, expected_down, atol=1e-5)
    with pytest.raises(ValueError, match="needs the normalization's mean and std"):
        apply_tta(x, "darker")


def test_flags_apart_from_confidence_match_the_verdicts_of_confident_predictions() -> None:
    pred = np.array([0, 1, 0, 1])
    tta = {"crop": np.array([1, 1, 1, 0]), "scale": np.array([1, 1, 0, 1])}
    distance = np.array([0.0, 0.0, 0.9, 0.0])
    r = rule(limits=np.array([0.3, 0.3]))
    other = r.flagged_apart_from_confidence(pred, tta, distance)
    assert other.tolist() == [True, False, True, False]  # two views; one view alone; far + one view; none
    confident = r.judge(pred, np.full(4, 0.999), tta, distance)
    assert confident.hard.tolist() == other.tolist()
