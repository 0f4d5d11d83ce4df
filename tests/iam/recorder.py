"""Record every AWS API call a piece of code makes, and map each one to the IAM checks it needs.

:func:`record_calls` patches ``botocore.client.BaseClient._make_api_call`` (the one funnel every
boto3 client, resource, managed transfer and the SageMaker SDK go through), so the list of calls
is derived from what the code really does, never written by hand. :func:`required_requests`
turns each call into the IAM authorisation requests AWS makes for it (``HeadObject`` is
``s3:GetObject``, ``CreateTrainingJob`` also needs ``iam:PassRole`` on its role, registering a
SageMaker scalable target also needs ``sagemaker:DescribeEndpoint``...). A call with no mapping
raises :class:`UnmappedCallError`: a new API call in a script must be looked at, not skipped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

from botocore.client import BaseClient
from botocore.exceptions import ClientError

from tests.iam.evaluator import Request

SAGEMAKER_SERVICE = "sagemaker.amazonaws.com"
AUTOSCALING_SLR_SERVICE = "sagemaker.application-autoscaling.amazonaws.com"


class UnmappedCallError(LookupError):
    """A recorded API call has no IAM mapping yet (add one to ``_MAPPERS``)."""


@dataclass(frozen=True)
class RecordedCall:
    """One API call as the client sent it.

    Args:
        service: boto3 service name (``s3``, ``sagemaker``, ``sagemaker-runtime``...).
        operation: API operation name (``PutObject``).
        params: the request parameters.
        region: the client's region.
        secure: whether the client's endpoint uses TLS (https).
        error_code: the error code AWS answered, or None when the call succeeded.
    """

    service: str
    operation: str
    params: dict[str, Any]
    region: str
    secure: bool
    error_code: str | None = None

    def __str__(self) -> str:
        return f"{self.service}:{self.operation}"


@contextmanager
def record_calls(*, clients: Collection[BaseClient] | None = None) -> Iterator[list[RecordedCall]]:
    """Record every botocore API call made inside the block, in order, then run it for real.

    Args:
        clients: Record only the calls made through these client objects (one principal's,
            when several act in the same process); None records every call. Blocks nest.
    """
    calls: list[RecordedCall] = []
    original = BaseClient._make_api_call
    wanted = None if clients is None else {id(c) for c in clients}

    def _recording(client: BaseClient, operation_name: str, api_params: dict[str, Any]) -> Any:
        if wanted is not None and id(client) not in wanted:
            return original(client, operation_name, api_params)
        call = RecordedCall(
            service=client.meta.service_model.service_name,
            operation=operation_name,
            params=dict(api_params),
            region=client.meta.region_name,
            secure=client.meta.endpoint_url.startswith("https://"),
        )
        try:
            result = original(client, operation_name, api_params)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "Unknown"))
            calls.append(dataclasses.replace(call, error_code=code))
            raise
        calls.append(call)
        return result

    with mock.patch.object(BaseClient, "_make_api_call", _recording):
        yield calls


@dataclass
class _Mapper:
    """State shared while mapping a call sequence (multipart uploads inherit their SSE header)."""

    account: str
    multipart_sse: dict[tuple[str, str], str | None] = field(default_factory=dict)


_Map = Callable[[_Mapper, RecordedCall], list[Request]]


def _ctx(call: RecordedCall, **extra: str | bool | None) -> dict[str, str | bool]:
    context: dict[str, str | bool] = {"aws:securetransport": call.secure}
    context.update({k: v for k, v in extra.items() if v is not None})
    return context


def _req(call: RecordedCall, action: str, resource: str, **ctx: str | bool | None) -> Request:
    return Request(action, resource, _ctx(call, **ctx), source=str(call))


def _object_arn(bucket: str, key: str) -> str:
    return f"arn:aws:s3:::{bucket}/{key}"


def _s3_put_object(m: _Mapper, c: RecordedCall) -> list[Request]:
    sse = c.params.get("ServerSideEncryption")
    arn = _object_arn(c.params["Bucket"], c.params["Key"])
    return [_req(c, "s3:PutObject", arn, **{"s3:x-amz-server-side-encryption": sse})]


def _s3_create_multipart(m: _Mapper, c: RecordedCall) -> list[Request]:
    m.multipart_sse[(c.params["Bucket"], c.params["Key"])] = c.params.get("ServerSideEncryption")
    return _s3_put_object(m, c)


def _s3_multipart_part(m: _Mapper, c: RecordedCall) -> list[Request]:
    # Parts are authorised as s3:PutObject under the encryption the upload was created with.
    sse = m.multipart_sse.get((c.params["Bucket"], c.params["Key"]))
    arn = _object_arn(c.params["Bucket"], c.params["Key"])
    return [_req(c, "s3:PutObject", arn, **{"s3:x-amz-server-side-encryption": sse})]


_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound"})


def _s3_object(action: str) -> _Map:
    def _map(m: _Mapper, c: RecordedCall) -> list[Request]:
        requests = [_req(c, action, _object_arn(c.params["Bucket"], c.params["Key"]))]
        if c.error_code in _NOT_FOUND:
            # S3 answers 404 (not 403) for a missing key only if the caller may list the bucket,
            # and it checks that ListBucket with s3:prefix set to the requested key (a grant
            # limited to ``keys/*`` answers 404 under keys/ and 403 elsewhere; ceph's s3-tests
            # test_head_object_404_with_policy_prefix pins this AWS behaviour).
            bucket, key = c.params["Bucket"], c.params["Key"]
            listing = _req(c, "s3:ListBucket", f"arn:aws:s3:::{bucket}", **{"s3:prefix": key})
            requests.append(listing)
        return requests

    return _map


def _s3_delete_objects(m: _Mapper, c: RecordedCall) -> list[Request]:
    bucket = c.params["Bucket"]
    return [
        _req(c, "s3:DeleteObject", _object_arn(bucket, o["Key"]))
        for o in c.params["Delete"]["Objects"]
    ]


def _s3_list(m: _Mapper, c: RecordedCall) -> list[Request]:
    bucket_arn = f"arn:aws:s3:::{c.params['Bucket']}"
    return [_req(c, "s3:ListBucket", bucket_arn, **{"s3:prefix": c.params.get("Prefix", "")})]


def _s3_bucket(action: str) -> _Map:
    def _map(m: _Mapper, c: RecordedCall) -> list[Request]:
        return [_req(c, action, f"arn:aws:s3:::{c.params['Bucket']}")]

    return _map


def _s3_copy(m: _Mapper, c: RecordedCall) -> list[Request]:
    source = c.params["CopySource"]
    if isinstance(source, str):
        src_bucket, _, src_key = source.lstrip("/").partition("/")
    else:
        src_bucket, src_key = source["Bucket"], source["Key"]
    return [*_s3_put_object(m, c), _req(c, "s3:GetObject", _object_arn(src_bucket, src_key))]


def _sm_arn(m: _Mapper, c: RecordedCall, kind: str, name: str) -> str:
    # SageMaker lower-cases resource names in its ARNs.
    return f"arn:aws:sagemaker:{c.region}:{m.account}:{kind}/{name.lower()}"


def _pass_role(c: RecordedCall, role_arn: str) -> Request:
    return _req(c, "iam:PassRole", role_arn, **{"iam:passedtoservice": SAGEMAKER_SERVICE})


def _sm(kind: str, name_param: str, *, role_param: str | None = None) -> Callable[[str], _Map]:
    def _for(operation: str) -> _Map:
        def _map(m: _Mapper, c: RecordedCall) -> list[Request]:
            arn = _sm_arn(m, c, kind, c.params[name_param])
            requests = [_req(c, f"sagemaker:{operation}", arn)]
            if c.params.get("Tags"):
                requests.append(_req(c, "sagemaker:AddTags", arn))
            if role_param is not None:
                requests.append(_pass_role(c, c.params[role_param]))
            if operation == "CreateEndpoint":
                config = _sm_arn(m, c, "endpoint-config", c.params["EndpointConfigName"])
                requests.append(_req(c, "sagemaker:CreateEndpoint", config))
            return requests

        return _map

    return _for


def _sm_list_tags(m: _Mapper, c: RecordedCall) -> list[Request]:
    return [_req(c, "sagemaker:ListTags", c.params["ResourceArn"].lower())]


def _star(action: str) -> _Map:
    def _map(m: _Mapper, c: RecordedCall) -> list[Request]:
        return [_req(c, action, "*")]

    return _map


def _invoke_async(m: _Mapper, c: RecordedCall) -> list[Request]:
    arn = _sm_arn(m, c, "endpoint", c.params["EndpointName"])
    return [_req(c, "sagemaker:InvokeEndpointAsync", arn)]


def _autoscaling(operation: str) -> _Map:
    def _map(m: _Mapper, c: RecordedCall) -> list[Request]:
        namespace, dimension = c.params["ServiceNamespace"], c.params.get("ScalableDimension")
        requests = [
            _req(
                c,
                f"application-autoscaling:{operation}",
                "*",
                **{
                    "application-autoscaling:service-namespace": namespace,
                    "application-autoscaling:scalable-dimension": dimension,
                },
            )
        ]
        return requests + _autoscaling_implied(m, c, operation)

    return _map


def _autoscaling_implied(m: _Mapper, c: RecordedCall, operation: str) -> list[Request]:
    """The calls Application Auto Scaling makes on the caller's behalf (documented by AWS)."""
    if c.params["ServiceNamespace"] != "sagemaker":
        return []
    resource_id = c.params["ResourceId"]  # endpoint/<name>/variant/<variant>
    endpoint = _sm_arn(m, c, "endpoint", resource_id.split("/")[1])
    alarms = f"arn:aws:cloudwatch:{c.region}:{m.account}:alarm:TargetTracking-{resource_id}-*"
    if operation == "RegisterScalableTarget":
        slr = (
            f"arn:aws:iam::{m.account}:role/aws-service-role/{AUTOSCALING_SLR_SERVICE}/"
            "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint"
        )
        return [
            _req(c, "sagemaker:DescribeEndpoint", endpoint),
            _req(c, "sagemaker:UpdateEndpointWeightsAndCapacities", endpoint),
            _req(
                c,
                "iam:CreateServiceLinkedRole",
                slr,
                **{"iam:awsservicename": AUTOSCALING_SLR_SERVICE},
            ),
        ]
    target_tracking = c.params.get("PolicyType") == "TargetTrackingScaling"
    if operation == "PutScalingPolicy" and target_tracking:
        return [
            _req(c, "cloudwatch:DescribeAlarms", alarms),
            _req(c, "cloudwatch:PutMetricAlarm", alarms),
        ]
    if operation == "DeleteScalingPolicy":
        # Deleting a target-tracking policy deletes its alarms; harmless for step policies.
        return [
            _req(c, "cloudwatch:DescribeAlarms", alarms),
            _req(c, "cloudwatch:DeleteAlarms", alarms),
        ]
    return []


def _alarm_arn(m: _Mapper, c: RecordedCall, name: str) -> str:
    return f"arn:aws:cloudwatch:{c.region}:{m.account}:alarm:{name}"


def _put_alarm(m: _Mapper, c: RecordedCall) -> list[Request]:
    return [_req(c, "cloudwatch:PutMetricAlarm", _alarm_arn(m, c, c.params["AlarmName"]))]


def _alarms(action: str) -> _Map:
    def _map(m: _Mapper, c: RecordedCall) -> list[Request]:
        names = c.params.get("AlarmNames")
        if not names:
            return [_req(c, action, "*")]
        return [_req(c, action, _alarm_arn(m, c, n)) for n in names]

    return _map


def _put_metric_data(m: _Mapper, c: RecordedCall) -> list[Request]:
    return [
        _req(c, "cloudwatch:PutMetricData", "*", **{"cloudwatch:namespace": c.params["Namespace"]})
    ]


def _logs_group(action: str) -> _Map:
    def _map(m: _Mapper, c: RecordedCall) -> list[Request]:
        group = c.params["logGroupName"]
        arn = f"arn:aws:logs:{c.region}:{m.account}:log-group:{group}"
        stream = c.params.get("logStreamName")
        return [_req(c, action, f"{arn}:log-stream:{stream}" if stream else f"{arn}:*")]

    return _map


def _sns_topic(action: str) -> _Map:
    def _map(m: _Mapper, c: RecordedCall) -> list[Request]:
        arn = c.params.get("TopicArn") or f"arn:aws:sns:{c.region}:{m.account}:{c.params['Name']}"
        return [_req(c, action, arn)]

    return _map


def _free(m: _Mapper, c: RecordedCall) -> list[Request]:
    """Calls that need no IAM permission (sts:GetCallerIdentity)."""
    return []


def _iam_role(action: str) -> _Map:
    def _map(m: _Mapper, c: RecordedCall) -> list[Request]:
        return [_req(c, action, f"arn:aws:iam::{m.account}:role/{c.params['RoleName']}")]

    return _map


_TRAINING = _sm("training-job", "TrainingJobName", role_param="RoleArn")
_TRAINING_READ = _sm("training-job", "TrainingJobName")
_MODEL = _sm("model", "ModelName", role_param="ExecutionRoleArn")
_MODEL_READ = _sm("model", "ModelName")
_CONFIG = _sm("endpoint-config", "EndpointConfigName")
_ENDPOINT = _sm("endpoint", "EndpointName")

_MAPPERS: dict[tuple[str, str], _Map] = {
    ("s3", "PutObject"): _s3_put_object,
    ("s3", "CreateMultipartUpload"): _s3_create_multipart,
    ("s3", "UploadPart"): _s3_multipart_part,
    ("s3", "CompleteMultipartUpload"): _s3_multipart_part,
    ("s3", "AbortMultipartUpload"): _s3_object("s3:AbortMultipartUpload"),
    ("s3", "GetObject"): _s3_object("s3:GetObject"),
    ("s3", "HeadObject"): _s3_object("s3:GetObject"),
    ("s3", "DeleteObject"): _s3_object("s3:DeleteObject"),
    ("s3", "DeleteObjects"): _s3_delete_objects,
    ("s3", "CopyObject"): _s3_copy,
    ("s3", "ListObjects"): _s3_list,
    ("s3", "ListObjectsV2"): _s3_list,
    ("s3", "HeadBucket"): _s3_bucket("s3:ListBucket"),
    ("s3", "GetBucketLocation"): _s3_bucket("s3:GetBucketLocation"),
    ("s3", "CreateBucket"): _s3_bucket("s3:CreateBucket"),
    ("s3", "GetBucketLifecycleConfiguration"): _s3_bucket("s3:GetLifecycleConfiguration"),
    ("s3", "PutBucketLifecycleConfiguration"): _s3_bucket("s3:PutLifecycleConfiguration"),
    # DeleteBucketLifecycle has no IAM action of its own: S3 authorises it as the Put.
    ("s3", "DeleteBucketLifecycle"): _s3_bucket("s3:PutLifecycleConfiguration"),
    ("sts", "GetCallerIdentity"): _free,
    ("iam", "GetRole"): _iam_role("iam:GetRole"),
    ("sagemaker", "CreateTrainingJob"): _TRAINING("CreateTrainingJob"),
    ("sagemaker", "DescribeTrainingJob"): _TRAINING_READ("DescribeTrainingJob"),
    ("sagemaker", "StopTrainingJob"): _TRAINING_READ("StopTrainingJob"),
    ("sagemaker", "ListTrainingJobs"): _star("sagemaker:ListTrainingJobs"),
    ("sagemaker", "CreateModel"): _MODEL("CreateModel"),
    ("sagemaker", "DescribeModel"): _MODEL_READ("DescribeModel"),
    ("sagemaker", "DeleteModel"): _MODEL_READ("DeleteModel"),
    ("sagemaker", "CreateEndpointConfig"): _CONFIG("CreateEndpointConfig"),
    ("sagemaker", "DescribeEndpointConfig"): _CONFIG("DescribeEndpointConfig"),
    ("sagemaker", "DeleteEndpointConfig"): _CONFIG("DeleteEndpointConfig"),
    ("sagemaker", "CreateEndpoint"): _ENDPOINT("CreateEndpoint"),
    ("sagemaker", "DescribeEndpoint"): _ENDPOINT("DescribeEndpoint"),
    ("sagemaker", "DeleteEndpoint"): _ENDPOINT("DeleteEndpoint"),
    ("sagemaker", "UpdateEndpoint"): _ENDPOINT("UpdateEndpoint"),
    ("sagemaker", "ListTags"): _sm_list_tags,
    ("sagemaker-runtime", "InvokeEndpointAsync"): _invoke_async,
    ("application-autoscaling", "RegisterScalableTarget"): _autoscaling("RegisterScalableTarget"),
    ("application-autoscaling", "DeregisterScalableTarget"): _autoscaling(
        "DeregisterScalableTarget"
    ),
    ("application-autoscaling", "PutScalingPolicy"): _autoscaling("PutScalingPolicy"),
    ("application-autoscaling", "DeleteScalingPolicy"): _autoscaling("DeleteScalingPolicy"),
    ("application-autoscaling", "DescribeScalableTargets"): _star(
        "application-autoscaling:DescribeScalableTargets"
    ),
    ("application-autoscaling", "DescribeScalingPolicies"): _star(
        "application-autoscaling:DescribeScalingPolicies"
    ),
    ("cloudwatch", "PutMetricAlarm"): _put_alarm,
    ("cloudwatch", "DeleteAlarms"): _alarms("cloudwatch:DeleteAlarms"),
    ("cloudwatch", "DescribeAlarms"): _alarms("cloudwatch:DescribeAlarms"),
    ("cloudwatch", "PutMetricData"): _put_metric_data,
    ("logs", "DescribeLogStreams"): _logs_group("logs:DescribeLogStreams"),
    ("logs", "GetLogEvents"): _logs_group("logs:GetLogEvents"),
    ("logs", "CreateLogStream"): _logs_group("logs:CreateLogStream"),
    ("logs", "PutLogEvents"): _logs_group("logs:PutLogEvents"),
    ("sns", "CreateTopic"): _sns_topic("sns:CreateTopic"),
    ("sns", "Publish"): _sns_topic("sns:Publish"),
    ("ecr", "GetAuthorizationToken"): _star("ecr:GetAuthorizationToken"),
}


def required_requests(calls: Sequence[RecordedCall], *, account: str) -> list[Request]:
    """Map recorded calls, in order, to the IAM requests AWS authorises for them.

    Raises:
        UnmappedCallError: naming every call with no mapping.
    """
    unmapped = sorted({str(c) for c in calls if (c.service, c.operation) not in _MAPPERS})
    if unmapped:
        raise UnmappedCallError(
            f"no IAM mapping for {', '.join(unmapped)}: add them to tests/iam/recorder.py"
        )
    mapper = _Mapper(account=account)
    return [r for c in calls for r in _MAPPERS[(c.service, c.operation)](mapper, c)]


@contextmanager
def enforce_policies(policies: Sequence[Any], *, account: str) -> Iterator[list[Request]]:
    """Act as a principal holding only ``policies``: a call they do not allow is refused.

    Each botocore call made inside the block is mapped to its IAM requests
    (:func:`required_requests`) and evaluated; any request that is not allowed makes the call
    fail before it runs with the ``AccessDenied`` error AWS answers. Yields the refused requests.
    """
    from tests.iam.evaluator import Decision, evaluate

    refused: list[Request] = []
    original = BaseClient._make_api_call

    def _enforcing(client: BaseClient, operation_name: str, api_params: dict[str, Any]) -> Any:
        call = RecordedCall(service=client.meta.service_model.service_name,
                            operation=operation_name, params=dict(api_params),
                            region=client.meta.region_name,
                            secure=client.meta.endpoint_url.startswith("https://"))
        denied = [r for r in required_requests([call], account=account)
                  if evaluate(policies, r) is not Decision.ALLOW]
        if denied:
            refused.extend(denied)
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": f"not authorized to"
                                         f" perform {denied[0].action} on {denied[0].resource}"},
                               "ResponseMetadata": {"HTTPStatusCode": 403}}, operation_name)
        return original(client, operation_name, api_params)

    with mock.patch.object(BaseClient, "_make_api_call", _enforcing):
        yield refused
