"""lic.atomic.atomic_write: all of the file under its name, or nothing new."""
from __future__ import annotations

import os

import pytest

from lic.atomic import atomic_write


def test_success_renames_with_the_usual_permissions(tmp_path):
    out = tmp_path / "a.bin"
    with atomic_write(out) as tmp:
        assert tmp.parent == tmp_path and tmp != out
        tmp.write_bytes(b"abc")
        assert not out.exists()                  # nothing under the name until the block ends
    assert out.read_bytes() == b"abc"
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    out = tmp_path / "a.bin"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(out) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer failed")
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_relative_path_and_missing_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with atomic_write("b.txt") as tmp:
        tmp.write_text("x")
    assert (tmp_path / "b.txt").read_text() == "x"
    with pytest.raises(FileNotFoundError):
        with atomic_write(tmp_path / "no" / "c.txt"):
            pass
