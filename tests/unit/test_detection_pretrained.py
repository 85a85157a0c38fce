"""spec.activeLearning.pretrainedWeights: a state_dict for the detector, its backbone, or an exported
model's detector is loaded where names and shapes fit; a file where nothing fits is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from autolabel_worker.detection.model import DetectorSpec, build_detector, choose_detector_spec, load_pretrained


def _spec() -> DetectorSpec:
    return choose_detector_spec([(64, 64)])


@pytest.mark.parametrize("prefix", ["", "backbone.", "detector."])
def test_weights_saved_from_the_detector_its_backbone_or_an_export_are_loaded(tmp_path: Path, prefix: str) -> None:
    torch.manual_seed(1)
    source = build_detector(_spec())
    state = source.state_dict()
    if prefix == "backbone.":
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    elif prefix == "detector.":
        state = {prefix + k: v for k, v in state.items()}
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    torch.manual_seed(2)
    target = build_detector(_spec())
    loaded = load_pretrained(target, path)
    assert loaded.endswith(f"of {len(target.state_dict())} tensors")
    for name, value in source.backbone.state_dict().items():
        assert torch.equal(target.backbone.state_dict()[name], value), name


def test_a_weights_file_where_nothing_fits_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 512)}, path)
    with pytest.raises(ValueError, match=r"resnet\.pt: no tensor fits"):
        load_pretrained(build_detector(_spec()), path)
