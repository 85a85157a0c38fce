"""Calibration: temperature scaling, confidence bounds and thresholds on cases where the answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from autolabel_worker import calibrate as cal
from scipy import stats


def test_clopper_pearson_matches_the_beta_quantile() -> None:
    for k, n in [(1, 1), (5, 10), (43, 44), (59, 59), (90, 100), (0, 10)]:
        expected = 0.0 if k == 0 else stats.beta.ppf(0.05, k, n - k + 1)
        assert cal.clopper_pearson_lower(k, n, 0.05) == pytest.approx(expected, abs=1e-6)


def test_fifty_nine_correct_points_certify_ninety_five_percent_and_fifty_eight_do_not() -> None:
    # Clopper-Pearson arithmetic: certifying <= 5% error at 95% confidence needs about 59 correct points
    assert cal.clopper_pearson_lower(59, 59, 0.05) >= 0.95
    assert cal.clopper_pearson_lower(58, 58, 0.05) < 0.95


def test_temperature_recovers_the_true_temperature() -> None:
    rng = np.random.default_rng(0)
    true_t = 2.0
    logits = rng.normal(0, 4, size=(8000, 5))
    p = np.exp(cal.log_softmax(logits / true_t))
    labels = np.array([rng.choice(5, p=row) for row in p])
    assert cal.fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.08)


def test_temperature_prior_stops_a_perfect_small_sample_from_collapsing() -> None:
    logits = np.array([[3.0, 0.0], [0.0, 3.0], [2.0, 0.0]])
    labels = np.array([0, 1, 0])
    t = cal.fit_temperature(logits, labels)
    assert 0.2 < t < 1.0  # sharper than the model, but not 0.05 (every confidence 1)


def test_the_cautious_margin_is_wider_with_fewer_held_out_points() -> None:
    """The safety margin comes from the bootstrap spread of the fitted temperature: with 40 held-out points
    it lowers confidences clearly (T above the best fit), with 4,000 points of the same model hardly."""
    rng = np.random.default_rng(1)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        logits = rng.normal(0, 3, size=(n, 4))
        p = np.exp(logits / 2.0) / np.exp(logits / 2.0).sum(axis=1, keepdims=True)  # true temperature 2
        return logits, np.array([rng.choice(4, p=row) for row in p])

    small, large = sample(40), sample(4000)
    small_margin = cal.cautious_temperature(*small, seed=3) / cal.fit_temperature(*small)
    large_margin = cal.cautious_temperature(*large, seed=3, boots=30) / cal.fit_temperature(*large)
    assert small_margin > 1.05
    assert 1.0 <= large_margin < 1.03 < small_margin


def test_smallest_threshold_with_a_known_answer() -> None:
    # 80 correct predictions at confidences 0.81..0.99, 20 wrong ones at 0.30..0.49.
    conf = np.concatenate([np.linspace(0.81, 0.99, 80), np.linspace(0.30, 0.49, 20)])
    correct = np.concatenate([np.ones(80, bool), np.zeros(20, bool)])
    # Every prediction above 0.81 is right and 80 of them pass a 95% bound at 0.95 target (0.05^(1/80)=0.963).
    assert cal.smallest_threshold(conf, correct, 0.95, 0.05) == pytest.approx(0.81)
    # With an error at the very top, no threshold passes.
    correct_top_wrong = correct.copy()
    correct_top_wrong[79] = False
    assert cal.smallest_threshold(conf, correct_top_wrong, 0.99, 0.05) == cal.NEVER


def test_histogram_threshold_on_a_perfectly_calibrated_model() -> None:
    """Confidences uniform on [0.5, 1], each prediction right with probability equal to its confidence:
    the precision above t is (1 + t) / 2, so target 0.95 needs t = 0.9, and the achieved precision is 0.95."""
    rng = np.random.default_rng(2)
    n = 200_000
    conf = rng.uniform(0.5, 1.0, n)
    correct = rng.random(n) < conf
    pred = np.zeros(n, dtype=np.int64)
    hist = cal.ConfidenceHistogram(1)
    hist.add(pred, conf)
    t = hist.threshold(0.95)
    assert t == pytest.approx(0.9, abs=0.005)
    accepted = conf >= t
    assert correct[accepted].mean() == pytest.approx(0.95, abs=0.005)
    n_acc, expected = hist.expected(np.array([t]))
    assert n_acc == accepted.sum()
    assert expected == pytest.approx(0.95, abs=0.002)


def test_histogram_threshold_exact_bins() -> None:
    hist = cal.ConfidenceHistogram(1, bins=100)
    pred = np.zeros(200, dtype=np.int64)
    hist.add(pred, np.array([1.0] * 100 + [0.9] * 100))
    assert hist.threshold(0.95) == pytest.approx(0.9)  # mean of both groups is exactly 0.95
    assert hist.threshold(0.96) == pytest.approx(0.99)  # only the top bin
    assert cal.ConfidenceHistogram(1).threshold(0.95) == cal.NEVER  # nothing predicted


def test_finish_uses_per_class_thresholds_when_a_class_has_enough_predictions() -> None:
    hist = cal.ConfidenceHistogram(2, bins=100)
    hist.add(np.zeros(100, dtype=np.int64), np.full(100, 0.99))  # class 0: confident
    hist.add(np.ones(100, dtype=np.int64), np.concatenate([np.full(50, 0.99), np.full(50, 0.6)]))
    calib = cal.finish(hist, None, None, target=0.95, temperature=1.0, cautious_temperature=1.0)
    assert calib.class_thresholds[0] == pytest.approx(0.99)
    assert calib.class_thresholds[1] == pytest.approx(0.99)
    assert calib.estimated_precision == pytest.approx(0.99)
    assert calib.verifiable is False  # no held-out labeled predictions: nothing certified


def test_a_floor_under_each_auto_label_raises_only_the_thresholds_below_it() -> None:
    hist = cal.ConfidenceHistogram(2, bins=100)
    hist.add(np.zeros(100, dtype=np.int64), np.full(100, 0.99))
    # class 1: the target alone lets 5 images at 0.75 ride on 95 sure ones
    hist.add(np.ones(100, dtype=np.int64), np.concatenate([np.full(95, 0.999), np.full(5, 0.75)]))
    plain = cal.finish(hist, None, None, target=0.95, temperature=1.0, cautious_temperature=1.0)
    floored = cal.finish(hist, None, None, target=0.95, temperature=1.0, cautious_temperature=1.0, min_confidence=0.8)
    assert plain.class_thresholds[1] == pytest.approx(0.75)
    assert floored.class_thresholds[1] == pytest.approx(0.8)
    assert floored.class_thresholds[0] == plain.class_thresholds[0]  # already above the floor
    assert floored.global_threshold >= 0.8
    assert floored.estimated_precision == pytest.approx((100 * 0.99 + 95 * 0.999) / 195)
    assert plain.estimated_precision == pytest.approx((100 * 0.99 + 95 * 0.999 + 5 * 0.75) / 200)
    assert floored.to_json(["a", "b"])["minConfidence"] == 0.8
    assert any("minConfidence 0.8" in note for note in floored.notes)


def test_finish_falls_back_to_the_bound_when_held_out_labels_contradict_it() -> None:
    hist = cal.ConfidenceHistogram(2, bins=100)
    hist.add(np.zeros(500, dtype=np.int64), np.full(500, 0.97))
    hist.add(np.ones(500, dtype=np.int64), np.full(500, 0.97))
    # Held-out: confident predictions, but 30% of them wrong.
    oof = np.tile([[4.0, 0.0]], (100, 1))
    labels = np.array([0] * 70 + [1] * 30)
    calib = cal.finish(hist, oof, labels, target=0.95, temperature=1.0, cautious_temperature=1.0)
    assert calib.fallback
    assert calib.global_threshold == cal.NEVER  # no threshold can be trusted: nothing is auto-labeled
    assert calib.estimated_precision is None
    assert not calib.verifiable
    assert any("contradict" in note for note in calib.notes)


def test_uncontradicted_threshold_stops_at_the_first_cut_the_labels_contradict() -> None:
    conf = np.linspace(0.999, 0.9, 23)
    correct = np.array([True] * 10 + [False] * 3 + [True] * 10)
    # 10 of 10 right: P(X <= 10) = 1; 10 of 11: 1 - 0.95 ** 11 = 0.43 < 0.5, the scan stops there, so the
    # 10 right below the errors do not bring the threshold down
    assert cal.uncontradicted_threshold(conf, correct, 0.95) == pytest.approx(conf[9])
    assert cal.uncontradicted_threshold(conf, np.arange(23) > 0, 0.95) == cal.NEVER  # the top one wrong
    ties = np.full(20, 0.98)
    assert cal.uncontradicted_threshold(ties, np.arange(20) > 0, 0.95) == pytest.approx(0.98)  # 19 of 20, as one cut


def test_a_contradicted_calibration_is_raised_past_the_held_out_errors_not_out_of_reach() -> None:
    """Held-out: the 24 most confident predictions right, the 6 least confident wrong, all above the
    pool's thresholds. The check contradicts them (24 of 30 right); the raise stops where the labels stop
    agreeing with the target (24 of 25 right above it still do: P(X <= 24) = 0.72 for X ~ Binomial(25,
    0.95); 24 of 26 do not: 0.38), so the pool's more confident predictions are still auto-labeled."""
    hist = cal.ConfidenceHistogram(2, bins=1000)
    pool = np.linspace(0.97, 0.999, 1000)
    for c in range(2):
        hist.add(np.full(1000, c), pool)
    margin = np.linspace(6.0, 3.5, 30)
    oof = np.stack([margin, np.zeros(30)], axis=1)
    labels = np.array([0] * 24 + [1] * 6)
    calib = cal.finish(hist, oof, labels, target=0.95, temperature=1.0, cautious_temperature=1.0)
    held_out_conf = 1.0 / (1.0 + np.exp(-margin))
    assert calib.fallback and calib.failed_classes == []
    assert calib.global_threshold == pytest.approx(held_out_conf[24])
    assert calib.threshold_for(0) == calib.threshold_for(1) == pytest.approx(held_out_conf[24])
    assert 0.3 < (pool >= calib.global_threshold).mean() < 0.9
    assert (calib.oof_accepted, calib.oof_accepted_correct) == (25, 24)
    assert calib.estimated_precision is not None and calib.estimated_precision > 0.98


def test_verifiable_only_with_enough_held_out_support() -> None:
    hist = cal.ConfidenceHistogram(2, bins=100)
    hist.add(np.zeros(100, dtype=np.int64), np.full(100, 0.99))
    hist.add(np.ones(100, dtype=np.int64), np.full(100, 0.99))
    small = np.tile([[6.0, 0.0]], (50, 1))
    big = np.tile([[6.0, 0.0]], (80, 1))
    few = cal.finish(hist, small, np.zeros(50, dtype=np.int64), 0.95, 1.0, 1.0)
    many = cal.finish(hist, big, np.zeros(80, dtype=np.int64), 0.95, 1.0, 1.0)
    assert not few.verifiable and few.lower_bound_95 == pytest.approx(0.05 ** (1 / 50), abs=1e-6)
    assert many.verifiable and many.lower_bound_95 >= 0.95
    need = math.ceil(math.log(0.05) / math.log(0.95))
    assert any(f"at least {need} correct" in note for note in few.notes)


def test_untrusted_model_gets_thresholds_but_no_precision_claim() -> None:
    hist = cal.ConfidenceHistogram(2, bins=100)
    hist.add(np.zeros(100, dtype=np.int64), np.full(100, 0.99))
    calib = cal.finish(hist, None, None, 0.95, 1.0, 1.0, trusted=False)
    assert calib.estimated_precision is None
    assert calib.global_threshold == pytest.approx(0.99)


def test_repeated_out_of_fold_predictions_are_averaged_as_probabilities() -> None:
    rng = np.random.default_rng(4)
    logits = rng.normal(0, 3, size=(200, 4))
    labels = rng.integers(0, 4, 200)
    stacked = np.stack([logits, logits])
    assert cal.fit_temperature(stacked, labels) == pytest.approx(cal.fit_temperature(logits, labels))
    other = rng.normal(0, 3, size=(200, 4))
    mixed = cal.ensemble_probs(np.stack([logits, other]), 1.0)
    expected = (np.exp(cal.log_softmax(logits)) + np.exp(cal.log_softmax(other))) / 2
    np.testing.assert_allclose(mixed, expected)


def test_views_likelihood_ratio_counts_with_a_laplace_prior() -> None:
    # 46 right (2 of them flagged), 4 wrong (3 flagged): (44+1)/(46+2) / ((1+1)/(4+2)) = 2.8125
    correct = np.array([True] * 46 + [False] * 4)
    flagged = np.array([True] * 2 + [False] * 44 + [True] * 3 + [False])
    assert cal.views_likelihood_ratio(correct, flagged) == pytest.approx(45 / 48 / (2 / 6))
    # no held-out error: the prior alone, (n+1)/(n+2) / (1/2), close to 2
    assert cal.views_likelihood_ratio(np.ones(50, dtype=bool), np.zeros(50, dtype=bool)) == pytest.approx((51 / 52) * 2)
    # views that flag right predictions more often than wrong ones are no evidence: never below 1
    assert cal.views_likelihood_ratio(np.array([True, True, False]), np.array([True, True, False])) == 1.0


def test_flag_adjusted_is_bayes_rule_and_raw_threshold_inverts_it() -> None:
    """A population where the views pass 90% of right and 30% of wrong predictions (ratio 3), every
    prediction with confidence 0.8: among those that pass, 0.8*0.9 / (0.8*0.9 + 0.2*0.3) = 0.923 are right."""
    assert cal.flag_adjusted(0.8, 3.0) == pytest.approx(0.72 / (0.72 + 0.06))
    assert cal.flag_adjusted(0.8, 1.0) == 0.8
    for t in (0.5, 0.9, 0.95, 0.999):
        assert cal.flag_adjusted(cal.raw_threshold(t, 3.0), 3.0) == pytest.approx(t)
    assert cal.raw_threshold(cal.NEVER, 3.0) == cal.NEVER


def test_finish_with_a_likelihood_ratio_sets_thresholds_in_raw_confidence() -> None:
    """Simulated: calibrated confidences uniform on [0.5, 1]; the test-time views pass 95% of right and
    25% of wrong predictions (ratio 3.8). Over the predictions that pass, the thresholds found on adjusted
    confidences must hold the target, and with more coverage than the unadjusted ones."""
    rng = np.random.default_rng(5)
    n = 200_000
    conf = rng.uniform(0.5, 1.0, n)
    correct = rng.random(n) < conf
    passes = np.where(correct, rng.random(n) < 0.95, rng.random(n) < 0.25)
    pred = np.zeros(n, dtype=np.int64)
    ratio = 0.95 / 0.25
    plain = cal.ConfidenceHistogram(1)
    plain.add(pred[passes], conf[passes])
    adjusted = cal.ConfidenceHistogram(1)
    adjusted.add(pred[passes], np.asarray(cal.flag_adjusted(conf[passes], ratio)))
    before = cal.finish(plain, None, None, target=0.95, temperature=1.0, cautious_temperature=1.0)
    after = cal.finish(adjusted, None, None, 0.95, 1.0, 1.0, likelihood_ratio=ratio)
    t = after.global_threshold
    accepted = passes & (conf >= t)
    assert correct[accepted].mean() == pytest.approx(0.95, abs=0.005)
    assert after.estimated_precision == pytest.approx(0.95, abs=0.005)
    assert accepted.sum() > (passes & (conf >= before.global_threshold)).sum() * 1.2
    assert correct[passes & (conf >= before.global_threshold)].mean() > 0.98  # unadjusted: too cautious


# ------------------------------------------------------------------------- oracle coverage (benchmarks)


def test_oracle_coverage_on_known_cases() -> None:
    oracle_coverage = cal.oracle_coverage
    conf = np.array([0.99, 0.98, 0.97, 0.96, 0.5])
    # all right: every image can be taken
    assert oracle_coverage(conf, np.ones(5, dtype=bool), 0.95) == 1.0
    # the lowest one wrong: 4 of 5 at precision 1.0 (5 of 5 would be 0.8)
    assert oracle_coverage(conf, np.array([1, 1, 1, 1, 0], dtype=bool), 0.95) == 0.8
    # the most confident one wrong: no prefix reaches 0.95 (best is 3/4 = 0.75 ... 4/5 = 0.8)
    assert oracle_coverage(conf, np.array([0, 1, 1, 1, 1], dtype=bool), 0.95) == 0.0
    # ...but at 0.75 the whole set qualifies (4/5 = 0.8)
    assert oracle_coverage(conf, np.array([0, 1, 1, 1, 1], dtype=bool), 0.75) == 1.0
    # 19 right and 1 wrong in the middle: all 20 at exactly 0.95
    c = np.linspace(1.0, 0.5, 20)
    ok = np.ones(20, dtype=bool)
    ok[10] = False
    assert oracle_coverage(c, ok, 0.95) == 1.0
    # empty input
    assert oracle_coverage(np.zeros(0), np.zeros(0, dtype=bool), 0.95) == 0.0


def test_oracle_coverage_takes_ties_together() -> None:
    oracle_coverage = cal.oracle_coverage
    # two images tied at 0.9, one right and one wrong: the tie cannot be split, so only the top one
    conf = np.array([0.95, 0.9, 0.9])
    assert oracle_coverage(conf, np.array([1, 1, 0], dtype=bool), 0.95) == 1 / 3


# ------------------------------------------------------- synthetic models with known answers (issue 12)


def calibrated_case(
    rng: np.random.Generator, n: int, classes: int, scale: float = 1.0, spread: float = 2.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A model whose confidence c is right with probability c (for `scale` 1; `scale` > 1 makes the
    logits that much sharper than the truth: an over-confident model). `spread`: the logits' deviation
    (larger: more images predicted with high confidence). Returns (logits, labels, conf, correct) with
    confidences and correctness of the true (scale 1) model."""
    logits = rng.normal(0, spread, size=(n, classes))
    probs = np.exp(cal.log_softmax(logits))
    labels = np.array([rng.choice(classes, p=p) for p in probs])
    return logits * scale, labels, probs.max(axis=1), probs.argmax(axis=1) == labels


def test_a_perfectly_calibrated_model_reaches_the_target_without_fallback() -> None:
    rng = np.random.default_rng(12)
    oof, labels, _, _ = calibrated_case(rng, 400, 5)
    t = cal.fit_temperature(oof, labels)
    assert t == pytest.approx(1.0, abs=0.2)
    pool_logits, pool_labels, _, _ = calibrated_case(rng, 20_000, 5)
    probs = cal.ensemble_probs(pool_logits, t)
    pred, conf = probs.argmax(axis=1), probs.max(axis=1)
    hist = cal.ConfidenceHistogram(5)
    hist.add(pred, conf)
    calib = cal.finish(hist, oof, labels, target=0.95, temperature=t, cautious_temperature=t)
    assert not calib.fallback and calib.failed_classes == []
    accepted = conf >= calib.thresholds_array(5)[pred]
    precision = (pred == pool_labels)[accepted].mean()
    assert precision == pytest.approx(0.95, abs=0.015)
    assert calib.estimated_precision == pytest.approx(precision, abs=0.015)
    # close to the oracle: a calibrated model leaves little to a better threshold
    assert accepted.mean() >= 0.9 * cal.oracle_coverage(conf, pred == pool_labels, 0.95)


def test_an_over_confident_model_gets_a_larger_temperature_and_keeps_the_target() -> None:
    rng = np.random.default_rng(13)
    oof, labels, _, _ = calibrated_case(rng, 400, 5, scale=3.0)
    t = cal.fit_temperature(oof, labels)
    assert t == pytest.approx(3.0, rel=0.25)  # the temperature undoes the over-confidence
    pool_logits, pool_labels, _, _ = calibrated_case(rng, 20_000, 5, scale=3.0)
    raw = cal.ensemble_probs(pool_logits, 1.0)
    pred, raw_conf = raw.argmax(axis=1), raw.max(axis=1)
    # at T = 1 the over-confident model's thresholds would miss the target...
    naive = cal.ConfidenceHistogram(5)
    naive.add(pred, raw_conf)
    t_naive = naive.threshold(0.95)
    assert (pred == pool_labels)[raw_conf >= t_naive].mean() < 0.93
    # ...calibrated, they keep it
    conf = cal.ensemble_probs(pool_logits, t).max(axis=1)
    hist = cal.ConfidenceHistogram(5)
    hist.add(pred, conf)
    calib = cal.finish(hist, oof, labels, target=0.95, temperature=t, cautious_temperature=t)
    accepted = conf >= calib.thresholds_array(5)[pred]
    assert (pred == pool_labels)[accepted].mean() >= 0.94


def test_an_over_confident_model_without_its_temperature_is_caught_by_the_held_out_check() -> None:
    """Confidences of 0.98 that are right 70% of the time on the held-out labeled images: the check
    contradicts the calibration and nothing is auto-labeled."""
    hist = cal.ConfidenceHistogram(3, bins=100)
    for c in range(3):
        hist.add(np.full(300, c), np.full(300, 0.98))
    oof = np.tile([[4.6, 0.0, 0.0]], (60, 1))
    labels = np.array([0] * 42 + [1] * 18)
    calib = cal.finish(hist, oof, labels, target=0.95, temperature=1.0, cautious_temperature=1.0)
    assert calib.fallback and calib.global_threshold == cal.NEVER


def test_a_class_that_is_never_right_is_not_auto_labeled() -> None:
    """Held-out: classes 0 and 1 always right, every prediction of class 2 wrong (it is really class 0).
    The global check does not fire (30 of 33 right: P(X <= 30) is about 0.23 at 0.95), the per-class
    check does (0 of 3 right): class 2's threshold goes beyond reach, the others stay as they were."""
    hist = cal.ConfidenceHistogram(3, bins=100)
    for c in range(3):
        hist.add(np.full(300, c), np.full(300, 0.99))
    oof = np.zeros((33, 3))
    pred = np.array([0] * 15 + [1] * 15 + [2] * 3)
    oof[np.arange(33), pred] = 6.0
    labels = np.array([0] * 15 + [1] * 15 + [0] * 3)
    calib = cal.finish(hist, oof, labels, target=0.95, temperature=1.0, cautious_temperature=1.0)
    assert calib.failed_classes == [2]
    assert calib.threshold_for(2) == cal.NEVER
    assert calib.threshold_for(0) == pytest.approx(0.99) and calib.threshold_for(1) == pytest.approx(0.99)
    assert any("class 2" in note for note in calib.notes)
    # one error among five accepted predictions of a class is not enough evidence to drop it
    labels_one_wrong = labels.copy()
    labels_one_wrong[30:] = 2
    labels_one_wrong[0] = 1
    calib = cal.finish(hist, oof, labels_one_wrong, target=0.95, temperature=1.0, cautious_temperature=1.0)
    assert calib.failed_classes == []


def voting_members(
    rng: np.random.Generator, n: int, classes: int, members: int, right: float, shared: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Members each right with probability `right` and then `right` sure of it (calibrated), wrong votes on
    a random other class; `shared`: every member makes the same prediction (fully correlated errors).
    Returns ((K, n, C) logits, labels)."""
    labels = rng.integers(0, classes, n)
    logits = np.empty((members, n, classes))
    for k in range(members):
        if k == 0 or not shared:
            ok = rng.random(n) < right
            pred = np.where(ok, labels, (labels + rng.integers(1, classes, n)) % classes)
        probs = np.full((n, classes), (1 - right) / (classes - 1))
        probs[np.arange(n), pred] = right
        logits[k] = np.log(probs)
    return logits, labels


def test_an_ensemble_of_independent_members_is_made_sharper_but_not_beyond_its_accuracy() -> None:
    rng = np.random.default_rng(21)
    logits, labels = voting_members(rng, 4000, 10, 5, right=0.8, shared=False)
    sharp = cal.ensemble_temperature(logits, 10, 50, member_temperature=1.0, member_error=(0.22, "known"))
    probs = cal.sharpened(cal.ensemble_probs(logits, 1.0), sharp.temperature)
    accuracy = float((probs.argmax(axis=1) == labels).mean())
    assert accuracy > 0.97  # five independent 80% votes
    assert sharp.temperature < 1.0
    assert cal.ensemble_probs(logits, 1.0).max(axis=1).mean() < 0.85 < sharp.implied_accuracy <= accuracy
    assert "allow the ensemble temperature" in sharp.reason


def test_identical_members_get_no_more_confidence_than_their_error_allows() -> None:
    rng = np.random.default_rng(22)
    logits, _ = voting_members(rng, 4000, 10, 5, right=0.8, shared=True)
    sharp = cal.ensemble_temperature(logits, 10, 50, member_temperature=1.0, member_error=(0.25, "known"))
    assert sharp.pool_disagreement == 0.0
    assert sharp.temperature == 1.0  # the members' 0.8 is already above 1 - 0.25: never made softer
    assert sharp.implied_accuracy == pytest.approx(0.8)
    softer_members = cal.ensemble_temperature(logits, 10, 50, member_temperature=3.0, member_error=(0.25, "known"))
    assert softer_members.implied_accuracy == pytest.approx(0.75, abs=0.005)


def test_members_disagreeing_with_the_ensemble_more_than_they_err_are_not_sharpened() -> None:
    rng = np.random.default_rng(23)
    logits, _ = voting_members(rng, 2000, 10, 5, right=0.5, shared=False)
    sharp = cal.ensemble_temperature(logits, 5, 50, member_temperature=1.3, member_error=(0.1, "known"))
    assert sharp.temperature == 1.0
    assert "the members' calibration is kept" in sharp.reason


def test_a_class_the_members_disagree_on_gets_less_confidence_than_one_they_agree_on() -> None:
    """Classes 0-4: members right 90% of the time; classes 5-9: 70%. One temperature for all sharpens the
    hard classes as much as the easy ones; each predicted class's own temperature sharpens it as far as
    its members' agreement there allows: more confidence where they agree, less where they disagree,
    and in both groups still no more than the accuracy."""
    rng = np.random.default_rng(26)
    easy, easy_labels = voting_members(rng, 1500, 5, 5, right=0.9, shared=False)
    hard, hard_labels = voting_members(rng, 1500, 5, 5, right=0.7, shared=False)
    logits = np.full((5, 3000, 10), -30.0)
    logits[:, :1500, :5], logits[:, 1500:, 5:] = easy, hard
    labels = np.concatenate([easy_labels, hard_labels + 5])
    sharp = cal.ensemble_temperature(logits, 0, 0, member_temperature=1.0)
    assert sorted(sharp.class_temperatures) == list(range(10))
    temps = sharp.temperatures(10)
    assert temps[:5].mean() < sharp.temperature < temps[5:].mean()
    mean = cal.ensemble_probs(logits, 1.0)
    pred = mean.argmax(axis=1)
    one = cal.sharpened(mean, sharp.temperature).max(axis=1)
    own = cal.sharpened(mean, temps)
    rows = np.arange(len(pred))
    np.testing.assert_allclose(mean[rows, own.argmax(axis=1)], mean[rows, pred])  # same labels (but exact ties)
    own = own.max(axis=1)
    assert own[:1500].mean() > one[:1500].mean() and own[1500:].mean() < one[1500:].mean()
    for group in (slice(0, 1500), slice(1500, 3000)):
        assert own[group].mean() <= float((pred[group] == labels[group]).mean())
    assert "have their own temperature" in sharp.reason
    assert set(sharp.to_json([str(c) for c in range(10)])["classTemperatures"]) == {str(c) for c in range(10)}


def test_the_members_error_comes_from_their_agreement_on_the_pool_unless_held_out_errors_contradict_it() -> None:
    rng = np.random.default_rng(24)
    logits, _ = voting_members(rng, 4000, 10, 5, right=0.9, shared=False)
    # two members agree when both are right (0.81) or wrong on the same class (0.01 / 9)
    eps, source = cal.member_error_from(logits, oof_errors=8, oof_points=50)
    assert source == "pool" and eps == pytest.approx(1 - 0.81 - 0.01 / 9, abs=0.01)
    eps, source = cal.member_error_from(logits, oof_errors=20, oof_points=50)  # 20 of 50: not 0.19
    # the smallest error rate the held-out errors do not reject
    assert source == "held-out" and eps == pytest.approx(cal.clopper_pearson_lower(20, 50, cal.CHECK_ALPHA))
    assert 0.19 < eps < 20 / 50 and cal.binom_tail_ge(20, 50, eps) == pytest.approx(cal.CHECK_ALPHA, abs=1e-6)


def test_the_per_run_confidence_makes_nine_runs_of_ten_hold_the_target_with_probability_095() -> None:
    """The issue's "at least 9 of 10 runs": a run that holds the target with probability q does so in at
    least 9 of 10 with probability q^10 + 10 (1 - q) q^9; 0.9 per run gives only 0.74."""

    def nine_of_ten(q: float) -> float:
        return 1 - cal.binom_tail_ge(2, 10, 1 - q)

    assert nine_of_ten(cal.POOL_CONFIDENCE) == pytest.approx(0.95, abs=0.0005)
    assert nine_of_ten(0.9) == pytest.approx(0.736, abs=0.001)
    assert abs(cal.POOL_Z - 1.79) < 0.005


def test_on_small_pools_the_realized_precision_holds_the_target_in_at_least_nine_runs_of_ten() -> None:
    """A calibrated model that auto-labels about 70% of each 300-image pool (as the benchmark's do):
    thresholds at an expected precision of exactly the target fall below it on about half of the pools;
    aiming higher by the pool's own sampling error holds it on 95 of these 100 (91 at the old 1.28)."""
    rng = np.random.default_rng(25)
    held, held_at_target = 0, 0
    pools = 100
    for _ in range(pools):
        _, _, conf, correct = calibrated_case(rng, 300, 4, spread=6.0)
        pred = np.zeros(300, dtype=np.int64)
        hist = cal.ConfidenceHistogram(1)
        hist.add(pred, conf)
        aim = cal.pool_aim(hist, 0.95)
        assert 0.95 < aim < 0.99
        held += bool(correct[conf >= hist.threshold(aim)].mean() >= 0.95)
        held_at_target += bool(correct[conf >= hist.threshold(0.95)].mean() >= 0.95)
    assert held >= 0.9 * pools
    assert held_at_target <= 0.7 * pools


def test_an_auto_labels_expected_correctness_is_the_mean_of_its_point_probability_and_the_members_votes() -> None:
    conf = np.array([0.96, 0.99])  # at the cautious temperature: not part of the estimate
    estimate = np.array([[0.98, 1.0], [0.9, 0.6]])  # (point-temperature probability, members agreeing)
    assert cal.expected_correct(conf, estimate, 1.0) == pytest.approx([0.99, 0.75])
    # the views' likelihood ratio raises the probability's odds (passed the test-time checks), not the votes
    adjusted = 0.9 * 3 / (0.9 * 3 + 0.1)
    assert cal.expected_correct(conf[1:], estimate[1:], 3.0) == pytest.approx([(adjusted + 0.6) / 2])


def test_an_auto_label_without_the_estimate_counts_at_its_adjusted_confidence() -> None:
    conf = np.array([0.8, 0.9])
    estimate = np.array([[np.nan, np.nan], [0.5, 0.5]])
    fallback, point = 0.8 * 4 / (0.8 * 4 + 0.2), 0.5 * 4 / (0.5 * 4 + 0.5)
    assert cal.expected_correct(conf, estimate, 4.0) == pytest.approx([fallback, (point + 0.5) / 2])

