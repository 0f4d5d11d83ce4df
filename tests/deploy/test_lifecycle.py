"""deploy_endpoint.py's S3 lifecycle rules on moto: applied, merged, idempotent, shown, removed."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

import deploy_endpoint
import s3_lifecycle
from local_mode.s3_server import LOCAL_REGION
from s3_lifecycle import Ages, ExpiryRule, LifecycleError, planned_rules
from tests.deploy.test_deploy_endpoint import NAME, deploy_argv
from tests.iam.recorder import record_calls

BUCKET = "results"
OURS = f"concrete-fhe-kit:{NAME}:"
FOREIGN = {"ID": "archive-logs", "Filter": {"Prefix": "logs/"}, "Status": "Enabled",
           "Transitions": [{"Days": 30, "StorageClass": "GLACIER"}]}
CLIENT = f"s3://{BUCKET}/clients/alice"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """moto with the deployment's bucket, which already has a rule of someone else."""
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setattr(time, "sleep", lambda _s: None)
    with mock_aws():
        s3 = boto3.client("s3", region_name=LOCAL_REGION)
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_lifecycle_configuration(Bucket=BUCKET,
                                              LifecycleConfiguration={"Rules": [FOREIGN]})
        yield s3


def _rules(s3: Any, bucket: str = BUCKET) -> dict[str, dict[str, Any]]:
    try:
        rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    except s3.exceptions.ClientError as exc:
        assert exc.response["Error"]["Code"] == "NoSuchLifecycleConfiguration"
        return {}
    return {rule["ID"]: rule for rule in rules}


def _expiry(rules: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Prefix -> days of our rules."""
    return {r["Filter"]["Prefix"]: r["Expiration"]["Days"] for i, r in rules.items()
            if i.startswith(OURS)}


def _lifecycle_writes(calls: list[Any]) -> list[str]:
    return [c.operation for c in calls
            if c.operation in ("PutBucketLifecycleConfiguration", "DeleteBucketLifecycle")]


def test_deploy_adds_rules_next_to_foreign_ones_and_is_idempotent(aws: Any) -> None:
    argv = deploy_argv(client_prefix=CLIENT)
    assert deploy_endpoint.main(argv) == 0
    rules = _rules(aws)
    assert rules["archive-logs"] == FOREIGN
    assert _expiry(rules) == {"clients/alice/keys/": 30, "clients/alice/queries/": 2,
                              "clients/alice/requests/": 2, "async-out/": 7, "async-fail/": 7}
    for rule_id, rule in rules.items():
        if rule_id.startswith(OURS):
            assert rule["Status"] == "Enabled"
            assert rule["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
            assert rule["NoncurrentVersionExpiration"] == {"NoncurrentDays": 1}
    with record_calls() as calls:
        assert deploy_endpoint.main(argv) == 0
    assert "GetBucketLifecycleConfiguration" in {c.operation for c in calls}
    assert _lifecycle_writes(calls) == []  # nothing to change: nothing written
    assert _rules(aws) == rules


def test_new_ages_replace_our_rules_only(aws: Any) -> None:
    assert deploy_endpoint.main(deploy_argv(client_prefix=CLIENT)) == 0
    argv = deploy_argv(client_prefix=CLIENT, expire_keys_days="90", expire_requests_days="1",
                       expire_results_days="3")
    with record_calls() as calls:
        assert deploy_endpoint.main(argv) == 0
    assert _lifecycle_writes(calls) == ["PutBucketLifecycleConfiguration"]
    rules = _rules(aws)
    assert rules["archive-logs"] == FOREIGN
    assert _expiry(rules) == {"clients/alice/keys/": 90, "clients/alice/queries/": 1,
                              "clients/alice/requests/": 1, "async-out/": 3, "async-fail/": 3}


def test_delete_removes_only_this_endpoints_rules(aws: Any) -> None:
    other = deploy_argv(client_prefix=f"s3://{BUCKET}/clients/bob", output_path=f"s3://{BUCKET}/b-out",
                        failure_path=f"s3://{BUCKET}/b-fail")
    other[other.index("--endpoint-name") + 1] = "other-endpoint"
    assert deploy_endpoint.main(other) == 0
    assert deploy_endpoint.main(deploy_argv(client_prefix=CLIENT)) == 0
    assert len(_rules(aws)) == 1 + 5 + 5
    # --delete needs only the name: the buckets come from the endpoint it deployed.
    assert deploy_endpoint.main(["--endpoint-name", NAME, "--delete"]) == 0
    remaining = _rules(aws)
    assert not any(i.startswith(OURS) for i in remaining)
    assert remaining["archive-logs"] == FOREIGN
    assert sum(i.startswith("concrete-fhe-kit:other-endpoint:") for i in remaining) == 5
    # With no rule left at all, the configuration itself goes.
    aws.put_bucket_lifecycle_configuration(Bucket=BUCKET, LifecycleConfiguration={"Rules": [
        r for i, r in remaining.items() if i.startswith("concrete-fhe-kit:")]})
    assert deploy_endpoint.main(["--endpoint-name", "other-endpoint", "--delete",
                                 "--output-path", f"s3://{BUCKET}/b-out"]) == 0
    assert _rules(aws) == {}


def test_dry_run_shows_the_merge_and_changes_nothing(
        aws: Any, capsys: pytest.CaptureFixture[str]) -> None:
    with record_calls() as calls:
        assert deploy_endpoint.main([*deploy_argv(client_prefix=CLIENT), "--dry-run"]) == 0
    assert {c.operation for c in calls} == {"GetBucketLifecycleConfiguration"}
    shown = json.loads(capsys.readouterr().out)
    assert shown["dry_run"] is True and shown["create"]["endpoint"] == NAME
    [change] = shown["lifecycle"]
    assert change["bucket"] == BUCKET and change["changed"] is True
    assert change["kept"] == ["archive-logs"] and len(change["added"]) == 5
    assert change["rules"][0] == FOREIGN and change["owned"] == change["added"]
    assert _rules(aws) == {"archive-logs": FOREIGN}
    assert boto3.client("sagemaker", region_name=LOCAL_REGION).list_models()["Models"] == []

    assert deploy_endpoint.main(deploy_argv(client_prefix=CLIENT)) == 0
    ours = sorted(i for i in _rules(aws) if i.startswith(OURS))
    capsys.readouterr()
    with record_calls() as calls:
        assert deploy_endpoint.main(["--endpoint-name", NAME, "--delete", "--dry-run"]) == 0
    assert _lifecycle_writes(calls) == [] and len(_rules(aws)) == 1 + len(ours)
    shown = json.loads(capsys.readouterr().out)
    assert shown["delete"]["endpoint"] == NAME
    [change] = shown["lifecycle"]
    assert sorted(change["removed"]) == ours and change["rules"] == [FOREIGN]
    assert len(boto3.client("sagemaker", region_name=LOCAL_REGION).list_models()["Models"]) == 1


def test_no_lifecycle_leaves_the_bucket_alone(aws: Any) -> None:
    with record_calls() as calls:
        assert deploy_endpoint.main([*deploy_argv(), "--no-lifecycle"]) == 0
        assert deploy_endpoint.main(["--endpoint-name", NAME, "--delete", "--no-lifecycle"]) == 0
    assert not {c.operation for c in calls} & {"GetBucketLifecycleConfiguration",
                                               "PutBucketLifecycleConfiguration"}
    assert _rules(aws) == {"archive-logs": FOREIGN}


@pytest.mark.parametrize(("extra", "message"), [
    ({"output_path": "s3://results"},
     r"--output-path s3://results is a whole bucket: its rule would expire every object in"
     r" results; use a prefix such as s3://results/async-output"),
    ({"model_data": "s3://results/async-out/model.tar.gz"},
     r"s3://results/async-out/model.tar.gz lies under s3://results/async-out/ \(output, 7 days\):"
     r" the endpoint needs it"),
    ({"client_prefix": "s3://results/async-fail"},
     r"s3://results/async-fail/keys/ \(keys, 30 days\) lies under s3://results/async-fail/"
     r" \(failure, 7 days\), whose shorter age S3 would apply to it"),
    ({"client_prefix": "s3://no-such-bucket/fhe"},
     r"bucket\(s\) no-such-bucket do not exist: create them"),
    ({"expire_keys_days": "0", "expire_results_days": "-1"},
     r"--expire-keys-days=0, --expire-results-days=-1: expiration ages are whole days >= 1"),
])
def test_bad_settings_fail_before_anything_is_created(
        aws: Any, extra: dict[str, str], message: str, caplog: pytest.LogCaptureFixture) -> None:
    assert deploy_endpoint.main(deploy_argv(**extra)) == 2
    assert re.search(message, caplog.text), caplog.text
    assert boto3.client("sagemaker", region_name=LOCAL_REGION).list_models()["Models"] == []
    assert _rules(aws) == {"archive-logs": FOREIGN}


# -- the planning module alone -------------------------------------------------------------


def test_buckets_with_legacy_prefix_rules_get_rules_of_the_same_form(aws: Any) -> None:
    legacy = {"ID": "old-style", "Prefix": "tmp/", "Status": "Enabled", "Expiration": {"Days": 1}}
    aws.put_bucket_lifecycle_configuration(Bucket=BUCKET,
                                           LifecycleConfiguration={"Rules": [legacy]})
    rules = planned_rules(client_prefixes=[CLIENT], output_path=f"s3://{BUCKET}/o",
                          failure_path=f"s3://{BUCKET}/f", ages=Ages())
    [change] = s3_lifecycle.plan_apply(aws, NAME, rules)
    s3_lifecycle.execute(aws, [change])
    stored = _rules(aws)
    assert stored["old-style"] == legacy
    assert all("Filter" not in r and r["Prefix"] for i, r in stored.items() if i.startswith(OURS))


def test_rule_ids_are_owned_by_the_endpoint_and_distinct_per_prefix() -> None:
    rules = planned_rules(client_prefixes=["s3://bkt/a", "s3://bkt/a/", "s3://bkt/c"],
                          output_path="s3://bkt/out", failure_path="s3://other/fail", ages=Ages())
    ids = [r.rule_id(NAME) for r in rules]
    assert len(rules) == 3 + 3 + 2 and len(set(ids)) == len(ids)
    assert all(i.startswith(OURS) and len(i) < 255 for i in ids)
    assert ExpiryRule("bkt", "out/", 7, "output") in rules
    assert ExpiryRule("other", "fail/", 7, "failure") in rules


def test_every_planning_problem_is_named_at_once() -> None:
    with pytest.raises(LifecycleError, match=r"--output-path s3://bkt is a whole bucket.*"
                                             r"--failure-path s3://bkt/ is a whole bucket"):
        planned_rules(client_prefixes=["s3://bkt/c"], output_path="s3://bkt",
                      failure_path="s3://bkt/", ages=Ages())
    with pytest.raises(LifecycleError, match="must look like s3://bucket/prefix"):
        planned_rules(client_prefixes=["bkt/c"], output_path="s3://bkt/o",
                      failure_path="s3://bkt/f", ages=Ages())
