"""The README's AWS path under moto: its train, deploy and teardown commands, run with the
example configs of iam/examples/ as the README writes them, make only AWS calls that the
policies rendered from those same files allow (each by the role the README gives that step).
The deploy's lifecycle write is refused to the endpoint creator (a bucket-wide expire power) and
done by the bucket owner with the command deploy_endpoint.py prints."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import boto3
import pytest
from moto import mock_aws

from iam.render import render
from tests.iam.evaluator import Decision, evaluate
from tests.iam.recorder import (
    RecordedCall,
    enforce_policies,
    record_calls,
    required_requests,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "iam" / "examples"
ACCOUNT, REGION, BUCKET = "123456789012", "eu-west-1", "acme-fhe"  # the examples' own values


@pytest.fixture
def walkthrough(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """moto's AWS with the README's bucket and training CSV; the configs and their policies."""
    configs = {name: json.loads((EXAMPLES / f"{name}.json").read_text())
               for name in ("train", "deploy", "client")}
    combined = {"account_id": ACCOUNT, "region": REGION, "start_training": configs["train"],
                "deploy_endpoint": configs["deploy"], "client": configs["client"]}
    with mock_aws(), mock.patch("time.sleep"):
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        s3.put_object(Bucket=BUCKET, Key="data/breast-cancer/train.csv",
                      Body=b"mean radius,label\n1.5,0\n2.5,1\n", ServerSideEncryption="AES256")
        yield {"policies": render({**combined, "bucket_owner_lifecycle_policy": True}),
               "files": {n: EXAMPLES / f"{n}.json" for n in configs}, "s3": s3}


def _refused(role: str, policies: dict[str, Any], calls: list[RecordedCall]) -> list[str]:
    requests = required_requests(calls, account=ACCOUNT)
    assert requests, "no AWS call was recorded"
    policy = [policies[f"{role}-policy.json"]]
    return [f"{evaluate(policy, r).value}: {r}" for r in requests
            if evaluate(policy, r) is not Decision.ALLOW]


def _run_as_bucket_owner(walkthrough: dict[str, Any], out: str) -> None:
    """Run the one command deploy_endpoint.py printed, with the opt-in bucket-owner policy."""
    from tests.fixtures.aws_cli import run_s3api

    [command] = [line for line in out.splitlines() if line.startswith("aws s3api ")]
    owner = [walkthrough["policies"]["bucket-owner-lifecycle-policy.json"]]
    with enforce_policies(owner, account=ACCOUNT) as refused:
        run_s3api(walkthrough["s3"], command)
    assert not refused


def test_readme_train_deploy_and_teardown_are_allowed_by_the_rendered_roles(
        walkthrough: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    import deploy_endpoint
    import start_training

    files, policies = walkthrough["files"], walkthrough["policies"]
    with record_calls() as calls:  # step 4: python start_training.py --config build/train.json
        assert start_training.main(["--config", str(files["train"])], environ={}) == 0
    assert not _refused("model-trainer", policies, calls)

    deploy = ["--config", str(files["deploy"])]
    creator = [policies["endpoint-creator-policy.json"]]
    with (enforce_policies(creator, account=ACCOUNT) as refused,
          record_calls() as calls):  # step 5: deploy_endpoint.py --config build/deploy.json
        assert deploy_endpoint.main(deploy) == 0
    # The lifecycle rules are the bucket owner's: refused, printed, run by the owner.
    assert [r.action for r in refused] == ["s3:PutLifecycleConfiguration"]
    assert not _refused("endpoint-creator", policies, [c for c in calls if c.error_code is None])
    created = {c.operation for c in calls if c.error_code is None}
    assert {"ListTrainingJobs", "CreateEndpoint"} <= created
    _run_as_bucket_owner(walkthrough, capsys.readouterr().out)
    assert len(walkthrough["s3"].get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]) == 5

    with (enforce_policies(creator, account=ACCOUNT) as refused,
          record_calls() as calls):  # step 7: ... --delete
        assert deploy_endpoint.main([*deploy, "--delete"]) == 0
    assert [r.action for r in refused] == ["s3:PutLifecycleConfiguration"]
    assert not _refused("endpoint-creator", policies, [c for c in calls if c.error_code is None])
    _run_as_bucket_owner(walkthrough, capsys.readouterr().out)
    with pytest.raises(walkthrough["s3"].exceptions.ClientError,
                       match="NoSuchLifecycleConfiguration"):
        walkthrough["s3"].get_bucket_lifecycle_configuration(Bucket=BUCKET)
    sagemaker = boto3.client("sagemaker", region_name=REGION)
    assert sagemaker.list_endpoints()["Endpoints"] == []


def test_the_walkthrough_oracle_sees_a_refusal(walkthrough: dict[str, Any]) -> None:
    """The same training launch, judged by the client's policy, is refused: the check can fail."""
    import start_training

    with record_calls() as calls:
        assert start_training.main(["--config", str(walkthrough["files"]["train"])],
                                   environ={}) == 0
    assert _refused("inference-client", walkthrough["policies"], calls)
