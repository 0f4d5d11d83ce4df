"""EncryptedPredictor: scikit-learn-style predictions computed by an FHE endpoint on ciphertexts.

One ``predict`` call: validate X -> scale with the shipped scaler -> encrypt each row ->
pack each batch into one S3 object (``common.contract.pack_batch``) -> write the request
JSON -> ``invoke_endpoint_async`` -> poll the output and failure objects -> download ->
decrypt -> dequantise. Keys are generated once per model and kept in the key directory;
evaluation keys are uploaded once, under their sha256.

A model without manifest.json (saved by concrete-ml alone, e.g. by the AWS sample) is used in
reference mode (:mod:`client.model`): one row per request whose JSON holds exactly
``evaluation_keys_uri`` and ``encrypted_query_uri``, and the raw encrypted result.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import boto3
import numpy as np
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoRegionError
from tqdm.auto import tqdm

from client.errors import (
    CODE_BAD_RESPONSE,
    CODE_DECRYPTION_FAILED,
    EncryptedInferenceError,
    InferenceFailedError,
    InvalidInputError,
    StorageError,
    UnsupportedOperationError,
)
from client.keys import KeySet, KeyStore, default_cache_dir
from client.model import (
    ClientModel,
    load_client_model,
    load_fhe_client,
    training_job_model_data,
)
from client.retry import Retrier, RetryPolicy
from client.storage import Backoff, S3Storage, ServiceTimes, translate, wait_for_result
from common.contract import (
    CONTENT_TYPE_BATCH,
    CONTENT_TYPE_JSON,
    CONTENT_TYPE_RESULT,
    EVALUATION_KEYS_NOT_FOUND,
    ContractError,
    build_request,
    is_retryable,
    pack_batch,
    sha256_hex,
    unpack_batch,
)
from common.s3_location import S3LocationError, S3Prefix, S3Uri, parse_s3_prefix, parse_s3_uri

logger = logging.getLogger(__name__)
T = TypeVar("T")

STAGES = ("keygen", "encrypt", "upload", "invoke", "wait", "download", "decrypt", "cleanup")
_BOTO_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 5}, connect_timeout=10, read_timeout=60
)
# InvokeEndpointAsync is retried by the client's own policy (client.retry: logged, inside the
# request's timeout), not silently by botocore as well.
_RUNTIME_CONFIG = _BOTO_CONFIG.merge(Config(retries={"mode": "standard", "max_attempts": 1}))


@dataclass
class Timings:
    """Seconds spent per stage, plus counters; ``predictor.last_timings`` / ``.timings``.

    ``retries`` counts invocations sent again (:mod:`client.retry`). ``wait`` is the time
    spent polling for results (the server's FHE compute plus queueing);
    ``download`` the final read of the result; ``cleanup`` scheduling the deletion of the
    per-request objects (one ``DeleteObjects`` call in the background; ``close()`` waits for it).
    """

    keygen: float = 0.0
    encrypt: float = 0.0
    upload: float = 0.0
    invoke: float = 0.0
    wait: float = 0.0
    download: float = 0.0
    decrypt: float = 0.0
    cleanup: float = 0.0
    rows: int = 0
    requests: int = 0
    keygens: int = 0
    retries: int = 0
    evaluation_key_uploads: int = 0
    bytes_uploaded: int = 0
    bytes_downloaded: int = 0

    def add(self, other: Timings) -> None:
        """Accumulate ``other`` into this record."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @property
    def total(self) -> float:
        """Sum of all stages, in seconds."""
        return sum(getattr(self, stage) for stage in STAGES)

    def as_dict(self) -> dict[str, float | int]:
        """All fields as a plain dict."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __str__(self) -> str:
        stages = ", ".join(f"{s} {getattr(self, s):.3f}s" for s in STAGES)
        return f"{self.rows} rows in {self.requests} request(s): {stages} (total {self.total:.3f}s)"


@dataclass
class _Pending:
    """A request sent and not yet collected (``attempt``: invocations so far)."""

    inference_id: str
    n_rows: int
    objects: list[S3Uri]
    request: S3Uri
    raw: bool = False  # the result is one serialized ciphertext, not a batch body
    output: S3Uri | None = None  # where the current attempt's result / failure will appear
    failure: S3Uri | None = None
    sent_at: float = field(default_factory=time.monotonic)
    attempt: int = 1


def parse_prefix(uri: str) -> S3Prefix:
    """Parse ``s3://bucket`` or ``s3://bucket/prefix`` (trailing slash optional).

    Raises:
        InvalidInputError: not an S3 URI.
    """
    try:
        return parse_s3_prefix(uri, field="s3_prefix")
    except S3LocationError as exc:
        raise InvalidInputError(str(exc)) from exc


def _evaluation_keys_missing(exc: InferenceFailedError) -> bool:
    """True when the endpoint says the evaluation keys object does not exist."""
    return exc.code == EVALUATION_KEYS_NOT_FOUND.code


def _check_options(*, batch_size: int, timeout: float) -> None:
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be at least 1, got {batch_size}")
    if timeout <= 0:
        raise InvalidInputError(f"timeout must be positive, got {timeout}")


def _aws_clients(session: boto3.session.Session, *, region_name: str | None,
                 s3_endpoint_url: str | None, runtime_endpoint_url: str | None
                 ) -> tuple[Any, Any]:
    """The S3 and sagemaker-runtime clients of ``session`` (endpoint overrides: local stack).

    Raises:
        StorageError: no region is configured.
    """
    try:
        return (session.client("s3", endpoint_url=s3_endpoint_url, region_name=region_name,
                               config=_BOTO_CONFIG),
                session.client("sagemaker-runtime", endpoint_url=runtime_endpoint_url,
                               region_name=region_name, config=_RUNTIME_CONFIG))
    except NoRegionError as exc:
        raise StorageError(
            "no AWS region configured: pass region_name=… or set AWS_DEFAULT_REGION"
        ) from exc


def validate_features(x: Any, n_features: int) -> np.ndarray:
    """Return ``x`` as a finite float64 array of shape (rows, n_features).

    Raises:
        InvalidInputError: naming the problem (type, shape, feature count, NaN/inf rows).
    """
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"X must be numeric (a numpy array, list or DataFrame of numbers): {exc}"
        ) from exc
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        raise InvalidInputError(
            f"X must be 2-D (rows x {n_features} features) or one 1-D row; got shape {arr.shape}"
        )
    if arr.shape[0] == 0:
        raise InvalidInputError("X has no rows")
    if arr.shape[1] != n_features:
        raise InvalidInputError(
            f"X has {arr.shape[1]} features per row but the model expects {n_features}"
        )
    bad_rows = np.unique(np.nonzero(~np.isfinite(arr))[0])
    if bad_rows.size:
        shown = ", ".join(map(str, bad_rows[:10].tolist())) + (" …" if bad_rows.size > 10 else "")
        raise InvalidInputError(
            f"X has NaN or infinite values in {bad_rows.size} row(s) ({shown});"
            " impute or drop them before encrypting"
        )
    return arr


class EncryptedPredictor:
    """Predict with a SageMaker async FHE endpoint; features never leave this process in clear.

    Args:
        endpoint_name: The SageMaker (or local) endpoint.
        model: ``s3://…/model.tar.gz``, a local model.tar.gz, or a model directory.
        s3_prefix: ``s3://bucket/prefix`` for evaluation keys, queries and requests.
        key_dir: Key directory (default: the user's cache dir); one subdirectory per model.
        cache_dir: Where downloaded model archives are kept (default: the user's cache dir).
        session: A boto3 session (credentials, region). Default: a new default session.
        s3_endpoint_url: S3 endpoint override (local stack); boto3 also honours AWS_ENDPOINT_URL_S3.
        runtime_endpoint_url: sagemaker-runtime endpoint override (local stack); boto3 also
            honours AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME.
        region_name: Region, when the session has none.
        batch_size: Rows per request (one packed ciphertext object each); 1 in reference mode.
        timeout: Seconds to wait for each request's result, counted from when it was sent or
            from the previous result, whichever is later.
        backoff: When to poll (default: around the time results of earlier requests took,
            else every 5 % of the time waited so far, 5 ms to 1 s apart).
        retry: How errors the contract calls retryable (``503 NotReady`` after a worker
            restart, ...) are retried: :class:`client.retry.RetryPolicy` (default: up to 8
            invocations, exponential backoff with full jitter from 1 s, capped at 30 s, always
            inside ``timeout``); ``RetryPolicy(max_attempts=1)`` never retries.
        keep_objects: Leave queries, requests and outputs in S3 (default: delete after reading).
        progress: Show tqdm progress bars.
        expected_fingerprint: Refuse a model whose client.zip sha256 differs.
    """

    def __init__(
        self,
        endpoint_name: str,
        model: str | os.PathLike[str],
        s3_prefix: str,
        *,
        key_dir: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        session: boto3.session.Session | None = None,
        s3_endpoint_url: str | None = None,
        runtime_endpoint_url: str | None = None,
        region_name: str | None = None,
        batch_size: int = 32,
        timeout: float = 600.0,
        backoff: Backoff | None = None,
        retry: RetryPolicy | None = None,
        keep_objects: bool = False,
        progress: bool = True,
        expected_fingerprint: str | None = None,
    ) -> None:
        _check_options(batch_size=batch_size, timeout=timeout)
        self.endpoint_name = endpoint_name
        self.s3_prefix = parse_prefix(s3_prefix)
        self.batch_size = batch_size
        self.timeout = float(timeout)
        self.backoff = backoff or Backoff()
        self.retry = retry or RetryPolicy()
        self._retrier = Retrier(self.retry)
        self.keep_objects = keep_objects
        self.progress = progress
        self.key_store = KeyStore(key_dir)
        self.timings = Timings()
        self.last_timings = Timings()
        self._closed = False
        self._fhe: Any = None
        self._keys: KeySet | None = None
        self._uploaded_keys: S3Uri | None = None
        # S3 calls that need not wait for each other: the two uploads of a request, cleanup.
        self._io = ThreadPoolExecutor(max_workers=4, thread_name_prefix="fhe-client-s3")
        # Recent endpoint service times, to poll when results are due.
        self._service_times = ServiceTimes()
        self._s3, self._runtime = _aws_clients(
            session or boto3.session.Session(region_name=region_name), region_name=region_name,
            s3_endpoint_url=s3_endpoint_url, runtime_endpoint_url=runtime_endpoint_url)
        self.storage = S3Storage(self._s3)
        # Fetched and checked now, so a wrong or incompatible model fails here, not mid-predict.
        self.model: ClientModel = load_client_model(
            model, storage=self.storage, expected_fingerprint=expected_fingerprint,
            cache_dir=Path(cache_dir) if cache_dir is not None else default_cache_dir())

    @classmethod
    def from_training_job(
        cls,
        endpoint_name: str,
        s3_prefix: str,
        *,
        job_name: str | None = None,
        base_job_name: str | None = None,
        session: boto3.session.Session | None = None,
        region_name: str | None = None,
        **options: Any,
    ) -> EncryptedPredictor:
        """A predictor for the model a training job wrote (``ModelArtifacts.S3ModelArtifacts``).

        Args:
            job_name: A completed training job, or
            base_job_name: the newest completed job named ``base`` or ``base-…``.
            **options: Any other keyword of the constructor.

        Raises:
            ModelArtifactError: no such completed job.
        """
        session = session or boto3.session.Session(region_name=region_name)
        sagemaker = session.client("sagemaker", region_name=region_name, config=_BOTO_CONFIG)
        try:
            model = training_job_model_data(sagemaker, job_name=job_name,
                                            base_job_name=base_job_name)
        finally:
            sagemaker.close()
        return cls(endpoint_name, model, s3_prefix, session=session, region_name=region_name,
                   **options)

    def __repr__(self) -> str:
        m = self.model.manifest
        return (
            f"EncryptedPredictor(endpoint_name={self.endpoint_name!r}, model={self.model.source!r},"
            f" model_class={m.model_class!r}, task={m.task!r}, n_features={m.n_features},"
            f" s3_prefix='{str(self.s3_prefix).rstrip('/')}', key_dir='{self.key_store.root}',"
            f" batch_size={self.batch_size}, timeout={self.timeout}"
            f"{', closed' if self._closed else ''})"
        )

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Finish background cleanup, release the boto3 clients; the key directory stays."""
        if not self._closed:
            self._closed = True
            self._io.shutdown(wait=True)
            self._s3.close()
            self._runtime.close()

    def __enter__(self) -> EncryptedPredictor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- keys ------------------------------------------------------------------------------
    @property
    def circuit(self) -> dict[str, Any]:
        """The model's circuit record (rounding, p_error, exact, measured agreement): see
        :attr:`client.model.ClientModel.circuit`."""
        return self.model.circuit

    @property
    def fingerprint(self) -> str:
        """The model fingerprint (sha256 of client.zip)."""
        return self.model.fingerprint

    def ensure_keys(self) -> KeySet:
        """Load this model's keys from the key directory, generating them the first time."""
        if self._keys is None:
            self._keys = self.key_store.load_or_generate(
                self._fhe_client(), self.fingerprint, progress=self.progress
            )
            if self._keys.generated:
                self.timings.keygens += 1
                self.timings.keygen += self._keys.seconds
        return self._keys

    def evaluation_keys_uri(self) -> S3Uri:
        """Where this key set's evaluation keys live in S3 (content-addressed)."""
        return self.s3_prefix.join("keys", f"{self.ensure_keys().evaluation_keys_sha256}.ekl")

    def upload_evaluation_keys(self) -> S3Uri:
        """Upload the evaluation keys unless S3 already has them (HEAD first); return their URI."""
        uri = self.evaluation_keys_uri()
        if self._uploaded_keys == uri:
            return uri
        start = time.perf_counter()
        if not self.storage.exists(uri):
            self.storage.put(uri, self.ensure_keys().read_evaluation_keys())
            self.timings.evaluation_key_uploads += 1
        self.timings.upload += time.perf_counter() - start
        self.key_store.record_upload(self.fingerprint, str(uri))
        self._uploaded_keys = uri
        return uri

    def _fhe_client(self) -> Any:
        if self._fhe is None:
            self._fhe = load_fhe_client(self.model)
        return self._fhe

    # -- predictions -----------------------------------------------------------------------
    def predict(self, x: Any) -> np.ndarray:
        """Class labels (classifiers) or values (regressors) for each row of ``x``."""
        out = self._run(x)
        if self.model.manifest.task == "regression":
            return out[:, 0] if out.ndim == 2 and out.shape[1] == 1 else out
        index = np.argmax(out, axis=1)
        classes = self.model.manifest.classes
        return np.asarray(classes)[index] if classes else index

    def predict_proba(self, x: Any) -> np.ndarray:
        """Class probabilities, shape (rows, classes), as the clear quantised model computes them.

        Raises:
            UnsupportedOperationError: the model is a regressor.
        """
        if self.model.manifest.task != "classification":
            raise UnsupportedOperationError(
                f"{self.model.manifest.model_class} is a regressor: use predict()"
            )
        return self._run(x)

    def _run(self, x: Any) -> np.ndarray:
        if self._closed:
            raise EncryptedInferenceError("this EncryptedPredictor is closed; create a new one")
        features = validate_features(x, self.model.manifest.n_features)
        before = Timings(**self.timings.as_dict())
        up0, down0 = self.storage.bytes_uploaded, self.storage.bytes_downloaded
        scaled = self.model.manifest.scaler.transform(features)
        try:
            results = self._run_batches(scaled)
        except InferenceFailedError as exc:
            if not _evaluation_keys_missing(exc):
                raise
            # The keys were deleted from S3 since we uploaded them (lifecycle rule, restarted
            # local S3): upload them again and send the rows once more.
            self._uploaded_keys = None
            results = self._run_batches(scaled)
        self.timings.rows += len(scaled)
        self.timings.bytes_uploaded += self.storage.bytes_uploaded - up0
        self.timings.bytes_downloaded += self.storage.bytes_downloaded - down0
        self.last_timings = Timings(
            **{k: v - getattr(before, k) for k, v in self.timings.as_dict().items()}
        )
        return np.concatenate(results, axis=0)

    def _run_batches(self, scaled: np.ndarray) -> list[np.ndarray]:
        """Encrypt, send and collect every batch of ``scaled`` rows."""
        keys = self.ensure_keys()
        rows = 1 if self.model.reference_mode else self.batch_size
        try:
            keys_uri = self.upload_evaluation_keys()
            starts = range(0, len(scaled), rows)
            pending = [
                self._submit(scaled[i : i + rows], keys, keys_uri)
                for i in self._progress(starts, "encrypt + send")
            ]
            results, last = [], time.monotonic()
            for request in self._progress(pending, "wait + decrypt"):
                started = max(request.sent_at, last)
                results.append(self._collect(request, started=started))
                last = time.monotonic()
        except StorageError:
            self._uploaded_keys = None  # S3 failed: check (HEAD) the keys again next time
            raise
        return results

    def _progress(self, items: Iterable[T], desc: str) -> Iterable[T]:
        """``items`` with a transient tqdm bar per batch (when ``progress`` is on)."""
        return tqdm(items, desc=desc, unit="batch", disable=not self.progress, leave=False)

    def _submit(self, rows: np.ndarray, keys: KeySet, keys_uri: S3Uri) -> _Pending:
        start = time.perf_counter()
        fhe = self._fhe_client()
        ciphertexts = [fhe.quantize_encrypt_serialize(row.reshape(1, -1)) for row in rows]
        raw = self.model.reference_mode
        payload = ciphertexts[0] if raw else pack_batch(ciphertexts)
        self.timings.encrypt += time.perf_counter() - start
        inference_id = uuid.uuid4().hex
        query = self.s3_prefix.join("queries", f"{inference_id}.{'bin' if raw else 'fheb'}")
        request = self.s3_prefix.join("requests", f"{inference_id}.json")
        body = self._request_body(query, payload, keys, keys_uri)
        start = time.perf_counter()
        query_type = CONTENT_TYPE_RESULT if raw else CONTENT_TYPE_BATCH
        uploads = [
            self._io.submit(self.storage.put, query, payload, content_type=query_type),
            self._io.submit(self.storage.put, request, body, content_type=CONTENT_TYPE_JSON),
        ]
        for upload in uploads:
            upload.result()  # both must land before the invocation; re-raises StorageError
        self.timings.upload += time.perf_counter() - start
        pending = _Pending(inference_id, len(rows), [query, request], request, raw=raw)
        self._send(pending, deadline=time.monotonic() + self.timeout)
        self.timings.requests += 1
        return pending

    def _send(self, pending: _Pending, *, deadline: float) -> None:
        """Invoke the endpoint for ``pending`` (retrying what may be retried before
        ``deadline``); record where its output and failure objects will appear."""
        start = time.perf_counter()
        attempts = pending.attempt

        def count(attempt: int) -> None:
            pending.attempt = attempt
            self.timings.retries += 1

        try:
            response = self._retrier.call(
                lambda: self._invoke(pending.request, pending.inference_id), deadline=deadline,
                what=f"InvokeEndpointAsync of request {pending.inference_id}",
                attempt=attempts, on_retry=count)
        finally:
            self.timings.invoke += time.perf_counter() - start
        pending.output = parse_s3_uri(response["OutputLocation"], field="OutputLocation")
        failure = response.get("FailureLocation")
        pending.failure = parse_s3_uri(failure, field="FailureLocation") if failure else None
        pending.sent_at = time.monotonic()

    def _request_body(self, query: S3Uri, payload: bytes, keys: KeySet, keys_uri: S3Uri
                      ) -> bytes:
        """The request JSON: the batch form with every check, or the sample's two fields."""
        if self.model.reference_mode:  # exactly what the AWS sample's server accepts
            return build_request(evaluation_keys_uri=str(keys_uri),
                                 encrypted_query_uri=str(query))
        return build_request(
            evaluation_keys_uri=str(keys_uri),
            encrypted_batch_uri=str(query),
            model_fingerprint=self.fingerprint,
            evaluation_keys_sha256=keys.evaluation_keys_sha256,
            encrypted_query_sha256=sha256_hex(payload),
        )

    def _invoke(self, request: S3Uri, inference_id: str) -> dict[str, Any]:
        try:
            return self._runtime.invoke_endpoint_async(
                EndpointName=self.endpoint_name,
                InputLocation=str(request),
                ContentType=CONTENT_TYPE_JSON,
                InferenceId=inference_id,
            )
        except ClientError as exc:
            err = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status is not None and (status >= 500 or status == 429):
                raise translate(exc, action=f"invoking endpoint {self.endpoint_name}") from exc
            code = str(err.get("Code", "Unknown"))
            raise InferenceFailedError(
                str(err.get("Message", exc)),
                status=status,
                code=code,
                location=f"endpoint {self.endpoint_name}",
                retryable=is_retryable(code, status),
            ) from exc
        except BotoCoreError as exc:
            raise translate(exc, action=f"invoking endpoint {self.endpoint_name}") from exc

    def _expected_at(self, request: _Pending, started: float) -> float | None:
        """When the result of ``request`` should be ready, if requests of its size were timed."""
        expected = self._service_times.expected(request.n_rows)
        return None if expected is None else started + expected

    def _wait(self, request: _Pending, *, started: float) -> Any:
        """Poll for ``request``'s output until its deadline; a failure object whose code is
        retryable sends the same request objects again (see :mod:`client.retry`)."""
        deadline = started + self.timeout
        while True:
            assert request.output is not None, "the request was not sent"
            try:
                return wait_for_result(
                    self.storage, output=request.output, failure=request.failure,
                    deadline=deadline, backoff=self.backoff,
                    expected_at=self._expected_at(request, started) if request.attempt == 1
                    else None)
            except InferenceFailedError as exc:
                if not self._retrier.pause(exc, attempt=request.attempt, deadline=deadline,
                                           what=f"request {request.inference_id}"):
                    raise
            self._resend(request, deadline=deadline)

    def _resend(self, request: _Pending, *, deadline: float) -> None:
        """Invoke ``request`` again under a fresh InferenceId (same uploaded objects); the
        spent failure object goes, unless the new attempt reports to the same location."""
        spent = request.failure
        request.attempt += 1
        self.timings.retries += 1
        request.inference_id = f"{request.inference_id.split('-', 1)[0]}-{request.attempt}"
        self._send(request, deadline=deadline)
        if spent is not None and spent != request.failure and not self.keep_objects:
            self._io.submit(self._delete_quietly, [spent])

    def _collect(self, request: _Pending, *, started: float) -> np.ndarray:
        """Wait for one request's result (``started``: when the endpoint could start it)."""
        start = time.perf_counter()
        result = self._wait(request, started=started)
        if request.attempt == 1:  # a retried request's time includes the backoff
            self._service_times.record(request.n_rows, result.found_at - started)
        self.timings.wait += time.perf_counter() - start - result.download_seconds
        self.timings.download += result.download_seconds
        body = result.body
        start = time.perf_counter()
        try:
            items = [body] if request.raw else unpack_batch(body)
        except ContractError as exc:
            raise InferenceFailedError(
                f"malformed batch result: {exc}", code=CODE_BAD_RESPONSE,
                location=str(request.output),
            ) from exc
        if len(items) != request.n_rows:
            raise InferenceFailedError(
                f"{len(items)} results for {request.n_rows} rows",
                code=CODE_BAD_RESPONSE,
                location=str(request.output),
            )
        try:
            values = np.concatenate(
                [self._fhe_client().deserialize_decrypt_dequantize(item) for item in items], axis=0
            )
        except (RuntimeError, ValueError) as exc:
            raise InferenceFailedError(
                f"cannot decrypt the result ({exc}); is the endpoint serving this model?",
                code=CODE_DECRYPTION_FAILED,
                location=str(request.output),
            ) from exc
        self.timings.decrypt += time.perf_counter() - start
        if not self.keep_objects:
            start = time.perf_counter()
            self._io.submit(self._delete_quietly, [*request.objects, request.output])
            self.timings.cleanup += time.perf_counter() - start
        return values

    def _delete_quietly(self, uris: list[S3Uri]) -> None:
        """Delete per-request objects off the critical path; a failure only costs storage."""
        try:
            self.storage.delete(uris)
        except StorageError as exc:
            logger.warning("could not delete %d request object(s): %s", len(uris), exc)

    def clean_up_keys(self) -> None:
        """Delete this key set's evaluation keys from S3 (the local key directory stays)."""
        self.storage.delete([self.evaluation_keys_uri()])
        self._uploaded_keys = None
