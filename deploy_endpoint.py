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
Writing them is a bucket-wide power the rendered endpoint-creator policy does not hold: when
S3 refuses (AccessDenied), nothing else changes and the script prints the exact rules and one
ready-to-run ``aws s3api put-bucket-lifecycle-configuration`` command (merged with the bucket's
other rules) for the bucket owner.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import s3_lifecycle
from common import options
from common.options import option
from common.process import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, run_main
from common.s3_location import S3LocationError, parse_s3_prefix
from local_mode.endpoint import LocalEndpointConfig, LocalEndpointError, run_until_stopped

logger = logging.getLogger("deploy_endpoint")

ENV_PREFIX = "FHE_DEPLOY_"
VARIANT = "AllTraffic"
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
BACKLOG_METRIC = "ApproximateBacklogSizePerInstance"
WAKE_METRIC = "HasBacklogWithoutCapacity"
TIMEOUT_MARGIN = 60  # SageMaker's invocation timeout exceeds the server's, so the server answers
MODEL_SOURCES = ("model_data", "model_dir", "training_job", "latest_training_job")
_MODEL_SOURCE = "model source"


class DeployError(RuntimeError):
    """The deployment cannot proceed (bad configuration, model data, local server failure)."""


# -- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DeploySettings:
    """Every option of one run: flags > FHE_DEPLOY_<OPTION> env > --config > these defaults.

    Each field is also the flag ``--field-name`` (:func:`common.options.add_arguments`).
    """

    endpoint_name: str | None = option("endpoint (also model and config) name")
    image_uri: str | None = option(
        "inference image in ECR: Dockerfile.inference's default target (concrete-ml's"
        " FHEModelServer) or its slim target (--target slim: no torch, 0.7 GB); the image"
        " decides the runtime (FHE_RUNTIME)")
    model_data: str | None = option("s3://…/model.tar.gz produced by training")
    training_job: str | None = option(
        "instead of --model-data: the model of this completed training job (DescribeTrainingJob)")
    latest_training_job: str | None = option(
        "instead of --model-data: the model of the newest completed training job named"
        " BASE_JOB_NAME or BASE_JOB_NAME-…", metavar="BASE_JOB_NAME")
    model_dir: str | None = option("--local only: a model directory instead of --model-data")
    role: str | None = option("execution role ARN of the endpoint")
    region: str | None = option("AWS region (default: the SDK's)")
    instance_type: str = option("CPU instance (FHE runs on every core of it)", "ml.c5.4xlarge")
    output_path: str | None = option("s3://bucket/prefix for async results")
    failure_path: str | None = option("s3://bucket/prefix for async errors")
    allowed_s3_prefix: tuple[str, ...] = option(
        "s3://bucket/prefix the container may read (repeat); default: the bucket of"
        " --output-path", ())
    success_topic: str | None = option("SNS topic ARN notified on success")
    error_topic: str | None = option("SNS topic ARN notified on error")
    kms_key: str | None = option("KMS key for the async output and the instance volume")
    max_concurrent_invocations: int = option(
        "per instance; 1 fits FHE (one run uses every core)", 1)
    timeout: int = option("seconds per invocation: SAGEMAKER_MODEL_SERVER_TIMEOUT; invoke with"
                          f" InvocationTimeoutSeconds = this + {TIMEOUT_MARGIN}", 600)
    workers: int = option("gunicorn workers per instance", 1)
    startup_timeout: int = option(
        "container startup health check timeout (covers the circuit compile)", 1800)
    min_capacity: int = option("fewest instances (0: scale to zero)", 0)
    max_capacity: int = option("most instances", 2)
    target_backlog: float = option("target ApproximateBacklogSizePerInstance", 2.0)
    scale_in_cooldown: int = option("seconds between scale-ins", 600)
    scale_out_cooldown: int = option("seconds between scale-outs", 120)
    delete: bool = option("remove endpoint, endpoint config, model, scaling policies and alarm",
                          False)
    delete_prefix: tuple[str, ...] = option(
        "with --delete: also delete every object under this s3:// prefix", ())
    client_prefix: tuple[str, ...] = option(
        "s3://bucket/prefix a client uses (EncryptedPredictor's s3_prefix; repeat): its keys/,"
        " queries/ and requests/ expire; default: each --allowed-s3-prefix", ())
    expire_keys_days: int = option(
        "age of evaluation keys in S3 (clients re-upload them when missing)",
        s3_lifecycle.DEFAULT_KEYS_DAYS)
    expire_requests_days: int = option(
        "age of ciphertexts and request documents a client did not delete",
        s3_lifecycle.DEFAULT_REQUESTS_DAYS)
    expire_results_days: int = option("age of async results and failure objects",
                                      s3_lifecycle.DEFAULT_RESULTS_DAYS)
    no_lifecycle: bool = option("leave the buckets' lifecycle configuration alone", False)
    dry_run: bool = option("print what would be created (or deleted) and change nothing", False)
    local: bool = option("run the whole endpoint on this machine", False)
    s3_endpoint_url: str | None = option(
        "--local: S3 endpoint (default AWS_ENDPOINT_URL_S3, else an embedded S3 for --model-dir)")
    ready_file: str | None = option("--local: write endpoint JSON here once healthy")
    port: int = option("--local: serve port (0 = free port)", 0)
    runtime_port: int = option("--local: runtime port (0 = free port)", 0)
    journal_dir: str | None = option(
        "--local: keep accepted invocations on disk here; a local endpoint restarted on the same"
        " folder completes what a crash left")

    def validate(self) -> None:
        """Check what this kind of run needs, before anything is created.

        Raises:
            DeployError: missing or contradictory options (all missing ones listed).
        """
        sources = [n for n in MODEL_SOURCES if getattr(self, n)]
        if not self.delete and not self.local and self.model_dir:
            raise DeployError("--model-dir is for --local only: upload the model and pass"
                              " --model-data, --training-job or --latest-training-job")
        if len(sources) > 1 and not self.delete:
            raise DeployError(f"give one model source, not {', '.join(map(_flag, sources))}")
        missing = self._missing(sources)
        if missing:
            raise DeployError(f"missing {', '.join(missing)}: pass them as flags, in --config, or"
                              f" as {ENV_PREFIX}<OPTION> environment variables")
        if self.min_capacity < 0 or self.max_capacity < max(1, self.min_capacity):
            raise DeployError("need 0 <= --min-capacity <= --max-capacity and --max-capacity >= 1")
        ages = ("expire_keys_days", "expire_requests_days", "expire_results_days")
        bad_ages = [f"{_flag(n)}={getattr(self, n)}" for n in ages if getattr(self, n) < 1]
        if bad_ages:
            raise DeployError(f"{', '.join(bad_ages)}: expiration ages are whole days >= 1")
        if self.local and self.dry_run:
            raise DeployError("--dry-run shows what an AWS deployment would do; drop --local")
        if not self.delete:
            _check_allowed_prefixes(self.allowed_s3_prefix)

    def _missing(self, sources: list[str]) -> list[str]:
        """The flags this kind of run needs and lacks, in the order the usage names them."""
        if self.delete:
            needed = ["endpoint_name"]
        elif self.local:
            needed = ["endpoint_name", "output_path", "failure_path", _MODEL_SOURCE]
        else:
            needed = ["endpoint_name", "image_uri", _MODEL_SOURCE, "role", "output_path",
                      "failure_path"]
        local = " / --model-dir" if self.local else ""
        return [f"--model-data (or{local} --training-job / --latest-training-job)"
                if name == _MODEL_SOURCE else _flag(name) for name in needed
                if (not sources if name == _MODEL_SOURCE else not getattr(self, name))]


def build_parser() -> argparse.ArgumentParser:
    """The command line: ``--config`` and one flag per :class:`DeploySettings` field."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="JSON file of option values (keys: option names)")
    options.add_arguments(parser, DeploySettings)
    return parser


ENV_NAMES = {item.name: ENV_PREFIX + item.name.upper() for item in fields(DeploySettings)}
"""Each option's environment variable: ``FHE_DEPLOY_<OPTION>`` (lists comma-separated)."""


def parse_args(argv: Sequence[str] | None, environ: Mapping[str, str] | None = None
               ) -> DeploySettings:
    """Parse flags over env (FHE_DEPLOY_*) over the --config file over defaults; validate.

    Raises:
        DeployError: the config file is unreadable, options are mistyped, or required options
            are missing.
    """
    args = build_parser().parse_args(argv)
    try:
        config = {} if args.config is None else options.read_config(
            Path(args.config), known=ENV_NAMES)
        settings = options.resolve(DeploySettings, flags=options.given(args),
                                   environ=os.environ if environ is None else environ,
                                   env_names=ENV_NAMES, config=config)
    except options.OptionsError as exc:
        raise DeployError(f"--config / {ENV_PREFIX}*: {exc}") from exc
    settings.validate()
    return settings


def _check_allowed_prefixes(prefixes: Sequence[str]) -> None:
    """Every --allowed-s3-prefix must parse, before anything is created (all listed)."""
    from inference.settings import SettingsError, parse_allowed_prefix

    problems = []
    for text in prefixes:
        try:
            parse_allowed_prefix(text)
        except SettingsError as exc:
            problems.append(str(exc))
    if problems:
        raise DeployError("bad --allowed-s3-prefix: " + "; ".join(problems))


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def allowed_prefixes(settings: DeploySettings) -> list[str]:
    """The container's S3 allow-list: the flags, or the bucket of --output-path."""
    if settings.allowed_s3_prefix:
        return list(settings.allowed_s3_prefix)
    return [f"s3://{parse_s3_prefix(settings.output_path, field='--output-path').bucket}"]


def client_prefixes(settings: DeploySettings) -> list[str]:
    """The clients' S3 prefixes: the flags, or the container's allow-list."""
    return list(settings.client_prefix or allowed_prefixes(settings))


def lifecycle_rules(settings: DeploySettings) -> list[s3_lifecycle.ExpiryRule]:
    """The expiration rules of this deployment.

    Raises:
        DeployError: a rule would cover a whole bucket, the model data, or another rule.
    """
    ages = s3_lifecycle.Ages(keys_days=settings.expire_keys_days,
                             requests_days=settings.expire_requests_days,
                             results_days=settings.expire_results_days)
    try:
        return s3_lifecycle.planned_rules(
            client_prefixes=client_prefixes(settings), output_path=settings.output_path,
            failure_path=settings.failure_path, ages=ages,
            protected=[settings.model_data] if settings.model_data else [])
    except s3_lifecycle.LifecycleError as exc:
        raise DeployError(str(exc)) from exc


def container_env(settings: DeploySettings) -> dict[str, str]:
    """Environment of the serving container (see inference/settings.py)."""
    from inference.settings import ENV_ALLOWED_PREFIXES, ENV_TIMEOUT, ENV_WORKERS

    return {ENV_TIMEOUT: str(settings.timeout), ENV_WORKERS: str(settings.workers),
            ENV_ALLOWED_PREFIXES: ",".join(allowed_prefixes(settings))}


def resolve_model_data(settings: DeploySettings, sagemaker: Any) -> str:
    """The model.tar.gz of ``--training-job`` / ``--latest-training-job``.

    Raises:
        DeployError: no such completed job (the message says what to check).
    """
    from common.training_jobs import JobLookupError, find_model

    try:
        found = find_model(sagemaker, job_name=settings.training_job,
                           base_job_name=settings.latest_training_job)
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


def deploy(settings: DeploySettings, boto_session: Any) -> dict[str, Any]:
    """Create lifecycle rules, model, endpoint config, async endpoint and autoscaling.

    The lifecycle rules go first: they are idempotent, and a refusal surfaces before the
    endpoint takes minutes to create. Returns a summary.
    """
    import sagemaker
    from sagemaker.async_inference import AsyncInferenceConfig
    from sagemaker.model import Model

    names = Names(settings.endpoint_name)
    lifecycle = lifecycle_changes(settings, boto_session)
    pending = s3_lifecycle.execute(boto_session.client("s3"), lifecycle)
    _report_pending(pending)
    session = sagemaker.Session(boto_session=boto_session)
    notification = {k: v for k, v in (("SuccessTopic", settings.success_topic),
                                      ("ErrorTopic", settings.error_topic)) if v}
    async_config = AsyncInferenceConfig(
        output_path=settings.output_path,
        failure_path=settings.failure_path,
        max_concurrent_invocations_per_instance=settings.max_concurrent_invocations,
        kms_key_id=settings.kms_key,
        notification_config=notification or None,
    )
    model = Model(image_uri=settings.image_uri, model_data=settings.model_data, role=settings.role,
                  env=container_env(settings), name=names.model, sagemaker_session=session)
    model.deploy(
        initial_instance_count=1,
        instance_type=settings.instance_type,
        endpoint_name=names.endpoint,
        async_inference_config=async_config,
        kms_key=settings.kms_key,
        container_startup_health_check_timeout=settings.startup_timeout,
        model_data_download_timeout=settings.startup_timeout,
        wait=True,
    )
    configure_autoscaling(settings, boto_session)
    return {"endpoint_name": names.endpoint, "model_name": names.model,
            "invocation_timeout_seconds": settings.timeout + TIMEOUT_MARGIN,
            "output_path": settings.output_path, "failure_path": settings.failure_path,
            "lifecycle_rules": {c.bucket: c.owned for c in lifecycle if c not in pending},
            "lifecycle_rules_for_the_bucket_owner": {c.bucket: s3_lifecycle.owner_command(c)
                                                     for c in pending}}


def _report_pending(pending: Sequence[s3_lifecycle.BucketChange]) -> None:
    """Print (stdout) what the bucket owner must apply, when S3 refused us the lifecycle rules."""
    if pending:
        logger.warning("not allowed to write the S3 lifecycle rules of bucket(s) %s: the bucket"
                       " owner must apply them (printed below)",
                       ", ".join(c.bucket for c in pending))
        print(s3_lifecycle.owner_instructions(pending), flush=True)


def plan(settings: DeploySettings, boto_session: Any) -> dict[str, Any]:
    """What deploy (or --delete) would do, for --dry-run; reads lifecycle rules, writes nothing."""
    names = Names(settings.endpoint_name)
    if settings.delete:
        lifecycle = [] if settings.no_lifecycle else removal_changes(
            boto_session.client("s3"), names.endpoint, lifecycle_buckets(settings, boto_session))
        return {"dry_run": True,
                "delete": {"endpoint": names.endpoint, "model": names.model,
                           "autoscaling": {"policies": [names.target_policy, names.wake_policy],
                                           "scalable_target": names.resource_id,
                                           "alarm": names.wake_alarm},
                           "objects_under": list(settings.delete_prefix or [])},
                "lifecycle": [c.as_dict() for c in lifecycle]}
    lifecycle = lifecycle_changes(settings, boto_session)
    return {"dry_run": True,
            "create": {"model": names.model, "image_uri": settings.image_uri,
                       "model_data": settings.model_data, "environment": container_env(settings),
                       "endpoint": names.endpoint, "instance_type": settings.instance_type,
                       "output_path": settings.output_path, "failure_path": settings.failure_path,
                       "autoscaling": {"min_capacity": settings.min_capacity,
                                       "max_capacity": settings.max_capacity,
                                       "policies": [names.target_policy, names.wake_policy],
                                       "alarm": names.wake_alarm}},
            "lifecycle": [c.as_dict() for c in lifecycle]}


def lifecycle_changes(settings: DeploySettings, boto_session: Any
                      ) -> list[s3_lifecycle.BucketChange]:
    """This deployment's rules merged into each bucket's configuration (nothing written yet).

    Raises:
        DeployError: the rules cannot be planned (bad locations, missing buckets).
    """
    if settings.no_lifecycle:
        return []
    try:
        return s3_lifecycle.plan_apply(boto_session.client("s3"), settings.endpoint_name,
                                       lifecycle_rules(settings))
    except s3_lifecycle.LifecycleError as exc:
        raise DeployError(str(exc)) from exc


def lifecycle_buckets(settings: DeploySettings, boto_session: Any) -> list[str]:
    """Buckets that may hold this endpoint's lifecycle rules, for --delete.

    The locations given on the command line, plus those the deployed endpoint was created
    with (its async output/failure paths and its container's allow-list), when it still exists.
    """
    uris = [*(settings.client_prefix or []), *(settings.allowed_s3_prefix or []),
            *(u for u in (settings.output_path, settings.failure_path) if u)]
    uris += _deployed_locations(boto_session.client("sagemaker"), Names(settings.endpoint_name))
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


def configure_autoscaling(settings: DeploySettings, boto_session: Any) -> None:
    """Scale on the async backlog, down to ``--min-capacity`` (0) and back up from zero."""
    names = Names(settings.endpoint_name)
    scaling = boto_session.client("application-autoscaling")
    scaling.register_scalable_target(
        ServiceNamespace="sagemaker", ResourceId=names.resource_id,
        ScalableDimension=SCALABLE_DIMENSION, MinCapacity=settings.min_capacity,
        MaxCapacity=settings.max_capacity,
    )
    dimensions = [{"Name": "EndpointName", "Value": names.endpoint}]
    scaling.put_scaling_policy(
        PolicyName=names.target_policy, ServiceNamespace="sagemaker",
        ResourceId=names.resource_id, ScalableDimension=SCALABLE_DIMENSION,
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": settings.target_backlog,
            "CustomizedMetricSpecification": {"MetricName": BACKLOG_METRIC,
                                              "Namespace": "AWS/SageMaker",
                                              "Dimensions": dimensions, "Statistic": "Average"},
            "ScaleInCooldown": settings.scale_in_cooldown,
            "ScaleOutCooldown": settings.scale_out_cooldown,
        },
    )
    wake = scaling.put_scaling_policy(
        PolicyName=names.wake_policy, ServiceNamespace="sagemaker",
        ResourceId=names.resource_id, ScalableDimension=SCALABLE_DIMENSION,
        PolicyType="StepScaling",
        StepScalingPolicyConfiguration={
            "AdjustmentType": "ChangeInCapacity", "MetricAggregationType": "Average",
            "Cooldown": settings.scale_out_cooldown,
            "StepAdjustments": [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}],
        },
    )
    boto_session.client("cloudwatch").put_metric_alarm(
        AlarmName=names.wake_alarm, MetricName=WAKE_METRIC, Namespace="AWS/SageMaker",
        Dimensions=dimensions, Statistic="Average", Period=60, EvaluationPeriods=2,
        DatapointsToAlarm=2, Threshold=1.0, ComparisonOperator="GreaterThanOrEqualToThreshold",
        TreatMissingData="missing", AlarmActions=[wake["PolicyARN"]],
    )


def delete(settings: DeploySettings, boto_session: Any) -> list[str]:
    """Remove everything :func:`deploy` created (missing pieces are skipped); list what went."""
    from botocore.exceptions import ClientError

    names = Names(settings.endpoint_name)
    sm = boto_session.client("sagemaker")
    scaling = boto_session.client("application-autoscaling")
    removed: list[str] = []
    buckets = [] if settings.no_lifecycle else lifecycle_buckets(settings, boto_session)

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
    for prefix in settings.delete_prefix or []:
        removed.append(f"{delete_prefix(boto_session.client('s3'), prefix)} objects under {prefix}")
    s3 = boto_session.client("s3")
    changes = removal_changes(s3, names.endpoint, buckets)
    pending = s3_lifecycle.execute(s3, changes)
    removed += [f"{len(c.removed)} lifecycle rule(s) of bucket {c.bucket}"
                for c in changes if c not in pending]
    _report_pending(pending)
    return removed


def removal_changes(s3: Any, endpoint_name: str, buckets: list[str]
                    ) -> list[s3_lifecycle.BucketChange]:
    """Each bucket's configuration without this endpoint's rules (others' rules stay).

    Buckets that do not exist are skipped; S3 refusing the read for another reason than a
    denial is logged and skipped. A configuration the credentials may not read becomes an
    unreadable change (the bucket owner's command removes this endpoint's rules, if any).
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


def local_config(settings: DeploySettings) -> LocalEndpointConfig:
    """What ``--local`` serves: the options of a SageMaker deployment, on this machine."""
    return LocalEndpointConfig(
        endpoint_name=settings.endpoint_name, output_path=settings.output_path,
        failure_path=settings.failure_path, allowed_prefixes=tuple(allowed_prefixes(settings)),
        model_dir=Path(settings.model_dir) if settings.model_dir else None,
        model_data=settings.model_data, s3_endpoint_url=settings.s3_endpoint_url,
        timeout=settings.timeout, invocation_timeout=settings.timeout + TIMEOUT_MARGIN,
        workers=settings.workers, max_concurrency=settings.max_concurrent_invocations,
        startup_timeout=settings.startup_timeout, port=settings.port,
        runtime_port=settings.runtime_port,
        journal_dir=Path(settings.journal_dir) if settings.journal_dir else None)


def _print_ready(ready: dict[str, str]) -> None:
    print(f"endpoint {ready['endpoint_name']} ready: runtime {ready['runtime_url']},"
          f" serve {ready['serve_url']}, S3 {ready['s3_endpoint_url'] or 'AWS'}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: deploy, delete, or run locally (exit codes: :mod:`common.process`)."""
    from botocore.exceptions import ClientError

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(parse_args(argv))
    except DeployError as exc:
        logger.error("%s", exc)
        return EXIT_BAD_INPUT
    except LocalEndpointError as exc:
        logger.error("%s", exc)
        return EXIT_FAILED
    except ClientError as exc:
        logger.error("AWS refused: %s", exc)
        return EXIT_FAILED


def run(settings: DeploySettings) -> int:
    """Deploy, delete, plan (--dry-run) or run locally, as ``settings`` say; print the outcome."""
    import boto3

    boto_session = boto3.Session(region_name=settings.region)
    if not settings.delete and (settings.training_job or settings.latest_training_job):
        model_data = resolve_model_data(settings, boto_session.client("sagemaker"))
        settings = replace(settings, model_data=model_data)
    if settings.local:
        ready_file = Path(settings.ready_file) if settings.ready_file else None
        return run_until_stopped(local_config(settings), on_ready=_print_ready,
                                 ready_file=ready_file)
    if settings.dry_run:
        print(s3_lifecycle.to_json(plan(settings, boto_session), indent=2))
    elif settings.delete:
        for item in delete(settings, boto_session):
            print(f"deleted {item}")
    else:
        print(f"\ndeployed {json.dumps(deploy(settings, boto_session))}")
    return EXIT_OK


if __name__ == "__main__":
    run_main(main)
