"""Atomic writes: a file or folder is built under a temporary name beside its destination, then renamed into place.

A reader sees the old version or the new one, never half of one; a failure (or Ctrl-C) leaves the old version as
it was and no temporary left behind.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def replacing(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; write a file or make a folder there. On success it replaces `dest`
    (a folder by a rename aside, then a rename in); on failure it is removed and `dest` is untouched."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb") as fh:  # the data is on disk before the name points to it
                os.fsync(fh.fileno())
        if dest.is_dir() and not dest.is_symlink():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            _remove(old)
            os.replace(dest, old)
            os.replace(tmp, dest)
            _remove(old)
        else:
            os.replace(tmp, dest)
    finally:
        _remove(tmp)


def write_bytes(dest: str | Path, data: bytes) -> None:
    """Replace the file `dest` with `data` atomically."""
    with replacing(dest) as tmp:
        tmp.write_bytes(data)


def write_text(dest: str | Path, text: str) -> None:
    """Replace the file `dest` with `text` (UTF-8) atomically."""
    write_bytes(dest, text.encode("utf-8"))
