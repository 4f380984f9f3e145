"""The notebooks run top to bottom on tiny data, in a kernel that is this venv's python."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import KODAK, REPO, random_image, tiny_net
from lic.eval.baselines import JPEG
from lic.eval.lic_codec import LicCodec
from lic.eval.runner import evaluate
from lic.weights import export

pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
from nbclient import NotebookClient  # noqa: E402

NOTEBOOKS = REPO / "notebooks"
ALLOWED_IMPORTS = {"lic", "numpy", "matplotlib", "os", "json", "pathlib", "math", "sys"}
WHICH_PYTHON = "import sys; print(sys.executable); print(sys.prefix)"


def tiny_checkpoint(path: Path, num_modes: int = 3) -> Path:
    net = tiny_net(num_modes=num_modes)
    with torch.no_grad():   # make the latents carry information (an untrained tiny net codes y ~ 0)
        net.g_a[-2].weight.mul_(10.0)
        net.g_a[-2].bias.mul_(10.0)
    export(net, path)
    return path


def execute(name: str, env: dict[str, str], monkeypatch) -> nbformat.NotebookNode:
    """Run a notebook in-process (kernel "python3"), with a last cell that prints the kernel's python."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(WHICH_PYTHON))
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    return nb


def outputs(cell) -> tuple[str, int]:
    """(all text a cell printed, number of PNG images it displayed)."""
    text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
    text += "".join(o.get("data", {}).get("text/plain", "") for o in cell.outputs
                    if o.output_type == "execute_result")
    pngs = sum("image/png" in o.get("data", {}) for o in cell.outputs)
    return text, pngs


def assert_kernel_is_this_python(nb) -> None:
    """The kernel runs this interpreter in this environment (prefix: the venv, not the base python)."""
    executable, prefix = outputs(nb.cells[-1])[0].split()
    assert (executable, prefix) == (sys.executable, sys.prefix)


@pytest.mark.parametrize("name", ["rd_curves.ipynb", "where_the_bits_go.ipynb"])
def test_notebook_is_clean_and_imports_lic_only(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        assert not cell.outputs and cell.execution_count is None, "commit notebooks without outputs"
        src = "\n".join(line for line in cell.source.splitlines() if not line.startswith("%"))
        for node in ast.walk(ast.parse(src)):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                    else [node.module] if isinstance(node, ast.ImportFrom) else [])
            for m in mods:
                assert m.split(".")[0] in ALLOWED_IMPORTS, f"{name} imports {m}"


@pytest.mark.slow
def test_rd_curves_notebook(tmp_path, monkeypatch):
    ckpt = tiny_checkpoint(tmp_path / "tiny.safetensors")
    images = []
    for i in range(2):   # 176 x 176: large enough for MS-SSIM's five scales
        p = KODAK / f"kodim{i + 1:02d}.png"
        if p.exists():
            with Image.open(p) as im:
                px = np.asarray(im.convert("RGB"))[100:276, 200:376].copy()
        else:
            px = random_image(176, 176, seed=i)
        images.append((f"img{i}", px))
    out = tmp_path / "run"
    evaluate(images, [LicCodec.from_checkpoints([ckpt]), JPEG(settings=[10, 30, 50, 70, 90])], out,
             progress=False)
    nb = execute("rd_curves.ipynb", {"LIC_NOTEBOOK_EVAL_DIR": str(out), "OMP_NUM_THREADS": "1"}, monkeypatch)
    assert_kernel_is_this_python(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    printed = "".join(outputs(c)[0] for c in code)
    assert str(out) in printed and "2 images" in printed and "JPEG" in printed
    assert sum(outputs(c)[1] for c in code) == 2          # the PSNR and MS-SSIM figures
    assert (out / "bd_rate.md").read_text().strip() in printed


@pytest.mark.slow
def test_where_the_bits_go_notebook(tmp_path, monkeypatch):
    ckpt = tiny_checkpoint(tmp_path / "tiny.safetensors")
    nb = execute("where_the_bits_go.ipynb", {"LIC_CHECKPOINT": str(ckpt), "OMP_NUM_THREADS": "1"}, monkeypatch)
    assert_kernel_is_this_python(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    printed = "".join(outputs(c)[0] for c in code)
    assert str(ckpt) in printed and "real file" in printed and "bit map" in printed
    ratio = float(printed.split("map / streams:")[1].split()[0])
    assert 0.9 < ratio <= 1.0                             # the map accounts for the streams
    assert sum(outputs(c)[1] for c in code) == 1
