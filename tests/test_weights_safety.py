"""Weights are data, never code: safetensors or torch.load(weights_only=True), sha256 checked first,
and nothing in a .lic file names what to load."""
from __future__ import annotations

import dataclasses
import json
import os
import pickle

import numpy as np
import pytest
import torch

from conftest import random_image, tiny_net
from lic import codec, container, weights
from lic.weights import WeightsError


@pytest.fixture()
def registry(tmp_path, monkeypatch):
    """LIC_WEIGHTS_DIR=tmp_path holding one tiny exported model and its registry."""
    monkeypatch.setenv("LIC_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.delenv("LIC_CHECKPOINT", raising=False)
    entry = weights.export(tiny_net(), tmp_path / "tiny.safetensors")
    entry["default"] = True
    (tmp_path / "registry.json").write_text(json.dumps({"models": [entry]}))
    return tmp_path, entry


@pytest.fixture()
def spy_loads(monkeypatch):
    """Record every weights file the library opens (safetensors or torch.load)."""
    opened = []
    real_st, real_tl = weights.load_safetensors, torch.load

    def st(path):
        opened.append(("safetensors", str(path)))
        return real_st(path)

    def tl(path, *a, **k):
        opened.append(("torch.load", str(path), k.get("weights_only")))
        return real_tl(path, *a, **k)

    monkeypatch.setattr(weights, "load_safetensors", st)
    monkeypatch.setattr(torch, "load", tl)
    return opened


def test_registry_round_trip(registry, spy_loads):
    loaded = weights.load_model(mode=1)
    pixels = random_image(64, 96)
    data = codec.encode_image(loaded, pixels)
    out = codec.decode_image(data)
    assert out.shape == pixels.shape
    weights_file = str(registry[0] / "tiny.safetensors")
    assert spy_loads == [("safetensors", weights_file)] * 2  # encode, decode: the registered file, nothing else


def test_tampered_weights_file_is_refused_before_loading(registry, spy_loads):
    d, entry = registry
    path = d / entry["file"]
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one byte of the tensor data
    path.write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match="sha256 mismatch.*refusing to load"):
        weights.load_model(mode=1)
    data = codec.encode_with_net(tiny_net(), random_image(64, 64), fp=entry["fingerprint"])
    with pytest.raises(WeightsError, match="sha256"):
        codec.decode_image(data)
    assert spy_loads == []  # the bytes were never parsed


def test_tampered_registry_digest_is_refused(registry, spy_loads):
    d, entry = registry
    reg = json.loads((d / "registry.json").read_text())
    digest = reg["models"][0]["sha256"]
    reg["models"][0]["sha256"] = ("0" if digest[0] != "0" else "1") + digest[1:]
    (d / "registry.json").write_text(json.dumps(reg))
    with pytest.raises(WeightsError, match="sha256"):
        weights.load_model(mode=1)
    assert spy_loads == []


class _Evil:
    """Unpickling this calls open(marker, "w"): code execution, if the loader allowed it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_object_in_checkpoint_is_refused(tmp_path, spy_loads):
    marker = tmp_path / "pwned"
    net = tiny_net()
    ckpt = {"lic_model_config": json.dumps(net.config.to_dict()),
            "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
            "callbacks": _Evil(marker)}
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        torch.save(ckpt, f, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(WeightsError, match="not a lic training checkpoint"):
        weights.load_checkpoint(path)
    assert not marker.exists()
    assert spy_loads == [("torch.load", str(path), True)]
    # through the tools' entry point too
    with pytest.raises(WeightsError):
        weights.load_model(checkpoint=str(path))
    assert not marker.exists()
    # the test is meaningful: an unrestricted unpickler does run the planted call
    torch.serialization.load(path, weights_only=False)
    assert marker.exists()


def test_plain_pickle_file_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"x": _Evil(marker)}))
    with pytest.raises(WeightsError):
        weights.load_checkpoint(path)
    assert not marker.exists()


def test_clean_lightning_checkpoint_loads_with_weights_only(tmp_path, spy_loads):
    net = tiny_net()
    path = tmp_path / "clean.ckpt"
    torch.save({"lic_model_config": json.dumps(net.config.to_dict()), "global_step": 7,
                "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, path)
    loaded = weights.load_checkpoint(path)
    assert weights.fingerprint(loaded) == weights.fingerprint(net)
    assert spy_loads == [("torch.load", str(path), True)]


def test_safetensors_that_is_not_ours_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))  # no lic_config metadata
    with pytest.raises(WeightsError, match="not a lic safetensors file"):
        weights.load_checkpoint(path)
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"__metadata__\":")  # truncated header
    with pytest.raises(WeightsError):
        weights.load_checkpoint(path)


# ------------------------------------------------------------------ nothing in a .lic file names what to load


def test_header_holds_numbers_only():
    assert all(f.type in ("int", int) for f in dataclasses.fields(container.Header))


def test_file_cannot_name_a_path(registry, spy_loads, tmp_path):
    """Paths and URLs in the streams are just bytes: the model comes from the registry, by id and fingerprint."""
    d, entry = registry
    loaded = weights.load_model(mode=1)
    spy_loads.clear()
    data = codec.encode_image(loaded, random_image(64, 64))
    header, streams = container.unpack(data)
    planted = tmp_path / "planted.safetensors"
    planted.write_bytes((d / entry["file"]).read_bytes())
    for text in (str(planted).encode(), b"http://example.com/model.safetensors", b"../../etc/passwd\0"):
        text += b"\0" * (-len(text) % 4)
        evil = container.pack(header, [streams[0], text, text])
        try:
            codec.decode_image(evil)
        except container.FormatError:
            pass
    # a fingerprint the registry does not know is an error, not a search for other files
    other = container.pack(dataclasses.replace(header, fingerprint=header.fingerprint ^ 1), streams)
    with pytest.raises(WeightsError, match="fingerprint"):
        codec.decode_image(other)
    assert {p for _, p in spy_loads} == {str(d / entry["file"])}


def test_checkpoint_env_is_the_only_override(registry, monkeypatch, spy_loads, tmp_path):
    """LIC_CHECKPOINT / --checkpoint (the user's choice) is the one way to decode with other weights."""
    d, entry = registry
    other = tmp_path / "other.safetensors"
    weights.export(tiny_net(seed=5), other)
    data = codec.encode_with_net(weights.load_checkpoint(other), random_image(64, 64))
    spy_loads.clear()
    with pytest.raises(WeightsError, match="fingerprint"):
        codec.decode_image(data)  # registry only: no match
    monkeypatch.setenv("LIC_CHECKPOINT", str(other))
    assert codec.decode_image(data).shape == (64, 64, 3)
    assert [p for _, p in spy_loads] == [str(other)]
    assert os.environ["LIC_WEIGHTS_DIR"] == str(d)
    assert np.asarray(codec.decode_image(data, checkpoint=str(other))).dtype == np.uint8
