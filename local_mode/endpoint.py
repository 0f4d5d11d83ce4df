"""A SageMaker asynchronous endpoint on this machine (``deploy_endpoint.py --local``).

The real ``serve`` (nginx + gunicorn + the predictor) on a loopback port, configured through the
serving container's own :class:`inference.settings.Settings`, behind
:class:`local_mode.runtime.LocalAsyncRuntime` (SageMaker's ``InvokeEndpointAsync`` front end),
on a given S3 endpoint or an embedded one (:class:`local_mode.s3_server.LocalS3Server`).

The endpoint owns its processes: SIGTERM or SIGINT at any stage (the embedded S3 starting, the
model downloading or loading, ready, mid-request) stops all of them within
:data:`STOP_SECONDS` and the launcher exits 0; a request in progress gets ``serve``'s graceful
period to finish (its result is written), a queued one a ``503 RuntimeStopped`` failure object.
If the launcher dies (``kill -9``), ``serve`` and the embedded S3 get a parent-death signal and
stop too (:func:`common.process.die_with_parent`), and so do their own children.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from common.files import atomic_write_bytes
from common.process import EXIT_FAILED, EXIT_OK, die_with_parent
from common.s3_location import parse_s3_prefix, parse_s3_uri
from inference.serve import Supervisor
from inference.settings import ENV_S3_ENDPOINT, Settings, SettingsError, parse_allowed_prefix
from local_mode.processes import ProcessError, free_port, stop_process, wait_for_ping
from local_mode.runtime import LocalAsyncRuntime
from local_mode.s3_server import LocalS3Server

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
SERVE_STOP_TIMEOUT = Supervisor.STOP_SECONDS + 5.0
"""``serve`` stops within its own bound; it is killed (SIGKILL) only if it overruns this."""
STOP_SECONDS = SERVE_STOP_TIMEOUT + 15.0
"""Longest time a stop takes: ``serve``, then the runtime's last writes and the embedded S3."""


class LocalEndpointError(RuntimeError):
    """The local endpoint could not start (model unreadable, ``serve`` failed to get healthy)."""


@dataclass(frozen=True)
class LocalEndpointConfig:
    """What one local endpoint serves, and how.

    Attributes:
        endpoint_name: The only endpoint name the runtime accepts.
        output_path: ``s3://bucket/prefix`` for results.
        failure_path: ``s3://bucket/prefix`` for failures.
        allowed_prefixes: ``s3://`` folders the container (and so the runtime) may read.
        model_dir: A model directory to serve, or
        model_data: ``s3://…/model.tar.gz`` to download and serve.
        s3_endpoint_url: S3 endpoint; None = ``AWS_ENDPOINT_URL_S3``, else an embedded S3
            (only with ``model_dir``: nothing to download then).
        timeout: Seconds per invocation in the container (the runtime's bound is
            ``invocation_timeout``).
        invocation_timeout: The runtime's upper bound of seconds per invocation.
        workers: gunicorn workers.
        max_concurrency: Invocations the runtime sends to the container at once.
        startup_timeout: Seconds ``serve`` may take to answer ``/ping`` with 200.
        port: ``serve``'s port (0: a free one).
        runtime_port: The runtime's port (0: a free one).
        journal_dir: Where the runtime records accepted invocations (None: no journal).
    """

    endpoint_name: str
    output_path: str
    failure_path: str
    allowed_prefixes: tuple[str, ...]
    model_dir: Path | None = None
    model_data: str | None = None
    s3_endpoint_url: str | None = None
    timeout: int = 600
    invocation_timeout: int = 660
    workers: int = 1
    max_concurrency: int = 1
    startup_timeout: float = 1800.0
    port: int = 0
    runtime_port: int = 0
    journal_dir: Path | None = None


def extract_model(archive: Path, dest: Path) -> Path:
    """Unpack model.tar.gz safely (no absolute paths, links or device files)."""
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(dest, filter="data")
    return dest


class LocalEndpoint:
    """The whole endpoint on this machine; a context manager that owns its processes.

    Args:
        config: What to serve.
        work_dir: Model download, key cache and the embedded S3's log.
    """

    def __init__(self, config: LocalEndpointConfig, work_dir: Path) -> None:
        self.config = config
        self.work_dir = work_dir
        self.s3_server: LocalS3Server | None = None
        self.serve: subprocess.Popen[bytes] | None = None
        self.runtime: LocalAsyncRuntime | None = None

    def start(self) -> dict[str, str]:
        """Start S3 (if embedded), ``serve`` and the runtime; return the ready document.

        Raises:
            LocalEndpointError: the model cannot be read, or ``serve`` did not get healthy.
        """
        s3, s3_url, s3_env = self._s3()
        settings = self._serve_settings(self._model_dir(s3), s3_url)
        serve_url = f"http://{settings.host}:{settings.port}"
        self.serve = subprocess.Popen([sys.executable, "-m", "inference.serve"],
                                      env={**os.environ, **s3_env, **settings.to_env()},
                                      preexec_fn=die_with_parent(signal.SIGTERM))
        try:
            wait_for_ping(serve_url, process=self.serve, timeout=self.config.startup_timeout,
                          interval=0.2)
        except ProcessError as exc:
            raise LocalEndpointError(f"serve did not get healthy: {exc}; see its log") from exc
        self.runtime = LocalAsyncRuntime(
            endpoint_name=self.config.endpoint_name, container_url=serve_url,
            output_path=self.config.output_path, failure_path=self.config.failure_path,
            s3_client=s3, max_concurrency=self.config.max_concurrency,
            invocation_timeout=self.config.invocation_timeout, port=self.config.runtime_port,
            journal_dir=self.config.journal_dir, allowed_input_prefixes=settings.allowed_prefixes,
        ).start()
        return {"endpoint_name": self.config.endpoint_name, "runtime_url": self.runtime.url,
                "serve_url": serve_url, "s3_endpoint_url": s3_url or "",
                "output_path": self.config.output_path, "failure_path": self.config.failure_path}

    def _s3(self) -> tuple[Any, str | None, dict[str, str]]:
        """The S3 client, endpoint URL and environment the endpoint uses (embedded if none)."""
        import boto3

        s3_url = self.config.s3_endpoint_url or os.environ.get(ENV_S3_ENDPOINT)
        if s3_url or self.config.model_data:
            return boto3.client("s3", endpoint_url=s3_url), s3_url, {}
        self.s3_server = LocalS3Server(log_path=self.work_dir / "s3.log").start()
        logger.info("embedded S3 on %s", self.s3_server.endpoint_url)
        s3 = self.s3_server.client()
        for uri in (self.config.output_path, self.config.failure_path):
            s3.create_bucket(Bucket=parse_s3_prefix(uri).bucket)
        return s3, self.s3_server.endpoint_url, self.s3_server.env()

    def _serve_settings(self, model_dir: Path, s3_url: str | None) -> Settings:
        """The container's settings: the environment's, with this endpoint's on top.

        Raises:
            LocalEndpointError: the environment holds server settings ``serve`` would refuse.
        """
        try:
            base = Settings.from_env()
        except SettingsError as exc:
            raise LocalEndpointError(str(exc)) from exc
        return dataclasses.replace(
            base,
            port=self.config.port or free_port(), host=LOOPBACK, workers=self.config.workers,
            timeout=self.config.timeout, model_dir=model_dir,
            allowed_prefixes=tuple(parse_allowed_prefix(p) for p in self.config.allowed_prefixes),
            key_cache_dir=self.work_dir / "keys", s3_endpoint_url=s3_url)

    def _model_dir(self, s3: Any) -> Path:
        if self.config.model_dir:
            return Path(self.config.model_dir).resolve()
        from botocore.exceptions import BotoCoreError, ClientError

        uri = parse_s3_uri(self.config.model_data, field="--model-data")
        archive = self.work_dir / "model.tar.gz"
        try:
            s3.download_file(uri.bucket, uri.key, str(archive))
        except (ClientError, BotoCoreError) as exc:
            raise LocalEndpointError(f"cannot download {uri}: {exc}") from exc
        return extract_model(archive, self.work_dir / "model")

    def stop(self) -> None:
        """Stop everything within :data:`STOP_SECONDS`: the runtime takes no new requests,
        ``serve`` stops (a request in progress gets its graceful period), the runtime writes
        the last output or failure objects, then the embedded S3 stops."""
        if self.runtime is not None:
            self.runtime.stop_accepting()
        if self.serve is not None:
            stop_process(self.serve, timeout=SERVE_STOP_TIMEOUT)
        if self.runtime is not None:
            self.runtime.stop()
        if self.s3_server is not None:
            self.s3_server.stop()

    def __enter__(self) -> dict[str, str]:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class StopRequested(Exception):
    """Raised in the main thread by SIGINT/SIGTERM while the endpoint starts."""


class _Signals:
    """SIGINT/SIGTERM set ``stop``; while ``starting``, the first one also raises
    :class:`StopRequested` (a start blocks in waits and downloads that check no event)."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.starting = True

    def __call__(self, signum: int, _frame: object) -> None:
        logger.info("received %s; stopping the local endpoint", signal.Signals(signum).name)
        self.stop.set()
        if self.starting:
            self.starting = False
            raise StopRequested(signal.Signals(signum).name)


def run_until_stopped(config: LocalEndpointConfig, *, ready_file: Path | None = None,
                      stop_event: threading.Event | None = None,
                      on_ready: Callable[[dict[str, str]], None] | None = None) -> int:
    """Run a local endpoint until SIGINT/SIGTERM (or ``stop_event``), or until ``serve`` dies.

    A signal at any stage, the start included, stops everything (module docstring).

    Returns:
        EXIT_OK after a stop request, EXIT_FAILED when ``serve`` exited by itself.

    Raises:
        LocalEndpointError: the endpoint could not start.
    """
    handler = _Signals(stop_event or threading.Event())
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, handler)
    else:
        handler.starting = False  # signals are the main thread's; stop_event still works
    try:
        return _serve_until_stopped(config, handler, ready_file=ready_file, on_ready=on_ready)
    except StopRequested as exc:
        logger.info("stopped (%s) before the endpoint was ready", exc)
        return EXIT_OK


def _serve_until_stopped(config: LocalEndpointConfig, handler: _Signals, *,
                         ready_file: Path | None,
                         on_ready: Callable[[dict[str, str]], None] | None) -> int:
    stop = handler.stop
    with tempfile.TemporaryDirectory(prefix="fhe-local-endpoint-") as work:
        endpoint = LocalEndpoint(config, Path(work))
        with endpoint as ready:
            handler.starting = False
            if stop.is_set():
                return EXIT_OK
            if on_ready is not None:
                on_ready(ready)
            if ready_file is not None:
                atomic_write_bytes(ready_file, json.dumps(ready, indent=2).encode())
            while not stop.wait(0.5):
                if endpoint.serve is not None and endpoint.serve.poll() is not None:
                    logger.error("serve exited with code %s", endpoint.serve.returncode)
                    return EXIT_FAILED
            return EXIT_OK
