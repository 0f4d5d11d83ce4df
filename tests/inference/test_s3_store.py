"""S3Store against a real S3 server (moto over HTTP): bounded reads, what each one sends.

Every test records the HTTP requests the store's boto3 client really sends (botocore's
``before-send``: after serialisation), so "one round trip" and "asks for at most the limit plus
one byte" are checked on the wire, not on the code's intentions.
"""

from __future__ import annotations

import uuid
from typing import Any

import boto3
import pytest

from common.contract import sha256_hex
from common.s3_location import S3Prefix, S3Uri
from inference.errors import IntegrityError, ObjectNotFound, PayloadTooLarge
from inference.s3_store import S3Store, SizeLimit
from local_mode.s3_server import LOCAL_REGION, LocalS3Server

LIMIT = SizeLimit(1000, "send a smaller object")


class Wire:
    """``(method, Range header)`` of every request a client sent."""

    def __init__(self, client: Any) -> None:
        self.sent: list[tuple[str, str | None]] = []
        client.meta.events.register("before-send.s3", self._record)

    def _record(self, request: Any, **_: Any) -> None:
        value = request.headers.get("Range")
        self.sent.append((request.method, value.decode() if isinstance(value, bytes) else value))


@pytest.fixture
def store(s3_server: LocalS3Server) -> tuple[S3Store, Any, Wire, str]:
    client = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name=LOCAL_REGION)
    bucket = f"store-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket)
    store = S3Store(client, allowed_prefixes=[S3Prefix(bucket, "fhe/")],
                    max_object_bytes=1 << 20)
    return store, client, Wire(client), bucket


def _put(client: Any, bucket: str, name: str, body: bytes) -> S3Uri:
    client.put_object(Bucket=bucket, Key=f"fhe/{name}", Body=body)
    return S3Uri(bucket, f"fhe/{name}")


def test_a_ranged_read_is_one_get_for_at_most_the_limit_plus_one_byte(
        store: tuple[S3Store, Any, Wire, str]) -> None:
    s3, client, wire, bucket = store
    body = bytes(range(256)) * 3
    uri = _put(client, bucket, "row.bin", body)
    wire.sent.clear()
    assert s3.read_ranged(uri, expected_sha256=sha256_hex(body), limit=LIMIT) == body
    assert wire.sent == [("GET", "bytes=0-1000")]


def test_an_object_over_the_limit_is_refused_with_its_whole_size(
        store: tuple[S3Store, Any, Wire, str]) -> None:
    s3, client, wire, bucket = store
    uri = _put(client, bucket, "fat.bin", b"x" * 5000)
    wire.sent.clear()
    with pytest.raises(PayloadTooLarge, match=r"fat.bin has 5000 bytes; the server reads at most"
                                              r" 1000: send a smaller object"):
        s3.read_ranged(uri, what="ciphertext 0", limit=LIMIT)
    assert wire.sent == [("GET", "bytes=0-1000")]  # S3 sends 1,001 bytes at the most
    # Exactly the limit is within it; one byte more is not.
    exact = _put(client, bucket, "exact.bin", b"y" * 1000)
    assert s3.read_ranged(exact, limit=LIMIT) == b"y" * 1000
    with pytest.raises(PayloadTooLarge, match="has 1001 bytes"):
        s3.read_ranged(_put(client, bucket, "over.bin", b"y" * 1001), limit=LIMIT)


def test_an_empty_object_reads_as_empty(store: tuple[S3Store, Any, Wire, str]) -> None:
    s3, client, _, bucket = store
    assert s3.read_ranged(_put(client, bucket, "empty.bin", b""), limit=LIMIT) == b""


def test_ranged_reads_verify_the_sha256_and_translate_errors(
        store: tuple[S3Store, Any, Wire, str]) -> None:
    s3, client, _, bucket = store
    uri = _put(client, bucket, "row.bin", b"abc")
    with pytest.raises(IntegrityError, match=r"has sha256 .* the request says 0{64}"):
        s3.read_ranged(uri, expected_sha256="0" * 64, limit=LIMIT)
    with pytest.raises(ObjectNotFound, match="does not exist: upload it first"):
        s3.read_ranged(S3Uri(bucket, "fhe/missing.bin"), limit=LIMIT)


def test_the_head_first_read_still_sends_no_get_for_an_oversized_object(
        store: tuple[S3Store, Any, Wire, str]) -> None:
    s3, client, wire, bucket = store
    uri = _put(client, bucket, "keys.ekl", b"k" * 5000)
    wire.sent.clear()
    with pytest.raises(PayloadTooLarge, match="has 5000 bytes"):
        s3.read(uri, what="evaluation keys", limit=LIMIT)
    assert [method for method, _ in wire.sent] == ["HEAD"]
    data, version = s3.read_versioned(_put(client, bucket, "k2.ekl", b"k" * 10), limit=LIMIT)
    assert data == b"k" * 10 and version.size == 10
