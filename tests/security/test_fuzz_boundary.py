"""Oracle-based fuzz of the S3 boundary: nothing outside the allow-list is read or answered from.

Layout: bucket ``B`` with the allow-list ``s3://B/client`` (no trailing slash: what
local_mode/stack.py deploys), good objects under ``B/client/`` and *distinguishable* objects
planted outside it: under sibling prefixes (``client-evil``, ``clientx``, ``Client``, ...), at
the bucket root, in another bucket ``O``, and at literal S3 keys that only a dot-segment, encoded
or doubled ``/`` URI names (``client/../client-evil/...``, ``client/%2e%2e/...``,
``client//...``). Every planted ciphertext encrypts another row than the good one, so a result
computed from it decrypts to another prediction.

URIs come from a grammar (scheme, bucket, root, segments, separators and suffix, plus
percent-encodings, case flips, look-alike characters and dot-segments applied to the planted
and good keys), for every URI field: ``evaluation_keys_uri``, ``encrypted_query_uri``,
``encrypted_query_uris`` and ``encrypted_batch_uri``, and the runtime's ``InputLocation``.

Oracles, per example:

1. every S3 request the server sent is for a key the *reference* (below, written apart from
   ``common/s3_location.py``) allows: seen at botocore's ``before-send`` (the request line S3
   receives) in process, and in moto's own request log through the real ``serve``;
2. a 2xx decrypts to the good row's prediction, never the planted row's;
3. a request naming any URI the reference refuses is a 400/403 sent before any S3 request,
   and one naming only allowed URIs is not refused for its URIs (the matcher does not over-refuse);
4. never a 5xx, every error is the contract's JSON; no worker dies; a good query decrypts after.

Positive controls show the same oracles flag a planted read when the allow-list lets it through.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import boto3
import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.serving import make_server

from common.contract import (
    build_request,
    pack_batch,
    parse_error_body,
    unpack_batch,
)
from inference.predictor import create_app
from inference.s3_store import make_s3_client
from inference.settings import parse_allowed_prefix
from local_mode.processes import free_port
from local_mode.runtime import LocalAsyncRuntime
from local_mode.s3_server import LOCAL_REGION, LocalS3Server
from tests.fixtures.models import FixtureModel
from tests.fixtures.s3_reads import S3RequestLog
from tests.fixtures.serving import KeyedClient, serve_process, server_settings
from tests.security.conftest import worker_pid

BUDGET_PER_FIELD = 800  # in process, per URI field (4 fields)
BUDGET_RUNTIME = 500  # InputLocation through the local runtime
BUDGET_SERVE = 150  # through nginx + gunicorn, checked against moto's log

FIELDS = ("keys", "query", "queries", "batch")
LEAVES = ("keys/k.ekl", "queries/q.bin", "queries/b.fheb", "requests/r.json")
SIBLINGS = ("client-evil", "clientx", "client.evil", "client_evil", "client-", "client.",
            "client=", "client(1)", "Client", "CLIENT", "other", "cl")
# Literal S3 keys inside "client/" that only a refused URI form names.
ODD_KEYS = ("client/../client-evil/queries/q.bin", "client/./queries/q.bin",
            "client//queries/q.bin", "client/%2e%2e/client-evil/queries/q.bin",
            "client%2fqueries%2fq.bin", "client/queries/q.bin%0a", "client/queries/q.bin ",
            "client/QUERIES/q.bin")


def fuzz_settings(examples: int) -> settings:
    """A fixed, reproducible budget (no example database, no deadline)."""
    return settings(max_examples=examples, derandomize=True, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


# -- the reference: what may be read, written apart from common/s3_location.py ---------------

_REF_SEGMENT = re.compile(r"[A-Za-z0-9!_.'()=-]+", re.ASCII)


def reference_allows(bucket: str, key: str, *, allowed_bucket: str) -> bool:
    """``key`` lies in ``s3://<allowed_bucket>/client/`` and every segment is plain."""
    parts = key.split("/")
    return (bucket == allowed_bucket and len(parts) >= 2 and parts[0] == "client"
            and len(key) <= 1024
            and all(_REF_SEGMENT.fullmatch(p) and p not in (".", "..") for p in parts))


def reference_uri(uri: str, *, allowed_bucket: str) -> bool:
    """The same for a URI string."""
    if not uri.startswith("s3://"):
        return False
    bucket, sep, key = uri[len("s3://"):].partition("/")
    return sep == "/" and reference_allows(bucket, key, allowed_bucket=allowed_bucket)


# -- the world: buckets, good objects, planted objects ---------------------------------------


@dataclass
class World:
    """The buckets and objects of the fuzz, and the rows they encrypt."""

    s3: Any
    fhe: KeyedClient
    bucket: str
    other: str
    good_row: np.ndarray
    planted_row: np.ndarray
    planted: set[tuple[str, str]] = field(default_factory=set)

    @property
    def good_uris(self) -> dict[str, str]:
        return {leaf: f"s3://{self.bucket}/client/{leaf}" for leaf in LEAVES}

    def put(self, bucket: str, key: str, body: bytes) -> None:
        self.s3.put_object(Bucket=bucket, Key=key, Body=body, ServerSideEncryption="AES256")

    def populate(self) -> None:
        """Upload the good objects and plant the look-alikes."""
        good_q, bad_q = self.fhe.encrypt(self.good_row), self.fhe.encrypt(self.planted_row)
        good_request = build_request(evaluation_keys_uri=self.good_uris["keys/k.ekl"],
                                     encrypted_query_uri=self.good_uris["queries/q.bin"])
        good = {"keys/k.ekl": self.fhe.keys, "queries/q.bin": good_q,
                "queries/b.fheb": pack_batch([good_q]), "requests/r.json": good_request}
        # A planted request names good objects: reading it would produce an output object.
        bad = {**good, "queries/q.bin": bad_q, "queries/b.fheb": pack_batch([bad_q])}
        for leaf, body in good.items():
            self.put(self.bucket, f"client/{leaf}", body)
        places = [(self.bucket, f"{root}/") for root in SIBLINGS] + [(self.bucket, "")]
        places += [(self.other, "client/"), (self.other, "client-evil/"), (self.other, "")]
        for bucket, root in places:
            for leaf, body in bad.items():
                self.put(bucket, f"{root}{leaf}", body)
                self.planted.add((bucket, f"{root}{leaf}"))
        for key in ODD_KEYS:
            self.put(self.bucket, key, bad_q)
            self.planted.add((self.bucket, key))

    def violations(self, reads: list[tuple[str, str]], results: list[bytes]) -> list[str]:
        """Oracles 1 and 2: reads outside the reference, answers from a planted row."""
        problems = [f"read s3://{b}/{k!r}" for b, k in reads
                    if not reference_allows(b, k, allowed_bucket=self.bucket)]
        problems += [f"read planted s3://{b}/{k!r}" for b, k in reads if (b, k) in self.planted]
        expected = self.fhe.expected(self.good_row)
        for result in results:
            got = self.fhe.decrypt(result)
            if not np.allclose(got, expected):
                planted = np.allclose(got, self.fhe.expected(self.planted_row))
                source = "the planted row" if planted else "?"
                problems.append(f"a 2xx decrypts to {got} ({source})")
        return problems


@pytest.fixture(scope="module")
def world(s3_server: LocalS3Server, keyed: dict[str, KeyedClient]) -> World:
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name=LOCAL_REGION)
    return _world(s3, keyed["linear"])


def _world(s3: Any, fhe: KeyedClient) -> World:
    tag = uuid.uuid4().hex[:8]
    world = World(s3, fhe, f"fhe-demo-{tag}", f"fhe-other-{tag}", fhe.model.scaled_test[0],
                  fhe.model.scaled_test[5])
    assert not np.allclose(fhe.expected(world.good_row), fhe.expected(world.planted_row))
    for bucket in (world.bucket, world.other):
        s3.create_bucket(Bucket=bucket)
    world.populate()
    return world


# -- the grammar of URIs ---------------------------------------------------------------------

_LOOKALIKES = {"c": "\u0441", "l": "\u217c", "i": "\u0456", "e": "\u0435", "/": "\u2215",
               ".": "\u2024", "-": "\u2010"}
_SEGMENTS = ("keys", "queries", "requests", "k.ekl", "q.bin", "b.fheb", "r.json", ".", "..", "",
             "%2e%2e", "%2E%2E", ".%2e", "%2e", "%2f", "%2F", "%5c", "%00", "client",
             "client-evil", "CLIENT", "~", "*", "$", "..%2f", "%252e%252e")
_SEPARATORS = ("/", "/", "/", "/", "//", "\\", "%2f", "%2F", "/./", "/../", "\\/")
_SUFFIXES = ("", "", "", "\n", "\r\n", "\r", "\x00", " ", "\t", "\x0b", "?versionId=1",
             "#frag", "\u2028", "\x85", "\ud800", "/", "%0a", "%00", "\ufeff")
_SCHEMES = ("s3://", "s3://", "s3://", "S3://", "s3:/", "s3:///", "s3:\\\\", "https://",
            "s3://s3://")


@st.composite
def _grammar_uri(draw: st.DrawFn, world: World) -> str:
    b, o = world.bucket, world.other
    bucket = draw(st.sampled_from((b, b, b, o, b.upper(), b + ".", "." + b, b + "%2f", "",
                                   b.replace("-", "\u2010"), f"{b}.s3.amazonaws.com",
                                   f"{b}/client", b + "\n")))
    root = draw(st.sampled_from(("client", "client", "client", *SIBLINGS,
                                 "cl\u0456ent", "\uff43lient", "client\u200b", "")))
    parts = draw(st.lists(st.one_of(st.sampled_from(_SEGMENTS), st.text(max_size=5)),
                          max_size=3))
    leaf = draw(st.sampled_from(LEAVES))
    path = root
    for part in [*parts, *leaf.split("/")]:
        path += draw(st.sampled_from(_SEPARATORS)) + part
    return draw(st.sampled_from(_SCHEMES)) + bucket + "/" + path + draw(
        st.sampled_from(_SUFFIXES))


@st.composite
def _disguised_uri(draw: st.DrawFn, world: World) -> str:
    """A planted or good key, disguised: %-encoding, case, look-alikes, dot-segments."""
    bucket, key = draw(st.sampled_from(sorted(world.planted) + [
        (world.bucket, f"client/{leaf}") for leaf in LEAVES]))
    out = []
    for ch in key:
        op = draw(st.sampled_from(("keep",) * 8 + ("pct", "PCT", "case", "look")))
        if op == "pct":
            out.append(f"%{ord(ch):02x}" if ord(ch) < 256 else ch)
        elif op == "PCT":
            out.append(f"%{ord(ch):02X}" if ord(ch) < 256 else ch)
        elif op == "case":
            out.append(ch.swapcase())
        else:
            out.append(_LOOKALIKES.get(ch, ch) if op == "look" else ch)
    path = "".join(out)
    detour = draw(st.sampled_from(("", "", "client/../", "client/./", "client/x/../../",
                                   "./", "client/%2e%2e/", "client//../")))
    return f"s3://{bucket}/{detour}{path}"


_LEGAL_SEGMENT = st.text(alphabet="abcXYZ019!-_.'()=", min_size=1, max_size=8).filter(
    lambda s: s not in (".", ".."))


def _inside_uri(world: World) -> st.SearchStrategy[str]:
    """Unusual but legal keys under client/ (mostly missing objects): must not be refused."""
    return st.lists(_LEGAL_SEGMENT, min_size=1, max_size=4).map(
        lambda parts: f"s3://{world.bucket}/client/{'/'.join(parts)}")


def uris(world: World) -> st.SearchStrategy[str]:
    """URIs to try: mostly near-misses of the allow-list, sometimes legal ones inside it."""
    return st.one_of(_grammar_uri(world), _grammar_uri(world), _disguised_uri(world),
                     _inside_uri(world), st.sampled_from(sorted(world.good_uris.values())))


def request_with(world: World, field_name: str, uri: str) -> tuple[bytes, list[str]]:
    """A request whose ``field_name`` is ``uri`` (the others good), and all its URIs."""
    good = world.good_uris
    keys = uri if field_name == "keys" else good["keys/k.ekl"]
    if field_name == "queries":
        queries = [good["queries/q.bin"], uri]
        doc = {"evaluation_keys_uri": keys, "encrypted_query_uris": queries}
    elif field_name == "batch":
        queries = [uri]
        doc = {"evaluation_keys_uri": keys, "encrypted_batch_uri": uri}
    else:
        queries = [uri if field_name == "query" else good["queries/q.bin"]]
        doc = {"evaluation_keys_uri": keys, "encrypted_query_uri": queries[0]}
    return json.dumps(doc).encode(), [keys, *queries]


def check_response(world: World, status: int, body: bytes, content_type: str,
                   reads: list[tuple[str, str]], uris_sent: list[str]) -> None:
    """Oracles 1-4 for one response to a request naming ``uris_sent``."""
    assert status < 500, (status, body[:300])
    results: list[bytes] = []
    message = ""
    if 200 <= status < 300:
        results = unpack_batch(body) if content_type.startswith(
            "application/vnd.fhe-batch") else [body]
    else:
        parsed_status, code, message = parse_error_body(body)
        assert parsed_status == status and code and message, body[:300]
    problems = world.violations(reads, results)
    assert not problems, (uris_sent, problems)
    outside = [u for u in uris_sent if not reference_uri(u, allowed_bucket=world.bucket)]
    if outside:
        assert status in (400, 403), (outside, status, body[:300])
        assert reads == [], (outside, reads)
    else:  # not refused for its URIs (a 400 for an object's bytes is fine)
        assert status != 403 and "must look like" not in message, (uris_sent, body[:300])


# -- in process: every URI field --------------------------------------------------------------


@dataclass
class InProcessServer:
    """create_app with the boundary's allow-list; ``log`` sees every request it sends to S3."""

    app: Any
    log: S3RequestLog


def _in_process(world: World, model: FixtureModel, s3_server: LocalS3Server, cache: Path,
                allowed: str) -> InProcessServer:
    config = server_settings(model, s3_server, world.bucket, cache, key_cache_max_bytes=16 << 20,
                             allowed_prefixes=(parse_allowed_prefix(allowed),))
    s3 = make_s3_client(config)
    log = S3RequestLog.attach(s3)
    return InProcessServer(create_app(config, s3_client=s3), log)


@pytest.fixture(scope="module")
def server(world: World, fixture_models: dict[str, FixtureModel], s3_server: LocalS3Server,
           tmp_path_factory: pytest.TempPathFactory) -> InProcessServer:
    return _in_process(world, fixture_models["linear"], s3_server,
                       tmp_path_factory.mktemp("boundary-cache"), f"s3://{world.bucket}/client")


def _post(server: InProcessServer, body: bytes) -> tuple[int, bytes, str]:
    server.log.clear()
    response = server.app.test_client().post("/invocations", data=body,
                                             content_type="application/json")
    return response.status_code, response.get_data(), response.content_type or ""


@pytest.mark.parametrize("field_name", FIELDS)
def test_no_uri_outside_the_allow_list_is_read_or_answered_from(
        world: World, server: InProcessServer, field_name: str) -> None:
    seen = {"refused": 0, "answered": 0}

    @fuzz_settings(BUDGET_PER_FIELD)
    @given(uri=uris(world))
    def prop(uri: str) -> None:
        body, sent = request_with(world, field_name, uri)
        status, data, content_type = _post(server, body)
        check_response(world, status, data, content_type, server.log.reads(), sent)
        seen["refused" if status in (400, 403) else "answered"] += 1

    prop()
    assert seen["refused"] > BUDGET_PER_FIELD // 2, seen
    assert seen["answered"] > BUDGET_PER_FIELD // 10, seen
    status, data, _ = _post(server, request_with(
        world, "query", world.good_uris["queries/q.bin"])[0])
    assert status == 200
    assert world.violations(server.log.reads(), [data]) == []


def test_positive_control_the_oracles_flag_a_read_the_allow_list_lets_through(
        world: World, fixture_models: dict[str, FixtureModel], s3_server: LocalS3Server,
        tmp_path: Path) -> None:
    """With the whole bucket allowed, the planted sibling is read and answered from."""
    lax = _in_process(world, fixture_models["linear"], s3_server, tmp_path,
                      f"s3://{world.bucket}")
    uri = f"s3://{world.bucket}/client-evil/queries/q.bin"
    body, sent = request_with(world, "query", uri)
    status, data, content_type = _post(lax, body)
    assert status == 200
    problems = world.violations(lax.log.reads(), [data])
    assert any("read planted" in p for p in problems), problems
    assert any("the planted row" in p for p in problems), problems
    with pytest.raises(AssertionError):
        check_response(world, status, data, content_type, lax.log.reads(), sent)


# -- the runtime's InputLocation --------------------------------------------------------------


@pytest.fixture(scope="module")
def container(server: InProcessServer) -> Iterator[str]:
    """The in-process app on a loopback HTTP port (the runtime's container)."""
    http = make_server("127.0.0.1", free_port(), server.app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{http.server_port}"
    http.shutdown()


def _wait_either(s3: Any, *uris: str, timeout: float = 60) -> tuple[str, bytes]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for uri in uris:
            bucket, key = uri.removeprefix("s3://").split("/", 1)
            try:
                return uri, s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            except s3.exceptions.NoSuchKey:
                pass
        time.sleep(0.01)
    raise AssertionError(f"none of {uris} appeared within {timeout} s")


def test_no_input_location_outside_the_allow_list_is_read(
        world: World, container: str, server: InProcessServer, s3_server: LocalS3Server) -> None:
    runtime_s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name=LOCAL_REGION)
    log = S3RequestLog.attach(runtime_s3)
    seen = {"refused": 0, "run": 0, "unsendable": 0}
    with LocalAsyncRuntime(endpoint_name="boundary", container_url=container,
                           output_path=f"s3://{world.other}/async-out",
                           failure_path=f"s3://{world.other}/async-fail", s3_client=runtime_s3,
                           allowed_input_prefixes=[
                               parse_allowed_prefix(f"s3://{world.bucket}/client")]) as runtime:
        http = requests.Session()
        url = f"{runtime.url}/endpoints/boundary/async-invocations"

        @fuzz_settings(BUDGET_RUNTIME)
        @given(uri=uris(world))
        def prop(uri: str) -> None:
            log.clear()
            server.log.clear()
            allowed = reference_uri(uri, allowed_bucket=world.bucket)
            if "\r" in uri or "\n" in uri:  # no HTTP client can send it as a header
                seen["unsendable"] += 1
                return
            # Raw HTTP, the bytes a client would send (UTF-8), past any client-side check.
            response = http.post(url, timeout=30, headers={
                "X-Amzn-SageMaker-InputLocation": uri.encode("utf-8", "surrogatepass")})
            if response.status_code == 400:
                assert response.headers["x-amzn-ErrorType"] == "ValidationError"
                assert not allowed, (uri, response.text)
                seen["refused"] += 1
                return
            assert response.status_code == 202, (uri, response.status_code, response.text)
            output, failure = (response.headers[f"X-Amzn-SageMaker-{name}"]
                               for name in ("OutputLocation", "FailureLocation"))
            where, body = _wait_either(world.s3, output, failure)
            reads = log.reads()  # the runtime only writes besides reading InputLocation
            assert world.violations(reads, []) == [], uri
            assert world.violations(server.log.reads(), []) == [], uri
            if not allowed:
                assert where == failure, uri
                assert parse_error_body(body)[:2] == (403, "AccessDenied"), (uri, body)
                assert reads == [], (uri, reads)
                seen["refused"] += 1
            else:
                seen["run"] += 1
                if where == output:
                    assert world.violations([], [body]) == []

        prop()
    assert seen["refused"] > BUDGET_RUNTIME // 2 and seen["run"] > BUDGET_RUNTIME // 20, seen


# -- through the real serve, checked against moto's own request log --------------------------

_LOG_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[0-9.]+" (?P<status>[0-9]{3})')


def moto_reads(log: Path) -> list[tuple[str, str]]:
    """``(bucket, key)`` of every object GET/HEAD in a moto server's request log."""
    reads = []
    for match in _LOG_LINE.finditer(log.read_text(errors="replace")):
        path = urlsplit(match["path"]).path
        bucket, _, key = unquote(path).lstrip("/").partition("/")
        if match["method"] in ("GET", "HEAD") and key and bucket != "moto-api":
            reads.append((bucket, key))
    return reads


@pytest.fixture(scope="module")
def own_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalS3Server, Path]]:
    """A moto server of this test alone, so its request log holds only this test's reads."""
    log = tmp_path_factory.mktemp("boundary-s3") / "moto.log"
    with LocalS3Server(log_path=log) as server:
        yield server, log


def test_through_serve_moto_never_serves_a_planted_object(
        own_s3: tuple[LocalS3Server, Path], fixture_models: dict[str, FixtureModel],
        keyed: dict[str, KeyedClient], tmp_path: Path) -> None:
    s3_server, moto_log = own_s3
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name=LOCAL_REGION)
    world = _world(s3, keyed["linear"])
    settings_ = server_settings(fixture_models["linear"], s3_server, world.bucket,
                                tmp_path / "cache", port=free_port(), host="127.0.0.1",
                                timeout=60, allowed_prefixes=(
                                    parse_allowed_prefix(f"s3://{world.bucket}/client"),))
    # Positive control: moto's log does show a read of a planted object.
    start = moto_log.stat().st_size
    s3.get_object(Bucket=world.bucket, Key="client-evil/queries/q.bin")
    assert ("GET" in moto_log.read_text()[start:]
            and world.violations(moto_reads(moto_log), []) != [])
    with serve_process(settings_, tmp_path / "serve.log", extra_env=s3_server.env()) as serve:
        pid = worker_pid(serve.url)
        start = moto_log.stat().st_size
        http = requests.Session()

        @fuzz_settings(BUDGET_SERVE)
        @given(uri=uris(world), field_name=st.sampled_from(FIELDS))
        def prop(uri: str, field_name: str) -> None:
            body, sent = request_with(world, field_name, uri)
            response = http.post(f"{serve.url}/invocations", data=body, timeout=60,
                                 headers={"Content-Type": "application/json"})
            check_response(world, response.status_code, response.content,
                           response.headers.get("Content-Type", ""), [], sent)

        prop()
        good = http.post(f"{serve.url}/invocations", timeout=60, data=request_with(
            world, "query", world.good_uris["queries/q.bin"])[0])
        assert good.status_code == 200
        assert world.violations([], [good.content]) == []
        assert worker_pid(serve.url) == pid, "a gunicorn worker was replaced during the fuzz"
        time.sleep(0.2)  # let moto flush its last log lines
        log_part = moto_log.read_text(errors="replace")[start:]
    tail = tmp_path / "moto-during-fuzz.log"
    tail.write_text(log_part)
    reads = moto_reads(tail)
    assert reads, "moto logged no read at all: the log oracle is blind"
    assert world.violations(reads, []) == []
