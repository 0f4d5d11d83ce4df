"""S3 lifecycle rules that expire what the kit leaves in its buckets, owned by one endpoint.

The client deletes its per-request objects after a successful read, but not after failures,
timeouts or crashes, and never its evaluation keys; SageMaker's async output and failure
objects stay too. ``deploy_endpoint.py`` gives each of these locations an expiration rule:

========================================  ===========================  ======================
objects                                   where                        default age
========================================  ===========================  ======================
evaluation keys                           ``<client prefix>/keys/``    30 days (re-uploaded
                                                                       on EvaluationKeysNotFound)
ciphertexts, request documents            ``<client prefix>/queries/``,  2 days
                                          ``<client prefix>/requests/``
async results and failure objects         ``--output-path``,           7 days
                                          ``--failure-path``
========================================  ===========================  ======================

Every rule also aborts incomplete multipart uploads after a day and expires noncurrent
versions after a day (versioned buckets). A rule is ours when its ID starts with
``concrete-fhe-kit:<endpoint name>:``; rules of anything else (other tools, other endpoints)
are kept as they are. Applying is idempotent (nothing is written when our rules are already
there) and removing deletes only our rules.

Who writes the rules: a lifecycle rule can expire *every* object of its bucket and IAM has no
condition key that limits a rule's prefix, so ``s3:PutLifecycleConfiguration`` is a bucket-wide
delete power. The endpoint creator's rendered policy only *reads* the configuration; the write
is the bucket owner's (``iam/render.py``'s opt-in bucket-owner lifecycle policy). When S3 refuses
the read or the write, :func:`execute` leaves the bucket alone and returns the change, and
:func:`owner_instructions` gives the exact rules and one ready-to-run AWS CLI command that merges
them into the bucket's configuration, for whoever owns the bucket.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from common.s3_access import S3Failure, classify
from common.s3_location import S3LocationError, S3Prefix, parse_s3_prefix, parse_s3_uri

RULE_ID_PREFIX = "concrete-fhe-kit"
DEFAULT_KEYS_DAYS = 30
DEFAULT_REQUESTS_DAYS = 2
DEFAULT_RESULTS_DAYS = 7
ABORT_MULTIPART_DAYS = 1
NONCURRENT_DAYS = 1
# The folders EncryptedPredictor writes under its s3_prefix (client/predictor.py).
CLIENT_FOLDERS = ("keys", "queries", "requests")
_NO_CONFIGURATION = "NoSuchLifecycleConfiguration"
_NO_BUCKET = "NoSuchBucket"


class LifecycleError(ValueError):
    """The rules cannot be planned as asked; the message names every problem and the fix."""


@dataclass(frozen=True)
class Ages:
    """Days after which each kind of object expires.

    Attributes:
        keys_days: Evaluation keys (``keys/``).
        requests_days: Ciphertexts and request documents (``queries/``, ``requests/``).
        results_days: Async results and failure objects (output and failure paths).
    """

    keys_days: int = DEFAULT_KEYS_DAYS
    requests_days: int = DEFAULT_REQUESTS_DAYS
    results_days: int = DEFAULT_RESULTS_DAYS

    def check(self) -> None:
        """Raises LifecycleError unless every age is a whole number of days >= 1."""
        bad = [f"{name}={value!r}" for name, value in vars(self).items()
               if isinstance(value, bool) or not isinstance(value, int) or value < 1]
        if bad:
            raise LifecycleError(f"expiration ages must be whole days >= 1: {', '.join(bad)}")


@dataclass(frozen=True)
class ExpiryRule:
    """One location to expire: objects under ``s3://bucket/prefix`` after ``days``.

    Attributes:
        bucket: The bucket.
        prefix: A ``/``-terminated key prefix (``""`` never: that would be the whole bucket).
        days: Age in days.
        kind: What lives there (``keys``, ``queries``, ``requests``, ``output``, ``failure``).
    """

    bucket: str
    prefix: str
    days: int
    kind: str

    def rule_id(self, endpoint_name: str) -> str:
        """``concrete-fhe-kit:<endpoint>:<kind>:<digest of the prefix>`` (under 255 chars)."""
        digest = hashlib.sha256(self.prefix.encode()).hexdigest()[:12]
        return f"{owner_prefix(endpoint_name)}{self.kind}:{digest}"

    def to_s3(self, endpoint_name: str, *, legacy_prefix: bool = False) -> dict[str, Any]:
        """The rule as ``put_bucket_lifecycle_configuration`` takes it.

        Args:
            endpoint_name: The owning endpoint (part of the rule ID).
            legacy_prefix: Use the top-level ``Prefix`` form, for buckets whose existing rules
                use it (S3 refuses a configuration that mixes it with ``Filter``).
        """
        location = {"Prefix": self.prefix} if legacy_prefix else {"Filter": {"Prefix": self.prefix}}
        return {
            "ID": self.rule_id(endpoint_name),
            **location,
            "Status": "Enabled",
            "Expiration": {"Days": self.days},
            "NoncurrentVersionExpiration": {"NoncurrentDays": NONCURRENT_DAYS},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": ABORT_MULTIPART_DAYS},
        }

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix} ({self.kind}, {self.days} days)"


def owner_prefix(endpoint_name: str) -> str:
    """The ID prefix of the rules owned by ``endpoint_name``."""
    return f"{RULE_ID_PREFIX}:{endpoint_name}:"


def split_location(uri: str, *, field_name: str) -> tuple[str, str]:
    """``s3://bucket[/prefix]`` -> (bucket, ``/``-terminated prefix or ``""``).

    Raises:
        LifecycleError: not an S3 URI.
    """
    try:
        location = parse_s3_prefix(uri.strip(), field=field_name)
    except S3LocationError as exc:
        raise LifecycleError(f"{field_name} must look like s3://bucket/prefix, got {uri!r}"
                             ) from exc
    return location.bucket, location.prefix


def planned_rules(*, client_prefixes: Sequence[str], output_path: str, failure_path: str,
                  ages: Ages, protected: Sequence[str] = ()) -> list[ExpiryRule]:
    """The rules for one endpoint's locations.

    Args:
        client_prefixes: The ``s3_prefix`` of each client (keys/, queries/, requests/ below).
        output_path: The endpoint's async output path.
        failure_path: Its async failure path.
        ages: Days per kind of object.
        protected: ``s3://`` URIs of objects no rule may expire (the model data).

    Raises:
        LifecycleError: every problem at once (a rule on a whole bucket, a rule that would
            expire a protected object, a rule inside another one with a shorter age).
    """
    ages.check()
    rules: list[ExpiryRule] = []
    problems: list[str] = []
    for uri in dict.fromkeys(client_prefixes):
        bucket, prefix = split_location(uri, field_name="--client-prefix")
        days = {"keys": ages.keys_days}
        rules += [ExpiryRule(bucket, f"{prefix}{folder}/", days.get(folder, ages.requests_days),
                             folder) for folder in CLIENT_FOLDERS]
    for kind, flag, uri in (("output", "--output-path", output_path),
                            ("failure", "--failure-path", failure_path)):
        bucket, prefix = split_location(uri, field_name=flag)
        if not prefix:
            problems.append(f"{flag} {uri} is a whole bucket: its rule would expire every object"
                            f" in {bucket}; use a prefix such as s3://{bucket}/async-{kind}")
            continue
        rules.append(ExpiryRule(bucket, prefix, ages.results_days, kind))
    rules = list(dict.fromkeys(rules))
    problems += _protected_problems(rules, protected) + _overlap_problems(rules)
    if problems:
        raise LifecycleError("cannot set up S3 lifecycle rules: " + "; ".join(problems)
                             + " (or pass --no-lifecycle to manage expiry yourself)")
    return rules


def _protected_problems(rules: Sequence[ExpiryRule], protected: Sequence[str]) -> list[str]:
    problems = []
    for uri in protected:
        try:
            location = parse_s3_uri(uri, field="--model-data")
        except S3LocationError as exc:
            problems.append(str(exc))
            continue
        for rule in rules:
            if S3Prefix(rule.bucket, rule.prefix).contains(location):
                problems.append(f"{uri} lies under {rule}: the endpoint needs it whenever it"
                                " starts an instance; keep model data outside the kit's prefixes")
    return problems


def _overlap_problems(rules: Sequence[ExpiryRule]) -> list[str]:
    """Rules inside a rule with a shorter age: S3 applies the shorter age to both."""
    return [f"{inner} lies under {outer}, whose shorter age S3 would apply to it; give"
            f" {inner.kind} its own prefix"
            for outer in rules for inner in rules
            if outer != inner and inner.bucket == outer.bucket
            and inner.prefix.startswith(outer.prefix) and outer.days < inner.days]


@dataclass
class BucketChange:
    """What applying or removing our rules does to one bucket's lifecycle configuration.

    Attributes:
        bucket: The bucket.
        rules: The whole configuration afterwards (foreign rules first, as they were).
        added / replaced / removed: IDs of our rules written new, rewritten, deleted.
        kept: IDs of the rules that are not ours, left untouched.
        owned: IDs of our rules in the configuration afterwards.
        extra: Top-level settings of the configuration that are kept as they were.
        readable: False when S3 refused to show the configuration: ``rules`` then holds only
            our rules, which must be merged into the bucket's own (never written as they are).
    """

    bucket: str
    rules: list[dict[str, Any]]
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    owned: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    readable: bool = True
    endpoint_name: str = ""

    @property
    def changed(self) -> bool:
        """True when the configuration must be written."""
        return bool(self.added or self.replaced or self.removed)

    def as_dict(self) -> dict[str, Any]:
        """JSON form (what ``--dry-run`` prints), with the bucket owner's command."""
        return {"bucket": self.bucket, "changed": self.changed, "added": self.added,
                "replaced": self.replaced, "removed": self.removed, "kept": self.kept,
                "owned": self.owned, "rules": self.rules, "readable": self.readable,
                "owner_command": owner_command(self) if self.changed else None}


class MissingBucketError(LifecycleError):
    """A bucket named by the deployment does not exist."""


def read_rules(s3: Any, bucket: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The bucket's lifecycle rules (empty when it has none) and its top-level settings.

    Raises:
        MissingBucketError: the bucket does not exist.
        botocore.exceptions.ClientError: S3 refused otherwise (e.g. AccessDenied).
    """
    from botocore.exceptions import ClientError

    try:
        response = s3.get_bucket_lifecycle_configuration(Bucket=bucket)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code == _NO_CONFIGURATION:
            return [], {}
        if code == _NO_BUCKET:
            raise MissingBucketError(f"bucket {bucket} does not exist") from exc
        raise
    extra = {k: response[k] for k in ("TransitionDefaultMinimumObjectSize",) if k in response}
    return list(response.get("Rules", [])), extra


def plan_apply(s3: Any, endpoint_name: str, rules: Iterable[ExpiryRule]) -> list[BucketChange]:
    """Read each bucket's configuration; return it merged with our rules (nothing is written).

    Raises:
        LifecycleError: naming every bucket that does not exist.
    """
    by_bucket: dict[str, list[ExpiryRule]] = {}
    for rule in rules:
        by_bucket.setdefault(rule.bucket, []).append(rule)
    current_rules: dict[str, tuple[list[dict[str, Any]], dict[str, Any]] | None] = {}
    missing = []
    for bucket in by_bucket:
        try:
            current_rules[bucket] = _read_unless_denied(s3, bucket)
        except MissingBucketError:
            missing.append(bucket)
    if missing:
        raise LifecycleError(f"bucket(s) {', '.join(missing)} do not exist: create them (clients"
                             " upload there and the endpoint writes its results there) or fix"
                             " --client-prefix / --output-path / --failure-path")
    changes = []
    for bucket, wanted in by_bucket.items():
        current = current_rules[bucket]
        if current is None:
            desired = {r.rule_id(endpoint_name): r.to_s3(endpoint_name) for r in wanted}
            changes.append(BucketChange(bucket, list(desired.values()), added=list(desired),
                                        owned=list(desired), readable=False,
                                        endpoint_name=endpoint_name))
            continue
        mine, foreign = _split(current[0], endpoint_name)
        legacy = any("Prefix" in r and "Filter" not in r for r in foreign)
        desired = {r.rule_id(endpoint_name): r.to_s3(endpoint_name, legacy_prefix=legacy)
                   for r in wanted}
        change = BucketChange(bucket, [*foreign, *desired.values()], kept=_ids(foreign),
                              owned=list(desired), extra=current[1],
                              endpoint_name=endpoint_name)
        for rule_id, rule in desired.items():
            if rule_id not in mine:
                change.added.append(rule_id)
            elif _canonical(mine[rule_id]) != _canonical(rule):
                change.replaced.append(rule_id)
        change.removed = [rule_id for rule_id in mine if rule_id not in desired]
        changes.append(change)
    return changes


def plan_remove(s3: Any, endpoint_name: str, buckets: Iterable[str]) -> list[BucketChange]:
    """Read each bucket's configuration; return it without our rules (nothing is written)."""
    changes = []
    for bucket in dict.fromkeys(buckets):
        current = _read_unless_denied(s3, bucket)
        if current is None:
            # Unknown which of our rules are there: the owner's command removes whatever is.
            changes.append(BucketChange(bucket, [], removed=[owner_prefix(endpoint_name) + "*"],
                                        readable=False, endpoint_name=endpoint_name))
            continue
        mine, foreign = _split(current[0], endpoint_name)
        changes.append(BucketChange(bucket, foreign, removed=list(mine), kept=_ids(foreign),
                                    extra=current[1], endpoint_name=endpoint_name))
    return changes


def _read_unless_denied(s3: Any, bucket: str
                        ) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
    """:func:`read_rules`, or None when the credentials may not read the configuration."""
    from botocore.exceptions import ClientError

    try:
        return read_rules(s3, bucket)
    except ClientError as exc:
        if classify(exc) is not S3Failure.DENIED:
            raise
        return None


def execute(s3: Any, changes: Iterable[BucketChange]) -> list[BucketChange]:
    """Write the configurations that changed (an empty one deletes the configuration).

    Returns:
        The changes left for the bucket owner (:func:`owner_instructions`): those whose
        configuration could not be read, and those S3 refused to write (AccessDenied).

    Raises:
        botocore.exceptions.ClientError: S3 refused for another reason.
    """
    from botocore.exceptions import ClientError

    pending = []
    for change in changes:
        if not change.changed:
            continue
        if not change.readable:
            pending.append(change)
            continue
        try:
            if change.rules:
                s3.put_bucket_lifecycle_configuration(
                    Bucket=change.bucket, LifecycleConfiguration={"Rules": change.rules},
                    **change.extra)
            else:
                s3.delete_bucket_lifecycle(Bucket=change.bucket)
        except ClientError as exc:
            if classify(exc) is not S3Failure.DENIED:
                raise
            pending.append(change)
    return pending


_CLI = "aws s3api"
_EXTRA_FLAGS = {"TransitionDefaultMinimumObjectSize": "--transition-default-minimum-object-size"}


def owner_command(change: BucketChange) -> str:
    """One ready-to-run AWS CLI command that makes the change, for the bucket's owner.

    A readable configuration gives the whole merged configuration as read (the other rules
    of the bucket kept as they were). An unreadable one gives a command that reads the
    configuration when it runs and merges at that moment (a JMESPath ``--query``): the other
    rules are kept, ours are added (or, for a removal, dropped).
    """
    bucket = shlex.quote(change.bucket)
    if change.readable:
        if not change.rules:
            return f"{_CLI} delete-bucket-lifecycle --bucket {bucket}"
        extra = "".join(f" {_EXTRA_FLAGS[k]} {shlex.quote(str(v))}"
                        for k, v in change.extra.items() if k in _EXTRA_FLAGS)
        document = to_json({"Rules": change.rules}, separators=(",", ":"))
        return (f"{_CLI} put-bucket-lifecycle-configuration --bucket {bucket}"
                f" --lifecycle-configuration {shlex.quote(document)}{extra}")
    return (f"{_CLI} put-bucket-lifecycle-configuration --bucket {bucket}"
            f' --lifecycle-configuration "$({_CLI} get-bucket-lifecycle-configuration'
            f' --bucket {bucket} --output json --query {shlex.quote(merge_query(change))})"')


def to_json(value: Any, **options: Any) -> str:
    """JSON as the AWS CLI reads it: dates (a rule's ``Expiration.Date``) in ISO 8601."""
    def _default(item: Any) -> str:
        if isinstance(item, datetime.date):
            return item.isoformat()
        raise TypeError(f"{type(item).__name__} is not JSON")

    return json.dumps(value, default=_default, **options)


def merge_query(change: BucketChange) -> str:
    """JMESPath over GetBucketLifecycleConfiguration's answer: its rules minus ours, plus ours.

    Rules without an ID are kept (``to_string(null)`` is ``"null"``).
    """
    owner = json.dumps(owner_prefix(change.endpoint_name))
    others = f"Rules[?!starts_with(to_string(ID), `{_literal(owner)}`)]"
    if not change.rules:
        return f"{{Rules: {others}}}"
    ours = json.dumps(change.rules, separators=(",", ":"))
    return f"{{Rules: [{others}, `{_literal(ours)}`][]}}"


def _literal(text: str) -> str:
    """A JSON text as a JMESPath literal (backticks inside it escaped)."""
    return text.replace("`", "\\`")


def owner_instructions(changes: Sequence[BucketChange]) -> str:
    """What the bucket owner must run for the changes :func:`execute` could not make."""
    lines = []
    for change in changes:
        verb = "add" if change.owned else "remove"
        lines.append(f"S3 lifecycle rules of bucket {change.bucket}: the bucket owner must"
                     f" {verb} the rules of endpoint {change.endpoint_name!r} (IDs"
                     f" {owner_prefix(change.endpoint_name)}...), keeping the bucket's other"
                     " rules.")
        if change.owned:
            ours = [r for r in change.rules if str(r.get("ID", "")) in change.owned]
            lines.append("Rules:\n" + json.dumps(ours, indent=2))
        if change.readable:
            lines.append("The bucket's whole configuration afterwards (its other rules as read"
                         " now; re-run with --dry-run if they change before this runs):")
            lines.append(owner_command(change))
            continue
        lines.append("The configuration could not be read; this command merges with the"
                     " bucket's rules when it runs:")
        lines.append(owner_command(change))
        if change.rules:
            alone = replace(change, readable=True)
            lines.append("If the bucket has no lifecycle configuration yet (the command above"
                         f" then fails and writes nothing), run instead:\n  {owner_command(alone)}")
        else:
            lines.append("If no other rule remains (S3 then refuses the empty configuration and"
                         f" nothing is written), run instead:\n  {_CLI} delete-bucket-lifecycle"
                         f" --bucket {shlex.quote(change.bucket)}")
    return "\n".join(lines)


def _split(rules: Sequence[Mapping[str, Any]], endpoint_name: str
           ) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """(our rules by ID, everything else in its order)."""
    prefix = owner_prefix(endpoint_name)
    mine = {str(r["ID"]): dict(r) for r in rules if str(r.get("ID", "")).startswith(prefix)}
    return mine, [dict(r) for r in rules if str(r.get("ID", "")) not in mine]


def _ids(rules: Sequence[Mapping[str, Any]]) -> list[str]:
    return [str(r.get("ID", "")) for r in rules]


def _canonical(rule: Mapping[str, Any]) -> str:
    return json.dumps(rule, sort_keys=True, default=str)
