"""The whole kit on this machine, brought up the way users do it, for the demo, bench and tests.

:func:`local_stack` starts an embedded S3 (:class:`local_mode.s3_server.LocalS3Server`),
uploads training rows as CSV, trains with ``start_training.py --local``
(:func:`run_local_training`) and serves the model with ``deploy_endpoint.py --local``
(:func:`running_endpoint`: ``serve`` behind the local ``InvokeEndpointAsync`` runtime). The
scripts run in subprocesses, exactly as a user runs them; everything is torn down on exit.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import numpy as np

from common.artifact import METRICS_NAME, REFERENCE_MODEL_NAME
from common.files import read_members
from common.process import die_with_parent
from common.s3_access import SSE
from common.s3_location import parse_s3_uri
from common.sagemaker_layout import OUTPUT_TARBALL
from local_mode.endpoint import STOP_SECONDS as ENDPOINT_STOP_SECONDS
from local_mode.processes import ProcessError, stop_process, tail, wait_for_ready_file
from local_mode.s3_server import LocalS3Server, local_session

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
BUCKET = "fhe-demo"
READY_TIMEOUT = 300.0
TRAIN_TIMEOUT = 1800.0
STOP_TIMEOUT = ENDPOINT_STOP_SECONDS + 5.0  # the launcher stops within its own bound


class StackError(RuntimeError):
    """A step of the local stack failed; the message says which and where its log is."""


@dataclass(frozen=True)
class LocalStack:
    """A running local S3 + trained model + local async endpoint.

    Attributes:
        work_dir: Logs, result files and (by default) the key directory.
        s3_endpoint_url: The embedded S3.
        runtime_url: The local sagemaker-runtime (``InvokeEndpointAsync``).
        endpoint_name: The endpoint to invoke.
        bucket: The bucket holding data, models, keys and queries.
        s3_prefix: Where clients put keys/queries/requests (``s3://bucket/client``).
        model_data: ``s3://…/model.tar.gz``.
        output_data: ``s3://…/output.tar.gz`` (metrics.json, reference_model.json).
        endpoint_pid: Process id of ``deploy_endpoint.py --local``.
    """

    work_dir: Path
    s3_endpoint_url: str
    runtime_url: str
    endpoint_name: str
    bucket: str
    s3_prefix: str
    model_data: str
    output_data: str
    endpoint_pid: int

    def session(self) -> boto3.session.Session:
        """A boto3 session with the local stack's (fake) credentials and region."""
        return local_session()

    def predictor(self, **options: Any) -> Any:
        """A :class:`client.EncryptedPredictor` wired to this stack (keys under ``work_dir``)."""
        from client.predictor import EncryptedPredictor

        settings: dict[str, Any] = {
            "key_dir": self.work_dir / "keys",
            "cache_dir": self.work_dir / "cache",
            "session": self.session(),
            "s3_endpoint_url": self.s3_endpoint_url,
            "runtime_endpoint_url": self.runtime_url,
            **options,
        }
        return EncryptedPredictor(self.endpoint_name, self.model_data, self.s3_prefix, **settings)

    def s3_client(self) -> Any:
        """A boto3 S3 client on the embedded S3."""
        return self.session().client("s3", endpoint_url=self.s3_endpoint_url)

    def reference(self) -> tuple[Any, dict[str, Any]]:
        """The clear concrete-ml model and metrics.json from the training job's output.tar.gz."""
        return reference_model(self.output_data, s3=self.s3_client())


def reference_model(output_data: str, *, s3: Any) -> tuple[Any, dict[str, Any]]:
    """The clear quantised model and metrics.json of a training job, from its output.tar.gz.

    ``model.predict_proba(scaled_rows, fhe="disable")`` is what FHE predictions must equal.

    Args:
        output_data: ``s3://…/output/output.tar.gz`` written by the training job.
        s3: A boto3 S3 client that may read it.
    """
    from concrete.ml.common.serialization.loaders import loads

    uri = parse_s3_uri(output_data, field="output_data")
    body = s3.get_object(Bucket=uri.bucket, Key=uri.key)["Body"].read()
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / OUTPUT_TARBALL
        archive.write_bytes(body)
        members = read_members(
            archive, {REFERENCE_MODEL_NAME: 256 << 20, METRICS_NAME: 1 << 20}, source=output_data
        )
    return loads(members[REFERENCE_MODEL_NAME].decode()), json.loads(members[METRICS_NAME])


def training_csv(
    features: np.ndarray, labels: np.ndarray, feature_names: Sequence[str] | None = None
) -> bytes:
    """Rows as CSV with a header and a ``label`` column (the training channel's format)."""
    names = list(feature_names or [f"f{i}" for i in range(features.shape[1])])
    out = io.StringIO()
    out.write(",".join(n.replace(",", " ") for n in [*names, "label"]) + "\n")
    np.savetxt(out, np.column_stack([features, labels]), delimiter=",", fmt="%.10g")
    return out.getvalue().encode()


def upload_training_csv(s3: Any, uri: str, features: np.ndarray, labels: np.ndarray,
                        feature_names: Sequence[str] | None = None) -> None:
    """Put the rows as one CSV at ``uri`` (SSE-S3), where a training channel reads them."""
    location = parse_s3_uri(uri, field="training data")
    s3.put_object(Bucket=location.bucket, Key=location.key,
                  Body=training_csv(features, labels, feature_names), **SSE)


def run_local_training(*, train: str, output_path: str, job_name: str,
                       hyperparameters: Mapping[str, Any], env: Mapping[str, str], log: Path,
                       result_file: Path, timeout: float = TRAIN_TIMEOUT) -> dict[str, str]:
    """Run ``start_training.py --local`` in a subprocess; return its result file.

    Raises:
        StackError: the job failed or did not finish in time (the message holds the log's tail).
    """
    command = [sys.executable, "-m", "start_training", "--local", "--train", train,
               "--output-path", output_path, "--job-name", job_name,
               "--result-file", str(result_file)]
    for key, value in hyperparameters.items():
        command += ["--hyperparameter", f"{key}={value}"]
    logger.info("running start_training.py --local (log: %s)", log)
    with open(log, "wb") as out:
        try:
            code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=dict(env),
                                  cwd=REPO_ROOT, timeout=timeout, check=False,
                                  preexec_fn=die_with_parent()).returncode
        except subprocess.TimeoutExpired as exc:
            raise StackError(f"start_training.py did not finish in {timeout:.0f} s; see {log}"
                             ) from exc
    if code != 0:
        raise StackError(f"start_training.py exited with {code}; see {log}:\n{tail(log)}")
    return dict(json.loads(result_file.read_text()))


def deploy_command(model_data: str) -> list[str]:
    """``deploy_endpoint.py --local`` serving ``model_data`` (arguments after the interpreter)."""
    return ["-m", "deploy_endpoint", "--local", "--model-data", model_data]


@contextlib.contextmanager
def running_endpoint(command: Sequence[str], *, endpoint_name: str, output_path: str,
                     failure_path: str, allowed_prefix: str, env: Mapping[str, str],
                     work_dir: Path, log: Path, s3_endpoint_url: str | None = None,
                     timeout: float = READY_TIMEOUT
                     ) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, str]]]:
    """Run a local endpoint (``command``, e.g. :func:`deploy_command`) until the block ends.

    Yields:
        The process and its ready document (``runtime_url``, ``serve_url``, ...).

    Raises:
        StackError: the endpoint exited or was not ready in time (with the log's tail).
    """
    ready_file = work_dir / f"{endpoint_name}-ready.json"
    ready_file.unlink(missing_ok=True)
    argv = [sys.executable, *command, "--endpoint-name", endpoint_name,
            "--output-path", output_path, "--failure-path", failure_path,
            "--allowed-s3-prefix", allowed_prefix, "--ready-file", str(ready_file)]
    if s3_endpoint_url:
        argv += ["--s3-endpoint-url", s3_endpoint_url]
    logger.info("starting %s (log: %s)", " ".join(command[:4]), log)
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=dict(env),
                                   cwd=REPO_ROOT, preexec_fn=die_with_parent())
    try:
        try:
            ready = wait_for_ready_file(ready_file, timeout=timeout, process=process,
                                        what=" ".join(command[:2]), log=log)
        except ProcessError as exc:
            raise StackError(str(exc)) from exc
        yield process, ready
    finally:
        stop_process(process, timeout=STOP_TIMEOUT)


@contextlib.contextmanager
def local_stack(
    train_x: np.ndarray,
    train_y: np.ndarray,
    *,
    hyperparameters: Mapping[str, Any] | None = None,
    feature_names: Sequence[str] | None = None,
    work_dir: str | os.PathLike[str] | None = None,
    keep: bool = False,
    endpoint_name: str = "fhe-demo",
    job_name: str = "fhe-demo-job",
) -> Iterator[LocalStack]:
    """Start S3, train on (``train_x``, ``train_y``), deploy; tear it all down on exit.

    Args:
        train_x: Training features (rows x features), uploaded to S3 as CSV.
        train_y: Training labels.
        hyperparameters: Passed as ``--hyperparameter KEY=VALUE`` to start_training.py.
        feature_names: CSV header names (default f0, f1, …).
        work_dir: Where logs, keys and result files go (default: a new temporary directory,
            deleted on exit unless ``keep``).
        keep: Leave ``work_dir`` in place.

    Raises:
        StackError: a step failed (the message names its log file).
    """
    temporary = work_dir is None
    root = Path(tempfile.mkdtemp(prefix="fhe-demo-") if temporary else work_dir).resolve()
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        with LocalS3Server(log_path=logs / "s3.log") as s3:
            env = {**os.environ, **s3.env()}
            s3.client().create_bucket(Bucket=BUCKET)
            upload_training_csv(s3.client(), f"s3://{BUCKET}/data/train/train.csv", train_x,
                                train_y, feature_names)
            result = run_local_training(
                train=f"s3://{BUCKET}/data/train/", output_path=f"s3://{BUCKET}/models",
                job_name=job_name, hyperparameters=hyperparameters or {}, env=env,
                log=logs / "training.log", result_file=root / "training-result.json")
            with running_endpoint(
                deploy_command(result["model_data"]), endpoint_name=endpoint_name,
                output_path=f"s3://{BUCKET}/async-out", failure_path=f"s3://{BUCKET}/async-fail",
                allowed_prefix=f"s3://{BUCKET}/client", env=env, work_dir=root,
                log=logs / "endpoint.log",
            ) as (endpoint, ready):
                yield LocalStack(root, s3.endpoint_url, ready["runtime_url"], endpoint_name,
                                 BUCKET, f"s3://{BUCKET}/client", result["model_data"],
                                 result["output_data"], endpoint.pid)
    finally:
        if temporary and not keep:
            shutil.rmtree(root, ignore_errors=True)
