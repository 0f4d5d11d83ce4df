"""KeyCache: content-addressed disk files, a bounded LRU counted in estimated resident bytes."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest

from inference.key_cache import RESIDENT_BYTES_PER_SERIALIZED_BYTE, URI_INDEX_DIR, KeyCache


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


# -- the URI index (keys named only by their S3 URI) ------------------------------------------
URI = "s3://bucket/fhe/keys/client.ekl"


def test_uri_index_answers_only_for_the_version_it_recorded(tmp_path: Path) -> None:
    cache = _cache(tmp_path, max_bytes=10_000, calls=[])
    data = b"k" * 10
    assert cache.sha_for_uri(URI, "v1") is None
    cache.remember_uri(URI, "v1", _sha(data))
    assert cache.sha_for_uri(URI, "v1") == _sha(data)
    assert cache.sha_for_uri(URI, "v2") is None  # the object changed: read it again
    assert cache.sha_for_uri("s3://bucket/fhe/keys/other.ekl", "v1") is None


def test_uri_index_is_shared_on_disk_and_bounded_in_memory(tmp_path: Path) -> None:
    writer = KeyCache(tmp_path / "cache", max_bytes=0, deserialize=bytes, max_uri_entries=2)
    for index in range(3):
        writer.remember_uri(f"{URI}.{index}", "v", _sha(bytes([index])))
    assert writer.uri_entries == 2
    reader = KeyCache(tmp_path / "cache", max_bytes=0, deserialize=bytes, max_uri_entries=2)
    # Every entry is on disk: the evicted one and those of another worker still answer.
    assert [reader.sha_for_uri(f"{URI}.{i}", "v") for i in range(3)] == [
        _sha(bytes([i])) for i in range(3)]
    assert reader.uri_entries == 2
    writer.remember_uri(f"{URI}.0", "v2", _sha(b"new"))
    assert reader.sha_for_uri(f"{URI}.0", "v2") == _sha(b"new")  # evicted from memory, on disk
    index_dir = tmp_path / "cache" / URI_INDEX_DIR
    assert {stat.S_IMODE(p.stat().st_mode) for p in index_dir.iterdir()} == {0o600}


def test_a_stale_entry_in_memory_is_replaced_by_the_fresh_one_on_disk(tmp_path: Path) -> None:
    """Worker B holds ``URI -> v1`` in memory; worker A reads the changed object (v2) and writes
    the index file; B, asked for v2, must read that file rather than trust its memory."""
    writer = KeyCache(tmp_path / "cache", max_bytes=0, deserialize=bytes)
    reader = KeyCache(tmp_path / "cache", max_bytes=0, deserialize=bytes)
    old, new = _sha(b"old"), _sha(b"new")
    writer.remember_uri(URI, "v1", old)
    assert reader.sha_for_uri(URI, "v1") == old
    index_file = next((tmp_path / "cache" / URI_INDEX_DIR).iterdir())
    index_file.unlink()
    assert reader.sha_for_uri(URI, "v1") == old  # answered from memory: the entry is held there
    assert reader.uri_entries == 1
    writer.remember_uri(URI, "v2", new)
    assert reader.sha_for_uri(URI, "v2") == new  # stale in memory, fresh on disk
    index_file.unlink()
    assert reader.sha_for_uri(URI, "v2") == new  # and memory now holds the fresh entry
    assert reader.sha_for_uri(URI, "v1") is None


@pytest.mark.parametrize("content", [b"not json", b"[]", b'{"uri": "s3://b/other", "version": "v",'
                                     b' "sha256": "' + b"a" * 64 + b'"}',
                                     b'{"uri": "' + URI.encode() + b'", "version": "v",'
                                     b' "sha256": "../x"}'])
def test_uri_index_ignores_unusable_files(tmp_path: Path, content: bytes) -> None:
    cache = _cache(tmp_path, max_bytes=10_000, calls=[])
    cache.remember_uri(URI, "v", "b" * 64)
    path = next((tmp_path / "cache" / URI_INDEX_DIR).iterdir())
    path.write_bytes(content)
    fresh = _cache(tmp_path, max_bytes=10_000, calls=[])
    assert fresh.sha_for_uri(URI, "v") is None
