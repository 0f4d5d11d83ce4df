"""Launch a training job: on SageMaker (the ``Concrete`` estimator) or locally (``--local``).

Settings come from flags, else environment variables, else a JSON config file (``--config``,
keys = flag names with underscores, ``hyperparameters`` as an object), else defaults — never from
editing this file. Examples::

    python start_training.py --role arn:aws:iam::123456789012:role/fhe-training \\
        --image-uri 123456789012.dkr.ecr.eu-west-1.amazonaws.com/concrete-training:1.9.0 \\
        --train s3://bucket/fhe/data/ --output-path s3://bucket/fhe/models \\
        --hyperparameter model=XGBClassifier --hyperparameter n_bits=6

    python start_training.py --local --train ./data --output-path s3://bucket/fhe/models

Both print ``model_data: s3://.../<job-name>/output/model.tar.gz``; ``--result-file`` also gets
``{"job_name", "model_data", "output_data"}`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NoReturn

from common import options
from common.files import atomic_write_bytes
from common.process import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    interrupt_on_sigterm,
    run_main,
)
from common.s3_location import S3LocationError, is_s3_location, parse_s3_prefix
from common.sagemaker_layout import job_outputs
from local_mode.training_job import LocalJobError, run_local_job
from training.errors import TrainingError
from training.models import resolve_hyperparameters

logger = logging.getLogger("start_training")

ENV_ROLE = "FHE_TRAINING_ROLE"
ENV_IMAGE_URI = "FHE_TRAINING_IMAGE_URI"
ENV_INSTANCE_TYPE = "FHE_TRAINING_INSTANCE_TYPE"
ENV_TRAIN = "FHE_TRAINING_DATA"
ENV_OUTPUT_PATH = "FHE_TRAINING_OUTPUT_PATH"
ENV_CODE_LOCATION = "FHE_TRAINING_CODE_LOCATION"
ENV_S3_ENDPOINT_URL = "AWS_ENDPOINT_URL_S3"
ENV_REGION = "AWS_DEFAULT_REGION"
# Flag dest -> environment variable consulted when the flag is not given.
ENV_BY_SETTING = {
    "role": ENV_ROLE,
    "image_uri": ENV_IMAGE_URI,
    "instance_type": ENV_INSTANCE_TYPE,
    "train": ENV_TRAIN,
    "output_path": ENV_OUTPUT_PATH,
    "code_location": ENV_CODE_LOCATION,
    "s3_endpoint_url": ENV_S3_ENDPOINT_URL,
    "region": ENV_REGION,
}
DEFAULT_INSTANCE_TYPE = "ml.c5.2xlarge"
DEFAULT_BASE_JOB_NAME = "concrete-fhe"
DEFAULT_MAX_RUN_SECONDS = 24 * 3600


class LaunchConfigError(ValueError):
    """start_training.py was given incomplete or invalid settings (all problems listed)."""


@dataclass(frozen=True)
class LaunchSettings:
    """Everything one launch needs, resolved from flags, env and config file in one place."""

    train: str | None = None
    output_path: str | None = None
    role: str | None = None
    image_uri: str | None = None
    instance_type: str = DEFAULT_INSTANCE_TYPE
    instance_count: int = 1
    code_location: str | None = None
    hyperparameters: dict[str, str] = field(default_factory=dict)
    job_name: str | None = None
    base_job_name: str = DEFAULT_BASE_JOB_NAME
    wait: bool = True
    logs: bool = True
    local: bool = False
    s3_endpoint_url: str | None = None
    region: str | None = None
    max_run_seconds: int = DEFAULT_MAX_RUN_SECONDS
    encrypt_inter_container_traffic: bool = True
    result_file: Path | None = None
    work_dir: Path | None = None

    @classmethod
    def resolve(cls, argv: Sequence[str], environ: Mapping[str, str]) -> LaunchSettings:
        """Parse ``argv``; fill unset values from ``environ``, then ``--config``; validate.

        Raises:
            LaunchConfigError: unreadable config, bad values or missing settings (all listed).
        """
        args = _parser().parse_args(list(argv))
        try:
            config = _read_config(args.config) if args.config else {}
            flags = {**options.given(args), "hyperparameters": {
                **_str_values(config.get("hyperparameters", {})),
                **_parse_pairs(args.hyperparameter or [])}}
            settings = options.resolve(cls, flags=flags, environ=environ,
                                       env_names=ENV_BY_SETTING, config=config)
        except options.OptionsError as exc:
            raise LaunchConfigError(str(exc)) from exc
        settings.validate()
        return settings

    def validate(self) -> None:
        """Check the settings the chosen mode needs, and the hyperparameters (fail before paying).

        Raises:
            LaunchConfigError: every problem found, in one message.
        """
        problems: list[str] = []
        if not self.train:
            problems.append(f"--train is required (s3://bucket/prefix or a folder; "
                            f"env {ENV_TRAIN})")
        elif not self.local and not is_s3_location(self.train):
            problems.append("--train must be an s3:// prefix on SageMaker (local folders only "
                            "with --local)")
        problems += _check_s3("--output-path", self.output_path, required=True, env=ENV_OUTPUT_PATH)
        problems += _check_s3("--code-location", self.code_location, required=False)
        if self.train and is_s3_location(self.train):
            problems += _check_s3("--train", self.train, required=True)
        if not self.local:
            if not self.role:
                problems.append(f"--role is required (IAM role ARN; env {ENV_ROLE})")
            if not self.image_uri:
                problems.append(f"--image-uri is required (the Dockerfile.training image; env "
                                f"{ENV_IMAGE_URI})")
        if self.instance_count < 1:
            problems.append("--instance-count must be >= 1")
        try:
            resolve_hyperparameters(self.hyperparameters)
        except TrainingError as exc:
            problems.append(str(exc))
        if problems:
            raise LaunchConfigError("; ".join(problems))


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise LaunchConfigError(f"{message} (see --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    add = parser.add_argument
    add("--config", type=Path, help="JSON file with any of these settings (flags and env win)")
    add("--train", help=f"training data: s3://bucket/prefix, or a folder with --local "
        f"({ENV_TRAIN})")
    add("--output-path", help=f"s3://bucket/prefix for model.tar.gz/output.tar.gz "
        f"({ENV_OUTPUT_PATH})")
    add("--role", help=f"IAM role ARN of the training job ({ENV_ROLE})")
    add("--image-uri", help=f"training image URI ({ENV_IMAGE_URI})")
    add("--instance-type", help=f"default {DEFAULT_INSTANCE_TYPE} ({ENV_INSTANCE_TYPE})")
    add("--instance-count", type=int)
    add("--code-location", help=f"s3://bucket/prefix for the uploaded code, default: --output-path "
        f"({ENV_CODE_LOCATION})")
    add("--hyperparameter", "-H", action="append", metavar="KEY=VALUE",
        help="training hyperparameter, repeatable (see docs/training.md)")
    add("--job-name", help="training job name (default: generated)")
    add("--base-job-name", help=f"prefix of generated job names (default {DEFAULT_BASE_JOB_NAME})")
    add("--wait", action=argparse.BooleanOptionalAction, default=None,
        help="wait for the SageMaker job to finish (default: wait)")
    add("--logs", action=argparse.BooleanOptionalAction, default=None,
        help="stream the job's CloudWatch logs while waiting (default: yes)")
    add("--max-run-seconds", type=int, help="SageMaker stopping condition")
    add("--encrypt-inter-container-traffic", action=argparse.BooleanOptionalAction, default=None,
        help="encrypt traffic between the job's instances (default: on, as the AWS sample; "
        "--no-encrypt-inter-container-traffic turns it off)")
    add("--region", help=f"AWS region ({ENV_REGION})")
    add("--local", action="store_true", default=None,
        help="train on this machine with the same script, upload results to --output-path")
    add("--s3-endpoint-url", help=f"S3 endpoint, e.g. a local S3 server ({ENV_S3_ENDPOINT_URL})")
    add("--work-dir", type=Path, help="--local: keep the job folder here (default: a temp dir)")
    add("--result-file", type=Path, help="write {job_name, model_data, output_data} JSON here")
    return parser


def _read_config(path: Path) -> dict[str, Any]:
    doc = options.read_config(path, known=(item.name for item in fields(LaunchSettings)))
    if not isinstance(doc.get("hyperparameters", {}), dict):
        raise LaunchConfigError(f"'hyperparameters' in {path} must be a JSON object")
    return doc


def _str_values(values: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}


def _parse_pairs(pairs: Sequence[str]) -> dict[str, str]:
    parsed: dict[str, str] = {}
    bad = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            bad.append(pair)
        else:
            parsed[key.strip()] = value
    if bad:
        raise LaunchConfigError(
            f"--hyperparameter takes KEY=VALUE, got {', '.join(map(repr, bad))}")
    return parsed


def _check_s3(flag: str, uri: str | None, *, required: bool, env: str = "") -> list[str]:
    if not uri:
        return [f"{flag} is required (s3://bucket/prefix{'; env ' + env if env else ''})"] \
            if required else []
    try:
        parse_s3_prefix(uri, field=flag)
    except S3LocationError as exc:
        return [str(exc)]
    return []


def default_job_name(base: str) -> str:
    """``<base>-YYYY-mm-dd-HH-MM-SS-mmm``, like the SDK's generated names."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime(now))
    return f"{base}-{stamp}-{int(now * 1000) % 1000:03d}"


@dataclass(frozen=True)
class LaunchResult:
    """Where a job's results are (or will be)."""

    job_name: str
    model_data: str
    output_data: str

    def to_json(self) -> bytes:
        """The result file's content."""
        return json.dumps({"job_name": self.job_name, "model_data": self.model_data,
                           "output_data": self.output_data}, indent=2).encode()


def _s3_client(settings: LaunchSettings) -> Any:
    import boto3

    return boto3.session.Session(region_name=settings.region).client(
        "s3", endpoint_url=settings.s3_endpoint_url)


def launch_local(settings: LaunchSettings, environ: Mapping[str, str]) -> LaunchResult:
    """Run the training script here, mirroring SageMaker, and upload the tarballs."""
    assert settings.train and settings.output_path  # checked by validate()
    job_name = settings.job_name or default_job_name(settings.base_job_name)
    child_env = dict(environ)
    if settings.s3_endpoint_url:
        child_env[ENV_S3_ENDPOINT_URL] = settings.s3_endpoint_url
    with tempfile.TemporaryDirectory(prefix="concrete-local-") as tmp:
        work_dir = settings.work_dir or Path(tmp)
        result = run_local_job(
            job_name=job_name, train=settings.train, output_path=settings.output_path,
            hyperparameters=settings.hyperparameters, work_dir=work_dir,
            s3=_s3_client(settings), environ=child_env,
        )
    return LaunchResult(result.job_name, result.model_data, result.output_data)


def launch_sagemaker(settings: LaunchSettings) -> LaunchResult:
    """Create the SageMaker training job through the ``Concrete`` estimator."""
    import boto3
    import sagemaker

    from framework import Concrete

    assert settings.output_path and settings.image_uri and settings.role  # checked by validate()
    boto_session = boto3.session.Session(region_name=settings.region)
    session = sagemaker.Session(boto_session=boto_session,
                                default_bucket=parse_s3_prefix(settings.output_path).bucket)
    estimator = Concrete(
        image_uri=settings.image_uri, role=settings.role, instance_type=settings.instance_type,
        instance_count=settings.instance_count, output_path=settings.output_path,
        code_location=settings.code_location or settings.output_path,
        hyperparameters=dict(settings.hyperparameters), base_job_name=settings.base_job_name,
        max_run=settings.max_run_seconds, sagemaker_session=session,
        encrypt_inter_container_traffic=settings.encrypt_inter_container_traffic,
    )
    estimator.fit({"training": settings.train}, wait=settings.wait,
                  logs="All" if settings.logs else "None", job_name=settings.job_name)
    job_name = estimator.latest_training_job.name
    model_data, output_data = job_outputs(settings.output_path, job_name)
    return LaunchResult(job_name, str(estimator.model_data if settings.wait else model_data),
                        str(output_data))


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point. Returns the exit code (:mod:`common.process`): 0 ok, 1 failed job or AWS
    error, 2 bad settings."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    environ = os.environ if environ is None else environ
    try:
        settings = LaunchSettings.resolve(sys.argv[1:] if argv is None else argv, environ)
    except LaunchConfigError as exc:
        print(f"start_training: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        result = launch_local(settings, environ) if settings.local else launch_sagemaker(settings)
    except LocalJobError as exc:
        print(f"start_training: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:
        if not _is_aws_error(exc):
            raise
        print(f"start_training: AWS call failed ({type(exc).__name__}: {exc}): check credentials, "
              "region, role and the S3/SageMaker endpoint", file=sys.stderr)
        return EXIT_FAILED
    if settings.result_file:
        atomic_write_bytes(settings.result_file, result.to_json())
    print(f"job_name: {result.job_name}")
    print(f"model_data: {result.model_data}")
    print(f"output_data: {result.output_data}")
    return EXIT_OK


def _is_aws_error(exc: BaseException) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    return isinstance(exc, BotoCoreError | ClientError)


if __name__ == "__main__":
    interrupt_on_sigterm()  # --local: the training subprocess is killed, temp files go (exit 130)
    run_main(main)
