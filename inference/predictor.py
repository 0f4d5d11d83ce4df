"""The Flask app SageMaker talks to: ``GET /ping``, ``POST /invocations``, ``GET /metrics``.

Build it with :func:`create_app`; nothing happens at import. See the README (serving) for the
wire contract; :mod:`common.contract` implements it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException
from werkzeug.wsgi import get_input_stream

from common import contract
from inference.circuit_sizes import CircuitSizes, CircuitSizesError, load_circuit_sizes
from inference.connection import CallerGone, caller_gone, keep_sigpipe_ignored
from inference.errors import (
    BadRequest,
    EvaluationKeysNotFound,
    NotReady,
    ObjectNotFound,
    PayloadTooLarge,
    ServingError,
)
from inference.key_cache import KeyCache
from inference.model import FheModel
from inference.s3_store import S3Store, SizeLimit, make_s3_client
from inference.settings import (
    ENV_MAX_BATCH_SIZE,
    ENV_MAX_OBJECT_BYTES,
    ENV_MAX_REQUEST_BYTES,
    Settings,
)

logger = logging.getLogger(__name__)

INFERENCE_ID_HEADER = "X-Amzn-SageMaker-Inference-Id"
REQUEST_ID_HEADER = "X-Fhe-Request-Id"
_INFERENCE_ID_RE = re.compile(r"[\x21-\x7e][\x20-\x7e]{0,63}")


class ModelSlot:
    """Holds the model once it is loaded (possibly by a background thread)."""

    def __init__(self) -> None:
        self._model: FheModel | None = None
        self._sizes: CircuitSizes | None = None
        self._error: BaseException | None = None
        self._ready = threading.Event()

    def load(self, settings: Settings) -> None:
        """Load the model from ``settings.model_dir``; remember a failure instead of raising."""
        try:
            self._sizes = _circuit_sizes(settings)
            self._model = FheModel.load(settings.model_dir, runtime=settings.runtime,
                                        circuit_cache_dir=settings.circuit_cache_dir)
        except Exception as exc:
            logger.exception("model load failed")
            self._error = exc
        finally:
            self._ready.set()

    @property
    def loaded(self) -> bool:
        """True once the model is ready to run."""
        return self._model is not None

    @property
    def model(self) -> FheModel | None:
        """The model if loaded, else None."""
        return self._model

    @property
    def sizes(self) -> CircuitSizes | None:
        """The loaded circuit's key and row sizes, None if unknown (flat limits apply)."""
        return self._sizes

    def get(self) -> FheModel:
        """The model.

        Raises:
            NotReady: still loading, or loading failed.
        """
        if self._model is not None:
            return self._model
        if self._error is not None:
            raise NotReady(f"the model failed to load: {self._error}")
        raise NotReady("the model is still loading; retry after GET /ping answers 200")


def _circuit_sizes(settings: Settings) -> CircuitSizes | None:
    """The circuit's sizes from the model directory; None (logged) when it does not say."""
    try:
        sizes = load_circuit_sizes(settings.model_dir)
    except CircuitSizesError as exc:
        logger.warning("S3 objects are bounded by %s only: %s", ENV_MAX_OBJECT_BYTES, exc)
        return None
    logger.info("S3 objects bounded by the circuit: %s", sizes.describe())
    return sizes


@dataclass(frozen=True)
class ReadLimits:
    """The largest evaluation keys, one-row ciphertext and batch object a request may name."""

    keys: SizeLimit
    row: SizeLimit
    batch: SizeLimit


@dataclass
class Services:
    """What a request handler needs; one per app (per worker process)."""

    settings: Settings
    slot: ModelSlot
    store: S3Store
    keys: KeyCache
    counters: Counter[str]

    def read_limits(self) -> ReadLimits:
        """The S3 size limits of the loaded circuit (the flat limit where it is smaller)."""
        sizes, store = self.slot.sizes, self.store
        if sizes is None:
            return ReadLimits(store.default_limit, store.default_limit, store.default_limit)
        encrypt = ("encrypt with this endpoint's client.zip"
                   " (FHEModelClient.quantize_encrypt_serialize)")
        return ReadLimits(
            keys=store.limit(sizes.max_evaluation_keys_bytes,
                             f"this model's evaluation keys are {sizes.evaluation_keys_bytes}"
                             " bytes: they were not made for it; generate keys with this"
                             " endpoint's client.zip"),
            row=store.limit(sizes.max_row_bytes,
                            f"one encrypted row of this model is {sizes.row_bytes} bytes:"
                            f" {encrypt}, one row per object"),
            batch=store.limit(sizes.max_batch_bytes(self.settings.max_batch_size),
                              f"{self.settings.max_batch_size} encrypted rows of this model fit"
                              f" in that: {encrypt}, split the batch (or raise"
                              f" {ENV_MAX_BATCH_SIZE})"),
        )


def create_app(settings: Settings, *, background_load: bool = False,
               s3_client: Any | None = None) -> Flask:
    """Build the server app and load the model.

    Args:
        settings: The server's configuration.
        background_load: Load the model in a thread so the worker answers ``/ping`` (503)
            while concrete compiles the circuit; otherwise load before returning.
        s3_client: A boto3 S3 client to use instead of one built from ``settings``.
    """
    slot = ModelSlot()
    services = Services(
        settings=settings,
        slot=slot,
        store=S3Store(s3_client or make_s3_client(settings),
                      allowed_prefixes=settings.allowed_prefixes,
                      max_object_bytes=settings.max_object_bytes),
        keys=KeyCache(settings.key_cache_dir, max_bytes=settings.key_cache_max_bytes,
                      deserialize=lambda data: slot.get().deserialize_keys(data)),
        counters=Counter(),
    )
    app = Flask("inference")
    app.extensions["fhe"] = services
    _register_routes(app, services)
    if background_load:
        threading.Thread(target=slot.load, args=(settings,), name="model-load", daemon=True).start()
    else:
        slot.load(settings)
    return app


def _register_routes(app: Flask, services: Services) -> None:
    @app.get("/ping")
    def ping() -> Response:
        try:
            services.slot.get()
        except NotReady as exc:
            return _error_response(exc)
        return Response(b"", status=200)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(_metrics_json(services), status=200, mimetype=contract.CONTENT_TYPE_JSON)

    @app.post("/invocations")
    def invocations() -> Response:
        request_id = _request_id(request.headers.get(INFERENCE_ID_HEADER))
        started = time.perf_counter()
        try:
            response = _invoke(services, request_id)
        except CallerGone as exc:
            services.counters["abandoned"] += 1
            logger.warning("%s", exc)
            response = Response(b"", status=CallerGone.status)
        except ServingError as exc:
            services.counters[f"errors_{exc.status}"] += 1
            logger.info("request %s -> %d %s in %.1f ms", request_id, exc.status, exc.code,
                        1000 * (time.perf_counter() - started))
            response = _error_response(exc)
        response.headers[REQUEST_ID_HEADER] = request_id
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status, code = exc.code or 500, (exc.name or "Error").replace(" ", "")
        row = contract.error_code(code, status) or contract.ErrorCode(code, status, status >= 500)
        return _error_response(ServingError(exc.description or exc.name, error=row))

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        logger.exception("unexpected error")
        services.counters["errors_500"] += 1
        return _error_response(ServingError("internal error; the server log has the details"))


def _request_id(inference_id: str | None) -> str:
    """SageMaker's inference id when it has SageMaker's shape (printable ASCII, 1-64), else a
    fresh one: the id goes to logs and a response header, so it must not carry anything else."""
    if inference_id and _INFERENCE_ID_RE.fullmatch(inference_id):
        return inference_id
    return uuid.uuid4().hex


def _invoke(services: Services, request_id: str) -> Response:
    services.counters["requests"] += 1
    model = services.slot.get()
    body = _read_body(services.settings.max_request_bytes)
    try:
        req = contract.parse_request(body)
    except contract.ContractError as exc:
        raise BadRequest(str(exc)) from exc
    model.check_fingerprint(req.model_fingerprint)
    limit = services.settings.max_batch_size
    if len(req.query_uris) > limit:
        raise PayloadTooLarge(
            f"the request names {len(req.query_uris)} ciphertexts; the limit is {limit}"
            f" (split the batch or raise {ENV_MAX_BATCH_SIZE})"
        )
    services.store.check_allowed([req.evaluation_keys_uri, *req.query_uris])
    timings: dict[str, float] = {}
    mark = time.perf_counter()
    keys = _evaluation_keys(services, req)
    timings["keys"] = time.perf_counter() - mark
    mark = time.perf_counter()
    queries = _ciphertexts(services, req)
    timings["fetch"] = time.perf_counter() - mark
    mark = time.perf_counter()
    results = _run_rows(model, queries, keys, request_id)
    timings["fhe"] = time.perf_counter() - mark
    services.counters["fhe_runs"] += len(results)
    services.counters["ok"] += 1
    logger.info(
        "request %s ok: %d ciphertext(s), %d bytes in, %d bytes out; keys %.1f ms, fetch %.1f ms,"
        " fhe %.1f ms", request_id, len(queries), sum(map(len, queries)), sum(map(len, results)),
        *(1000 * timings[k] for k in ("keys", "fetch", "fhe")),
    )
    if req.batch:
        return Response(contract.pack_batch(results), status=200,
                        mimetype=contract.CONTENT_TYPE_BATCH)
    return Response(results[0], status=200, mimetype=contract.CONTENT_TYPE_RESULT)


def _run_rows(model: FheModel, queries: list[bytes], keys: Any, request_id: str) -> list[bytes]:
    """Run the circuit on each row while the caller still waits for the answer.

    One FHE run cannot be interrupted; between rows (and after the last) the connection is
    checked, and a caller that went away stops the batch: its result is dropped, never sent.

    Raises:
        CallerGone: the caller closed the connection.
        ModelMismatch: a ciphertext does not fit the circuit.
    """
    started = time.perf_counter()
    results: list[bytes] = []
    try:
        for index, query in enumerate(queries):
            if caller_gone(request.environ):
                break
            results.append(model.run(query, keys, index=index))
    finally:
        keep_sigpipe_ignored()
    if len(results) == len(queries) and not caller_gone(request.environ):
        return results
    raise CallerGone(
        f"request {request_id} abandoned by its caller (connection closed) after"
        f" {len(results)} of {len(queries)} row(s), {time.perf_counter() - started:.1f} s"
        " of FHE: result dropped")


def _read_body(limit: int) -> bytes:
    """The request body, at most ``limit`` bytes, however it is framed.

    A ``Content-Length`` over the limit is refused unread; a chunked body (no length: gunicorn
    without nginx de-chunks it) is read up to one byte past the limit, never cut silently.

    Raises:
        PayloadTooLarge: the body is over ``limit`` bytes.
    """
    too_large = PayloadTooLarge(f"request body is over {limit} bytes: send S3 URIs, not data"
                                f" (or raise {ENV_MAX_REQUEST_BYTES})")
    length = request.content_length
    if length is not None and length > limit:
        raise too_large
    stream = get_input_stream(request.environ, max_content_length=None)
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = stream.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise too_large
    return b"".join(chunks)


def _evaluation_keys(services: Services, req: contract.InferenceRequest) -> Any:
    """The deserialised keys: from the cache when possible, else downloaded and cached."""
    cache = services.keys
    if req.evaluation_keys_sha256 is None:
        return _keys_by_uri(services, req.evaluation_keys_uri)
    keys = cache.get(req.evaluation_keys_sha256)
    if keys is not None:
        return keys
    data = _download_keys(services, req.evaluation_keys_uri,
                          expected_sha256=req.evaluation_keys_sha256)
    return cache.put(req.evaluation_keys_sha256, data)


def _keys_by_uri(services: Services, uri: contract.S3Uri) -> Any:
    """Keys named only by their URI: a HEAD tells whether the cached copy is still current.

    The cache entry records the version S3 served the bytes as (ETag, VersionId, size), so
    an unchanged object is not downloaded again, an overwritten one is, and a deleted one is
    a 404 ``EvaluationKeysNotFound`` even while its keys are still cached.
    """
    cache = services.keys
    with _keys_missing():
        current = services.store.version(uri, what="evaluation keys",
                                         limit=services.read_limits().keys)
    cache.stats.revalidations += 1
    sha = cache.sha_for_uri(str(uri), current.token)
    keys = None if sha is None else cache.get(sha)
    if keys is not None:
        cache.stats.revalidated_hits += 1
        return keys
    with _keys_missing():
        data, served = services.store.read_versioned(uri, what="evaluation keys",
                                                     limit=services.read_limits().keys)
    _count_download(cache, data)
    sha = contract.sha256_hex(data)
    keys = cache.get(sha)
    if keys is None:
        keys = cache.put(sha, data)
    cache.remember_uri(str(uri), served.token, sha)
    return keys


def _download_keys(services: Services, uri: contract.S3Uri, *,
                   expected_sha256: str) -> bytes:
    """Read the evaluation keys object, verified against the sha256 the request names."""
    with _keys_missing():
        data = services.store.read(uri, what="evaluation keys", expected_sha256=expected_sha256,
                                   limit=services.read_limits().keys)
    _count_download(services.keys, data)
    return data


def _count_download(cache: KeyCache, data: bytes) -> None:
    cache.stats.downloads += 1
    cache.stats.download_bytes += len(data)


@contextmanager
def _keys_missing() -> Iterator[None]:
    """A missing keys object is ``EvaluationKeysNotFound``: the client uploads its keys again."""
    try:
        yield
    except ObjectNotFound as exc:
        raise EvaluationKeysNotFound(exc.message) from exc


def _ciphertexts(services: Services, req: contract.InferenceRequest) -> list[bytes]:
    """Download (and verify) the ciphertexts of a request, one per row."""
    hashes = req.query_sha256 or (None,) * len(req.query_uris)
    limits = services.read_limits()
    limit = limits.batch if req.packed else limits.row
    objects = [
        services.store.read_ranged(uri, expected_sha256=sha, what=f"ciphertext {i}",
                                   limit=limit)
        for i, (uri, sha) in enumerate(zip(req.query_uris, hashes, strict=True))
    ]
    if not req.packed:
        return objects
    try:
        return contract.unpack_batch(objects[0], max_items=services.settings.max_batch_size)
    except contract.BatchTooLargeError as exc:
        raise PayloadTooLarge(f"{exc} (split the batch or raise {ENV_MAX_BATCH_SIZE})") from exc
    except contract.ContractError as exc:
        raise BadRequest(f"the encrypted batch object is not in the batch framing: {exc}") from exc


def _error_response(exc: ServingError) -> Response:
    return Response(exc.row.body(exc.message), status=exc.status,
                    mimetype=contract.CONTENT_TYPE_JSON)


def _metrics_json(services: Services) -> bytes:
    model = services.slot.model
    doc = {
        "pid": os.getpid(),
        "model_loaded": model is not None,
        "model_load_seconds": None if model is None else round(model.load_seconds, 3),
        "key_cache": {**asdict(services.keys.stats), "memory_bytes": services.keys.memory_bytes},
        "counters": dict(services.counters),
    }
    return json.dumps(doc).encode()
