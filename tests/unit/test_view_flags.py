"""The test-time views' flags in the worker's scratch file: one bit per view, in the predictor's view order."""

from __future__ import annotations

import numpy as np
import pytest
from autolabel_worker.augment import TTA_REASONS
from autolabel_worker.hard_examples import HardExampleRule
from autolabel_worker.pipeline import MAX_VIEWS, Scratch, pack_view_flags, unpack_view_flags

VIEWS = ["flip_lr", "crop", "scale", "translate"]


def test_bit_i_is_the_ith_view() -> None:
    pred = np.array([0, 1, 2, 3])
    view_preds = {
        "flip_lr": np.array([0, 1, 2, 3]),  # agrees everywhere
        "crop": np.array([9, 1, 2, 3]),  # differs on image 0
        "scale": np.array([9, 9, 2, 3]),  # differs on images 0 and 1
        "translate": np.array([0, 1, 2, 9]),  # differs on image 3
    }
    flags = pack_view_flags(pred, view_preds, VIEWS)
    assert flags.dtype == np.uint16
    assert flags.tolist() == [0b0110, 0b0100, 0b0000, 0b1000]
    # another view order, other bits
    assert pack_view_flags(pred, view_preds, ["translate", "scale"]).tolist() == [0b10, 0b10, 0, 0b01]


def test_round_trip_keeps_what_the_hard_example_rule_needs() -> None:
    rng = np.random.default_rng(0)
    n, classes = 500, 10
    pred = rng.integers(classes, size=n)
    view_preds = {v: np.where(rng.random(n) < 0.3, rng.integers(classes, size=n), pred) for v in VIEWS}
    unpacked = unpack_view_flags(pack_view_flags(pred, view_preds, VIEWS), pred, VIEWS)
    assert list(unpacked) == VIEWS
    for view in VIEWS:
        differs = view_preds[view] != pred
        np.testing.assert_array_equal(unpacked[view] != pred, differs)
        np.testing.assert_array_equal(unpacked[view][differs], -1)
    rule = HardExampleRule(np.full(classes, 0.5), TTA_REASONS)
    conf = rng.random(n)
    direct, via_flags = rule.judge(pred, conf, view_preds), rule.judge(pred, conf, unpacked)
    np.testing.assert_array_equal(direct.hard, via_flags.hard)
    np.testing.assert_array_equal(direct.coefficient, via_flags.coefficient)
    assert direct.reasons == via_flags.reasons


def test_no_views_and_too_many_views() -> None:
    pred = np.array([1, 2])
    assert pack_view_flags(pred, {}, []).tolist() == [0, 0]
    assert unpack_view_flags(np.zeros(2, dtype=np.uint16), pred, []) == {}
    many = [f"v{i}" for i in range(MAX_VIEWS + 1)]
    with pytest.raises(ValueError, match="do not fit"):
        pack_view_flags(pred, {v: pred for v in many}, many)
    top = many[:MAX_VIEWS]  # the last view uses the top bit
    flags = pack_view_flags(pred, {**{v: pred for v in top[:-1]}, top[-1]: pred + 1}, top)
    assert flags.tolist() == [1 << (MAX_VIEWS - 1)] * 2
    assert unpack_view_flags(flags, pred, top)[top[-1]].tolist() == [-1, -1]


def test_flags_survive_the_scratch_file() -> None:
    views = ["crop", "scale", "translate"]
    scratch = Scratch(views)
    try:
        pred = np.array([3, 4, 5])
        view_preds = {"crop": np.array([3, 0, 5]), "scale": np.array([3, 4, 5]), "translate": np.array([0, 0, 5])}
        flags = pack_view_flags(pred, view_preds, views)
        scratch.append(["a", "b", "c"], pred, np.array([0.9, 0.8, 0.7]), flags, np.zeros(3))
        ((sources, rec),) = list(scratch.read())
        assert sources == ["a", "b", "c"]
        unpacked = unpack_view_flags(rec["tta"], rec["pred"].astype(np.int64), scratch.views)
        assert {v: p.tolist() for v, p in unpacked.items()} == {
            "crop": [3, -1, 5],
            "scale": [3, 4, 5],
            "translate": [-1, -1, 5],
        }
    finally:
        scratch.close()
