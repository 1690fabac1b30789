"""Decoding single files: every kind of awkward file is converted correctly or refused with a reason."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from alexnet.data.images import BadImage, center_square, decode_file
from helpers import BLUE, RED, write_bad_files, write_convertible_files


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
