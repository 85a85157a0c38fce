"""PASCAL VOC rules (issue 8 item 1): difficult/truncated, clipping with a warning, refused boxes and labels,
and how the worker's preflight uses them for object detection."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
from autolabel_worker.preflight import run_preflight
from PIL import Image

from autolabel.api import AutoLabelJobSpec
from autolabel.manifest import (
    DETECTION_TYPE,
    VocAnnotation,
    VocBox,
    VocError,
    parse_voc,
    read_manifest,
    read_voc,
    voc_xml,
)
from autolabel.storage import Storage

FILE = "s3://b/xml/7.xml"


def obj(name: str, box: tuple[object, object, object, object], extra: str = "") -> str:
    xmin, ymin, xmax, ymax = box
    return (
        f"<object><name>{name}</name>{extra}<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
        f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
    )


def doc(*objects: str, size: tuple[int, int] | None = (64, 48)) -> bytes:
    head = "<filename>7.jpg</filename>"
    if size is not None:
        head += f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
    return f"<annotation>{head}{''.join(objects)}</annotation>".encode()


def test_round_trip_keeps_every_field() -> None:
    boxes = [
        VocBox("car", 1, 2.5, 30, 40, 0.875, difficult=True),
        VocBox("bus", 0, 0, 64, 48, None, truncated=True),
        VocBox("cat", 5.25, 6, 7, 8, 0.5, True, True),
        VocBox("dog", 10, 11, 12, 13),
    ]
    xml = voc_xml("7.jpg", (64, 48, 3), boxes, annotated_by="human", path="s3://b/img/7.jpg")
    first = read_voc(xml, FILE)
    assert first == VocAnnotation(
        boxes=boxes, width=64, height=48, depth=3, filename="7.jpg", path="s3://b/img/7.jpg", warnings=[]
    )
    again = read_voc(voc_xml(first.filename or "", (64, 48, 3), first.boxes, path=first.path), FILE)
    assert again == first
    assert parse_voc(xml, FILE) == boxes
    # the positional form used before the flags existed still means the same
    assert VocBox("car", 1, 2, 3, 4, 0.9) == VocBox("car", 1, 2, 3, 4, 0.9, False, False)


def test_difficult_and_truncated_are_read() -> None:
    xml = doc(
        obj("a", (1, 1, 5, 5), "<difficult>1</difficult><truncated>0</truncated>"),
        obj("b", (1, 1, 5, 5), "<truncated> 1 </truncated>"),
        obj("c", (1, 1, 5, 5)),
    )
    flags = [(b.difficult, b.truncated) for b in read_voc(xml, FILE).boxes]
    assert flags == [(True, False), (False, True), (False, False)]


@pytest.mark.parametrize("value", ["2", "yes", "", "-1", "0.5"])
def test_flags_other_than_0_or_1_are_refused(value: str) -> None:
    xml = doc(obj("a", (1, 1, 5, 5)), obj("cat", (1, 1, 5, 5), f"<difficult>{value}</difficult>"))
    with pytest.raises(VocError) as err:
        read_voc(xml, FILE)
    assert str(err.value) == f'{FILE}: object 2 ("cat"): <difficult> must be 0 or 1, got {value.strip()!r}'


def test_boxes_reaching_outside_are_clipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    xml = doc(obj("in", (0, 0, 64, 48)), obj("cat", (-3, 10, 70, 50.5)))
    ann = read_voc(xml, FILE)
    assert ann.boxes == [VocBox("in", 0, 0, 64, 48), VocBox("cat", 0, 10, 64, 48)]
    assert ann.warnings == [
        f'{FILE}: object 2 ("cat"): box (-3, 10, 70, 50.5) reaches outside the 64x48 image, clipped to (0, 10, 64, 48)'
    ]
    with caplog.at_level(logging.WARNING, logger="autolabel.manifest"):
        assert parse_voc(xml, FILE)[1] == VocBox("cat", 0, 10, 64, 48)
    assert 'object 2 ("cat")' in caplog.text


def test_without_a_size_only_negative_coordinates_are_clipped() -> None:
    ann = read_voc(doc(obj("a", (-1, 2, 500, 600)), size=None), FILE)
    assert ann.width is None and ann.boxes == [VocBox("a", 0, 2, 500, 600)]
    assert ann.warnings == [f'{FILE}: object 1 ("a"): box (-1, 2, 500, 600) reaches outside the ?x? image, '
                            "clipped to (0, 2, 500, 600)"]  # fmt: skip
    # a <size> of 0 (some tools write it) is no size
    assert read_voc(doc(obj("a", (1, 2, 500, 600)), size=(0, 0)), FILE).warnings == []


def test_the_image_size_wins_over_size() -> None:
    ann = read_voc(doc(obj("a", (1, 2, 60, 40))), FILE, image_size=(32, 32))
    assert ann.boxes == [VocBox("a", 1, 2, 32, 32)]
    assert ann.warnings[0] == f"{FILE}: <size> says 64x48, the image is 32x32; boxes are clipped to the image"
    assert 'object 1 ("a"): box (1, 2, 60, 40) reaches outside the 32x32 image' in ann.warnings[1]
    assert read_voc(doc(obj("a", (1, 2, 6, 4)), size=None), FILE, image_size=(32, 32)).warnings == []


@pytest.mark.parametrize(
    ("box", "reason"),
    [
        ((5, 1, 5, 9), 'object 2 ("cat"): empty box (5, 1, 5, 9)'),
        ((5, 9, 8, 2), 'object 2 ("cat"): empty box (5, 9, 8, 2)'),
        ((70, 1, 80, 9), 'object 2 ("cat"): box (70, 1, 80, 9) is entirely outside the 64x48 image'),
        ((1, -9, 8, -2), 'object 2 ("cat"): box (1, -9, 8, -2) is entirely outside the 64x48 image'),
        ((1, 48, 8, 52), 'object 2 ("cat"): box (1, 48, 8, 52) is entirely outside the 64x48 image'),
    ],
)
def test_degenerate_boxes_are_refused(box: tuple[float, float, float, float], reason: str) -> None:
    with pytest.raises(VocError) as err:
        read_voc(doc(obj("a", (1, 1, 5, 5)), obj("cat", box)), FILE)
    assert str(err.value).startswith(f"{FILE}: {reason}")


def test_unknown_labels_are_refused() -> None:
    xml = doc(obj("dog", (1, 1, 5, 5)), obj("cat", (1, 1, 5, 5)))
    assert len(read_voc(xml, FILE, known_labels={"dog", "cat"}).boxes) == 2
    with pytest.raises(VocError) as err:
        read_voc(xml, FILE, known_labels=["dog", "bird"])
    assert str(err.value) == f'{FILE}: object 2 ("cat"): unknown label "cat" (known: bird, dog)'
    many = [f"l{i:02d}" for i in range(25)]
    with pytest.raises(VocError, match=r"known: l00, l01, .*l19, … 5 more\)$"):
        read_voc(xml, FILE, known_labels=many)


@pytest.mark.parametrize(
    ("xml", "reason"),
    [
        (b"<annotation><object>", "not valid XML"),
        (b"not xml at all", "not valid XML"),
        (b"<doc><object/></doc>", "root element is <doc>, expected <annotation>"),
        (doc(obj("a", ("x", 1, 2, 2))), "object 1 (\"a\"): <xmin> is not a number: 'x'"),
        (doc(obj("a", (1, 1, 2, "nan"))), 'object 1 ("a"): <ymax> is not a finite number'),
        (doc(obj("a", (1, 1, 2, ""))), 'object 1 ("a"): missing <bndbox><ymax>'),
        (
            doc(obj("a", (1, 1, 2, 2)), obj("b", (1, 1, 2, 2), "<confidence>1.5</confidence>")),
            'object 2 ("b"): <confidence> 1.5 is outside 0..1',
        ),
        (b"<annotation><size><width>wide</width></size></annotation>", "<size><width> is not a number: 'wide'"),
        (b"<annotation><size><height>4.5</height></size></annotation>", "<size><height> must be a whole number"),
    ],
)
def test_malformed_files_are_named(xml: bytes, reason: str) -> None:
    with pytest.raises(VocError) as err:
        read_voc(xml, FILE)
    assert str(err.value).startswith(f"{FILE}: ") and reason in str(err.value)
    assert err.value.source == FILE


# ---------------------------------------------------------------------------------------- preflight


def png(size: tuple[int, int] = (32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size).save(buf, "PNG")
    return buf.getvalue()


def detection_set(tmp_path: Path, xml: dict[int, str]) -> tuple[Storage, str, AutoLabelJobSpec]:
    """Images 0..n-1 labeled with the given VOC texts, plus one unlabeled image."""
    (tmp_path / "img").mkdir()
    (tmp_path / "xml").mkdir()
    lines = []
    for i, text in xml.items():
        (tmp_path / f"img/{i}.png").write_bytes(png())
        (tmp_path / f"xml/{i}.xml").write_text(text)
        ann = {"type": DETECTION_TYPE, "annotation-loc": f"xml/{i}.xml", "annotation-format": "PASCAL VOC"}
        lines.append(json.dumps({"source": f"img/{i}.png", "annotation": [ann]}))
    (tmp_path / "img/u.png").write_bytes(png())
    lines.append(json.dumps({"source": "img/u.png"}))
    manifest = str(tmp_path / "set.manifest")
    Path(manifest).write_text("\n".join(lines) + "\n")
    spec = AutoLabelJobSpec.model_validate(
        {"task": "ObjectDetection", "mode": "ActiveLearning", "dataset": {"manifest": manifest},
         "images": {"maxUnreadableFraction": 0.5}}
    )  # fmt: skip
    return Storage(), manifest, spec


def test_preflight_counts_an_image_once_per_label_and_keeps_warnings(tmp_path: Path) -> None:
    files = {
        i: doc(obj("car", (1, 1, 9, 9)), obj("car", (10, 10, 20, 20)), obj("bus", (2, 2, 40, 8)), size=None).decode()
        for i in range(5)
    }
    files[5] = doc(obj("car", (1, 1, 9, 9), "<difficult>1</difficult>"), size=None).decode()
    st, manifest, spec = detection_set(tmp_path, files)
    result = run_preflight(read_manifest(st, manifest), st, spec)
    # two cars on one image count once for "car"; a difficult box counts too
    assert result.label_counts == {"car": 6, "bus": 5} and result.failures == []
    first = str(tmp_path / "img/0.png")
    assert result.image_sizes[first] == (32, 32)
    assert result.boxes[first][2] == VocBox("bus", 2, 2, 32, 8)  # clipped to the decoded image
    assert result.boxes[str(tmp_path / "img/5.png")][0].difficult
    assert result.voc_warning_count == 5
    assert result.voc_warnings[0] == (
        f'{tmp_path}/xml/0.xml: object 3 ("bus"): box (2, 2, 40, 8) reaches outside the 32x32 image, '
        "clipped to (2, 2, 32, 8)"
    )
    fields = result.summary_fields()
    assert fields["annotationWarningCount"] == 5 and fields["annotationWarnings"] == result.voc_warnings


def test_preflight_caps_the_warnings_it_lists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import autolabel_worker.preflight as preflight_mod

    monkeypatch.setattr(preflight_mod, "MAX_VOC_WARNINGS_KEPT", 2)
    files = {i: doc(obj("car", (-1, 1, 9, 9)), obj("bus", (1, 1, 99, 9))).decode() for i in range(3)}
    st, manifest, spec = detection_set(tmp_path, files)
    result = run_preflight(read_manifest(st, manifest), st, spec)
    # per file: <size> is not the image's, two boxes clipped
    assert result.voc_warning_count == 9 and len(result.voc_warnings) == 2


def test_preflight_lists_an_image_with_a_broken_voc_file_as_unreadable(tmp_path: Path) -> None:
    good = doc(obj("car", (1, 1, 9, 9)), obj("bus", (2, 2, 8, 8)), size=None).decode()
    files = {i: good for i in range(6)}
    files[1] = doc(obj("car", (1, 1, 9, 9)), obj("cat", (5, 5, 5, 9)), size=None).decode()
    files[2] = "<annotation><object>"
    files[3] = doc(obj("car", (1, 1, 9, 9), "<truncated>maybe</truncated>"), size=None).decode()
    st, manifest, spec = detection_set(tmp_path, files)
    result = run_preflight(read_manifest(st, manifest), st, spec)
    reasons = {u["source"]: u["reason"] for u in result.unreadable}
    xml = tmp_path / "xml"
    expat = reasons.get(str(tmp_path / "img/2.png"), "").rpartition("not valid XML: ")[2]
    assert expat  # the parser's own words (they vary with the expat version)
    assert reasons == {
        str(tmp_path / "img/1.png"): f'annotation file {xml}/1.xml: object 2 ("cat"): empty box (5, 5, 5, 9): '
        "xmax must exceed xmin and ymax ymin",
        str(tmp_path / "img/2.png"): f"annotation file {xml}/2.xml: not valid XML: {expat}",
        str(tmp_path / "img/3.png"): f'annotation file {xml}/3.xml: object 1 ("car"): <truncated> must be 0 or 1, '
        "got 'maybe'",
    }
    assert result.label_counts == {"car": 3, "bus": 3}
    assert [e.source for e in result.labeled] == [str(tmp_path / f"img/{i}.png") for i in (0, 4, 5)]
    assert set(result.boxes) == {e.source for e in result.labeled}
