"""``make demo``: the whole encrypted job on this machine, through the kit's real scripts.

1. start an embedded S3 (:class:`inference.local.s3_server.LocalS3Server`);
2. upload the training rows as CSV (a clinic's records; held-out "patients" stay local);
3. ``start_training.py --local`` trains, quantises, compiles and writes model.tar.gz to S3;
4. ``deploy_endpoint.py --local`` serves it behind a local InvokeEndpointAsync runtime;
5. :class:`client.EncryptedPredictor` encrypts the patients, the endpoint predicts on
   ciphertexts, the client decrypts;
6. the encrypted predictions are compared with the clear quantised model (must agree 100 %)
   and with a float scikit-learn model, and everything is torn down (also on Ctrl-C).

``local_stack`` (steps 1-4 as a context manager) is reusable from notebooks and tests.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import boto3
import numpy as np

from client.errors import EncryptedInferenceError
from client.predictor import EncryptedPredictor
from common.contract import parse_s3_uri
from common.files import read_members
from common.process import run_main
from common.s3_access import SSE
from inference.local.s3_server import (
    LOCAL_CREDENTIALS,
    LOCAL_REGION,
    LocalS3Server,
    stop_process,
)

logger = logging.getLogger("client.demo")

BUCKET = "fhe-demo"
REFERENCE_MODEL = "reference_model.json"
METRICS = "metrics.json"
READY_TIMEOUT = 300.0
TRAIN_TIMEOUT = 1800.0
CASES: dict[str, dict[str, Any]] = {
    "breast-cancer": {
        "loader": "load_breast_cancer",
        "hyperparameters": {"model": "LogisticRegression"},
        "n_rows": 20,
        "what": "patients",
    },
    "digits": {
        "loader": "load_digits",
        "hyperparameters": {"model": "NeuralNetClassifier", "scaler": "minmax"},
        "n_rows": 3,
        "what": "images",
    },
}


class DemoError(RuntimeError):
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

    def predictor(self, **options: Any) -> EncryptedPredictor:
        """An :class:`EncryptedPredictor` wired to this stack (keys under ``work_dir/keys``)."""
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
        archive = Path(tmp) / "output.tar.gz"
        archive.write_bytes(body)
        members = read_members(
            archive, {REFERENCE_MODEL: 256 << 20, METRICS: 1 << 20}, source=output_data
        )
    return loads(members[REFERENCE_MODEL].decode()), json.loads(members[METRICS])


def local_session() -> boto3.session.Session:
    """A boto3 session with the embedded S3's fake credentials (never real ones)."""
    return boto3.session.Session(
        aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=LOCAL_CREDENTIALS["AWS_SESSION_TOKEN"],
        region_name=LOCAL_REGION,
    )


def training_csv(
    features: np.ndarray, labels: np.ndarray, feature_names: Sequence[str] | None = None
) -> bytes:
    """Rows as CSV with a header and a ``label`` column (the training channel's format)."""
    names = list(feature_names or [f"f{i}" for i in range(features.shape[1])])
    out = io.StringIO()
    out.write(",".join(n.replace(",", " ") for n in [*names, "label"]) + "\n")
    np.savetxt(out, np.column_stack([features, labels]), delimiter=",", fmt="%.10g")
    return out.getvalue().encode()


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
        DemoError: a step failed (the message names its log file).
    """
    temporary = work_dir is None
    root = Path(tempfile.mkdtemp(prefix="fhe-demo-") if temporary else work_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    (root / "logs").mkdir(exist_ok=True)
    endpoint: subprocess.Popen[bytes] | None = None
    try:
        with LocalS3Server(log_path=root / "logs" / "s3.log") as s3:
            env = {**os.environ, **s3.env()}
            s3_client = local_session().client("s3", endpoint_url=s3.endpoint_url)
            s3_client.create_bucket(Bucket=BUCKET)
            s3_client.put_object(
                Bucket=BUCKET,
                Key="data/train/train.csv",
                Body=training_csv(train_x, train_y, feature_names),
                **SSE,
            )
            result = _train(root, env, job_name, hyperparameters or {})
            endpoint, ready = _deploy(root, env, endpoint_name, result["model_data"])
            yield LocalStack(
                root,
                s3.endpoint_url,
                ready["runtime_url"],
                endpoint_name,
                BUCKET,
                f"s3://{BUCKET}/client",
                result["model_data"],
                result["output_data"],
                endpoint.pid,
            )
    finally:
        if endpoint is not None:
            stop_process(endpoint)
        if temporary and not keep:
            shutil.rmtree(root, ignore_errors=True)


def _run_logged(command: list[str], *, log: Path, env: Mapping[str, str], timeout: float) -> None:
    logger.info("running %s (log: %s)", " ".join(command[2:4]), log)
    with open(log, "wb") as out:
        try:
            code = subprocess.run(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env),
                timeout=timeout,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired as exc:
            raise DemoError(f"{command[2]} did not finish in {timeout:.0f} s; see {log}") from exc
    if code != 0:
        raise DemoError(f"{command[2]} exited with {code}; see {log}:\n{_tail(log)}")


def _tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _train(
    root: Path, env: Mapping[str, str], job_name: str, hyperparameters: Mapping[str, Any]
) -> dict[str, str]:
    result_file = root / "training-result.json"
    command = [
        sys.executable,
        "-m",
        "start_training",
        "--local",
        "--train",
        f"s3://{BUCKET}/data/train/",
        "--output-path",
        f"s3://{BUCKET}/models",
        "--job-name",
        job_name,
        "--result-file",
        str(result_file),
    ]
    for key, value in hyperparameters.items():
        command += ["--hyperparameter", f"{key}={value}"]
    _run_logged(command, log=root / "logs" / "training.log", env=env, timeout=TRAIN_TIMEOUT)
    return dict(json.loads(result_file.read_text()))


def _deploy(
    root: Path, env: Mapping[str, str], endpoint_name: str, model_data: str
) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    ready_file = root / "endpoint-ready.json"
    ready_file.unlink(missing_ok=True)
    log = root / "logs" / "endpoint.log"
    command = [
        sys.executable,
        "-m",
        "deploy_endpoint",
        "--local",
        "--model-data",
        model_data,
        "--endpoint-name",
        endpoint_name,
        "--output-path",
        f"s3://{BUCKET}/async-out",
        "--failure-path",
        f"s3://{BUCKET}/async-fail",
        "--allowed-s3-prefix",
        f"s3://{BUCKET}/client",
        "--ready-file",
        str(ready_file),
    ]
    logger.info("starting deploy_endpoint.py --local (log: %s)", log)
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=dict(env))
    deadline = time.monotonic() + READY_TIMEOUT
    while not ready_file.is_file():
        if process.poll() is not None:
            raise DemoError(
                f"deploy_endpoint.py exited with {process.returncode}; see {log}:\n{_tail(log)}"
            )
        if time.monotonic() > deadline:
            stop_process(process)
            raise DemoError(f"endpoint not ready after {READY_TIMEOUT:.0f} s; see {log}")
        time.sleep(0.1)
    return process, dict(json.loads(ready_file.read_text()))


# -- the demo ------------------------------------------------------------------------------
@dataclass(frozen=True)
class DemoReport:
    """What the demo measured."""

    n_rows: int
    fhe_accuracy: float
    clear_accuracy: float
    float_accuracy: float
    agreement: float
    max_proba_gap: float
    evaluation_keys_bytes: int
    timings: dict[str, float | int]
    training_metrics: dict[str, Any]

    @property
    def ok(self) -> bool:
        """FHE and clear quantised predictions agree on every row."""
        return self.agreement == 1.0


def load_case(
    case: str, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Split a scikit-learn dataset: ``x_train, x_held, y_train, y_held, feature_names``."""
    import sklearn.datasets
    from sklearn.model_selection import train_test_split

    data = getattr(sklearn.datasets, CASES[case]["loader"])()
    names = [str(n) for n in getattr(data, "feature_names", [])]
    x_train, x_held, y_train, y_held = train_test_split(
        data.data, data.target, test_size=0.2, random_state=seed, stratify=data.target
    )
    return x_train, x_held, y_train, y_held, names


def run_demo(
    *,
    case: str = "breast-cancer",
    n_rows: int | None = None,
    batch_size: int = 8,
    work_dir: Path | None = None,
    keep: bool = False,
    hyperparameters: Mapping[str, Any] | None = None,
    timeout: float = 600.0,
    progress: bool = True,
) -> DemoReport:
    """Run the whole flow and return what it measured (see the module docstring)."""
    from sklearn.linear_model import LogisticRegression

    x_train, x_held, y_train, y_held, names = load_case(case)
    n = min(n_rows or CASES[case]["n_rows"], len(x_held))
    x_rows, y_rows = x_held[:n], y_held[:n]
    params = {**CASES[case]["hyperparameters"], **(hyperparameters or {})}
    with local_stack(
        x_train, y_train, hyperparameters=params, feature_names=names, work_dir=work_dir, keep=keep
    ) as stack:
        with stack.predictor(batch_size=batch_size, timeout=timeout, progress=progress) as model:
            proba = model.predict_proba(x_rows)
            labels = np.asarray(model.model.manifest.classes or range(proba.shape[1]))
            fhe_pred = labels[np.argmax(proba, axis=1)]
            scaler = model.model.manifest.scaler
            keys_bytes = model.ensure_keys().evaluation_keys_bytes
            timings = model.timings.as_dict()
        reference, metrics = stack.reference()
    x_scaled = scaler.transform(x_rows)
    clear_pred = reference.predict(x_scaled, fhe="disable")
    clear_proba = reference.predict_proba(x_scaled, fhe="disable")
    float_model = LogisticRegression(max_iter=5000).fit(scaler.transform(x_train), y_train)
    return DemoReport(
        n_rows=n,
        fhe_accuracy=float(np.mean(fhe_pred == y_rows)),
        clear_accuracy=float(np.mean(clear_pred == y_rows)),
        float_accuracy=float(float_model.score(x_scaled, y_rows)),
        agreement=float(np.mean(fhe_pred == clear_pred)),
        max_proba_gap=float(np.max(np.abs(proba - clear_proba))),
        evaluation_keys_bytes=keys_bytes,
        timings=timings,
        training_metrics=metrics,
    )


def format_report(report: DemoReport, *, case: str) -> str:
    """Human-readable summary of a :class:`DemoReport`."""
    what = CASES[case]["what"]
    t = report.timings
    stages = "  ".join(
        f"{s} {t[s]:.2f}s"
        for s in ("keygen", "encrypt", "upload", "invoke", "wait", "download", "decrypt", "cleanup")
    )
    per_row = t["wait"] / max(report.n_rows, 1)
    lines = [
        f"== encrypted inference on {report.n_rows} held-out {what} ({case}) ==",
        f"accuracy, encrypted (FHE) predictions : {report.fhe_accuracy:.1%}",
        f"accuracy, clear quantised model       : {report.clear_accuracy:.1%}",
        f"accuracy, float scikit-learn LogisticRegression: {report.float_accuracy:.1%}",
        f"agreement FHE vs clear quantised      : {report.agreement:.1%}"
        f" (max |Δ probability| {report.max_proba_gap:.2g})",
        f"evaluation keys                       : {_size(report.evaluation_keys_bytes)}"
        " (uploaded once; the secret key never left this machine)",
        f"latency breakdown                     : {stages}",
        f"server wait per row                   : {per_row:.2f}s"
        f" ({t['requests']} request(s), {_size(int(t['bytes_uploaded']))} up,"
        f" {_size(int(t['bytes_downloaded']))} down)",
        f"training job report                   : {_metrics_line(report.training_metrics)}",
    ]
    return "\n".join(lines)


def _size(n_bytes: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes} B"


def _metrics_line(metrics: Mapping[str, Any]) -> str:
    shown = {
        k: metrics[k]
        for k in ("model", "metric", "float_sklearn", "clear_quantised", "n_train", "n_test")
        if k in metrics
    }
    return json.dumps(shown, default=str)


def _parse_hyperparameters(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--hyperparameter must look like KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def _sigterm_to_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``make demo``: 0 when FHE agrees with the clear model on every row."""
    parser = argparse.ArgumentParser(
        prog="python -m client.demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--case", choices=sorted(CASES), default="breast-cancer")
    parser.add_argument(
        "--n-patients",
        "--n-rows",
        dest="n_rows",
        type=int,
        default=None,
        help="held-out rows to predict encrypted (default: 20, digits: 3)",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument(
        "--hyperparameter",
        action="append",
        default=[],
        help="extra training hyperparameter KEY=VALUE; repeatable",
    )
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="leave the work dir in place")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    try:
        report = run_demo(
            case=args.case,
            n_rows=args.n_rows,
            batch_size=args.batch_size,
            work_dir=args.work_dir,
            keep=args.keep,
            timeout=args.timeout,
            hyperparameters=_parse_hyperparameters(args.hyperparameter),
        )
    except KeyboardInterrupt:
        print("interrupted: local stack torn down", file=sys.stderr)
        return 130
    except (DemoError, EncryptedInferenceError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 2
    print(format_report(report, case=args.case))
    if not report.ok:
        print(
            f"FAIL: encrypted predictions disagree with the clear quantised model on"
            f" {1 - report.agreement:.1%} of rows",
            file=sys.stderr,
        )
        return 1
    print("OK: encrypted predictions match the clear quantised model on every row")
    return 0


if __name__ == "__main__":
    run_main(main)
