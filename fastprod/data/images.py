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


@contextmanager
def _decoding(path: str | Path, max_aspect: float, max_pixels: int) -> Iterator[Image.Image]:
    """Open `path` and check its size from the header (`check_geometry`), yielding the PIL image before
    any pixel is decoded; every way of failing becomes an `ImageError` with a reason."""
    path = os.fspath(path)  # a str: Path objects cost ~10 us a file here (stat, open), 15% of a small JPEG's decode
    try:
        if os.stat(path).st_size == 0:
            raise ImageError("zero-byte file")
        with Image.open(path) as im:
            check_geometry(im.width, im.height, max_aspect, max_pixels)
            yield im
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError("missing file") from None
    except IsADirectoryError:
        raise ImageError("not a file") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except UnidentifiedImageError:
        raise ImageError("cannot identify image") from None
    except Image.DecompressionBombError:
        raise ImageError("too many pixels (decompression bomb)") from None
    except OSError as err:
        message = str(err)
        if "truncated" in message.lower() or "broken data stream" in message:
            raise ImageError("truncated") from None
        raise ImageError(f"decode error: {message}" if message else "decode error") from None
    except (SyntaxError, ValueError, EOFError, IndexError, TypeError) as err:  # raised by some plugins
        raise ImageError(f"corrupt: {err}" if str(err) else "corrupt") from None


def probe(path: str | Path, *, max_aspect: float = MAX_ASPECT, max_pixels: int = MAX_PIXELS) -> ImageInfo:
    """Fully decode the image at `path` and return its stored size, format and mode (refusing, before
    decoding, an image beyond `max_aspect` or `max_pixels`).

    JPEGs are decoded with libjpeg's 1/8 DCT scaling (`draft`), which still reads every byte of the
    entropy-coded data, so a truncated file still fails while the decode costs a fraction of a full one.
    """
    with _decoding(path, max_aspect, max_pixels) as im:
        info = ImageInfo(im.width, im.height, im.format or "unknown", im.mode)
        if im.format == "JPEG":
            im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))
        im.load()
        return info


# (width, height, format, mode, reason); reason is "" for a readable image.
ProbeResult = tuple[int, int, str, str, str]


def failed(reason: str) -> ProbeResult:
    return 0, 0, "", "", reason


def probe_result(path: str, max_aspect: float, max_pixels: int) -> ProbeResult:
    """`probe` for `fastprod prepare`'s worker pool: a tuple, and for a file that cannot be read its reason
    instead of an exception. Here rather than in prepare so that the pool's workers import PIL and NumPy
    only, not pyarrow (~0.3 s a worker)."""
    try:
        info = probe(path, max_aspect=max_aspect, max_pixels=max_pixels)
    except ImageError as err:
        return failed(str(err))
    except Exception as err:  # a decoder bug must quarantine one file, not stop a multi-million-file scan
        return failed(f"unexpected error: {type(err).__name__}: {err}")
    return info.width, info.height, info.format, info.mode, ""


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
