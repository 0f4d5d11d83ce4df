"""The one S3 grammar and the segment-bounded prefix match (common/s3_location.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.s3_location import (
    MAX_KEY_LENGTH,
    S3LocationError,
    S3Prefix,
    S3Uri,
    is_within,
    parse_s3_prefix,
    parse_s3_uri,
)

CLIENT = parse_s3_prefix("s3://fhe-demo/client")


@pytest.mark.parametrize("uri", [
    "s3://fhe-demo/client-evil/q.bin", "s3://fhe-demo/clientx/q.bin",
    "s3://fhe-demo/client.evil/q.bin", "s3://fhe-demo/client_evil/q.bin",
    "s3://fhe-demo/client", "s3://fhe-demo/Client/q.bin", "s3://fhe-demo/CLIENT/q.bin",
    "s3://fhe-demo-2/client/q.bin", "s3://fhe-dem/client/q.bin", "s3://other/client/q.bin",
])
def test_a_prefix_never_contains_a_sibling_another_case_or_another_bucket(uri: str) -> None:
    assert not CLIENT.contains(parse_s3_uri(uri))


@pytest.mark.parametrize("uri", ["s3://fhe-demo/client/q.bin", "s3://fhe-demo/client/a/b/q.bin",
                                 "s3://fhe-demo/client/client-evil/q.bin"])
def test_a_prefix_contains_the_keys_below_it(uri: str) -> None:
    assert CLIENT.contains(parse_s3_uri(uri))
    assert is_within(parse_s3_uri(uri), [parse_s3_prefix("s3://x-y/z"), CLIENT])


@pytest.mark.parametrize("text", ["s3://fhe-demo/client", "s3://fhe-demo/client/"])
def test_a_trailing_slash_is_optional_and_the_prefix_ends_with_one(text: str) -> None:
    assert parse_s3_prefix(text) == S3Prefix("fhe-demo", "client/")
    assert str(parse_s3_prefix(text)) == "s3://fhe-demo/client/"


def test_a_bucket_prefix_contains_the_whole_bucket_only() -> None:
    bucket = parse_s3_prefix("s3://fhe-demo")
    assert bucket == parse_s3_prefix("s3://fhe-demo/") == S3Prefix("fhe-demo", "")
    assert bucket.contains(S3Uri("fhe-demo", "anything/below"))
    assert not bucket.contains(S3Uri("fhe-demo-2", "anything"))


@pytest.mark.parametrize(("uri", "problem"), [
    ("s3://fhe-demo/client/%2e%2e/client-evil/q.bin", r"'%' \(U\+0025\)"),
    ("s3://fhe-demo/client%2fq.bin", r"'%' \(U\+0025\).*no %-encoding"),
    ("s3://fhe-demo/client/../client-evil/q.bin", r"'\.' or '\.\.' segment"),
    ("s3://fhe-demo/client/./q.bin", r"'\.' or '\.\.' segment"),
    ("s3://fhe-demo/client//q.bin", "empty segment"),
    ("s3://fhe-demo/client/q.bin/", "empty segment"),
    ("s3://fhe-demo//client/q.bin", "empty segment"),
    ("s3://fhe-demo/client\\..\\client-evil\\q.bin", r"'\\\\' \(U\+005C\)"),
    ("s3://fhe-demo/client/q.bin\x00", r"'\\x00' \(U\+0000\)"),
    ("s3://fhe-demo/client/q bin", r"' ' \(U\+0020\)"),
    ("s3://fhe-demo/cl\u0456ent/q.bin", r"'\\u0456' \(U\+0456\)"),
    ("s3://fhe-demo/client/\ud800.bin", r"'\\ud800' \(U\+D800\)"),
    ("s3://fhe-demo/client/*", r"'\*'"),
    ("s3://fhe-demo/client/a,s3://fhe-demo/x", r"','"),
    ("s3://fhe-demo/" + "a" * 1025, "the key has 1025 characters; S3 allows 1024"),
    ("s3://fhe-demo/", "the object key is empty"),
    ("s3://Fhe-demo/client/q.bin", "is not a valid S3 bucket name"),
    ("s3://fhe..demo/client/q.bin", "is not a valid S3 bucket name"),
    ("s3://192.168.1.1/client/q.bin", "is not a valid S3 bucket name"),
    ("S3://fhe-demo/client/q.bin", "must start with 's3://'"),
    ("https://fhe-demo.s3.amazonaws.com/client/q.bin", "must start with 's3://'"),
])
def test_encoded_dot_empty_backslash_control_and_non_ascii_forms_are_refused(
        uri: str, problem: str) -> None:
    with pytest.raises(S3LocationError, match=r"'field' must look like 's3://bucket/key', got .*"
                                              + problem):
        parse_s3_uri(uri, field="field")


@pytest.mark.parametrize("suffix", ["\n", "\r\n", "\r", "\t", "\u2028", "\x85"])
def test_a_trailing_newline_or_other_terminator_is_refused(suffix: str) -> None:
    with pytest.raises(S3LocationError, match="not allowed in a key"):
        parse_s3_uri(f"s3://fhe-demo/client/q.bin{suffix}")
    with pytest.raises(S3LocationError):
        parse_s3_prefix(f"s3://fhe-demo/client{suffix}")
    with pytest.raises(S3LocationError, match="not a valid S3 bucket name"):
        parse_s3_prefix(f"s3://fhe-demo{suffix}")


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(S3LocationError, match=r"bucket 'B' is not a valid.*; character\(s\) '%'"
                                              r".*; the key has an empty segment.*; the key has a"
                                              r" '\.' or '\.\.' segment"):
        parse_s3_uri("s3://B/a//../%2f")


def test_a_prefix_checks_the_keys_it_is_asked_about() -> None:
    # An S3Uri built by hand (not parsed) still never matches with a bad key.
    assert not CLIENT.contains(S3Uri("fhe-demo", "client/../client-evil/q.bin"))
    assert not CLIENT.contains(S3Uri("fhe-demo", "client/q.bin\n"))


@pytest.mark.parametrize("value", [None, 3, b"s3://fhe-demo/client/q.bin"])
def test_non_strings_are_refused(value: object) -> None:
    with pytest.raises(S3LocationError, match="must be a string 's3://bucket/key'"):
        parse_s3_uri(value)


# -- property: the match is exactly "the first segments are the prefix's segments" --------------

_segment = st.text(alphabet="abcAB-_.!'()=0", min_size=1, max_size=6).filter(
    lambda s: s not in (".", ".."))
_key = st.lists(_segment, min_size=1, max_size=5)


@settings(max_examples=300, derandomize=True, database=None)
@given(prefix=st.lists(_segment, max_size=3), key=_key, bucket=st.sampled_from(["b-1", "b-2"]))
def test_contains_means_the_leading_segments_are_equal(prefix: list[str], key: list[str],
                                                       bucket: str) -> None:
    folder = parse_s3_prefix("s3://b-1/" + "/".join(prefix))
    uri = parse_s3_uri(f"s3://{bucket}/{'/'.join(key)}")
    expected = bucket == "b-1" and len(key) > len(prefix) and key[:len(prefix)] == prefix
    assert folder.contains(uri) is expected
    assert str(uri) == f"s3://{bucket}/{'/'.join(key)}"


def test_a_key_of_exactly_the_s3_maximum_is_accepted() -> None:
    """1,024 characters is S3's own limit: accepted, one more refused (the boundary itself)."""
    longest = "k/" + "a" * (MAX_KEY_LENGTH - 2)
    assert parse_s3_uri(f"s3://fhe-demo/{longest}").key == longest
    assert len(longest) == MAX_KEY_LENGTH == 1024
    with pytest.raises(S3LocationError, match="the key has 1025 characters; S3 allows 1024"):
        parse_s3_uri(f"s3://fhe-demo/{longest}a")
