"""S3 objects are bounded by the circuit: an oversized one is refused before its body is read.

The sizes come from server.zip's client.specs.json (inference/circuit_sizes.py). Keys are sized
by a HEAD before any GET; ciphertexts, read on every request, by one ranged GET that asks S3 for
the limit plus one byte at the most. The oracles are the S3 server's own request log (no GET of
an oversized keys object; one ranged GET, answered 206, of an oversized ciphertext) and the
worker's peak RSS (VmHWM), which does not move while a 600 MB keys object is offered.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests

from common.contract import build_request, pack_batch, parse_error_body
from inference.circuit_sizes import (
    CircuitSizesError,
    load_circuit_sizes,
    sizes_from_program_info,
)
from inference.settings import DEFAULT_MAX_BATCH_SIZE
from local_mode.s3_server import LocalS3Server
from tests.fixtures.models import FixtureModel
from tests.fixtures.serving import KeyedClient, RunningServe, Uploader, s3_requests

REPO = Path(__file__).resolve().parents[2]
HUGE_KEYS_BYTES = 600 << 20
FRAMING_BYTES = 1024  # measured: serialized size - computed payload is 64..352 bytes here


@pytest.mark.parametrize("kind", ["linear", "tree"])
def test_computed_sizes_match_what_concrete_serializes(
        kind: str, fixture_models: dict[str, FixtureModel],
        keyed: dict[str, KeyedClient]) -> None:
    fhe = keyed[kind]
    sizes = load_circuit_sizes(fixture_models[kind].model_dir)
    keys, row = len(fhe.keys), len(fhe.encrypt(fhe.model.scaled_test[0]))
    assert sizes.evaluation_keys_bytes <= keys <= sizes.evaluation_keys_bytes + FRAMING_BYTES
    assert sizes.row_bytes <= row <= sizes.row_bytes + FRAMING_BYTES
    assert keys <= sizes.max_evaluation_keys_bytes < 1.02 * keys + (65 << 10)
    assert row <= sizes.max_row_bytes


def test_sizes_need_neither_torch_nor_concrete(fixture_models: dict[str, FixtureModel]) -> None:
    script = ("import sys; from inference.circuit_sizes import load_circuit_sizes;"
              f" print(load_circuit_sizes({str(fixture_models['tree'].model_dir)!r}));"
              " heavy = sorted(m for m in ('torch', 'concrete') if m in sys.modules);"
              " assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO, timeout=60)


def test_a_document_without_keyset_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CircuitSizesError, match="does not describe the circuit's keys"):
        sizes_from_program_info({"circuits": []})
    with pytest.raises(CircuitSizesError, match=r"cannot read client\.specs\.json"):
        load_circuit_sizes(tmp_path)


def _peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) << 10
    raise AssertionError("no VmHWM")


def _metrics(serve: RunningServe) -> dict:
    return json.loads(requests.get(f"{serve.url}/metrics", timeout=30).content)


def _post(serve: RunningServe, body: bytes) -> requests.Response:
    return requests.post(f"{serve.url}/invocations", data=body, timeout=120,
                         headers={"Content-Type": "application/json"})


def _plant_zeros(uploader: Uploader, name: str, size: int, tmp_path: Path) -> str:
    """Upload ``size`` zero bytes (streamed from a sparse file); return the URI."""
    path = tmp_path / name.replace("/", "_")
    with open(path, "wb") as out:
        out.truncate(size)
    key = f"{uploader.prefix}{name}"
    uploader.s3.upload_file(str(path), uploader.bucket, key)
    path.unlink()
    return f"s3://{uploader.bucket}/{key}"


def test_600_mb_keys_are_refused_by_head_unread(
        running_serve: RunningServe, keyed: dict[str, KeyedClient], uploader: Uploader,
        s3_server: LocalS3Server, tmp_path: Path) -> None:
    fhe = keyed["tree"]
    sizes = load_circuit_sizes(fhe.model.model_dir)
    huge = _plant_zeros(uploader, f"keys/{uuid.uuid4().hex}.ekl", HUGE_KEYS_BYTES, tmp_path)
    query = uploader.put("queries/q.bin", fhe.encrypt(fhe.model.scaled_test[0]))
    pid = _metrics(running_serve)["pid"]
    peak = _peak_rss(pid)
    by_sha = build_request(evaluation_keys_uri=huge, encrypted_query_uri=query,
                           evaluation_keys_sha256="0" * 64)
    by_uri = build_request(evaluation_keys_uri=huge, encrypted_query_uri=query)
    for body in (by_sha, by_uri):
        response = _post(running_serve, body)
        status, code, message = parse_error_body(response.content)
        assert (response.status_code, status, code) == (413, 413, "PayloadTooLarge"), message
        assert f"has {HUGE_KEYS_BYTES} bytes" in message
        assert f"at most {sizes.max_evaluation_keys_bytes}" in message
        assert "generate keys with this endpoint's client.zip" in message
    assert s3_requests(s3_server, "HEAD", huge) == 2
    assert s3_requests(s3_server, "GET", huge) == 0, "the oversized keys object was read"
    assert _peak_rss(pid) - peak < 64 << 20, (peak, _peak_rss(pid))
    # The worker is fine, and keys of the right size still work.
    good = _post(running_serve, uploader.request(fhe, fhe.model.scaled_test[:1]))
    assert good.status_code == 200, good.content[:300]
    np.testing.assert_allclose(fhe.decrypt(good.content), fhe.expected(fhe.model.scaled_test[0]))
    assert _metrics(running_serve)["pid"] == pid


def test_keys_just_over_the_circuit_bound_are_refused(
        running_serve: RunningServe, keyed: dict[str, KeyedClient], uploader: Uploader,
        s3_server: LocalS3Server, tmp_path: Path) -> None:
    """Far below the flat FHE_MAX_OBJECT_BYTES (1 GiB): the circuit sets the bound."""
    fhe = keyed["tree"]
    limit = load_circuit_sizes(fhe.model.model_dir).max_evaluation_keys_bytes
    over = _plant_zeros(uploader, "keys/over.ekl", limit + 1, tmp_path)
    body = build_request(evaluation_keys_uri=over, encrypted_query_uri=uploader.put(
        "queries/q.bin", fhe.encrypt(fhe.model.scaled_test[0])))
    response = _post(running_serve, body)
    assert response.status_code == 413, response.content[:300]
    assert s3_requests(s3_server, "GET", over) == 0


def _partial_gets(server: LocalS3Server, uri: str) -> int:
    """GETs of ``uri`` the S3 server answered 206 Partial Content (a ranged read)."""
    assert server.log_path is not None
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    line = re.compile(re.escape(f"GET /{bucket}/{key} HTTP/") + r'[\d.]+(?:\x1b\[[\d;]*m)*" 206 ')
    return len(line.findall(server.log_path.read_text(errors="replace")))


def test_oversized_ciphertexts_are_refused_by_one_ranged_get(
        running_serve: RunningServe, keyed: dict[str, KeyedClient], uploader: Uploader,
        s3_server: LocalS3Server, tmp_path: Path) -> None:
    fhe = keyed["tree"]
    sizes = load_circuit_sizes(fhe.model.model_dir)
    keys = uploader.keys(fhe)
    row = fhe.encrypt(fhe.model.scaled_test[0])
    fat_row = uploader.put("queries/fat.bin", row + bytes(sizes.max_row_bytes + 1 - len(row)))
    fat_batch = _plant_zeros(uploader, "queries/fat.fheb",
                             sizes.max_batch_bytes(DEFAULT_MAX_BATCH_SIZE) + 1, tmp_path)
    cases = {
        fat_row: build_request(evaluation_keys_uri=keys, encrypted_query_uri=fat_row),
        fat_batch: build_request(evaluation_keys_uri=keys, encrypted_batch_uri=fat_batch),
    }
    for uri, body in cases.items():
        response = _post(running_serve, body)
        status, code, message = parse_error_body(response.content)
        assert (status, code) == (413, "PayloadTooLarge"), message
        assert "this endpoint's client.zip" in message
        assert s3_requests(s3_server, "HEAD", uri) == 0, uri
        assert s3_requests(s3_server, "GET", uri) == _partial_gets(s3_server, uri) == 1, uri
    # A batch object of real rows is within the bound.
    rows = fhe.model.scaled_test[:2]
    packed = uploader.put("queries/ok.fheb", pack_batch([fhe.encrypt(r) for r in rows]))
    ok = _post(running_serve, build_request(evaluation_keys_uri=keys, encrypted_batch_uri=packed))
    assert ok.status_code == 200, ok.content[:300]
