"""A byte scanner for the privacy proofs: find many needles in many large blobs, fast.

Needles of 16 bytes or more are anchored on their first 16 bytes: a blob is scanned with numpy
(one 8-byte word at every offset, a set lookup, then a second-word filter) and only the few
surviving positions are compared byte by byte, so ~100 MB of keys and logs scan in seconds.
The few shorter needles (8-15 bytes, e.g. one unusual value as text) use ``bytes.find``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ANCHOR = 16
SHORTEST = 8
_CHUNK = 1 << 22
_PRECISIONS = (4, 5, 6, 7, 8, 10, 12, 15, 17)


@dataclass(frozen=True)
class Needle:
    """Bytes that must not appear anywhere, with a label saying what they are."""

    label: str
    data: bytes


@dataclass(frozen=True)
class Hit:
    """A needle found in a blob."""

    needle: str
    where: str
    offset: int


def _words(segment: np.ndarray, count: int) -> np.ndarray:
    """Little-endian uint64 of the 8 bytes starting at each of the first ``count`` offsets."""
    out = np.zeros(count, dtype=np.uint64)
    for k in range(8):
        out |= segment[k : k + count].astype(np.uint64) << np.uint64(8 * k)
    return out


class Scanner:
    """Searches blobs for a fixed set of needles (each at least 8 bytes long)."""

    def __init__(self, needles: Iterable[Needle]) -> None:
        self.needles = list(needles)
        too_short = [n.label for n in self.needles if len(n.data) < SHORTEST]
        if too_short:
            raise ValueError(f"needles shorter than {SHORTEST} bytes match by chance: {too_short}")
        self._short = [n for n in self.needles if len(n.data) < ANCHOR]
        self._by_anchor: dict[bytes, list[Needle]] = {}
        for needle in self.needles:
            if len(needle.data) >= ANCHOR:
                self._by_anchor.setdefault(needle.data[:ANCHOR], []).append(needle)
        anchors = list(self._by_anchor)
        self._first = np.unique(np.frombuffer(b"".join(a[:8] for a in anchors), dtype="<u8"))
        self._second = np.unique(np.frombuffer(b"".join(a[8:] for a in anchors), dtype="<u8"))
        self.bytes_scanned = 0
        self.blobs_scanned = 0

    def scan(self, data: bytes, where: str) -> list[Hit]:
        """Every needle occurrence in ``data`` (``where`` names the blob in the hits)."""
        self.bytes_scanned += len(data)
        self.blobs_scanned += 1
        hits = [Hit(n.label, where, data.find(n.data)) for n in self._short if n.data in data]
        if len(data) < ANCHOR or not self._by_anchor:
            return hits
        array = np.frombuffer(data, dtype=np.uint8)
        last = len(data) - ANCHOR  # last offset where an anchor fits
        for start in range(0, last + 1, _CHUNK):
            count = min(_CHUNK, last + 1 - start)
            segment = array[start : start + count + ANCHOR]
            first = _words(segment, count)
            candidates = np.nonzero(np.isin(first, self._first))[0]
            if candidates.size == 0:
                continue
            second = _words(segment[8:], count)[candidates]
            candidates = candidates[np.isin(second, self._second)]
            for offset in (start + int(c) for c in candidates):
                for needle in self._by_anchor.get(data[offset : offset + ANCHOR], []):
                    if data.startswith(needle.data, offset):
                        hits.append(Hit(needle.label, where, offset))
        return hits


# -- needles -----------------------------------------------------------------------------------


def _float_texts(values: Sequence[float]) -> Iterator[tuple[str, str]]:
    """Text renderings of a row of floats: joined whole rows and adjacent pairs."""
    renderings: dict[str, list[str]] = {
        "repr": [repr(float(v)) for v in values],
        "str-f32": [str(np.float32(v)) for v in values],
    }
    for p in _PRECISIONS:
        renderings[f"%.{p}g"] = [f"{v:.{p}g}" for v in values]
        renderings[f"%.{p}f"] = [f"{v:.{p}f}" for v in values]
    for name, texts in renderings.items():
        for sep in (",", ", ", " ", "\t"):
            yield f"row {name} sep {sep!r}", sep.join(texts)
        for i in range(len(texts) - 1):
            pair = f"{texts[i]},{texts[i + 1]}"
            if len(pair) >= ANCHOR:
                yield f"pair {i} {name}", pair
    yield "json", json.dumps([float(v) for v in values])
    yield "numpy str", np.array2string(np.asarray(values), separator=",")


def plaintext_needles(label: str, row: np.ndarray, quantized: np.ndarray) -> list[Needle]:
    """Needles for one plaintext row: float64/float32 bytes, text forms, quantised integers."""
    row = np.asarray(row, dtype=np.float64).ravel()
    needles = [Needle(f"{label} {dtype}", row.astype(dtype).tobytes())
               for dtype in ("<f8", ">f8", "<f4", ">f4")]
    needles += [Needle(f"{label} text {name}", text.encode())
                for name, text in _float_texts(row.tolist())]
    unusual = [v for v in row.tolist() if len(repr(v)) >= 9]  # e.g. 123.456789
    for value in unusual:
        needles += [Needle(f"{label} value {value!r} {name}", text.encode())
                    for name, text in (("repr", repr(value)), ("%.8g", f"{value:.8g}"),
                                       ("f32", str(np.float32(value))))
                    if len(text) >= SHORTEST]
        needles.append(Needle(f"{label} value {value!r} <f8", np.float64(value).tobytes()))
    ints = np.asarray(quantized).ravel()
    for dtype in ("<i8", ">i8", "<i4", ">i4", "<i2", "u1", "i1"):
        if np.all(ints.astype(dtype).astype(np.int64) == ints):
            needles.append(Needle(f"{label} quantised {dtype}", ints.astype(dtype).tobytes()))
    needles.append(Needle(f"{label} quantised json", json.dumps(ints.tolist()).encode()))
    needles.append(Needle(f"{label} quantised csv", ",".join(map(str, ints.tolist())).encode()))
    return needles


def secret_key_needles(keyset: bytes, public: bytes, *, label: str) -> list[Needle]:
    """Windows of the secret part of a serialized concrete keyset.

    The keyset also embeds the evaluation keys (``public``, which the server is meant to get),
    so only bytes outside that embedded copy are secret. Binary secret-key coefficients are
    low-entropy (one bit per 8-byte word), so besides 64-byte windows the secret region is
    also covered by 512-byte windows (64 bits of key material each).
    """
    head = 4096  # the message headers (segment tables) of the two serializations differ
    start = keyset.find(public[head : 2 * head]) - head
    if start < 0 or keyset[start + head : start + len(public)] != public[head:]:
        raise AssertionError("the keyset does not embed the evaluation keys verbatim")
    regions = [keyset[:start], keyset[start + len(public) :]]
    needles = []
    for r, region in enumerate(regions):
        for size, stride in ((64, 64), (512, 256)):
            for offset in range(0, max(0, len(region) - size + 1), stride):
                window = region[offset : offset + size]
                words = {window[i : i + 8] for i in range(0, size, 8)}
                if len(words) >= 4:  # skip padding and headers
                    needles.append(Needle(f"{label} region {r} @{offset} ({size} B)", window))
    public_too = {hit.needle for hit in Scanner(needles).scan(public, "evaluation keys")}
    return [n for n in needles if n.label not in public_too]  # key parameters, not secrets


def files_under(root: Path) -> Iterator[Path]:
    """Every regular file below ``root``."""
    yield from (p for p in sorted(Path(root).rglob("*")) if p.is_file())


def s3_objects(s3: Any) -> Iterator[tuple[str, bytes]]:
    """``(s3://bucket/key, body)`` for every object of every bucket."""
    for bucket in s3.list_buckets()["Buckets"]:
        paginator = s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket["Name"]):
            for item in page.get("Contents", []):
                body = s3.get_object(Bucket=bucket["Name"], Key=item["Key"])["Body"].read()
                yield f"s3://{bucket['Name']}/{item['Key']}", body
