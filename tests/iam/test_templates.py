"""Every IAM file parses, renders without leftovers, and passes parliament's lint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from parliament import analyze_policy_string

from iam.render import ROLES, TEMPLATE_DIR, load_templates, placeholders, render
from tests.iam.evaluator import Decision, Request, evaluate

EXAMPLE_CONFIG = TEMPLATE_DIR / "config.example.json"

# Documented, justified parliament findings. Anything else fails.
# - Trust policies have Principal and no Resource: parliament lints identity policies only.
# - Application Auto Scaling scalable-target ARNs embed a random id created by
#   RegisterScalableTarget itself, so those actions are scoped by the condition keys
#   application-autoscaling:service-namespace=sagemaker and :scalable-dimension instead.
# Nothing else: in particular no RESOURCE_POLICY_PRIVILEGE_ESCALATION. Writing lifecycle rules
# is a bucket-wide delete power, so only the opt-in bucket-owner policy grants it, together
# with the s3:DeleteObject it amounts to (iam/render.py).
TRUST_FINDING = ("MALFORMED", "Statement contains neither Resource nor NotResource")
AUTOSCALING_STAR = (
    "RESOURCE_STAR",
    [
        "application-autoscaling:DeleteScalingPolicy",
        "application-autoscaling:DeregisterScalableTarget",
        "application-autoscaling:PutScalingPolicy",
        "application-autoscaling:RegisterScalableTarget",
    ],
)
IGNORED = {"endpoint-creator-policy.json": [AUTOSCALING_STAR]}


def _variant(base: dict[str, Any], **sections: dict[str, Any]) -> dict[str, Any]:
    """``base`` with keys of its sections replaced (``None`` removes a key)."""
    config = json.loads(json.dumps(base))
    for section, changes in sections.items():
        target = config if section == "top" else config.setdefault(section, {})
        for key, value in changes.items():
            if value is None:
                target.pop(key, None)
            else:
                target[key] = value
    return config


def _configurations() -> dict[str, dict[str, Any]]:
    """Every shape of configuration the renderer accepts: each option set and unset."""
    example = json.loads(EXAMPLE_CONFIG.read_text())
    owner = {"bucket_owner_lifecycle_policy": True}
    by_job = {"model_data": None, "training_job": "fhe-train-2026-01-01-00-00-00-000"}
    several_buckets = {
        "allowed_s3_prefix": ["s3://acme-fhe/clients/alice", "s3://tenant-b/clients/bob/"],
        "client_prefix": ["s3://acme-fhe/clients/alice", "s3://tenant-b/clients/bob"],
        "failure_path": "s3://acme-fail/async-fail",
        "delete_prefix": ["s3://tenant-b/clients/bob", "s3://acme-fail/async-fail"]}
    return {
        "example": example,
        "example+bucket-owner": _variant(example, top=owner),
        "no-delete-prefix": _variant(example, deploy_endpoint={"delete_prefix": None}),
        "no-delete-prefix+bucket-owner": _variant(
            example, top=owner, deploy_endpoint={"delete_prefix": None}),
        "training-job": _variant(example, deploy_endpoint=by_job),
        "latest-training-job": _variant(
            example, top=owner, deploy_endpoint={"model_data": None,
                                                 "latest_training_job": "fhe-train"},
            client={"latest_training_job": "fhe-train"}),
        "several-buckets": _variant(example, deploy_endpoint=several_buckets,
                                    client={"s3_prefix": "s3://tenant-b/clients/bob"}),
        "several-buckets+bucket-owner": _variant(
            example, top=owner, deploy_endpoint=several_buckets),
        "minimal": _variant(
            example, top={"trusted_principal": "arn:aws:iam::123456789012:role/ops"},
            start_training={"code_location": None, "base_job_name": None},
            deploy_endpoint={"delete_prefix": None, "allowed_s3_prefix": None},
            client={"endpoint_name": None}),
    }


CONFIGURATIONS = _configurations()


def _rendered() -> dict[str, object]:
    return render(json.loads(EXAMPLE_CONFIG.read_text()))


def test_every_iam_file_is_valid_json() -> None:
    files = sorted(TEMPLATE_DIR.glob("*.json"))
    # policy + trust per role, bucket policy, bucket-owner lifecycle policy, example config
    assert len(files) == 2 * len(ROLES) + 3
    for path in files:
        json.loads(path.read_text())  # raises on // comments or trailing commas


def test_each_role_has_a_policy_and_a_trust_policy() -> None:
    names = set(load_templates())
    for role in ROLES:
        assert {f"{role}-policy.json", f"{role}-trust.json"} <= names


def test_rendered_output_has_no_placeholder_left() -> None:
    rendered = _rendered()
    assert set(rendered) == {
        *(f"{r}-{k}.json" for r in ROLES for k in ("policy", "trust")),
        "bucket-policy-acme-fhe.json",
    }
    for name, doc in rendered.items():
        assert placeholders(doc) == set(), name
        assert "${" not in json.dumps(doc), name


def parliament_findings(doc: Any) -> list[tuple[str, Any]]:
    """(issue, detail) of each parliament finding on one policy document."""
    return [(f.issue, f.detail) for f in analyze_policy_string(json.dumps(doc, indent=2)).findings]


@pytest.mark.parametrize("configuration", sorted(CONFIGURATIONS))
def test_parliament_reports_no_unjustified_finding(configuration: str) -> None:
    """Every policy the renderer produces, in every configuration, opt-in ones included."""
    rendered = render(CONFIGURATIONS[configuration])
    assert rendered
    unjustified = {}
    for name, doc in rendered.items():
        got = parliament_findings(doc)
        expected = ([TRUST_FINDING] * len(doc["Statement"]) if name.endswith("-trust.json")
                    else IGNORED.get(name, []))
        if got != expected:
            unjustified[name] = got
    assert not unjustified


def test_only_the_opt_in_bucket_owner_policy_may_write_lifecycle_rules() -> None:
    """No rendered role holds the bucket-wide expire power; the opt-in policy says what it is."""
    for configuration, config in CONFIGURATIONS.items():
        rendered = render(config)
        writers = sorted(name for name, doc in rendered.items()
                         if "PutLifecycleConfiguration" in json.dumps(doc))
        opted_in = config.get("bucket_owner_lifecycle_policy", False)
        assert writers == (["bucket-owner-lifecycle-policy.json"] if opted_in else []), (
            configuration)
    owner = render(CONFIGURATIONS["several-buckets+bucket-owner"])[
        "bucket-owner-lifecycle-policy.json"]
    grants = {s["Sid"]: s["Resource"] for s in owner["Statement"] if s["Effect"] == "Allow"}
    assert grants == {
        "ReadAndWriteTheLifecycleRulesOfTheDeploymentsBuckets": [
            "arn:aws:s3:::acme-fhe", "arn:aws:s3:::tenant-b", "arn:aws:s3:::acme-fail"],
        "ALifecycleRuleCanExpireEveryObjectSoThisIsTheSamePower": [
            "arn:aws:s3:::acme-fhe/*", "arn:aws:s3:::tenant-b/*", "arn:aws:s3:::acme-fail/*"]}


def test_the_bucket_owner_policy_is_opt_in_by_a_json_boolean() -> None:
    from iam.render import RenderError

    with pytest.raises(RenderError, match=r"bucket_owner_lifecycle_policy must be true or false,"
                                          r" got 'false'"):
        render(_variant(CONFIGURATIONS["example"], top={"bucket_owner_lifecycle_policy": "false"}))


def test_parliament_flags_what_the_redesign_removed() -> None:
    """The check is live: the old creator grant (lifecycle write without the delete it is)."""
    doc = render(CONFIGURATIONS["example"])["endpoint-creator-policy.json"]
    old = json.loads(json.dumps(doc))
    read = next(s for s in old["Statement"]
                if s["Sid"] == "ReadTheLifecycleRulesOnlyTheBucketOwnerWrites")
    read["Action"] = ["s3:GetLifecycleConfiguration", "s3:PutLifecycleConfiguration"]
    assert ("RESOURCE_POLICY_PRIVILEGE_ESCALATION",
            "Possible resource policy privilege escalation on arn:aws:s3:::acme-fhe due to"
            " s3:DeleteObject not being allowed, but does allow s3:PutLifecycleConfiguration",
            ) in parliament_findings(old)


def test_parliament_would_flag_a_broad_policy() -> None:
    """The lint is live: an over-broad statement produces findings."""
    broad = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}
    assert analyze_policy_string(json.dumps(broad)).findings


def test_identity_policies_deny_plain_http_and_unencrypted_uploads() -> None:
    rendered = _rendered()
    for name in ("model-trainer-policy.json", "inference-client-policy.json"):
        sids = {s["Sid"] for s in rendered[name]["Statement"] if s["Effect"] == "Deny"}
        assert {"DenyPutObjectWithoutSSEHeader", "DenyPutObjectWithOtherEncryption"} <= sids, name
    for name in rendered:
        if name.endswith("-policy.json"):
            conditions = [s.get("Condition", {}) for s in rendered[name]["Statement"]
                          if s["Effect"] == "Deny"]
            assert {"Bool": {"aws:SecureTransport": "false"}} in conditions, name


def test_bucket_policy_lets_sagemaker_write_async_results_without_an_sse_header() -> None:
    """SageMaker writes async results as the endpoint role; without ``--kms-key`` nothing
    documents an SSE header on those PUTs, so the bucket must not require one: the bucket's
    default encryption (SSE-S3, on for every bucket) encrypts them. Plain HTTP stays denied."""
    rendered = _rendered()
    bucket = {**rendered["bucket-policy-acme-fhe.json"]}
    bucket["Statement"] = [{k: v for k, v in s.items() if k != "Principal"}  # all are "*"
                           for s in bucket["Statement"]]
    assert all(s["Effect"] == "Deny" for s in bucket["Statement"])
    policies = [rendered["endpoint-execution-role-policy.json"], bucket]
    for key in ("async-out/abc.out", "async-fail/abc-error.out"):
        write = Request("s3:PutObject", f"arn:aws:s3:::acme-fhe/{key}",
                        {"aws:securetransport": True})
        assert evaluate(policies, write) is Decision.ALLOW, key
        assert evaluate(policies, Request(write.action, write.resource,
                                          {"aws:securetransport": False})) \
            is Decision.EXPLICIT_DENY, key


def test_templates_only_use_known_placeholders(tmp_path: Path) -> None:
    from iam.render import _RESOLVERS

    used = set().union(*(placeholders(t) for t in load_templates().values()))
    assert used - {"Bucket"} <= set(_RESOLVERS)
