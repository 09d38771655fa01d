"""Atomic file writes: nothing the next run trusts is ever half-written.

Every artifact is written under a temporary name in the same folder, flushed to disk, and
renamed onto its final name with `os.replace` (atomic on POSIX). A failure (of a write, of the
flush or of the rename) removes the temporary file and leaves any earlier version in place.

Temporary files and folders are created with the mode a plain `open()` / `mkdir()` gives under
the process umask, not `tempfile.mkstemp`'s 0600 / 0700: the rename publishes them, and a
published prediction or bundle must be readable by whoever the umask lets read it (a tile
server, GIS users on another account).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def sha256_file(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_file(path: str | Path) -> None:
    """Flush a file's data to disk; an error (EIO, ENOSPC on a thin volume) is raised.

    Raises:
        OSError: The file does not open or the flush failed (the data may not be on disk).
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entry table so a rename inside it survives a power loss.

    File systems that cannot flush a folder (EINVAL) are skipped; any other error is raised.
    """
    try:
        fsync_file(path)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise


def _create_unique(folder: Path, prefix: str, suffix: str, make: Callable[[Path], None]) -> Path:
    """`make` a new `prefix<random>suffix` in `folder`, retrying the name while it is taken.

    Raises:
        FileExistsError: No free name after many tries (not expected).
    """
    for _ in range(100):
        path = folder / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            make(path)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(folder))


def _new_file(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))


def create_temp_file(folder: Path, prefix: str, suffix: str) -> Path:
    """Create an empty file named `prefix<random>suffix` in `folder`, mode 0666 less the umask."""
    return _create_unique(folder, prefix, suffix, _new_file)


def create_temp_dir(folder: Path, prefix: str, suffix: str) -> Path:
    """Create an empty folder named `prefix<random>suffix` in `folder`, mode 0777 less the umask."""
    return _create_unique(folder, prefix, suffix, lambda path: os.mkdir(path, 0o777))


@contextlib.contextmanager
def atomic_path(final: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success rename it onto `final`.

    The caller writes the temporary path (with any library). When the block raises, the
    temporary file is removed and `final` is untouched.

    Args:
        final: The artifact's final path.
        suffix: Extension for the temporary name, for writers that infer the format from it.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = create_temp_file(final.parent, f".{final.name}.", f".tmp{suffix}")
    tmp_name = str(tmp)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename in (None, tmp_name):
            # a full or read-only disk surfaces on write(), fsync() or rename() of the temporary:
            # name the artifact the user asked for instead (OSError picks the subclass by errno)
            raise OSError(exc.errno, exc.strerror, str(final)) from exc
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def finite(obj: Any) -> Any:
    """`obj` (JSON-like) with every NaN or infinite float replaced by None.

    JSON has no NaN or Infinity; a metric that is undefined (PSNR of a perfect prediction,
    any score over no valid pixel) is written as null, so every file p2p writes parses with a
    strict parser.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def json_text(obj: Any, indent: int | None = 2) -> str:
    """`obj` as strict JSON text (`finite` first; keys sorted when indented), newline-ended."""
    sort = indent is not None
    return json.dumps(finite(obj), indent=indent, sort_keys=sort, default=str, allow_nan=False) + (
        "\n"
    )


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented strict JSON to `path` atomically (see `finite`)."""
    atomic_write_text(path, json_text(obj))


def read_json(path: str | Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())
