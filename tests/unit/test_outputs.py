"""Result writing (result.manifest, summary.json, model/, shard merge) and progress reporting."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
from autolabel_worker.outputs import (
    PRE_LABELING_BY,
    ResultWriter,
    format_reasons,
    merge_shards,
    write_json,
)
from autolabel_worker.progress import ProgressReporter

from autolabel.contract import shard_prefix
from autolabel.manifest import CLASSIFICATION_TYPE, VocBox, parse_manifest, parse_voc, voc_xml
from autolabel.storage import ScopedWriter, Storage


def writer_at(path: Path) -> ScopedWriter:
    return ScopedWriter(Storage(), str(path))


def test_result_lines_have_the_contract_keys(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with ResultWriter(writer_at(out)) as results:
        results.add_classification("s3://b/img/1.png", "3", 0.97314159, False, 0.02686, [])
        results.add_classification("s3://b/img/2.png", "5", 0.41, True, 0.59, [1, 20, 1])
        assert not (out / "result.manifest").exists()  # uploaded only at the end
    lines = (out / "result.manifest").read_text().splitlines()
    first, second = (json.loads(x) for x in lines)
    assert first == {
        "source": "s3://b/img/1.png",
        "annotation": [
            {"type": CLASSIFICATION_TYPE, "name": "3", "annotated-by": "autolabel/active-learning",
             "confidence": 0.973142},
        ],
        "hard": False,
        "hard-coefficient": 0.02686,
        "hard-reasons": "",
    }  # fmt: skip
    assert second["hard"] is True and second["hard-reasons"] == "1-20"
    assert results.counts() == {"total": 2, "autoLabeled": 1, "hardExamples": 1, "labelCounts": {"3": 1, "5": 1}}
    # The result is itself a valid manifest for the reader.
    entries = list(parse_manifest(lines, str(out / "result.manifest")))
    assert [e.labels for e in entries] == [["3"], ["5"]]


def test_result_writer_validates_and_aborts(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), ResultWriter(writer_at(out)) as results:
        results.add_classification("a.png", "1", 0.9, False, 0.1)
        raise RuntimeError("training blew up")
    assert not out.exists()  # nothing half-written
    results = ResultWriter(writer_at(out), annotated_by=PRE_LABELING_BY)
    with pytest.raises(ValueError, match=r"confidence 1\.2 is outside 0\.\.1"):
        results.add_classification("a.png", "1", 1.2, False, 0.1)
    results.abort()


def test_many_lines_are_streamed_not_held(tmp_path: Path) -> None:
    out = tmp_path / "out"
    results = ResultWriter(writer_at(out))
    for i in range(20000):
        results.add_classification(
            f"s3://b/img/{i}.png", str(i % 10), 0.99, i % 7 == 0, 0.01, [1] if i % 7 == 0 else []
        )
    assert results._tmp is not None
    tmp_name = results._tmp.name
    assert Path(tmp_name).stat().st_size > 1_000_000
    uri = results.close()
    assert uri == str(out / "result.manifest") and not Path(tmp_name).exists()
    assert len(Path(uri).read_text().splitlines()) == 20000
    assert results.close() == uri  # idempotent


def test_summary_and_model_upload(tmp_path: Path) -> None:
    out = tmp_path / "out"
    model = tmp_path / "model-local"
    (model / "extra").mkdir(parents=True)
    (model / "model.pt").write_bytes(b"ts")
    (model / "labels.json").write_text('{"task": "ImageClassification", "labels": ["a", "b"]}')
    (model / "extra" / "notes.txt").write_text("n")
    results = ResultWriter(writer_at(out))
    results.add_classification("a.png", "a", 0.9, False, 0.1)
    results.close()
    uris = results.upload_model(str(model))
    assert uris[-1].endswith("model/labels.json")  # last: its presence means the model is complete
    assert (out / "model" / "model.pt").read_bytes() == b"ts" and (out / "model/extra/notes.txt").exists()
    doc = results.write_summary({"targetPrecision": 0.95, "estimatedPrecision": 0.97, "labels": ["a", "b"]})
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == doc and on_disk["total"] == 1 and on_disk["autoLabeled"] == 1
    assert on_disk["targetPrecision"] == 0.95


def test_format_reasons() -> None:
    assert format_reasons([1, 19, 3]) == "1-19-3"
    assert format_reasons("1-20") == "1-20"
    assert format_reasons([]) == ""


def test_voc_xml_round_trip() -> None:
    boxes = [VocBox("car", 1, 2, 30, 40, 0.875), VocBox("bus", 5.5, 6, 7, 8, None)]
    xml = voc_xml("7.jpg", (64, 48, 3), boxes)
    assert parse_voc(xml, "7.xml") == [VocBox("car", 1.0, 2.0, 30.0, 40.0, 0.875), VocBox("bus", 5.5, 6.0, 7.0, 8.0)]


def test_detection_lines_point_at_voc_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    results = ResultWriter(writer_at(out), task="ObjectDetection")
    results.add_detection("s3://b/img/7.jpg", [VocBox("car", 1, 2, 3, 4, 0.9)], (10, 10, 3), True, 0.4, [0])
    results.close()
    (line,) = (out / "result.manifest").read_text().splitlines()
    doc = json.loads(line)
    loc = doc["annotation"][0]["annotation-loc"]
    assert doc["annotation"][0]["annotation-format"] == "PASCAL VOC" and doc["hard-reasons"] == "0"
    assert parse_voc(Path(loc).read_bytes()) == [VocBox("car", 1.0, 2.0, 3.0, 4.0, 0.9)]


def test_merge_shards_waits_for_all_and_is_deterministic(tmp_path: Path) -> None:
    st = Storage()
    top = ScopedWriter(st, str(tmp_path / "out"))
    for index in range(3):
        shard = top.scoped(shard_prefix(index))
        results = ResultWriter(shard, annotated_by=PRE_LABELING_BY)
        for i in range(index + 1):
            results.add_classification(f"s{index}-{i}.png", "a", 0.9, i == 1, 0.1)
        results.close()
        if index < 2:
            results.write_summary({"durationSeconds": 2.0 + index, "estimatedPrecision": None, "shard": index,
                                   "unreadableImages": [{"source": f"bad{index}", "reason": "r"}]})  # fmt: skip
    assert merge_shards(st, top, 3) is None  # shard 2 has not finished
    assert not (tmp_path / "out" / "result.manifest").exists()
    write_json(top.scoped(shard_prefix(2)), "summary.json",
               {"total": 3, "autoLabeled": 2, "hardExamples": 1, "durationSeconds": 4.0, "shard": 2})  # fmt: skip
    merged = merge_shards(st, top, 3)
    assert merged is not None
    assert (merged["total"], merged["autoLabeled"], merged["hardExamples"], merged["shards"]) == (6, 4, 2, 3)
    assert merged["durationSeconds"] == 4.0 and merged["imagesPerSecond"] == 1.5
    assert [u["source"] for u in merged["unreadableImages"]] == ["bad0", "bad1"]
    assert "shard" not in merged
    first = (tmp_path / "out" / "result.manifest").read_text()
    assert [json.loads(x)["source"] for x in first.splitlines()] == ["s0-0.png", "s1-0.png", "s1-1.png",
                                                                      "s2-0.png", "s2-1.png", "s2-2.png"]  # fmt: skip
    merge_shards(st, top, 3)
    assert (tmp_path / "out" / "result.manifest").read_text() == first


# ----------------------------------------------------------------------------------------- progress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def read_progress(out: Path) -> dict:
    return json.loads((out / "progress.json").read_text())


def test_progress_is_throttled_but_stage_changes_are_immediate(tmp_path: Path) -> None:
    out = tmp_path / "out"
    clock = Clock()
    progress = ProgressReporter(writer_at(out), total=100, stage="preflight", tty=False, clock=clock)
    assert read_progress(out)["stage"] == "preflight" and progress.writes == 1
    for _ in range(50):
        progress.advance()
        clock.now += 0.01
    assert progress.writes == 1  # nothing new within 0.5 s
    clock.now += 2.5
    progress.advance()
    assert progress.writes == 2 and read_progress(out)["processed"] == 51
    progress.set_stage("train", total=10)
    doc = read_progress(out)
    assert (doc["stage"], doc["processed"], doc["total"], doc["percent"]) == ("train", 0, 10, 0)
    progress.update(5)
    clock.now += 3
    progress.update(7)
    doc = read_progress(out)
    assert (doc["processed"], doc["percent"]) == (7, 70)
    assert doc["updatedAt"].endswith("Z") and "T" in doc["updatedAt"]
    progress.done()
    assert read_progress(out)["stage"] == "done" and read_progress(out)["percent"] == 100


def test_progress_failure_carries_the_error(tmp_path: Path) -> None:
    out = tmp_path / "out"
    progress = ProgressReporter(writer_at(out), total=3, tty=False, extra={"shard": 1})
    progress.fail("too many unreadable images")
    doc = read_progress(out)
    assert doc["stage"] == "failed" and doc["error"] == "too many unreadable images" and doc["shard"] == 1


def test_progress_bar_on_a_terminal_and_log_lines_otherwise(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    progress = ProgressReporter(None, total=4, stage="inference", tty=True, stream=stream)
    progress.update(2)
    progress.done()
    text = stream.getvalue()
    assert "\r" in text and "inference" in text and " 50%" in text and "100%" in text and text.endswith("\n")

    caplog.set_level(logging.INFO, logger="autolabel_worker.progress")
    stream = io.StringIO()
    progress = ProgressReporter(None, total=4, stage="inference", tty=False, stream=stream, log_interval=0)
    progress.update(2)
    assert stream.getvalue() == ""
    assert any("inference: 2/4 (50%)" in r.getMessage() for r in caplog.records)


def test_progress_survives_storage_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    progress = ProgressReporter(writer_at(blocker / "out"), total=1, tty=False)  # cannot create the folder
    progress.advance()
    progress.done()
    assert "could not write progress.json" in caplog.text


def test_log_lines_do_not_collide_with_the_bar() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        progress = ProgressReporter(None, total=10, stage="train", tty=True, stream=stream)
        progress.update(3)
        logging.getLogger("autolabel_worker.test").warning("epoch 3 done")
        progress.update(6)
        progress.close()
        assert "\r\033[Kepoch 3 done\n" in stream.getvalue()
        assert not handler.filters  # removed on close
    finally:
        root.removeHandler(handler)
