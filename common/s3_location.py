"""S3 locations: the one grammar of ``s3://bucket/key`` and the one segment-bounded prefix match.

Everything in the kit that reads an ``s3://`` string uses this module and nothing else: the
server's allow-list (``FHE_ALLOWED_S3_PREFIXES``), the wire contract, the local runtime's
``InputLocation`` check and output paths, the client's ``s3_prefix``, the launch scripts'
locations, the lifecycle rules and the IAM renderer (``iam/render.py``, whose ``bucket/prefix/*``
resources are the same rule written as IAM). Two types, one per idea: :class:`S3Uri` (one
object) and :class:`S3Prefix` (a folder). It depends on the standard library only.

The grammar is deliberately narrower than what S3 stores, so that one string has one meaning
for every party that reads it (this code, botocore, S3, IAM), checked with full-match
semantics before any S3 request is made::

    uri     = "s3://" bucket "/" key
    bucket  = 3-63 of [a-z0-9.-], first and last a letter or digit, no "..", not an IPv4 address
    key     = segment *("/" segment)            ; at most 1024 characters
    segment = 1*( ALPHA / DIGIT / "!" / "-" / "_" / "." / "'" / "(" / ")" / "=" )
              ; but never "." or ".."

So a key has no empty segment (``//``), no dot-segment, no percent-encoding (``%2f``), no
backslash, no whitespace or control character, no ``*``/``?``/``$`` (IAM wildcards and
variables), no ``,`` (the allow-list separator) and nothing outside ASCII (no look-alikes, no
lone surrogates). These are S3's "safe characters" (minus ``*``) plus ``=``.

A prefix ``s3://bucket/a/b`` (a trailing ``/`` is optional) contains exactly the keys whose
segments start with ``a``, ``b``: ``s3://bucket/a/b`` never contains ``s3://bucket/a/b-x/k``
nor ``s3://bucket/a/b`` itself (an object, not a folder). ``s3://bucket`` contains the whole
bucket. Matching is case-sensitive, like S3 keys.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

SCHEME = "s3://"
MAX_KEY_LENGTH = 1024
SEGMENT_CHARACTERS = "letters, digits and ! - _ . ' ( ) ="
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]", re.ASCII)
_SEGMENT_CHAR_RE = re.compile(r"[A-Za-z0-9!\-_.'()=]", re.ASCII)
_DOT_SEGMENTS = frozenset({".", ".."})


class S3LocationError(ValueError):
    """A string that is not an ``s3://`` location of the grammar above."""


@dataclass(frozen=True)
class S3Uri:
    """One object, ``s3://bucket/key``."""

    bucket: str
    key: str

    @property
    def path(self) -> str:
        """``bucket/key``: the URI without its scheme (an object ARN's resource part)."""
        return f"{self.bucket}/{self.key}"

    def __str__(self) -> str:
        return f"{SCHEME}{self.path}"


@dataclass(frozen=True)
class S3Prefix:
    """A folder of a bucket: ``prefix`` is ``""`` (the whole bucket) or ends with ``/``."""

    bucket: str
    prefix: str

    def contains(self, uri: S3Uri) -> bool:
        """True when ``uri`` is a valid object key inside this folder (segment-bounded)."""
        return (uri.bucket == self.bucket and uri.key.startswith(self.prefix)
                and not _key_problems(uri.key))

    def join(self, *parts: str) -> S3Uri:
        """The object ``parts`` (joined by ``/``, empty ones skipped) below this folder.

        The parts are taken as given (``parse_s3_uri(str(result))`` checks the grammar).
        """
        return S3Uri(self.bucket, self.prefix + "/".join(part for part in parts if part))

    @property
    def path(self) -> str:
        """``bucket/prefix``: the folder without its scheme (an ARN's resource before ``*``)."""
        return f"{self.bucket}/{self.prefix}"

    def __str__(self) -> str:
        return f"{SCHEME}{self.path}"


def is_s3_location(text: str) -> bool:
    """True when ``text`` is meant as an S3 location (starts with ``s3://``), not a local path."""
    return text.startswith(SCHEME)


def is_within(uri: S3Uri, prefixes: Iterable[S3Prefix]) -> bool:
    """True when at least one of ``prefixes`` contains ``uri``."""
    return any(prefix.contains(uri) for prefix in prefixes)


def parse_s3_uri(text: Any, *, field: str = "uri") -> S3Uri:
    """Parse one object location ``s3://bucket/key``.

    Raises:
        S3LocationError: not a string of the grammar; the message lists every problem.
    """
    bucket, key = _split(text, field=field, form="s3://bucket/key")
    problems = _bucket_problems(bucket) + _key_problems(key)
    if problems:
        raise _error(text, field, "s3://bucket/key", problems)
    return S3Uri(bucket, key)


def parse_s3_prefix(text: Any, *, field: str = "prefix") -> S3Prefix:
    """Parse a folder ``s3://bucket``, ``s3://bucket/`` or ``s3://bucket/a/b`` (``/`` optional).

    Raises:
        S3LocationError: not a string of the grammar; the message lists every problem.
    """
    bucket, key = _split(text, field=field, form="s3://bucket/prefix")
    key = key.removesuffix("/")
    problems = _bucket_problems(bucket) + (_key_problems(key) if key else [])
    if problems:
        raise _error(text, field, "s3://bucket/prefix", problems)
    return S3Prefix(bucket, f"{key}/" if key else "")


def _split(text: Any, *, field: str, form: str) -> tuple[str, str]:
    if not isinstance(text, str):
        raise S3LocationError(f"'{field}' must be a string '{form}', got {type(text).__name__}")
    if not text.startswith(SCHEME):
        raise _error(text, field, form, [f"it must start with {SCHEME!r}"])
    bucket, _, key = text[len(SCHEME):].partition("/")
    return bucket, key


def _bucket_problems(bucket: str) -> list[str]:
    if not _BUCKET_RE.fullmatch(bucket) or ".." in bucket or _is_ipv4(bucket):
        return [f"bucket {bucket[:80]!a} is not a valid S3 bucket name (3-63 lowercase"
                " letters, digits, '.' and '-', starting and ending with a letter or digit)"]
    return []


def _is_ipv4(name: str) -> bool:
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return False
    return True


def _key_problems(key: str) -> list[str]:
    """Every way ``key`` breaks the grammar (empty list: a valid key)."""
    if not key:
        return ["the object key is empty"]
    problems: list[str] = []
    if len(key) > MAX_KEY_LENGTH:
        problems.append(f"the key has {len(key)} characters; S3 allows {MAX_KEY_LENGTH}")
    bad = sorted({ch for ch in key if ch != "/" and not _SEGMENT_CHAR_RE.fullmatch(ch)})
    if bad:
        shown = ", ".join(f"{ch!a} (U+{ord(ch):04X})" for ch in bad[:8])
        problems.append(f"character(s) {shown} are not allowed in a key (only "
                        f"{SEGMENT_CHARACTERS}, segments joined by '/'; no %-encoding)")
    segments = key.split("/")
    if "" in segments:
        problems.append("the key has an empty segment ('//', or a leading or trailing '/')")
    if _DOT_SEGMENTS.intersection(segments):
        problems.append("the key has a '.' or '..' segment")
    return problems


def _error(text: str, field: str, form: str, problems: list[str]) -> S3LocationError:
    return S3LocationError(f"'{field}' must look like '{form}', got {text[:200]!a}: "
                           + "; ".join(problems))
