"""``python -m client``: predict from a file, manage keys, show a model's manifest.

Commands::

    python -m client predict --endpoint-name NAME --model s3://…/model.tar.gz \\
        --s3-prefix s3://bucket/fhe --input X.npy|X.csv --output preds.npy|preds.csv [--proba]
        # or --training-job NAME / --latest-training-job BASE_JOB_NAME instead of --model
    python -m client keys [--model …]      # generate keys now / list key sets and sizes
    python -m client info --model …        # the manifest, versions and fingerprint

S3 / SageMaker endpoints default to AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME,
the key and cache directories to FHE_CLIENT_KEY_DIR / FHE_CLIENT_CACHE_DIR.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from client.errors import EncryptedInferenceError, InvalidInputError
from client.keys import KeyStore, default_cache_dir
from client.model import (
    describe,
    load_client_model,
    load_fhe_client,
    training_job_model_data,
)
from client.predictor import EncryptedPredictor
from client.retry import RetryPolicy
from client.settings import ClientSettings
from client.storage import S3Storage
from common.files import atomic_write_bytes
from common.process import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK
from common.s3_location import is_s3_location

logger = logging.getLogger("client")


def read_features(path: Path, *, drop_columns: Sequence[str] = ()) -> np.ndarray:
    """Read a .npy array or a .csv table (header row optional) as float rows.

    Raises:
        InvalidInputError: unknown extension, unreadable file, or a dropped column is missing.
    """
    try:
        if path.suffix == ".npy":
            if drop_columns:
                raise InvalidInputError("--drop-column applies to .csv input only")
            return np.load(path, allow_pickle=False)
        if path.suffix == ".csv":
            return _read_csv(path, drop_columns)
    except (OSError, ValueError) as exc:
        if isinstance(exc, InvalidInputError):
            raise
        raise InvalidInputError(f"cannot read {path}: {exc}") from exc
    raise InvalidInputError(f"{path}: input must be a .npy or .csv file")


def _read_csv(path: Path, drop_columns: Sequence[str]) -> np.ndarray:
    import pandas as pd

    with open(path) as handle:
        first = handle.readline().strip().split(",")
    has_header = not all(_is_number(cell) for cell in first)
    frame = pd.read_csv(path, header=0 if has_header else None)
    missing = [c for c in drop_columns if c not in frame.columns]
    if missing:
        raise InvalidInputError(
            f"{path}: no column(s) {missing} to drop (header: {list(frame.columns)})"
        )
    return frame.drop(columns=list(drop_columns)).to_numpy()


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def write_predictions(path: Path, values: np.ndarray) -> None:
    """Write predictions atomically as .npy or .csv (by extension)."""
    import io

    buffer = io.BytesIO()
    if path.suffix == ".npy":
        np.save(buffer, values, allow_pickle=False)
    elif path.suffix == ".csv":
        np.savetxt(buffer, values.reshape(len(values), -1), delimiter=",", fmt="%.10g")
    else:
        raise InvalidInputError(f"{path}: output must end in .npy or .csv")
    atomic_write_bytes(path, buffer.getvalue())


def _common(parser: argparse.ArgumentParser, settings: ClientSettings) -> None:
    parser.add_argument(
        "--key-dir",
        type=Path,
        default=settings.key_dir,
        help="key directory (env FHE_CLIENT_KEY_DIR; default: user cache dir)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=settings.cache_dir,
        help="model archive cache (env FHE_CLIENT_CACHE_DIR)",
    )
    parser.add_argument(
        "--s3-endpoint-url",
        default=settings.s3_endpoint_url,
        help="S3 endpoint (env AWS_ENDPOINT_URL_S3)",
    )
    parser.add_argument("--region", default=settings.region_name, help="AWS region")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _model_source(parser: argparse.ArgumentParser, *, required: bool,
                  what: str = "s3://…/model.tar.gz, a local model.tar.gz or a model directory"
                  ) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--model", help=what)
    group.add_argument("--training-job", help="the model of this completed training job")
    group.add_argument("--latest-training-job", metavar="BASE_JOB_NAME",
                       help="the model of the newest completed training job named"
                            " BASE_JOB_NAME or BASE_JOB_NAME-…")


def resolve_model(args: argparse.Namespace) -> None:
    """Set ``args.model`` from ``--training-job`` / ``--latest-training-job`` (DescribeTrainingJob).

    Raises:
        ModelArtifactError: no such completed job.
    """
    if not (args.training_job or args.latest_training_job):
        return
    import boto3

    sagemaker = boto3.session.Session(region_name=args.region).client("sagemaker")
    args.model = training_job_model_data(sagemaker, job_name=args.training_job,
                                         base_job_name=args.latest_training_job)


def build_parser(settings: ClientSettings) -> argparse.ArgumentParser:
    """The CLI's argument parser, with defaults from ``settings``."""
    parser = argparse.ArgumentParser(prog="python -m client", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    predict = sub.add_parser("predict", help="encrypt rows, run them on the endpoint, decrypt")
    predict.add_argument("--endpoint-name", required=True)
    _model_source(predict, required=True)
    predict.add_argument("--s3-prefix", required=True, help="s3://bucket/prefix for keys/queries")
    predict.add_argument("--input", required=True, type=Path, help=".npy or .csv features")
    predict.add_argument("--output", required=True, type=Path, help=".npy or .csv predictions")
    predict.add_argument(
        "--drop-column",
        action="append",
        default=[],
        help="CSV column to ignore (e.g. the label); repeatable",
    )
    predict.add_argument("--proba", action="store_true", help="write class probabilities")
    predict.add_argument("--batch-size", type=int, default=32)
    predict.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for each request's result"
    )
    retry = RetryPolicy()
    predict.add_argument(
        "--max-attempts", type=int, default=retry.max_attempts,
        help="invocations per request at most when the endpoint answers a retryable error"
             " (503 NotReady, ...); 1 never retries",
    )
    predict.add_argument(
        "--retry-base-delay", type=float, default=retry.base_delay,
        help="seconds: the first retry waits a random time up to this; doubles per retry",
    )
    predict.add_argument(
        "--retry-max-delay", type=float, default=retry.max_delay,
        help="seconds: the longest wait before a retry (retries never pass --timeout)",
    )
    predict.add_argument(
        "--keep-objects", action="store_true", help="leave queries/requests/outputs in S3"
    )
    predict.add_argument(
        "--runtime-endpoint-url",
        default=settings.runtime_endpoint_url,
        help="sagemaker-runtime endpoint (env AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME)",
    )
    _common(predict, settings)
    keys = sub.add_parser("keys", help="generate a model's keys now, or list stored key sets")
    _model_source(keys, required=False, what="generate keys for this model (else: list key sets)")
    _common(keys, settings)
    info = sub.add_parser("info", help="show a model's manifest, versions and fingerprint")
    _model_source(info, required=True)
    _common(info, settings)
    return parser


def _storage(args: argparse.Namespace) -> S3Storage:
    import boto3

    return S3Storage(
        boto3.session.Session(region_name=args.region).client(
            "s3", endpoint_url=args.s3_endpoint_url
        )
    )


def _load_model(args: argparse.Namespace) -> Any:
    storage = _storage(args) if is_s3_location(str(args.model)) else None
    return load_client_model(
        args.model, storage=storage, cache_dir=args.cache_dir or default_cache_dir()
    )


def cmd_predict(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``predict`` / ``predict_proba`` on a file and write the results."""
    retry = RetryPolicy(max_attempts=args.max_attempts, base_delay=args.retry_base_delay,
                        max_delay=args.retry_max_delay)
    features = read_features(args.input, drop_columns=args.drop_column)
    with EncryptedPredictor(
        args.endpoint_name,
        args.model,
        args.s3_prefix,
        key_dir=args.key_dir,
        cache_dir=args.cache_dir,
        s3_endpoint_url=args.s3_endpoint_url,
        runtime_endpoint_url=args.runtime_endpoint_url,
        region_name=args.region,
        batch_size=args.batch_size,
        timeout=args.timeout,
        retry=retry,
        keep_objects=args.keep_objects,
        progress=not args.no_progress,
    ) as predictor:
        values = predictor.predict_proba(features) if args.proba else predictor.predict(features)
        write_predictions(args.output, values)
        summary: dict[str, Any] = {
            "output": str(args.output),
            "rows": len(values),
            "model": predictor.model.source,
            "model_class": predictor.model.manifest.model_class,
            "evaluation_keys_bytes": predictor.ensure_keys().evaluation_keys_bytes,
            "timings": predictor.last_timings.as_dict(),
        }
        if not args.proba and predictor.model.manifest.task == "classification":
            labels, counts = np.unique(values, return_counts=True)
            summary["label_counts"] = {str(k): int(v) for k, v in zip(labels, counts, strict=True)}
    return summary


def cmd_keys(args: argparse.Namespace) -> dict[str, Any]:
    """Generate a model's keys (when --model is given) and list the key directory."""
    store = KeyStore(args.key_dir)
    result: dict[str, Any] = {"key_dir": str(store.root)}
    if args.model:
        model = _load_model(args)
        keys = store.load_or_generate(
            load_fhe_client(model), model.fingerprint, progress=not args.no_progress
        )
        result["model"] = {
            "fingerprint": model.fingerprint,
            "generated_now": keys.generated,
            "keygen_seconds": round(keys.seconds, 3),
            "evaluation_keys_bytes": keys.evaluation_keys_bytes,
        }
    result["key_sets"] = store.summary()
    return result


def cmd_info(args: argparse.Namespace) -> dict[str, Any]:
    """Describe a model (after the version and fingerprint checks)."""
    return describe(_load_model(args))


COMMANDS = {"predict": cmd_predict, "keys": cmd_keys, "info": cmd_info}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: returns 0 on success, 2 on bad input, 1 on any other client error."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser(ClientSettings.from_env(os.environ)).parse_args(argv)
    try:
        resolve_model(args)
        result = COMMANDS[args.command](args)
    except InvalidInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except EncryptedInferenceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(result, indent=2, default=str))
    return EXIT_OK
