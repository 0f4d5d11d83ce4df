"""boto3 `invoke_endpoint_async` against the local async runtime and the real `serve`."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.exceptions import ClientError

from inference.contract import parse_error_body
from inference.local.runtime import LocalAsyncRuntime
from inference.local.s3_server import LOCAL_REGION, LocalS3Server, free_port
from tests.fixtures.serving import RunningServe, sm_runtime, wait_for_object
from tests.inference.conftest import KeyedClient, Uploader

ENDPOINT = "fhe-local-test"


@pytest.fixture
def s3(s3_server: LocalS3Server) -> Any:
    return boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name=LOCAL_REGION)


def _runtime(container_url: str, bucket: str, s3: Any) -> LocalAsyncRuntime:
    return LocalAsyncRuntime(endpoint_name=ENDPOINT, container_url=container_url,
                             output_path=f"s3://{bucket}/async-out",
                             failure_path=f"s3://{bucket}/async-fail", s3_client=s3,
                             max_concurrency=1, invocation_timeout=120)


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
    with pytest.raises(ClientError, match=r"ValidationError.*InvocationTimeoutSeconds must be"):
        client.invoke_endpoint_async(EndpointName=ENDPOINT, InputLocation="s3://bucket/k",
                                     InvocationTimeoutSeconds=99999)
