"""The renderer: S3 URI splitting, list expansion, aggregated errors, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.s3_location import parse_s3_uri
from iam.render import ROLES, RenderError, main, render, split_s3_uri
from inference.settings import parse_allowed_prefix
from tests.iam.evaluator import Decision, Request, evaluate
from tests.iam.test_templates import EXAMPLE_CONFIG

CONFIG = json.loads(EXAMPLE_CONFIG.read_text())


@pytest.mark.parametrize(("uri", "objects"), [
    ("s3://b-1/models", "b-1/models/"), ("s3://b-1/models/", "b-1/models/"),
    ("s3://b-1", "b-1/"), ("s3://b-1/", "b-1/"), ("s3://b-1/a/b", "b-1/a/b/"),
])
def test_prefixes_end_with_a_slash(uri: str, objects: str) -> None:
    assert split_s3_uri(uri, field="f").path == objects


def test_prefix_does_not_grant_a_sibling() -> None:
    doc = render(CONFIG, roles=["training-execution-role"])["training-execution-role-policy.json"]
    write = next(s for s in doc["Statement"] if s["Sid"] == "WriteModelArtefacts")
    assert write["Resource"] == ["arn:aws:s3:::acme-fhe/models/*"]


def test_several_client_prefixes_expand_into_several_resources() -> None:
    config = {**CONFIG, "deploy_endpoint": {**CONFIG["deploy_endpoint"], "allowed-s3-prefix": [
        "s3://acme-fhe/clients/alice", "s3://other-bucket/bob/"]}}
    doc = render(config, roles=["endpoint-execution-role"])["endpoint-execution-role-policy.json"]
    read = next(s for s in doc["Statement"] if s["Sid"] == "ReadClientKeysQueriesAndRequests")
    assert "arn:aws:s3:::other-bucket/bob/queries/*" in read["Resource"]
    assert "arn:aws:s3:::acme-fhe/clients/alice/keys/*" in read["Resource"]
    assert len(read["Resource"]) == 6
    assert "bucket-policy-other-bucket.json" in render(config)


def _s3_grants(config: dict) -> list[dict]:
    doc = render(config, roles=["endpoint-creator"])["endpoint-creator-policy.json"]
    return [s for s in doc["Statement"]
            if s["Effect"] == "Allow" and str(s["Action"]).startswith("s3:")
            and s["Sid"] != "ReadTheLifecycleRulesOnlyTheBucketOwnerWrites"]


def test_delete_prefix_grants_only_its_prefixes_and_is_optional() -> None:
    grants = {s["Sid"]: s for s in _s3_grants(CONFIG)}
    assert grants["DeleteObjectsUnderTheDeletePrefixes"]["Resource"] == [
        "arn:aws:s3:::acme-fhe/clients/alice/*", "arn:aws:s3:::acme-fhe/async-out/*",
        "arn:aws:s3:::acme-fhe/async-fail/*"]
    listing = grants["ListOnlyTheDeletePrefixes"]
    assert listing["Resource"] == ["arn:aws:s3:::acme-fhe"]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": [
        "clients/alice/*", "async-out/*", "async-fail/*"]}}

    section = {k: v for k, v in CONFIG["deploy_endpoint"].items() if k != "delete_prefix"}
    assert _s3_grants({**CONFIG, "deploy_endpoint": section}) == []  # no S3 access at all
    one = {**section, "delete-prefix": "s3://acme-fhe/async-out/"}  # flag spelling, a string
    assert [s["Resource"] for s in _s3_grants({**CONFIG, "deploy_endpoint": one})] == [
        ["arn:aws:s3:::acme-fhe"], ["arn:aws:s3:::acme-fhe/async-out/*"]]
    bad = {**section, "delete_prefix": ["s3://acme-fhe/ok", "/local/dir"]}
    with pytest.raises(RenderError, match=r"'deploy_endpoint\.delete_prefix\[1\]' must look like"
                       r" 's3://bucket/prefix', got '/local/dir': it must start with 's3://'"):
        render({**CONFIG, "deploy_endpoint": bad}, roles=["endpoint-creator"])


def test_endpoint_role_lists_only_the_client_key_and_query_prefixes() -> None:
    config = {**CONFIG, "deploy_endpoint": {**CONFIG["deploy_endpoint"], "allowed_s3_prefix": [
        "s3://acme-fhe/clients/alice", "s3://acme-fhe/clients/bob/"]}}
    doc = render(config, roles=["endpoint-execution-role"])["endpoint-execution-role-policy.json"]
    (listing,) = [s for s in doc["Statement"] if s["Action"] == "s3:ListBucket"]
    assert listing["Resource"] == ["arn:aws:s3:::acme-fhe"]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": [
        "clients/alice/keys/*", "clients/bob/keys/*",
        "clients/alice/queries/*", "clients/bob/queries/*"]}}


def _lifecycle_resources(deploy: dict[str, object]) -> object:
    config = {**CONFIG, "deploy_endpoint": {**CONFIG["deploy_endpoint"], **deploy}}
    doc = render(config, roles=["endpoint-creator"])["endpoint-creator-policy.json"]
    return next(s["Resource"] for s in doc["Statement"]
                if s["Sid"] == "ReadTheLifecycleRulesOnlyTheBucketOwnerWrites")


def test_lifecycle_buckets_follow_deploy_endpoints_own_defaults() -> None:
    assert _lifecycle_resources({}) == "arn:aws:s3:::acme-fhe"
    assert _lifecycle_resources({"client-prefix": ["s3://clients-b/alice"],
                                 "failure_path": "s3://fail-b/x"}) == [
        "arn:aws:s3:::clients-b", "arn:aws:s3:::acme-fhe", "arn:aws:s3:::fail-b"]


def test_every_missing_key_is_named_at_once() -> None:
    config = {"account_id": "12", "start_training": {"train": "/local/dir"}}
    with pytest.raises(RenderError) as info:
        render(config)
    message = str(info.value)
    for expected in ("account_id must be 12 digits", "missing region",
                     "'start_training.train' must",
                     "missing start_training.output_path", "missing start_training.role",
                     "missing start_training.image_uri", "missing deploy_endpoint.endpoint_name",
                     "missing deploy_endpoint.model_data", "missing deploy_endpoint.role",
                     "missing deploy_endpoint.output_path", "missing client.s3_prefix"):
        assert expected in message


def test_client_endpoint_must_match_the_deployed_one() -> None:
    config = {**CONFIG, "client": {**CONFIG["client"], "endpoint_name": "other"}}
    with pytest.raises(RenderError, match=r"client\.endpoint_name 'other' differs"):
        render(config, roles=["inference-client"])


def test_cli_writes_valid_json(tmp_path: Path) -> None:
    assert main(["--config", str(EXAMPLE_CONFIG), "--out", str(tmp_path / "out")]) == 0
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(files) == 11
    for name in files:
        assert "${" not in (tmp_path / "out" / name).read_text()
        json.loads((tmp_path / "out" / name).read_text())


def test_cli_reads_the_scripts_own_config_files(tmp_path: Path, capsys) -> None:
    (tmp_path / "train.json").write_text(json.dumps(CONFIG["start_training"]))
    argv = ["--start-training-config", str(tmp_path / "train.json"), "--account-id", ACCOUNT,
            "--region", "eu-west-1", "--role", "model-trainer", "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    doc = json.loads((tmp_path / "o" / "model-trainer-policy.json").read_text())
    assert "arn:aws:sagemaker:eu-west-1:123456789012:training-job/fhe-train*" in json.dumps(doc)
    assert main(["--out", str(tmp_path / "x"), "--role", "model-trainer"]) == 2
    assert "missing account_id" in capsys.readouterr().err


ACCOUNT = CONFIG["account_id"]


_FOLDERS = st.sampled_from(["alice", "alice", "alice-x", "alicex", "alice.", "Alice", "bob", "al"])
_SUBFOLDERS = st.sampled_from(["keys", "queries", "requests", "other", "keys-x"])
_LEAVES = st.text(alphabet="abc.-_", min_size=1, max_size=6).filter(lambda s: s not in (".", ".."))


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(folder=_FOLDERS, subfolder=_SUBFOLDERS, leaf=_LEAVES)
def test_the_endpoint_role_and_the_server_allow_list_share_one_boundary(
        folder: str, subfolder: str, leaf: str) -> None:
    """Nothing the rendered endpoint policy lets the role read lies outside the server's
    allow-list (both come from common/s3_location.py), and a sibling is refused by both."""
    prefix = CONFIG["deploy_endpoint"]["allowed_s3_prefix"][0]  # s3://acme-fhe/clients/alice
    role = "endpoint-execution-role"
    policy = render(CONFIG, roles=[role])[f"{role}-policy.json"]
    key = f"clients/{folder}/{subfolder}/{leaf}"
    iam = evaluate([policy], Request("s3:GetObject", f"arn:aws:s3:::acme-fhe/{key}",
                                     {"aws:securetransport": True})) is Decision.ALLOW
    server = parse_allowed_prefix(prefix).contains(parse_s3_uri(f"s3://acme-fhe/{key}"))
    assert not iam or server, key
    if folder != "alice":
        assert not iam and not server, key
    elif subfolder in ("keys", "queries", "requests"):
        assert iam and server, key


def _lookup_config(**deploy: str) -> dict:
    """The example config deploying the model of a training job instead of a fixed model_data."""
    section = {k: v for k, v in CONFIG["deploy_endpoint"].items() if k != "model_data"}
    return {**CONFIG, "deploy_endpoint": {**section, **deploy}}


def _statement(config: dict, role: str, sid: str) -> dict | None:
    doc = render(config, roles=[role])[f"{role}-policy.json"]
    return next((s for s in doc["Statement"] if s["Sid"] == sid), None)


def test_training_job_lookup_is_granted_only_when_configured() -> None:
    for role in ("endpoint-creator", "inference-client"):
        assert _statement(CONFIG, role, "FindTheModelOfTheNamedTrainingJobs") is None
        assert _statement(CONFIG, role, "ListTrainingJobsHasNoResourceLevelPermission") is None
    read = _statement(CONFIG, "endpoint-execution-role", "ReadModelArtefact")
    model_key = parse_s3_uri(CONFIG["deploy_endpoint"]["model_data"]).key
    assert read["Resource"] == [f"arn:aws:s3:::acme-fhe/{model_key}"]


def test_latest_training_job_grants_its_jobs_and_their_model_archives_only() -> None:
    config = _lookup_config(latest_training_job="MNIST")
    arn = "arn:aws:sagemaker:us-east-1:123456789012:training-job"
    for role in ("endpoint-creator", "inference-client"):
        describe = _statement(config, role, "FindTheModelOfTheNamedTrainingJobs")
        assert describe["Resource"] == [f"{arn}/mnist", f"{arn}/mnist-*"]  # ARNs: lower case
        listing = _statement(config, role, "ListTrainingJobsHasNoResourceLevelPermission")
        assert listing["Action"] == "sagemaker:ListTrainingJobs" and listing["Resource"] == "*"
    read = _statement(config, "endpoint-execution-role", "ReadModelArtefact")
    assert read["Resource"] == [  # S3 keys keep the job name's case
        "arn:aws:s3:::acme-fhe/models/MNIST/output/model.tar.gz",
        "arn:aws:s3:::acme-fhe/models/MNIST-*/output/model.tar.gz"]
    policy = [render(config, roles=["endpoint-creator"])["endpoint-creator-policy.json"]]
    ctx = {"aws:securetransport": True}
    assert [evaluate(policy, Request("sagemaker:DescribeTrainingJob", f"{arn}/{job}", ctx))
            for job in ("mnist-2026-01-01-00-00-00-000", "mnist", "mnistx", "other-1")] == [
        Decision.ALLOW, Decision.ALLOW, Decision.IMPLICIT_DENY, Decision.IMPLICIT_DENY]


def test_a_named_training_job_needs_no_listing() -> None:
    config = _lookup_config(training_job="fhe-train-7")
    describe = _statement(config, "endpoint-creator", "FindTheModelOfTheNamedTrainingJobs")
    assert describe["Resource"] == [
        "arn:aws:sagemaker:us-east-1:123456789012:training-job/fhe-train-7"]
    assert _statement(config, "endpoint-creator",
                      "ListTrainingJobsHasNoResourceLevelPermission") is None
    assert _statement(config, "inference-client", "DownloadClientArtefact")["Resource"] == [
        "arn:aws:s3:::acme-fhe/models/fhe-train-7/output/model.tar.gz"]


def test_a_training_job_lookup_without_its_output_path_or_a_bad_name_is_named() -> None:
    config = _lookup_config(latest_training_job="bad_name!")
    config["client"] = {**config["client"], "training_job": "-x"}
    config["start_training"] = {k: v for k, v in config["start_training"].items()
                                if k != "output_path"}
    with pytest.raises(RenderError) as info:
        render(config)
    message = str(info.value)
    assert "deploy_endpoint.latest_training_job must be a SageMaker training job name" in message
    assert "client.training_job must be a SageMaker training job name" in message
    with pytest.raises(RenderError, match=r"missing start_training\.output_path \(where the"
                                          r" training jobs named by training_job"):
        render({**_lookup_config(training_job="j-1"), "start_training": {
            k: v for k, v in CONFIG["start_training"].items() if k != "output_path"}},
            roles=["endpoint-execution-role"])
    with pytest.raises(RenderError, match=r"missing deploy_endpoint\.model_data .* or"
                                          r" deploy_endpoint\.training_job / latest_training_job"):
        render(_lookup_config(), roles=["endpoint-execution-role"])


def test_cli_renders_the_bucket_owner_policy_only_when_asked(tmp_path: Path) -> None:
    assert main(["--config", str(EXAMPLE_CONFIG), "--out", str(tmp_path / "plain")]) == 0
    assert not (tmp_path / "plain" / "bucket-owner-lifecycle-policy.json").exists()
    assert main(["--config", str(EXAMPLE_CONFIG), "--bucket-owner-lifecycle-policy",
                 "--out", str(tmp_path / "owner")]) == 0
    doc = json.loads((tmp_path / "owner" / "bucket-owner-lifecycle-policy.json").read_text())
    write = next(s for s in doc["Statement"] if "s3:PutLifecycleConfiguration" in s["Action"])
    assert write["Resource"] == "arn:aws:s3:::acme-fhe"


EXAMPLES = Path(__file__).resolve().parents[2] / "iam" / "examples"


def test_the_aws_walkthrough_example_configs_render_and_drive_the_scripts(tmp_path: Path) -> None:
    """docs' AWS path: the three example configs render every policy, and the same files are
    valid ``--config`` files of start_training.py and deploy_endpoint.py (no model_data: the
    newest job of the base name, whose lookup and model the policies then grant)."""
    import deploy_endpoint
    import start_training

    out = tmp_path / "iam"
    argv = ["--start-training-config", str(EXAMPLES / "train.json"),
            "--deploy-endpoint-config", str(EXAMPLES / "deploy.json"),
            "--client-config", str(EXAMPLES / "client.json"), "--account-id", "123456789012",
            "--region", "eu-west-1", "--out", str(out)]
    assert main(argv) == 0
    assert {p.name for p in out.iterdir()} == {
        *(f"{r}-{k}.json" for r in ROLES for k in ("policy", "trust")),
        "bucket-policy-acme-fhe.json"}
    client = json.loads((out / "inference-client-policy.json").read_text())
    lookup = Request("sagemaker:DescribeTrainingJob",
                     "arn:aws:sagemaker:eu-west-1:123456789012:training-job/fhe-train-2026-01-01",
                     {})
    assert evaluate([client], lookup) is Decision.ALLOW
    launch = start_training.LaunchSettings.resolve(
        ["--config", str(EXAMPLES / "train.json")], environ={})
    assert launch.hyperparameters == {"model": "LogisticRegression"}
    deploy = deploy_endpoint.parse_args(["--config", str(EXAMPLES / "deploy.json")], environ={})
    assert deploy.latest_training_job == launch.base_job_name
    assert deploy.allowed_s3_prefix == (json.loads((EXAMPLES / "client.json").read_text())
                                        ["s3_prefix"],)
