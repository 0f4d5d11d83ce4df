"""The wire contract between the client and the inference container.

One module, imported by both sides, so the two cannot drift apart.

Request (the body of ``POST /invocations``, also the async input object), JSON::

    {
      "evaluation_keys_uri": "s3://bucket/keys/<sha256>.ekl",      # required
      "encrypted_query_uri": "s3://bucket/queries/<id>.bin",       # one ciphertext, or
      "encrypted_query_uris": ["s3://…", "s3://…"],                # N ciphertexts, or
      "encrypted_batch_uri": "s3://bucket/queries/<id>.fheb",      # N ciphertexts, framed
      "model_fingerprint": "<sha256 of client.zip>",               # optional, checked first
      "evaluation_keys_sha256": "<sha256 of the key bytes>",       # optional, verified
      "encrypted_query_sha256": "<sha256>" | ["<sha256>", …]       # optional, verified
    }

The body is UTF-8 JSON (RFC 8259: no NaN/Infinity, no field twice); every URI follows the one
grammar of :mod:`common.s3_location`, checked in full before any S3 read.
Exactly one of the three query fields is given. ``encrypted_query_sha256`` is a string for
``encrypted_query_uri`` and ``encrypted_batch_uri`` (the hash of the whole object) and a list,
one per URI, for ``encrypted_query_uris``.

Response:

* single query (``encrypted_query_uri``): the serialized encrypted result,
  ``Content-Type: application/octet-stream`` — the reference-compatible form.
* batch (``encrypted_query_uris`` or ``encrypted_batch_uri``): N encrypted results in one
  body in the batch framing below, ``Content-Type: application/vnd.fhe-batch``.
* errors: ``{"error": {"status": 4xx|5xx, "code": "...", "message": "..."}}`` as
  ``application/json``; every ``(code, status)`` pair is a row of the one error table below
  (:data:`ERROR_CODES`), which also says whether the same request may succeed later.

Batch framing (``application/vnd.fhe-batch``): the 4-byte magic ``FHEB``, a version byte
(1), a big-endian uint32 count N, then N frames of a big-endian uint64 length followed by
that many bytes. The same framing packs N ciphertexts into one ``encrypted_batch_uri`` object.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from common.s3_location import S3LocationError, S3Uri
from common.s3_location import parse_s3_uri as _parse_location

CONTENT_TYPE_JSON = "application/json"
CONTENT_TYPE_RESULT = "application/octet-stream"
CONTENT_TYPE_BATCH = "application/vnd.fhe-batch"

BATCH_MAGIC = b"FHEB"
BATCH_VERSION = 1
_HEADER = struct.Struct(">4sBI")
_FRAME_LEN = struct.Struct(">Q")

_SHA256_RE = re.compile(r"[0-9a-f]{64}", re.ASCII)

FIELD_KEYS = "evaluation_keys_uri"
FIELD_QUERY = "encrypted_query_uri"
FIELD_QUERIES = "encrypted_query_uris"
FIELD_BATCH = "encrypted_batch_uri"
FIELD_FINGERPRINT = "model_fingerprint"
FIELD_KEYS_SHA = "evaluation_keys_sha256"
FIELD_QUERY_SHA = "encrypted_query_sha256"
_KNOWN_FIELDS = frozenset(
    {FIELD_KEYS, FIELD_QUERY, FIELD_QUERIES, FIELD_BATCH, FIELD_FINGERPRINT, FIELD_KEYS_SHA,
     FIELD_QUERY_SHA}
)


@dataclass(frozen=True)
class ErrorCode:
    """One row of the error table: a failure as the wire names it.

    Attributes:
        code: The ``code`` of the error body.
        status: Its HTTP status (also the ``status`` of the body).
        retryable: The same request may succeed later, unchanged.
    """

    code: str
    status: int
    retryable: bool

    def body(self, message: str) -> bytes:
        """This error's response (or failure object) body."""
        return error_body(self.status, self.code, message)


# -- the error table ------------------------------------------------------------------------
# Answered by the serving container (inference/errors.py; nginx.conf answers the first three
# of them for requests it refuses itself).
BAD_REQUEST = ErrorCode("BadRequest", 400, retryable=False)
NOT_FOUND = ErrorCode("NotFound", 404, retryable=False)
PAYLOAD_TOO_LARGE = ErrorCode("PayloadTooLarge", 413, retryable=False)
ACCESS_DENIED = ErrorCode("AccessDenied", 403, retryable=False)
# The evaluation keys object is missing (an S3 lifecycle rule or a restarted local S3 removed
# it): the client uploads its keys again and retries once.
EVALUATION_KEYS_NOT_FOUND = ErrorCode("EvaluationKeysNotFound", 404, retryable=False)
METHOD_NOT_ALLOWED = ErrorCode("MethodNotAllowed", 405, retryable=False)
CHECKSUM_MISMATCH = ErrorCode("ChecksumMismatch", 422, retryable=False)
MODEL_MISMATCH = ErrorCode("ModelMismatch", 422, retryable=False)
INTERNAL_ERROR = ErrorCode("InternalError", 500, retryable=True)
NOT_READY = ErrorCode("NotReady", 503, retryable=True)
STORAGE_UNAVAILABLE = ErrorCode("StorageUnavailable", 503, retryable=True)
# Written as failure objects by the asynchronous front end (the local runtime).
REQUEST_EXPIRED = ErrorCode("RequestExpired", 408, retryable=False)
INVOCATION_TIMEOUT = ErrorCode("InvocationTimeout", 408, retryable=False)
INPUT_REFUSED = ErrorCode("InputUnavailable", 400, retryable=False)  # missing or forbidden
INPUT_UNAVAILABLE = ErrorCode("InputUnavailable", 503, retryable=True)  # S3 did not answer
INTERNAL_FAILURE = ErrorCode("InternalFailure", 500, retryable=True)
CONTAINER_UNREACHABLE = ErrorCode("ContainerUnreachable", 502, retryable=True)
CONTAINER_ERROR = ErrorCode("ContainerError", 502, retryable=True)  # no JSON error body
RUNTIME_STOPPED = ErrorCode("RuntimeStopped", 503, retryable=True)

ERROR_CODES = (
    BAD_REQUEST, NOT_FOUND, PAYLOAD_TOO_LARGE, ACCESS_DENIED, EVALUATION_KEYS_NOT_FOUND,
    METHOD_NOT_ALLOWED, CHECKSUM_MISMATCH, MODEL_MISMATCH, INTERNAL_ERROR, NOT_READY,
    STORAGE_UNAVAILABLE, REQUEST_EXPIRED, INVOCATION_TIMEOUT, INPUT_REFUSED, INPUT_UNAVAILABLE,
    INTERNAL_FAILURE, CONTAINER_UNREACHABLE, CONTAINER_ERROR, RUNTIME_STOPPED,
)
"""Every error the server or the asynchronous front end reports; ``(code, status)`` is unique."""


def error_code(code: str, status: int | None) -> ErrorCode | None:
    """The table's row for an error body's ``code`` and ``status``, None if it has none."""
    return next((row for row in ERROR_CODES if (row.code, row.status) == (code, status)), None)


def is_retryable(code: str, status: int | None) -> bool:
    """Whether an error reported as ``code``/``status`` may go away when the request is retried.

    An error the table does not know (a proxy's or another server's) counts as retryable when
    its status is a server error (5xx).
    """
    row = error_code(code, status)
    if row is not None:
        return row.retryable
    return status is not None and status >= 500


class ContractError(ValueError):
    """A request, URI or batch body that does not follow the contract (HTTP 400)."""


class BatchTooLargeError(ContractError):
    """A batch body holds more items than the receiver accepts (HTTP 413)."""


@dataclass(frozen=True)
class InferenceRequest:
    """A validated request.

    Attributes:
        evaluation_keys_uri: Where the client's serialized evaluation keys are.
        query_uris: The ciphertext objects (one per row), or the single packed batch object.
        packed: True when ``query_uris`` holds one object in the batch framing.
        batch: True when the response must use the batch framing.
        model_fingerprint: sha256 of the client.zip the client encrypted with, if given.
        evaluation_keys_sha256: Expected sha256 of the key bytes, if given.
        query_sha256: Expected sha256 per object of ``query_uris``, if given.
    """

    evaluation_keys_uri: S3Uri
    query_uris: tuple[S3Uri, ...]
    packed: bool = False
    batch: bool = False
    model_fingerprint: str | None = None
    evaluation_keys_sha256: str | None = None
    query_sha256: tuple[str, ...] | None = None


def sha256_hex(data: bytes) -> str:
    """Return the lowercase hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def parse_s3_uri(uri: Any, *, field: str = "uri") -> S3Uri:
    """Parse ``s3://bucket/key`` (the grammar of :mod:`common.s3_location`).

    Raises:
        ContractError: ``uri`` is not a string of that form.
    """
    try:
        return _parse_location(uri, field=field)
    except S3LocationError as exc:
        raise ContractError(str(exc)) from exc


def _parse_sha(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _SHA256_RE.fullmatch(value):
        raise ContractError(f"'{field}' must be 64 lowercase hex characters (a sha256)")
    return value


def _parse_queries(doc: dict[str, Any]) -> tuple[tuple[S3Uri, ...], bool, bool]:
    given = [name for name in (FIELD_QUERY, FIELD_QUERIES, FIELD_BATCH) if name in doc]
    if len(given) != 1:
        raise ContractError(
            f"give exactly one of '{FIELD_QUERY}', '{FIELD_QUERIES}' or '{FIELD_BATCH}'"
            f" (got {', '.join(given) or 'none'})"
        )
    if FIELD_QUERY in doc:
        return (parse_s3_uri(doc[FIELD_QUERY], field=FIELD_QUERY),), False, False
    if FIELD_BATCH in doc:
        return (parse_s3_uri(doc[FIELD_BATCH], field=FIELD_BATCH),), True, True
    uris = doc[FIELD_QUERIES]
    if not isinstance(uris, list) or not uris:
        raise ContractError(f"'{FIELD_QUERIES}' must be a non-empty list of 's3://…' strings")
    return tuple(parse_s3_uri(u, field=FIELD_QUERIES) for u in uris), False, True


def _parse_query_sha(value: Any, n_objects: int, batch_list: bool) -> tuple[str, ...]:
    if batch_list:
        if not isinstance(value, list) or len(value) != n_objects:
            raise ContractError(
                f"'{FIELD_QUERY_SHA}' must be a list of {n_objects} sha256 strings,"
                f" one per entry of '{FIELD_QUERIES}'"
            )
        return tuple(_parse_sha(v, FIELD_QUERY_SHA) for v in value)
    return (_parse_sha(value, FIELD_QUERY_SHA),)


def _unique_fields(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        repeated = sorted(name for name, n in Counter(k for k, _ in pairs).items() if n > 1)
        raise ContractError(f"field(s) {', '.join(map(ascii, repeated))} given more than once")
    return doc


def _refuse_constant(name: str) -> None:
    raise ContractError(f"request body is not valid JSON: {name} is not a JSON number")


def _load_json(body: bytes) -> Any:
    """Decode UTF-8 JSON (RFC 8259), refusing duplicate fields, NaN/Infinity and any failure."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ContractError(f"request body is not valid JSON: it must be UTF-8 ({exc})") from exc
    try:
        return json.loads(text, object_pairs_hook=_unique_fields,
                          parse_constant=_refuse_constant)
    except RecursionError as exc:
        raise ContractError("request body nests JSON too deeply; the request is one flat"
                            " object of strings (and one list)") from exc
    except ContractError:
        raise
    except ValueError as exc:  # JSONDecodeError, and e.g. integers over Python's digit limit
        raise ContractError(f"request body is not valid JSON: {exc}") from exc


def parse_request(body: bytes) -> InferenceRequest:
    """Validate a request body.

    Raises:
        ContractError: the body is not JSON, or fields are missing, unknown or mistyped.
    """
    doc = _load_json(body)
    if not isinstance(doc, dict):
        raise ContractError("request body must be a JSON object")
    unknown = sorted(set(doc) - _KNOWN_FIELDS)
    if unknown:
        raise ContractError(f"unknown field(s) {', '.join(map(repr, unknown))}")
    if FIELD_KEYS not in doc:
        raise ContractError(f"missing required field '{FIELD_KEYS}'")
    keys_uri = parse_s3_uri(doc[FIELD_KEYS], field=FIELD_KEYS)
    query_uris, packed, batch = _parse_queries(doc)
    fingerprint = doc.get(FIELD_FINGERPRINT)
    keys_sha = doc.get(FIELD_KEYS_SHA)
    query_sha = doc.get(FIELD_QUERY_SHA)
    return InferenceRequest(
        evaluation_keys_uri=keys_uri,
        query_uris=query_uris,
        packed=packed,
        batch=batch,
        model_fingerprint=None
        if fingerprint is None
        else _parse_sha(fingerprint, FIELD_FINGERPRINT),
        evaluation_keys_sha256=None if keys_sha is None else _parse_sha(keys_sha, FIELD_KEYS_SHA),
        query_sha256=None
        if query_sha is None
        else _parse_query_sha(query_sha, len(query_uris), FIELD_QUERIES in doc),
    )


def build_request(
    *,
    evaluation_keys_uri: str,
    encrypted_query_uri: str | None = None,
    encrypted_query_uris: Sequence[str] | None = None,
    encrypted_batch_uri: str | None = None,
    model_fingerprint: str | None = None,
    evaluation_keys_sha256: str | None = None,
    encrypted_query_sha256: str | Sequence[str] | None = None,
) -> bytes:
    """Build a request body; the result always passes :func:`parse_request`."""
    doc: dict[str, Any] = {FIELD_KEYS: evaluation_keys_uri}
    optional = {
        FIELD_QUERY: encrypted_query_uri,
        FIELD_QUERIES: None if encrypted_query_uris is None else list(encrypted_query_uris),
        FIELD_BATCH: encrypted_batch_uri,
        FIELD_FINGERPRINT: model_fingerprint,
        FIELD_KEYS_SHA: evaluation_keys_sha256,
        FIELD_QUERY_SHA: encrypted_query_sha256
        if encrypted_query_sha256 is None or isinstance(encrypted_query_sha256, str)
        else list(encrypted_query_sha256),
    }
    doc.update({name: value for name, value in optional.items() if value is not None})
    body = json.dumps(doc, separators=(",", ":")).encode()
    parse_request(body)
    return body


def pack_batch(items: Sequence[bytes]) -> bytes:
    """Frame N byte strings as one ``application/vnd.fhe-batch`` body."""
    parts = [_HEADER.pack(BATCH_MAGIC, BATCH_VERSION, len(items))]
    for item in items:
        parts.append(_FRAME_LEN.pack(len(item)))
        parts.append(item)
    return b"".join(parts)


def unpack_batch(body: bytes, *, max_items: int | None = None) -> list[bytes]:
    """Split an ``application/vnd.fhe-batch`` body into its frames.

    Raises:
        BatchTooLargeError: more than ``max_items`` frames.
        ContractError: wrong magic or version, truncated frames, or trailing bytes.
    """
    view = memoryview(body)
    if len(view) < _HEADER.size:
        raise ContractError("batch body is shorter than its 9-byte header")
    magic, version, count = _HEADER.unpack_from(view)
    if magic != BATCH_MAGIC or version != BATCH_VERSION:
        raise ContractError(f"batch body must start with {BATCH_MAGIC!r} version {BATCH_VERSION}")
    if max_items is not None and count > max_items:
        raise BatchTooLargeError(f"batch has {count} items; the limit is {max_items}")
    if count == 0:
        raise ContractError("batch has no items")
    items: list[bytes] = []
    offset = _HEADER.size
    for index in range(count):
        if offset + _FRAME_LEN.size > len(view):
            raise ContractError(f"batch is truncated at the length of item {index}")
        (length,) = _FRAME_LEN.unpack_from(view, offset)
        offset += _FRAME_LEN.size
        if offset + length > len(view):
            raise ContractError(f"batch is truncated inside item {index}")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if offset != len(view):
        raise ContractError(f"batch has {len(view) - offset} trailing bytes after {count} items")
    return items


def error_body(status: int, code: str, message: str) -> bytes:
    """Serialize an error response body."""
    return json.dumps({"error": {"status": status, "code": code, "message": message}}).encode()


def parse_error_body(body: bytes) -> tuple[int | None, str, str]:
    """Read ``(status, code, message)`` from an error body; tolerate foreign error formats."""
    try:
        err = json.loads(body)["error"]
        return int(err["status"]), str(err["code"]), str(err["message"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None, "Unknown", body[:2000].decode("utf-8", errors="replace")
