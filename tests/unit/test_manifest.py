"""The ModelArts JSON Lines manifest reader and the PASCAL VOC parser."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest

from autolabel.manifest import (
    CLASSIFICATION_TYPE,
    DETECTION_TYPE,
    ManifestError,
    VocBox,
    VocError,
    parse_manifest,
    parse_voc,
    read_manifest,
    summarize,
)
from autolabel.storage import Storage

URI = "s3://datasets/digits/digits.manifest"


def cls(name: str) -> dict[str, str]:
    return {"type": CLASSIFICATION_TYPE, "name": name}


def line(source: str, *annotations: Mapping[str, object], **extra: object) -> str:
    doc: dict[str, object] = {"source": source, **extra}
    if annotations:
        doc["annotation"] = list(annotations)
    return json.dumps(doc)


def test_labeled_unlabeled_usage_and_resolution() -> None:
    lines = [
        line("img/1.png", cls("3"), usage="TRAIN"),
        "",
        "   ",
        line("s3://other/2.png"),
        line("img/3.png", annotation=[]),
        line("img/4.png", cls("cat"), cls("animal"), cls("cat")),
    ]
    entries = list(parse_manifest(lines, URI))
    assert [e.line_no for e in entries] == [1, 4, 5, 6]
    first, second, third, fourth = entries
    assert first.source == "s3://datasets/digits/img/1.png"
    assert first.is_labeled and first.labels == ["3"] and first.usage == "TRAIN"
    assert second.source == "s3://other/2.png" and not second.is_labeled and second.usage is None
    assert not third.is_labeled  # an empty annotation list is unlabeled
    assert fourth.labels == ["cat", "animal"]
    assert first.raw["usage"] == "TRAIN"


def test_annotation_fields_are_kept() -> None:
    text = json.dumps(
        {
            "source": "a.png",
            "annotation": [
                {"type": CLASSIFICATION_TYPE, "name": "7", "annotated-by": "human", "confidence": 0.8, "x": 1}
            ],
        }
    )
    (entry,) = parse_manifest([text], "/data/set.manifest")
    ann = entry.annotations[0]
    assert (ann.name, ann.annotated_by, ann.confidence) == ("7", "human", 0.8)
    assert entry.source == "/data/a.png"


def test_numeric_names_become_strings() -> None:
    (entry,) = parse_manifest(
        [json.dumps({"source": "a.png", "annotation": [{"type": CLASSIFICATION_TYPE, "name": 3}]})], URI
    )
    assert entry.labels == ["3"]


def test_detection_entries() -> None:
    text = line(
        "img/7.jpg",
        {"type": DETECTION_TYPE, "annotation-loc": "xml/7.xml", "annotation-format": "PASCAL VOC"},
    )
    (entry,) = parse_manifest([text], URI)
    ann = entry.annotations[0]
    assert ann.annotation_loc == "s3://datasets/digits/xml/7.xml"
    assert ann.annotation_format == "PASCAL VOC" and entry.is_labeled and entry.labels == []


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"source": "a.png"', "invalid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"annotation": []}', 'missing "source"'),
        ('{"source": ""}', '"source" is empty'),
        ('{"source": "  "}', '"source" is empty'),
        ('{"source": 5}', '"source" must be a string'),
        ('{"source": "a.png", "annotation": {"type": "x"}}', '"annotation" must be a list, got dict'),
        ('{"source": "a.png", "annotation": ["cat"]}', "annotation[0]: must be a JSON object"),
        ('{"source": "a.png", "annotation": [{"name": "cat"}]}', 'annotation[0]: missing "type"'),
        (
            '{"source": "a.png", "annotation": [{"type": "modelarts/image_segmentation", "name": "c"}]}',
            'unknown annotation type "modelarts/image_segmentation"',
        ),
        (
            '{"source": "a.png", "annotation": [{"type": "modelarts/image_classification"}]}',
            'classification annotation without a "name"',
        ),
        (
            '{"source": "a.png", "annotation": [{"type": "modelarts/image_classification", "name": ""}]}',
            'classification annotation without a "name"',
        ),
        (
            '{"source": "a.png", "annotation": [{"type": "modelarts/object_detection"}]}',
            'detection annotation without "annotation-loc"',
        ),
        (
            '{"source": "a.png", "annotation": [{"type": "modelarts/object_detection", "annotation-loc": "a.xml",'
            ' "annotation-format": "COCO"}]}',
            'unsupported "annotation-format" "COCO"',
        ),
        (
            '{"source": "a.png", "annotation": [{"type": "modelarts/image_classification", "name": "c",'
            ' "confidence": 1.5}]}',
            '"confidence" 1.5 is outside 0..1',
        ),
        ('{"source": "a.png", "usage": 3}', '"usage" must be a string'),
        ('{"source": "https://example.com/a.png"}', "unsupported URI scheme 'https://'"),
        ('{"source": "/etc/passwd"}', "is a local path, but the manifest is in object storage"),
        (
            '{"source": "a.png", "annotation": [{"type": "modelarts/object_detection", "annotation-loc": "/x.xml"}]}',
            "\"annotation-loc\" '/x.xml' is a local path",
        ),
    ],
)
def test_malformed_lines_name_manifest_line_and_reason(text: str, reason: str) -> None:
    lines = [line("ok/1.png", cls("a")), "", text, line("ok/2.png")]
    with pytest.raises(ManifestError) as err:
        list(parse_manifest(lines, URI))
    assert err.value.line_no == 3
    assert err.value.uri == URI
    assert reason in err.value.reason
    assert str(err.value).startswith(f"{URI} line 3: ")


def test_error_is_raised_lazily_after_good_lines() -> None:
    entries = parse_manifest([line("a.png"), "not json"], URI)
    assert next(entries).line_no == 1
    with pytest.raises(ManifestError, match="line 2"):
        next(entries)


def test_summarize_counts_and_duplicates() -> None:
    lines = [line(f"img/{i}.png", cls(str(i % 2))) for i in range(6)]
    lines += [line("img/u1.png"), line("img/u2.png"), line("img/u1.png"), line("img/0.png", cls("0"))]
    summary = summarize(parse_manifest(lines, URI))
    assert summary.label_counts == {"0": 4, "1": 3}
    assert (summary.labeled, summary.unlabeled, summary.total) == (7, 3, 10)
    assert summary.annotation_types == {CLASSIFICATION_TYPE}
    assert summary.duplicates == [
        ("s3://datasets/digits/img/u1.png", 7, 9),
        ("s3://datasets/digits/img/0.png", 1, 10),
    ]
    assert summarize(parse_manifest(lines, URI), track_duplicates=False).duplicates == []


def test_read_manifest_from_storage(tmp_path: Path) -> None:
    path = tmp_path / "set.manifest"
    path.write_text(line("img/a.png", cls("x")) + "\n" + line("img/b.png") + "\n")
    entries = list(read_manifest(Storage(), str(path)))
    assert [e.source for e in entries] == [str(tmp_path / "img/a.png"), str(tmp_path / "img/b.png")]


# --------------------------------------------------------------------------------------------- VOC

VOC = b"""<?xml version="1.0"?>
<annotation>
  <filename>7.jpg</filename>
  <size><width>64</width><height>48</height><depth>3</depth></size>
  <object><name>cat</name><bndbox><xmin>1</xmin><ymin>2.5</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object>
  <object><name>dog</name><confidence>0.75</confidence>
    <bndbox><xmin>10</xmin><ymin>10</ymin><xmax>20</xmax><ymax>20</ymax></bndbox></object>
</annotation>"""


def test_parse_voc() -> None:
    assert parse_voc(VOC, "s3://b/xml/7.xml") == [
        VocBox("cat", 1.0, 2.5, 30.0, 40.0, None),
        VocBox("dog", 10.0, 10.0, 20.0, 20.0, 0.75),
    ]
    assert parse_voc(b"<annotation><filename>x</filename></annotation>") == []


@pytest.mark.parametrize(
    ("xml", "reason"),
    [
        (b"<annotation><object>", "not valid XML"),
        (b"<doc/>", "root element is <doc>"),
        (b"<annotation><object><bndbox/></object></annotation>", "object 1: missing <name>"),
        (b"<annotation><object><name>a</name></object></annotation>", 'object 1 ("a"): no <bndbox>'),
        (
            b"<annotation><object><name>a</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax>"
            b"</bndbox></object></annotation>",
            "missing <bndbox><ymax>",
        ),
        (
            b"<annotation><object><name>a</name><bndbox><xmin>x</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax>"
            b"</bndbox></object></annotation>",
            "<xmin> is not a number: 'x'",
        ),
        (
            b"<annotation><object><name>a</name><bndbox><xmin>5</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax>"
            b"</bndbox></object></annotation>",
            "empty box",
        ),
    ],
)
def test_parse_voc_errors_name_file_and_object(xml: bytes, reason: str) -> None:
    with pytest.raises(VocError) as err:
        parse_voc(xml, "s3://b/xml/1.xml")
    assert reason in str(err.value) and str(err.value).startswith("s3://b/xml/1.xml: ")


def test_local_manifests_may_name_local_and_s3_images() -> None:
    entries = list(parse_manifest([line("/abs/a.png"), line("s3://b/k.png"), line("file:///x/y.png")], "/d/m.manifest"))
    assert [e.source for e in entries] == ["/abs/a.png", "s3://b/k.png", "file:///x/y.png"]


def test_modelarts_obs_sources_are_read_as_s3() -> None:
    text = line(
        "obs://bucket/img/1.jpg",
        {"type": DETECTION_TYPE, "annotation-loc": "obs://bucket/xml/1.xml", "annotation-format": "PASCAL VOC"},
    )
    (entry,) = parse_manifest([text], URI)
    assert entry.source == "s3://bucket/img/1.jpg"
    assert entry.annotations[0].annotation_loc == "s3://bucket/xml/1.xml"
