"""The wire contract: request parsing/building and the batch framing."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import contract
from common.contract import (
    BatchTooLargeError,
    ContractError,
    build_request,
    is_retryable,
    pack_batch,
    parse_request,
    parse_s3_uri,
    unpack_batch,
)

KEYS = "s3://bucket-a/keys/" + "a" * 64 + ".ekl"
QUERY = "s3://bucket-a/queries/q1.bin"
SHA = "b" * 64


def _body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_reference_request_is_single_and_unbatched() -> None:
    req = parse_request(_body(evaluation_keys_uri=KEYS, encrypted_query_uri=QUERY))
    assert str(req.evaluation_keys_uri) == KEYS
    assert [str(u) for u in req.query_uris] == [QUERY]
    assert (req.batch, req.packed, req.model_fingerprint, req.query_sha256) == (
        False, False, None, None)


def test_list_batch_carries_one_sha_per_uri() -> None:
    uris = [QUERY, "s3://bucket-a/queries/q2.bin"]
    body = build_request(evaluation_keys_uri=KEYS, encrypted_query_uris=uris,
                         encrypted_query_sha256=[SHA, "c" * 64], model_fingerprint=SHA,
                         evaluation_keys_sha256="d" * 64)
    req = parse_request(body)
    assert req.batch and not req.packed
    assert req.query_sha256 == (SHA, "c" * 64)
    assert (req.model_fingerprint, req.evaluation_keys_sha256) == (SHA, "d" * 64)


def test_packed_batch_is_one_object() -> None:
    req = parse_request(build_request(evaluation_keys_uri=KEYS, encrypted_batch_uri=QUERY,
                                      encrypted_query_sha256=SHA))
    assert req.batch and req.packed and len(req.query_uris) == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (_body(encrypted_query_uri=QUERY), "missing required field 'evaluation_keys_uri'"),
        (_body(evaluation_keys_uri=KEYS), "exactly one of .* \\(got none\\)"),
        (_body(evaluation_keys_uri=KEYS, encrypted_query_uri=QUERY, encrypted_batch_uri=QUERY),
         "exactly one of .*got encrypted_query_uri, encrypted_batch_uri"),
        (_body(evaluation_keys_uri=KEYS, encrypted_query_uri=QUERY, extra=1),
         "unknown field\\(s\\) 'extra'"),
        (_body(evaluation_keys_uri=5, encrypted_query_uri=QUERY), "must be a string"),
        (_body(evaluation_keys_uri="http://x/y", encrypted_query_uri=QUERY), "s3://bucket/key"),
        (_body(evaluation_keys_uri=KEYS, encrypted_query_uri="s3://bucket-a/a/../b"),
         "s3://bucket/key"),
        (_body(evaluation_keys_uri=KEYS, encrypted_query_uris=[]), "non-empty list"),
        (_body(evaluation_keys_uri=KEYS, encrypted_query_uri=QUERY, model_fingerprint="ABC"),
         "'model_fingerprint' must be 64 lowercase hex"),
        (_body(evaluation_keys_uri=KEYS, encrypted_query_uris=[QUERY],
               encrypted_query_sha256=SHA), "must be a list of 1 sha256"),
    ],
)
def test_bad_requests_name_the_problem(body: bytes, message: str) -> None:
    with pytest.raises(ContractError, match=message):
        parse_request(body)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[" * 10_000 + b"]" * 10_000, "nests JSON too deeply"),
        (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "nests JSON too deeply"),
        (b"[" * 50_000, "nests JSON too deeply"),
        (b'{"evaluation_keys_uri": ' + b"1" * 5000 + b"}", "not valid JSON: Exceeds the limit"),
        (b'{"evaluation_keys_uri": NaN}', "NaN is not a JSON number"),
        (_body(evaluation_keys_uri=KEYS).replace(b"}", b', "evaluation_keys_uri": "x"}'),
         "field\\(s\\) 'evaluation_keys_uri' given more than once"),
        (_body(evaluation_keys_uri=KEYS, encrypted_query_uri=QUERY).decode().encode("utf-16"),
         "it must be UTF-8"),
        (b'{"evaluation_keys_uri": "s3://bucket-a/k\\ud800", "encrypted_query_uri": "s3://b/q"}',
         r"'\\ud800' \(U\+D800\)"),
        (b'{"\\udfff": 1}', r"unknown field\(s\) '\\udfff'"),
        (b'{"evaluation_keys_uri": "s3://bucket-a/k\\u0000", "encrypted_query_uri": "s3://b/q"}',
         r"U\+0000"),
    ],
    ids=["arrays-10000-deep", "objects-10000-deep", "unclosed-50000-deep", "5000-digit-int",
         "NaN", "duplicate-field", "utf-16", "lone-surrogate-uri", "lone-surrogate-field",
         "nul-in-uri"],
)
def test_malformed_bodies_are_contract_errors_not_crashes(body: bytes, message: str) -> None:
    """Class 2 of issue 10: RecursionError and friends escaped parse_request (500)."""
    with pytest.raises(ContractError, match=message):
        parse_request(body)


@pytest.mark.parametrize("field", ["evaluation_keys_uri", "encrypted_query_uri"])
def test_a_uri_with_a_trailing_newline_is_refused(field: str) -> None:
    """Class 4 of issue 10: '$' matched before a final newline, so 'k.bin\\n' read 'k.bin'."""
    doc = {"evaluation_keys_uri": KEYS, "encrypted_query_uri": QUERY}
    doc[field] += "\n"
    with pytest.raises(ContractError, match=rf"'{field}' must look like .*U\+000A"):
        parse_request(json.dumps(doc).encode())


@pytest.mark.parametrize("field", ["model_fingerprint", "evaluation_keys_sha256",
                                   "encrypted_query_sha256"])
def test_a_sha256_with_a_trailing_newline_is_refused(field: str) -> None:
    body = _body(evaluation_keys_uri=KEYS, encrypted_query_uri=QUERY, **{field: SHA + "\n"})
    with pytest.raises(ContractError, match=f"'{field}' must be 64 lowercase hex"):
        parse_request(body)


def test_s3_uri_round_trip() -> None:
    uri = parse_s3_uri("s3://my.bucket-1/a/b/c.bin")
    assert (uri.bucket, uri.key, str(uri)) == ("my.bucket-1", "a/b/c.bin", "s3://my.bucket-1/a/b/c.bin")


@settings(max_examples=60, derandomize=True, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=12))
def test_batch_framing_round_trips(items: list[bytes]) -> None:
    assert unpack_batch(pack_batch(items)) == items


def test_batch_framing_layout_is_the_documented_one() -> None:
    body = pack_batch([b"ab", b""])
    assert body == b"FHEB" + bytes([1]) + struct.pack(">I", 2) + struct.pack(">Q", 2) + b"ab" \
        + struct.pack(">Q", 0)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"FHE", "shorter than its 9-byte header"),
        (b"XXXX" + bytes([1]) + struct.pack(">I", 1), "must start with"),
        (b"FHEB" + bytes([2]) + struct.pack(">I", 1), "must start with"),
        (b"FHEB" + bytes([1]) + struct.pack(">I", 0), "no items"),
        (pack_batch([b"abc"])[:-1], "truncated inside item 0"),
        (pack_batch([b"abc"])[:12], "truncated at the length of item 0"),
        (pack_batch([b"abc"]) + b"!", "1 trailing bytes"),
    ],
)
def test_bad_batch_bodies(body: bytes, message: str) -> None:
    with pytest.raises(ContractError, match=message):
        unpack_batch(body)


def test_batch_over_the_limit_is_its_own_error() -> None:
    with pytest.raises(BatchTooLargeError, match="3 items; the limit is 2"):
        unpack_batch(pack_batch([b"a", b"b", b"c"]), max_items=2)


def test_error_body_round_trips_and_foreign_errors_are_tolerated() -> None:
    assert contract.parse_error_body(contract.error_body(404, "NotFound", "gone")) == (
        404, "NotFound", "gone")
    assert contract.parse_error_body(b"<html>bad gateway</html>") == (
        None, "Unknown", "<html>bad gateway</html>")


@pytest.mark.parametrize(("code", "status", "retryable"), [
    ("EvaluationKeysNotFound", 404, False),   # the client re-uploads, then retries once itself
    ("InputUnavailable", 400, False),         # the input object is missing: it stays missing
    ("InputUnavailable", 503, True),          # S3 did not answer: it may next time
    ("RuntimeStopped", 503, True),
    ("SomeProxyError", 502, True),            # not in the table: 5xx means "try again"
    ("SomeProxyError", 400, False),
    ("Unknown", None, False),
])
def test_retryability_comes_from_the_table(code: str, status: int | None, retryable: bool
                                           ) -> None:
    assert is_retryable(code, status) is retryable
