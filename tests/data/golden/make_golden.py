"""Write the golden .lic files of tests/test_golden.py and their manifest (the sha256 of the pixels
they decode to).  They were made with the code of commit 51f29d5, before the model protocol:

    git worktree add /tmp/lic-51f29d5 51f29d5
    cd /tmp/lic-51f29d5 && PYTHONPATH=. python <repo>/tests/data/golden/make_golden.py \\
        <repo>/tests/data/golden <repo>/../shared/data/kodak/kodim05.png
"""
import hashlib
import json
import sys
from pathlib import Path

from lic import codec, io
from lic.weights import load_entry, read_registry

S160 = "cheng2020-gmm-vr-checkerboard-n64m192s160.safetensors"
CASES = [  # name, weights file, mode, encoder arguments, crop of kodim05 (top, left, height, width)
    ("s160_q8_adapt", S160, 8.0, {"adapt_layer": True}, (128, 128, 192, 256)),   # version 3: with the update
    ("s160_q2.5", S160, 2.5, {}, (200, 300, 64, 96)),                             # a fractional mode
    ("s160_q7_v1", S160, 7.0, {"version": 1}, (100, 100, 64, 64)),               # format version 1
    ("s160_q1_tiled", S160, 1.0, {"tile_size": 64}, (0, 0, 100, 150)),           # tiles of 64
]


def main(out: Path, image: Path) -> None:
    px = io.read_image(image).pixels
    entries = {e["file"]: e for e in read_registry()}
    manifest = {}
    for name, weights, mode, kw, (top, left, h, w) in CASES:
        lm = load_entry(entries[weights])
        data = codec.encode_with_net(lm.net, px[top:top + h, left:left + w].copy(), mode, lm.fingerprint, **kw)
        pixels = codec.decode_with_net(lm.net, data, fp=lm.fingerprint)
        (out / f"{name}.lic").write_bytes(data)
        manifest[name] = {"weights": weights, "mode": mode, "encoder": kw, "crop": [top, left, h, w],
                          "bytes": len(data),
                          "pixels_sha256": hashlib.sha256(pixels.tobytes()).hexdigest()}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
