"""Multi-tenant load on the real `serve`: 6 key sets x 3 concurrent requests, one worker.

Every answer decrypts to the clear quantised model with its own tenant's keys, and the worker's
peak RSS stays within the key cache's bound (FHE_KEY_CACHE_MAX_BYTES, which evicts key sets
here: 6 do not fit) plus the one key set being deserialised.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from inference.key_cache import RESIDENT_BYTES_PER_SERIALIZED_BYTE
from local_mode.processes import free_port
from local_mode.s3_server import LocalS3Server
from tests.fixtures.models import FixtureModel
from tests.fixtures.serving import (
    KeyedClient,
    RunningServe,
    Uploader,
    make_keyed_client,
    serve_process,
    server_settings,
)

TENANTS = 6
REQUESTS_PER_TENANT = 3
KEY_CACHE_BYTES = 400 << 20  # about 3 of the tree's key sets (19 MB serialized, ~6x resident)
SLACK_BYTES = 96 << 20  # allocator and HPX thread stacks, measured well under this


def _status_bytes(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) << 10
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@pytest.fixture(scope="module")
def tenant_serve(fixture_models: dict[str, FixtureModel], s3_server: LocalS3Server,
                 serving_bucket: str, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[RunningServe]:
    """A `serve` of the tree model with a key cache smaller than 6 key sets."""
    work = tmp_path_factory.mktemp("tenants")
    settings = server_settings(fixture_models["tree"], s3_server, serving_bucket, work / "cache",
                               port=free_port(), host="127.0.0.1", timeout=300,
                               key_cache_max_bytes=KEY_CACHE_BYTES)
    with serve_process(settings, work / "serve.log", extra_env=s3_server.env()) as serve:
        yield serve


def test_six_tenants_three_concurrent_requests_each(
        tenant_serve: RunningServe, fixture_models: dict[str, FixtureModel],
        uploader: Uploader, tmp_path: Path) -> None:
    model = fixture_models["tree"]
    tenants = [make_keyed_client(model, tmp_path / f"tenant-{i}") for i in range(TENANTS)]
    assert len({t.keys_sha for t in tenants}) == TENANTS
    rows = model.scaled_test[: TENANTS * REQUESTS_PER_TENANT]
    # Interleaved: every tenant's 3 requests are in flight at once, in rounds of 6 tenants.
    jobs: list[tuple[KeyedClient, np.ndarray]] = [
        (tenants[i % TENANTS], row) for i, row in enumerate(rows)]
    bodies = [uploader.request(t, row[None, :], evaluation_keys_sha256=t.keys_sha)
              for t, row in jobs]
    metrics = json.loads(requests.get(f"{tenant_serve.url}/metrics", timeout=30).content)
    pid = metrics["pid"]
    baseline = _status_bytes(pid, "VmRSS")

    def post(body: bytes) -> requests.Response:
        return requests.post(f"{tenant_serve.url}/invocations", data=body, timeout=300,
                             headers={"Content-Type": "application/json"})

    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        responses = list(pool.map(post, bodies))
    for (tenant, row), response in zip(jobs, responses, strict=True):
        assert response.status_code == 200, response.content[:300]
        np.testing.assert_allclose(tenant.decrypt(response.content), tenant.expected(row),
                                   rtol=0, atol=1e-12)
    after = json.loads(requests.get(f"{tenant_serve.url}/metrics", timeout=30).content)
    assert after["pid"] == pid
    cache = after["key_cache"]
    assert cache["memory_bytes"] <= KEY_CACHE_BYTES
    assert cache["evictions"] > 0, cache  # the bound was exercised, not just declared
    one_key_set = int(len(tenants[0].keys) * RESIDENT_BYTES_PER_SERIALIZED_BYTE)
    peak = _status_bytes(pid, "VmHWM")
    assert peak <= baseline + KEY_CACHE_BYTES + one_key_set + SLACK_BYTES, (
        f"peak RSS {peak >> 20} MiB over {baseline >> 20} MiB + the key cache bound")
