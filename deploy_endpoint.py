"""Deploy (or delete) the FHE model as a SageMaker asynchronous endpoint that scales to zero.

    python deploy_endpoint.py --image-uri IMAGE --model-data s3://…/model.tar.gz --role ARN \\
        --endpoint-name NAME --output-path s3://bucket/async-out --failure-path s3://bucket/async-fail
    python deploy_endpoint.py ... --latest-training-job MNIST     # instead of --model-data
    python deploy_endpoint.py --endpoint-name NAME --delete [--delete-prefix s3://bucket/prefix ...]
    python deploy_endpoint.py ... --dry-run      # print what would be created or deleted
    python deploy_endpoint.py --local --model-dir DIR --endpoint-name NAME \\
        --output-path s3://bucket/async-out --failure-path s3://bucket/async-fail

Every option may also come from ``--config FILE.json`` (keys = option names, ``-`` or ``_``) or
the environment (``FHE_DEPLOY_<OPTION>``, e.g. ``FHE_DEPLOY_ROLE``); flags win over the
environment, which wins over the file.

Unless ``--no-lifecycle``, S3 lifecycle rules (``s3_lifecycle.py``) expire what the kit leaves
in S3: the clients' keys/, queries/ and requests/ and the async output and failure objects.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import s3_lifecycle
from common.process import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, run_main
from common.s3_location import S3LocationError, parse_s3_prefix, parse_s3_uri

logger = logging.getLogger("deploy_endpoint")

ENV_PREFIX = "FHE_DEPLOY_"
VARIANT = "AllTraffic"
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
BACKLOG_METRIC = "ApproximateBacklogSizePerInstance"
WAKE_METRIC = "HasBacklogWithoutCapacity"
TIMEOUT_MARGIN = 60  # SageMaker's invocation timeout exceeds the server's, so the server answers
MODEL_SOURCES = ("model_data", "model_dir", "training_job", "latest_training_job")


class DeployError(RuntimeError):
    """The deployment cannot proceed (bad configuration, model data, local server failure)."""


# -- configuration ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command line (every option also reads from --config and FHE_DEPLOY_* env)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", help="JSON file of option values")
    p.add_argument("--endpoint-name", help="endpoint (also model and config) name")
    p.add_argument("--image-uri", help="inference image (Dockerfile.inference) in ECR")
    p.add_argument("--model-data", help="s3://…/model.tar.gz produced by training")
    p.add_argument("--training-job", help="instead of --model-data: the model of this completed"
                                          " training job (DescribeTrainingJob)")
    p.add_argument("--latest-training-job", metavar="BASE_JOB_NAME",
                   help="instead of --model-data: the model of the newest completed training"
                        " job named BASE_JOB_NAME or BASE_JOB_NAME-…")
    p.add_argument("--model-dir", help="--local only: a model directory instead of --model-data")
    p.add_argument("--role", help="execution role ARN of the endpoint")
    p.add_argument("--region", help="AWS region (default: the SDK's)")
    p.add_argument("--instance-type", default="ml.c5.4xlarge",
                   help="CPU instance (FHE runs on every core of it)")
    p.add_argument("--output-path", help="s3://bucket/prefix for async results")
    p.add_argument("--failure-path", help="s3://bucket/prefix for async errors")
    p.add_argument("--allowed-s3-prefix", action="append", default=None,
                   help="s3://bucket/prefix the container may read (repeat); default: the"
                        " bucket of --output-path")
    p.add_argument("--success-topic", help="SNS topic ARN notified on success")
    p.add_argument("--error-topic", help="SNS topic ARN notified on error")
    p.add_argument("--kms-key", help="KMS key for the async output and the instance volume")
    p.add_argument("--max-concurrent-invocations", type=int, default=1,
                   help="per instance; 1 fits FHE (one run uses every core)")
    p.add_argument("--timeout", type=int, default=600,
                   help="seconds per invocation: SAGEMAKER_MODEL_SERVER_TIMEOUT; invoke with"
                        " InvocationTimeoutSeconds = this + 60")
    p.add_argument("--workers", type=int, default=1, help="gunicorn workers per instance")
    p.add_argument("--startup-timeout", type=int, default=1800,
                   help="container startup health check timeout (covers the circuit compile)")
    p.add_argument("--min-capacity", type=int, default=0)
    p.add_argument("--max-capacity", type=int, default=2)
    p.add_argument("--target-backlog", type=float, default=2.0,
                   help="target ApproximateBacklogSizePerInstance")
    p.add_argument("--scale-in-cooldown", type=int, default=600)
    p.add_argument("--scale-out-cooldown", type=int, default=120)
    p.add_argument("--delete", action="store_true",
                   help="remove endpoint, endpoint config, model, scaling policies and alarm")
    p.add_argument("--delete-prefix", action="append", default=None,
                   help="with --delete: also delete every object under this s3:// prefix")
    p.add_argument("--client-prefix", action="append", default=None,
                   help="s3://bucket/prefix a client uses (EncryptedPredictor's s3_prefix; repeat):"
                        " its keys/, queries/ and requests/ expire; default: each"
                        " --allowed-s3-prefix")
    p.add_argument("--expire-keys-days", type=int, default=s3_lifecycle.DEFAULT_KEYS_DAYS,
                   help="age of evaluation keys in S3 (clients re-upload them when missing)")
    p.add_argument("--expire-requests-days", type=int,
                   default=s3_lifecycle.DEFAULT_REQUESTS_DAYS,
                   help="age of ciphertexts and request documents a client did not delete")
    p.add_argument("--expire-results-days", type=int, default=s3_lifecycle.DEFAULT_RESULTS_DAYS,
                   help="age of async results and failure objects")
    p.add_argument("--no-lifecycle", action="store_true",
                   help="leave the buckets' lifecycle configuration alone")
    p.add_argument("--dry-run", action="store_true",
                   help="print what would be created (or deleted) and change nothing")
    p.add_argument("--local", action="store_true", help="run the whole endpoint on this machine")
    p.add_argument("--s3-endpoint-url", help="--local: S3 endpoint (default AWS_ENDPOINT_URL_S3,"
                                             " else an embedded S3 for --model-dir)")
    p.add_argument("--ready-file", help="--local: write endpoint JSON here once healthy")
    p.add_argument("--port", type=int, default=0, help="--local: serve port (0 = free port)")
    p.add_argument("--runtime-port", type=int, default=0, help="--local: runtime port")
    p.add_argument("--journal-dir", help="--local: keep accepted invocations on disk here; a"
                   " local endpoint restarted on the same folder completes what a crash left")
    return p


def parse_args(argv: Sequence[str] | None, environ: Mapping[str, str] | None = None
               ) -> argparse.Namespace:
    """Parse flags over env (FHE_DEPLOY_*) over the --config file over defaults.

    Raises:
        DeployError: the config file is unreadable, or required options are missing.
    """
    env = os.environ if environ is None else environ
    parser = build_parser()
    first = parser.parse_args(argv)
    defaults: dict[str, Any] = {}
    if first.config:
        try:
            doc = json.loads(Path(first.config).read_text())
        except (OSError, ValueError) as exc:
            raise DeployError(f"cannot read --config {first.config}: {exc}") from exc
        defaults.update({k.replace("-", "_"): v for k, v in doc.items()})
    for action in parser._actions:
        raw = env.get(ENV_PREFIX + action.dest.upper())
        if raw is None or action.dest == "help":
            continue
        if action.nargs == 0:
            defaults[action.dest] = raw.lower() in ("1", "true", "yes")
        elif isinstance(action, argparse._AppendAction):
            defaults[action.dest] = [v for v in raw.split(",") if v]
        else:
            defaults[action.dest] = action.type(raw) if action.type else raw
    unknown = sorted(set(defaults) - {a.dest for a in parser._actions})
    if unknown:
        raise DeployError(f"unknown option(s) in --config: {', '.join(unknown)}")
    parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    _require(args)
    return args


def _require(args: argparse.Namespace) -> None:
    sources = [n for n in MODEL_SOURCES if getattr(args, n)]
    if args.delete:
        needed = ["endpoint_name"]
    elif args.local:
        needed = ["endpoint_name", "output_path", "failure_path", "model source"]
    else:
        needed = ["endpoint_name", "image_uri", "model source", "role", "output_path",
                  "failure_path"]
        if args.model_dir:
            raise DeployError("--model-dir is for --local only: upload the model and pass"
                              " --model-data, --training-job or --latest-training-job")
    if len(sources) > 1 and not args.delete:
        raise DeployError(f"give one model source, not {', '.join(map(_flag, sources))}")
    missing = []
    for name in needed:
        if name != "model source" and not getattr(args, name):
            missing.append(_flag(name))
        elif name == "model source" and not sources:
            local = " / --model-dir" if args.local else ""
            missing.append(f"--model-data (or{local} --training-job / --latest-training-job)")
    if missing:
        raise DeployError(f"missing {', '.join(missing)}: pass them as flags, in --config, or as"
                          f" {ENV_PREFIX}<OPTION> environment variables")
    if args.min_capacity < 0 or args.max_capacity < max(1, args.min_capacity):
        raise DeployError("need 0 <= --min-capacity <= --max-capacity and --max-capacity >= 1")
    ages = ("expire_keys_days", "expire_requests_days", "expire_results_days")
    bad_ages = [f"--{n.replace('_', '-')}={getattr(args, n)}" for n in ages if getattr(args, n) < 1]
    if bad_ages:
        raise DeployError(f"{', '.join(bad_ages)}: expiration ages are whole days >= 1")
    if args.local and args.dry_run:
        raise DeployError("--dry-run shows what an AWS deployment would do; drop --local")
    if not args.delete:
        _check_allowed_prefixes(args)


def _check_allowed_prefixes(args: argparse.Namespace) -> None:
    """Every --allowed-s3-prefix must parse, before anything is created (all listed)."""
    from inference.settings import SettingsError, parse_allowed_prefix

    problems = []
    for text in args.allowed_s3_prefix or ():
        try:
            parse_allowed_prefix(text)
        except SettingsError as exc:
            problems.append(str(exc))
    if problems:
        raise DeployError("bad --allowed-s3-prefix: " + "; ".join(problems))


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def allowed_prefixes(args: argparse.Namespace) -> list[str]:
    """The container's S3 allow-list: the flags, or the bucket of --output-path."""
    if args.allowed_s3_prefix:
        return list(args.allowed_s3_prefix)
    return [f"s3://{parse_s3_prefix(args.output_path, field='--output-path').bucket}"]


def client_prefixes(args: argparse.Namespace) -> list[str]:
    """The clients' S3 prefixes: the flags, or the container's allow-list."""
    return list(args.client_prefix or allowed_prefixes(args))


def lifecycle_rules(args: argparse.Namespace) -> list[s3_lifecycle.ExpiryRule]:
    """The expiration rules of this deployment.

    Raises:
        DeployError: a rule would cover a whole bucket, the model data, or another rule.
    """
    ages = s3_lifecycle.Ages(keys_days=args.expire_keys_days,
                             requests_days=args.expire_requests_days,
                             results_days=args.expire_results_days)
    try:
        return s3_lifecycle.planned_rules(
            client_prefixes=client_prefixes(args), output_path=args.output_path,
            failure_path=args.failure_path, ages=ages,
            protected=[args.model_data] if args.model_data else [])
    except s3_lifecycle.LifecycleError as exc:
        raise DeployError(str(exc)) from exc


def container_env(args: argparse.Namespace) -> dict[str, str]:
    """Environment of the serving container (see inference/settings.py)."""
    from inference.settings import ENV_ALLOWED_PREFIXES, ENV_TIMEOUT, ENV_WORKERS

    return {ENV_TIMEOUT: str(args.timeout), ENV_WORKERS: str(args.workers),
            ENV_ALLOWED_PREFIXES: ",".join(allowed_prefixes(args))}


def resolve_model_data(args: argparse.Namespace, sagemaker: Any) -> str:
    """The model.tar.gz of ``--training-job`` / ``--latest-training-job``.

    Raises:
        DeployError: no such completed job (the message says what to check).
    """
    from common.training_jobs import JobLookupError, find_model

    try:
        found = find_model(sagemaker, job_name=args.training_job,
                           base_job_name=args.latest_training_job)
    except JobLookupError as exc:
        raise DeployError(str(exc)) from exc
    logger.info("model of training job %s: %s", found.job_name, found.model_data)
    return found.model_data


# -- cloud -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Names:
    """Resource names derived from the endpoint name."""

    endpoint: str

    @property
    def model(self) -> str:
        return f"{self.endpoint}-model"

    @property
    def resource_id(self) -> str:
        return f"endpoint/{self.endpoint}/variant/{VARIANT}"

    @property
    def target_policy(self) -> str:
        return f"{self.endpoint}-backlog-target"

    @property
    def wake_policy(self) -> str:
        return f"{self.endpoint}-wake-from-zero"

    @property
    def wake_alarm(self) -> str:
        return f"{self.endpoint}-has-backlog-without-capacity"


def deploy(args: argparse.Namespace, boto_session: Any) -> dict[str, Any]:
    """Create lifecycle rules, model, endpoint config, async endpoint and autoscaling.

    The lifecycle rules go first: they are idempotent, and a refusal surfaces before the
    endpoint takes minutes to create. Returns a summary.
    """
    import sagemaker
    from sagemaker.async_inference import AsyncInferenceConfig
    from sagemaker.model import Model

    names = Names(args.endpoint_name)
    lifecycle = lifecycle_changes(args, boto_session)
    s3_lifecycle.execute(boto_session.client("s3"), lifecycle)
    session = sagemaker.Session(boto_session=boto_session)
    notification = {k: v for k, v in (("SuccessTopic", args.success_topic),
                                      ("ErrorTopic", args.error_topic)) if v}
    async_config = AsyncInferenceConfig(
        output_path=args.output_path,
        failure_path=args.failure_path,
        max_concurrent_invocations_per_instance=args.max_concurrent_invocations,
        kms_key_id=args.kms_key,
        notification_config=notification or None,
    )
    model = Model(image_uri=args.image_uri, model_data=args.model_data, role=args.role,
                  env=container_env(args), name=names.model, sagemaker_session=session)
    model.deploy(
        initial_instance_count=1,
        instance_type=args.instance_type,
        endpoint_name=names.endpoint,
        async_inference_config=async_config,
        kms_key=args.kms_key,
        container_startup_health_check_timeout=args.startup_timeout,
        model_data_download_timeout=args.startup_timeout,
        wait=True,
    )
    configure_autoscaling(args, boto_session)
    return {"endpoint_name": names.endpoint, "model_name": names.model,
            "invocation_timeout_seconds": args.timeout + TIMEOUT_MARGIN,
            "output_path": args.output_path, "failure_path": args.failure_path,
            "lifecycle_rules": {c.bucket: c.owned for c in lifecycle}}


def plan(args: argparse.Namespace, boto_session: Any) -> dict[str, Any]:
    """What deploy (or --delete) would do, for --dry-run; reads lifecycle rules, writes nothing."""
    names = Names(args.endpoint_name)
    if args.delete:
        lifecycle = [] if args.no_lifecycle else removal_changes(
            boto_session.client("s3"), names.endpoint, lifecycle_buckets(args, boto_session))
        return {"dry_run": True,
                "delete": {"endpoint": names.endpoint, "model": names.model,
                           "autoscaling": {"policies": [names.target_policy, names.wake_policy],
                                           "scalable_target": names.resource_id,
                                           "alarm": names.wake_alarm},
                           "objects_under": list(args.delete_prefix or [])},
                "lifecycle": [c.as_dict() for c in lifecycle]}
    lifecycle = lifecycle_changes(args, boto_session)
    return {"dry_run": True,
            "create": {"model": names.model, "image_uri": args.image_uri,
                       "model_data": args.model_data, "environment": container_env(args),
                       "endpoint": names.endpoint, "instance_type": args.instance_type,
                       "output_path": args.output_path, "failure_path": args.failure_path,
                       "autoscaling": {"min_capacity": args.min_capacity,
                                       "max_capacity": args.max_capacity,
                                       "policies": [names.target_policy, names.wake_policy],
                                       "alarm": names.wake_alarm}},
            "lifecycle": [c.as_dict() for c in lifecycle]}


def lifecycle_changes(args: argparse.Namespace, boto_session: Any
                      ) -> list[s3_lifecycle.BucketChange]:
    """This deployment's rules merged into each bucket's configuration (nothing written yet).

    Raises:
        DeployError: the rules cannot be planned (bad locations, missing buckets).
    """
    if args.no_lifecycle:
        return []
    try:
        return s3_lifecycle.plan_apply(boto_session.client("s3"), args.endpoint_name,
                                       lifecycle_rules(args))
    except s3_lifecycle.LifecycleError as exc:
        raise DeployError(str(exc)) from exc


def lifecycle_buckets(args: argparse.Namespace, boto_session: Any) -> list[str]:
    """Buckets that may hold this endpoint's lifecycle rules, for --delete.

    The locations given on the command line, plus those the deployed endpoint was created
    with (its async output/failure paths and its container's allow-list), when it still exists.
    """
    uris = [*(args.client_prefix or []), *(args.allowed_s3_prefix or []),
            *(u for u in (args.output_path, args.failure_path) if u)]
    uris += _deployed_locations(boto_session.client("sagemaker"), Names(args.endpoint_name))
    try:
        return list(dict.fromkeys(parse_s3_prefix(uri).bucket for uri in uris))
    except S3LocationError as exc:
        raise DeployError(f"cannot tell which buckets hold the lifecycle rules: {exc}") from exc


def _deployed_locations(sm: Any, names: Names) -> list[str]:
    from botocore.exceptions import ClientError

    from inference.settings import ENV_ALLOWED_PREFIXES

    uris: list[str] = []
    with contextlib.suppress(ClientError, KeyError):
        config = sm.describe_endpoint_config(EndpointConfigName=sm.describe_endpoint(
            EndpointName=names.endpoint)["EndpointConfigName"])
        output = config["AsyncInferenceConfig"]["OutputConfig"]
        uris += [u for u in (output.get("S3OutputPath"), output.get("S3FailurePath")) if u]
    with contextlib.suppress(ClientError, KeyError):
        env = sm.describe_model(ModelName=names.model)["PrimaryContainer"]["Environment"]
        uris += [u for u in env.get(ENV_ALLOWED_PREFIXES, "").split(",") if u]
    return uris


def configure_autoscaling(args: argparse.Namespace, boto_session: Any) -> None:
    """Scale on the async backlog, down to ``--min-capacity`` (0) and back up from zero."""
    names = Names(args.endpoint_name)
    scaling = boto_session.client("application-autoscaling")
    scaling.register_scalable_target(
        ServiceNamespace="sagemaker", ResourceId=names.resource_id,
        ScalableDimension=SCALABLE_DIMENSION, MinCapacity=args.min_capacity,
        MaxCapacity=args.max_capacity,
    )
    dimensions = [{"Name": "EndpointName", "Value": names.endpoint}]
    scaling.put_scaling_policy(
        PolicyName=names.target_policy, ServiceNamespace="sagemaker",
        ResourceId=names.resource_id, ScalableDimension=SCALABLE_DIMENSION,
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": args.target_backlog,
            "CustomizedMetricSpecification": {"MetricName": BACKLOG_METRIC,
                                              "Namespace": "AWS/SageMaker",
                                              "Dimensions": dimensions, "Statistic": "Average"},
            "ScaleInCooldown": args.scale_in_cooldown,
            "ScaleOutCooldown": args.scale_out_cooldown,
        },
    )
    wake = scaling.put_scaling_policy(
        PolicyName=names.wake_policy, ServiceNamespace="sagemaker",
        ResourceId=names.resource_id, ScalableDimension=SCALABLE_DIMENSION,
        PolicyType="StepScaling",
        StepScalingPolicyConfiguration={
            "AdjustmentType": "ChangeInCapacity", "MetricAggregationType": "Average",
            "Cooldown": args.scale_out_cooldown,
            "StepAdjustments": [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}],
        },
    )
    boto_session.client("cloudwatch").put_metric_alarm(
        AlarmName=names.wake_alarm, MetricName=WAKE_METRIC, Namespace="AWS/SageMaker",
        Dimensions=dimensions, Statistic="Average", Period=60, EvaluationPeriods=2,
        DatapointsToAlarm=2, Threshold=1.0, ComparisonOperator="GreaterThanOrEqualToThreshold",
        TreatMissingData="missing", AlarmActions=[wake["PolicyARN"]],
    )


def delete(args: argparse.Namespace, boto_session: Any) -> list[str]:
    """Remove everything :func:`deploy` created (missing pieces are skipped); list what went."""
    from botocore.exceptions import ClientError

    names = Names(args.endpoint_name)
    sm = boto_session.client("sagemaker")
    scaling = boto_session.client("application-autoscaling")
    removed: list[str] = []
    buckets = [] if args.no_lifecycle else lifecycle_buckets(args, boto_session)

    def attempt(label: str, call: Any, **kwargs: Any) -> None:
        try:
            call(**kwargs)
            removed.append(label)
        except ClientError as exc:
            logger.info("skip %s: %s", label, exc.response.get("Error", {}).get("Code"))

    target = {"ServiceNamespace": "sagemaker", "ResourceId": names.resource_id,
              "ScalableDimension": SCALABLE_DIMENSION}
    for policy in (names.target_policy, names.wake_policy):
        attempt(f"scaling policy {policy}", scaling.delete_scaling_policy, PolicyName=policy,
                **target)
    attempt(f"scalable target {names.resource_id}", scaling.deregister_scalable_target, **target)
    attempt(f"alarm {names.wake_alarm}", boto_session.client("cloudwatch").delete_alarms,
            AlarmNames=[names.wake_alarm])
    config_name = names.endpoint
    with contextlib.suppress(ClientError):
        config_name = sm.describe_endpoint(EndpointName=names.endpoint)["EndpointConfigName"]
    attempt(f"endpoint {names.endpoint}", sm.delete_endpoint, EndpointName=names.endpoint)
    attempt(f"endpoint config {config_name}", sm.delete_endpoint_config,
            EndpointConfigName=config_name)
    attempt(f"model {names.model}", sm.delete_model, ModelName=names.model)
    for prefix in args.delete_prefix or []:
        removed.append(f"{delete_prefix(boto_session.client('s3'), prefix)} objects under {prefix}")
    s3 = boto_session.client("s3")
    for change in removal_changes(s3, names.endpoint, buckets):
        attempt(f"{len(change.removed)} lifecycle rule(s) of bucket {change.bucket}",
                s3_lifecycle.execute, s3=s3, changes=[change])
    return removed


def removal_changes(s3: Any, endpoint_name: str, buckets: list[str]
                    ) -> list[s3_lifecycle.BucketChange]:
    """Each bucket's configuration without this endpoint's rules (others' rules stay).

    Buckets that do not exist, or whose configuration S3 refuses to show, are skipped.
    """
    from botocore.exceptions import ClientError

    changes = []
    for bucket in buckets:
        try:
            changes += s3_lifecycle.plan_remove(s3, endpoint_name, [bucket])
        except s3_lifecycle.MissingBucketError:
            logger.info("skip lifecycle rules of bucket %s: it does not exist", bucket)
        except ClientError as exc:
            logger.warning("skip lifecycle rules of bucket %s: %s", bucket,
                           exc.response.get("Error", {}).get("Code"))
    return [c for c in changes if c.changed]


def delete_prefix(s3: Any, uri: str) -> int:
    """Delete every object under ``s3://bucket/prefix``; return how many."""
    location = parse_s3_prefix(uri, field="--delete-prefix")
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=location.bucket,
                                                             Prefix=location.prefix):
        keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=location.bucket, Delete={"Objects": keys, "Quiet": True})
            count += len(keys)
    return count


# -- local -----------------------------------------------------------------------------------


def extract_model(archive: Path, dest: Path) -> Path:
    """Unpack model.tar.gz safely (no absolute paths, links or device files)."""
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(dest, filter="data")
    return dest


class LocalEndpoint:
    """The whole endpoint on this machine: S3 (given or embedded), ``serve``, async runtime."""

    def __init__(self, args: argparse.Namespace, work_dir: Path) -> None:
        self.args = args
        self.work_dir = work_dir
        self.s3_server: Any = None
        self.serve: subprocess.Popen[bytes] | None = None
        self.runtime: Any = None

    def start(self) -> dict[str, str]:
        """Start everything; return the ready document."""
        import boto3

        from inference.local.runtime import LocalAsyncRuntime
        from inference.local.s3_server import LocalS3Server, free_port
        from inference.settings import parse_allowed_prefix

        s3_url = self.args.s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
        s3_env: dict[str, str] = {}
        if not s3_url and not self.args.model_data:
            self.s3_server = LocalS3Server(log_path=self.work_dir / "s3.log").start()
            s3_url, s3_env = self.s3_server.endpoint_url, self.s3_server.env()
            logger.info("embedded S3 on %s", s3_url)
        s3 = boto3.client("s3", endpoint_url=s3_url, **_credentials(s3_env))
        if self.s3_server is not None:
            for uri in (self.args.output_path, self.args.failure_path):
                s3.create_bucket(Bucket=parse_s3_prefix(uri).bucket)
        model_dir = self._model_dir(s3)
        port = self.args.port or free_port()
        env = {**os.environ, **s3_env, **container_env(self.args),
               "FHE_MODEL_DIR": str(model_dir), "SAGEMAKER_BIND_TO_PORT": str(port),
               "FHE_BIND_HOST": "127.0.0.1", "FHE_KEY_CACHE_DIR": str(self.work_dir / "keys")}
        if s3_url:
            env["AWS_ENDPOINT_URL_S3"] = s3_url
        serve_url = f"http://127.0.0.1:{port}"
        self.serve = subprocess.Popen([sys.executable, "-m", "inference.serve"], env=env)
        wait_healthy(f"{serve_url}/ping", self.serve, timeout=self.args.startup_timeout)
        self.runtime = LocalAsyncRuntime(
            endpoint_name=self.args.endpoint_name, container_url=serve_url,
            output_path=self.args.output_path, failure_path=self.args.failure_path,
            s3_client=s3, max_concurrency=self.args.max_concurrent_invocations,
            invocation_timeout=self.args.timeout + TIMEOUT_MARGIN, port=self.args.runtime_port,
            journal_dir=self.args.journal_dir,
            allowed_input_prefixes=[parse_allowed_prefix(p) for p in allowed_prefixes(self.args)],
        ).start()
        return {"endpoint_name": self.args.endpoint_name, "runtime_url": self.runtime.url,
                "serve_url": serve_url, "s3_endpoint_url": s3_url or "",
                "output_path": self.args.output_path, "failure_path": self.args.failure_path}

    def _model_dir(self, s3: Any) -> Path:
        if self.args.model_dir:
            return Path(self.args.model_dir).resolve()
        from botocore.exceptions import BotoCoreError, ClientError

        uri = parse_s3_uri(self.args.model_data, field="--model-data")
        archive = self.work_dir / "model.tar.gz"
        try:
            s3.download_file(uri.bucket, uri.key, str(archive))
        except (ClientError, BotoCoreError) as exc:
            raise DeployError(f"cannot download {uri}: {exc}") from exc
        return extract_model(archive, self.work_dir / "model")

    def stop(self) -> None:
        """Stop runtime, server and embedded S3 (in that order)."""
        from inference.local.s3_server import stop_process

        if self.runtime is not None:
            self.runtime.stop()
        if self.serve is not None:
            stop_process(self.serve, timeout=60)
        if self.s3_server is not None:
            self.s3_server.stop()


def _credentials(env: Mapping[str, str]) -> dict[str, str]:
    if not env:
        return {}
    return {"aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
            "aws_session_token": env["AWS_SESSION_TOKEN"],
            "region_name": env["AWS_DEFAULT_REGION"]}


def wait_healthy(url: str, process: subprocess.Popen[bytes], *, timeout: float) -> None:
    """Poll ``url`` until it answers 200.

    Raises:
        DeployError: the process exited or ``timeout`` passed.
    """
    import requests

    deadline = time.monotonic() + timeout
    with requests.Session() as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise DeployError(f"serve exited with code {process.returncode}; see its log")
            try:
                if http.get(url, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
    raise DeployError(f"{url} was not healthy within {timeout} s")


def run_local(args: argparse.Namespace, *, stop_event: threading.Event | None = None) -> int:
    """Run the local endpoint until SIGINT/SIGTERM (or ``stop_event``)."""
    from common.files import atomic_write_bytes

    stop = stop_event or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
    with tempfile.TemporaryDirectory(prefix="fhe-local-endpoint-") as work:
        endpoint = LocalEndpoint(args, Path(work))
        try:
            ready = endpoint.start()
            print(f"endpoint {ready['endpoint_name']} ready: runtime {ready['runtime_url']},"
                  f" serve {ready['serve_url']}, S3 {ready['s3_endpoint_url'] or 'AWS'}",
                  flush=True)
            if args.ready_file:
                atomic_write_bytes(args.ready_file, json.dumps(ready, indent=2).encode())
            while not stop.wait(0.5):
                if endpoint.serve is not None and endpoint.serve.poll() is not None:
                    logger.error("serve exited with code %s", endpoint.serve.returncode)
                    return EXIT_FAILED
            return EXIT_OK
        finally:
            endpoint.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: deploy, delete, or run locally."""
    from botocore.exceptions import ClientError

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args = parse_args(argv)
        import boto3

        boto_session = boto3.Session(region_name=args.region)
        if not args.delete and (args.training_job or args.latest_training_job):
            args.model_data = resolve_model_data(args, boto_session.client("sagemaker"))
        if args.local:
            return run_local(args)
        if args.dry_run:
            print(json.dumps(plan(args, boto_session), indent=2))
            return EXIT_OK
        if args.delete:
            for item in delete(args, boto_session):
                print(f"deleted {item}")
            return EXIT_OK
        summary = deploy(args, boto_session)
    except DeployError as exc:
        logger.error("%s", exc)
        return EXIT_BAD_INPUT
    except ClientError as exc:
        logger.error("AWS refused: %s", exc)
        return EXIT_FAILED
    print(f"\ndeployed {json.dumps(summary)}")
    return EXIT_OK


if __name__ == "__main__":
    run_main(main)
