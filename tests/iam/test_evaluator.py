"""The test-only IAM evaluator: deny wins, wildcards, conditions, loud failure on the unknown."""

from __future__ import annotations

import pytest

from tests.iam.evaluator import Decision, Request, UnsupportedPolicyError, evaluate


def _policy(*statements: dict) -> list[dict]:
    return [{"Version": "2012-10-17", "Statement": list(statements)}]


ALLOW_PUT = {"Effect": "Allow", "Action": "s3:Put*", "Resource": "arn:aws:s3:::b/p/*"}
DENY_NO_SSE = {"Effect": "Deny", "Action": "s3:PutObject", "Resource": "*",
               "Condition": {"Null": {"s3:x-amz-server-side-encryption": "true"}}}
DENY_HTTP = {"Effect": "Deny", "Action": "s3:*", "Resource": "*",
             "Condition": {"Bool": {"aws:SecureTransport": "false"}}}
TLS_SSE = {"aws:securetransport": True, "s3:x-amz-server-side-encryption": "AES256"}


@pytest.mark.parametrize(("action", "resource", "context", "decision"), [
    ("s3:PutObject", "arn:aws:s3:::b/p/k", TLS_SSE, Decision.ALLOW),
    ("S3:putobject", "arn:aws:s3:::b/p/k", TLS_SSE, Decision.ALLOW),  # actions ignore case
    ("s3:PutObject", "arn:aws:s3:::b/P/k", TLS_SSE, Decision.IMPLICIT_DENY),  # resources don't
    ("s3:PutObject", "arn:aws:s3:::b/q/k", TLS_SSE, Decision.IMPLICIT_DENY),
    ("s3:GetObject", "arn:aws:s3:::b/p/k", TLS_SSE, Decision.IMPLICIT_DENY),
    ("s3:PutObject", "arn:aws:s3:::b/p/k", {"aws:securetransport": True}, Decision.EXPLICIT_DENY),
    ("s3:PutObject", "arn:aws:s3:::b/p/k", {**TLS_SSE, "aws:securetransport": False},
     Decision.EXPLICIT_DENY),
])
def test_decisions(action: str, resource: str, context: dict, decision: Decision) -> None:
    policy = _policy(ALLOW_PUT, DENY_NO_SSE, DENY_HTTP)
    assert evaluate(policy, Request(action, resource, context)) is decision


def test_question_mark_and_not_action() -> None:
    policy = _policy({"Effect": "Allow", "NotAction": "iam:*", "Resource": "arn:aws:s3:::b?"})
    assert evaluate(policy, Request("s3:ListBucket", "arn:aws:s3:::b1")) is Decision.ALLOW
    assert evaluate(policy, Request("s3:ListBucket", "arn:aws:s3:::b12")) is Decision.IMPLICIT_DENY
    assert evaluate(policy, Request("iam:PassRole", "arn:aws:s3:::b1")) is Decision.IMPLICIT_DENY


def test_missing_key_fails_positive_and_satisfies_negated_operators() -> None:
    allow = {"Effect": "Allow", "Action": "iam:PassRole", "Resource": "*",
             "Condition": {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}}
    deny = {"Effect": "Deny", "Action": "s3:PutObject", "Resource": "*",
            "Condition": {"StringNotEquals": {"s3:x-amz-server-side-encryption": "AES256"}}}
    assert evaluate(_policy(allow), Request("iam:PassRole", "r")) is Decision.IMPLICIT_DENY
    ok = Request("iam:PassRole", "r", {"iam:passedtoservice": "sagemaker.amazonaws.com"})
    assert evaluate(_policy(allow), ok) is Decision.ALLOW
    put = {"Effect": "Allow", "Action": "s3:PutObject", "Resource": "*"}
    assert evaluate(_policy(put, deny), Request("s3:PutObject", "o")) is Decision.EXPLICIT_DENY


@pytest.mark.parametrize("condition", [
    {"StringEquals": {"aws:PrincipalTag/team": "ml"}},        # unsupported key
    {"DateGreaterThan": {"aws:SecureTransport": "x"}},         # unsupported operator
    {"ForAnyValue:StringLike": {"s3:prefix": "a"}},            # set operators
    {"NullIfExists": {"s3:prefix": "true"}},
])
def test_unsupported_conditions_fail_loudly(condition: dict) -> None:
    statement = {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*",
                 "Condition": condition}
    with pytest.raises(UnsupportedPolicyError, match="unsupported condition"):
        evaluate(_policy(statement), Request("s3:GetObject", "o"))


def test_placeholders_and_principals_are_rejected() -> None:
    bad = {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
           "Resource": "arn:aws:s3:::${Bucket}/*"}
    with pytest.raises(UnsupportedPolicyError, match=r"Principal.*placeholder"):
        evaluate(_policy(bad), Request("s3:GetObject", "o"))
