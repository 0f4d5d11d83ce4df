"""Every IAM file parses, renders without leftovers, and passes parliament's lint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from parliament import analyze_policy_string

from iam.render import ROLES, TEMPLATE_DIR, load_templates, placeholders, render
from tests.iam.evaluator import Decision, Request, evaluate

EXAMPLE_CONFIG = TEMPLATE_DIR / "config.example.json"

# Documented, justified parliament findings (file pattern, issue, detail). Anything else fails.
# - Trust policies have Principal and no Resource: parliament lints identity policies only.
# - Application Auto Scaling scalable-target ARNs embed a random id created by
#   RegisterScalableTarget itself, so those actions are scoped by the condition keys
#   application-autoscaling:service-namespace=sagemaker and :scalable-dimension instead.
# - deploy_endpoint.py writes S3 lifecycle rules that expire the kit's objects: a lifecycle
#   rule deletes objects, which is the point (only on the buckets of the deployment).
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
LIFECYCLE_DELETES = (
    "RESOURCE_POLICY_PRIVILEGE_ESCALATION",
    "Possible resource policy privilege escalation on arn:aws:s3:::acme-fhe due to"
    " s3:DeleteObject not being allowed, but does allow s3:PutLifecycleConfiguration",
)
IGNORED = {"endpoint-creator-policy.json": [LIFECYCLE_DELETES, AUTOSCALING_STAR]}


def _rendered() -> dict[str, object]:
    return render(json.loads(EXAMPLE_CONFIG.read_text()))


def test_every_iam_file_is_valid_json() -> None:
    files = sorted(TEMPLATE_DIR.glob("*.json"))
    assert len(files) == 2 * len(ROLES) + 2  # policy + trust per role, bucket policy, example
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


@pytest.mark.parametrize("name", sorted(_rendered()))
def test_parliament_reports_no_unjustified_finding(name: str) -> None:
    doc = _rendered()[name]
    findings = analyze_policy_string(json.dumps(doc, indent=2)).findings
    got = [(f.issue, f.detail) for f in findings]
    if name.endswith("-trust.json"):
        assert got == [TRUST_FINDING] * len(doc["Statement"])
    else:
        assert got == IGNORED.get(name, [])


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
