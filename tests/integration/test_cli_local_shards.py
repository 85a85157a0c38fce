"""``autolabel run --local`` for a PreLabeling ObjectDetection job with ``computeNodes: 3``: three real
worker processes (the pod's entry point with the environment the operator's Indexed Job gives each pod),
merged into one ``result.manifest`` that holds every unlabeled image exactly once and says what a
one-process run says, box for box. The model is a user's own TorchScript detection model (the documented
contract), so the test needs no training and the shards have real boxes to agree on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from autolabel_cli.main import main
from autolabel_worker.detection_data import DetectionDataset, write_detection_dataset

from autolabel.manifest import parse_voc

UNLABELED = 12

JOB = """\
apiVersion: autolabel.dev/v1alpha1
kind: AutoLabelJob
metadata:
  name: boxes-pl
spec:
  task: ObjectDetection
  mode: PreLabeling
  dataset:
    manifest: data/boxes.manifest
  preLabeling:
    model: {{uri: set-by-the-command-line/}}
  resources: {{computeNodes: {nodes}}}
"""


class OwnDetector(torch.nn.Module):
    """A user's own detection model, following the documented contract (docs/detection.md): a list of
    float images [3, H, W] in 0..1 in, per image ``boxes`` [N, 4] (x1 y1 x2 y2 pixels), ``labels`` [N]
    (indices into labels.json) and ``scores`` [N] out. Deterministic, image-dependent boxes and scores
    on both sides of the keep threshold, so that shards have real boxes (and doubts) to agree on."""

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out: list[dict[str, torch.Tensor]] = []
        for image in images:
            gray = image.mean(0)
            height, width = gray.shape[0], gray.shape[1]
            where = int(gray.flatten().argmax())
            y, x = where // width, where % width
            box = torch.tensor(
                [[max(x - 8, 0), max(y - 8, 0), min(x + 8, width), min(y + 8, height)]], dtype=torch.float32
            )
            label = int(gray.mean() * 1000) % 3
            score = (0.3 + 4.0 * gray.std()).clamp(0.06, 0.99)
            out.append(
                {"boxes": box, "labels": torch.tensor([label], dtype=torch.int64), "scores": score.reshape(1)}
            )
        return out


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> DetectionDataset:
    """A tiny digit-boxes sample, and beside it ``model/``: :class:`OwnDetector` as TorchScript with its
    labels.json (task ObjectDetection)."""
    root = tmp_path_factory.mktemp("boxes")
    ds = write_detection_dataset(root / "data", seed=3, unlabeled=UNLABELED)
    (root / "model").mkdir()
    torch.jit.script(OwnDetector()).save(str(root / "model" / "model.pt"))
    labels = {"task": "ObjectDetection", "labels": list(ds.classes), "keepThreshold": 0.5}
    (root / "model" / "labels.json").write_text(json.dumps(labels))
    return ds


def prelabel(root: Path, nodes: int, capsys: pytest.CaptureFixture[str]) -> tuple[Path, str]:
    """``autolabel run JOB.yaml --local --model model`` from ``root``; the results folder and stdout."""
    job_file = root / f"prelabel-{nodes}.yaml"
    job_file.write_text(JOB.format(nodes=nodes))
    out = root / f"out-{nodes}"
    code = main(["run", str(job_file), "--local", "--model", "model", "--output", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err[-3000:]
    (run_dir,) = out.iterdir()
    return run_dir, printed.out


def comparable(line: dict[str, Any]) -> dict[str, Any]:
    """A result line with its VOC file's path (which names the shard folder) replaced by the file's boxes."""
    (annotation,) = line["annotation"]
    boxes = parse_voc(Path(annotation["annotation-loc"]).read_bytes())
    kept = {k: v for k, v in annotation.items() if k != "annotation-loc"}
    return {**line, "annotation": kept, "boxes": sorted(boxes)}


def test_three_shards_as_processes_merge_to_what_one_process_writes(
    sample: DetectionDataset, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = sample
    root = ds.folder.parent
    monkeypatch.chdir(root)  # --model model is relative to the current directory
    three, printed = prelabel(root, 3, capsys)
    assert f"results: {three}/result.manifest (merged from 3 shards)" in printed
    assert sorted(p.name for p in (three / "shards").iterdir()) == ["0", "1", "2"]
    merged = [json.loads(x) for x in (three / "result.manifest").read_text().splitlines()]
    unlabeled = [
        str(ds.folder / line["source"])
        for line in map(json.loads, ds.manifest.read_text().splitlines())
        if not line.get("annotation")
    ]
    assert sorted(line["source"] for line in merged) == sorted(unlabeled)  # each exactly once
    assert sum(len(comparable(line)["boxes"]) for line in merged) >= UNLABELED // 2, merged  # boxes to compare
    summary = json.loads((three / "summary.json").read_text())
    assert summary["total"] == UNLABELED and summary["task"] == "ObjectDetection"

    one, _ = prelabel(root, 1, capsys)
    single = [json.loads(x) for x in (one / "result.manifest").read_text().splitlines()]
    key = json.dumps
    assert sorted(map(key, map(comparable, merged))) == sorted(map(key, map(comparable, single)))
    assert json.loads((one / "summary.json").read_text())["total"] == UNLABELED
