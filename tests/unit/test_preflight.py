"""Image decoding and the worker's preflight over a real dataset on disk."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from autolabel_worker.images import ImageError, decode_image, probe_image
from autolabel_worker.preflight import PreflightError, run_preflight
from PIL import Image

from autolabel.api import AlphaPolicy, AutoLabelJobSpec
from autolabel.manifest import CLASSIFICATION_TYPE, DETECTION_TYPE, read_manifest
from autolabel.storage import Storage


def encode(img: Image.Image, fmt: str = "PNG", **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def px(img: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    value = img.getpixel(xy)
    assert isinstance(value, tuple)
    return value


def palette_with_transparency() -> bytes:
    img = Image.new("P", (6, 4), 1)
    img.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    img.putpixel((0, 0), 0)
    return encode(img, transparency=0)


# ------------------------------------------------------------------------------------------ images


def test_rgba_is_composited_on_white() -> None:
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    img.putpixel((0, 0), (0, 0, 255, 0))  # fully transparent blue -> white
    img.putpixel((1, 0), (0, 0, 0, 128))  # half-transparent black -> mid grey
    out = decode_image(encode(img), "a.png")
    assert out.mode == "RGB" and out.size == (4, 4)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((2, 2)) == (255, 0, 0)
    assert all(120 <= c <= 135 for c in px(out, (1, 0)))


def test_la_and_palette_transparency_are_converted() -> None:
    out = decode_image(encode(Image.new("LA", (3, 3), (0, 0))), "la.png")
    assert out.mode == "RGB" and out.getpixel((1, 1)) == (255, 255, 255)
    out = decode_image(palette_with_transparency(), "p.png")
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 1)) == (200, 10, 10)


@pytest.mark.parametrize(
    "data",
    [
        encode(Image.new("RGBA", (2, 2))),
        encode(Image.new("LA", (2, 2))),
        palette_with_transparency(),
        encode(Image.new("RGB", (2, 2), (1, 2, 3)), transparency=(1, 2, 3)),
    ],
    ids=["RGBA", "LA", "P+tRNS", "RGB+tRNS"],
)
def test_alpha_policy_fail_names_the_source(data: bytes) -> None:
    with pytest.raises(ImageError) as err:
        decode_image(data, "s3://b/img/9.png", AlphaPolicy.FAIL)
    assert err.value.source == "s3://b/img/9.png" and "transparency" in err.value.reason
    assert "spec.images.alpha is Fail" in str(err.value)


def test_unusual_modes_and_sizes_just_work() -> None:
    cases = {
        "grey": (encode(Image.new("L", (1, 1), 77)), (77, 77, 77)),
        "1-bit": (encode(Image.new("1", (9, 13), 1)), (255, 255, 255)),
        "16-bit": (encode(Image.new("I;16", (7, 1), 65535)), (255, 255, 255)),
        "16-bit dark": (encode(Image.new("I;16", (3, 3), 257 * 10)), (10, 10, 10)),
        "cmyk-jpeg": (encode(Image.new("CMYK", (5, 3), (0, 0, 0, 0)), "JPEG"), None),
        "float-tiff": (encode(Image.new("F", (2, 2), 0.5), "TIFF"), (127, 127, 127)),
        "gif": (encode(Image.new("P", (3, 2)), "GIF"), None),
        "wide": (encode(Image.new("RGB", (1000, 1), (9, 9, 9)), "PNG"), (9, 9, 9)),
    }
    for name, (data, pixel) in cases.items():
        out = decode_image(data, name)
        assert out.mode == "RGB", name
        if pixel is not None:
            got = px(out, (0, 0))
            assert all(abs(a - b) <= 2 for a, b in zip(got, pixel, strict=True)), (name, got)
    assert px(decode_image(cases["cmyk-jpeg"][0], "c"), (0, 0)) >= (250, 250, 250)


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (4, 2))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    out = decode_image(encode(img, "JPEG", exif=exif.tobytes()), "rot.jpg")
    assert out.size == (2, 4)


def noise_png(size: int = 64) -> bytes:
    return encode(Image.effect_noise((size, size), 60).convert("RGB"))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"definitely not an image", "not an image Pillow can identify"),
        (noise_png()[:-200], "truncated"),
        (encode(Image.effect_noise((64, 64), 60).convert("RGB"), "JPEG")[:-300], "truncated"),
    ],
    ids=["empty", "garbage", "truncated-png", "truncated-jpeg"],
)
def test_corrupt_data_raises_image_error(data: bytes, reason: str) -> None:
    with pytest.raises(ImageError) as err:
        decode_image(data, "s3://b/x.img")
    assert err.value.source == "s3://b/x.img" and reason in err.value.reason


def test_probe_reads_the_header_only() -> None:
    info = probe_image(encode(Image.new("LA", (17, 5))), "x.png")
    assert (info.width, info.height, info.mode, info.format, info.has_alpha) == (17, 5, "LA", "PNG", True)
    with pytest.raises(ImageError, match="truncated"):
        probe_image(noise_png()[:-200], "t.png")  # PNG chunk checks catch a cut file


# ---------------------------------------------------------------------------------------- preflight


def make_dataset(root: Path, extra: dict[str, bytes] | None = None, per_label: int = 5) -> str:
    """Two labels x ``per_label`` grey images, 3 unlabeled, plus ``extra`` unlabeled files."""
    (root / "img").mkdir(parents=True)
    lines = []
    for label in ("0", "1"):
        for i in range(per_label):
            name = f"img/{label}_{i}.png"
            (root / name).write_bytes(encode(Image.new("L", (8, 8), 40 * i)))
            lines.append(json.dumps({"source": name, "annotation": [{"type": CLASSIFICATION_TYPE, "name": label}]}))
    for i in range(3):
        (root / f"img/u{i}.png").write_bytes(encode(Image.new("RGB", (8, 8))))
        lines.append(json.dumps({"source": f"img/u{i}.png"}))
    for name, data in (extra or {}).items():
        (root / name).write_bytes(data)
        lines.append(json.dumps({"source": name}))
    (root / "set.manifest").write_text("\n".join(lines) + "\n")
    return str(root / "set.manifest")


def spec_for(manifest: str, **images: Any) -> AutoLabelJobSpec:
    return AutoLabelJobSpec.model_validate(
        {"task": "ImageClassification", "mode": "ActiveLearning", "dataset": {"manifest": manifest},
         "images": images},
    )  # fmt: skip


def preflight(manifest: str, **images: Any):
    st = Storage()
    return run_preflight(read_manifest(st, manifest), st, spec_for(manifest, **images))


def test_clean_dataset(tmp_path: Path) -> None:
    result = preflight(make_dataset(tmp_path))
    assert result.ok and result.failures == []
    assert result.classes == ["0", "1"] and result.class_index == {"0": 0, "1": 1}
    assert len(result.labeled) == 10 and len(result.unlabeled) == 3
    assert result.unreadable == [] and result.converted == 0 and result.duplicates == []
    assert result.sizes == {(8, 8): 13}


def test_rgba_converted_and_corrupt_listed(tmp_path: Path) -> None:
    manifest = make_dataset(
        tmp_path,
        {"img/rgba.png": encode(Image.new("RGBA", (8, 8))), "img/la.png": encode(Image.new("LA", (8, 8))),
         "img/p.png": palette_with_transparency(), "img/broken.png": b"\x89PNG\r\n\x1a\n garbage"},
    )  # fmt: skip
    result = preflight(manifest, maxUnreadableFraction=0.2)
    assert result.converted == 3
    assert result.unreadable == [{"source": str(tmp_path / "img/broken.png"), "reason": result.unreadable[0]["reason"]}]
    assert result.unreadable[0]["reason"]
    assert len(result.unlabeled) == 6  # 3 plain + 3 converted; the broken one is skipped
    assert result.summary_fields()["convertedImages"] == 3


def test_missing_file_is_listed_as_unreadable(tmp_path: Path) -> None:
    manifest = make_dataset(tmp_path, per_label=6)
    with open(manifest, "a") as fh:
        fh.write(json.dumps({"source": "img/gone.png"}) + "\n")
    result = preflight(manifest, maxUnreadableFraction=0.1)
    assert result.unreadable == [{"source": str(tmp_path / "img/gone.png"), "reason": "cannot read: no such file"}]


def test_too_many_unreadable_fails_naming_them(tmp_path: Path) -> None:
    manifest = make_dataset(tmp_path, {"img/bad1.png": b"x", "img/bad2.png": b"y"})
    # 2 bad of 15 = 13.3% > 5% (the default)
    with pytest.raises(PreflightError) as err:
        preflight(manifest)
    assert err.value.reason == "TooManyUnreadableImages"
    assert "2 of 15 images (13.3%)" in err.value.message and "bad1.png" in err.value.message
    assert "maxUnreadableFraction (5.0%)" in err.value.message
    # The same dataset passes when the policy allows it.
    assert len(preflight(manifest, maxUnreadableFraction=0.2).unreadable) == 2


def test_alpha_policy_fail_stops_preflight(tmp_path: Path) -> None:
    manifest = make_dataset(tmp_path, {"img/rgba.png": encode(Image.new("RGBA", (8, 8)))})
    with pytest.raises(PreflightError) as err:
        preflight(manifest, alpha="Fail")
    assert err.value.reason == "ImageHasAlpha" and str(tmp_path / "img/rgba.png") in err.value.message


def test_unreadable_labeled_images_are_dropped_before_label_counts(tmp_path: Path) -> None:
    manifest = make_dataset(tmp_path)
    (tmp_path / "img/1_0.png").write_bytes(b"corrupt")
    result = preflight(manifest, maxUnreadableFraction=0.5)
    assert result.label_counts == {"0": 5, "1": 4}
    assert [f.reason for f in result.failures] == ["TooFewImagesPerLabel"]
    assert result.failures[0].message == 'label "1" has 4 images; each label needs at least 5'
    with pytest.raises(PreflightError) as err:
        result.raise_for_failures()
    assert err.value.reason == "TooFewImagesPerLabel"


def test_duplicates_reported_and_used_once(tmp_path: Path) -> None:
    manifest = make_dataset(tmp_path)
    with open(manifest, "a") as fh:
        fh.write(json.dumps({"source": "img/u0.png"}) + "\n")
    result = preflight(manifest)
    assert result.duplicates == [{"source": str(tmp_path / "img/u0.png"), "firstLine": 11, "line": 14}]
    assert len(result.unlabeled) == 3 and result.duplicate_count == 1


def test_duplicates_listed_are_capped_but_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from autolabel_worker import preflight as preflight_mod

    monkeypatch.setattr(preflight_mod, "MAX_DUPLICATES_KEPT", 2)
    manifest = make_dataset(tmp_path)
    with open(manifest, "a") as fh:
        fh.write("\n".join(json.dumps({"source": "img/u1.png"}) for _ in range(5)) + "\n")
    result = preflight(manifest)
    assert len(result.duplicates) == 2 and result.duplicate_count == 5
    assert result.summary_fields()["duplicateCount"] == 5


def test_detection_labels_come_from_voc_files(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "xml").mkdir()
    lines = []
    for i in range(6):
        (tmp_path / f"img/{i}.png").write_bytes(encode(Image.new("RGB", (32, 32))))
        objs = "".join(
            f"<object><name>{n}</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox>"
            "</object>"
            for n in (["car", "bus"] if i < 5 else ["car"])
        )
        (tmp_path / f"xml/{i}.xml").write_text(f"<annotation>{objs}</annotation>")
        ann = {"type": DETECTION_TYPE, "annotation-loc": f"xml/{i}.xml", "annotation-format": "PASCAL VOC"}
        lines.append(json.dumps({"source": f"img/{i}.png", "annotation": [ann]}))
    (tmp_path / "img/u.png").write_bytes(encode(Image.new("RGB", (32, 32))))
    lines.append(json.dumps({"source": "img/u.png"}))
    (tmp_path / "set.manifest").write_text("\n".join(lines))
    st = Storage()
    spec = AutoLabelJobSpec.model_validate(
        {"task": "ObjectDetection", "mode": "ActiveLearning", "dataset": {"manifest": str(tmp_path / "set.manifest")},
         "images": {"maxUnreadableFraction": 0.5}}
    )  # fmt: skip
    result = run_preflight(read_manifest(st, str(tmp_path / "set.manifest")), st, spec)
    assert result.label_counts == {"car": 6, "bus": 5} and result.failures == []
    assert len(result.boxes[str(tmp_path / "img/0.png")]) == 2
    (tmp_path / "xml/0.xml").write_text("<annotation><object>")
    result = run_preflight(read_manifest(st, str(tmp_path / "set.manifest")), st, spec)
    assert result.label_counts == {"car": 5, "bus": 4}
    assert "annotation file" in result.unreadable[0]["reason"] and "not valid XML" in result.unreadable[0]["reason"]
