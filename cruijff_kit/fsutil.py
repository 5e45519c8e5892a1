"""Atomic file writes: write to a temporary file in the same directory, then rename."""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def atomic_write_bytes(path: str | os.PathLike, data: bytes, mode: int | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str, mode: int | None = None) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def atomic_write_json(path: str | os.PathLike, obj: object, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def existing_ancestor(path: str | os.PathLike) -> Path:
    """`path` itself if it exists, else its nearest existing parent (for disk and permission checks)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


@contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on `.<name>.lock` beside `path` while the block rewrites `path`."""
    path = Path(path)
    with open(path.with_name(f".{path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def check_writable_dir(path: str | os.PathLike, field: str, fix: str) -> None:
    """Refuse (CkError naming `field`) a directory that could not be created or written: a file in the
    way, or a directory where a probe file cannot be made. Nothing is left behind."""
    from cruijff_kit.errors import CkError

    path = Path(path)
    ancestor = existing_ancestor(path)
    if not ancestor.is_dir():
        where = "is a file" if ancestor == path else f"cannot be created: {ancestor} is a file"
        raise CkError(field, str(path), f"{where}, not a directory", fix)
    try:
        fd, probe = tempfile.mkstemp(prefix=".ck-probe.", dir=ancestor)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise CkError(field, str(path), f"cannot be written ({exc.strerror or exc} in {ancestor})", fix) from None
