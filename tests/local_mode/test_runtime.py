"""boto3 `invoke_endpoint_async` against the local async runtime and the real `serve`."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.exceptions import ClientError

from common.contract import parse_error_body
from inference.settings import parse_allowed_prefix
from local_mode.processes import free_port
from local_mode.runtime import LocalAsyncRuntime
from local_mode.s3_server import LOCAL_REGION, LocalS3Server
from tests.fixtures.s3_reads import S3RequestLog
from tests.fixtures.serving import KeyedClient, RunningServe, Uploader, sm_runtime, wait_for_object

ENDPOINT = "fhe-local-test"


@pytest.fixture
def s3(s3_server: LocalS3Server) -> Any:
    return boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name=LOCAL_REGION)


def _runtime(container_url: str, bucket: str, s3: Any, **options: Any) -> LocalAsyncRuntime:
    return LocalAsyncRuntime(endpoint_name=ENDPOINT, container_url=container_url,
                             output_path=f"s3://{bucket}/async-out",
                             failure_path=f"s3://{bucket}/async-fail", s3_client=s3,
                             max_concurrency=1, invocation_timeout=120, **options)


@pytest.fixture
def runtime(running_serve: RunningServe, serving_bucket: str, s3: Any
            ) -> Iterator[LocalAsyncRuntime]:
    with _runtime(running_serve.url, serving_bucket, s3) as rt:
        yield rt


def test_async_invocation_writes_the_encrypted_result(
        runtime: LocalAsyncRuntime, keyed: dict[str, KeyedClient], uploader: Uploader,
        s3: Any) -> None:
    fhe = keyed["tree"]
    row = fhe.model.scaled_test[2]
    request_uri = uploader.put("requests/r.json", uploader.request(fhe, row[None, :]))
    response = sm_runtime(runtime.url).invoke_endpoint_async(
        EndpointName=ENDPOINT, InputLocation=request_uri, ContentType="application/json",
        InferenceId="inference-1")
    assert response["InferenceId"] == "inference-1"
    assert response["OutputLocation"] == f"s3://{uploader.bucket}/async-out/inference-1.out"
    assert response["FailureLocation"] == f"s3://{uploader.bucket}/async-fail/inference-1-error.out"
    result = wait_for_object(s3, response["OutputLocation"])
    np.testing.assert_allclose(fhe.decrypt(result), fhe.expected(row))
    head = s3.head_object(Bucket=uploader.bucket, Key="async-out/inference-1.out")
    assert head["ServerSideEncryption"] == "AES256"


def test_container_error_lands_in_the_failure_path(
        runtime: LocalAsyncRuntime, uploader: Uploader, s3: Any) -> None:
    request_uri = uploader.put("requests/bad.json", b'{"evaluation_keys_uri": 1}')
    response = sm_runtime(runtime.url).invoke_endpoint_async(
        EndpointName=ENDPOINT, InputLocation=request_uri)
    body = wait_for_object(s3, response["FailureLocation"])
    assert parse_error_body(body) == (400, "BadRequest",
                                      "'evaluation_keys_uri' must be a string 's3://bucket/key',"
                                      " got int")


def test_unreachable_container_gives_a_failure_object_not_a_hang(
        serving_bucket: str, uploader: Uploader, s3: Any) -> None:
    with _runtime(f"http://127.0.0.1:{free_port()}", serving_bucket, s3) as rt:
        request_uri = uploader.put("requests/any.json", b"{}")
        response = sm_runtime(rt.url).invoke_endpoint_async(EndpointName=ENDPOINT,
                                                            InputLocation=request_uri)
        status, code, _ = parse_error_body(wait_for_object(s3, response["FailureLocation"]))
    assert (status, code) == (502, "ContainerUnreachable")


def test_missing_input_object_lands_in_the_failure_path(runtime: LocalAsyncRuntime,
                                                         serving_bucket: str, s3: Any) -> None:
    response = sm_runtime(runtime.url).invoke_endpoint_async(
        EndpointName=ENDPOINT, InputLocation=f"s3://{serving_bucket}/fhe/{uuid.uuid4().hex}")
    status, code, message = parse_error_body(wait_for_object(s3, response["FailureLocation"]))
    assert (status, code) == (400, "InputUnavailable")
    assert "NoSuchKey" in message


def test_validation_errors_are_aws_client_errors(runtime: LocalAsyncRuntime) -> None:
    client = sm_runtime(runtime.url)
    with pytest.raises(ClientError, match=r"ValidationError.*Endpoint other not found"):
        client.invoke_endpoint_async(EndpointName="other", InputLocation="s3://b/k")
    with pytest.raises(ClientError, match=r"ValidationError.*InputLocation is required"):
        client.invoke_endpoint_async(EndpointName=ENDPOINT, Body=b"{}")
    with pytest.raises(ClientError, match=r"ValidationError.*'invocationTimeoutSeconds' failed to"
                                          r" satisfy constraint: Member must have value less than"
                                          r" or equal to 3600"):
        client.invoke_endpoint_async(EndpointName=ENDPOINT, InputLocation="s3://bucket/k",
                                     InvocationTimeoutSeconds=99999)


# -- issue 10: the emulator refuses what SageMaker refuses, reads only allowed inputs ----------


@pytest.fixture
def bare_runtime(serving_bucket: str, s3: Any) -> Iterator[LocalAsyncRuntime]:
    """A runtime whose container is unreachable (enough for front-end validation)."""
    with _runtime(f"http://127.0.0.1:{free_port()}", serving_bucket, s3) as rt:
        yield rt


@pytest.mark.parametrize(("params", "message"), [
    ({"CustomAttributes": "a" * 1025}, "Value at 'customAttributes' failed to satisfy constraint:"
                                       " Member must have length less than or equal to 1024"),
    ({"InferenceId": "i" * 65}, f"Value '{'i' * 65}' at 'inferenceId' failed to satisfy"
                                " constraint: Member must have length less than or equal to 64"),
    ({"Filename": "a/b.out"}, "Value 'a/b.out' at 'filename' failed to satisfy constraint: Member"
                              " must satisfy regular expression pattern: ^(?!.*\\..*\\.)"),
    ({"Filename": "f" * 33}, "at 'filename' failed to satisfy constraint: Member must have length"
                             " less than or equal to 32"),
    ({"InferenceId": "id\x7f"}, "at 'inferenceId' failed to satisfy constraint: Member must satisfy"
                               " regular expression pattern: \\A\\S[\\p{Print}]*\\z"),
    ({"S3OutputPathExtension": "s3://x"}, "at 's3OutputPathExtension' failed"),
    ({"RequestTTLSeconds": 59}, "Value '59' at 'requestTTLSeconds' failed to satisfy constraint:"
                                " Member must have value greater than or equal to 60"),
    ({"InvocationTimeoutSeconds": 3601}, "Member must have value less than or equal to 3600"),
], ids=["custom-attributes-1025", "inference-id-65", "filename-slash", "filename-33",
        "inference-id-del", "extension-scheme", "ttl-59", "timeout-3601"])
def test_headers_over_the_service_model_limits_are_validation_errors(
        bare_runtime: LocalAsyncRuntime, serving_bucket: str, params: dict[str, Any],
        message: str) -> None:
    """Class 5 of issue 10: CustomAttributes > 1024, InferenceId > 64, Filename with '/' got 202.

    botocore checks only minimums client-side; its check is off here so the runtime's shows.
    """
    client = sm_runtime(bare_runtime.url, parameter_validation=False)
    with pytest.raises(ClientError) as info:
        client.invoke_endpoint_async(EndpointName=ENDPOINT, **params,
                                     InputLocation=f"s3://{serving_bucket}/fhe/r.json")
    error = info.value.response["Error"]
    assert error["Code"] == "ValidationError"
    assert error["Message"].startswith("1 validation error detected: ")
    assert message in error["Message"]


def test_every_violation_is_listed_in_one_error(bare_runtime: LocalAsyncRuntime) -> None:
    client = sm_runtime(bare_runtime.url)
    with pytest.raises(ClientError, match=r"3 validation errors detected: .*'customAttributes'.*;"
                                          r" .*'inferenceId'.*; .*'filename'"):
        client.invoke_endpoint_async(EndpointName=ENDPOINT, InputLocation="s3://bucket/k",
                                     CustomAttributes="a" * 1025, InferenceId="i" * 65,
                                     Filename="a/b")


def test_values_at_the_service_model_limits_are_accepted(
        bare_runtime: LocalAsyncRuntime, serving_bucket: str, s3: Any) -> None:
    inference_id = "i" * 63 + "~"
    response = sm_runtime(bare_runtime.url).invoke_endpoint_async(
        EndpointName=ENDPOINT, InputLocation=f"s3://{serving_bucket}/fhe/{uuid.uuid4().hex}",
        CustomAttributes="a" * 1024, InferenceId=inference_id, Filename="f" * 28 + ".out",
        RequestTTLSeconds=60, InvocationTimeoutSeconds=3600)
    assert response["InferenceId"] == inference_id
    assert response["OutputLocation"] == f"s3://{serving_bucket}/async-out/{'f' * 28}.out"
    status, code, _ = parse_error_body(wait_for_object(s3, response["FailureLocation"]))
    assert (status, code) == (400, "InputUnavailable")


def test_an_input_location_outside_the_allowed_prefixes_is_never_read(
        keyed: dict[str, KeyedClient], running_serve: RunningServe, serving_bucket: str,
        s3_server: LocalS3Server) -> None:
    """The runtime reads InputLocation with the endpoint role's reach: the shared matcher."""
    fhe = keyed["tree"]
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name=LOCAL_REGION)
    good = Uploader(s3, serving_bucket, f"fhe/{uuid.uuid4().hex[:8]}/")
    request = good.request(fhe, fhe.model.scaled_test[:1])
    sibling = Uploader(s3, serving_bucket, "fhe-evil/").put("requests/r.json", request)
    log = S3RequestLog.attach(s3)
    with _runtime(running_serve.url, serving_bucket, s3,
                  allowed_input_prefixes=[parse_allowed_prefix(f"s3://{serving_bucket}/fhe")]
                  ) as rt:
        response = sm_runtime(rt.url).invoke_endpoint_async(EndpointName=ENDPOINT,
                                                             InputLocation=sibling)
        status, code, message = parse_error_body(wait_for_object(s3, response["FailureLocation"]))
        assert (status, code) == (403, "AccessDenied")
        assert f"may not read InputLocation {sibling}" in message
        assert ("GET", serving_bucket, "fhe-evil/requests/r.json") not in log.sent
        allowed = good.put("requests/r.json", request)
        response = sm_runtime(rt.url).invoke_endpoint_async(EndpointName=ENDPOINT,
                                                             InputLocation=allowed)
        result = wait_for_object(s3, response["OutputLocation"])
    np.testing.assert_allclose(fhe.decrypt(result), fhe.expected(fhe.model.scaled_test[0]))
    assert not [key for _, key in log.reads() if key.startswith("fhe-evil/")]
