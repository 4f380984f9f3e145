"""Format version 2: the coding parameters are the same bits on every machine (lic.models.exact).

The entropy decoder must rebuild the encoder's tables exactly; float32 networks differ in the
last bits between CPU kernels (AVX-512 / AVX2 / SSE, chosen at run time), and a version-1 file
made with one kernel set can fail to decode with another.  These tests run the decoder in a
fresh process with other kernels (oneDNN's and ATen's instruction-set caps), as another
machine would.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import REPO, tiny_net
from lic import codec, container, io
from lic.models.exact import ExactHead, _Layer, act

OTHER_KERNELS = {"ONEDNN_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "default"}


def test_an_exact_layer_sums_to_the_same_bits_in_any_order():
    """The same convolution three ways (conv2d; unfold + matmul; unfold + matmul over reversed
    input channels): bit-identical on the grids, while float32 differs between the ways."""
    torch.manual_seed(0)
    w, b = torch.randn(96, 64, 3, 3) * 0.05, torch.randn(96) * 0.1
    x = torch.randn(1, 64, 12, 12) * 3
    layer = _Layer("t", w, b, padding=1)
    xq = act(x)
    cols = F.unfold(xq, 3, padding=1)[0]                                   # (64 * 9, 144)
    rev = torch.arange(63, -1, -1)
    cols_rev = F.unfold(xq[:, rev], 3, padding=1)[0]
    w_rev = layer.w[:, rev].flatten(1)
    a = layer(xq).flatten(2)[0]
    assert torch.equal(a, layer.matmul(cols))
    assert torch.equal(a, w_rev @ cols_rev + layer.b[:, None])
    # the float32 network, summed in the same three orders, is not order-free
    c32 = F.unfold(x, 3, padding=1)[0]
    f1 = F.conv2d(x, w, b, padding=1).flatten(2)[0]
    f2 = w[:, rev].flatten(1) @ F.unfold(x[:, rev], 3, padding=1)[0] + b[:, None]
    f3 = w.flatten(1) @ c32 + b[:, None]
    assert not (torch.equal(f1, f2) and torch.equal(f1, f3))


def test_refuses_weights_it_cannot_sum_exactly():
    net = tiny_net(N=8)
    with torch.no_grad():
        net.entropy_parameters[0].weight[0, 0] = 1e6
    with pytest.raises(ValueError, match="entropy_parameters.0"):
        ExactHead(net)


@pytest.mark.parametrize("context", ["checkerboard", "serial"])
def test_both_versions_round_trip_and_say_which_they_are(context):
    net = tiny_net(context=context, num_modes=3, N=8)
    px = np.random.default_rng(1).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    ref = io.from_tensor(net.reconstruct(codec.pad(io.to_tensor(px), net.downsampling), 1.0))[:64, :80]
    for version in (1, 2):
        data = codec.encode_with_net(net, px, 2.0, version=version)
        assert container.unpack(data)[0].version == version
        assert np.array_equal(codec.decode_with_net(net, data), ref)
    assert container.unpack(codec.encode_with_net(net, px, 2.0))[0].version == container.VERSION == 2
    with pytest.raises(ValueError, match="format version"):
        codec.encode_with_net(net, px, 2.0, version=4)


WORKER = textwrap.dedent("""
    import hashlib, json, sys
    import numpy as np, torch
    from lic import codec
    from lic.weights import load_model
    torch.set_num_threads(1)
    net = load_model().net
    out = {"kernels": torch.backends.cpu.get_cpu_capability()}
    torch.manual_seed(0)
    with torch.no_grad():   # the float32 hyper-decoder on a fixed input: do these kernels differ?
        out["h_s"] = hashlib.sha256(net.h_s(torch.randn(1, net.config.N, 4, 4)).numpy().tobytes()).hexdigest()
    for name in sys.argv[2:]:
        try:
            px = codec.decode_with_net(net, open(f"{sys.argv[1]}/{name}", "rb").read())
            np.save(f"{sys.argv[1]}/{name}.npy", px)
            out[name] = "ok"
        except codec.CodecError as e:
            out[name] = f"failed: {e}"
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_version_2_decodes_with_another_cpus_kernels(tmp_path, kodak_crop):
    """Encoded here (this CPU's best kernels), decoded in a fresh process restricted to SSE4.1 /
    scalar kernels: the version-2 file decodes to the same latents (pixels within one level,
    where g_s's float32 rounding differs)."""
    from lic.weights import load_model

    loaded = load_model()
    files = {}
    for version in (1, 2):
        name = f"v{version}.lic"
        data = codec.encode_with_net(loaded.net, kodak_crop, 4.0, version=version)
        (tmp_path / name).write_bytes(data)
        files[name] = codec.decode_with_net(loaded.net, data)
    env = dict(os.environ, **OTHER_KERNELS, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", WORKER, str(tmp_path), *files], capture_output=True, text=True,
                       cwd=REPO, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    torch.manual_seed(0)
    with torch.no_grad():
        here = loaded.net.h_s(torch.randn(1, loaded.net.config.N, 4, 4)).numpy().tobytes()
    import hashlib
    if out["h_s"] == hashlib.sha256(here).hexdigest():
        pytest.skip(f"the {out['kernels']} kernels compute the same float32 bits as this process's "
                    f"{torch.backends.cpu.get_cpu_capability()}: nothing to compare")
    assert out["v2.lic"] == "ok", out["v2.lic"]
    there = np.load(tmp_path / "v2.lic.npy")
    assert np.abs(there.astype(int) - files["v2.lic"].astype(int)).max() <= 1
    # (the version-1 file usually fails here: recorded in docs/robustness.md, not asserted)
    print("version 1 with other kernels:", out["v1.lic"])


def test_exact_tables_cost_what_the_float32_ones_did(kodak_crop):
    from lic.weights import load_model

    net = load_model().net
    n1 = len(codec.encode_with_net(net, kodak_crop, 4.0, version=1))
    n2 = len(codec.encode_with_net(net, kodak_crop, 4.0, version=2))
    assert abs(n2 - n1) / n1 < 0.003, (n1, n2)


def test_context_in_bands_is_the_whole_convolution():
    """context_at unfolds a band of rows at a time: the same bits as one convolution of the whole
    map, at every chosen position, whatever the band height."""
    from lic.layers import checkerboard_masks

    net = tiny_net(N=8, M=12)
    head = ExactHead(net)
    torch.manual_seed(3)
    anchor, non_anchor = checkerboard_masks(11, 7)
    y = torch.randint(-20, 20, (1, 12, 11, 7)).float() * anchor
    pos = non_anchor.flatten().nonzero().squeeze(1)
    whole = head.ctx(act(y)).flatten(2)[0][:, pos]                       # (2M, n)
    for rows in (1, 3, 4, 100):
        assert torch.equal(head.context_at(y, pos, rows_per_chunk=rows), whole)
