"""Bounded, allow-listed, verified S3 reads for the server."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from common.contract import sha256_hex
from common.s3_access import S3Failure, classify, error_code
from common.s3_location import S3Prefix, S3Uri, is_within
from inference.errors import (
    AccessDenied,
    IntegrityError,
    ObjectNotFound,
    PayloadTooLarge,
    ServingError,
    StorageUnavailable,
)
from inference.settings import ENV_ALLOWED_PREFIXES, Settings

INVALID_RANGE = "InvalidRange"  # S3's 416 error code


@dataclass(frozen=True)
class ObjectVersion:
    """What S3 says identifies the stored bytes of an object: a HEAD or GET answer's headers.

    Any write of an object changes its ETag (or, in a versioned bucket, its VersionId), so two
    answers with equal versions describe the same bytes.
    """

    etag: str
    version_id: str | None
    size: int

    @classmethod
    def of(cls, response: Mapping[str, Any]) -> ObjectVersion:
        """The version described by a ``head_object`` / ``get_object`` response (ranged too)."""
        return cls(etag=str(response.get("ETag", "")), version_id=response.get("VersionId"),
                   size=_whole_size(response))

    @property
    def token(self) -> str:
        """One string naming this version (what a cache entry stores and compares)."""
        return json.dumps([self.etag, self.version_id, self.size])


@contextmanager
def _translated(uri: S3Uri, what: str) -> Iterator[None]:
    """Turn botocore errors raised inside the block into the server's errors."""
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise _translate(exc, uri, what) from exc


@dataclass(frozen=True)
class SizeLimit:
    """The largest object a read accepts, and what the caller should do about a bigger one.

    Attributes:
        max_bytes: Objects of more bytes are refused (413) before their body is read.
        fix: The end of the refusal's message: why the limit, how to send a fitting object.
    """

    max_bytes: int
    fix: str


def make_s3_client(settings: Settings) -> Any:
    """A boto3 S3 client with the server's timeouts and a short retry budget."""
    config = Config(
        connect_timeout=settings.s3_connect_timeout,
        read_timeout=settings.s3_read_timeout,
        retries={"max_attempts": 2, "mode": "standard"},
        max_pool_connections=16,
    )
    return boto3.client("s3", endpoint_url=settings.s3_endpoint_url, config=config)


class S3Store:
    """Reads S3 objects the server is allowed to read, within a size limit.

    Args:
        client: A boto3 S3 client.
        allowed_prefixes: Readable folders, matched segment by segment
            (:meth:`S3Prefix.contains`); empty = nothing is readable.
        max_object_bytes: Largest object read; bigger ones raise :class:`PayloadTooLarge`.
    """

    def __init__(self, client: Any, *, allowed_prefixes: Iterable[S3Prefix],
                 max_object_bytes: int) -> None:
        self._client = client
        self._allowed = tuple(allowed_prefixes)
        self.default_limit = SizeLimit(
            max_object_bytes, "raise FHE_MAX_OBJECT_BYTES on the endpoint to accept it")

    def limit(self, max_bytes: int, fix: str) -> SizeLimit:
        """``max_bytes`` with its ``fix``, or the store's own limit when that is smaller."""
        if max_bytes < self.default_limit.max_bytes:
            return SizeLimit(max_bytes, fix)
        return self.default_limit

    def check_allowed(self, uris: Iterable[S3Uri]) -> None:
        """Refuse, in one error, every URI outside the allow-list.

        Raises:
            AccessDenied: at least one URI is not under an allowed prefix.
        """
        refused = sorted({str(u) for u in uris if not is_within(u, self._allowed)})
        if not refused:
            return
        allowed = ", ".join(map(str, self._allowed)) or "nothing (the list is empty)"
        raise AccessDenied(
            f"the server may not read {', '.join(refused)}: upload under one of the allowed "
            f"prefixes ({allowed}) or add the location to {ENV_ALLOWED_PREFIXES}"
        )

    def read(self, uri: S3Uri, *, expected_sha256: str | None = None, what: str = "object",
             limit: SizeLimit | None = None) -> bytes:
        """Read one allowed object within ``limit``, verifying its sha256 when given.

        A HEAD comes first: an object over the limit is refused before any GET (no byte of it
        leaves S3). For objects read once per key set; per-request objects use
        :meth:`read_ranged`.

        Raises:
            AccessDenied, ObjectNotFound, PayloadTooLarge, IntegrityError, StorageUnavailable.
        """
        self.version(uri, what=what, limit=limit)
        data, _ = self.read_versioned(uri, what=what, limit=limit)
        return _verified(uri, data, expected_sha256, what)

    def read_ranged(self, uri: S3Uri, *, expected_sha256: str | None = None,
                    what: str = "object", limit: SizeLimit | None = None) -> bytes:
        """Read one allowed object within ``limit`` in one round trip (a ranged GET).

        The GET asks for the first ``limit + 1`` bytes only, so S3 never sends more than that;
        its ``Content-Range`` names the whole object's size, and an object over the limit is
        refused before its body is read. What :meth:`read` does with a HEAD and a GET, for the
        objects every request reads (ciphertexts).

        Raises:
            AccessDenied, ObjectNotFound, PayloadTooLarge, IntegrityError, StorageUnavailable.
        """
        data, _ = self._get(uri, what=what, limit=limit or self.default_limit, ranged=True)
        return _verified(uri, data, expected_sha256, what)

    def read_versioned(self, uri: S3Uri, *, what: str = "object",
                       limit: SizeLimit | None = None) -> tuple[bytes, ObjectVersion]:
        """Read one allowed object and the version S3 served it as (from the same GET).

        The GET's own length is checked too (the object may have grown since a HEAD), and no
        more than the limit plus one byte is ever read.

        Raises:
            AccessDenied, ObjectNotFound, PayloadTooLarge, StorageUnavailable.
        """
        return self._get(uri, what=what, limit=limit or self.default_limit, ranged=False)

    def _get(self, uri: S3Uri, *, what: str, limit: SizeLimit,
             ranged: bool) -> tuple[bytes, ObjectVersion]:
        self.check_allowed([uri])
        with _translated(uri, what):
            try:
                response = self._client.get_object(
                    Bucket=uri.bucket, Key=uri.key,
                    **({"Range": f"bytes=0-{limit.max_bytes}"} if ranged else {}))
            except ClientError as exc:
                if not (ranged and error_code(exc) == INVALID_RANGE):
                    raise
                # S3 answers a range on an empty object with 416: read it whole (still bounded).
                response = self._client.get_object(Bucket=uri.bucket, Key=uri.key)
            version = ObjectVersion.of(response)
            if version.size > limit.max_bytes:
                response["Body"].close()
                raise _too_large(uri, what, version.size, limit)
            data = response["Body"].read(limit.max_bytes + 1)
            response["Body"].close()
        if len(data) > limit.max_bytes:
            raise _too_large(uri, what, len(data), limit)
        return data, version

    def version(self, uri: S3Uri, *, what: str = "object",
                limit: SizeLimit | None = None) -> ObjectVersion:
        """The current version of one allowed object (a HEAD: no body is transferred).

        Raises:
            AccessDenied, ObjectNotFound, PayloadTooLarge (over ``limit``), StorageUnavailable.
        """
        limit = limit or self.default_limit
        self.check_allowed([uri])
        with _translated(uri, what):
            version = ObjectVersion.of(self._client.head_object(Bucket=uri.bucket, Key=uri.key))
        if version.size > limit.max_bytes:
            raise _too_large(uri, what, version.size, limit)
        return version


def _whole_size(response: Mapping[str, Any]) -> int:
    """The object's size from a HEAD or GET answer: ``Content-Range``'s total for a ranged GET."""
    content_range = response.get("ContentRange") or ""
    total = content_range.rpartition("/")[2]
    if total.isdigit():
        return int(total)
    return int(response.get("ContentLength", 0))


def _verified(uri: S3Uri, data: bytes, expected_sha256: str | None, what: str) -> bytes:
    """``data``, unless its sha256 differs from the one the request names."""
    if expected_sha256 is not None and sha256_hex(data) != expected_sha256:
        raise IntegrityError(
            f"{what} {uri} has sha256 {sha256_hex(data)}, the request says {expected_sha256}:"
            " re-upload the object or send the sha256 of the bytes you uploaded"
        )
    return data


def _too_large(uri: S3Uri, what: str, size: int, limit: SizeLimit) -> PayloadTooLarge:
    return PayloadTooLarge(f"{what} {uri} has {size} bytes; the server reads at most"
                           f" {limit.max_bytes}: {limit.fix}")


def _translate(exc: ClientError | BotoCoreError, uri: S3Uri, what: str) -> ServingError:
    """The server's error for a failed S3 read (kinds: :func:`common.s3_access.classify`)."""
    kind = classify(exc)
    if not isinstance(exc, ClientError):
        if kind is S3Failure.RETRY_LATER:
            return StorageUnavailable(
                f"S3 is unreachable while reading {what} {uri} ({type(exc).__name__}); retry later")
        return StorageUnavailable(f"S3 read of {what} {uri} failed: {exc}; retry later")
    code = error_code(exc)
    if kind in (S3Failure.NOT_FOUND, S3Failure.NO_BUCKET):
        return ObjectNotFound(f"{what} {uri} does not exist: upload it first, then retry")
    if kind is S3Failure.DENIED:
        return AccessDenied(
            f"S3 refused to let the endpoint read {what} {uri} ({code}): grant the endpoint's"
            " execution role s3:GetObject on it (and kms:Decrypt if it is KMS-encrypted)"
        )
    if kind is S3Failure.RETRY_LATER:
        return StorageUnavailable(f"S3 could not serve {what} {uri} ({code}); retry later")
    return ServingError(f"S3 error {code} reading {what} {uri}")
