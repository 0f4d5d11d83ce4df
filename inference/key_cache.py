"""Evaluation keys cached by sha256: on disk (shared by workers) and deserialised in memory.

Requests that name their keys' sha256 find them directly. Requests that only give a URI (the
AWS sample's client, plain concrete-ml clients) go through a URI index: ``uri -> (version,
sha256)``, where the version is what S3 says identifies the stored bytes (ETag, VersionId,
size). The server compares it with a HEAD of the object, so an unchanged object is never
downloaded twice and a changed one is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.files import atomic_write_bytes

logger = logging.getLogger(__name__)

_SHA_RE = re.compile(r"[0-9a-f]{64}")
KEY_SUFFIX = ".ekl"
# Deserialised evaluation keys take several times their serialized size in memory: the
# benchmark measured a worker's RSS growing 5.5-6.3x the serialized size per cached key set
# (tree: +460 MB for 77 MB of keys). The LRU bound counts this estimate, not the wire size.
RESIDENT_BYTES_PER_SERIALIZED_BYTE = 6.5
# URI index entries are small (a URI, an S3 version, a sha256); this bounds their number.
DEFAULT_MAX_URI_ENTRIES = 4096
URI_INDEX_DIR = "uris"


@dataclass
class KeyCacheStats:
    """Counters of one process's key cache (served by ``GET /metrics``)."""

    memory_hits: int = 0
    disk_hits: int = 0
    downloads: int = 0
    download_bytes: int = 0
    deserializations: int = 0
    evictions: int = 0
    revalidations: int = 0
    revalidated_hits: int = 0


class KeyCache:
    """A bounded LRU of deserialised evaluation keys over an atomic on-disk cache.

    Keys are content-addressed: the name is the sha256 of the serialized bytes, so a file in
    the cache directory is either absent or complete and right (written with a temp file and
    ``os.replace``, verified before writing). Several worker processes may share the folder.

    Args:
        directory: On-disk cache folder (created on first write).
        max_bytes: Bound of the memory the in-memory LRU may hold, estimated as
            ``RESIDENT_BYTES_PER_SERIALIZED_BYTE`` x the serialized size of each key set. A key
            set bigger than the bound is still used for its request, then dropped.
        deserialize: Turns serialized bytes into the runtime's key object (``fhe.EvaluationKeys``
            or concrete's ``ServerKeyset``, see :mod:`inference.runtimes`).
        max_uri_entries: Most URI index entries held in memory (least recently used go first;
            the on-disk copy stays, so an evicted entry costs a small file read, not a download).
    """

    def __init__(self, directory: Path, *, max_bytes: int,
                 deserialize: Callable[[bytes], Any],
                 max_uri_entries: int = DEFAULT_MAX_URI_ENTRIES) -> None:
        self._dir = Path(directory)
        self._max_bytes = max_bytes
        self._deserialize = deserialize
        self._memory: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._memory_bytes = 0
        self._uris: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._max_uri_entries = max_uri_entries
        self._lock = threading.Lock()
        self.stats = KeyCacheStats()

    @property
    def memory_bytes(self) -> int:
        """Estimated resident size of the key sets held in memory."""
        return self._memory_bytes

    def path_for(self, sha256: str) -> Path:
        """Where the key set named ``sha256`` is (or would be) stored on disk."""
        if not _SHA_RE.fullmatch(sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        return self._dir / f"{sha256}{KEY_SUFFIX}"

    def get(self, sha256: str) -> Any | None:
        """The deserialised keys named ``sha256`` from memory or disk, or None."""
        with self._lock:
            hit = self._memory.get(sha256)
            if hit is not None:
                self._memory.move_to_end(sha256)
                self.stats.memory_hits += 1
                return hit[0]
        path = self.path_for(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        self.stats.disk_hits += 1
        return self._remember(sha256, data)

    def put(self, sha256: str, data: bytes) -> Any:
        """Store verified bytes named ``sha256`` on disk; return them deserialised.

        Raises:
            Whatever ``deserialize`` raises for bytes it cannot read (nothing is stored then).
        """
        keys = self._remember(sha256, data)
        try:
            atomic_write_bytes(self.path_for(sha256), data, mode=0o600)
        except OSError:
            logger.warning("could not write key cache file for %s", sha256[:12], exc_info=True)
        return keys

    @property
    def uri_entries(self) -> int:
        """URI index entries held in memory."""
        return len(self._uris)

    def sha_for_uri(self, uri: str, version: str) -> str | None:
        """The sha256 of the keys last read from ``uri`` if S3 still names them ``version``.

        Args:
            uri: The ``s3://`` URI of the keys object.
            version: What S3 says identifies the object's bytes now (``ObjectVersion.token``).
        """
        with self._lock:
            entry = self._uris.get(uri)
            if entry is not None:
                self._uris.move_to_end(uri)
        if entry is None or entry[0] != version:  # another worker may have read the new one
            entry = self._read_uri_file(uri)
            if entry is not None:
                self._remember_uri(uri, entry)
        return entry[1] if entry is not None and entry[0] == version else None

    def remember_uri(self, uri: str, version: str, sha256: str) -> None:
        """Record that ``uri``, as S3 names it ``version``, holds the keys named ``sha256``."""
        self.path_for(sha256)  # validates the name
        self._remember_uri(uri, (version, sha256))
        doc = {"uri": uri, "version": version, "sha256": sha256}
        try:
            atomic_write_bytes(self._uri_path(uri), json.dumps(doc).encode(), mode=0o600)
        except OSError:
            logger.warning("could not write the key URI index file", exc_info=True)

    def _remember_uri(self, uri: str, entry: tuple[str, str]) -> None:
        with self._lock:
            self._uris[uri] = entry
            self._uris.move_to_end(uri)
            while len(self._uris) > self._max_uri_entries:
                self._uris.popitem(last=False)

    def _uri_path(self, uri: str) -> Path:
        return self._dir / URI_INDEX_DIR / f"{hashlib.sha256(uri.encode()).hexdigest()}.json"

    def _read_uri_file(self, uri: str) -> tuple[str, str] | None:
        """The on-disk entry of ``uri`` (written by any worker), or None if absent or unusable."""
        try:
            doc = json.loads(self._uri_path(uri).read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict) or doc.get("uri") != uri:
            return None
        version, sha256 = doc.get("version"), doc.get("sha256")
        if not isinstance(version, str) or not isinstance(sha256, str) or not _SHA_RE.match(sha256):
            return None
        return version, sha256

    def _remember(self, sha256: str, data: bytes) -> Any:
        keys = self._deserialize(data)
        self.stats.deserializations += 1
        size = int(len(data) * RESIDENT_BYTES_PER_SERIALIZED_BYTE)
        with self._lock:
            if sha256 in self._memory:
                self._memory_bytes -= self._memory.pop(sha256)[1]
            if size <= self._max_bytes:
                self._memory[sha256] = (keys, size)
                self._memory_bytes += size
            while self._memory_bytes > self._max_bytes and self._memory:
                _, (_, evicted) = self._memory.popitem(last=False)
                self._memory_bytes -= evicted
                self.stats.evictions += 1
        return keys
