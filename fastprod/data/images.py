"""Image decoding for dataset ingestion: prove an image readable (`probe`) and load it as RGB (`load_rgb`).

AliProducts is nominally JPEG, but a crawled dataset holds palette PNGs with transparency behind
`.jpg` names, grayscale and CMYK JPEGs, truncated downloads and empty files. `prepare` probes every
file once and quarantines the ones that fail; the training loader calls `load_rgb` per sample, which
normalises every accepted mode to RGB (alpha composited over white, as a product cut-out is shown).

Both refuse, from the header alone and before any pixel is decoded, images whose aspect ratio exceeds
`MAX_ASPECT` (a 1.6 KB PNG of 1 x 400,000 pixels is 6 GB once evaluation resizes its short side to the
model size) or whose pixel count exceeds `MAX_PIXELS` (below PIL's decompression-bomb limit); both
limits are keyword arguments (`fastprod prepare --max-aspect/--max-pixels`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

# A truncated file must fail to decode: a fully decoded image is the only proof it is readable.
ImageFile.LOAD_TRUNCATED_IMAGES = False

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
MAX_ASPECT = 20.0  # longest side / shortest side
MAX_PIXELS = 64_000_000  # width * height; PIL warns of a decompression bomb at 89.5 million


class ImageError(Exception):
    """An image that cannot be used; the message is a short reason such as "truncated"."""


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    format: str  # PIL format name: "JPEG", "PNG", ...
    mode: str  # PIL mode as stored: "RGB", "L", "P", "CMYK", "RGBA", ...


def check_geometry(width: int, height: int, max_aspect: float, max_pixels: int) -> None:
    """Raise `ImageError` for an image too elongated or too large to be resized and cropped safely."""
    if width * height > max_pixels:
        raise ImageError(f"too many pixels: {width}x{height} = {width * height:,} (max {max_pixels:,})")
    if max(width, height) > max_aspect * min(width, height):
        raise ImageError(f"extreme aspect ratio {width}:{height} (max {max_aspect:g}:1)")


def _reason(path: str, err: Exception) -> str | None:
    """Why opening or decoding `path` raised `err`, as a short reason; None for an exception that is no
    decoding failure (a bug, to be raised as it is). A zero-byte file is named so whatever its decoder
    raised: its size is looked up only once decoding has failed, so a readable image costs no stat call."""
    if isinstance(err, ImageError):
        return str(err)
    if not isinstance(err, (OSError, Image.DecompressionBombError, SyntaxError, ValueError, EOFError, IndexError, TypeError)):
        return None
    try:
        if os.stat(path).st_size == 0:
            return "zero-byte file"
    except OSError:
        pass
    if isinstance(err, FileNotFoundError):
        return "missing file"
    if isinstance(err, IsADirectoryError):
        return "not a file"
    if isinstance(err, PermissionError):
        return "permission denied"
    if isinstance(err, UnidentifiedImageError):
        return "cannot identify image"
    if isinstance(err, Image.DecompressionBombError):
        return "too many pixels (decompression bomb)"
    message = str(err)
    if isinstance(err, OSError):
        if "truncated" in message.lower() or "broken data stream" in message:
            return "truncated"
        return f"decode error: {message}" if message else "decode error"
    return f"corrupt: {message}" if message else "corrupt"  # SyntaxError, ValueError, ...: raised by some plugins


@contextmanager
def _decoding(path: str | Path, max_aspect: float, max_pixels: int) -> Iterator[Image.Image]:
    """Open `path` and check its size from the header (`check_geometry`), yielding the PIL image before
    any pixel is decoded; every way of failing becomes an `ImageError` with a reason (`_reason`)."""
    path = os.fspath(path)  # a str: Path objects cost ~10 us a file here (stat, open), 15% of a small JPEG's decode
    try:
        with Image.open(path) as im:
            check_geometry(im.width, im.height, max_aspect, max_pixels)
            yield im
    except ImageError:
        raise
    except Exception as err:
        reason = _reason(path, err)
        if reason is None:
            raise
        raise ImageError(reason) from None


def _decode_small(path: str, max_aspect: float, max_pixels: int) -> tuple[int, int, str, str]:
    """(width, height, format, mode) of the image at `path` once fully decoded, JPEGs at 1/8 DCT scale;
    raises what PIL raises (`probe` and `probe_result` turn it into a reason). The per-file work of
    `fastprod prepare`'s probe: no stat, context manager or dataclass beyond what PIL needs."""
    with Image.open(path) as im:
        width, height = im.size
        check_geometry(width, height, max_aspect, max_pixels)
        fmt, mode = im.format or "unknown", im.mode
        if fmt == "JPEG":
            im.draft(mode, (max(1, width // 8), max(1, height // 8)))
        im.load()
    return width, height, fmt, mode


def probe(path: str | Path, *, max_aspect: float = MAX_ASPECT, max_pixels: int = MAX_PIXELS) -> ImageInfo:
    """Fully decode the image at `path` and return its stored size, format and mode (refusing, before
    decoding, an image beyond `max_aspect` or `max_pixels`).

    JPEGs are decoded with libjpeg's 1/8 DCT scaling (`draft`), which still reads every byte of the
    entropy-coded data, so a truncated file still fails while the decode costs a fraction of a full one.
    """
    path = os.fspath(path)
    try:
        return ImageInfo(*_decode_small(path, max_aspect, max_pixels))
    except Exception as err:
        reason = _reason(path, err)
        if reason is None:
            raise
        raise ImageError(reason) from None


# (width, height, format, mode, reason); reason is "" for a readable image.
ProbeResult = tuple[int, int, str, str, str]


def failed(reason: str) -> ProbeResult:
    return 0, 0, "", "", reason


def probe_result(path: str, max_aspect: float, max_pixels: int) -> ProbeResult:
    """`probe` for `fastprod prepare`: a tuple, and for a file that cannot be read its reason instead of
    an exception (a decoder bug quarantines one file, it does not stop a multi-million-file scan)."""
    try:
        return (*_decode_small(path, max_aspect, max_pixels), "")
    except Exception as err:
        reason = _reason(path, err)
        return failed(f"unexpected error: {type(err).__name__}: {err}" if reason is None else reason)


def probe_chunk(paths: list[str], max_aspect: float, max_pixels: int) -> list[ProbeResult]:
    """`probe_result` of each path: one task and one message of `fastprod prepare`'s worker pool. Here
    rather than in prepare so that the pool's workers import PIL and NumPy only, not pyarrow (~0.3 s a
    worker)."""
    return [probe_result(path, max_aspect, max_pixels) for path in paths]


def _composite_over_white(im: Image.Image) -> Image.Image:
    rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _scaled_to_8bit(im: Image.Image) -> Image.Image:
    """Grayscale with more than 8 bits (I;16*, I, F) to L: 16-bit ranges scaled down, floats in [0, 1] up."""
    values = np.asarray(im, dtype=np.float64)
    if im.mode == "F" and values.size and values.max() <= 1.0:
        values = values * 255.0
    elif im.mode != "F" and values.size and values.max() > 255:
        values = values / 257.0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")


def load_rgb(path: str | Path, *, max_aspect: float = MAX_ASPECT, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode `path` to an RGB image (what the training loader, scoring and the FFCV writer feed on).

    Palette images with a transparent index, LA/PA/RGBA and other images carrying a transparency key
    are composited over a white background; CMYK, YCbCr, 1-bit, L and high-bit-depth grayscale are
    converted. Raises `ImageError` for files that cannot be decoded and, before decoding, for images
    beyond `max_aspect` or `max_pixels`.
    """
    with _decoding(path, max_aspect, max_pixels) as im:
        im.load()
        if im.mode == "RGB" and "transparency" not in im.info:
            return im.copy()
        if im.mode in _ALPHA_MODES or "transparency" in im.info:
            return _composite_over_white(im)
        if im.mode.startswith("I") or im.mode == "F":
            return _scaled_to_8bit(im).convert("RGB")
        return im.convert("RGB")
