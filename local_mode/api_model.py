"""``InvokeEndpointAsync``'s input constraints, read from botocore's sagemaker-runtime model.

The local runtime checks every member of a request (the ``X-Amzn-SageMaker-*`` headers, the
endpoint name in the path, the body) against the lengths, patterns and ranges AWS publishes
in ``botocore/data/sagemaker-runtime/<version>/service-2.json``, so it refuses what SageMaker
refuses and cannot drift from the API when botocore is upgraded.

The model's patterns are Java regular expressions; :func:`java_pattern` translates the
constructs they use (``\\p{ASCII}``, ``\\p{Print}``, ``\\A``, ``\\z``, Java's ``.``, ...) and raises
:class:`UnsupportedPatternError` for anything it does not know, so a new construct fails
loudly instead of validating wrongly. AWS matches a member against its whole pattern (Java's
``Matcher.matches``): here that is ``re.fullmatch`` with ASCII semantics for ``\\s``/``\\w``.

Violations are reported like AWS's ``ValidationError``: one message, every violation::

    2 validation errors detected: Value 'x...' at 'inferenceId' failed to satisfy constraint:
    Member must have length less than or equal to 64; Value at 'customAttributes' failed ...

(the value of a member the model marks ``sensitive`` is not echoed).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SERVICE_NAME = "sagemaker-runtime"
OPERATION_NAME = "InvokeEndpointAsync"

# Java's POSIX character classes (US-ASCII, Java's default), as Python class contents.
_JAVA_CLASSES = {
    "ASCII": r"\x00-\x7f",
    "Lower": "a-z",
    "Upper": "A-Z",
    "Alpha": "a-zA-Z",
    "Digit": "0-9",
    "Alnum": "a-zA-Z0-9",
    "XDigit": "0-9a-fA-F",
    "Punct": r"!-/:-@\[-`{-~",
    "Graph": r"\x21-\x7e",
    "Print": r"\x20-\x7e",
    "Blank": r" \t",
    "Cntrl": r"\x00-\x1f\x7f",
    "Space": r" \t\n\x0b\f\r",
}
# Escapes that mean the same in both dialects (with re.ASCII), and the ones that differ.
_SAME_ESCAPES = frozenset("AbBdDsSwWnrtf.\\/-[](){}*+?|^$'!_:")
_RENAMED_ESCAPES = {"z": r"\Z"}
# Java's "." excludes every line terminator, not only "\n".
_JAVA_DOT = "[^\n\r\x85\u2028\u2029]"


class UnsupportedPatternError(ValueError):
    """The service model uses a Java regex construct this translator does not know."""


class ConstraintViolation(ValueError):
    """Members that break the model's constraints; the message is AWS's ValidationError text."""


@functools.cache
def java_pattern(text: str) -> re.Pattern[str]:
    """Compile a service-model (Java) regex as a Python regex with the same meaning.

    Raises:
        UnsupportedPatternError: a construct without a known translation.
    """
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            nxt = text[i + 1 : i + 2]
            if nxt in ("p", "P"):
                end = text.find("}", i)
                name = text[i + 3 : end] if text[i + 2 : i + 3] == "{" and end > 0 else ""
                if name not in _JAVA_CLASSES:
                    raise UnsupportedPatternError(f"\\{nxt}{{{name}}} in {text!r}")
                body = _JAVA_CLASSES[name]
                negate = "^" if nxt == "P" else ""
                if in_class and negate:
                    raise UnsupportedPatternError(f"\\P{{{name}}} inside a class in {text!r}")
                out.append(body if in_class else f"[{negate}{body}]")
                i = end + 1
                continue
            if nxt in _RENAMED_ESCAPES:
                out.append(_RENAMED_ESCAPES[nxt])
            elif nxt and nxt in _SAME_ESCAPES:
                out.append(ch + nxt)
            else:
                raise UnsupportedPatternError(f"escape \\{nxt} in {text!r}")
            i += 2
            continue
        if in_class and text.startswith("&&", i):
            raise UnsupportedPatternError(f"class intersection in {text!r}")
        if ch == "[" and not in_class:
            in_class = True
        elif ch == "]" and in_class:
            in_class = False
        out.append(_JAVA_DOT if ch == "." and not in_class else ch)
        i += 1
    return re.compile("".join(out), re.ASCII)


@dataclass(frozen=True)
class MemberRule:
    """One input member of the operation and its constraints.

    Attributes:
        name: The member name (``InferenceId``).
        location: ``header``, ``uri`` or ``body``.
        wire_name: The header or URI label carrying it (``X-Amzn-SageMaker-Inference-Id``).
        kind: ``string``, ``integer`` or ``blob``.
        minimum: Least length (strings, blobs) or value (integers), if constrained.
        maximum: Greatest length or value, if constrained.
        pattern: The model's pattern text, if any (Java syntax, shown in errors).
        sensitive: The model marks the member sensitive: errors do not echo its value.
        required: The operation requires the member.
    """

    name: str
    location: str
    wire_name: str
    kind: str
    minimum: int | None
    maximum: int | None
    pattern: str | None
    sensitive: bool
    required: bool

    @property
    def path(self) -> str:
        """The member as AWS names it in validation errors (``inferenceId``)."""
        return self.name[:1].lower() + self.name[1:]

    def check(self, value: str | bytes) -> tuple[Any, list[str]]:
        """Return ``(typed value, violated constraints)`` for a present member."""
        if self.kind == "integer":
            if not isinstance(value, str) or not re.fullmatch(r"-?[0-9]{1,10}", value):
                return None, ["Member must be an integer"]
            number = int(value)
            return number, self._bounds(number, "value")
        problems = self._bounds(len(value), "length")
        pattern = None if self.pattern is None else java_pattern(self.pattern)
        if pattern is not None and isinstance(value, str) and not pattern.fullmatch(value):
            problems.append(f"Member must satisfy regular expression pattern: {self.pattern}")
        return value, problems

    def _bounds(self, measure: int, what: str) -> list[str]:
        problems = []
        if self.minimum is not None and measure < self.minimum:
            problems.append(f"Member must have {what} greater than or equal to {self.minimum}")
        if self.maximum is not None and measure > self.maximum:
            problems.append(f"Member must have {what} less than or equal to {self.maximum}")
        return problems

    def describe(self, value: str | bytes, constraint: str) -> str:
        """One violation, worded like AWS."""
        if self.sensitive or isinstance(value, bytes):
            return f"Value at '{self.path}' failed to satisfy constraint: {constraint}"
        return f"Value '{value}' at '{self.path}' failed to satisfy constraint: {constraint}"


@dataclass(frozen=True)
class OperationRules:
    """Every input member of one operation, in the model's order."""

    members: tuple[MemberRule, ...]

    def member(self, name: str) -> MemberRule:
        """The rule of member ``name``."""
        return next(rule for rule in self.members if rule.name == name)

    def validate(self, values: Mapping[str, str | bytes | None]) -> dict[str, Any]:
        """Check the given members (by member name; None = absent); return them typed.

        Raises:
            ConstraintViolation: every violated constraint, in AWS's words.
        """
        typed: dict[str, Any] = {}
        violations: list[str] = []
        for rule in self.members:
            value = values.get(rule.name)
            if value is None:
                if rule.required:
                    violations.append(f"Value null at '{rule.path}' failed to satisfy"
                                      " constraint: Member must not be null")
                continue
            typed[rule.name], problems = rule.check(value)
            violations += [rule.describe(value, problem) for problem in problems]
        if violations:
            count = len(violations)
            raise ConstraintViolation(f"{count} validation error{'s' if count > 1 else ''}"
                                      f" detected: {'; '.join(violations)}")
        return typed


@functools.cache
def operation_rules(operation: str = OPERATION_NAME) -> OperationRules:
    """The rules of ``operation`` from botocore's installed sagemaker-runtime model."""
    import botocore.session

    model = botocore.session.get_session().get_service_model(SERVICE_NAME)
    shape = model.operation_model(operation).input_shape
    rules = []
    for name, member in shape.members.items():
        meta = member.metadata
        location = member.serialization.get("location", "body")
        pattern = meta.get("pattern")
        if pattern is not None:
            java_pattern(pattern)  # refuse an untranslatable model now, not per request
        rules.append(MemberRule(
            name=name, location=location,
            wire_name=member.serialization.get("name", name), kind=member.type_name,
            minimum=meta.get("min"), maximum=meta.get("max"), pattern=pattern,
            sensitive=bool(meta.get("sensitive")), required=name in shape.required_members,
        ))
    return OperationRules(tuple(rules))
