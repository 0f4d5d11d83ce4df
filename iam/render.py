"""Render the IAM templates in this folder for one deployment: ``python -m iam.render``.

The templates hold ``${Name}`` placeholders (account, region, role names, buckets and
prefixes). Their values come from the same configuration the scripts read: one JSON file with
``account_id``, ``region`` and a section per script whose keys are that script's own
``--config`` keys (long option names, dashes or underscores)::

    {
      "account_id": "123456789012",
      "region": "eu-west-1",
      "start_training": {"train": "s3://b/data/", "output_path": "s3://b/models",
                         "role": "arn:aws:iam::123456789012:role/fhe-training",
                         "image_uri": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/fhe-train:1",
                         "base_job_name": "fhe-train"},
      "deploy_endpoint": {"model_data": "s3://b/models/job/output/model.tar.gz",
                          "endpoint_name": "fhe-endpoint", "output_path": "s3://b/async-out",
                          "failure_path": "s3://b/async-fail", "role": "fhe-endpoint",
                          "image_uri": "...", "allowed_s3_prefix": ["s3://b/clients/alice"],
                          "delete_prefix": ["s3://b/async-out"]},
      "client": {"s3_prefix": "s3://b/clients/alice"}
    }

The endpoint creator only *reads* the buckets' lifecycle configuration: a lifecycle rule can
expire every object of its bucket (IAM cannot limit a rule's prefix), so writing one is the
bucket owner's power. ``"bucket_owner_lifecycle_policy": true`` (or
``--bucket-owner-lifecycle-policy``) also renders ``bucket-owner-lifecycle-policy.json``: the
write, and the bucket-wide ``s3:DeleteObject`` it amounts to, on the deployment's buckets, for
a principal that may delete every object in them (the bucket owner, or the endpoint creator
when the buckets hold nothing but the kit's objects). Without it nothing grants the write and
``deploy_endpoint.py`` prints the rules and the command for the owner.

``training_job`` / ``latest_training_job`` in ``deploy_endpoint`` or ``client`` (the model found
by training job instead of ``model_data``) grant the lookup of those jobs and the read of their
``<start_training.output_path>/<job>/output/model.tar.gz``; without them nothing of it is granted.

Each script section can also be read straight from that script's own config file
(``--start-training-config``, ``--deploy-endpoint-config``, ``--client-config``). S3 URIs are
split into bucket and prefix by :mod:`common.s3_location` (the grammar and segment-bounded
prefix the server and the local runtime match with); a prefix always ends with ``/`` so
``s3://b/models`` never grants ``s3://b/models-other``. Rendering fails with one error naming
every missing or malformed key, and the output never contains a placeholder.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from common.files import atomic_write_bytes
from common.process import EXIT_BAD_INPUT, EXIT_OK, run_main
from common.s3_location import S3LocationError, S3Prefix, S3Uri, parse_s3_prefix, parse_s3_uri

logger = logging.getLogger(__name__)

TEMPLATE_DIR = Path(__file__).resolve().parent
BUCKET_POLICY = "bucket-policy.json"
BUCKET_OWNER_LIFECYCLE_POLICY = "bucket-owner-lifecycle-policy.json"
BUCKET_OWNER_LIFECYCLE_KEY = "bucket_owner_lifecycle_policy"
"""The top-level configuration key (a JSON boolean) that opts in to that policy."""
ROLES = (
    "model-trainer",
    "training-execution-role",
    "endpoint-creator",
    "endpoint-execution-role",
    "inference-client",
)
"""The five roles; each has ``<role>-policy.json`` and ``<role>-trust.json``."""

SECTIONS = ("start_training", "deploy_endpoint", "client")
DEFAULT_BASE_JOB_NAME = "concrete-fhe"
"""start_training.py's default --base-job-name (a test keeps the two equal)."""
_PLACEHOLDER_RE = re.compile(r"\$\{([A-Za-z][A-Za-z0-9]*)\}")
# Matched with fullmatch and ASCII classes: no trailing newline, no Unicode digits.
_ACCOUNT_RE = re.compile(r"[0-9]{12}", re.ASCII)
_REGION_RE = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]", re.ASCII)
_ECR_RE = re.compile(
    r"[0-9]{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(?:\.cn)?"
    r"/(?P<repo>(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*)"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[0-9a-f]{64})?", re.ASCII)
_ROLE_ARN_RE = re.compile(
    r"arn:aws[a-z-]*:iam::[0-9]{12}:role/(?:[\w+=,.@-]+/)*(?P<name>[\w+=,.@-]{1,64})", re.ASCII)
_ROLE_NAME_RE = re.compile(r"[\w+=,.@-]{1,64}", re.ASCII)


class RenderError(ValueError):
    """The configuration cannot fill the templates; the message names every problem."""


class _Missing(LookupError):
    """Internal: a placeholder's configuration keys are absent or malformed."""

    def __init__(self, *problems: str) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def split_s3_uri(uri: Any, *, field: str, exact: bool = False) -> S3Prefix | S3Uri:
    """Split ``s3://bucket/prefix``; with ``exact`` the key is one object, not a prefix.

    The ``path`` of the result (``bucket/prefix/`` or ``bucket/key``) is what an object ARN
    holds before its trailing ``*``.

    The grammar and the ``/``-terminated prefix are :mod:`common.s3_location`'s, the
    same the server's allow-list and the local runtime match with, so the rendered
    ``bucket/prefix/*`` grants exactly what they allow.
    """
    try:
        return parse_s3_uri(uri, field=field) if exact else parse_s3_prefix(uri, field=field)
    except S3LocationError as exc:
        raise _Missing(str(exc)) from exc


def _normalise(section: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k).replace("-", "_"): v for k, v in section.items()}


class _Config:
    """Lookups into the combined configuration, with error messages that name the key."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.top = _normalise(config)
        self.sections = {s: _normalise(self.top.get(s) or {}) for s in SECTIONS}

    def get(self, section: str | None, key: str, *, hint: str) -> Any:
        source = self.top if section is None else self.sections[section]
        value = source.get(key)
        if value in (None, "", []):
            where = key if section is None else f"{section}.{key}"
            raise _Missing(f"missing {where} ({hint})")
        return value

    def optional(self, section: str, key: str) -> Any:
        return self.sections[section].get(key)


def _locations(values: Any, *, field: str, exact: bool = False) -> list[S3Prefix | S3Uri]:
    items = values if isinstance(values, list) else [values]
    problems: list[str] = []
    result: list[S3Prefix | S3Uri] = []
    for index, item in enumerate(items):
        name = field if len(items) == 1 else f"{field}[{index}]"
        try:
            result.append(split_s3_uri(item, field=name, exact=exact))
        except _Missing as exc:
            problems.extend(exc.problems)
    if problems:
        raise _Missing(*problems)
    return result


def _role_name(value: Any, *, field: str) -> str:
    text = str(value)
    match = _ROLE_ARN_RE.fullmatch(text)
    if match:
        return match["name"]
    if _ROLE_NAME_RE.fullmatch(text):
        return text
    raise _Missing(f"{field} must be an IAM role ARN or name, got {value!r}")


def _repository(value: Any, *, field: str) -> str:
    match = _ECR_RE.fullmatch(str(value))
    if match is None:
        raise _Missing(
            f"{field} must be an ECR image URI "
            f"(<account>.dkr.ecr.<region>.amazonaws.com/<repository>:<tag>), got {value!r}"
        )
    return match["repo"]


def _account(c: _Config) -> str:
    value = str(c.get(None, "account_id", hint="the 12-digit AWS account id"))
    if not _ACCOUNT_RE.fullmatch(value):
        raise _Missing(f"account_id must be 12 digits, got {value!r}")
    return value


def _region(c: _Config) -> str:
    value = c.top.get("region") or c.optional("start_training", "region")
    value = str(value or c.get(None, "region", hint="the AWS region, e.g. eu-west-1"))
    if not _REGION_RE.fullmatch(value):
        raise _Missing(f"region must look like eu-west-1, got {value!r}")
    return value


def _job_prefix(c: _Config) -> str:
    """An explicit job_name wins over base_job_name, as in start_training.py."""
    st = "start_training"
    return str(
        c.optional(st, "job_name") or c.optional(st, "base_job_name") or DEFAULT_BASE_JOB_NAME
    )


def _endpoint(c: _Config) -> str:
    name = str(c.get("deploy_endpoint", "endpoint_name", hint="the SageMaker endpoint name"))
    client_name = c.optional("client", "endpoint_name")
    if client_name and client_name != name:
        raise _Missing(
            f"client.endpoint_name {client_name!r} differs from deploy_endpoint.endpoint_name "
            f"{name!r}: the client may only invoke the deployed endpoint"
        )
    return name


_JOB_NAME_RE = re.compile(r"[A-Za-z0-9](-*[A-Za-z0-9]){0,62}", re.ASCII)
_LOOKUP_SECTIONS = ("deploy_endpoint", "client")


def _job_names(c: _Config, key: str) -> list[str]:
    """Training job names configured under ``key`` in the deploy_endpoint and client sections."""
    names: list[str] = []
    problems: list[str] = []
    for section in _LOOKUP_SECTIONS:
        value = c.optional(section, key)
        if not value:
            continue
        if not _JOB_NAME_RE.fullmatch(str(value)):
            problems.append(f"{section}.{key} must be a SageMaker training job name (letters,"
                            f" digits and dashes, at most 63), got {value!r}")
            continue
        names.append(str(value))
    if problems:
        raise _Missing(*problems)
    return list(dict.fromkeys(names))


def _lookup_jobs(c: _Config) -> list[str]:
    """Training job names (``*`` patterns) the scripts may look a model up by, case kept.

    ``training_job`` names one job; ``latest_training_job`` a base name, whose jobs are the base
    itself or ``<base>-…`` (common.training_jobs). None configured = no lookup grant at all.
    """
    exact = _job_names(c, "training_job")
    bases = _job_names(c, "latest_training_job")
    return list(dict.fromkeys([*exact, *(p for b in bases for p in (b, f"{b}-*"))]))


def _job_model_objects(c: _Config) -> list[str]:
    """``bucket/prefix/<job>/output/model.tar.gz`` of the looked-up jobs (SageMaker's layout)."""
    jobs = _lookup_jobs(c)
    if not jobs:
        return []
    uri = c.get("start_training", "output_path",
                hint="where the training jobs named by training_job / latest_training_job wrote"
                     " model.tar.gz")
    prefixes = [loc.path for loc in _locations(uri, field="start_training.output_path")]
    return [f"{prefix}{job}/output/model.tar.gz" for prefix in prefixes for job in jobs]


def _model_data(c: _Config) -> list[str]:
    """The configured model.tar.gz objects; optional when the model is found by training job."""
    uris = [uri for uri in (c.optional("deploy_endpoint", "model_data"),
                            c.optional("client", "model_data")) if uri]
    if not uris and not _lookup_jobs(c):
        raise _Missing("missing deploy_endpoint.model_data (s3://…/model.tar.gz to deploy), or"
                       " deploy_endpoint.training_job / latest_training_job to find it")
    objects = [loc.path for loc in _locations(uris, field="model_data", exact=True)]
    return list(dict.fromkeys(objects))


def _client_objects(c: _Config) -> list[str]:
    uris: list[Any] = []
    for section, key in (("client", "s3_prefix"), ("deploy_endpoint", "allowed_s3_prefix")):
        value = c.optional(section, key)
        uris.extend(value if isinstance(value, list) else [value] if value else [])
    if not uris:
        raise _Missing(
            "missing client.s3_prefix or deploy_endpoint.allowed_s3_prefix "
            "(the prefixes clients upload keys/queries/requests under)"
        )
    return list(dict.fromkeys(loc.path for loc in _locations(uris, field="s3_prefix")))


def _client_buckets(c: _Config) -> list[str]:
    objects = [
        *_client_objects(c),
        *_prefix_objects("deploy_endpoint", "output_path", "")(c),
        *_prefix_objects("deploy_endpoint", "failure_path", "")(c),
    ]
    return list(dict.fromkeys(o.split("/", 1)[0] for o in objects))


def _split_objects(objects: list[str], part: int) -> list[str]:
    """The buckets (``part=0``) or the ``/``-terminated prefixes (``part=1``) of ``bucket/prefix/``.

    A ListBucket statement pairs every bucket with every prefix: exact when the locations share
    one bucket (the usual layout), a listing-only superset when they span several.
    """
    return list(dict.fromkeys(o.split("/", 1)[part] for o in objects))


def _delete_prefix_objects(c: _Config) -> list[str]:
    """deploy_endpoint.py's ``--delete-prefix`` locations; none configured = no S3 grant at all."""
    value = c.optional("deploy_endpoint", "delete_prefix")
    if not value:
        return []
    return [loc.path for loc in _locations(value, field="deploy_endpoint.delete_prefix")]


def _lifecycle_buckets(c: _Config) -> list[str]:
    """Buckets deploy_endpoint.py writes lifecycle rules to: its clients' prefixes (as it
    defaults them: --client-prefix, else --allowed-s3-prefix) and the async output/failure paths."""
    dp = "deploy_endpoint"
    clients = c.optional(dp, "client_prefix") or c.optional(dp, "allowed_s3_prefix") or []
    uris = [*(clients if isinstance(clients, list) else [clients]),
            c.get(dp, "output_path", hint="s3:// URI for async inference results"),
            c.get(dp, "failure_path", hint="s3:// URI for async inference errors")]
    return list(dict.fromkeys(loc.bucket for loc in _locations(uris, field=f"{dp} locations")))


def _data(c: _Config) -> list[S3Prefix]:
    locations = _locations(c.get("start_training", "train", hint="s3:// URI of the training data"),
                           field="start_training.train")
    return [loc for loc in locations if isinstance(loc, S3Prefix)]  # all of them (not exact)


def _prefix_objects(section: str, key: str, hint: str) -> Callable[[_Config], list[str]]:
    def _resolve(c: _Config) -> list[str]:
        uri = c.get(section, key, hint=hint)
        return [loc.path for loc in _locations(uri, field=f"{section}.{key}")]

    return _resolve


def _code_objects(c: _Config) -> list[str]:
    if c.optional("start_training", "code_location"):
        return _prefix_objects("start_training", "code_location", "")(c)
    return _prefix_objects("start_training", "output_path", "s3:// URI for model artefacts")(c)


_Resolver = Callable[[_Config], "str | list[str]"]
_RESOLVERS: dict[str, _Resolver] = {
    "AccountId": _account,
    "Region": _region,
    "TrustedPrincipalArn": lambda c: str(
        c.top.get("trusted_principal") or f"arn:aws:iam::{_account(c)}:root"
    ),
    "TrainingRoleName": lambda c: _role_name(
        c.get("start_training", "role", hint="the training execution role ARN"),
        field="start_training.role",
    ),
    "EndpointRoleName": lambda c: _role_name(
        c.get("deploy_endpoint", "role", hint="the endpoint execution role ARN"),
        field="deploy_endpoint.role",
    ),
    "TrainingJobPrefix": _job_prefix,
    "TrainingJobPrefixLower": lambda c: _job_prefix(c).lower(),
    "TrainingImageRepository": lambda c: _repository(
        c.get("start_training", "image_uri", hint="the training image URI in ECR"),
        field="start_training.image_uri",
    ),
    "InferenceImageRepository": lambda c: _repository(
        c.get("deploy_endpoint", "image_uri", hint="the inference image URI in ECR"),
        field="deploy_endpoint.image_uri",
    ),
    "DataObjects": lambda c: [loc.path for loc in _data(c)],
    "DataBuckets": lambda c: list(dict.fromkeys(loc.bucket for loc in _data(c))),
    "DataPrefixes": lambda c: list(dict.fromkeys(loc.prefix for loc in _data(c))),
    "ModelObjects": _prefix_objects(
        "start_training", "output_path", "s3:// URI the training job writes model.tar.gz under"
    ),
    "CodeObjects": _code_objects,
    "EndpointName": _endpoint,
    "EndpointNameLower": lambda c: _endpoint(c).lower(),
    "ModelDataObjects": _model_data,
    "TrainingJobModelObjects": _job_model_objects,
    # SageMaker lower-cases resource names in its ARNs; ListTrainingJobs has no resource-level
    # permission, so it is granted on "*" and only when a base name is looked up.
    "LookupTrainingJobsLower": lambda c: [job.lower() for job in _lookup_jobs(c)],
    "ListTrainingJobsResource": lambda c: ["*"] if _job_names(c, "latest_training_job") else [],
    "OutputObjects": _prefix_objects(
        "deploy_endpoint", "output_path", "s3:// URI for async inference results"
    ),
    "FailureObjects": _prefix_objects(
        "deploy_endpoint", "failure_path", "s3:// URI for async inference errors"
    ),
    "ClientObjects": _client_objects,
    "ClientBuckets": _client_buckets,
    "ClientPrefixBuckets": lambda c: _split_objects(_client_objects(c), 0),
    "ClientPrefixKeys": lambda c: _split_objects(_client_objects(c), 1),
    "DeletePrefixObjects": _delete_prefix_objects,
    "DeletePrefixBuckets": lambda c: _split_objects(_delete_prefix_objects(c), 0),
    "DeletePrefixKeys": lambda c: _split_objects(_delete_prefix_objects(c), 1),
    "LifecycleBuckets": _lifecycle_buckets,
}
"""Every placeholder the role templates may use, and how it is computed from the config."""


def placeholders(template: Any) -> set[str]:
    """Every ``${Name}`` placeholder in a parsed template (not IAM ``${aws:...}`` variables)."""
    if isinstance(template, dict):
        return set().union(
            *(placeholders(v) for v in template.values()), *map(placeholders, template)
        )
    if isinstance(template, list):
        return set().union(*(placeholders(v) for v in template))
    if isinstance(template, str):
        return set(_PLACEHOLDER_RE.findall(template))
    return set()


def _expand(text: str, values: Mapping[str, str | list[str]]) -> list[str]:
    names = _PLACEHOLDER_RE.findall(text)
    choices = [values[n] if isinstance(values[n], list) else [values[n]] for n in names]
    results: list[str] = []
    for combo in itertools.product(*choices):
        chosen = dict(zip(names, combo, strict=True))
        results.append(_PLACEHOLDER_RE.sub(lambda m, c=chosen: c[m.group(1)], text))
    return list(dict.fromkeys(results))


def fill(template: Any, values: Mapping[str, str | list[str]]) -> Any:
    """Substitute placeholders; a list-valued one multiplies the string it is in.

    Inside a JSON array the copies are spliced in; a scalar becomes an array when it expands
    to more than one value (IAM accepts both for Resource and condition values).
    """
    if isinstance(template, dict):
        return {fill(k, values): fill(v, values) for k, v in template.items()}
    if isinstance(template, list):
        out: list[Any] = []
        for item in template:
            out.extend(_expand(item, values) if isinstance(item, str) else [fill(item, values)])
        return out
    if isinstance(template, str):
        expanded = _expand(template, values)
        return expanded[0] if len(expanded) == 1 else expanded
    return template


def drop_empty_grants(policy: Any) -> Any:
    """Remove the statements whose ``Resource`` expanded to nothing (an optional setting unset).

    ``deploy_endpoint.delete_prefix`` is optional: without it the endpoint creator gets no S3
    grant at all, rather than an invalid statement with an empty resource list.
    """
    if not isinstance(policy, dict) or not isinstance(policy.get("Statement"), list):
        return policy
    kept = [s for s in policy["Statement"] if s.get("Resource", "*") != []]
    return {**policy, "Statement": kept}


def resolve(config: Mapping[str, Any], names: set[str]) -> dict[str, str | list[str]]:
    """Compute the placeholder values ``names`` from the configuration.

    Raises:
        RenderError: naming every missing or malformed configuration key at once.
    """
    cfg = _Config(config)
    unknown = sorted(names - set(_RESOLVERS) - {"Bucket"})
    problems = [f"template placeholder ${{{n}}} has no configuration source" for n in unknown]
    values: dict[str, str | list[str]] = {}
    for name in sorted(names & set(_RESOLVERS)):
        try:
            values[name] = _RESOLVERS[name](cfg)
        except _Missing as exc:
            problems.extend(exc.problems)
    if problems:
        unique = list(dict.fromkeys(problems))
        raise RenderError("cannot render the IAM policies:\n  - " + "\n  - ".join(unique))
    return values


def load_templates(template_dir: Path = TEMPLATE_DIR) -> dict[str, Any]:
    """Parse every ``*.json`` template in ``template_dir``, by file name."""
    templates: dict[str, Any] = {}
    for path in sorted(template_dir.glob("*.json")):
        try:
            templates[path.name] = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise RenderError(f"{path} is not valid JSON: {exc}") from exc
    return templates


def _buckets(config: Mapping[str, Any], values: Mapping[str, str | list[str]]) -> list[str]:
    del config
    buckets: list[str] = []
    for name in (
        "DataObjects",
        "ModelObjects",
        "CodeObjects",
        "ModelDataObjects",
        "TrainingJobModelObjects",
        "OutputObjects",
        "FailureObjects",
        "ClientObjects",
    ):
        value = values.get(name, [])
        for objects in value if isinstance(value, list) else [value]:
            buckets.append(objects.split("/", 1)[0])
    return list(dict.fromkeys(buckets))


def render(
    config: Mapping[str, Any],
    *,
    roles: Sequence[str] = ROLES,
    template_dir: Path = TEMPLATE_DIR,
) -> dict[str, Any]:
    """Render the policies and trust policies of ``roles``, plus one bucket policy per bucket.

    Returns:
        Output file name -> rendered policy document (no placeholder left).

    Raises:
        RenderError: an unknown role, or configuration keys missing or malformed (all named).
    """
    unknown_roles = sorted(set(roles) - set(ROLES))
    if unknown_roles:
        raise RenderError(f"unknown roles {unknown_roles}; choose from {list(ROLES)}")
    templates = load_templates(template_dir)
    wanted = {f"{r}-{kind}.json" for r in roles for kind in ("policy", "trust")}
    missing = sorted(wanted - set(templates))
    if missing:
        raise RenderError(f"templates missing from {template_dir}: {missing}")
    selected = {name: templates[name] for name in sorted(wanted)}
    if _wants_bucket_owner_policy(config):
        selected[BUCKET_OWNER_LIFECYCLE_POLICY] = templates[BUCKET_OWNER_LIFECYCLE_POLICY]
    values = resolve(config, set().union(*(placeholders(t) for t in selected.values())))
    rendered = {name: drop_empty_grants(fill(t, values)) for name, t in selected.items()}
    for bucket in _buckets(config, values):
        rendered[f"bucket-policy-{bucket}.json"] = fill(
            templates[BUCKET_POLICY], {"Bucket": bucket}
        )
    leftovers = sorted({p for doc in rendered.values() for p in placeholders(doc)})
    if leftovers:
        raise RenderError(f"placeholders left after rendering: {leftovers}")
    return rendered


def _wants_bucket_owner_policy(config: Mapping[str, Any]) -> bool:
    """The opt-in; anything but a JSON boolean is an error (``"false"`` must not mean yes)."""
    value = _normalise(config).get(BUCKET_OWNER_LIFECYCLE_KEY, False)
    if not isinstance(value, bool):
        raise RenderError(f"{BUCKET_OWNER_LIFECYCLE_KEY} must be true or false, got {value!r}")
    return value


def _read_json(path: Path, *, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RenderError(f"cannot read {what} {path}: {exc}") from exc
    if not isinstance(doc, dict):
        raise RenderError(f"{what} {path} must hold a JSON object")
    return doc


def build_config(args: argparse.Namespace) -> dict[str, Any]:
    """Merge ``--config``, the scripts' own config files and the flags (flags win)."""
    config = _read_json(args.config, what="--config") if args.config else {}
    for section in SECTIONS:
        path = getattr(args, f"{section}_config")
        if path is not None:
            config[section] = {**(config.get(section) or {}), **_read_json(path, what=section)}
    for key in ("account_id", "region", "trusted_principal"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    if args.bucket_owner_lifecycle_policy:
        config[BUCKET_OWNER_LIFECYCLE_KEY] = True
    return config


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line of ``python -m iam.render``."""
    parser = argparse.ArgumentParser(
        prog="python -m iam.render",
        description="Fill the kit's IAM templates for one account, region, buckets and prefixes.",
    )
    parser.add_argument("--config", type=Path, help="combined JSON (see the module docstring)")
    for section in SECTIONS:
        flag = section.replace("_", "-")
        parser.add_argument(
            f"--{flag}-config",
            dest=f"{section}_config",
            type=Path,
            help=f"the {section} section, read from that script's own --config file",
        )
    parser.add_argument("--account-id", help="12-digit AWS account id (overrides the config)")
    parser.add_argument("--region", help="AWS region (overrides the config)")
    parser.add_argument("--trusted-principal", help="ARN allowed to assume the operator roles")
    parser.add_argument(
        "--role",
        action="append",
        choices=ROLES,
        dest="roles",
        help="render only this role (repeatable; default: all five)",
    )
    parser.add_argument(
        "--bucket-owner-lifecycle-policy",
        action="store_true",
        help="also render bucket-owner-lifecycle-policy.json (writes the lifecycle rules: a"
        " bucket-wide delete power, for a principal that may delete every object there)",
    )
    parser.add_argument("--out", type=Path, required=True, help="directory for the JSON files")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Render to ``--out``; exit 2 with every configuration problem listed on failure."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    try:
        rendered = render(build_config(args), roles=args.roles or ROLES)
    except RenderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for name, doc in rendered.items():
        atomic_write_bytes(args.out / name, (json.dumps(doc, indent=2) + "\n").encode())
        logger.info("wrote %s", args.out / name)
    return EXIT_OK


if __name__ == "__main__":
    run_main(main)
