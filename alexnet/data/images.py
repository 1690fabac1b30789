"""Decoding one image safely into the paper's square (section 2).

Section 2: "we down-sampled the images to a fixed resolution of 256 x 256. Given a rectangular
image, we first rescaled the image such that the shorter side was of length 256, and then
cropped out the central 256 x 256 patch." :func:`center_square` does that for any side S, with a
Lanczos filter (JPEGs larger than 2S are first decoded at a reduced DCT scale, which is fast and
keeps at least S pixels on each side). Smaller images are upscaled the same way.

The paper does not say what it did with unusual files; here every file ends in one of two ways:

* converted to 8-bit RGB (or 8-bit gray for an all-grayscale set), with a note of what was done:
  the first frame of an animation or multi-page file taken; EXIF orientation applied; CMYK, YCbCr, LAB, HSV and palette images converted to RGB;
  transparency (alpha channels, palette transparency) composited on a white background, because
  the transparent pixels of such files are usually meant to be shown on white; 16-bit images
  scaled to 8 bits (v / 257, rounded, so 65535 -> 255); bilevel images to gray;
* or refused with a one-line reason (:class:`BadImage`): not found, unreadable, empty, not an
  image, corrupt or truncated, larger than ``max_pixels`` (a decompression bomb), or an
  unsupported mode (floating-point images, and 32-bit integer images with values outside 0..65535,
  whose range is unknown).

Only what a bad file can cause becomes a :class:`BadImage`: an error raised while Pillow opens,
parses and loads the file (:func:`load_file`), or a file that is missing or unreadable. Once the
pixels are in memory, the conversions are our own code on valid data, so an exception there is a
bug and propagates as itself: one wrong line must not turn every image into a "corrupt file".
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow's own default; images over it are refused as possible decompression bombs.
DEFAULT_MAX_PIXELS = 89_478_485
# The largest side S of a store's images: prepare's exact statistics hold 8 bytes per stored value, in the
# main process and in every decoding process (about 400 MiB each at 4096; a mistyped 100000 would ask for 224 GiB).
MAX_IMAGE_SIZE = 4096

GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
EXIF_ORIENTATION = 0x0112


class BadImage(Exception):
    """A file that cannot become a training image; ``str(e)`` is the reason."""


# What Pillow raises on bad bytes: its parsers use OSError, SyntaxError, ValueError, EOFError,
# struct.error and zlib.error, and some of them index or look up what the file claims.
FILE_FAULTS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError, KeyError, TypeError)
PILLOW_DIR = os.path.dirname(PIL.__file__)


def raised_by_pillow(e: BaseException) -> bool:
    """Whether the innermost Python frame of ``e``'s traceback is Pillow's (C code it calls included)."""
    tb = e.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(PILLOW_DIR + os.sep)


def is_grayscale_file(path: str | os.PathLike) -> bool | None:
    """Whether the file's header says grayscale (no pixel data is decoded); None if unreadable."""
    header = _header(path)
    return None if header is None else header[0] in GRAY_MODES


def image_size_of(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) from the file's header (no pixel data is decoded); None if unreadable."""
    header = _header(path)
    return None if header is None else header[1]


def _header(path) -> tuple[str, tuple[int, int]] | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                return img.mode, img.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError):
        return None
    except FILE_FAULTS as e:
        if raised_by_pillow(e):
            return None
        raise


def load_file(path: Path, size: int, max_pixels: int) -> tuple[Image.Image, tuple[int, int], list[str]]:
    """Open, check and load ``path`` (EXIF orientation applied): the step where a bad file fails.

    Returns the loaded image, the file's (width, height) and notes. Raises :class:`BadImage`
    for what the file causes; anything else (a bug) propagates unchanged.
    """
    try:
        if not path.is_file():
            raise BadImage("not found" if not path.exists() else "not a file")
        if path.stat().st_size == 0:
            raise BadImage("empty file (0 bytes)")
        with warnings.catch_warnings():
            # A DecompressionBombWarning (over Image.MAX_IMAGE_PIXELS) is an error here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            try:
                width, height = img.size
                if width * height > max_pixels:
                    raise BadImage(f"too large: {width}x{height} pixels, over the limit of {max_pixels} (possible decompression bomb)")
                notes: list[str] = []
                if _several_frames(img):
                    notes.append("first frame of several used")  # an animated GIF/PNG/WebP, a multi-page TIFF
                if img.format == "JPEG":
                    img.draft(None, (size, size))  # DCT scaling by 1/2, 1/4 or 1/8 while both sides stay >= size
                if img.getexif().get(EXIF_ORIENTATION, 1) != 1:
                    notes.append("EXIF orientation applied")
                ImageOps.exif_transpose(img, in_place=True)  # also loads the pixels
                img.load()
            except BaseException:
                img.close()
                raise
        return img, (width, height), notes
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image (Pillow cannot identify the format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(f"too large (possible decompression bomb): {e}") from None
    except FileNotFoundError:
        raise BadImage("not found") from None
    except PermissionError as e:
        raise BadImage(f"unreadable: {e.strerror}") from None
    except FILE_FAULTS as e:
        if isinstance(e, OSError) or raised_by_pillow(e):  # truncated data, broken headers, decoder errors
            message = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise BadImage(f"corrupt or truncated: {message}") from None
        raise


def _several_frames(img: Image.Image) -> bool:
    """Whether the file holds more than one frame (only the first is used). A damaged later frame
    is no reason to refuse the first: then the answer is no."""
    try:
        several = bool(getattr(img, "is_animated", False))
        img.seek(0)
    except FILE_FAULTS as e:
        if isinstance(e, OSError) or raised_by_pillow(e):
            return False
        raise
    return several


def decode_file(path: str | os.PathLike, size: int, channels: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, list[str]]:
    """Read ``path`` into a (size, size, channels) uint8 array; also return notes on conversions.

    Raises :class:`BadImage` with the reason when the file cannot be used.
    """
    img, (width, height), notes = load_file(Path(path), size, max_pixels)
    with img:
        img8 = to_8bit(img, notes)
        img8 = match_channels(img8, channels, notes)
        if min(width, height) < size:
            notes.append("upscaled")
        return np.asarray(center_square(img8, size)).reshape(size, size, channels), notes


def decode_array(pixels: np.ndarray, size: int, channels: int) -> np.ndarray:
    """A (H, W) or (H, W, 3) uint8 array (e.g. a row of an IDX file) into the (size, size, channels) square."""
    img = Image.fromarray(np.ascontiguousarray(pixels))
    img = match_channels(img, channels, [])
    return np.asarray(center_square(img, size)).reshape(size, size, channels)


def to_8bit(img: Image.Image, notes: list[str]) -> Image.Image:
    """Any Pillow mode to 8-bit ``"L"`` or ``"RGB"``; appends what was done to ``notes``."""
    mode = img.mode
    if mode in ("L", "RGB"):
        return img
    if mode == "1":
        notes.append("bilevel converted to grayscale")
        return img.convert("L")
    if mode in SIXTEEN_BIT_MODES:
        values = np.asarray(img).astype(np.float64)
        if mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
            # 32-bit integers (a TIFF of counts, say): clipping them to 16 bits would flatten the image
            raise BadImage(f"unsupported 32-bit integer pixels ({values.min():.0f} to {values.max():.0f}, "
                           "outside 16-bit 0..65535: range unknown)")
        notes.append("16-bit scaled to 8-bit")
        return Image.fromarray(np.rint(np.clip(values, 0, 65535) / 257.0).astype(np.uint8))
    if mode == "F":
        raise BadImage("unsupported mode F (floating-point pixels of unknown range)")
    if mode == "P" and "transparency" not in img.info:
        notes.append("palette converted to RGB")
        return img.convert("RGB")
    if mode in ALPHA_MODES or mode == "P":
        notes.append("transparency composited on white")
        return composite_on_white(img)
    if mode == "CMYK":
        notes.append("CMYK converted to RGB")
        return img.convert("RGB")
    notes.append(f"{mode} converted to RGB")
    return img.convert("RGB")  # YCbCr, LAB, HSV, RGBX


def composite_on_white(img: Image.Image) -> Image.Image:
    """Alpha-blend over white: out = colour * a + 255 * (1 - a), a = alpha / 255."""
    gray = img.mode in ("LA", "La")
    rgba = np.asarray(img.convert("LA" if gray else "RGBA")).astype(np.float64)
    alpha = rgba[..., -1:] / 255.0
    out = rgba[..., :-1] * alpha + 255.0 * (1.0 - alpha)
    out = np.rint(out).astype(np.uint8)
    return Image.fromarray(out[..., 0] if gray else out)


def match_channels(img: Image.Image, channels: int, notes: list[str]) -> Image.Image:
    if channels == 3 and img.mode != "RGB":
        notes.append("grayscale expanded to RGB")
        return img.convert("RGB")
    if channels == 1 and img.mode != "L":
        notes.append("colour converted to grayscale")
        return img.convert("L")
    return img


def center_square(img: Image.Image, size: int) -> Image.Image:
    """Rescale so the shorter side is ``size``, then keep the central size x size patch.

    Done as one resampling of the source region that the crop keeps, which equals resizing the
    whole image and then cropping. Without scaling it is an exact crop.
    """
    width, height = img.size
    side = min(width, height)
    if side == size:
        left, top = (width - size) // 2, (height - size) // 2
        return img.crop((left, top, left + size, top + size))
    scale = side / size  # source pixels per output pixel
    scaled_w, scaled_h = round(width / scale), round(height / scale)
    left, top = (scaled_w - size) // 2, (scaled_h - size) // 2
    box = (left * scale, top * scale, min(width, (left + size) * scale), min(height, (top + size) * scale))
    return img.resize((size, size), Image.Resampling.LANCZOS, box=box)

