"""The registry's mode ladder: user modes (encode.py -q) -> (weights, that model's own mode).
Appending modes served by another architecture is a change of registry.json only."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import random_image, tiny_model, tiny_net
from lic import codec, container, weights
from lic.cli import decode_main, encode_main
from lic.eval.lic_codec import LicCodec


@pytest.fixture()
def registry(tmp_path, monkeypatch):
    """A weights folder: a 3-mode variable-rate cheng2020-gmm and a single-rate mbt2018-mean, the
    ladder serving modes 1-3 with the first and mode 4 with the second."""
    d = tmp_path / "weights"
    d.mkdir()
    vr = weights.export(tiny_net(num_modes=3, lmbdas=(0.001, 0.004, 0.016)), d / "vr.safetensors")
    sr = weights.export(tiny_model("mbt2018-mean", lmbdas=(0.05,)), d / "mbt.safetensors")
    sr["modes"] = [1]
    doc = {"ladder": {"default_mode": 2, "rungs": [{"modes": [1, 3], "file": "vr.safetensors", "model_mode": 1},
                                                   {"modes": [4, 4], "file": "mbt.safetensors"}]},
           "models": [dict(vr, default=True), sr]}
    (d / "registry.json").write_text(json.dumps(doc))
    monkeypatch.setenv("LIC_WEIGHTS_DIR", str(d))
    monkeypatch.delenv("LIC_CHECKPOINT", raising=False)
    return d


def test_each_mode_goes_to_its_rung(registry):
    assert weights.ladder_modes() == [1.0, 2.0, 3.0, 4.0] and weights.default_mode() == 2.0
    low = weights.load_model(2.5)
    assert low.net.arch == "cheng2020-gmm" and (low.mode, low.mode_frac) == (2, 128)
    high = weights.load_model(4)
    assert high.net.arch == "mbt2018-mean" and (high.mode, high.mode_frac) == (4, 0) and high.q is None
    with pytest.raises(weights.UnknownModeError, match="outside 1..4"):
        weights.load_model(5)
    with pytest.raises(weights.UnknownModeError, match="not a mode"):
        weights.load_model(3.5)                  # between a variable-rate rung and a single-rate one
    # --model NAME: that model's own modes, not the ladder's
    assert weights.load_model(1, model="mbt2018-mean").net.arch == "mbt2018-mean"


def test_a_rung_may_serve_a_model_from_another_of_its_modes(registry):
    doc = json.loads((registry / "registry.json").read_text())
    doc["ladder"]["rungs"][0] = {"modes": [2, 3], "file": "vr.safetensors", "model_mode": 2}
    (registry / "registry.json").write_text(json.dumps(doc))
    lm = weights.load_model(2.25)
    assert (lm.mode, lm.mode_frac) == (2, 64)     # model mode 2 + (2.25 - 2)


def test_encode_py_codes_the_upper_mode_with_the_other_architecture(registry, tmp_path, capsys):
    src = tmp_path / "x.png"
    from PIL import Image

    pixels = random_image(40, 70, seed=1)
    Image.fromarray(pixels).save(src)
    files = {}
    for q in ("1.5", "4"):
        out = tmp_path / f"q{q}.lic"
        assert encode_main([str(src), "-o", str(out), "-q", q, "--quiet"]) == 0
        files[q] = out.read_bytes()
        back = tmp_path / f"q{q}.png"
        assert decode_main([str(out), "-o", str(back)]) == 0
        with Image.open(back) as im:
            decoded = np.asarray(im)
        lm = weights.load_model(float(q))
        np.testing.assert_array_equal(decoded, codec.decode_with_net(lm.net, files[q]))
    assert container.unpack(files["1.5"])[0].model_name == "cheng2020-gmm-vr-checkerboard"
    h4 = container.unpack(files["4"])[0]
    assert (h4.model_name, h4.mode) == ("mbt2018-mean", 4)
    # the default mode, and a mode past the ladder (a usage error, one line)
    assert container.unpack(_encode(src, tmp_path))[0].mode == 2
    assert encode_main([str(src), "-o", str(tmp_path / "no.lic"), "-q", "5"]) == 2
    assert capsys.readouterr().err.strip().startswith(
        "lic-encode: error: mode 5 is not a mode of the shipped default model (modes 1-4)")


def _encode(src, tmp_path) -> bytes:
    out = tmp_path / "default.lic"
    assert encode_main([str(src), "-o", str(out), "--quiet"]) == 0
    return out.read_bytes()


def test_the_evaluation_codec_covers_the_ladder(registry):
    lc = LicCodec.shipped()
    assert lc.settings == [1.0, 2.0, 3.0, 4.0]
    assert [lc.models[m].net.arch for m in lc.settings] == ["cheng2020-gmm"] * 3 + ["mbt2018-mean"]
    px = random_image(64, 64)
    data = lc.encode(px, 4.0)
    assert container.unpack(data)[0].model_name == "mbt2018-mean"
    assert lc.decode(data).shape == px.shape


def test_without_a_ladder_the_default_entry_is_one(registry):
    from lic.export import register

    doc = json.loads((registry / "registry.json").read_text())
    vr = doc["models"][0]
    register(vr, registry / "registry.json", default=True)      # a new default: its modes are the ladder
    assert "ladder" not in json.loads((registry / "registry.json").read_text())
    assert weights.ladder_modes() == [1.0, 2.0, 3.0]
    with pytest.raises(weights.UnknownModeError):
        weights.load_model(4)
