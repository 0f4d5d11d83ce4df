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


# -- endpoints whose names share a prefix ---------------------------------------------------


def _named(name: str, **extra: str) -> list[str]:
    argv = deploy_argv(**extra)
    argv[argv.index("--endpoint-name") + 1] = name
    return argv


def _owned_by(rules: dict[str, dict[str, Any]], name: str) -> dict[str, dict[str, Any]]:
    return {i: r for i, r in rules.items() if i.startswith(f"concrete-fhe-kit:{name}:")}


def test_endpoints_whose_names_share_a_prefix_never_touch_each_others_rules(aws: Any) -> None:
    """``e`` and ``e-2`` on one bucket: deploy, redeploy and --delete of either leave the other's
    rules as they were (an ownership test on ``concrete-fhe-kit:e`` would take ``e-2``'s)."""
    e2 = _named("e-2", client_prefix=f"s3://{BUCKET}/clients/bob",
                output_path=f"s3://{BUCKET}/e2-out", failure_path=f"s3://{BUCKET}/e2-fail")
    e = _named("e", client_prefix=CLIENT)
    assert deploy_endpoint.main(e2) == 0
    e2_rules = _owned_by(_rules(aws), "e-2")
    assert len(e2_rules) == 5
    assert deploy_endpoint.main(e) == 0  # deploy of e
    assert _owned_by(_rules(aws), "e-2") == e2_rules
    e_rules = _owned_by(_rules(aws), "e")
    assert len(e_rules) == 5 and not set(e_rules) & set(e2_rules)
    assert deploy_endpoint.main([*e, "--expire-keys-days", "9"]) == 0  # redeploy of e
    assert _owned_by(_rules(aws), "e-2") == e2_rules
    assert deploy_endpoint.main([*e2, "--expire-keys-days", "11"]) == 0  # redeploy of e-2
    e_rules = _owned_by(_rules(aws), "e")
    assert {r["Expiration"]["Days"] for r in e_rules.values()} == {9, 2, 7}
    e2_rules = _owned_by(_rules(aws), "e-2")
    assert {r["Expiration"]["Days"] for r in e2_rules.values()} == {11, 2, 7}
    assert deploy_endpoint.main(["--endpoint-name", "e", "--delete"]) == 0  # --delete of e
    assert _rules(aws) == {"archive-logs": FOREIGN, **e2_rules}
    assert deploy_endpoint.main([*e, "--expire-keys-days", "9"]) == 0
    assert deploy_endpoint.main(["--endpoint-name", "e-2", "--delete"]) == 0  # --delete of e-2
    assert _rules(aws) == {"archive-logs": FOREIGN, **e_rules}


def test_nested_rules_of_equal_age_are_allowed() -> None:
    """A client prefix inside the output path with the same age: S3's shorter age is the same."""
    ages = Ages(keys_days=7, requests_days=7, results_days=7)
    rules = planned_rules(client_prefixes=["s3://bkt/out/clients"], output_path="s3://bkt/out",
                          failure_path="s3://bkt/fail", ages=ages)
    assert ExpiryRule("bkt", "out/clients/keys/", 7, "keys") in rules
    with pytest.raises(LifecycleError, match=r"s3://bkt/out/clients/keys/ \(keys, 8 days\) lies"
                                             r" under s3://bkt/out/ \(output, 7 days\)"):
        planned_rules(client_prefixes=["s3://bkt/out/clients"], output_path="s3://bkt/out",
                      failure_path="s3://bkt/fail", ages=Ages(8, 7, 7))


# -- who writes the rules: the bucket owner when the deployer may not ------------------------

def _everything_but(*actions: str) -> list[dict[str, Any]]:
    return [{"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "*", "Resource": "*"},
        {"Effect": "Deny", "Action": list(actions), "Resource": "*"}]}]


def _printed_commands(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("aws s3api ")]


@pytest.mark.parametrize("denied", [
    ("s3:PutLifecycleConfiguration",),
    ("s3:PutLifecycleConfiguration", "s3:GetLifecycleConfiguration"),
    ("s3:GetLifecycleConfiguration",),
], ids=["write-denied", "read-and-write-denied", "read-denied"])
def test_a_deployer_without_the_write_prints_the_owners_merging_command(
        aws: Any, capsys: pytest.CaptureFixture[str], denied: tuple[str, ...]) -> None:
    """The refused write changes nothing and the endpoint is still deployed; the printed command,
    run by the bucket owner, merges: foreign rules and another endpoint's (``e``, a prefix of
    this one's name ``e-2``) stay, this endpoint's are added; and the same for --delete."""
    from tests.fixtures.aws_cli import run_s3api
    from tests.iam.recorder import enforce_policies

    dated = {"ID": "expire-tmp-on-a-date", "Filter": {"Prefix": "tmp/"}, "Status": "Enabled",
             "Expiration": {"Date": "2030-01-01T00:00:00Z"}}  # boto3 reads the date as datetime
    aws.put_bucket_lifecycle_configuration(Bucket=BUCKET,
                                           LifecycleConfiguration={"Rules": [FOREIGN, dated]})
    assert deploy_endpoint.main(_named("e", client_prefix=CLIENT)) == 0
    before = _rules(aws)
    e2 = _named("e-2", client_prefix=f"s3://{BUCKET}/clients/bob",
                output_path=f"s3://{BUCKET}/e2-out", failure_path=f"s3://{BUCKET}/e2-fail")
    capsys.readouterr()
    with enforce_policies(_everything_but(*denied), account="123456789012") as refused:
        assert deploy_endpoint.main(e2) == 0
    # an unread configuration is never written: only the read was tried
    assert [r.action for r in refused] == [denied[-1]]
    out = capsys.readouterr().out
    assert _rules(aws) == before  # nothing written by the deployer
    assert "e-2" in {m["EndpointName"] for m in boto3.client(
        "sagemaker", region_name=LOCAL_REGION).list_endpoints()["Endpoints"]}
    summary = json.loads(out.split("deployed ", 1)[1])
    [command] = _printed_commands(out)
    assert summary["lifecycle_rules_for_the_bucket_owner"] == {BUCKET: command}
    shown = json.loads(out[out.index("Rules:\n") + len("Rules:\n"):out.index("\n]") + 2])
    assert len(shown) == 5 and all(r["ID"].startswith("concrete-fhe-kit:e-2:") for r in shown)
    run_s3api(aws, command)  # the bucket owner
    after = _rules(aws)
    assert {i: r for i, r in after.items() if i in before} == before
    assert _owned_by(after, "e-2") == {r["ID"]: r for r in shown}
    assert set(after) == set(before) | {r["ID"] for r in shown}

    with enforce_policies(_everything_but(*denied), account="123456789012"):
        assert deploy_endpoint.main(["--endpoint-name", "e-2", "--delete"]) == 0
    [removal] = _printed_commands(capsys.readouterr().out)
    assert _rules(aws) == after
    run_s3api(aws, removal)
    assert _rules(aws) == before


def test_a_refused_lifecycle_write_for_another_reason_is_an_error(aws: Any) -> None:
    """Only a denial falls back to the owner's command; other S3 refusals surface."""
    from botocore.exceptions import ClientError

    rules = planned_rules(client_prefixes=[CLIENT], output_path=f"s3://{BUCKET}/o",
                          failure_path=f"s3://{BUCKET}/f", ages=Ages())
    [change] = s3_lifecycle.plan_apply(aws, NAME, rules)
    aws.delete_bucket(Bucket=BUCKET)  # gone between the plan and the write
    with pytest.raises(ClientError, match="NoSuchBucket"):
        s3_lifecycle.execute(aws, [change])


def test_dry_run_shows_the_owners_command_also_for_rules_with_a_date(
        aws: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """A foreign rule expiring on a date (a datetime in boto3) is shown and kept as ISO 8601."""
    from tests.fixtures.aws_cli import run_s3api

    dated = {"ID": "expire-tmp-on-a-date", "Filter": {"Prefix": "tmp/"}, "Status": "Enabled",
             "Expiration": {"Date": "2030-01-01T00:00:00Z"}}
    aws.put_bucket_lifecycle_configuration(Bucket=BUCKET,
                                           LifecycleConfiguration={"Rules": [dated]})
    before = _rules(aws)
    assert deploy_endpoint.main([*deploy_argv(client_prefix=CLIENT), "--dry-run"]) == 0
    [change] = json.loads(capsys.readouterr().out)["lifecycle"]
    assert _rules(aws) == before
    run_s3api(aws, change["owner_command"])
    after = _rules(aws)
    assert after["expire-tmp-on-a-date"] == before["expire-tmp-on-a-date"]
    assert len(_expiry(after)) == 5


def test_an_unreadable_bucket_without_configuration_gets_the_plain_command(aws: Any) -> None:
    """The merging command needs a configuration to read; the printed alternative is the rules
    alone, and running it leaves exactly this endpoint's rules."""
    from tests.fixtures.aws_cli import run_s3api
    from tests.iam.recorder import enforce_policies

    aws.delete_bucket_lifecycle(Bucket=BUCKET)
    rules = planned_rules(client_prefixes=[CLIENT], output_path=f"s3://{BUCKET}/o",
                          failure_path=f"s3://{BUCKET}/f", ages=Ages())
    denied = _everything_but("s3:GetLifecycleConfiguration")
    with enforce_policies(denied, account="123456789012"):
        changes = s3_lifecycle.plan_apply(aws, NAME, rules)
        pending = s3_lifecycle.execute(aws, changes)
    assert pending == changes and _rules(aws) == {}
    text = s3_lifecycle.owner_instructions(pending)
    [merging] = _printed_commands(text)
    with pytest.raises(aws.exceptions.ClientError, match="NoSuchLifecycleConfiguration"):
        run_s3api(aws, merging)  # the CLI fails the same way: nothing is written
    [alternative] = [line.strip() for line in text.splitlines() if line.startswith("  aws ")]
    run_s3api(aws, alternative)
    assert set(_rules(aws)) == {r.rule_id(NAME) for r in rules}
