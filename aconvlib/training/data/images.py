"""Images: inspection and conversion of every Pillow mode to 8-bit RGB (see :mod:`aconvlib.training.data`)."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

from .common import _EXIF_ORIENTATION, DataError


# --------------------------------------------------------------------------------------------------
# Images: inspection and conversion to RGB
# --------------------------------------------------------------------------------------------------

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
#: Modes converted to RGB (everything else raises DataError at validation).
CONVERTIBLE_MODES = frozenset({"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr"}) | _ALPHA_MODES | _SIXTEEN_BIT_MODES


def _check_mode(mode: str, origin: str) -> None:
    if mode not in CONVERTIBLE_MODES:
        raise DataError(
            f"{origin}: image mode {mode!r} cannot be converted to 8-bit RGB (convertible: "
            f"{', '.join(sorted(CONVERTIBLE_MODES))}); re-save it as an 8-bit RGB image")


def _check_int_range(im: Image.Image, origin: str) -> None:
    lo, hi = im.getextrema()
    if lo < 0 or hi > 65535:
        raise DataError(f"{origin}: 32-bit integer image with values {lo}..{hi} outside 0..65535: its 8-bit "
                        "range is undefined; convert it to 8 or 16 bit first")


def to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255), origin: str = "image") -> Image.Image:
    """Convert any supported image to 8-bit RGB by the module's rules (EXIF orientation applied)."""
    _check_mode(img.mode, origin)
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES:
        if mode == "I":
            _check_int_range(img, origin)
        a = np.asarray(img).astype(np.int64)
        u8 = ((a * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(u8, "L").convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


def _inspect(data: bytes, origin: str, thorough: bool) -> tuple[int, int, str]:
    """(width, height, mode) of an encoded image as it will be used (EXIF-rotated); DataError if bad."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
        with Image.open(io.BytesIO(data)) as im:
            mode, (w, h) = im.mode, im.size
            orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
            _check_mode(mode, origin)
            if thorough:
                im.load()
                if mode == "I":
                    _check_int_range(im, origin)
    except DataError:
        raise
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ... on bad data
        raise DataError(f"{origin}: unreadable or corrupt image ({type(e).__name__}: {e})") from None
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    return w, h, mode


def _decode_rgb(data: bytes, origin: str, background: tuple[int, int, int]) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return to_rgb(im, background, origin)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{origin}: unreadable or corrupt image ({type(e).__name__}: {e})") from None
