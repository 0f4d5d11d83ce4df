"""InvokeEndpointAsync's constraints read from botocore's model (local_mode/api_model.py)."""

from __future__ import annotations

import pytest

from local_mode.api_model import (
    ConstraintViolation,
    UnsupportedPatternError,
    java_pattern,
    operation_rules,
)


@pytest.mark.parametrize(("pattern", "accepted", "refused"), [
    (r"\p{ASCII}*", ["", "a b\x00\x7f"], ["\x80", "caf\xe9"]),
    (r"\A\S[\p{Print}]*\z", ["a", "\x7fb c", "~"], ["", " a", "a\n", "a\x7f", "a\t", "ab\xe9"]),
    (r"^(https|s3)://([^/]+)/?(.*)$", ["s3://b/k", "https://h", "s3://b"],
     ["s3://b/k\n", "s3://b/k\r", "s3://b/k\u2028", "s3://b/k\x85", "ftp://b/k", "s3:///k"]),
    (r"^(?!.*\..*\.)[a-zA-Z0-9][a-zA-Z0-9-_\.]*$", ["a", "a.out", "a-_b.c"],
     ["a.b.c", "..", "-a", "a/b", "a b", "a.out\n"]),
    (r"^(?!s3:|https:)[a-zA-Z0-9!_.*'()/-]+$", ["a/b", "*'()", "../x"],
     ["s3:x", "https:x", "http:x", "a b", ""]),
])
def test_java_patterns_keep_their_java_meaning_under_fullmatch(
        pattern: str, accepted: list[str], refused: list[str]) -> None:
    compiled = java_pattern(pattern)
    assert [v for v in accepted if not compiled.fullmatch(v)] == []
    assert [v for v in refused if compiled.fullmatch(v)] == []


@pytest.mark.parametrize("pattern", [r"\p{Alien}", r"[\P{ASCII}]", r"\Qa\E",
                                     r"[a-z&&[^b]]", r"\Z", r"\h", r"\R", r"\G"])
def test_an_unknown_java_construct_is_refused_not_guessed(pattern: str) -> None:
    with pytest.raises(UnsupportedPatternError):
        java_pattern(pattern)


def test_every_header_member_of_the_model_is_checked() -> None:
    rules = operation_rules()
    headers = [r for r in rules.members if r.location == "header"]
    assert {r.name for r in headers} >= {"CustomAttributes", "InferenceId", "Filename",
                                         "InputLocation", "RequestTTLSeconds"}
    for rule in headers:  # one past each bound fails, naming the member
        if rule.maximum is None:
            continue
        value = str(rule.maximum + 1) if rule.kind == "integer" else "a" * (rule.maximum + 1)
        with pytest.raises(ConstraintViolation, match=rf"validation errors? detected: .*at"
                                                      rf" '{rule.path}' failed to satisfy"
                                                      rf" constraint: Member must have (length|"
                                                      rf"value) less than or equal to"
                                                      rf" {rule.maximum}"):
            rules.validate({"EndpointName": "e", rule.name: value})


def test_violations_are_worded_like_aws_and_sensitive_values_are_not_echoed() -> None:
    rules = operation_rules()
    assert rules.member("CustomAttributes").sensitive
    with pytest.raises(ConstraintViolation) as info:
        rules.validate({"EndpointName": "bad_name", "CustomAttributes": "secret\xe9",
                        "InvocationTimeoutSeconds": "6_0"})
    assert str(info.value) == (
        "3 validation errors detected: Value 'bad_name' at 'endpointName' failed to satisfy"
        " constraint: Member must satisfy regular expression pattern:"
        " ^[a-zA-Z0-9](-*[a-zA-Z0-9])*; Value at 'customAttributes' failed to satisfy"
        " constraint: Member must satisfy regular expression pattern: \\p{ASCII}*; Value '6_0'"
        " at 'invocationTimeoutSeconds' failed to satisfy constraint: Member must be an integer")


def test_a_missing_required_member_and_typed_values() -> None:
    rules = operation_rules()
    with pytest.raises(ConstraintViolation, match="Value null at 'endpointName' failed to satisfy"
                                                  " constraint: Member must not be null"):
        rules.validate({})
    assert rules.validate({"EndpointName": "e", "RequestTTLSeconds": "0060"}) == {
        "EndpointName": "e", "RequestTTLSeconds": 60}
