"""Worker test helpers shared by unit test modules: the digits sample dataset on local files, a tiny
TorchScript "lookup" model whose answers a test chooses class by class, and ActiveLearning and
PreLabeling jobs over them (imported as ``from worker_fixtures import ...``; tests/ is on the test path)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from autolabel_worker.data import DigitsDataset, load_digits_arrays, write_digits_dataset
from torch import nn

from autolabel.api import AutoLabelJob

UNLABELED = 60


class Lookup(nn.Module):
    """Finds the digit it is shown among all 1,797 (exact match) and answers ``mapping[its class]`` with
    a fixed confidence: the identity mapping is always right, any other is wrong where it differs."""

    def __init__(self, mapping: list[int], logit: float = 6.0):
        super().__init__()
        images, labels = load_digits_arrays()
        protos = torch.from_numpy(images).float().div(255.0).unsqueeze(1).repeat(1, 3, 1, 1).flatten(1)
        self.register_buffer("protos", protos)
        self.register_buffer("labels", torch.from_numpy(labels))
        self.register_buffer("mapping", torch.tensor(mapping, dtype=torch.long))
        self.logit = logit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Registered buffers are Tensors, but mypy sees them as `Tensor | Module`; TorchScript accepts neither
        # class-level annotations nor `type:` comments here, so pyproject.toml relaxes mypy for this module.
        nearest = torch.cdist(x.flatten(1).float(), self.protos).argmin(dim=1)
        cls = self.mapping[self.labels[nearest]]
        out = torch.zeros(x.shape[0], self.mapping.shape[0], device=x.device)
        return out.scatter(1, cls.unsqueeze(1), self.logit)


def lookup_model(folder: Path, mapping: Iterable[int] = range(10), **labels_json: Any) -> str:
    """A TorchScript Lookup model with its labels.json (no test-time views); returns its folder URI."""
    folder.mkdir(parents=True)
    torch.jit.script(Lookup(list(mapping)).eval()).save(str(folder / "model.pt"))
    meta = {
        "task": "ImageClassification",
        "labels": [str(i) for i in range(10)],
        "inputSize": [8, 8],
        "mean": [0.0, 0.0, 0.0],
        "std": [1.0, 1.0, 1.0],
        "ttaViews": [],
        **labels_json,
    }
    (folder / "labels.json").write_text(json.dumps(meta))
    return str(folder) + "/"


def digits(tmp_path: Path, per_class: int = 5, unlabeled: int = UNLABELED) -> DigitsDataset:
    return write_digits_dataset(tmp_path / "digits", labeled_per_class=per_class, seed=0, max_unlabeled=unlabeled)


def prelabeling_job(
    ds: DigitsDataset, model_uri: str, output: Path, target: float = 0.95, **images: Any
) -> AutoLabelJob:
    """A PreLabeling job over `ds` with the model at `model_uri`, results under `output`; `images` are
    spec.images settings (e.g. maxUnreadableFraction)."""
    return AutoLabelJob.model_validate(
        {
            "metadata": {"name": "prelabeling", "namespace": "test", "uid": "0f0f0f0f-0000-4000-8000-000000000000"},
            "spec": {
                "task": "ImageClassification",
                "mode": "PreLabeling",
                "dataset": {"manifest": str(ds.manifest)},
                "preLabeling": {"model": {"uri": model_uri}},
                "activeLearning": {"targetPrecision": target},
                "images": images,
                "output": str(output),
            },
        }
    )


def active_learning_job(ds: DigitsDataset, output: Path, name: str, uid: str, **active_learning: Any) -> AutoLabelJob:
    """An ActiveLearning job over `ds`, results under `output`; `active_learning` is spec.activeLearning."""
    return AutoLabelJob.model_validate(
        {
            "metadata": {"name": name, "namespace": "test", "uid": uid},
            "spec": {
                "task": "ImageClassification",
                "mode": "ActiveLearning",
                "dataset": {"manifest": str(ds.manifest)},
                "activeLearning": active_learning,
                "output": str(output),
            },
        }
    )


def upload_digits(storage: Any, bucket: str, folder: Path, seed: int, unlabeled: int) -> tuple[str, DigitsDataset]:
    """The digits (5 labeled per class, ``unlabeled`` more) written to ``folder`` and uploaded under
    ``s3://<bucket>/digits/``; returns (that prefix, the dataset as written)."""
    ds = write_digits_dataset(folder, labeled_per_class=5, seed=seed, max_unlabeled=unlabeled)
    base = f"s3://{bucket}/digits/"
    for path in sorted((folder / "images").iterdir()):
        storage.upload_file(str(path), f"{base}images/{path.name}")
    storage.upload_file(str(ds.manifest), f"{base}digits.manifest")
    return base, ds
