"""Small file helpers shared by datasets, bundles and the commands' outputs."""

from __future__ import annotations

import errno
import hashlib
import os
from contextlib import contextmanager
from typing import IO, Iterator


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Write the file `path` all at once, or not at all.

    Yields a file object (`open(..., mode, **open_kwargs)`; mode "w" or "wb") on a new temporary
    file beside `path`; when the block ends without an exception it is flushed, synced and renamed
    over `path` (atomic on one file system), else it is removed and `path` is left as it was. An
    existing file at `path` is therefore untouched until the new one is complete. Errors about
    the place (a missing or unwritable folder, a folder named `path`) come at entry, before any
    work, as `OSError`s naming `path`. The new file has the usual permissions (0666 less umask).

        with atomic_output("flows.csv", newline="") as fh:
            csv.writer(fh).writerows(rows)
        with atomic_output("flows.parquet", "wb") as fh:   # libraries that take a file object
            pq.write_table(table, fh)
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_output writes a new file: mode must be 'w' or 'wb', got {mode!r}")
    target = os.fspath(path)
    if not target:
        raise FileNotFoundError(errno.ENOENT, "empty file name", target)
    if os.path.isdir(target):
        raise IsADirectoryError(errno.EISDIR, "is a directory", target)
    folder, name = os.path.split(target)
    while True:
        temporary = os.path.join(folder, f".{name}.{os.urandom(4).hex()}.tmp")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
        except OSError as exc:  # named for the file asked for, not our temporary one
            raise OSError(exc.errno, exc.strerror, target) from None
    try:
        with open(fd, mode, **open_kwargs) as fh:
            yield fh
            if not fh.closed:  # a library may close the file it was given
                fh.flush()
                _sync(fh.fileno())
        os.replace(temporary, target)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def _sync(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):  # file systems that cannot sync
            raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """`atomic_output` for a whole text at once (JSON, Markdown, CSV written as one string)."""
    with atomic_output(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def check_writable_dir(path: str | os.PathLike) -> None:
    """Fail now, with an `OSError` naming `path`, if the directory cannot be made there (a long
    job checks its output place before it starts, not after). It is made and, when it did not
    exist, removed again: permissions alone do not say (root may write anywhere, /proc refuses)."""
    target = os.fspath(path)
    if not target:
        raise FileNotFoundError(errno.ENOENT, "empty directory name", target)
    if os.path.isdir(target):
        if not os.access(target, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "not writable", target)
        return
    first_missing = os.path.abspath(target)
    while not os.path.exists(os.path.dirname(first_missing)):
        first_missing = os.path.dirname(first_missing)
    try:
        os.makedirs(target)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, target) from None
    stop = os.path.dirname(first_missing)
    here = os.path.abspath(target)
    while here != stop:
        os.rmdir(here)
        here = os.path.dirname(here)
