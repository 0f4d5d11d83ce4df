"""Local training that behaves like a SageMaker training job (``start_training.py --local``).

A job folder mirrors ``/opt/ml`` (:class:`common.sagemaker_layout.JobLayout`)::

    <root>/input/config/hyperparameters.json, inputdataconfig.json
    <root>/input/data/training/     the channel (copied from a folder, or downloaded from S3)
    <root>/model/                   SM_MODEL_DIR      -> model.tar.gz
    <root>/output/data/             SM_OUTPUT_DATA_DIR -> output.tar.gz
    <root>/output/failure           the failure reason when the script fails

The very same training/training_script.py runs in a subprocess with the ``SM_*`` environment and
the hyperparameters as ``--name value`` arguments, as SageMaker's toolkit runs it. Results go to
``<output-path>/<job-name>/output/{model,output}.tar.gz`` on whichever S3 endpoint boto3 is
configured for (AWS, or a local S3 server through ``AWS_ENDPOINT_URL_S3``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from common.files import atomic_write_bytes
from common.process import die_with_parent
from common.s3_access import SSE
from common.s3_location import is_s3_location, parse_s3_prefix, parse_s3_uri
from common.sagemaker_layout import (
    HYPERPARAMETERS_FILE,
    INPUT_DATA_CONFIG_FILE,
    MODEL_TARBALL,
    OUTPUT_TARBALL,
    TRAINING_CHANNEL,
    JobLayout,
    job_outputs,
)

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAINING_SCRIPT = REPO_ROOT / "training" / "training_script.py"


class LocalJobError(RuntimeError):
    """A local job could not stage its data, train, or package its results (the message says
    why: for a failed training, the failure file's text)."""


@dataclass(frozen=True)
class LocalJobResult:
    """Where a local job's results went."""

    job_name: str
    model_data: str
    output_data: str


def stage_channel(source: str, channel_dir: Path, s3: Any) -> int:
    """Fill the channel folder from an ``s3://`` prefix (like File mode) or a local path.

    Returns:
        Number of files staged.

    Raises:
        LocalJobError: nothing found at ``source``.
    """
    if is_s3_location(source):
        return _download_prefix(source, channel_dir, s3)
    path = Path(source)
    if path.is_dir():
        shutil.copytree(path, channel_dir, dirs_exist_ok=True)
        return sum(1 for p in channel_dir.rglob("*") if p.is_file())
    if path.is_file():
        shutil.copy2(path, channel_dir / path.name)
        return 1
    raise LocalJobError(f"training data {source} does not exist: pass --train DIR or "
                      "s3://bucket/prefix")


def _download_prefix(uri: str, channel_dir: Path, s3: Any) -> int:
    folder = parse_s3_prefix(uri, field="--train")
    # SageMaker's S3Prefix channel takes every key that starts with the text after the bucket (a
    # key name prefix: s3://b/data/bc also takes data/bc.csv); a trailing "/" keeps it a folder.
    bucket = folder.bucket
    prefix = folder.prefix if uri.endswith("/") else folder.prefix.removesuffix("/")
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            key = item["Key"]
            if key.endswith("/"):
                continue
            relative = key[len(prefix):].lstrip("/") or PurePosixPath(key).name
            parts = PurePosixPath(relative).parts
            if ".." in parts:
                raise LocalJobError(
                    f"refusing S3 key {key!r}: '..' would escape the channel folder")
            dest = channel_dir.joinpath(*parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, key, str(dest))
            count += 1
    if count == 0:
        raise LocalJobError(f"no objects under {uri}: upload the training data there first "
                          "(features/labels .npy pair or one CSV)")
    return count


def hyperparameter_args(hyperparameters: Mapping[str, Any]) -> list[str]:
    """``{"n_bits": 3, "C": 1}`` -> ``["--n_bits", "3", "-C", "1"]``: the toolkit's command line
    (sagemaker-training gives one-letter names a single dash)."""
    args: list[str] = []
    for name, value in hyperparameters.items():
        args += [f"{'-' if len(name) == 1 else '--'}{name}",
                 value if isinstance(value, str) else json.dumps(value)]
    return args


def training_env(layout: JobLayout, hyperparameters: Mapping[str, str],
                 base: Mapping[str, str]) -> dict[str, str]:
    """The environment SageMaker's toolkit gives the training script (and this checkout)."""
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), base.get("PYTHONPATH", "")]))
    return {**base, "PYTHONPATH": pythonpath, **layout.environment(hyperparameters)}


def run_training_script(layout: JobLayout, hyperparameters: Mapping[str, Any], *,
                        environ: Mapping[str, str]) -> None:
    """Run training_script.py in a subprocess, as the toolkit does.

    Raises:
        LocalJobError: the script failed; the message is the failure file's text.
    """
    hps = {name: value if isinstance(value, str) else json.dumps(value)
           for name, value in hyperparameters.items()}
    atomic_write_bytes(layout.config_dir / HYPERPARAMETERS_FILE, json.dumps(hps).encode())
    atomic_write_bytes(layout.config_dir / INPUT_DATA_CONFIG_FILE,
                       json.dumps({TRAINING_CHANNEL: {"TrainingInputMode": "File"}}).encode())
    command = [sys.executable, str(TRAINING_SCRIPT), *hyperparameter_args(hps)]
    logger.info("running %s", " ".join(command))
    completed = subprocess.run(command, env=training_env(layout, hps, environ),
                               cwd=layout.root, check=False, preexec_fn=die_with_parent())
    if completed.returncode != 0:
        reason = (layout.failure_file.read_text(errors="replace").strip()
                  if layout.failure_file.is_file() else "no failure file was written")
        raise LocalJobError(f"training failed (exit code {completed.returncode}): {reason}")


def pack_folder(folder: Path, tarball: Path) -> Path:
    """Pack a folder's content (top level, no leading folder) as a gzip tarball, like SageMaker."""
    tmp = tarball.with_name(f".{tarball.name}.tmp")
    with tarfile.open(tmp, "w:gz") as archive:
        for entry in sorted(folder.iterdir()):
            archive.add(entry, arcname=entry.name)
    os.replace(tmp, tarball)
    return tarball


def upload(s3: Any, path: Path, uri: str) -> str:
    """Upload a file to an ``s3://`` URI with SSE-S3 encryption; returns the URI."""
    location = parse_s3_uri(uri, field="--output-path")
    s3.upload_file(str(path), location.bucket, location.key, ExtraArgs=SSE)
    return uri


def run_local_job(
    *,
    job_name: str,
    train: str,
    output_path: str,
    hyperparameters: Mapping[str, Any],
    work_dir: Path,
    s3: Any,
    environ: Mapping[str, str],
) -> LocalJobResult:
    """Stage data, train in a subprocess, pack and upload the results.

    Raises:
        LocalJobError: missing data or a failed training (with the failure file's message).
    """
    layout = JobLayout(work_dir / job_name)
    if layout.root.exists() and any(layout.root.iterdir()):
        raise LocalJobError(f"job folder {layout.root} already exists: choose another --job-name "
                          "(job names are unique, as on SageMaker) or remove that folder")
    layout.create()
    staged = stage_channel(train, layout.channel_dir, s3)
    logger.info("staged %d file(s) from %s into %s", staged, train, layout.channel_dir)
    run_training_script(layout, hyperparameters, environ=environ)
    model_data, output_data = job_outputs(output_path, job_name)
    model_tar = pack_folder(layout.model_dir, layout.output_dir / MODEL_TARBALL)
    output_tar = pack_folder(layout.output_data_dir, layout.output_dir / OUTPUT_TARBALL)
    return LocalJobResult(
        job_name=job_name,
        model_data=upload(s3, model_tar, str(model_data)),
        output_data=upload(s3, output_tar, str(output_data)),
    )
