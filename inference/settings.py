"""The inference container's configuration, read from the environment in one place."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from common import sagemaker_layout
from common.s3_location import S3LocationError, S3Prefix, parse_s3_prefix
from inference.runtimes import RUNTIME_CONCRETE_ML, RUNTIMES

ENV_PORT = "SAGEMAKER_BIND_TO_PORT"
ENV_HOST = "FHE_BIND_HOST"
ENV_WORKERS = "SAGEMAKER_MODEL_SERVER_WORKERS"
ENV_TIMEOUT = "SAGEMAKER_MODEL_SERVER_TIMEOUT"
# The names the AWS sample's `serve` reads; honoured too, SageMaker's names win when both are set.
ENV_WORKERS_SAMPLE = "MODEL_SERVER_WORKERS"
ENV_TIMEOUT_SAMPLE = "MODEL_SERVER_TIMEOUT"
ENV_MODEL_DIR = "FHE_MODEL_DIR"
ENV_SM_MODEL_DIR = sagemaker_layout.ENV_MODEL_DIR
ENV_ALLOWED_PREFIXES = "FHE_ALLOWED_S3_PREFIXES"
ENV_KEY_CACHE_DIR = "FHE_KEY_CACHE_DIR"
ENV_RUNTIME = "FHE_RUNTIME"
ENV_CIRCUIT_CACHE_DIR = "FHE_CIRCUIT_CACHE_DIR"
ENV_KEY_CACHE_MAX_BYTES = "FHE_KEY_CACHE_MAX_BYTES"
ENV_MAX_REQUEST_BYTES = "FHE_MAX_REQUEST_BYTES"
ENV_MAX_OBJECT_BYTES = "FHE_MAX_OBJECT_BYTES"
ENV_MAX_BATCH_SIZE = "FHE_MAX_BATCH_SIZE"
ENV_S3_ENDPOINT = "AWS_ENDPOINT_URL_S3"
ENV_S3_CONNECT_TIMEOUT = "FHE_S3_CONNECT_TIMEOUT"
ENV_S3_READ_TIMEOUT = "FHE_S3_READ_TIMEOUT"

DEFAULT_PORT = 8080
DEFAULT_HOST = "0.0.0.0"
DEFAULT_WORKERS = 1  # one FHE run already uses every core
DEFAULT_TIMEOUT = 600
DEFAULT_MODEL_DIR = str(sagemaker_layout.JobLayout().model_dir)
DEFAULT_KEY_CACHE_DIR = "/tmp/fhe-key-cache"
DEFAULT_RUNTIME = RUNTIME_CONCRETE_ML
DEFAULT_CIRCUIT_CACHE_DIR = "/tmp/fhe-circuit-cache"
DEFAULT_KEY_CACHE_MAX_BYTES = 2 << 30
DEFAULT_MAX_REQUEST_BYTES = 64 << 10
DEFAULT_MAX_OBJECT_BYTES = 1 << 30
DEFAULT_MAX_BATCH_SIZE = 256
DEFAULT_S3_CONNECT_TIMEOUT = 5.0
DEFAULT_S3_READ_TIMEOUT = 60.0


_KIND_NAMES = {int: "a whole number", float: "a number"}


class SettingsError(ValueError):
    """An environment variable holds a value the server cannot use."""


def parse_allowed_prefix(text: str) -> S3Prefix:
    """Parse one allow-list entry: ``s3://bucket``, ``s3://bucket/`` or ``s3://bucket/prefix``.

    Raises:
        SettingsError: not of that form (see :mod:`common.s3_location`).
    """
    try:
        return parse_s3_prefix(text.strip(), field=ENV_ALLOWED_PREFIXES)
    except S3LocationError as exc:
        raise SettingsError(str(exc)) from exc


class _EnvReader:
    """Typed values out of an environment; every unusable one is remembered in ``problems``."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def number(self, name: str, default: float, kind: type, minimum: float,
               fallback: str | None = None) -> float:
        """``name`` (else ``fallback``) as ``kind`` >= ``minimum``; ``default`` when unset/bad."""
        raw = self.env.get(name, "").strip()
        if not raw and fallback:
            name, raw = fallback, self.env.get(fallback, "").strip()
        if not raw:
            return default
        try:
            value = kind(raw)
        except ValueError:
            self.problems.append(f"{name}={raw!r} is not {_KIND_NAMES[kind]}")
            return default
        if value < minimum:
            self.problems.append(f"{name}={raw!r} must be >= {minimum}")
            return default
        return value

    def allowed_prefixes(self) -> tuple[S3Prefix, ...]:
        """The comma-separated allow-list (unparsable entries are problems)."""
        prefixes: list[S3Prefix] = []
        entries = (p.strip() for p in self.env.get(ENV_ALLOWED_PREFIXES, "").split(","))
        for item in filter(None, entries):
            try:
                prefixes.append(parse_allowed_prefix(item))
            except SettingsError as exc:
                self.problems.append(str(exc))
        return tuple(prefixes)

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        """``name`` if it is one of ``choices``; ``default`` when unset (or bad: a problem)."""
        raw = self.env.get(name, "").strip()
        if not raw:
            return default
        if raw not in choices:
            self.problems.append(f"{name}={raw!r} is not one of {', '.join(choices)}")
            return default
        return raw


@dataclass(frozen=True)
class Settings:
    """Everything the server reads from its environment.

    Attributes:
        port: TCP port the container listens on (nginx, or gunicorn without nginx).
        host: Address to listen on (``127.0.0.1`` in local mode).
        workers: gunicorn worker processes; each loads the circuit and runs one query at a time
            (``SAGEMAKER_MODEL_SERVER_WORKERS``, else the sample's ``MODEL_SERVER_WORKERS``).
        timeout: Seconds one invocation may take, end to end (gunicorn, nginx, SageMaker)
            (``SAGEMAKER_MODEL_SERVER_TIMEOUT``, else the sample's ``MODEL_SERVER_TIMEOUT``).
        model_dir: Holds server.zip, client.zip, manifest.json.
        allowed_prefixes: S3 folders the server may read (segment-bounded, see
            :mod:`common.s3_location`); anything else is refused (403) before any read.
        key_cache_dir: On-disk cache of evaluation keys, by sha256 (shared by workers).
        key_cache_max_bytes: Bound of the in-memory LRU of deserialised keys (estimated
            resident size, see ``inference.key_cache``).
        max_request_bytes: Largest request body accepted (413 above).
        max_object_bytes: Largest S3 object read (413 above).
        max_batch_size: Most ciphertexts in one request (413 above).
        s3_endpoint_url: S3 endpoint override (local mode, tests); None = AWS.
        s3_connect_timeout: Seconds to connect to S3.
        s3_read_timeout: Seconds to wait on an S3 read.
        runtime: What runs the circuit (``FHE_RUNTIME``): ``concrete-ml`` (FHEModelServer, the
            default image) or ``compiler`` (concrete's compiler alone, the slim image); see
            :mod:`inference.runtimes`.
        circuit_cache_dir: Where the ``compiler`` runtime keeps the compiled circuit, shared by
            the container's workers.
    """

    port: int = DEFAULT_PORT
    host: str = DEFAULT_HOST
    workers: int = DEFAULT_WORKERS
    timeout: int = DEFAULT_TIMEOUT
    model_dir: Path = Path(DEFAULT_MODEL_DIR)
    allowed_prefixes: tuple[S3Prefix, ...] = field(default_factory=tuple)
    key_cache_dir: Path = Path(DEFAULT_KEY_CACHE_DIR)
    key_cache_max_bytes: int = DEFAULT_KEY_CACHE_MAX_BYTES
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    s3_endpoint_url: str | None = None
    s3_connect_timeout: float = DEFAULT_S3_CONNECT_TIMEOUT
    s3_read_timeout: float = DEFAULT_S3_READ_TIMEOUT
    runtime: str = DEFAULT_RUNTIME
    circuit_cache_dir: Path = Path(DEFAULT_CIRCUIT_CACHE_DIR)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read settings from ``environ`` (default ``os.environ``).

        Raises:
            SettingsError: every unusable variable, listed in one message.
        """
        env = os.environ if environ is None else environ
        reader = _EnvReader(env)
        number = reader.number
        allowed_prefixes = reader.allowed_prefixes()
        model_dir = env.get(ENV_MODEL_DIR) or env.get(ENV_SM_MODEL_DIR) or DEFAULT_MODEL_DIR
        settings = cls(
            port=int(number(ENV_PORT, DEFAULT_PORT, int, 1)),
            host=env.get(ENV_HOST, "").strip() or DEFAULT_HOST,
            workers=int(number(ENV_WORKERS, DEFAULT_WORKERS, int, 1, ENV_WORKERS_SAMPLE)),
            timeout=int(number(ENV_TIMEOUT, DEFAULT_TIMEOUT, int, 1, ENV_TIMEOUT_SAMPLE)),
            model_dir=Path(model_dir),
            allowed_prefixes=allowed_prefixes,
            key_cache_dir=Path(env.get(ENV_KEY_CACHE_DIR) or DEFAULT_KEY_CACHE_DIR),
            key_cache_max_bytes=int(
                number(ENV_KEY_CACHE_MAX_BYTES, DEFAULT_KEY_CACHE_MAX_BYTES, int, 0)),
            max_request_bytes=int(number(ENV_MAX_REQUEST_BYTES, DEFAULT_MAX_REQUEST_BYTES, int, 1)),
            max_object_bytes=int(number(ENV_MAX_OBJECT_BYTES, DEFAULT_MAX_OBJECT_BYTES, int, 1)),
            max_batch_size=int(number(ENV_MAX_BATCH_SIZE, DEFAULT_MAX_BATCH_SIZE, int, 1)),
            s3_endpoint_url=env.get(ENV_S3_ENDPOINT) or None,
            s3_connect_timeout=number(
                ENV_S3_CONNECT_TIMEOUT, DEFAULT_S3_CONNECT_TIMEOUT, float, 0.1),
            s3_read_timeout=number(ENV_S3_READ_TIMEOUT, DEFAULT_S3_READ_TIMEOUT, float, 0.1),
            runtime=reader.choice(ENV_RUNTIME, DEFAULT_RUNTIME, RUNTIMES),
            circuit_cache_dir=Path(env.get(ENV_CIRCUIT_CACHE_DIR) or DEFAULT_CIRCUIT_CACHE_DIR),
        )
        if reader.problems:
            raise SettingsError("invalid server environment: " + "; ".join(reader.problems))
        return settings

    def to_env(self) -> dict[str, str]:
        """The environment variables that reproduce these settings (for child processes)."""
        env = {
            ENV_PORT: str(self.port),
            ENV_HOST: self.host,
            ENV_WORKERS: str(self.workers),
            ENV_TIMEOUT: str(self.timeout),
            ENV_MODEL_DIR: str(self.model_dir),
            ENV_ALLOWED_PREFIXES: ",".join(map(str, self.allowed_prefixes)),
            ENV_KEY_CACHE_DIR: str(self.key_cache_dir),
            ENV_KEY_CACHE_MAX_BYTES: str(self.key_cache_max_bytes),
            ENV_MAX_REQUEST_BYTES: str(self.max_request_bytes),
            ENV_MAX_OBJECT_BYTES: str(self.max_object_bytes),
            ENV_MAX_BATCH_SIZE: str(self.max_batch_size),
            ENV_S3_CONNECT_TIMEOUT: str(self.s3_connect_timeout),
            ENV_S3_READ_TIMEOUT: str(self.s3_read_timeout),
            ENV_RUNTIME: self.runtime,
            ENV_CIRCUIT_CACHE_DIR: str(self.circuit_cache_dir),
        }
        if self.s3_endpoint_url:
            env[ENV_S3_ENDPOINT] = self.s3_endpoint_url
        return env
