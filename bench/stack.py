"""The local stack the benchmark measures, brought up the way users do (:mod:`local_mode.stack`).

An embedded S3 (:class:`local_mode.s3_server.LocalS3Server`), models trained by
``start_training.py --local``, each served by ``deploy_endpoint.py --local`` (``serve`` behind
the local ``InvokeEndpointAsync`` runtime). The server side is observed through ``GET /metrics``,
``/proc/<worker pid>`` and the per-request timing lines the server and runtime log.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import requests

from bench.cases import ModelCase, Split
from common.artifact import Manifest, read_manifest
from common.s3_location import parse_s3_uri
from inference.settings import (
    ENV_ALLOWED_PREFIXES,
    ENV_HOST,
    ENV_KEY_CACHE_DIR,
    ENV_MODEL_DIR,
    ENV_PORT,
)
from local_mode.endpoint import extract_model
from local_mode.processes import ProcessError, free_port, stop_process, tail, wait_for_ping
from local_mode.s3_server import LocalS3Server
from local_mode.stack import (
    StackError,
    deploy_command,
    reference_model,
    run_local_training,
    running_endpoint,
    upload_training_csv,
)

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
BUCKET = "fhe-bench"
CLIENT_PREFIX = f"s3://{BUCKET}/client"
READY_TIMEOUT = 600.0
STOP_TIMEOUT = 60.0
PING_INTERVAL = 0.01

# Lines the server (inference/predictor.py) and the local runtime (local_mode/runtime.py)
# log for every request; the benchmark reads the server-side breakdown from them.
SERVER_LINE = re.compile(
    r"request (?P<id>\S+) ok: (?P<n>\d+) ciphertext\(s\), (?P<bytes_in>\d+) bytes in,"
    r" (?P<bytes_out>\d+) bytes out; keys (?P<keys>[\d.]+) ms, fetch (?P<fetch>[\d.]+) ms,"
    r" fhe (?P<fhe>[\d.]+) ms")
RUNTIME_LINE = re.compile(r"async job (?P<id>\S+) -> (?P<status>\d+) in (?P<ms>[\d.]+) ms")


class BenchError(RuntimeError):
    """A step of the benchmark's stack failed; the message names the step and its log."""


@dataclass(frozen=True)
class TrainedModel:
    """A model trained by ``start_training.py --local`` and fetched back for in-process use.

    Attributes:
        case: The benchmark case.
        model_data: ``s3://…/model.tar.gz``.
        model_dir: Local extraction of model.tar.gz (server.zip, client.zip, manifest.json).
        manifest: Its manifest.
        reference: The clear concrete-ml model (``reference_model.json``).
        metrics: The training job's metrics.json.
        train_seconds: Wall time of ``start_training.py --local``.
        model_tar_bytes: Size of model.tar.gz.
    """

    case: ModelCase
    model_data: str
    model_dir: Path
    manifest: Manifest
    reference: Any
    metrics: dict[str, Any]
    train_seconds: float
    model_tar_bytes: int


@dataclass(frozen=True)
class ServerRequest:
    """Server-side timings of one request, from the logs (seconds)."""

    keys: float
    fetch: float
    fhe: float
    container: float | None  # the runtime's POST /invocations round trip (nginx, gunicorn, Flask)
    ciphertexts: int


class LogCursor:
    """Reads what a log file gained since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0

    def skip(self) -> None:
        """Forget everything logged so far."""
        self._offset = self.path.stat().st_size if self.path.exists() else 0

    def new_text(self) -> str:
        """Text appended since the last call (or :meth:`skip`)."""
        with open(self.path, "rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        self._offset += len(data)
        return data.decode("utf-8", errors="replace")


def parse_requests(text: str) -> list[ServerRequest]:
    """The successful requests logged in ``text``, in order, joined with the runtime's lines."""
    container = {m["id"]: float(m["ms"]) / 1000 for m in RUNTIME_LINE.finditer(text)}
    return [ServerRequest(keys=float(m["keys"]) / 1000, fetch=float(m["fetch"]) / 1000,
                          fhe=float(m["fhe"]) / 1000, container=container.get(m["id"]),
                          ciphertexts=int(m["n"]))
            for m in SERVER_LINE.finditer(text)]


class Endpoint:
    """A running ``deploy_endpoint.py --local``: its URLs, log, metrics and worker RSS."""

    def __init__(self, name: str, ready: Mapping[str, str], log: Path,
                 process: subprocess.Popen[bytes]) -> None:
        self.name = name
        self.runtime_url = ready["runtime_url"]
        self.serve_url = ready["serve_url"]
        self.log = LogCursor(log)
        self.process = process
        self._http = requests.Session()

    def metrics(self) -> dict[str, Any]:
        """``GET /metrics`` of the serving container."""
        response = self._http.get(f"{self.serve_url}/metrics", timeout=10)
        response.raise_for_status()
        return dict(response.json())

    def close(self) -> None:
        """Stop the endpoint (runtime, serve) and release the HTTP session."""
        self._http.close()
        stop_process(self.process, timeout=STOP_TIMEOUT)


class BenchStack:
    """The embedded S3 plus training and deployment helpers; a context manager.

    Args:
        work_dir: Logs, result files, downloaded models and key directories.
    """

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.logs = work_dir / "logs"
        self.s3_server = LocalS3Server(log_path=work_dir / "s3.log")
        self.s3: Any = None

    def __enter__(self) -> BenchStack:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.s3_server.start()
        self.s3 = self.s3_server.client()
        self.s3.create_bucket(Bucket=BUCKET)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.s3_server.stop()

    @property
    def env(self) -> dict[str, str]:
        """Environment for the kit's scripts: the embedded S3 and its fake credentials."""
        return {**os.environ, **self.s3_server.env()}

    # -- training ----------------------------------------------------------------------------
    def train(self, case: ModelCase, split: Split) -> TrainedModel:
        """Upload the training rows, run ``start_training.py --local``, fetch the results.

        Raises:
            BenchError: the training job failed (the message holds the log's tail).
        """
        upload_training_csv(self.s3, f"s3://{BUCKET}/data/{case.name}/train.csv", split.x_train,
                            split.y_train, split.feature_names)
        started = time.perf_counter()
        try:
            result = run_local_training(
                train=f"s3://{BUCKET}/data/{case.name}/", output_path=f"s3://{BUCKET}/models",
                job_name=f"bench-{case.name}-{int(time.time())}",
                hyperparameters=case.hyperparameters, env=self.env,
                log=self.logs / f"{case.name}-training.log",
                result_file=self.work_dir / f"{case.name}-training.json")
        except StackError as exc:
            raise BenchError(f"training {case.name} failed: {exc}") from exc
        seconds = time.perf_counter() - started
        return self._fetch(case, result["model_data"], result["output_data"], seconds)

    def _fetch(self, case: ModelCase, model_data: str, output_data: str,
               seconds: float) -> TrainedModel:
        folder = self.work_dir / case.name
        folder.mkdir(parents=True, exist_ok=True)
        archive = folder / "model.tar.gz"
        location = parse_s3_uri(model_data, field="model_data")
        self.s3.download_file(location.bucket, location.key, str(archive))
        model_dir = extract_model(archive, folder / "model")
        reference, metrics = reference_model(output_data, s3=self.s3)
        return TrainedModel(
            case=case, model_data=model_data, model_dir=model_dir,
            manifest=read_manifest(model_dir), reference=reference, metrics=metrics,
            train_seconds=seconds, model_tar_bytes=archive.stat().st_size)

    # -- serving -----------------------------------------------------------------------------
    @contextmanager
    def endpoint(self, case: ModelCase, model: TrainedModel) -> Iterator[Endpoint]:
        """Run ``deploy_endpoint.py --local`` for ``model`` until the block ends.

        Raises:
            BenchError: the endpoint exited or was not ready in time.
        """
        name = f"bench-{case.name}"
        with self._endpoint(name, deploy_command(model.model_data)) as endpoint:
            yield endpoint

    @contextmanager
    def peer_endpoint(self, case: ModelCase, model: TrainedModel,
                      key_source: str) -> Iterator[Endpoint]:
        """Run the peers' serving approach (:mod:`bench.peer`) for ``model`` behind the runtime.

        Raises:
            BenchError: the endpoint exited or was not ready in time.
        """
        name = f"bench-{case.name}-peer-{key_source}"
        with self._endpoint(name, ["-m", "bench.peer", "--model-dir", str(model.model_dir),
                                   "--key-source", key_source]) as endpoint:
            yield endpoint

    @contextmanager
    def _endpoint(self, name: str, command: list[str]) -> Iterator[Endpoint]:
        case_name = name.removeprefix("bench-")
        log = self.logs / f"{name}.log"
        try:
            with running_endpoint(
                command, endpoint_name=name, output_path=f"s3://{BUCKET}/async-out/{case_name}",
                failure_path=f"s3://{BUCKET}/async-fail/{case_name}", allowed_prefix=CLIENT_PREFIX,
                env=self.env, work_dir=self.work_dir, log=log, timeout=READY_TIMEOUT,
                s3_endpoint_url=self.s3_server.endpoint_url,
            ) as (process, ready):
                endpoint = Endpoint(name, ready, log, process)
                try:
                    yield endpoint
                finally:
                    endpoint.close()
        except StackError as exc:
            raise BenchError(str(exc)) from exc

    def cold_start(self, model: TrainedModel) -> dict[str, float]:
        """Start ``serve`` on ``model``; time until ``/ping`` answers 200 (P6).

        Returns:
            ``seconds`` (serve start to healthy ping) and ``model_load_seconds`` (the worker's
            own load/compile time, from ``/metrics``).

        Raises:
            BenchError: serve exited or did not become healthy in time.
        """
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = self.logs / f"{model.case.name}-cold-start.log"
        env = {**self.env, ENV_MODEL_DIR: str(model.model_dir), ENV_PORT: str(port),
               ENV_HOST: "127.0.0.1", ENV_ALLOWED_PREFIXES: CLIENT_PREFIX,
               ENV_KEY_CACHE_DIR: str(self.work_dir / f"{model.case.name}-cold-key-cache")}
        with open(log, "wb") as out:
            started = time.perf_counter()
            process = subprocess.Popen([sys.executable, "-m", "inference.serve"], stdout=out,
                                       stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
        try:
            wait_for_ping(url, timeout=READY_TIMEOUT, process=process, interval=PING_INTERVAL)
            seconds = time.perf_counter() - started
            load = requests.get(f"{url}/metrics", timeout=10).json().get("model_load_seconds")
        except ProcessError as exc:
            raise BenchError(f"serve did not get healthy: {exc}; see {log}:\n{tail(log)}"
                             ) from exc
        finally:
            stop_process(process, timeout=STOP_TIMEOUT)
        return {"seconds": seconds, "model_load_seconds": load}

    def object_stats(self, prefix: str) -> dict[str, dict[str, int]]:
        """Object count and bytes per first-level folder under ``s3://BUCKET/prefix/``."""
        stats: dict[str, dict[str, int]] = {}
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=BUCKET, Prefix=f"{prefix}/"):
            for obj in page.get("Contents", []):
                folder = obj["Key"][len(prefix) + 1:].split("/", 1)[0]
                entry = stats.setdefault(folder, {"objects": 0, "bytes": 0})
                entry["objects"] += 1
                entry["bytes"] += int(obj["Size"])
        return stats
