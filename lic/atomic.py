"""Write a file all at once or not at all (standard library only).

``with atomic_write(path) as tmp:`` yields a temporary path in ``path``'s folder; write the
file there (by name).  When the block ends normally, the temporary file gets the permissions
of a normally created file (``0o666`` less the umask; ``mkstemp`` makes ``0600``) and is renamed
onto ``path`` (``os.replace``: atomic on one file system).  When the block raises, or the rename
fails, the temporary file is removed and ``path`` is untouched: a reader never sees a partial
file under ``path``'s name.  Used by ``encode.py`` / ``decode.py`` and ``lic.export``.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_write"]


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path``, renamed onto it when the block succeeds (see module doc)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.absolute().parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
