"""Decoding dataset images into RGB, whatever they are stored as.

The seed's service failed on RGBA images. Here every mode Pillow reads becomes 8-bit RGB: transparency
(RGBA, LA, palette or grey/RGB with a tRNS chunk) is composited on white, unless the job's policy is
``Fail``; 16-bit and float greyscale are scaled, not clipped; CMYK and YCbCr are converted; EXIF
orientation is applied. Broken data raises :class:`ImageError` naming the image and the reason.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from autolabel.api import AlphaPolicy

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_WIDE_MODES = {"I", "F", "I;16", "I;16B", "I;16L", "I;16N"}
# Errors Pillow raises on broken input (truncated files raise OSError, bad headers SyntaxError, …).
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    EOFError,
    Image.DecompressionBombError,
)


class ImageError(Exception):
    """An image cannot be used. ``str()`` is ``"<source>: <reason>"``."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    mode: str
    format: str | None
    has_alpha: bool


def has_transparency(img: Image.Image) -> bool:
    """Whether the image carries transparency that converting to RGB would lose."""
    return img.mode in _ALPHA_MODES or "transparency" in img.info


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "not an image Pillow can identify (unknown format or corrupt header)"
    if isinstance(exc, Image.DecompressionBombError):
        return f"too large to decode safely ({exc})"
    text = str(exc).strip() or type(exc).__name__
    if "truncated" in text.lower():
        return f"truncated image data ({text})"
    return f"corrupt image data ({text})"


def probe_image(data: bytes, source: str = "<image>", verify: bool = True) -> ImageInfo:
    """Size and mode from the header, without decoding the pixels.

    With ``verify`` Pillow also checks what it can cheaply (PNG chunk checksums and a complete chunk
    sequence), which catches most truncated PNGs; a JPEG cut short is only caught by :func:`decode_image`.
    """
    if not data:
        raise ImageError(source, "empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                info = ImageInfo(img.width, img.height, img.mode, img.format, has_transparency(img))
                if verify:
                    img.verify()
    except _DECODE_ERRORS as exc:
        raise ImageError(source, _reason(exc)) from exc
    if info.width < 1 or info.height < 1:
        raise ImageError(source, f"image has no pixels ({info.width}x{info.height})")
    return info


def _wide_to_l(img: Image.Image) -> Image.Image:
    """16/32-bit integer or float greyscale to 8 bits, by scaling rather than clipping."""
    if img.mode != "F":
        img = img.convert("I") if img.mode != "I" else img
    extrema: Any = img.getextrema()  # single band: (min, max)
    lo, hi = float(extrema[0]), float(extrema[1])
    if img.mode == "F" and lo >= 0 and hi <= 1:
        scale, offset = 255.0, 0.0  # float images in 0..1
    elif lo >= 0 and hi <= 255:
        scale, offset = 1.0, 0.0
    elif img.mode != "F" and lo >= 0 and hi <= 65535:
        scale, offset = 255.0 / 65535.0, 0.0  # 16-bit data: keep its absolute brightness
    elif hi > lo:
        scale, offset = 255.0 / (hi - lo), -lo * 255.0 / (hi - lo)
    else:
        scale, offset = 0.0, 0.0 if hi <= 0 else 255.0
    img = img.convert("F").point(lambda v: v * scale + offset)
    return img.convert("L")


# Where Pillow's getexif() finds an orientation (Image.getexif in Pillow 11/12): the EXIF block or the PNG
# text chunk holding it, XMP, or a TIFF's own tags.
_ORIENTATION_SOURCES = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")


def _oriented(img: Image.Image) -> Image.Image:
    """EXIF orientation applied. Skipped when the image carries nothing that could hold one: parsing an
    empty EXIF block cost 13% of decoding a small image (profile in docs/benchmarks.md)."""
    if not hasattr(img, "tag_v2") and not any(key in img.info for key in _ORIENTATION_SOURCES):
        return img
    return ImageOps.exif_transpose(img) or img


def _flatten_on_white(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def decode_image(data: bytes, source: str, alpha: AlphaPolicy | str = AlphaPolicy.CONVERT) -> Image.Image:
    """Decode ``data`` to an 8-bit RGB image; see the module docstring for the conversions.

    Raises :class:`ImageError` for empty, corrupt or truncated data, and for transparency under
    ``AlphaPolicy.FAIL``.
    """
    if not data:
        raise ImageError(source, "empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img: Image.Image = Image.open(io.BytesIO(data))
            img.load()
            if has_transparency(img):
                if str(alpha) == AlphaPolicy.FAIL.value:
                    raise ImageError(source, f"has transparency (mode {img.mode}); spec.images.alpha is Fail")
                img = _oriented(img)
                return _flatten_on_white(img)
            img = _oriented(img)
            if img.mode == "RGB":
                return img
            if img.mode in _WIDE_MODES:
                img = _wide_to_l(img)
            return img.convert("RGB")
    except ImageError:
        raise
    except _DECODE_ERRORS as exc:
        raise ImageError(source, _reason(exc)) from exc
