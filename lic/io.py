"""Reading and writing images; the only place where pixel values are scaled by 255.

Reading (:func:`read_image`) returns 8-bit sRGB-ish RGB pixels, shape (H, W, 3),
dtype uint8, plus human-readable notes about every conversion that was made.
Defined behaviours:

* Any format Pillow can read.  An input path, or the bytes of a file.
* Size limits: one limit, lic's: an image over the ``limits`` passed in
  (``lic.container.Limits``; by default 16384*16384 pixels, 32768 per side) is
  an error, checked from the header before the pixels are decoded.  While it
  reads, Pillow's decompression-bomb cap (``PIL.Image.MAX_IMAGE_PIXELS``, 89.5
  megapixels by default, which would refuse a 96 MP photo) is set to the same
  ``max_pixels`` (and restored after), so Pillow's own checks of frames and
  embedded images agree with it; its warning is an error here.
* Animated images (more than one frame): the first frame is used (note).
* EXIF orientation is applied, so the pixels are upright as viewers show
  them (note).
* Alpha (RGBA, LA, PA, palette or colour-key transparency) is dropped, not
  composited: the colour channels are kept as they are (note "alpha channel
  discarded").
* Palette images are expanded to RGB (no note).
* Grayscale (1, L, I;16, I, F) is replicated to three channels (note).
  16-bit grayscale is scaled to 8 bits as round(x / 257) (note).  32-bit
  integer images (mode I) are clipped to 0..65535 and treated as 16-bit.
  32-bit float images (mode F) are taken to be in [0, 1]: clipped, x * 255,
  rounded; NaN becomes 0 (note).
* 16-bit-per-channel colour images (e.g. 48-bit PNG): Pillow itself reduces
  them to 8 bits when decoding, by dropping the low byte (truncation, not
  rounding); a note says so.
* CMYK is converted to RGB (with its ICC profile when it has one, else with
  Pillow's naive formula) (note).  CIELAB is converted with ImageCms (note).
* An embedded ICC profile is applied, converting to sRGB with ImageCms
  (note), unless the profile's description says it is already sRGB.  If the
  profile cannot be used, it is ignored (note).
* Warnings from Pillow's decoders (e.g. "Corrupt EXIF data") become notes
  "decoder warning: ...".
* Empty files, files that are not images, truncated or corrupt images raise
  :class:`InputError` with one line of explanation.  Pillow's
  ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never changed (it stays False).
  Bad input never raises anything other than InputError.

Writing (:func:`write_image`) takes (H, W, 3) uint8 and writes PNG unless the
format is given or named by the file extension (png, bmp, tiff, ppm, webp,
jpeg, ...).  WebP is written lossless; JPEG at quality 95.

:func:`to_tensor` and :func:`from_tensor` convert between uint8 pixels and
(1, 3, H, W) float32 tensors in [0, 1]; ``from_tensor`` clamps to [0, 1],
multiplies by 255 and rounds half to even (``torch.round``).

torch is imported lazily, so that importing this module is cheap.
"""

from __future__ import annotations

import io as _io
import os
import re
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from PIL import Image, ImageCms, ImageOps

from lic.container import Limits

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["ImageRead", "InputError", "read_image", "write_image", "output_format", "to_tensor",
           "from_tensor"]

_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_GRAY_MODES = ("1", "L", "I", "F") + _SIXTEEN_BIT_MODES
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


class InputError(ValueError):
    """The input cannot be read as an image, or is not supported.  The message is one line."""


@dataclass
class ImageRead:
    """Result of :func:`read_image`."""

    pixels: np.ndarray  # (H, W, 3) uint8 RGB
    notes: list[str] = field(default_factory=list)  # human notes on the conversions made


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


def read_image(source: str | os.PathLike | bytes, *, limits: Limits | None = None) -> ImageRead:
    """Read an image file (path, or the file's bytes) as (H, W, 3) uint8 RGB; see the module doc."""
    limits = Limits() if limits is None else limits
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = "input"
    else:
        name = os.fspath(source)
        try:
            with open(name, "rb") as f:
                data = f.read()
        except OSError as e:
            raise InputError(f"cannot read {name!r}: {e.strerror or _one_line(e)}") from None
    if not data:
        raise InputError(f"cannot read {name!r}: empty file")
    try:
        with warnings.catch_warnings(record=True) as caught, _pillow_pixel_cap(limits.max_pixels):
            warnings.simplefilter("always")
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # takes precedence
            result = _decode(data, limits)
        for w in caught:  # e.g. "Corrupt EXIF data": keep them, as notes, off the console
            note = f"decoder warning: {_one_line(w.message)}"  # type: ignore[arg-type]
            if note not in result.notes:
                result.notes.append(note)
        return result
    except InputError:
        raise
    except MemoryError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        size = re.search(r"\((\d+) pixels\)", str(e))   # Pillow: "Image size (N pixels) exceeds limit of ..."
        raise InputError(f"image size ({size.group(1) if size else 'its'} pixels) exceeds the limit of "
                         f"{limits.max_pixels} pixels") from None
    except Image.UnidentifiedImageError:
        raise InputError(f"cannot read {name!r}: not an image, or an unsupported format") from None
    except Exception as e:  # Pillow's decoders raise many types (OSError, SyntaxError, ...)
        raise InputError(f"cannot read {name!r}: {_one_line(e)}") from None


_PILLOW_CAP = threading.Lock()


@contextmanager
def _pillow_pixel_cap(max_pixels: int):
    """Pillow's decompression-bomb cap (a module global) set to lic's limit while an image is read,
    then restored; one reader at a time sets it."""
    with _PILLOW_CAP:
        before = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = before


def _decode(data: bytes, limits: Limits) -> ImageRead:
    notes: list[str] = []
    im = Image.open(_io.BytesIO(data))
    width, height = im.size
    if width < 1 or height < 1:
        raise InputError(f"image has no pixels ({width}x{height})")
    if width > limits.max_side or height > limits.max_side:
        raise InputError(f"image size {width}x{height} exceeds the limit of {limits.max_side} "
                         "pixels per side")
    if width * height > limits.max_pixels:
        raise InputError(f"image size {width}x{height} ({width * height} pixels) exceeds the limit "
                         f"of {limits.max_pixels} pixels")
    n_frames = getattr(im, "n_frames", 1)
    if n_frames > 1:
        notes.append(f"animated image: using the first of {n_frames} frames")
    # Pillow decodes 16-bit-per-channel colour by dropping the low byte; the raw mode tells.
    wide_colour = im.mode in ("RGB", "RGBA") and any(
        _rawmode(t).endswith((";16B", ";16L", ";16N")) for t in getattr(im, "tile", None) or [])
    im.load()
    icc = im.info.get("icc_profile")
    has_transparency = im.has_transparency_data

    try:
        orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
        if orientation in (2, 3, 4, 5, 6, 7, 8):
            im = ImageOps.exif_transpose(im)
            notes.append(f"EXIF orientation {orientation} applied")
    except Exception as e:  # corrupt EXIF should not make the pixels unreadable
        notes.append(f"EXIF data unreadable, orientation not applied ({_one_line(e)})")

    if wide_colour:
        notes.append("16-bit colour image reduced to 8 bits (by Pillow: low byte dropped)")

    # Normalise to 8-bit "RGB", "L", "CMYK" or "LAB", alpha dropped.
    mode = im.mode
    if has_transparency or mode in _ALPHA_MODES:
        notes.append("alpha channel discarded")
    if mode in _GRAY_MODES or mode in ("LA", "La"):
        notes.append("grayscale image replicated to RGB")
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        a = np.asarray(im)
        if mode == "I":
            a = np.clip(a, 0, 65535)
        im = Image.fromarray(np.rint(a.astype(np.float64) / 257.0).astype(np.uint8), "L")
        notes.append("16-bit image scaled to 8 bits")
    elif mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=1.0, neginf=0.0)
        im = Image.fromarray(np.rint(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8), "L")
        notes.append("32-bit float image: values in [0, 1] scaled to 0..255")
    elif mode in ("1", "LA", "La"):
        im = im.convert("L") if mode != "La" else im.getchannel("L")
    elif mode in ("P", "PA", "RGBA", "RGBa", "RGBX", "YCbCr", "HSV"):
        im = im.convert("RGB")  # palette expanded, alpha dropped (not composited)
    elif mode not in ("L", "RGB", "CMYK", "LAB"):
        raise InputError(f"unsupported image mode {mode}")

    if icc:
        im = _apply_icc(im, icc, notes)
    if im.mode == "CMYK":
        im = im.convert("RGB")
        notes.append("CMYK image converted to RGB without a colour profile")
    elif im.mode == "LAB":
        im = ImageCms.profileToProfile(im, ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"),
                                       outputMode="RGB")
        notes.append("CIELAB image converted to sRGB")
    elif im.mode == "L":
        im = im.convert("RGB")
    if im.mode != "RGB":  # pragma: no cover - every branch above ends in RGB
        raise InputError(f"unsupported image mode {mode}")
    pixels = np.array(im, dtype=np.uint8)  # a fresh, writable, C-contiguous copy
    if pixels.shape != (im.height, im.width, 3):  # pragma: no cover
        raise InputError(f"unexpected pixel array shape {pixels.shape}")
    return ImageRead(pixels=pixels, notes=notes)


def _rawmode(tile: object) -> str:
    """The raw mode of one entry of ``Image.tile`` ("" when it has none)."""
    args = getattr(tile, "args", None)
    if isinstance(args, tuple) and args:
        args = args[0]
    return args if isinstance(args, str) else ""


def _apply_icc(im: Image.Image, icc: bytes, notes: list[str]) -> Image.Image:
    """Convert ``im`` (mode RGB, L, CMYK or LAB) from its embedded profile to sRGB."""
    try:
        profile = ImageCms.ImageCmsProfile(_io.BytesIO(icc))
        description = (ImageCms.getProfileDescription(profile) or "").strip()
    except Exception as e:
        notes.append(f"ICC profile ignored: cannot parse it ({_one_line(e)})")
        return im
    if "srgb" in description.lower() and im.mode == "RGB":
        return im  # already sRGB: no conversion, no rounding changes
    try:
        out = ImageCms.profileToProfile(im, profile, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except Exception as e:
        notes.append(f"ICC profile {description!r} ignored: cannot apply it ({_one_line(e)})")
        return im
    notes.append(f"ICC profile {description!r} converted to sRGB")
    return out


def output_format(dest: str | os.PathLike | BinaryIO, format: str | None = None) -> str:
    """The Pillow format name :func:`write_image` would use; ValueError for an unknown one.

    ``format`` wins; else the path's extension; else (no extension, or a file object) PNG.
    """
    if format is not None:
        fmt = format.upper()
        fmt = {"JPG": "JPEG", "TIF": "TIFF"}.get(fmt, fmt)
        Image.init()
        if fmt not in Image.SAVE:
            raise ValueError(f"unknown or unwritable image format {format!r}")
        return fmt
    if isinstance(dest, (str, os.PathLike)):
        ext = os.path.splitext(os.fspath(dest))[1].lower()
        if not ext:
            return "PNG"
        fmt = Image.registered_extensions().get(ext)
        if fmt is None or fmt not in Image.SAVE:
            raise ValueError(f"cannot tell the image format from the extension {ext!r} "
                             "(use .png, .bmp, .tiff, .ppm, .webp, ...)")
        return fmt
    return "PNG"


def write_image(dest: str | os.PathLike | BinaryIO, pixels: np.ndarray, format: str | None = None) -> None:
    """Write (H, W, 3) uint8 RGB ``pixels`` to a path or binary file object (see :func:`output_format`)."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"pixels must be (H, W, 3) uint8, got {pixels.shape} {pixels.dtype}")
    fmt = output_format(dest, format)
    options: dict[str, object] = {}
    if fmt == "WEBP":
        options = {"lossless": True, "quality": 100}
    elif fmt == "JPEG":
        options = {"quality": 95}
    im = Image.fromarray(np.ascontiguousarray(pixels), "RGB")
    if isinstance(dest, (str, os.PathLike)):
        im.save(os.fspath(dest), format=fmt, **options)
    else:
        im.save(dest, format=fmt, **options)


def to_tensor(pixels: np.ndarray) -> "torch.Tensor":
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in [0, 1]."""
    import torch

    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"pixels must be (H, W, 3) uint8, got {pixels.shape} {pixels.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).unsqueeze(0)
    return x.to(torch.float32).div_(255.0).contiguous()


def from_tensor(x: "torch.Tensor") -> np.ndarray:
    """(1, 3, H, W) or (3, H, W) float -> (H, W, 3) uint8: clamp to [0, 1], * 255, round half to even."""
    import torch

    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ValueError(f"expected a batch of one image, got shape {tuple(x.shape)}")
        x = x[0]
    if x.dim() != 3 or x.shape[0] != 3:
        raise ValueError(f"expected (1, 3, H, W) or (3, H, W), got shape {tuple(x.shape)}")
    y = torch.round(x.detach().to("cpu", torch.float32).clamp(0.0, 1.0) * 255.0).to(torch.uint8)
    return np.ascontiguousarray(y.permute(1, 2, 0).numpy())
