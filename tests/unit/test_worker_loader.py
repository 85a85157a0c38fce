"""The inference loader (predict.iter_batches) and the decoder's orientation fast path: what the faster
loader of issue 11 must keep (order, failures, pixels)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from autolabel_worker.images import decode_image
from autolabel_worker.predict import image_to_array, iter_batches
from PIL import Image

from autolabel.storage import Storage


def _png(value: int, size: tuple[int, int] = (8, 8), **save: object) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size, value).save(buf, format="PNG", **save)
    return buf.getvalue()


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_local_files_come_in_order_with_failures_named(tmp_path: Path, chunk: int) -> None:
    sources = []
    for i in range(11):
        path = tmp_path / f"{i:02d}.png"
        if i == 4:
            path.write_bytes(b"not an image")
        elif i != 7:  # 7 is missing
            path.write_bytes(_png(i * 10, size=(8, 8) if i % 2 else (5, 9)))
        sources.append(str(path))
    batches = list(iter_batches(Storage(), sources, decode_image, (8, 8), batch_size=5, decode_workers=2, chunk=chunk))
    kept = [s for b in batches for s in b.sources]
    assert kept == [s for i, s in enumerate(sources) if i not in (4, 7)]
    failures = dict(f for b in batches for f in b.failures)
    assert set(failures) == {sources[4], sources[7]}
    assert "no such" in failures[sources[7]] or "not found" in failures[sources[7]]
    x = np.concatenate([b.x.numpy() for b in batches])
    assert x.shape == (9, 3, 8, 8) and x.dtype == np.uint8
    for row, source in zip(x, kept, strict=True):
        expected = image_to_array(decode_image(Path(source).read_bytes(), source), (8, 8))
        assert np.array_equal(row, expected)


def test_nothing_to_load_gives_no_batches() -> None:
    assert list(iter_batches(Storage(), [], decode_image, (8, 8))) == []


def test_png_orientation_in_its_exif_chunk_is_still_applied() -> None:
    """The orientation fast path skips only images that carry no EXIF, XMP or TIFF tags."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img = Image.new("RGB", (4, 2), (0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG", exif=exif.tobytes())
    assert decode_image(buf.getvalue(), "rot.png").size == (2, 4)
    assert decode_image(_png(0, size=(4, 2)), "plain.png").size == (4, 2)


def test_the_switch_interval_is_short_while_batches_load_and_restored_after(tmp_path: Path) -> None:
    import sys

    from autolabel_worker.predict import SWITCH_INTERVAL

    (tmp_path / "a.png").write_bytes(_png(1))
    before = sys.getswitchinterval()
    seen = []
    for _ in iter_batches(Storage(), [str(tmp_path / "a.png")], decode_image, (8, 8)):
        seen.append(sys.getswitchinterval())
    assert seen == [min(before, SWITCH_INTERVAL)]
    assert sys.getswitchinterval() == before
