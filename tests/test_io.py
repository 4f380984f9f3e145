"""Tests for lic.io: image reading conversions, writing, tensor conversion."""

from __future__ import annotations

import io
import random
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, ImageFile

from lic.container import Limits
from lic.io import ImageRead, InputError, from_tensor, output_format, read_image, to_tensor, write_image

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, bit_depth: int, colour_type: int, raw: bytes) -> bytes:
    """A hand-made PNG (Pillow cannot write some of the kinds we need)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(raw))
            + _png_chunk(b"IEND", b""))


def _s15(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def _icc(colour_space: bytes, tags: dict[bytes, bytes], description: str) -> bytes:
    """A minimal ICC v2 display profile, built by hand."""
    text = description.encode("ascii") + b"\0"
    desc = b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(4 + 4 + 2 + 1 + 67)
    tags = {b"desc": desc, b"wtpt": b"XYZ " + bytes(4) + _s15(0.9642) + _s15(1.0) + _s15(0.8249),
            b"cprt": b"text" + bytes(4) + b"none\0", **tags}
    table_size = 4 + 12 * len(tags)
    offset = 128 + table_size
    table, blob = b"", b""
    for sig, data in tags.items():
        data += bytes(-len(data) % 4)
        table += struct.pack(">4sII", sig, offset + len(blob), len(data))
        blob += data
    size = 128 + table_size + len(blob)
    header = (struct.pack(">I4sI4s4s4s", size, b"lcms", 0x02100000, b"mntr", colour_space, b"XYZ ")
              + bytes(12) + b"acsp" + bytes(4 + 4 + 4 + 4 + 8 + 4)
              + _s15(0.9642) + _s15(1.0) + _s15(0.8249) + bytes(4 + 16 + 28))
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + blob


_IDENTITY_CURVE = b"curv" + bytes(4) + struct.pack(">I", 0)
# An RGB profile whose red and blue primaries are sRGB's blue and red (and a linear curve).
SWAPPED_RGB_ICC = _icc(b"RGB ", {
    b"rXYZ": b"XYZ " + bytes(4) + _s15(0.1431) + _s15(0.0606) + _s15(0.7141),
    b"gXYZ": b"XYZ " + bytes(4) + _s15(0.3851) + _s15(0.7169) + _s15(0.0971),
    b"bXYZ": b"XYZ " + bytes(4) + _s15(0.4360) + _s15(0.2225) + _s15(0.0139),
    b"rTRC": _IDENTITY_CURVE, b"gTRC": _IDENTITY_CURVE, b"bTRC": _IDENTITY_CURVE,
}, "swapped primaries")


def _read(data: bytes) -> ImageRead:
    r = read_image(data)
    assert r.pixels.dtype == np.uint8 and r.pixels.ndim == 3 and r.pixels.shape[2] == 3
    assert r.pixels.flags.c_contiguous and r.pixels.flags.writeable
    return r


# ---------------------------------------------------------------- plain RGB, formats, writing


def test_rgb_png_path_and_bytes(tmp_path):
    p = tmp_path / "a.png"
    Image.fromarray(RGB).save(p)
    for source in (p, str(p), p.read_bytes()):
        r = read_image(source)
        assert np.array_equal(r.pixels, RGB)
        assert r.notes == []


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tiff", ".tif", ".ppm", ".webp", ".PNG"])
def test_lossless_formats_round_trip(tmp_path, ext):
    p = tmp_path / f"x{ext}"
    write_image(p, RGB)
    assert Image.open(p).format == output_format(p)
    r = read_image(p)
    assert np.array_equal(r.pixels, RGB) and r.notes == []


def test_jpeg_reads(tmp_path):
    p = tmp_path / "x.jpg"
    write_image(p, RGB)
    assert Image.open(p).format == "JPEG"
    r = read_image(p)
    assert r.pixels.shape == RGB.shape and r.notes == []


def test_write_format_choice(tmp_path):
    assert output_format("out") == "PNG"
    assert output_format(io.BytesIO()) == "PNG"
    assert output_format("x.png", "bmp") == "BMP"
    assert output_format("x.jpeg") == "JPEG"
    with pytest.raises(ValueError, match="extension"):
        output_format("x.lic")
    with pytest.raises(ValueError):
        output_format("x.png", "nosuchformat")
    b = io.BytesIO()
    write_image(b, RGB)
    assert b.getvalue().startswith(b"\x89PNG")
    b = io.BytesIO()
    write_image(b, RGB, format="ppm")
    assert b.getvalue().startswith(b"P6")
    for bad in (RGB.astype(np.float32), RGB[..., :2], RGB[..., 0]):
        with pytest.raises(ValueError):
            write_image(tmp_path / "bad.png", bad)


# ---------------------------------------------------------------- conversions


def test_exif_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    r = _read(_encode(Image.fromarray(RGB), "PNG", exif=exif))
    assert np.array_equal(r.pixels, np.rot90(RGB, -1))
    assert r.notes == ["EXIF orientation 6 applied"]
    exif[0x0112] = 1
    r = _read(_encode(Image.fromarray(RGB), "PNG", exif=exif))
    assert np.array_equal(r.pixels, RGB) and r.notes == []


def test_gray_8bit():
    g = RGB[..., 0]
    r = _read(_encode(Image.fromarray(g, "L"), "PNG"))
    assert np.array_equal(r.pixels, np.repeat(g[..., None], 3, axis=2))
    assert r.notes == ["grayscale image replicated to RGB"]


def test_bilevel():
    bits = np.array([[True, False, True]])
    r = _read(_encode(Image.fromarray(bits), "PNG"))
    assert r.pixels[..., 0].tolist() == [[255, 0, 255]]
    assert "grayscale image replicated to RGB" in r.notes


def test_gray_16bit_rounds():
    values = np.array([[0, 128, 129, 385, 32767, 32768, 65279, 65535]], dtype=np.uint16)
    # round(x / 257); truncation (x >> 8) would give 0 0 0 1 127 128 254 255
    expected = [[0, 0, 1, 1, 127, 128, 254, 255]]
    r = _read(_encode(Image.fromarray(values), "PNG"))
    assert Image.open(io.BytesIO(_encode(Image.fromarray(values), "PNG"))).mode.startswith("I;16")
    assert r.pixels[..., 1].tolist() == expected
    assert np.array_equal(r.pixels[..., 0], r.pixels[..., 2])
    assert r.notes == ["grayscale image replicated to RGB", "16-bit image scaled to 8 bits"]


def test_int32_and_float_gray():
    i = np.array([[-5, 0, 257, 70000]], dtype=np.int32)
    r = _read(_encode(Image.fromarray(i), "TIFF"))
    assert r.pixels[..., 0].tolist() == [[0, 0, 1, 255]]
    assert "16-bit image scaled to 8 bits" in r.notes
    f = np.array([[0.0, 0.5, 1.0, 2.0, -1.0, np.nan, 0.2]], dtype=np.float32)
    r = _read(_encode(Image.fromarray(f), "TIFF"))
    assert r.pixels[..., 2].tolist() == [[0, 128, 255, 255, 0, 0, 51]]
    assert r.notes == ["grayscale image replicated to RGB", "32-bit float image: values in [0, 1] scaled to 0..255"]


def test_16bit_colour_png_noted():
    a = np.array([[[0, 257, 65535], [1000, 30000, 60000]]], dtype=np.uint16)
    raw = b"".join(b"\0" + row.astype(">u2").tobytes() for row in a)
    r = _read(_png(2, 1, 16, 2, raw))
    assert np.abs(r.pixels.astype(int) - np.rint(a / 257)).max() <= 1
    assert r.notes == ["16-bit colour image reduced to 8 bits (by Pillow: low byte dropped)"]


def test_palette():
    im = Image.fromarray(RGB).quantize(colors=8)
    r = _read(_encode(im, "PNG"))
    assert np.array_equal(r.pixels, np.asarray(im.convert("RGB")))
    assert r.notes == []
    r = _read(_encode(im, "PNG", transparency=0))
    assert np.array_equal(r.pixels, np.asarray(im.convert("RGB")))
    assert r.notes == ["alpha channel discarded"]


def test_rgba_alpha_dropped_not_composited():
    alpha = np.zeros(RGB.shape[:2], np.uint8)
    alpha[0, 0] = 255
    r = _read(_encode(Image.fromarray(np.dstack([RGB, alpha]), "RGBA"), "PNG"))
    assert np.array_equal(r.pixels, RGB)  # fully transparent pixels keep their colour
    assert r.notes == ["alpha channel discarded"]


def test_colour_key_transparency():
    r = _read(_encode(Image.fromarray(RGB), "PNG", transparency=(1, 2, 3)))
    assert np.array_equal(r.pixels, RGB) and r.notes == ["alpha channel discarded"]


def test_gray_alpha():
    la = Image.fromarray(np.dstack([RGB[..., 0], RGB[..., 1]]), "LA")
    r = _read(_encode(la, "PNG"))
    assert np.array_equal(r.pixels[..., 1], RGB[..., 0])
    assert r.notes == ["alpha channel discarded", "grayscale image replicated to RGB"]


def test_cmyk():
    cmyk = Image.new("CMYK", (3, 2), (0, 255, 0, 0))
    r = _read(_encode(cmyk, "TIFF"))
    assert r.pixels[0, 0].tolist() == [255, 0, 255]
    assert r.notes == ["CMYK image converted to RGB without a colour profile"]


def test_icc_profile_converted():
    pixels = np.zeros((2, 3, 3), np.uint8)
    pixels[0, :, 0] = 255  # pure red in the file's colour space = sRGB blue
    pixels[1, :, 1] = 255
    r = _read(_encode(Image.fromarray(pixels), "PNG", icc_profile=SWAPPED_RGB_ICC))
    assert r.notes == ["ICC profile 'swapped primaries' converted to sRGB"]
    assert np.abs(r.pixels[0].astype(int) - [0, 0, 255]).max() <= 2
    assert np.abs(r.pixels[1].astype(int) - [0, 255, 0]).max() <= 2


def test_icc_gray_profile_converted():
    gamma22 = b"curv" + bytes(4) + struct.pack(">IH", 1, round(2.2 * 256))
    profile = _icc(b"GRAY", {b"kTRC": gamma22}, "Gray Gamma 2.2")
    g = np.array([[0, 64, 128, 255]], np.uint8)
    r = _read(_encode(Image.fromarray(g, "L"), "PNG", icc_profile=profile))
    assert r.notes == ["grayscale image replicated to RGB", "ICC profile 'Gray Gamma 2.2' converted to sRGB"]
    assert np.array_equal(r.pixels[..., 0], r.pixels[..., 1])
    assert np.abs(r.pixels[0, :, 0].astype(int) - g[0]).max() <= 4  # gamma 2.2 is close to sRGB's curve


def test_icc_srgb_left_alone():
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    r = _read(_encode(Image.fromarray(RGB), "PNG", icc_profile=srgb))
    assert np.array_equal(r.pixels, RGB) and r.notes == []


def test_icc_unusable_ignored():
    r = _read(_encode(Image.fromarray(RGB), "PNG", icc_profile=b"this is not a profile"))
    assert np.array_equal(r.pixels, RGB)
    assert len(r.notes) == 1 and r.notes[0].startswith("ICC profile ignored")
    # An RGB profile on a grayscale image cannot be applied.
    r = _read(_encode(Image.fromarray(RGB[..., 0]), "PNG", icc_profile=SWAPPED_RGB_ICC))
    assert np.array_equal(r.pixels[..., 2], RGB[..., 0])
    assert r.notes[0] == "grayscale image replicated to RGB"
    assert r.notes[1].startswith("ICC profile 'swapped primaries' ignored")


def test_animated_first_frame():
    frames = [Image.fromarray(np.full((4, 4, 3), v, np.uint8)) for v in (10, 200)]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    r = _read(data)
    assert np.all(r.pixels == r.pixels[0, 0]) and 5 <= r.pixels[0, 0, 0] <= 15
    assert r.notes == ["animated image: using the first of 2 frames"]


# ---------------------------------------------------------------- bad input


def test_missing_and_empty(tmp_path):
    with pytest.raises(InputError, match="empty file"):
        read_image(b"")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match="empty file"):
        read_image(tmp_path / "empty.png")
    with pytest.raises(InputError, match="No such file"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(InputError):
        read_image(tmp_path)


def test_not_an_image():
    with pytest.raises(InputError, match="not an image") as info:
        read_image(b"hello, this is text\n" * 10)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated(fmt):
    big = RNG.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    data = _encode(Image.fromarray(big), fmt)
    for cut in (len(data) // 2, len(data) - 100):
        with pytest.raises(InputError) as info:
            read_image(data[:cut])
        assert "\n" not in str(info.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_one_pixel_limit_lics_not_pillows():
    """Pillow's own cap (89.5 MP, an error at twice that) does not refuse what lic's limit allows: a
    header declaring 12000 x 8000 (96 MP) or, with the limit raised, 20000 x 15000 (300 MP) gets past
    the size checks and fails only on its missing pixel data.  Over the limit, lic's message; Pillow's
    cap is restored afterwards and the warning filters are untouched.  (Headers only: nothing large
    is allocated.)"""
    filters_before, cap_before = list(warnings.filters), Image.MAX_IMAGE_PIXELS
    photo_96mp = _png(12000, 8000, 8, 0, b"")
    with pytest.raises(InputError, match="truncated"):
        read_image(photo_96mp)
    with pytest.raises(InputError, match=r"image size \(96000000 pixels\) exceeds the limit of 50000000 pixels"):
        read_image(photo_96mp, limits=Limits(max_pixels=50_000_000))
    big = _png(20000, 15000, 8, 0, b"")
    with pytest.raises(InputError, match=f"exceeds the limit of {Limits().max_pixels} pixels"):
        read_image(big)
    with pytest.raises(InputError, match="truncated"):
        read_image(big, limits=Limits(max_pixels=400_000_000))
    assert Image.MAX_IMAGE_PIXELS == cap_before and warnings.filters == filters_before


def test_limits():
    data = _encode(Image.fromarray(RGB), "PNG")  # 7 x 5
    with pytest.raises(InputError, match="exceeds the limit of 34 pixels"):
        read_image(data, limits=Limits(max_pixels=34))
    with pytest.raises(InputError, match="per side"):
        read_image(data, limits=Limits(max_side=6))
    assert read_image(data, limits=Limits(max_pixels=35, max_side=7)).pixels.shape == (5, 7, 3)


def test_decoder_warnings_become_notes(recwarn):
    data = bytearray(_encode(Image.fromarray(RGB), "TIFF"))
    assert data[:4] == b"II*\0"
    ifd = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack_from("<H", data, entry)[0] == 278:  # RowsPerStrip: point it past the end
            struct.pack_into("<HHII", data, entry, 278, 4, 100, 5000)
    r = read_image(bytes(data))
    assert np.array_equal(r.pixels, RGB)
    assert r.notes == ["decoder warning: Tag data larger than file. Skipping tag 278"]
    assert len(recwarn) == 0


def test_fuzzed_inputs_raise_only_input_error(recwarn):
    small = RNG.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    im = Image.fromarray(small)
    seeds = [_encode(im, f) for f in ("PNG", "GIF", "BMP", "TIFF", "JPEG", "WEBP")]
    rnd = random.Random(1)
    for _ in range(300):
        data = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randint(1, 4)):
            data[rnd.randrange(len(data))] = rnd.randrange(256)
        if rnd.random() < 0.3:
            data = data[: rnd.randrange(1, len(data))]
        try:
            r = read_image(bytes(data))
        except InputError as e:
            assert "\n" not in str(e)
        else:
            assert r.pixels.dtype == np.uint8 and r.pixels.shape[2] == 3
            assert all("\n" not in note for note in r.notes)
    assert len(recwarn) == 0  # decoder warnings are turned into notes, not emitted


# ---------------------------------------------------------------- tensors


def test_tensor_round_trip_all_values():
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    pixels = np.dstack([values, values[::-1], values.T])
    x = to_tensor(pixels)
    assert x.shape == (1, 3, 16, 16) and x.dtype == torch.float32
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert x[0, 0, 0, 1].item() == pytest.approx(1 / 255)
    assert np.array_equal(from_tensor(x), pixels)
    assert np.array_equal(from_tensor(x[0]), pixels)


def test_from_tensor_clamps_and_rounds():
    x = torch.tensor([-1.0, 2.0, 0.4 / 255, 0.6 / 255, 0.5 / 255, 1.5 / 255, 2.5 / 255, 100.49 / 255])
    assert (x[4:7] * 255).tolist() == [0.5, 1.5, 2.5]  # exact halves in float32
    out = from_tensor(x.reshape(1, 1, 8).expand(1, 3, 1, 8))
    assert out.shape == (1, 8, 3) and out.dtype == np.uint8
    assert out[0, :, 0].tolist() == [0, 255, 0, 1, 0, 2, 2, 100]  # halves to even


def test_tensor_shape_checks():
    with pytest.raises(ValueError):
        to_tensor(np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError):
        from_tensor(torch.zeros(2, 3, 2, 2))
    with pytest.raises(ValueError):
        from_tensor(torch.zeros(1, 1, 2, 2))
