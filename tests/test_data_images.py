"""Decoding single files: every kind of awkward file is converted correctly or refused with a reason."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from alexnet.data.images import BadImage, center_square, decode_file

RED, BLUE = (220, 20, 30), (20, 30, 220)


def png_header_only(path, width, height):
    """A PNG that claims width x height (an IHDR and IEND, no pixels): a decompression bomb's header."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def jpeg_bytes(img, **kw):
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def write_bad_files(folder):
    """One file of every awkward kind; returns {name: expected reason prefix}."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("these are not pixels\n")
    good = jpeg_bytes(Image.new("RGB", (64, 48), RED))
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "garbage.jpg").write_bytes(good[:20] + bytes(range(256)) * 4)
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), RED).save(buf, "PNG")
    png = buf.getvalue()
    (folder / "truncated.png").write_bytes(png[:-30])
    at = png.index(b"IDAT") + 8
    (folder / "corrupt.png").write_bytes(png[:at] + bytes(b ^ 0x5A for b in png[at : at + 16]) + png[at + 16 :])
    png_header_only(folder / "bomb.png", 40_000, 40_000)
    return {
        "empty.png": "empty file",
        "notes.jpg": "not an image",
        "truncated.jpg": "corrupt or truncated",
        "garbage.jpg": "not an image",
        "corrupt.png": "corrupt or truncated",
        "truncated.png": "corrupt or truncated",
        "bomb.png": "too large",
    }


def write_convertible_files(folder):
    """Files that must be converted; returns {name: check(array (S, S, 3))} for S = 16."""
    folder.mkdir(parents=True, exist_ok=True)
    checks = {}

    # EXIF orientation 6 (stored rotated: rotate 90 degrees clockwise to show). Shown upright the
    # image is 16 wide and 24 tall, red on top, blue below.
    upright = Image.new("RGB", (16, 24), BLUE)
    upright.paste(RED, (0, 0, 16, 12))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera held sideways writes
    exif = Image.Exif()
    exif[0x0112] = 6
    (folder / "exif_rotated.jpg").write_bytes(jpeg_bytes(stored, exif=exif.tobytes()))
    checks["exif_rotated.jpg"] = lambda a: near(a[1, 8], RED, 12) and near(a[14, 8], BLUE, 12)

    cmyk = (10, 200, 40, 30)  # C, M, Y, K
    Image.new("CMYK", (32, 32), cmyk).save(folder / "cmyk.jpg", quality=95)
    want = tuple(round((255 - v) * (255 - cmyk[3]) / 255) for v in cmyk[:3])
    checks["cmyk.jpg"] = lambda a, want=want: near(a[8, 8], want, 4)

    pal = Image.new("P", (32, 32), 0)
    pal.putpalette([0, 0, 0] + list(RED) + [0] * (256 * 3 - 6))
    pal.paste(1, (16, 0, 32, 32))  # right half red, left half index 0 = transparent
    pal.save(folder / "palette_transparent.png", transparency=0)
    checks["palette_transparent.png"] = lambda a: near(a[8, 2], (255, 255, 255), 0) and near(a[8, 13], RED, 0)

    rgba = Image.new("RGBA", (32, 32), (*BLUE, 128))
    rgba.save(folder / "half_alpha.png")
    blend = tuple(round(v * 128 / 255 + 255 * (1 - 128 / 255)) for v in BLUE)
    checks["half_alpha.png"] = lambda a, blend=blend: near(a[8, 8], blend, 1)

    Image.fromarray(np.full((32, 32), 40000, np.uint16)).save(folder / "sixteen_bit.png")
    checks["sixteen_bit.png"] = lambda a: near(a[8, 8], (round(40000 / 257),) * 3, 1)

    Image.new("L", (32, 32), 77).save(folder / "gray.png")
    checks["gray.png"] = lambda a: near(a[8, 8], (77, 77, 77), 0)
    return checks


def near(pixel, want, tolerance) -> bool:
    return bool(np.all(np.abs(np.asarray(pixel, int) - np.asarray(want, int)) <= tolerance))


def test_bad_files_are_refused_with_a_reason(tmp_path):
    for name, reason in write_bad_files(tmp_path).items():
        with pytest.raises(BadImage) as e:
            decode_file(tmp_path / name, 16, 3)
        assert str(e.value).startswith(reason), (name, str(e.value))


def test_image_over_the_pixel_limit_is_refused(tmp_path):
    Image.new("RGB", (300, 300), RED).save(tmp_path / "big.png")
    with pytest.raises(BadImage, match="too large"):
        decode_file(tmp_path / "big.png", 16, 3, max_pixels=300 * 299)
    assert decode_file(tmp_path / "big.png", 16, 3, max_pixels=300 * 300)[0].shape == (16, 16, 3)


def test_awkward_files_are_converted(tmp_path):
    for name, check in write_convertible_files(tmp_path).items():
        pixels, notes = decode_file(tmp_path / name, 16, 3)
        assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8
        assert check(pixels), (name, pixels[8, 8], notes)


def test_conversion_notes(tmp_path):
    write_convertible_files(tmp_path)
    notes = {name: decode_file(tmp_path / name, 16, 3)[1] for name in ("exif_rotated.jpg", "cmyk.jpg", "sixteen_bit.png", "half_alpha.png")}
    assert "EXIF orientation applied" in notes["exif_rotated.jpg"]
    assert "CMYK converted to RGB" in notes["cmyk.jpg"]
    assert "16-bit scaled to 8-bit" in notes["sixteen_bit.png"]
    assert "transparency composited on white" in notes["half_alpha.png"]


def test_grayscale_output_keeps_one_channel(tmp_path):
    Image.new("L", (20, 30), 99).save(tmp_path / "g.png")
    pixels, _ = decode_file(tmp_path / "g.png", 8, 1)
    assert pixels.shape == (8, 8, 1) and np.all(pixels == 99)


def test_shorter_side_to_s_then_centre_crop():
    # 60 x 40: rescaled to 30 x 20, the central 20 x 20 is columns 5..25 of the rescaled image,
    # i.e. columns 10..50 of the original. Columns 0..10 and 50..60 are marked; they must vanish.
    a = np.zeros((40, 60, 3), np.uint8)
    a[:, :10] = RED
    a[:, 50:] = BLUE
    a[:, 10:50] = (0, 200, 0)
    out = np.asarray(center_square(Image.fromarray(a), 20)).astype(int)
    assert out.shape == (20, 20, 3)
    interior = out[:, 2:-2]  # the filter reaches a pixel or two past the kept region
    assert np.abs(interior - [0, 200, 0]).max() <= 1
    # same as resizing the whole image and then cropping (Pillow, two steps)
    two_step = np.asarray(Image.fromarray(a).resize((30, 20), Image.Resampling.LANCZOS))[:, 5:25].astype(int)
    assert np.abs(out - two_step).max() <= 40 and np.abs(out[:, 2:-2] - two_step[:, 2:-2]).max() <= 2


def test_no_scaling_is_an_exact_crop():
    a = np.random.default_rng(0).integers(0, 256, (20, 27, 3), dtype=np.uint8)
    out = np.asarray(center_square(Image.fromarray(a), 20))
    np.testing.assert_array_equal(out, a[:, 3:23])


def test_small_images_are_upscaled():
    a = np.full((28, 28), 200, np.uint8)
    out = np.asarray(center_square(Image.fromarray(a), 32))
    assert out.shape == (32, 32) and np.abs(out.astype(int) - 200).max() <= 1
