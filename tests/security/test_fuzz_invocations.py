"""Property-based fuzz of ``POST /invocations``: JSON shapes, URIs, ciphertext and key bytes, sizes.

In process (Flask test client on ``create_app``, real moto S3 over HTTP) with a fixed,
derandomised budget; then a smaller budget through the real `serve` (nginx + gunicorn) to show
no worker dies. Properties: a client error is never a 500 (nor a 503 while S3 is up), every
error body is the contract's JSON with the response's status, and afterwards a good query
still decrypts to the clear quantised model's output.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import boto3
import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import contract
from common.contract import (
    FIELD_BATCH,
    FIELD_FINGERPRINT,
    FIELD_KEYS,
    FIELD_KEYS_SHA,
    FIELD_QUERIES,
    FIELD_QUERY,
    FIELD_QUERY_SHA,
    build_request,
    pack_batch,
    parse_error_body,
    sha256_hex,
    unpack_batch,
)
from inference.predictor import create_app
from inference.s3_store import make_s3_client
from local_mode.s3_server import LOCAL_REGION
from tests.fixtures.serving import KeyedClient, Uploader, server_settings
from tests.security.conftest import worker_pid

CLIENT_ERRORS = {400, 403, 404, 413, 422}
RUNS: Counter[str] = Counter()  # examples run per fuzz (see the report)


def fuzz_settings(examples: int) -> settings:
    """A fixed, reproducible budget (no example database, no deadline)."""
    return settings(max_examples=examples, derandomize=True, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


def check(status: int, body: bytes, *, allow_ok: bool = True) -> None:
    """A client error: a 4xx with the contract's error body (or a 200 if allowed)."""
    if status == 200 and allow_ok:
        return
    assert status in CLIENT_ERRORS, (status, body[:500])
    parsed_status, code, message = parse_error_body(body)
    assert parsed_status == status and code and message, body[:500]


# -- mutations of real bytes --------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """Bit flips (mostly in the structural head), truncation, extension, splices, garbage."""
    data = bytearray(original)
    op = draw(st.sampled_from(["flip", "truncate", "extend", "splice", "word", "garbage"]))
    if op == "flip":
        for _ in range(draw(st.integers(1, 4))):
            limit = min(len(data), 4096) if draw(st.booleans()) else len(data)
            index = draw(st.integers(0, limit - 1))
            data[index] ^= 1 << draw(st.integers(0, 7))
    elif op == "truncate":
        del data[draw(st.integers(0, len(data) - 1)):]
    elif op == "extend":
        data += draw(st.binary(min_size=1, max_size=64))
    elif op == "splice":
        index = draw(st.integers(0, min(len(data), 2048) - 1))
        data[index : index + 8] = draw(st.binary(min_size=8, max_size=8))
    elif op == "word":
        index = draw(st.integers(0, min(len(data), 2048) - 4))
        value = draw(st.sampled_from([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 20]))
        data[index : index + 4] = value.to_bytes(4, "little")
    else:
        data = bytearray(draw(st.binary(max_size=2048)))
    return bytes(data)


# -- fixtures ----------------------------------------------------------------------------------


class InProcess:
    """A create_app server driven by Flask's test client, and a helper to upload objects."""

    def __init__(self, app: Any, uploader: Uploader, fhe: KeyedClient) -> None:
        self.http = app.test_client()
        self.app = app
        self.up = uploader
        self.fhe = fhe
        self.keys_uri = uploader.keys(fhe)
        self.row = fhe.model.scaled_test[1]
        self.ciphertext = fhe.encrypt(self.row)
        self.query_uri = uploader.put("queries/good.bin", self.ciphertext)

    def post(self, body: bytes) -> tuple[int, bytes]:
        response = self.http.post("/invocations", data=body,
                                  headers={"Content-Type": "application/json"})
        return response.status_code, response.get_data()

    def good_query_decrypts(self) -> None:
        status, body = self.post(build_request(evaluation_keys_uri=self.keys_uri,
                                               encrypted_query_uri=self.query_uri))
        assert status == 200, body[:500]
        np.testing.assert_array_equal(self.fhe.decrypt(body), self.fhe.expected(self.row))


def _in_process(kind: str, fixture_models: Any, s3_server: Any, serving_bucket: str,
                keyed: dict[str, KeyedClient], cache_dir: Any, **overrides: Any) -> InProcess:
    config = server_settings(fixture_models[kind], s3_server, serving_bucket, cache_dir,
                             key_cache_max_bytes=64 << 20, **overrides)
    app = create_app(config)
    uploader = Uploader(make_s3_client(config), serving_bucket, f"fhe/fuzz-{uuid.uuid4().hex[:8]}/")
    return InProcess(app, uploader, keyed[kind])


@pytest.fixture(scope="module")
def tree_app(fixture_models, s3_server, serving_bucket, keyed, tmp_path_factory) -> InProcess:
    return _in_process("tree", fixture_models, s3_server, serving_bucket, keyed,
                       tmp_path_factory.mktemp("fuzz-tree-cache"))


@pytest.fixture(scope="module")
def linear_app(fixture_models, s3_server, serving_bucket, keyed, tmp_path_factory) -> InProcess:
    return _in_process("linear", fixture_models, s3_server, serving_bucket, keyed,
                       tmp_path_factory.mktemp("fuzz-linear-cache"))


# -- JSON shape and URIs --------------------------------------------------------------------------

_json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
_json = st.recursive(_json_scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
_text_uris = st.one_of(
    st.text(max_size=80),
    st.builds(lambda b, k: f"s3://{b}/{k}", st.from_regex(r"[a-z0-9.\-]{0,70}", fullmatch=True),
              st.text(max_size=40)),
    st.builds(lambda k: f"s3://BUCKET/fhe/{k}", st.text(max_size=40)),
    st.sampled_from(["s3://BUCKET/fhe/../etc/passwd", "s3://BUCKET/other/x", "s3://BUCKET/fhe/",
                     "s3://nobucket-here/fhe/x", "https://BUCKET.s3.amazonaws.com/fhe/x",
                     "KEYS", "QUERY"]),
)


@st.composite
def request_bodies(draw: st.DrawFn) -> bytes:
    """Raw bytes, arbitrary JSON, or objects with the contract's fields holding odd values."""
    kind = draw(st.sampled_from(["bytes", "json", "fields", "fields"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "json":
        return json.dumps(draw(_json)).encode()
    fields = draw(st.lists(st.sampled_from([FIELD_KEYS, FIELD_QUERY, FIELD_QUERIES, FIELD_BATCH,
                                            FIELD_FINGERPRINT, FIELD_KEYS_SHA, FIELD_QUERY_SHA,
                                            "extra"]), unique=True, max_size=5))
    values = _text_uris | _json | st.lists(_text_uris, max_size=6) | st.from_regex(
        r"[0-9a-f]{64}", fullmatch=True)
    return json.dumps({name: draw(values) for name in fields}).encode()


def _resolve(body: bytes, app: InProcess) -> bytes:
    """Put the real bucket and the real key/query URIs where the fuzz placed their tokens."""
    body = body.replace(b"BUCKET", app.up.bucket.encode())
    body = body.replace(b'"KEYS"', f'"{app.keys_uri}"'.encode())
    return body.replace(b'"QUERY"', f'"{app.query_uri}"'.encode())


def test_fuzz_request_json(tree_app: InProcess) -> None:
    @fuzz_settings(200)
    @given(body=request_bodies())
    def prop(body: bytes) -> None:
        RUNS["json"] += 1
        check(*tree_app.post(_resolve(body, tree_app)))

    prop()
    tree_app.good_query_decrypts()


# -- JSON structure: depth, size, encodings, surrogates, numbers, duplicates -----------------


@st.composite
def structured_bodies(draw: st.DrawFn, app: InProcess) -> bytes:
    """A good request, or one bent in its JSON structure rather than in its fields' values."""
    doc = {FIELD_KEYS: app.keys_uri, FIELD_QUERY: app.query_uri}
    good = json.dumps(doc)
    kind = draw(st.sampled_from(["deep", "deep", "wide", "encoding", "surrogate", "number",
                                 "duplicate", "good"]))
    if kind == "deep":
        depth = draw(st.integers(1, 40_000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}"), ('{"' + FIELD_KEYS
                                                                            + '":', "}")]))
        inner = draw(st.sampled_from(["1", '"x"', "{}", good]))
        nested = opener * depth + inner + (closer * depth if draw(st.booleans()) else "")
        if draw(st.booleans()):  # as the value of a real field
            nested = good[:-1] + f', "{FIELD_FINGERPRINT}": {nested}}}'
        return nested.encode()
    if kind == "wide":
        n = draw(st.sampled_from([0, 1, 2, 257, 700, 3000]))  # batch limit 256, body 64 KiB
        return json.dumps({FIELD_KEYS: app.keys_uri, FIELD_QUERIES: [app.query_uri] * n}).encode()
    if kind == "encoding":
        codec = draw(st.sampled_from(["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-8-sig",
                                      "latin-1", "cp1252"]))
        text = good if draw(st.booleans()) else good.replace("fuzz", "f\u00fczz").replace(
            "\\u00fc", "\u00fc")
        return text.encode(codec, errors="replace")
    if kind == "surrogate":
        code = draw(st.sampled_from(["\\ud800", "\\udfff", "\\udc00\\ud800",
                                     "\\ud83d\\ude00", "\\ud800x"]))
        where = draw(st.sampled_from(["uri", "field", "raw"]))
        if where == "raw":  # CESU-8 bytes of a lone surrogate inside a string
            return good.encode().replace(b".bin", b"\xed\xa0\x80.bin")
        if where == "field":
            return (good[:-1] + f', "{code}x": 1}}').encode()
        return good.replace(".bin", f"{code}.bin").encode()
    if kind == "number":
        number = draw(st.sampled_from(["1" * 5000, "9" * 4301, "1e999", "-0", "NaN", "Infinity",
                                       "-Infinity", "01", "0x10", "1" * 4300]))
        field = draw(st.sampled_from([FIELD_KEYS, FIELD_FINGERPRINT, "extra"]))
        return (good[:-1] + f', "{field}": {number}}}').encode()
    if kind == "duplicate":
        field = draw(st.sampled_from([FIELD_KEYS, FIELD_QUERY]))
        return (good[:-1] + f', "{field}": "s3://{app.up.bucket}/elsewhere/x"}}').encode()
    return good.encode()


def test_fuzz_request_json_structure(linear_app: InProcess) -> None:
    """parse_request either parses or raises ContractError, and the server answers exactly
    what the contract decided: 413 over the body or batch limit, else 400 with its message,
    else 200 and the right prediction."""
    limits = linear_app.app.extensions["fhe"].settings

    @fuzz_settings(300)
    @given(body=structured_bodies(linear_app))
    def prop(body: bytes) -> None:
        RUNS["json-structure"] += 1
        try:
            n_queries, verdict = len(contract.parse_request(body).query_uris), None
        except contract.ContractError as exc:
            n_queries, verdict = 0, str(exc)
        status, response = linear_app.post(body)
        check(status, response)
        if len(body) > limits.max_request_bytes or n_queries > limits.max_batch_size:
            assert status == 413, (len(body), n_queries, response[:300])
        elif verdict is not None:
            assert (status, parse_error_body(response)[2]) == (400, verdict), body[:200]
        else:
            assert status == 200, response[:300]
            results = unpack_batch(response) if response[:4] == b"FHEB" else [response]
            for result in results:
                np.testing.assert_array_equal(linear_app.fhe.decrypt(result),
                                              linear_app.fhe.expected(linear_app.row))

    prop()
    linear_app.good_query_decrypts()


# -- ciphertext and key bytes --------------------------------------------------------------------


def _post_mutated(app: InProcess, *, query: bytes | None = None, keys: bytes | None = None,
                  packed: bool = False) -> tuple[int, bytes]:
    keys_uri = app.keys_uri if keys is None else app.up.put(f"keys/{uuid.uuid4().hex}.ekl", keys)
    query_uri = app.up.put(f"queries/{uuid.uuid4().hex}.bin",
                           app.ciphertext if query is None else query)
    if packed:
        return app.post(build_request(evaluation_keys_uri=keys_uri, encrypted_batch_uri=query_uri))
    return app.post(build_request(evaluation_keys_uri=keys_uri, encrypted_query_uri=query_uri))


@pytest.mark.parametrize(("kind", "examples"), [("linear", 40), ("tree", 30)])
def test_fuzz_ciphertext_bytes(kind: str, examples: int, request: pytest.FixtureRequest) -> None:
    app: InProcess = request.getfixturevalue(f"{kind}_app")

    @fuzz_settings(examples)
    @given(query=mutated(app.ciphertext))
    def prop(query: bytes) -> None:
        RUNS[f"ciphertext-{kind}"] += 1
        status, body = _post_mutated(app, query=query)
        check(status, body)
        if status == 200:  # a flipped payload bit still decrypts (to noise), it must not crash
            app.fhe.decrypt(body)

    prop()
    app.good_query_decrypts()


@pytest.mark.parametrize(("kind", "examples"), [("linear", 80), ("tree", 8)])
def test_fuzz_evaluation_key_bytes(kind: str, examples: int, request: pytest.FixtureRequest
                                   ) -> None:
    app: InProcess = request.getfixturevalue(f"{kind}_app")

    @fuzz_settings(examples)
    @given(keys=mutated(app.fhe.keys))
    def prop(keys: bytes) -> None:
        RUNS[f"keys-{kind}"] += 1
        status, body = _post_mutated(app, keys=keys)
        check(status, body)

    prop()
    app.good_query_decrypts()


def test_fuzz_batch_framing(linear_app: InProcess) -> None:
    good = pack_batch([linear_app.ciphertext, linear_app.ciphertext])

    @fuzz_settings(60)
    @given(batch=mutated(good))
    def prop(batch: bytes) -> None:
        RUNS["batch"] += 1
        check(*_post_mutated(linear_app, query=batch, packed=True))

    prop()
    linear_app.good_query_decrypts()


# -- sizes ---------------------------------------------------------------------------------------

MAX_OBJECT, MAX_BATCH, MAX_BODY = 3000, 3, 2048


@pytest.fixture(scope="module")
def limited_app(fixture_models, s3_server, serving_bucket, keyed, tmp_path_factory) -> InProcess:
    return _in_process("linear", fixture_models, s3_server, serving_bucket, keyed,
                       tmp_path_factory.mktemp("fuzz-limits-cache"), max_object_bytes=MAX_OBJECT,
                       max_batch_size=MAX_BATCH, max_request_bytes=MAX_BODY)


def test_fuzz_sizes_give_exactly_413(limited_app: InProcess) -> None:
    app = limited_app

    @fuzz_settings(40)
    @given(object_size=st.integers(0, 2 * MAX_OBJECT), rows=st.integers(1, 2 * MAX_BATCH),
           padding=st.integers(0, 2 * MAX_BODY), framed=st.booleans())
    def prop(object_size: int, rows: int, padding: int, framed: bool) -> None:
        RUNS["sizes"] += 1
        blob = app.up.put(f"queries/{uuid.uuid4().hex}.bin", b"\x01" * object_size)
        uris = [blob] * rows
        if framed:
            batch = app.up.put(f"queries/{uuid.uuid4().hex}.fheb",
                               pack_batch([app.ciphertext] * rows))
            body = build_request(evaluation_keys_uri=app.keys_uri, encrypted_batch_uri=batch)
            too_big = rows > MAX_BATCH
        else:
            body = build_request(evaluation_keys_uri=app.keys_uri, encrypted_query_uris=uris)
            too_big = rows > MAX_BATCH or object_size > MAX_OBJECT
        body = body[:-1] + b" " * padding + b"}"
        status, response = app.post(body)
        check(status, response)
        assert (status == 413) == (too_big or len(body) > MAX_BODY), (status, response[:300])

    prop()
    app.good_query_decrypts()


# -- through the real serve ----------------------------------------------------------------------

CANARY = "CANARY-PAYLOAD-7f3a9c"


@pytest.fixture(scope="module")
def served(tree_serve, keyed, s3_server, serving_bucket) -> Iterator[tuple[Any, Uploader]]:
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name=LOCAL_REGION)
    yield tree_serve, Uploader(s3, serving_bucket, f"fhe/served-{uuid.uuid4().hex[:8]}/")


def test_fuzz_through_serve_kills_no_worker_and_logs_no_payload(served, keyed) -> None:
    serve, up = served
    fhe = keyed["tree"]
    pid = worker_pid(serve.url)
    log_start = serve.log.stat().st_size  # other tests share this serve: read only our part
    keys_uri = up.keys(fhe)
    row = fhe.model.scaled_test[3]
    ciphertext = fhe.encrypt(row)
    http = requests.Session()

    def post(body: bytes) -> tuple[int, bytes]:
        response = http.post(f"{serve.url}/invocations", data=body, timeout=120,
                             headers={"Content-Type": "application/json"})
        return response.status_code, response.content

    @fuzz_settings(40)
    @given(body=request_bodies(), tag=st.sampled_from(["field", "uri", "value"]))
    def json_prop(body: bytes, tag: str) -> None:
        RUNS["serve-json"] += 1
        doc_text = body.replace(b"BUCKET", up.bucket.encode())
        # Plant the canary where a careless server would log it.
        planted = {"field": {CANARY: 1}, "uri": {FIELD_KEYS: f"s3://{up.bucket}/fhe/{CANARY}"},
                   "value": {FIELD_KEYS: keys_uri, FIELD_QUERY: CANARY}}[tag]
        check(*post(doc_text))
        check(*post(json.dumps(planted).encode()))

    @fuzz_settings(12)
    @given(query=mutated(ciphertext))
    def ciphertext_prop(query: bytes) -> None:
        RUNS["serve-ciphertext"] += 1
        uri = up.put(f"queries/{uuid.uuid4().hex}.bin", query)
        check(*post(build_request(evaluation_keys_uri=keys_uri, encrypted_query_uri=uri)))

    @fuzz_settings(4)
    @given(keys=mutated(fhe.keys))
    def keys_prop(keys: bytes) -> None:
        RUNS["serve-keys"] += 1
        uri = up.put(f"keys/{uuid.uuid4().hex}.ekl", keys)
        query = up.put(f"queries/{uuid.uuid4().hex}.bin", ciphertext)
        check(*post(build_request(evaluation_keys_uri=uri, encrypted_query_uri=query)))

    json_prop()
    ciphertext_prop()
    keys_prop()
    good = up.put("queries/good.bin", ciphertext)
    status, body = post(build_request(evaluation_keys_uri=keys_uri, encrypted_query_uri=good,
                                      evaluation_keys_sha256=sha256_hex(fhe.keys)))
    assert status == 200
    np.testing.assert_array_equal(fhe.decrypt(body), fhe.expected(row))
    assert worker_pid(serve.url) == pid, "a gunicorn worker was replaced during the fuzz"
    log = serve.log.read_bytes()[log_start:].decode(errors="replace")
    assert not re.search(r"Worker \(pid:\d+\) (exited|was sent)|WORKER TIMEOUT|Traceback", log)
    assert CANARY not in log
