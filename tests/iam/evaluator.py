"""A small, strict IAM policy evaluator for the tests: Allow/Deny, wildcards, a few conditions.

It implements the identity-policy part of AWS's evaluation logic that the kit's policies use:
an explicit ``Deny`` wins, otherwise any matching ``Allow`` allows, otherwise the request is
implicitly denied. ``Action``/``NotAction`` and ``Resource``/``NotResource`` match with IAM's
``*``/``?`` wildcards (actions case-insensitively, resources case-sensitively).

Only the condition operators and keys listed in :data:`SUPPORTED_OPERATORS` and
:data:`SUPPORTED_KEYS` are understood. A policy that uses anything else is rejected with
:class:`UnsupportedPolicyError` before any request is evaluated, so an unknown condition can
never silently pass (or silently deny).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

SUPPORTED_KEYS = frozenset(
    {
        "aws:securetransport",
        "s3:x-amz-server-side-encryption",
        "s3:prefix",
        "iam:passedtoservice",
        "iam:awsservicename",
        "application-autoscaling:service-namespace",
        "application-autoscaling:scalable-dimension",
        "cloudwatch:namespace",
    }
)
"""Condition keys (lower case) that :class:`Request` contexts can carry."""

_STRING_OPERATORS = {
    "StringEquals": (False, False, False),  # (negated, like, ignore_case)
    "StringNotEquals": (True, False, False),
    "StringEqualsIgnoreCase": (False, False, True),
    "StringNotEqualsIgnoreCase": (True, False, True),
    "StringLike": (False, True, False),
    "StringNotLike": (True, True, False),
    "ArnEquals": (False, False, False),
    "ArnNotEquals": (True, False, False),
    "ArnLike": (False, True, False),
    "ArnNotLike": (True, True, False),
}
SUPPORTED_OPERATORS = frozenset({*_STRING_OPERATORS, "Bool", "Null"})
"""Condition operators understood, each also with the ``IfExists`` suffix (except ``Null``)."""


class UnsupportedPolicyError(ValueError):
    """The policy uses an element, operator or condition key this evaluator does not implement."""


class Decision(enum.Enum):
    """The outcome of evaluating one request against a set of policies."""

    ALLOW = "Allow"
    EXPLICIT_DENY = "ExplicitDeny"
    IMPLICIT_DENY = "ImplicitDeny"


@dataclass(frozen=True)
class Request:
    """One authorisation request: an IAM action on a resource ARN, with its condition context.

    Args:
        action: ``service:Operation``, e.g. ``s3:PutObject``.
        resource: the resource ARN, or ``*`` for actions without resource-level permissions.
        context: condition keys (lower case) to their values; absent keys are not in the request.
        source: a human-readable origin (the recorded API call), for error messages.
    """

    action: str
    resource: str
    context: Mapping[str, str | bool] = field(default_factory=dict)
    source: str = ""

    def __str__(self) -> str:
        ctx = ", ".join(f"{k}={v}" for k, v in sorted(self.context.items()))
        origin = f" (from {self.source})" if self.source else ""
        return f"{self.action} on {self.resource} [{ctx}]{origin}"


def wildcard_regex(pattern: str, *, ignore_case: bool = False) -> re.Pattern[str]:
    """Compile an IAM wildcard pattern (``*`` any run, ``?`` one character) to a regex."""
    parts = (".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.compile("".join(parts) + r"\Z", re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _check_string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise UnsupportedPolicyError(f"{where}: expected a string, got {value!r}")
    if "${" in value:
        raise UnsupportedPolicyError(
            f"{where}: {value!r} contains a policy variable or an unrendered placeholder"
        )
    return value


def validate_policy(policy: Mapping[str, Any], *, name: str = "policy") -> None:
    """Reject any policy this evaluator cannot evaluate faithfully.

    Raises:
        UnsupportedPolicyError: naming every unsupported element, operator and key found.
    """
    problems: list[str] = []
    if policy.get("Version") != "2012-10-17":
        problems.append(f"{name}: Version must be '2012-10-17'")
    for index, stmt in enumerate(_as_list(policy.get("Statement", []))):
        where = f"{name} statement {index} ({stmt.get('Sid', 'no Sid')})"
        for element in ("Principal", "NotPrincipal"):
            if element in stmt:
                problems.append(f"{where}: {element} (resource/trust policies) is not evaluated")
        if stmt.get("Effect") not in ("Allow", "Deny"):
            problems.append(f"{where}: Effect must be Allow or Deny")
        if ("Action" in stmt) == ("NotAction" in stmt):
            problems.append(f"{where}: exactly one of Action/NotAction is required")
        if ("Resource" in stmt) == ("NotResource" in stmt):
            problems.append(f"{where}: exactly one of Resource/NotResource is required")
        for operator, block in stmt.get("Condition", {}).items():
            base = operator.removesuffix("IfExists") if operator != "Null" else operator
            if base not in SUPPORTED_OPERATORS or (
                operator.endswith("IfExists") and base == "Null"
            ):
                problems.append(f"{where}: unsupported condition operator {operator!r}")
            for key in block:
                if key.lower() not in SUPPORTED_KEYS:
                    problems.append(f"{where}: unsupported condition key {key!r}")
        try:
            for element in ("Action", "NotAction", "Resource", "NotResource"):
                for value in _as_list(stmt.get(element, [])):
                    _check_string(value, f"{where} {element}")
        except UnsupportedPolicyError as exc:
            problems.append(str(exc))
    if problems:
        raise UnsupportedPolicyError("; ".join(problems))


def _matches_any(patterns: Iterable[str], value: str, *, ignore_case: bool) -> bool:
    return any(wildcard_regex(p, ignore_case=ignore_case).match(value) for p in patterns)


def _string_condition(operator: str, expected: list[Any], actual: Any) -> bool:
    negated, like, ignore_case = _STRING_OPERATORS[operator]
    text = str(actual).lower() if isinstance(actual, bool) else str(actual)
    if like:
        hit = _matches_any((str(e) for e in expected), text, ignore_case=ignore_case)
    elif ignore_case:
        hit = text.lower() in (str(e).lower() for e in expected)
    else:
        hit = text in (str(e) for e in expected)
    return hit != negated


def _condition_holds(operator: str, key: str, expected: Any, context: Mapping[str, Any]) -> bool:
    values = _as_list(expected)
    present = key.lower() in context
    actual = context.get(key.lower())
    if operator == "Null":
        wants_absent = str(values[0]).lower() == "true"
        return wants_absent != present
    if_exists = operator.endswith("IfExists")
    base = operator.removesuffix("IfExists")
    if not present:
        # AWS: a missing key fails positive operators and satisfies negated ones.
        return if_exists or (base in _STRING_OPERATORS and _STRING_OPERATORS[base][0])
    if base == "Bool":
        return str(actual).lower() in (str(v).lower() for v in values)
    return _string_condition(base, values, actual)


def _statement_applies(stmt: Mapping[str, Any], request: Request) -> bool:
    if "Action" in stmt:
        action_ok = _matches_any(_as_list(stmt["Action"]), request.action, ignore_case=True)
    else:
        action_ok = not _matches_any(_as_list(stmt["NotAction"]), request.action, ignore_case=True)
    if not action_ok:
        return False
    if "Resource" in stmt:
        resource_ok = _matches_any(_as_list(stmt["Resource"]), request.resource, ignore_case=False)
    else:
        resource_ok = not _matches_any(
            _as_list(stmt["NotResource"]), request.resource, ignore_case=False
        )
    if not resource_ok:
        return False
    return all(
        _condition_holds(operator, key, expected, request.context)
        for operator, block in stmt.get("Condition", {}).items()
        for key, expected in block.items()
    )


def evaluate(policies: Sequence[Mapping[str, Any]], request: Request) -> Decision:
    """Evaluate one request against identity policies: explicit Deny > Allow > implicit Deny.

    Raises:
        UnsupportedPolicyError: if any policy uses something this evaluator does not implement.
    """
    for index, policy in enumerate(policies):
        validate_policy(policy, name=f"policy {index}")
    unknown = sorted(k for k in request.context if k not in SUPPORTED_KEYS)
    if unknown:
        raise UnsupportedPolicyError(f"request context has unsupported keys {unknown}")
    statements = [s for p in policies for s in _as_list(p["Statement"])]
    matching = [s for s in statements if _statement_applies(s, request)]
    if any(s["Effect"] == "Deny" for s in matching):
        return Decision.EXPLICIT_DENY
    if matching:
        return Decision.ALLOW
    return Decision.IMPLICIT_DENY
