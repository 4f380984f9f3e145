"""The tracked text files hold no absolute file-system path of the machine that wrote them
(a home folder, a work or scratch disk, a Windows drive): such a path means nothing on a clone."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from conftest import REPO

TEXT = ("*.json", "*.md", "*.py", "*.yaml", "*.yml", "*.ipynb", "*.toml", "*.cfg", "*.txt", "*.sh", ".ci/run")
# a path that starts at a machine's root folder: after a quote, space, bracket, '=' or ':' (not
# after a name, so '../shared/data/' and '<shared>/data/' pass), or at a drive letter (C:\name\)
MACHINE_PATH = re.compile(r"""(?:^|[\s"'`(\[=:,])(/(?:work|home|root|Users|mnt|scratch|opt|srv)/[^\s"'`)]*)"""
                          r"""|(?<![A-Za-z0-9])([A-Z]:\\{1,2}[^\\\s"'`]+\\)""")


def tracked_text_files() -> list[str]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "-z", "--", *TEXT], cwd=REPO, capture_output=True, check=True)
    return [p for p in out.stdout.decode().split("\0") if p]


def test_the_pattern_finds_machine_paths_and_passes_relative_ones():
    found = [m.group(0).strip(" \"'=") for line in (
        '"description": "weights: /work/main/weights/x.safetensors"', "see /home/ann/data", "C:\\Users\\ann\\x.png",
        "cd /root/lic", "path=/Users/bob/k.png", "`/mnt/disk/kodak`",
    ) for m in [MACHINE_PATH.search(line)] if m]
    assert len(found) == 6, found
    for fine in ("../shared/data/kodak", "<shared>/data/<name>", "logs/eval/runs/", "weights/x.safetensors",
                 "/tmp/c", "https://example.org/home/x", "tests/data/golden.lic", "a:b", 'f"line:\\n"'):
        assert MACHINE_PATH.search(fine) is None, fine


def test_no_tracked_text_file_holds_a_machine_path():
    files = tracked_text_files()
    assert "README.md" in files
    bad = []
    for name in files:
        path = REPO / name
        if not path.is_file() or name == "tests/test_tracked_files.py":   # (its own examples above)
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            m = MACHINE_PATH.search(line)
            if m:
                bad.append(f"{name}:{i}: {m.group(0).strip()}")
    assert not bad, "absolute machine paths in tracked files:\n" + "\n".join(bad)
