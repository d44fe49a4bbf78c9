"""Regression tests for the crashes `scripts/fuzz.py` found (benchmarks/FUZZ.md): each minimal failing
input, deterministic, and the rule the fuzzer checks: a cmdd error whose one-line message names the file."""

import base64
import json
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cmddcli.errors import CmddError, InputError, WeightsError
from cmddcli.photo import png, read_photo

# Fuzzer outputs too irregular to rebuild by hand: zlib-compressed, base64.
CRASH_INPUTS = {
    "photo-001.tif": (
        "eNqNkkto1FAUhv87mTqiKVV8FV9kUbVIK1VBRFzouCgjUynjCLZ1M5MmMwOZaUgyyODGRaEUihQqFCvFVheCS8WKBVEQxIWF"
        "Qn2giLh2aX0gUuJ/k8iMRcEb/twv555zcu65N5Xaj7UAmgERhyBtoETEKqUIJWCpNRHLsTHy0RRgi1ie++2ztSF2m5i+Ihau"
        "P55ufdf/8Orx5u/PlckJf3T2Jddaqe2iKfC9Q+2I+C7V3vDPgyIW5Jqn3JEE0jHgWVSDWCWvZJpmyTIO2DV+xdKWXnbjJ4By"
        "xXMy3UntfF+/lvjEdAnEsQtaTnftk729afxzfHsdbnipU+aKjF27xy7jP8f6QcPVWZ1s8hHddjwyK0L6omdLHiNv1ou5QfIM"
        "ucNhkeQX0p4P+aPkQshfJDvZzCnuT+bUCg2cb2C96JTJ7eS2slXVG1qmGpVzZ2X7qZ1wkUE3ktCQRxUlWPDQybnCvv09riuI"
        "O4Mhxuh826jBYUQBRcZ20FplVoOzSbvBx0JN9n51T13z8KEwu5oEmj74/vIeIDEBrIz7/s9Z31+5yRv4HnhSqccPsU9Hv9I+"
        "Xre13QBahoG5p3VbfhJ4MMKb9tbOObnApMhrYZrA59u8833ApkVg3UDYq2gdt94A2Us8ogXg2hSwl/4tF/481lfZxUdTx2bu"
        "3XeW9g2MDqteqqfn9I959RdZt46K"
    ),
}


def _crash_file(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(zlib.decompress(base64.b64decode("".join(CRASH_INPUTS[name]))))
    return p


def _one_line_naming(err: CmddError, path) -> None:
    assert "\n" not in str(err) and str(path) in str(err), str(err)


def test_photo_001_tiff_pillow_missing_dimensions(tmp_path):
    """A TIFF with a mangled IFD: tifffile refused it, the Pillow fallback raised TypeError('Missing
    dimensions'), which read_pillow did not catch (a traceback)."""
    p = _crash_file(tmp_path, "photo-001.tif")
    with pytest.raises(InputError) as e:
        read_photo(p)
    _one_line_naming(e.value, p)


def test_photo_002_png_iccp_without_name_terminator(tmp_path):
    """A 16-bit PNG whose iCCP chunk has no NUL after the profile name: ValueError('subsection not
    found') from png._metadata. The broken profile now costs only the profile."""
    data = png.write_png(np.full((4, 4, 3), 30000, np.uint16))
    i = data.index(b"IDAT") - 4
    p = tmp_path / "iccp.png"
    p.write_bytes(data[:i] + png.chunk(b"iCCP", b"no terminator here") + data[i:])
    photo = read_photo(p)
    assert photo.icc_profile is None and photo.bit_depth == 16


def test_photo_003_png_with_short_ihdr(tmp_path):
    """25 bytes: the PNG signature and a cut IHDR: struct.error('unpack requires a buffer of 13 bytes')
    from png.png_info."""
    p = tmp_path / "short.png"
    p.write_bytes(png.SIGNATURE + b"\x00\x00\x00\x0dIHDR\x00\x00\x00\x10\x00\x00\x00")
    with pytest.raises(InputError) as e:
        read_photo(p)
    _one_line_naming(e.value, p)


@pytest.mark.parametrize("cmdd", ["null", "[]", "3", '"x"', '{"preset": {"a": 1}}', '{"preset": 7}'])
def test_weights_metadata_of_the_wrong_json_type(tmp_path, cmdd):
    """cmdd metadata that is not an object (or a preset that is not a name): cmdd info raised
    AttributeError ('NoneType' object has no attribute 'get'), or named an odd preset without the file."""
    from cmddcli.engine.info import collect_info

    w = tmp_path / "w.safetensors"
    save_file({"x": torch.zeros(1)}, str(w), metadata={"cmdd": cmdd})
    with pytest.raises(WeightsError) as e:
        collect_info(None, str(w))
    _one_line_naming(e.value, w)


def _recorded_output(tmp_path, record):
    """An input a.png, an output out/a.png and its resume record ``record(src)`` (a dict) as JSON:
    (src, out, out_dir)."""
    from cmddcli.engine import resume

    src, out_dir = tmp_path / "a.png", tmp_path / "out"
    src.write_bytes(b"x")
    out = out_dir / "a.png"
    out_dir.mkdir()
    out.write_bytes(b"y")
    rec = resume.record_path(out, out_dir)
    rec.parent.mkdir(parents=True)
    rec.write_text(json.dumps(record(src)))
    return src, out, out_dir


@pytest.mark.parametrize("source", [[], "x", 1])
def test_resume_record_with_a_source_that_is_not_an_object(tmp_path, source):
    from cmddcli.engine import resume

    src, out, out_dir = _recorded_output(tmp_path, lambda src: {"source": source, "settings": {}})
    reason = resume.resume_problem(src, out, out_dir, {})
    assert isinstance(reason, str) and "\n" not in reason


@pytest.mark.parametrize("ext, side", [("jpg", 65536), ("webp", 16384)])
def test_photo_004_output_larger_than_the_format_holds(tmp_path, ext, side):
    """A TIFF whose mangled header gave 65548x16 pixels, written as JPEG: Pillow's OSError('broken data
    stream when writing image file'), a traceback. Now a one-line error naming the output and the limit."""
    from cmddcli.photo import Photo, write_photo

    photo = Photo(rgb=np.zeros((2, side, 3), np.float32))
    out = tmp_path / f"wide.{ext}"
    with pytest.raises(InputError) as e:
        write_photo(out, photo)
    _one_line_naming(e.value, out)
    assert str(side - 1) in str(e.value)


@pytest.mark.parametrize("made", [[], "x", 1])
def test_resume_record_with_an_output_file_that_is_not_an_object(tmp_path, made):
    """A record whose 'output_file' is not an object (fuzz target resume; an AttributeError in the
    first record reader): the output counts as cmdd's (so it is never taken as an input), and a
    rerun gets a one-line reason or resumes, never a traceback."""
    from cmddcli.engine import resume

    src, out, out_dir = _recorded_output(
        tmp_path, lambda src: {"output_file": made, "source": resume.source_identity(src), "settings": {}})
    found = resume.recorded_files(out_dir)
    entry = found[os.path.normcase(os.fspath(out.absolute()))]
    assert resume.is_recorded(out, entry)
    reason = resume.resume_problem(src, out, out_dir, {})
    assert reason is None or (isinstance(reason, str) and "\n" not in reason)
