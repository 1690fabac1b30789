"""Fuzzing the image-reading path: mutated JPEG and PNG bytes are decoded or reported, never a crash or a hang."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from alexnet.data.images import BadImage, decode_file


def _seed_file(fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


SEEDS = {"JPEG": _seed_file("JPEG"), "PNG": _seed_file("PNG")}

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 64)),
)


def mutate(data: bytes, mutations) -> bytes:
    b = bytearray(data)
    for kind, where, value in mutations:
        if not b:
            break
        i = where % len(b)
        if kind == "flip":
            b[i] ^= value or 1
        elif kind == "truncate":
            del b[i:]
        elif kind == "insert":
            b[i:i] = bytes([value]) * 8
        else:
            del b[i : i + value]
    return bytes(b)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(mutation, min_size=1, max_size=6), channels=st.sampled_from([1, 3]))
@pytest.mark.slow
def test_mutated_files_decode_or_are_reported(tmp_path, fmt, mutations, channels):
    path = tmp_path / f"fuzz.{fmt.lower()}"
    path.write_bytes(mutate(SEEDS[fmt], mutations))
    try:
        pixels, notes = decode_file(path, 32, channels)
    except BadImage as e:
        assert str(e)  # a reason for the report
    else:
        assert pixels.shape == (32, 32, channels) and pixels.dtype == np.uint8
        assert isinstance(notes, list)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2048))
def test_random_bytes_are_reported(tmp_path, data):
    path = tmp_path / "random.jpg"
    path.write_bytes(data)
    try:
        decode_file(path, 16, 3)
    except BadImage as e:
        assert str(e)
