"""Fuzz of the local runtime's ``InvokeEndpointAsync`` headers against the service model.

The runtime derives its checks from botocore's sagemaker-runtime model
(``local_mode/api_model.py``). The oracle here is written apart from that code: one
predicate per header, by hand, from the constraint text the model publishes, and a test pins
that text so a botocore upgrade that changes a constraint fails here until the oracle follows.
Requests are raw HTTP (no client-side checks); values are any text without CR/LF, sent as
UTF-8 bytes.

Property: a request is accepted (202, the locations named from ``Filename``/``InferenceId``)
exactly when every header satisfies its constraints; otherwise it is one AWS-style
``ValidationError`` naming exactly the failing members.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from local_mode.api_model import operation_rules
from local_mode.processes import free_port
from local_mode.runtime import LocalAsyncRuntime

BUDGET = 400
ENDPOINT = "fhe-header-fuzz"

_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_JAVA_SPACE = " \t\n\x0b\f\r"


def _ascii(value: str) -> bool:
    return all(ord(c) < 0x80 for c in value)


def _integer_in(low: int, high: int) -> Callable[[str], bool]:
    return lambda v: bool(re.fullmatch(r"-?[0-9]{1,10}", v, re.ASCII)) and low <= int(v) <= high


# member -> (header, (min, max, pattern) as the model states them, the hand-written predicate)
ORACLE: dict[str, tuple[str, tuple[Any, Any, Any], Callable[[str], bool]]] = {
    "ContentType": ("X-Amzn-SageMaker-Content-Type", (None, 1024, r"\p{ASCII}*"),
                    lambda v: len(v) <= 1024 and _ascii(v)),
    "Accept": ("X-Amzn-SageMaker-Accept", (None, 1024, r"\p{ASCII}*"),
               lambda v: len(v) <= 1024 and _ascii(v)),
    "CustomAttributes": ("X-Amzn-SageMaker-Custom-Attributes", (None, 1024, r"\p{ASCII}*"),
                         lambda v: len(v) <= 1024 and _ascii(v)),
    "InferenceId": ("X-Amzn-SageMaker-Inference-Id", (1, 64, r"\A\S[\p{Print}]*\z"),
                    lambda v: 1 <= len(v) <= 64 and v[0] not in _JAVA_SPACE
                    and all(0x20 <= ord(c) <= 0x7E for c in v[1:])),
    "S3OutputPathExtension": (
        "X-Amzn-SageMaker-S3OutputPathExtension",
        (1, 512, r"^(?!s3:|https:)[a-zA-Z0-9!_.*'()/-]+$"),
        lambda v: 1 <= len(v) <= 512 and not v.startswith(("s3:", "https:"))
        and all(c in _ALNUM + "!_.*'()/-" for c in v)),
    "Filename": ("X-Amzn-SageMaker-Filename", (1, 32, r"^(?!.*\..*\.)[a-zA-Z0-9][a-zA-Z0-9-_\.]*$"),
                 lambda v: 1 <= len(v) <= 32 and v[0] in _ALNUM and v.count(".") < 2
                 and all(c in _ALNUM + "-_." for c in v)),
    "RequestTTLSeconds": ("X-Amzn-SageMaker-RequestTTLSeconds", (60, 21600, None),
                          _integer_in(60, 21600)),
    "InvocationTimeoutSeconds": ("X-Amzn-SageMaker-InvocationTimeoutSeconds", (1, 3600, None),
                                 _integer_in(1, 3600)),
}


def test_the_oracle_follows_the_service_model() -> None:
    """A botocore upgrade that moves a constraint fails here: update ORACLE with it."""
    rules = operation_rules()
    for name, (header, constraints, _) in ORACLE.items():
        rule = rules.member(name)
        assert (rule.wire_name, (rule.minimum, rule.maximum, rule.pattern)) == (
            header, constraints), f"the service model changed {name}: update ORACLE"
    headers = {rule.name for rule in rules.members if rule.location == "header"}
    assert headers - set(ORACLE) == {"InputLocation"}  # the boundary fuzz covers it


# -- values -------------------------------------------------------------------------------------

# Sendable header text: no CR/LF, no leading blank (HTTP strips it).
_latin1 = st.characters(max_codepoint=0xFF, exclude_characters="\r\n")
_any = st.characters(exclude_characters="\r\n", exclude_categories=["Cs"])
_printable = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


def _sendable(value: str) -> str:
    return value.lstrip(" \t")


def _text_around(limit: int) -> st.SearchStrategy[str]:
    """Text of a length near ``limit`` (the boundary), mostly printable ASCII."""
    return st.builds(lambda n, c: c * n, st.sampled_from([limit - 1, limit, limit + 1]),
                     st.sampled_from(["a", "7", "-", ".", "\x7f", "\xe9"]))


def values_for(name: str) -> st.SearchStrategy[str]:
    """Valid, boundary and hostile values for one member."""
    _, (low, high, _), _ = ORACLE[name]
    common = [st.text(_latin1, max_size=40), st.text(_printable, max_size=40),
              st.text(_any, max_size=10)]
    if name in ("RequestTTLSeconds", "InvocationTimeoutSeconds"):
        numbers = st.integers(low - 2, high + 2).map(str) | st.sampled_from(
            [str(low), str(high), f"+{low}", f"0{low}", f"{low}.0", "-0", "6_0", "\u0666\u0660",
             "99999999999", f"{low} "])
        return st.one_of(numbers, numbers, *common)
    special = {
        "InferenceId": st.sampled_from(["a", "a b", "\x7fa", "\xe9a", "a\x7f", "a\t", "~!@",
                                        "id/../x", "i" * 64]),
        "Filename": st.sampled_from(["a.out", "a.b.c", "a/b", "-a", "a..b", "A_b-c.txt", ".a",
                                     "a" * 32, "f" * 28 + ".out"]),
        "S3OutputPathExtension": st.sampled_from(["a/b", "s3:x", "https:x", "http:x", "..", "*",
                                                  "a b", "/x/", "x" * 512]),
    }.get(name, st.sampled_from(["application/json", "", "\x00", "é", "x" * 1024]))
    return st.one_of(special, special, _text_around(high or 1024), *common).map(_sendable)


@st.composite
def header_sets(draw: st.DrawFn) -> dict[str, str]:
    names = draw(st.lists(st.sampled_from(sorted(ORACLE)), unique=True, max_size=4))
    return {name: draw(values_for(name)) for name in names}


# -- the fuzz -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runtime(s3_server: Any) -> Iterator[LocalAsyncRuntime]:
    """A runtime whose container is unreachable: accepted jobs fail reading their input."""
    import boto3

    from local_mode.s3_server import LOCAL_REGION

    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name=LOCAL_REGION)
    bucket = f"headers-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    with LocalAsyncRuntime(endpoint_name=ENDPOINT, container_url=f"http://127.0.0.1:{free_port()}",
                           output_path=f"s3://{bucket}/out", failure_path=f"s3://{bucket}/fail",
                           s3_client=s3) as rt:
        yield rt


def test_headers_are_accepted_exactly_when_the_service_model_allows_them(
        runtime: LocalAsyncRuntime) -> None:
    http = requests.Session()
    url = f"{runtime.url}/endpoints/{ENDPOINT}/async-invocations"
    seen = {"accepted": 0, "refused": 0}

    @settings(max_examples=BUDGET, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(sent=header_sets())
    def prop(sent: dict[str, str]) -> None:
        # Header bytes are UTF-8 on the wire and read back as latin-1, as HTTP servers do.
        headers = {ORACLE[name][0]: value.encode("utf-8") for name, value in sent.items()}
        values = {name: value.encode("utf-8").decode("latin-1") for name, value in sent.items()}
        headers["X-Amzn-SageMaker-InputLocation"] = b"s3://no-such-bucket-x/in.json"
        response = http.post(url, headers=headers, timeout=30)
        failing = sorted(name for name, value in values.items() if not ORACLE[name][2](value))
        if not failing:
            assert response.status_code == 202, (values, response.text)
            doc = response.json()
            expected_name = values.get("Filename") or f"{doc['InferenceId']}.out"
            assert response.headers["X-Amzn-SageMaker-OutputLocation"].endswith(
                "/" + expected_name), (values, response.headers)
            if "InferenceId" in values:
                assert doc["InferenceId"] == values["InferenceId"]
            seen["accepted"] += 1
            return
        assert response.status_code == 400, (values, failing, response.text)
        assert response.headers["x-amzn-ErrorType"] == "ValidationError"
        message = response.json()["message"]
        count = int(re.match(r"(\d+) validation errors? detected: ", message)[1])
        named = set(re.findall(r"at '(\w+)' failed to satisfy constraint", message))
        assert named == {n[0].lower() + n[1:] for n in failing}, (values, message)
        assert count >= len(failing)
        seen["refused"] += 1

    prop()
    assert seen["accepted"] > BUDGET // 10 and seen["refused"] > BUDGET // 4, seen
