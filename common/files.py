"""File helpers shared by the whole kit: crash-safe writes and safe reads out of tar archives."""

from __future__ import annotations

import os
import tarfile
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO


class ArchiveError(ValueError):
    """A tar archive is unreadable, or lacks, repeats or oversizes a member asked for."""


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` so readers see either the old file or the whole new one.

    The bytes go to a temporary file in the same folder, are flushed to disk, get ``mode``,
    and replace ``path`` with ``os.replace`` (atomic on POSIX). Safe with concurrent writers
    of the same content (the last replace wins, every reader sees a complete file).

    Returns:
        The destination path.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def read_members(archive: Path, wanted: Mapping[str, int], *, source: str,
                 optional: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Read top-level regular files out of a tar archive as bytes, ignoring member paths.

    Member paths are never used as file paths, so a crafted archive cannot write anywhere.

    Args:
        wanted: File name -> size limit in bytes. Members match by name (``x`` or ``./x``);
            links, devices, directories and every other member are skipped, never extracted.
        source: How to name the archive in error messages.
        optional: Names of ``wanted`` that may be absent.

    Raises:
        ArchiveError: not a tar archive, a required file missing, duplicated, or too large.
    """
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if name not in wanted or not member.isreg():
                    continue
                if name in found:
                    raise ArchiveError(f"{source}: archive holds {name} twice")
                if member.size > wanted[name]:
                    raise ArchiveError(
                        f"{source}: {name} is {member.size} bytes,"
                        f" over the {wanted[name]} byte limit"
                    )
                found[name] = _read_member(tar.extractfile(member), name, source)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArchiveError(f"{source}: not a readable tar.gz archive ({exc})") from exc
    missing = [name for name in wanted if name not in found and name not in optional]
    if missing:
        raise ArchiveError(
            f"{source}: archive lacks {', '.join(missing)} at its top level;"
            " is this the archive written by the training job?"
        )
    return found


def _read_member(handle: IO[bytes] | None, name: str, source: str) -> bytes:
    if handle is None:
        raise ArchiveError(f"{source}: {name} in the archive is not a regular file")
    with handle:
        return handle.read()
