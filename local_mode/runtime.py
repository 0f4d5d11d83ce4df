"""A local stand-in for SageMaker's asynchronous inference front end.

:class:`LocalAsyncRuntime` serves ``InvokeEndpointAsync``
(``POST /endpoints/{EndpointName}/async-invocations``, the ``X-Amzn-SageMaker-*`` headers, a 202
with ``InferenceId`` and the ``OutputLocation``/``FailureLocation`` headers, AWS-style JSON
errors), so ``boto3.client("sagemaker-runtime", endpoint_url=runtime.url)`` works unchanged.
Like SageMaker it queues requests, runs at most ``max_concurrency`` at a time against the
container's ``POST /invocations``, and writes the response body to
``<output_path>/<InferenceId>.out`` or the error to ``<failure_path>/<InferenceId>-error.out``,
honouring the request TTL and the invocation timeout.

No accepted invocation vanishes silently:

* writing the output or failure object is retried (S3 may be briefly unreachable) and a worker
  thread never dies on an error;
* :meth:`LocalAsyncRuntime.stop` lets running invocations finish and writes a
  ``503 RuntimeStopped`` failure object for every invocation still queued;
* with ``journal_dir``, every accepted invocation is recorded on disk (one JSON file, written
  atomically) until its output or failure object is written; a runtime started on the same
  directory after a crash or ``kill -9`` re-queues the ones left there, so they complete
  (an FHE run is a pure function of its inputs, so running one twice is harmless).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import requests

from common import contract
from common.contract import CONTENT_TYPE_JSON, ErrorCode, parse_error_body
from common.files import atomic_write_bytes
from common.s3_access import SSE, S3Failure, classify
from common.s3_location import (
    S3LocationError,
    S3Prefix,
    S3Uri,
    is_within,
    parse_s3_prefix,
    parse_s3_uri,
)
from local_mode.api_model import ConstraintViolation, operation_rules

logger = logging.getLogger(__name__)

_PATH_RE = re.compile(r"/endpoints/(?P<name>[^/]+)/async-invocations/?")
DEFAULT_REQUEST_TTL = 21600
DEFAULT_INVOCATION_TIMEOUT = 900
DEFAULT_WRITE_RETRY_SECONDS = 120.0
JOURNAL_SUFFIX = ".job.json"
MAX_BODY_READ = 1 << 20  # bodies up to this are read and checked (the model allows 128000)
_H = "X-Amzn-SageMaker-"
# sagemaker-runtime's own API errors (x-amzn-ErrorType), apart from the contract's failure objects.
AWS_VALIDATION_ERROR = "ValidationError"
AWS_UNKNOWN_OPERATION = "UnknownOperationException"


@dataclass(frozen=True)
class AsyncJob:
    """One queued invocation."""

    inference_id: str
    input_location: str
    content_type: str
    accept: str | None
    custom_attributes: str | None
    output: S3Uri
    failure: S3Uri
    enqueued: float
    ttl_seconds: int
    timeout_seconds: int
    accepted_at: float = 0.0

    def to_json(self) -> bytes:
        """The job as a journal entry (``accepted_at`` is wall-clock, ``enqueued`` is not kept)."""
        doc = asdict(self)
        doc.pop("enqueued")
        return json.dumps(doc).encode()

    @classmethod
    def from_json(cls, data: bytes) -> AsyncJob:
        """Rebuild a journaled job; its TTL keeps counting from when it was first accepted."""
        doc = json.loads(data)
        waited = max(0.0, time.time() - float(doc["accepted_at"]))
        return cls(**{**doc, "output": S3Uri(**doc["output"]), "failure": S3Uri(**doc["failure"]),
                      "enqueued": time.monotonic() - waited})


class RuntimeRequestError(ValueError):
    """An InvokeEndpointAsync call the runtime rejects (an AWS-style ValidationError)."""

    def __init__(self, message: str, *, status: int = 400, code: str = AWS_VALIDATION_ERROR
                 ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class LocalAsyncRuntime:
    """SageMaker's async invocation front end for one endpoint, on loopback.

    Args:
        endpoint_name: The only endpoint name accepted.
        container_url: Base URL of the serving container (``http://127.0.0.1:8080``).
        output_path: ``s3://bucket/prefix`` for responses.
        failure_path: ``s3://bucket/prefix`` for errors.
        s3_client: A boto3 S3 client (reused for every job).
        max_concurrency: Invocations sent to the container at once.
        invocation_timeout: Upper bound of seconds per invocation (requests may ask for less).
        host: Address to bind.
        port: Port to bind (0 = any free port).
        journal_dir: Where accepted, unfinished invocations are recorded; ``start`` re-queues
            what a previous (crashed) runtime left there. None = no journal.
        write_retry_seconds: How long to keep retrying the write of an output or failure
            object while S3 is unreachable.
        allowed_input_prefixes: The folders the endpoint's execution role may read, matched
            segment by segment (:mod:`common.s3_location`): an ``InputLocation`` outside
            them is never read and gets a ``403 AccessDenied`` failure object, as S3 refuses
            the role on AWS. None = no restriction (the role may read anything).
    """

    def __init__(self, *, endpoint_name: str, container_url: str, output_path: str,
                 failure_path: str, s3_client: Any, max_concurrency: int = 1,
                 invocation_timeout: int = DEFAULT_INVOCATION_TIMEOUT,
                 host: str = "127.0.0.1", port: int = 0, journal_dir: str | os.PathLike[str] |
                 None = None, write_retry_seconds: float = DEFAULT_WRITE_RETRY_SECONDS,
                 allowed_input_prefixes: Sequence[S3Prefix] | None = None) -> None:
        self.endpoint_name = endpoint_name
        self.container_url = container_url.rstrip("/")
        self._output = parse_s3_prefix(output_path, field="output_path")
        self._failure = parse_s3_prefix(failure_path, field="failure_path")
        self._s3 = s3_client
        self._max_concurrency = max_concurrency
        self.invocation_timeout = invocation_timeout
        self._queue: queue.Queue[AsyncJob | None] = queue.Queue()
        self._http = requests.Session()
        self._server = ThreadingHTTPServer((host, port), _handler_for(self))
        self._server.daemon_threads = True
        self._threads: list[threading.Thread] = []
        self._journal = Path(journal_dir) if journal_dir is not None else None
        self._write_retry_seconds = write_retry_seconds
        self._stopping = threading.Event()
        self._allowed_inputs = None if allowed_input_prefixes is None else tuple(
            allowed_input_prefixes)

    @property
    def url(self) -> str:
        """``http://host:port`` for ``boto3.client("sagemaker-runtime", endpoint_url=...)``."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LocalAsyncRuntime:
        """Re-queue journaled invocations, then start the HTTP front end and the workers."""
        for job in self._replay_journal():
            self._queue.put(job)
        self._threads = [threading.Thread(target=self._server.serve_forever,
                                          name="async-runtime-http", daemon=True)]
        self._threads += [threading.Thread(target=self._work, name=f"async-runtime-worker-{i}",
                                           daemon=True) for i in range(self._max_concurrency)]
        for thread in self._threads:
            thread.start()
        logger.info("async runtime for %s on %s -> %s", self.endpoint_name, self.url,
                    self.container_url)
        return self

    def stop_accepting(self) -> None:
        """Refuse new requests and fail queued ones (503); running invocations go on."""
        if self._stopping.is_set():
            return
        self._server.shutdown()
        self._server.server_close()
        self._stopping.set()
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._finish(job, self._fail, contract.RUNTIME_STOPPED,
                             "the endpoint stopped before running this invocation; send it again")
        for _ in range(self._max_concurrency):
            self._queue.put(None)

    def stop(self) -> None:
        """Stop accepting requests; let running invocations finish; fail queued ones (503)."""
        self.stop_accepting()
        for thread in self._threads:
            thread.join(timeout=self.invocation_timeout)
        self._http.close()

    def __enter__(self) -> LocalAsyncRuntime:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- front end -------------------------------------------------------------------------

    def submit(self, path: str, headers: Any, body: bytes = b"") -> AsyncJob:
        """Validate an InvokeEndpointAsync call and queue it.

        Every member is checked against botocore's service model first
        (:mod:`local_mode.api_model`), all violations in one ValidationError.

        Raises:
            RuntimeRequestError: unknown operation or endpoint, constraint violations, no
                readable InputLocation.
        """
        job = self._job(self._validated(path, headers, body))
        if self._journal is not None:
            atomic_write_bytes(self._journal_path(job), job.to_json())
        self._queue.put(job)
        return job

    def _validated(self, path: str, headers: Any, body: bytes) -> dict[str, Any]:
        """The call's members, typed, once the service model, endpoint and input accept them."""
        match = _PATH_RE.fullmatch(path.split("?", 1)[0])
        if match is None:
            raise RuntimeRequestError(f"unknown operation {path!r}", status=404,
                                      code=AWS_UNKNOWN_OPERATION)
        rules = operation_rules()
        wire = {rule.name: headers.get(rule.wire_name) for rule in rules.members
                if rule.location == "header"}
        try:
            values = rules.validate({**wire, "EndpointName": requests.utils.unquote(
                match["name"]), "Body": body or None})
        except ConstraintViolation as exc:
            raise RuntimeRequestError(str(exc)) from exc
        if values["EndpointName"] != self.endpoint_name:
            raise RuntimeRequestError(f"Endpoint {values['EndpointName']} not found (this local"
                                      f" runtime serves {self.endpoint_name}).")
        location = values.get("InputLocation")
        if not location:
            raise RuntimeRequestError("InputLocation is required: upload the request JSON to S3"
                                      " and pass its s3:// URI (this local runtime reads no Body)")
        try:
            parse_s3_uri(location, field="InputLocation")
        except S3LocationError as exc:
            raise RuntimeRequestError(str(exc)) from exc
        return values

    def _job(self, values: dict[str, Any]) -> AsyncJob:
        """The queued invocation of a validated call (SageMaker's defaults where it gave none)."""
        inference_id = values.get("InferenceId") or str(uuid.uuid4())
        filename = values.get("Filename") or f"{inference_id}.out"
        extension = (values.get("S3OutputPathExtension") or "").strip("/")
        return AsyncJob(
            inference_id=inference_id,
            input_location=values["InputLocation"],
            content_type=values.get("ContentType") or CONTENT_TYPE_JSON,
            accept=values.get("Accept"),
            custom_attributes=values.get("CustomAttributes"),
            output=self._output.join(extension, filename),
            failure=self._failure.join(f"{inference_id}-error.out"),
            enqueued=time.monotonic(),
            accepted_at=time.time(),
            ttl_seconds=values.get("RequestTTLSeconds", DEFAULT_REQUEST_TTL),
            timeout_seconds=min(self.invocation_timeout, values.get(
                "InvocationTimeoutSeconds", self.invocation_timeout)),
        )

    # -- journal ---------------------------------------------------------------------------

    def _journal_path(self, job: AsyncJob) -> Path:
        assert self._journal is not None
        return self._journal / f"{uuid.uuid5(uuid.NAMESPACE_URL, job.inference_id)}{JOURNAL_SUFFIX}"

    def _replay_journal(self) -> list[AsyncJob]:
        if self._journal is None:
            return []
        self._journal.mkdir(parents=True, exist_ok=True)
        jobs = []
        for path in sorted(self._journal.glob(f"*{JOURNAL_SUFFIX}")):
            try:
                jobs.append(AsyncJob.from_json(path.read_bytes()))
            except (OSError, ValueError, KeyError, TypeError):
                logger.exception("unreadable journal entry %s; moved aside", path.name)
                path.replace(path.with_suffix(".bad"))
        jobs.sort(key=lambda job: job.accepted_at)
        if jobs:
            logger.info("re-queued %d invocation(s) left unfinished by a previous run", len(jobs))
        return jobs

    # -- workers ---------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            self._finish(job, self._process)

    def _finish(self, job: AsyncJob, step: Any, *args: Any) -> None:
        """Run ``step(job, *args)``; forget the journal entry once an object was written."""
        try:
            step(job, *args)
        except Exception:
            logger.exception("async job %s failed unexpectedly", job.inference_id)
            try:
                self._fail(job, contract.INTERNAL_FAILURE, "the local runtime failed; see its log")
            except Exception:
                if self._journal is None:
                    logger.exception("async job %s is LOST: no output or failure object could be"
                                     " written and there is no journal to replay it from (start"
                                     " the runtime with journal_dir / --journal-dir)",
                                     job.inference_id)
                else:
                    logger.exception("async job %s: no output or failure object could be written;"
                                     " it stays in the journal", job.inference_id)
                return
        if self._journal is not None:
            self._journal_path(job).unlink(missing_ok=True)

    def _process(self, job: AsyncJob) -> None:
        waited = time.monotonic() - job.enqueued
        if waited > job.ttl_seconds:
            self._fail(job, contract.REQUEST_EXPIRED,
                       f"the request waited {waited:.0f} s in the queue, over its TTL of"
                       f" {job.ttl_seconds} s")
            return
        source = parse_s3_uri(job.input_location)
        if self._allowed_inputs is not None and not is_within(source, self._allowed_inputs):
            allowed = ", ".join(map(str, self._allowed_inputs)) or "nothing"
            self._fail(job, contract.ACCESS_DENIED,
                       f"the endpoint's execution role may not read InputLocation {source}:"
                       f" upload the request under one of {allowed}")
            return
        try:
            body = self._s3.get_object(Bucket=source.bucket, Key=source.key)["Body"].read()
        except Exception as exc:
            self._fail(job, _input_error(exc),
                       f"cannot read InputLocation {job.input_location}: {exc}")
            return
        headers = {"Content-Type": job.content_type, _H + "Inference-Id": job.inference_id}
        if job.accept:
            headers["Accept"] = job.accept
        if job.custom_attributes:
            headers[_H + "Custom-Attributes"] = job.custom_attributes
        started = time.perf_counter()
        try:
            response = self._http.post(f"{self.container_url}/invocations", data=body,
                                       headers=headers, timeout=(5, job.timeout_seconds))
        except requests.Timeout:
            self._fail(job, contract.INVOCATION_TIMEOUT,
                       f"the model did not answer within {job.timeout_seconds} s")
            return
        except requests.RequestException as exc:
            self._fail(job, contract.CONTAINER_UNREACHABLE,
                       f"the model container failed to answer ({type(exc).__name__})")
            return
        logger.info("async job %s -> %d in %.1f ms", job.inference_id, response.status_code,
                    1000 * (time.perf_counter() - started))
        if response.status_code == 200:
            self._put(job.output, response.content,
                      response.headers.get("Content-Type", "application/octet-stream"))
            return
        body = response.content
        if parse_error_body(body)[0] is None:  # not the container's JSON (a proxy's 502 page)
            body = contract.CONTAINER_ERROR.body(
                f"the model container answered HTTP {response.status_code} without an error body"
                " (did a worker die?)")
        self._put(job.failure, body, CONTENT_TYPE_JSON)

    def _fail(self, job: AsyncJob, error: ErrorCode, message: str) -> None:
        logger.warning("async job %s failed: %s", job.inference_id, error.code)
        self._put(job.failure, error.body(message), CONTENT_TYPE_JSON)

    def _put(self, target: S3Uri, body: bytes, content_type: str) -> None:
        """Write an object, retrying for ``write_retry_seconds`` (less once stopping)."""
        deadline = time.monotonic() + self._write_retry_seconds
        delay = 0.1
        while True:
            try:
                self._s3.put_object(Bucket=target.bucket, Key=target.key, Body=body,
                                    ContentType=content_type, **SSE)
                return
            except Exception as exc:
                if time.monotonic() + delay > deadline or self._stopping.is_set():
                    raise
                logger.warning("cannot write %s (%s); retrying in %.1f s", target,
                               type(exc).__name__, delay)
                time.sleep(delay)
                delay = min(2.0, delay * 2)


def _input_error(exc: Exception) -> ErrorCode:
    """Refused (400) when S3 refused to serve the input; 503 when S3 (or the call) failed."""
    if classify(exc) in (S3Failure.RETRY_LATER, S3Failure.FAILED):
        return contract.INPUT_UNAVAILABLE
    return contract.INPUT_REFUSED


def _handler_for(runtime: LocalAsyncRuntime) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out as separate writes

        def do_POST(self) -> None:
            length = self.headers.get("Content-Length") or "0"
            if not length.isascii() or not length.isdigit() or int(length) > MAX_BODY_READ:
                self.close_connection = True  # the body is not read: the stream is unusable
                self._send(400, {"message": f"Content-Length must be 0..{MAX_BODY_READ}"},
                           {"x-amzn-ErrorType": AWS_VALIDATION_ERROR})
                return
            body = self.rfile.read(int(length))
            try:
                job = runtime.submit(self.path, self.headers, body)
            except RuntimeRequestError as exc:
                self._send(exc.status, {"message": str(exc)}, {"x-amzn-ErrorType": exc.code})
                return
            self._send(202, {"InferenceId": job.inference_id}, {
                _H + "OutputLocation": str(job.output),
                _H + "FailureLocation": str(job.failure),
            })

        def _send(self, status: int, doc: dict[str, str], headers: dict[str, str]) -> None:
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("runtime http: " + format, *args)

    return Handler
