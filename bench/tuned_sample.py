"""``python -m bench.tuned_sample``: the AWS sample's job with ``tune=true``, end to end, checked.

The sample's flow on this machine, as a user runs it: ``prepare_data.py`` (MNIST-shaped rows,
the digits stand-in, uploaded with SSE) -> ``start_training.py --local -H tune=true`` (the
sample's 784-392-10 network; tuning picks accumulator rounding and ``p_error``) ->
``deploy_endpoint.py --local`` -> two clients on held-out images:

* the kit's client (:class:`client.EncryptedPredictor`, batched requests);
* a plain concrete-ml client (``FHEModelClient`` + boto3, a request holding exactly
  ``evaluation_keys_uri`` and ``encrypted_query_uri``, as the AWS sample's client sends).

Both clients' decrypted scores are checked against the training job's clear quantised model
(``reference_model.json``) with the oracle the manifest's circuit calls for
(:func:`bench.check.check_circuit_agreement`: exact equality for an exact circuit, the
statistical oracle otherwise). The result (tuning choice, accuracy, per-image server seconds,
key bytes, both oracles) goes to ``bench/results/tuned-sample.json``. About 10 minutes on 2
quiet cores. Exit status 0 when both clients meet the oracle, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench import machine
from bench.check import OutputMismatchError, check_circuit_agreement
from bench.stack import parse_requests
from bench.unnamed import UnnamedKeysClient
from client.storage import S3Storage
from common.artifact import read_manifest
from common.contract import S3Uri, parse_s3_uri
from common.files import atomic_write_bytes
from common.process import EXIT_FAILED, run_main
from local_mode.endpoint import extract_model
from local_mode.s3_server import LocalS3Server, local_session
from local_mode.stack import (
    REPO_ROOT,
    deploy_command,
    reference_model,
    run_local_training,
    running_endpoint,
)
from prepare_data import TESTING_DIR, TESTING_FEATURES, TESTING_LABELS

logger = logging.getLogger("bench.tuned_sample")

BUCKET = "fhe-sample"
PREFIX = "MNIST"  # the sample's MNIST_PREFIX
ENDPOINT = "concrete-fhe-mnist-tuned"
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "tuned-sample.json"


def _prepare_data(work: Path, env: dict[str, str]) -> Path:
    """``prepare_data.py --source digits --upload`` (the sample's setup step); the data folder."""
    data = work / "mnist"
    log = work / "prepare.log"
    with open(log, "wb") as out:
        code = subprocess.run(
            [sys.executable, "prepare_data.py", "--source", "digits", "--out-dir", str(data),
             "--upload", f"s3://{BUCKET}/{PREFIX}"],
            cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    if code != 0:
        raise RuntimeError(f"prepare_data.py exited with {code}; see {log}")
    return data


def _kit_client(ready: dict[str, str], model_data: str, s3_url: str, work: Path,
                rows: np.ndarray) -> dict[str, Any]:
    """The kit's client on ``rows``: probabilities and its timings."""
    from client.predictor import EncryptedPredictor

    with EncryptedPredictor(ENDPOINT, model_data, f"s3://{BUCKET}/client",
                            session=local_session(), s3_endpoint_url=s3_url,
                            runtime_endpoint_url=ready["runtime_url"], key_dir=work / "kit-keys",
                            cache_dir=work / "kit-cache", batch_size=8, timeout=1800.0,
                            progress=False) as predictor:
        started = time.perf_counter()
        proba = predictor.predict_proba(rows)
        seconds = time.perf_counter() - started
        return {"proba": proba, "seconds": seconds, "timings": predictor.timings.as_dict(),
                "circuit": predictor.circuit}


def _plain_client(ready: dict[str, str], model_dir: Path, scaled: np.ndarray, s3: Any,
                  work: Path) -> dict[str, Any]:
    """The sample's client: plain ``FHEModelClient``, one two-field request per image."""
    from concrete.ml.deployment import FHEModelClient

    fhe_client = FHEModelClient(str(model_dir), key_dir=str(work / "plain-keys"))
    started = time.perf_counter()
    fhe_client.generate_private_and_evaluation_keys()
    keygen = time.perf_counter() - started
    keys = fhe_client.get_serialized_evaluation_keys()
    runtime = local_session().client("sagemaker-runtime", endpoint_url=ready["runtime_url"])
    client = UnnamedKeysClient(fhe_client, keys, S3Storage(s3), runtime, ENDPOINT,
                               S3Uri(BUCKET, "plain"))
    client.upload_keys()
    out, seconds = [], []
    for row in scaled:
        started = time.perf_counter()
        out.append(client.predict_proba(row).reshape(-1))
        seconds.append(time.perf_counter() - started)
    return {"proba": np.stack(out), "keygen_seconds": keygen, "evaluation_keys_bytes": len(keys),
            "request_seconds": seconds}


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """What the training job chose and measured (metrics.json, shortened)."""
    tuning = metrics.get("tuning") or {}
    return {
        "hyperparameters": metrics.get("hyperparameters"),
        "accuracy": {k: metrics.get(k) for k in ("metric", "float_sklearn", "clear_quantised",
                                                  "fhe_simulated", "fhe_simulated_draws")},
        "circuit": metrics.get("circuit"),
        "tuning": {k: tuning.get(k) for k in ("configured", "chosen", "reason", "best_score",
                                              "seconds")},
        "candidates": len(tuning.get("candidates") or []),
        "timings": metrics.get("timings"),
    }


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The whole flow in ``work``; returns the results document (oracle failures recorded)."""
    started = time.perf_counter()
    doc: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
                           "machine": machine.describe(), "work_dir": str(work)}
    with LocalS3Server(log_path=work / "s3.log") as s3_server:
        env = {**os.environ, **s3_server.env()}
        s3 = s3_server.client()
        s3.create_bucket(Bucket=BUCKET)
        data = _prepare_data(work, env)
        hyperparameters = {"tune": "true", **dict(kv.split("=", 1) for kv in args.hyperparameter)}
        logger.info("training the sample's network with %s", hyperparameters)
        trained = time.perf_counter()
        result = run_local_training(
            train=f"s3://{BUCKET}/{PREFIX}/", output_path=f"s3://{BUCKET}/models/{PREFIX}",
            job_name=f"{PREFIX}-tuned", hyperparameters=hyperparameters, env=env,
            log=work / "training.log", result_file=work / "training.json")
        doc["training_seconds"] = round(time.perf_counter() - trained, 1)
        reference, metrics = reference_model(result["output_data"], s3=s3)
        doc["training"] = _summary(metrics)
        archive = work / "model.tar.gz"
        model = parse_s3_uri(result["model_data"], field="model_data")
        s3.download_file(model.bucket, model.key, str(archive))
        model_dir = extract_model(archive, work / "model")
        manifest = read_manifest(model_dir)
        x_test = np.load(data / TESTING_DIR / TESTING_FEATURES)
        y_test = np.load(data / TESTING_DIR / TESTING_LABELS)
        kit_rows = x_test[:args.rows]
        plain_rows = x_test[args.rows:args.rows + args.plain_rows]
        with running_endpoint(
                deploy_command(result["model_data"]), endpoint_name=ENDPOINT,
                output_path=f"s3://{BUCKET}/async-out", failure_path=f"s3://{BUCKET}/async-fail",
                allowed_prefix=f"s3://{BUCKET}/", env={**env, "SAGEMAKER_MODEL_SERVER_TIMEOUT":
                                                       "1800"},
                work_dir=work, log=work / "endpoint.log") as (_, ready):
            kit = _kit_client(ready, result["model_data"], s3_server.endpoint_url, work, kit_rows)
            plain = _plain_client(ready, model_dir, manifest.scaler.transform(plain_rows), s3,
                                  work)
    doc["kit_client"] = _check("kit client", kit.pop("proba"), kit_rows, y_test[:args.rows],
                               reference, manifest)
    doc["kit_client"].update(kit)
    doc["plain_client"] = _check(
        "plain concrete-ml client", plain.pop("proba"), plain_rows,
        y_test[args.rows:args.rows + args.plain_rows], reference, manifest)
    doc["plain_client"].update(plain)
    if plain["request_seconds"]:
        doc["plain_client"]["request_seconds_median"] = statistics.median(plain["request_seconds"])
    doc["server"] = _server_seconds(work / "endpoint.log")
    doc["duration_seconds"] = round(time.perf_counter() - started, 1)
    return doc


def _check(what: str, proba: np.ndarray, rows: np.ndarray, labels: np.ndarray, reference: Any,
           manifest: Any) -> dict[str, Any]:
    """Apply the circuit's oracle; record a failure instead of raising."""
    clear = reference.predict_proba(manifest.scaler.transform(rows), fhe="disable")
    out: dict[str, Any] = {
        "rows": len(rows),
        "fhe_accuracy": float(np.mean(np.argmax(proba, axis=1) == labels)),
        "clear_accuracy": float(np.mean(np.argmax(clear, axis=1) == labels)),
        "argmax_agreement": float(np.mean(np.argmax(proba, axis=1) == np.argmax(clear, axis=1))),
    }
    try:
        out["oracle"] = check_circuit_agreement(proba, clear, what=what,
                                                circuit=manifest.circuit)
        out["met"] = True
    except OutputMismatchError as exc:
        out["oracle"] = {"error": str(exc)}
        out["met"] = False
    return out


def _server_seconds(log: Path) -> dict[str, Any]:
    """Per-ciphertext FHE seconds from the server's request lines."""
    requests = parse_requests(log.read_text(errors="replace"))
    per_row = [r.fhe / r.ciphertexts for r in requests if r.ciphertexts]
    return {"requests": len(requests),
            "fhe_seconds_per_image_median": statistics.median(per_row) if per_row else None,
            "fhe_seconds_per_image_min_max": [min(per_row), max(per_row)] if per_row else None}


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.tuned_sample",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=24,
                        help="held-out images predicted by the kit's client (default 24)")
    parser.add_argument("--plain-rows", type=int, default=4,
                        help="held-out images sent one by one by the plain client (default 4)")
    parser.add_argument("-H", "--hyperparameter", action="append", default=[],
                        metavar="KEY=VALUE", help="added to tune=true (e.g. tune_budget=0.5)")
    parser.add_argument("--work-dir", help="logs, model and keys (default: a temporary folder,"
                        " removed unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"results file (default {DEFAULT_OUT.relative_to(REPO_ROOT)})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run, write the results, exit 0 only if both clients met the oracle."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    temporary = args.work_dir is None
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="fhe-tuned-sample-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        doc = run(args, work)
    finally:
        if temporary and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    atomic_write_bytes(args.out, (json.dumps(doc, indent=2, sort_keys=True, default=str)
                                  + "\n").encode())
    met = doc["kit_client"]["met"] and doc["plain_client"]["met"]
    logger.info("kit client %s, plain client %s; results in %s",
                doc["kit_client"]["oracle"], doc["plain_client"]["oracle"], args.out)
    return 0 if met else EXIT_FAILED


if __name__ == "__main__":
    run_main(main)
