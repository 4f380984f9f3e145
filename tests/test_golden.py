"""Files written by the shipped weights before the model protocol existed (commit 51f29d5,
tests/data/golden/make_golden.py) decode to the same pixels, and this encoder still writes them
byte for byte (both on the kind of machine that made them: g_s and g_a run in float32)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from conftest import KODAK
from lic import codec, container, io
from lic.weights import load_entry, read_registry

GOLDEN = Path(__file__).resolve().parent / "data" / "golden"
MANIFEST = json.loads((GOLDEN / "manifest.json").read_text())


@pytest.fixture(scope="module")
def shipped():
    """The weights the golden files were made with, loaded once (sha256-checked)."""
    files = {case["weights"] for case in MANIFEST.values()}
    return {e["file"]: load_entry(e) for e in read_registry() if e["file"] in files}


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_old_files_decode_to_the_same_pixels(name, shipped):
    case = MANIFEST[name]
    data = (GOLDEN / f"{name}.lic").read_bytes()
    header, _ = container.unpack(data)
    assert header.model_id == 3 and header.model.arch == "cheng2020-gmm" and len(data) == case["bytes"]
    lm = shipped[case["weights"]]
    assert header.fingerprint == lm.fingerprint
    pixels = codec.decode_with_net(lm.net, data, fp=lm.fingerprint)
    assert pixels.shape == tuple(case["crop"][2:]) + (3,)
    assert hashlib.sha256(pixels.tobytes()).hexdigest() == case["pixels_sha256"]


def test_decode_image_finds_their_weights_in_the_registry():
    name = "s160_q2.5"
    pixels = codec.decode_image((GOLDEN / f"{name}.lic").read_bytes())
    assert hashlib.sha256(pixels.tobytes()).hexdigest() == MANIFEST[name]["pixels_sha256"]


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_the_encoder_still_writes_them(name, shipped):
    if not (KODAK / "kodim05.png").exists():
        pytest.skip("../shared/data/kodak is absent")
    case = MANIFEST[name]
    lm = shipped[case["weights"]]
    top, left, h, w = case["crop"]
    crop = io.read_image(KODAK / "kodim05.png").pixels[top:top + h, left:left + w].copy()
    again = codec.encode_with_net(lm.net, crop, case["mode"], lm.fingerprint, **case["encoder"])
    assert again == (GOLDEN / f"{name}.lic").read_bytes()
