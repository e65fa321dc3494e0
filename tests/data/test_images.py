"""Image ingestion: probe rejects unreadable files with a reason; load_rgb normalises every mode to RGB."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastprod.data import images
from fastprod.data.images import ImageError, load_rgb, probe


def _noise(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _jpeg_bytes(array: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def test_probe_reports_size_format_mode(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(_jpeg_bytes(_noise(48, 64)))
    info = probe(path)
    assert (info.width, info.height, info.format, info.mode) == (64, 48, "JPEG", "RGB")


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("keep", [0.004, 0.3, 0.9, 0.99])  # 0.004: cut inside the headers
def test_probe_rejects_truncated_jpeg(tmp_path, progressive, keep):
    data = _jpeg_bytes(_noise(256, 320), progressive=progressive)
    path = tmp_path / "t.jpg"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ImageError, match="truncated"):
        probe(path)
    with pytest.raises(ImageError, match="truncated"):
        load_rgb(path)


def test_probe_rejects_truncated_png(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_noise(128, 128)).save(buf, "PNG")
    path = tmp_path / "t.png"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError):
        probe(path)


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "zero-byte file"), (b"<html>404 not found</html>" * 20, "cannot identify image"), (None, "missing file")],
)
def test_probe_reasons(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageError) as err:
        probe(path)
    assert str(err.value) == reason
    with pytest.raises(ImageError, match=reason):
        load_rgb(path)


def test_rgba_composited_over_white(tmp_path):
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    rgba[0, 0, 3], rgba[0, 1, 3] = 0, 255  # fully transparent and fully opaque pixels
    path = tmp_path / "cutout.jpg"  # PNG bytes behind a .jpg name, as in the real data
    Image.fromarray(rgba, "RGBA").save(path, "PNG")
    assert probe(path).format == "PNG" and probe(path).mode == "RGBA"

    out = np.asarray(load_rgb(path), dtype=np.float64)
    alpha = rgba[..., 3:4] / 255.0
    expected = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
    assert out.shape == (20, 30, 3)
    assert np.abs(out - expected).max() <= 1.0
    assert (out[0, 0] == 255).all()
    assert (out[0, 1] == rgba[0, 1, :3]).all()


def test_la_composited_over_white(tmp_path):
    la = np.stack([np.full((8, 8), 40, np.uint8), np.full((8, 8), 128, np.uint8)], axis=-1)
    path = tmp_path / "la.png"
    Image.fromarray(la, "LA").save(path)
    expected = 40 * (128 / 255) + 255 * (1 - 128 / 255)
    assert np.abs(np.asarray(load_rgb(path), np.float64) - expected).max() <= 1.0


def test_palette_with_transparency(tmp_path):
    index = np.zeros((10, 12), np.uint8)
    index[:, 6:] = 1
    index[0, 0] = 2  # the transparent entry
    im = Image.fromarray(index, "P")
    im.putpalette([200, 10, 10, 10, 200, 10, 0, 0, 0] + [0] * (253 * 3))
    path = tmp_path / "p.jpg"
    im.save(path, "PNG", transparency=2)
    assert probe(path).mode == "P"

    out = np.asarray(load_rgb(path))
    assert out.shape == (10, 12, 3)
    assert tuple(out[0, 0]) == (255, 255, 255)  # transparent black becomes white, not black
    assert tuple(out[5, 1]) == (200, 10, 10)
    assert tuple(out[5, 7]) == (10, 200, 10)


def test_palette_without_transparency(tmp_path):
    im = Image.fromarray(np.ones((4, 4), np.uint8), "P")
    im.putpalette([0, 0, 0, 1, 2, 3] + [0] * (254 * 3))
    path = tmp_path / "p.png"
    im.save(path)
    assert (np.asarray(load_rgb(path)) == [1, 2, 3]).all()


def test_cmyk_jpeg(tmp_path):
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:, :8] = (220, 40, 30)
    rgb[:, 8:] = (30, 60, 200)
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(rgb).convert("CMYK").save(path, "JPEG", quality=100)
    assert probe(path).mode == "CMYK"
    out = load_rgb(path)
    assert out.mode == "RGB"
    # JPEG is lossy and chroma edges blur: compare the block interiors.
    assert np.abs(np.asarray(out, np.int16)[4:12, 2:6] - rgb[4:12, 2:6]).max() <= 6
    assert np.abs(np.asarray(out, np.int16)[4:12, 10:14] - rgb[4:12, 10:14]).max() <= 6


@pytest.mark.parametrize(
    ("mode", "array", "expected"),
    [
        ("L", np.full((6, 6), 77, np.uint8), 77),
        ("I;16", np.full((6, 6), 257 * 100, np.uint16), 100),
        ("I", np.full((6, 6), 257 * 30, np.int32), 30),
        ("F", np.full((6, 6), 0.5, np.float32), 128),
    ],
)
def test_grayscale_modes(tmp_path, mode, array, expected):
    path = tmp_path / ("g.png" if mode in ("L", "I;16") else "g.tif")
    Image.fromarray(array).save(path)
    assert probe(path).mode == mode
    out = load_rgb(path)
    assert out.mode == "RGB" and out.size == (6, 6)
    assert np.abs(np.asarray(out, np.int16) - expected).max() <= 1


def test_grayscale_jpeg(tmp_path):
    path = tmp_path / "g.jpg"
    Image.fromarray(np.full((8, 8), 90, np.uint8), "L").save(path, "JPEG", quality=95)
    assert probe(path).mode == "L"
    assert np.abs(np.asarray(load_rgb(path), np.int16) - 90).max() <= 2


def test_rgb_returned_unchanged(tmp_path):
    array = _noise(10, 10)
    path = tmp_path / "x.png"
    Image.fromarray(array).save(path)
    assert (np.asarray(load_rgb(path)) == array).all()


def _png_header(path: Path, width: int, height: int) -> None:
    """A PNG that declares width x height RGB pixels but holds only a few bytes of pixel data: opening it
    is cheap, decoding it would allocate the whole image and then fail as truncated."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)))


def test_extreme_aspect_ratio_refused_before_decoding(tmp_path):
    strip = tmp_path / "strip.png"
    Image.new("RGB", (1, 400_000), (200, 10, 10)).save(strip)
    assert strip.stat().st_size < 4000  # a tiny file that would cost gigabytes once resized for the model
    for fn in (probe, load_rgb):
        with pytest.raises(ImageError) as err:
            fn(strip)
        assert str(err.value) == "extreme aspect ratio 1:400000 (max 20:1)"
    wide = tmp_path / "wide.png"
    _png_header(wide, 300_000, 2)  # decoding it would fail: the refusal comes from the header alone
    with pytest.raises(ImageError, match=r"^extreme aspect ratio 300000:2 \(max 20:1\)$"):
        load_rgb(wide)
    with pytest.raises(ImageError, match="truncated"):
        load_rgb(wide, max_aspect=200_000)
    assert load_rgb(strip, max_aspect=400_000).size == (1, 400_000)


@pytest.mark.parametrize("size, ok", [((2, 40), True), ((40, 2), True), ((2, 41), False), ((41, 2), False)])
def test_aspect_ratio_limit_is_inclusive(tmp_path, size, ok):
    path = tmp_path / "a.png"
    Image.new("RGB", size).save(path)
    if ok:
        assert probe(path).width == size[0] and load_rgb(path).size == size
    else:
        with pytest.raises(ImageError, match=f"^extreme aspect ratio {size[0]}:{size[1]} \\(max 20:1\\)$"):
            probe(path)


def test_too_many_pixels_refused_before_decoding(tmp_path):
    assert images.MAX_PIXELS < Image.MAX_IMAGE_PIXELS  # refused before PIL's own bomb warning
    big = tmp_path / "big.png"
    _png_header(big, 9000, 8000)  # 72 megapixels: under PIL's bomb limit, 216 MB once decoded
    for fn in (probe, load_rgb):
        with pytest.raises(ImageError) as err:
            fn(big)
        assert str(err.value) == "too many pixels: 9000x8000 = 72,000,000 (max 64,000,000)"
    small = tmp_path / "small.png"
    Image.fromarray(_noise(40, 40)).save(small)
    with pytest.raises(ImageError, match=r"^too many pixels: 40x40 = 1,600 \(max 1,599\)$"):
        load_rgb(small, max_pixels=1599)
    assert probe(small, max_pixels=1600).width == 40 and load_rgb(small, max_pixels=1600).size == (40, 40)
