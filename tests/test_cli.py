"""Tests for the command-line tools (encode.py / decode.py, lic.cli)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lic import container
from lic.cli import decode_main, encode_main
from lic.container import MODEL_IDS

REPO = Path(__file__).resolve().parents[1]
RGB = np.random.default_rng(0).integers(0, 256, size=(40, 70, 3), dtype=np.uint8)


def run(tool: str, *args: str, stdin: bytes = b"", env: dict | None = None, cwd: Path = REPO):
    """Run encode.py / decode.py in a subprocess; returns CompletedProcess with bytes stdout, str stderr."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("LIC_CHECKPOINT", "LIC_DEBUG")}
    full_env.update(env or {})
    r = subprocess.run([sys.executable, str(REPO / tool), *args], input=stdin, capture_output=True,
                       cwd=cwd, env=full_env, timeout=300)
    r.stderr = r.stderr.decode()
    return r


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def assert_one_error(r, code: int, prog: str, match: str = "") -> None:
    assert r.returncode == code, r.stderr
    lines = error_lines(r.stderr)
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"{prog}: error: "), r.stderr
    assert re.search(match, lines[0]), r.stderr
    assert r.stdout == b""


def listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


@pytest.fixture()
def png(tmp_path) -> Path:
    p = tmp_path / "img.png"
    Image.fromarray(RGB).save(p)
    return p


# ------------------------------------------------------------------ no model needed (fast)


@pytest.mark.parametrize("tool", ["encode.py", "decode.py"])
def test_help_and_version(tool):
    r = run(tool, "--help")
    assert r.returncode == 0 and b"exit status" in r.stdout and r.stderr == ""
    r = run(tool, "--version")
    assert r.returncode == 0 and r.stdout == b"lic 0.1.0\n"
    r = run(tool, "-V")
    assert r.returncode == 0 and r.stdout == b"lic 0.1.0\n"


@pytest.mark.parametrize("tool,main", [("encode.py", "encode_main"), ("decode.py", "decode_main")])
def test_version_and_help_do_not_import_torch(tool, main):
    code = (f"import sys, runpy\n"
            f"for flag in ('--version', '--help'):\n"
            f"    sys.argv = [{tool!r}, flag]\n"
            f"    try:\n"
            f"        runpy.run_path({tool!r}, run_name='__main__')\n"
            f"    except SystemExit as e:\n"
            f"        assert e.code == 0, e.code\n"
            f"heavy = [m for m in ('torch', 'numpy', 'PIL', 'lic.weights') if m in sys.modules]\n"
            f"sys.exit(f'imported {{heavy}}' if heavy else 0)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("tool,args,match", [
    ("encode.py", [], "required: INPUT"),
    ("encode.py", ["x.png", "--bogus"], "unrecognized arguments"),
    ("encode.py", ["x.png", "-q", "abc"], "invalid mode"),
    ("encode.py", ["x.png", "-q", "nan"], "invalid mode"),
    ("encode.py", ["x.png", "--max-pixels", "0"], "at least 1"),
    ("encode.py", ["x.png", "--refine", "-1"], "must be 0 to 100000"),
    ("encode.py", ["x.png", "--refine", "ten"], "invalid number of steps"),
    ("encode.py", ["x.png", "--model", "jpeg"], "no shipped model jpeg; shipped: 3=cheng2020-gmm-vr-"),
    ("encode.py", ["x.png", "--model", str(len(MODEL_IDS) + 1)], f"no shipped model {len(MODEL_IDS) + 1}; shipped: "),
    ("encode.py", ["x.png", "--model", "jpeg", "--checkpoint", "w.ckpt"], "unknown model 'jpeg'"),
    ("encode.py", ["x.png", "--model", "1"], r"no shipped model 1; shipped: 3=cheng2020-gmm-vr-checkerboard "
                                             r"\(modes 1-8\)"),
    ("encode.py", ["x.png", "-q", "9"], r"mode 9 is not a mode of the shipped default model \(modes 1-8\)"),
    ("encode.py", ["x.png", "-q", "0.5", "--model", "3"], "mode 0.5 is not a mode"),
    ("encode.py", ["x.png", "-v", "--quiet"], "not allowed with"),
    ("encode.py", ["-"], "-o OUT is required"),
    ("decode.py", ["-"], "-o OUT is required"),
    ("decode.py", ["x.lic", "-o", "y.xyz"], "extension '.xyz'"),
    ("decode.py", [], "required: INPUT"),
])
def test_usage_errors(tmp_path, tool, args, match):
    """One line (with a hint to -h), exit 2, before the input is read (x.png does not exist: reading
    it would be exit 3)."""
    r = run(tool, *args, cwd=tmp_path)
    assert_one_error(r, 2, "lic-encode" if tool == "encode.py" else "lic-decode", match)
    assert r.stderr.rstrip().endswith(" -h)")
    assert listing(tmp_path) == []


def test_output_equals_input(tmp_path, png):
    lic = tmp_path / "a.lic"
    lic.write_bytes(b"whatever")
    r = run("encode.py", str(lic))  # default output a.lic is the input
    assert_one_error(r, 2, "lic-encode", "is the input file")
    r = run("encode.py", str(png), "-o", str(tmp_path / "." / "img.png"))
    assert_one_error(r, 2, "lic-encode", "is the input file")
    r = run("decode.py", str(png))  # default output img.png is the input
    assert_one_error(r, 2, "lic-decode", "is the input file")
    assert lic.read_bytes() == b"whatever" and np.array_equal(np.asarray(Image.open(png)), RGB)
    assert listing(tmp_path) == ["a.lic", "img.png"]


@pytest.mark.parametrize("tool,prog,out", [("encode.py", "lic-encode", "out.lic"),
                                           ("decode.py", "lic-decode", "out.png")])
def test_output_directory_missing(tmp_path, png, tool, prog, out):
    r = run(tool, str(png), "-o", str(tmp_path / "nope" / out))
    assert_one_error(r, 1, prog, "output directory .* does not exist")
    assert listing(tmp_path) == ["img.png"]


def test_cheap_checks_come_before_the_image_and_any_model(tmp_path):
    """Unknown mode or model, and an output that cannot be written, are reported before the input
    is read and before torch, compressai or the weights are imported."""
    unwritable = "/proc/out.lic"    # nothing can be created there, whoever runs the test
    if not os.path.isdir("/proc"):
        pytest.skip("needs /proc")
    cases = [("encode_main", ["x.png", "-q", "9"], 2), ("encode_main", ["x.png", "--model", "1"], 2),
             ("encode_main", ["x.png", "-o", unwritable], 1), ("decode_main", ["x.lic", "-o", "/proc/out.png"], 1),
             ("encode_main", ["x.png", "-o", "nowhere/x.lic"], 1)]
    for main, args, code in cases:
        program = (f"import sys\nfrom lic.cli import {main}\nrc = {main}({args!r})\n"
                   f"heavy = [m for m in ('torch', 'compressai', 'lic.weights', 'lic.codec') if m in sys.modules]\n"
                   f"sys.exit(f'imported {{heavy}}' if heavy else rc)\n")
        r = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True,
                           timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert r.returncode == code, (args, r.stderr)
        assert len(error_lines(r.stderr)) == 1 and ": error: " in r.stderr, r.stderr
    assert listing(tmp_path) == []


def test_image_limit_is_lics_and_the_flag_raises_it(tmp_path):
    """A PNG header declaring 20000 x 15000 (300 MP; Pillow alone refuses anything over 179 MP): over
    the default limit it is refused with lic's message; with --max-pixels 300000000 it gets past every
    size check and fails on its (missing) pixel data instead.  Nothing large is allocated."""
    ihdr = (20000).to_bytes(4, "big") + (15000).to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    src = tmp_path / "huge.png"
    src.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
                    + chunk(b"IEND", b""))
    assert_one_error(run("encode.py", str(src)), 3, "lic-encode",
                     r"image size \(300000000 pixels\) exceeds the limit of 268435456 pixels")
    assert_one_error(run("encode.py", str(src), "--max-pixels", "300000000"), 3, "lic-encode", "truncated")
    assert listing(tmp_path) == ["huge.png"]


def test_edited_model_id_names_the_field(tmp_path):
    """A CRC-valid file whose model_id was edited: the message says the model_id does not match the
    weights its fingerprint names (exit 3), instead of blaming the fingerprint."""
    from lic.registry import read_registry

    default = next(e for e in read_registry() if e.get("default"))
    h = container.Header(model_id=1, mode=4, mode_frac=0, fingerprint=default["fingerprint"], height=64, width=64,
                         channels=3, latent_channels=192, latent_height=4, latent_width=4, tile_size=0)
    src = tmp_path / "edited.lic"
    src.write_bytes(container.pack(h, [bytes(8), bytes(4), bytes(4)]))
    assert_one_error(run("decode.py", str(src)), 3, "lic-decode",
                     f"model_id 1 \\(cheng2020-gmm-checkerboard\\) does not match the weights its fingerprint "
                     f"{default['fingerprint']:08x} names .*model_id 3")
    assert listing(tmp_path) == ["edited.lic"]


def test_library_names_an_unshipped_model():
    """lic.weights.load_model for a model nothing ships, with no mode: UnknownModeError naming it
    (formatting the missing mode used to raise a TypeError)."""
    from lic.weights import UnknownModeError, load_model

    with pytest.raises(UnknownModeError, match="^no shipped model cheng2020-gmm-checkerboard$"):
        load_model(model="cheng2020-gmm-checkerboard")


def test_non_image_input(tmp_path):
    src = tmp_path / "notes.txt"
    src.write_text("this is not an image\n" * 20)
    r = run("encode.py", str(src))
    assert_one_error(r, 3, "lic-encode", "not an image")
    assert listing(tmp_path) == ["notes.txt"]  # no output, no temp file
    r = run("encode.py", "-", "-o", "-", stdin=b"")
    assert_one_error(r, 3, "lic-encode", "empty file")
    r = run("encode.py", str(tmp_path / "missing.png"))
    assert_one_error(r, 3, "lic-encode", "No such file")


def test_debug_traceback(tmp_path):
    src = tmp_path / "x.png"
    src.write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 10)
    r = run("encode.py", str(src), env={"LIC_DEBUG": "1"})
    assert r.returncode == 3 and "Traceback" in r.stderr
    assert r.stderr.splitlines()[-1].startswith("lic-encode: error: ")


def _tiny_lic() -> bytes:
    h = container.Header(model_id=1, mode=1, mode_frac=0, fingerprint=1, height=20, width=30, channels=3,
                         latent_channels=8, latent_height=4, latent_width=4, tile_size=0)
    return container.pack(h, [b"zz", b"yy", b"yyy"])


def _reseal(body: bytes) -> bytes:
    return body + zlib.crc32(body).to_bytes(4, "big")


@pytest.mark.parametrize("kind,match", [
    ("png", "not a .lic file"),
    ("empty", "not a .lic file"),
    ("truncated", "corrupt file"),
    ("bitflip", "checksum mismatch"),
    ("version", "unsupported .lic version"),
    ("model", f"unknown model_id {len(MODEL_IDS) + 1}"),   # the next id, not assigned yet
    ("too_big", "exceeds the limit of 100 pixels"),
])
def test_bad_lic_files(tmp_path, png, kind, match):
    good = _tiny_lic()
    data = {"png": png.read_bytes(), "empty": b"", "truncated": good[:-7],
            "bitflip": good[:40] + bytes([good[40] ^ 4]) + good[41:],
            "version": good[:4] + b"\x07" + good[5:], "too_big": good,
            "model": _reseal(good[:5] + bytes([len(MODEL_IDS) + 1]) + good[6:-4])}[kind]
    src = tmp_path / "in.lic"
    src.write_bytes(data)
    r = run("decode.py", str(src), "--max-pixels", "100")
    assert_one_error(r, 3, "lic-decode", match)
    assert listing(tmp_path) == ["img.png", "in.lic"]
    r = run("decode.py", "-", "-o", "-", "--max-pixels", "100", stdin=data)
    assert_one_error(r, 3, "lic-decode", match)


# ------------------------------------------------------------------ with a tiny real model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two tiny random fixed-rate models and one variable-rate one, exported with lic.weights."""
    pytest.importorskip("lic.codec")
    torch = pytest.importorskip("torch")
    from lic import weights
    from lic.models.cheng2020 import Cheng2020GMM, ModelConfig

    d = tmp_path_factory.mktemp("weights")
    out = {}
    for name, seed, cfg in [("a", 0, ModelConfig(N=8)), ("b", 1, ModelConfig(N=8)),
                            ("vr", 2, ModelConfig(N=8, num_modes=3, lmbdas=(0.001, 0.002, 0.004)))]:
        torch.manual_seed(seed)
        path = d / f"{name}.safetensors"
        weights.export(Cheng2020GMM(cfg), path)
        out[name] = path
    return out


@pytest.mark.slow
def test_round_trip_pipes_and_files(tmp_path, checkpoints, capsys, monkeypatch):
    src = tmp_path / "img.png"
    alpha = np.full(RGB.shape[:2], 200, np.uint8)
    Image.fromarray(np.dstack([RGB, alpha]), "RGBA").save(src)
    env = {"LIC_CHECKPOINT": str(checkpoints["a"])}

    # Real processes, through stdin / stdout: stdout carries exactly the data.
    r = run("encode.py", "-", "-o", "-", "-v", env=env, stdin=src.read_bytes())
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0] == "lic: note: alpha channel discarded"
    assert re.fullmatch(r"<stdin> -> <stdout>: 70x40, \d+\.\d KiB, \d+\.\d{3} bpp, \d+\.\d\d s", lines[1])
    assert len(lines) == 2
    lic_bytes = r.stdout
    header, _ = container.unpack(lic_bytes)
    assert (header.height, header.width, header.model_id) == (40, 70, 1)
    r = run("decode.py", "-", "-o", "-", env=env, stdin=lic_bytes)
    assert r.returncode == 0 and r.stderr == ""
    piped = Image.open(io.BytesIO(r.stdout))
    assert piped.format == "PNG" and piped.size == (70, 40) and piped.mode == "RGB"

    # The same with files and default names, in this process: identical bytes and pixels.
    monkeypatch.setenv("LIC_CHECKPOINT", str(checkpoints["a"]))
    assert encode_main([str(src), "--quiet"]) == 0
    assert (tmp_path / "img.lic").read_bytes() == lic_bytes
    assert decode_main([str(tmp_path / "img.lic"), "-o", str(tmp_path / "out.bmp"), "-v"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert re.fullmatch(r".*img\.lic -> .*out\.bmp: 70x40, \d+\.\d\d s\n", captured.err)
    decoded = Image.open(tmp_path / "out.bmp")
    assert decoded.format == "BMP" and np.array_equal(np.asarray(piped), np.asarray(decoded))
    assert listing(tmp_path) == ["img.lic", "img.png", "out.bmp"]


def _encode_in_process(checkpoint, src, out, *extra) -> int:
    return encode_main([str(src), "-o", str(out), "--checkpoint", str(checkpoint), "--quiet", *extra])


def test_mode_errors_are_usage_errors(tmp_path, png, checkpoints, capsys):
    out = tmp_path / "x.lic"
    assert _encode_in_process(checkpoints["a"], png, out, "-q", "2.5") == 2
    assert _encode_in_process(checkpoints["vr"], png, out, "-q", "9") == 2
    assert _encode_in_process(checkpoints["vr"], png, out, "-q", "0.5") == 2
    assert _encode_in_process(checkpoints["vr"], png, out, "--model", "cheng2020-gmm-serial") == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4 and all(line.startswith("lic-encode: error: ") for line in err), err
    assert not out.exists()
    assert _encode_in_process(checkpoints["vr"], png, out, "-q", "2.5", "--model", "3") == 0
    header, _ = container.unpack(out.read_bytes())
    assert (header.model_id, header.mode, header.mode_frac) == (3, 2, 128)


def test_refine_writes_a_file_the_plain_decoder_reads(tmp_path, png, checkpoints, capsys):
    plain, refined = tmp_path / "plain.lic", tmp_path / "refined.lic"
    assert _encode_in_process(checkpoints["vr"], png, plain, "-q", "2") == 0
    assert _encode_in_process(checkpoints["vr"], png, refined, "-q", "2", "--refine", "3") == 0
    a, b = container.unpack(plain.read_bytes())[0], container.unpack(refined.read_bytes())[0]
    assert a == b                                                # same header: model, mode, version, size
    assert decode_main([str(refined), "-o", str(tmp_path / "r.png"), "--checkpoint", str(checkpoints["vr"])]) == 0
    assert np.asarray(Image.open(tmp_path / "r.png")).shape == RGB.shape
    # a single-rate model records no lambda: refining it is a usage error, and nothing is written
    assert _encode_in_process(checkpoints["a"], png, tmp_path / "a.lic", "--refine", "3") == 2
    assert "no lambda" in capsys.readouterr().err and not (tmp_path / "a.lic").exists()


def test_foreign_weights_are_invalid_input(tmp_path, png, checkpoints, capsys):
    lic = tmp_path / "x.lic"
    assert _encode_in_process(checkpoints["a"], png, lic) == 0
    capsys.readouterr()
    for other in ("b", "vr"):  # other weights of the same model; another model
        assert decode_main([str(lic), "--checkpoint", str(checkpoints[other])]) == 3
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("lic-decode: error: "), err
    assert listing(tmp_path) == ["img.png", "x.lic"]
    assert decode_main([str(lic), "--checkpoint", str(checkpoints["a"])]) == 0
    assert Image.open(tmp_path / "x.png").size == (70, 40)


def test_missing_weights_is_runtime_failure(tmp_path, png, checkpoints, capsys, monkeypatch):
    monkeypatch.delenv("LIC_CHECKPOINT", raising=False)
    assert _encode_in_process(tmp_path / "missing.safetensors", png, tmp_path / "x.lic") == 1
    monkeypatch.setenv("LIC_WEIGHTS_DIR", str(tmp_path / "empty"))
    assert encode_main([str(png), "-o", str(tmp_path / "y.lic")]) == 1
    lic = tmp_path / "z.lic"
    assert _encode_in_process(checkpoints["a"], png, lic) == 0
    assert decode_main([str(lic)]) == 1  # no shipped weights to decode it with
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(line.startswith("lic-") and ": error: " in line for line in err), err
    assert listing(tmp_path) == ["img.png", "z.lic"]


def test_failed_write_leaves_nothing(tmp_path, png, checkpoints, capsys):
    (tmp_path / "dir.lic").mkdir()
    assert _encode_in_process(checkpoints["a"], png, tmp_path / "dir.lic") == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("lic-encode: error: cannot write"), err
    assert listing(tmp_path) == ["dir.lic", "img.png"] and listing(tmp_path / "dir.lic") == []


def test_info_describes_a_file_without_decoding_or_torch(tmp_path, png, checkpoints):
    """decode.py --info: the header, the streams and the weights on stdout, exit 0; no torch; a bad
    file is exit 3 with one line; -o with it is a usage error."""
    lic = tmp_path / "img.lic"
    assert _encode_in_process(checkpoints["vr"], png, lic, "-q", "2.5", "--no-adapt") == 0
    data = lic.read_bytes()
    code = ("import sys, runpy\n"
            f"sys.argv = ['decode.py', '--info', {str(lic)!r}]\n"
            "try:\n"
            "    runpy.run_path('decode.py', run_name='__main__')\n"
            "except SystemExit as e:\n"
            "    assert e.code == 0, e.code\n"
            "assert 'torch' not in sys.modules, 'imported torch'\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"{len(data):,} bytes, {8 * len(data) / (40 * 70):.4f} bpp" in out
    assert f".lic version {container.VERSION}: " in out
    assert "model:    cheng2020-gmm-vr-checkerboard, mode 2.5" in out
    assert "image:    70x40, 3 channels; latents 8 x 4 x 8; untiled" in out
    _, streams = container.unpack(data)
    assert f"streams:  3 (z {len(streams[0]):,} B, y {len(streams[1]):,} B, y {len(streams[2]):,} B)" in out
    assert "not in the registry (decode with --checkpoint)" in out    # tiny weights: not shipped
    assert r.stderr == ""

    bad = tmp_path / "bad.lic"
    bad.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert_one_error(run("decode.py", "--info", str(bad)), 3, "lic-decode", "checksum mismatch")
    r = run("decode.py", "--info", str(lic), "-o", str(tmp_path / "x.png"))
    assert_one_error(r, 2, "lic-decode", "^lic-decode: error: --info writes its report to stdout; -o is not allowed "
                                         "with it")
    assert listing(tmp_path) == ["bad.lic", "img.lic", "img.png"]


def test_info_names_the_shipped_weights(tmp_path):
    from lic.registry import read_registry

    default = next(e for e in read_registry() if e.get("default"))
    from lic import codec
    from lic.cli import describe
    from lic.weights import load_model

    loaded = load_model()
    data = codec.encode_image(loaded, RGB)
    assert f"= {default['file']} ({default['name']}, in the registry)" in describe(data, "x.lic")
    # tiled (70x40 in tiles of 64: 2 tiles of z + 2 y streams): totals per kind
    tiled = codec.encode_image(loaded, RGB, tile_size=64, adapt_layer=False)
    _, streams = container.unpack(tiled)
    z, y = len(streams[0]) + len(streams[3]), sum(len(st) for i, st in enumerate(streams) if i % 3)
    assert f"streams:  6 (2 tiles x 3: z {z:,} B, y {y:,} B in all)" in describe(tiled, "t.lic")
