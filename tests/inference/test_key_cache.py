"""KeyCache: content-addressed disk files, a bounded LRU counted in estimated resident bytes."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest

from inference.key_cache import RESIDENT_BYTES_PER_SERIALIZED_BYTE, KeyCache


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cache(tmp_path: Path, *, max_bytes: int, calls: list[bytes]) -> KeyCache:
    def deserialize(data: bytes) -> tuple[str, bytes]:
        calls.append(data)
        return ("keys", data)

    return KeyCache(tmp_path / "cache", max_bytes=max_bytes, deserialize=deserialize)


def test_put_then_get_hits_memory_without_deserialising_again(tmp_path: Path) -> None:
    calls: list[bytes] = []
    cache = _cache(tmp_path, max_bytes=10_000, calls=calls)
    data = b"k" * 100
    assert cache.put(_sha(data), data) == ("keys", data)
    assert cache.get(_sha(data)) == ("keys", data)
    assert (len(calls), cache.stats.memory_hits, cache.stats.deserializations) == (1, 1, 1)
    assert cache.memory_bytes == int(100 * RESIDENT_BYTES_PER_SERIALIZED_BYTE)
    path = cache.path_for(_sha(data))
    assert path.read_bytes() == data and stat.S_IMODE(path.stat().st_mode) == 0o600


def test_lru_evicts_least_recently_used_within_the_resident_bound(tmp_path: Path) -> None:
    calls: list[bytes] = []
    one = int(100 * RESIDENT_BYTES_PER_SERIALIZED_BYTE)
    cache = _cache(tmp_path, max_bytes=2 * one, calls=calls)
    a, b, c = b"a" * 100, b"b" * 100, b"c" * 100
    cache.put(_sha(a), a)
    cache.put(_sha(b), b)
    cache.get(_sha(a))  # a is now the most recently used
    cache.put(_sha(c), c)  # evicts b
    assert cache.stats.evictions == 1 and cache.memory_bytes == 2 * one
    calls.clear()
    cache.get(_sha(a))
    assert calls == []  # still in memory
    cache.get(_sha(b))  # from disk: deserialised again
    assert calls == [b] and cache.stats.disk_hits == 1


def test_a_fresh_process_reads_the_shared_disk_cache(tmp_path: Path) -> None:
    data = b"x" * 50
    _cache(tmp_path, max_bytes=10_000, calls=[]).put(_sha(data), data)
    other = _cache(tmp_path, max_bytes=10_000, calls=[])
    assert other.get(_sha(data)) == ("keys", data)
    assert (other.stats.disk_hits, other.stats.downloads) == (1, 0)
    assert other.get("0" * 64) is None


def test_names_must_be_sha256(tmp_path: Path) -> None:
    cache = _cache(tmp_path, max_bytes=1, calls=[])
    with pytest.raises(ValueError, match="not a sha256"):
        cache.path_for("../../etc/passwd")
