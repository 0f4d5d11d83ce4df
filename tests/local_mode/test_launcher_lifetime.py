"""The launcher owns its children: ``deploy_endpoint.py --local`` on the real processes.

SIGTERM while the model loads, once ready and mid-request stops every process it started
(the embedded S3, ``serve``, the gunicorn master and worker, nginx) within ``serve``'s
documented bound; after ``kill -9`` of the launcher they all exit by themselves. Each test
collects the process tree (walking /proc) before the signal, then proves no process of it
survives and no port stays held.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import numpy as np
import psutil
import pytest

from common.contract import build_request, pack_batch
from inference.serve import Supervisor
from local_mode.endpoint import STOP_SECONDS
from local_mode.processes import free_port, wait_for_ready_file
from local_mode.s3_server import LOCAL_REGION
from local_mode.stack import REPO_ROOT
from tests.fixtures.models import FixtureModel
from tests.fixtures.process_tree import alive, assert_gone
from tests.fixtures.serving import KeyedClient

pytestmark = pytest.mark.slow
ENDPOINT = "lifetime"
BUCKET = "fhe-lifetime"
LAUNCHER_BOUND = STOP_SECONDS  # the launcher's documented bound
ORPHAN_WAIT = Supervisor.STOP_SECONDS + 5  # serve's bound, once it got its parent-death signal


@dataclass
class Launcher:
    """A running ``deploy_endpoint.py --local`` and what it was told."""

    process: subprocess.Popen[bytes]
    ready_file: Path
    log: Path
    ports: tuple[int, int]
    seen: set[psutil.Process] = field(default_factory=set)

    def tree(self) -> list[psutil.Process]:
        """Every descendant of the launcher, now (psutil walks /proc); remembered for teardown."""
        found = psutil.Process(self.process.pid).children(recursive=True)
        self.seen.update(found)
        return found

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def names(self) -> list[str]:
        return [" ".join(p.cmdline()[:4]) for p in self.tree()]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def launcher(fixture_models: dict[str, FixtureModel], tmp_path: Path) -> Iterator[Launcher]:
    """``deploy_endpoint.py --local`` of the tree model on an embedded S3 (not yet ready)."""
    ready, log = tmp_path / "ready.json", tmp_path / "launcher.log"
    ports = (free_port(), free_port())
    argv = [sys.executable, "-m", "deploy_endpoint", "--local", "--endpoint-name", ENDPOINT,
            "--model-dir", str(fixture_models["tree"].model_dir),
            "--output-path", f"s3://{BUCKET}/out", "--failure-path", f"s3://{BUCKET}/fail",
            "--allowed-s3-prefix", f"s3://{BUCKET}/client", "--ready-file", str(ready),
            "--port", str(ports[0]), "--runtime-port", str(ports[1])]
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=_env(),
                                   cwd=REPO_ROOT, start_new_session=True)
    running = Launcher(process, ready, log, ports)
    try:
        yield running
    finally:
        if process.poll() is None:
            running.tree()
        process.kill()
        process.wait()
        for proc in alive(list(running.seen)):
            proc.kill()


def _wait_until(predicate, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} within {timeout:.0f} s"
        time.sleep(0.1)


def _gunicorn_worker(launcher: Launcher, timeout: float = 120) -> psutil.Process:
    """The gunicorn worker: a gunicorn process whose parent is the gunicorn master."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in launcher.tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                parent = proc.parent()
                if parent is not None and "gunicorn" in " ".join(parent.cmdline()) \
                        and "gunicorn" in " ".join(proc.cmdline()):
                    return proc
        time.sleep(0.1)
    raise AssertionError(f"no gunicorn worker within {timeout:.0f} s: {launcher.names()}")


def _stop(launcher: Launcher, signum: int, *, group: bool = False) -> tuple[int, float]:
    """Send ``signum`` to the launcher (or its whole process group, as a terminal's Ctrl-C or
    a service manager does); return its exit code and the seconds it took."""
    started = time.monotonic()
    if group:
        os.killpg(launcher.process.pid, signum)
    else:
        launcher.process.send_signal(signum)
    try:
        code = launcher.process.wait(timeout=LAUNCHER_BOUND)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the launcher did not stop within {LAUNCHER_BOUND} s of"
                    f" {signal.Signals(signum).name}:\n{launcher.tail()}")
    return code, time.monotonic() - started


def _ready(launcher: Launcher) -> dict[str, str]:
    return wait_for_ready_file(launcher.ready_file, timeout=180, process=launcher.process,
                               log=launcher.log)


def _s3_port(ready: dict[str, str]) -> int:
    return int(ready["s3_endpoint_url"].rsplit(":", 1)[1])


# -- SIGTERM ------------------------------------------------------------------------------------


def test_sigterm_while_the_model_loads_stops_everything(launcher: Launcher) -> None:
    """The worker is held mid-load (SIGSTOP: a model that takes long to load)."""
    worker = _gunicorn_worker(launcher)
    worker.suspend()
    assert not launcher.ready_file.exists(), "the model loaded before the test could hold it"
    tree = launcher.tree()
    assert len(tree) >= 4, launcher.names()  # moto, serve, gunicorn master + worker, nginx
    code, seconds = _stop(launcher, signal.SIGTERM)
    assert code == 0, launcher.tail()
    assert_gone(tree, ports=list(launcher.ports), timeout=5, context=launcher.tail())
    print(f"stopped while loading in {seconds:.1f} s")


@pytest.mark.parametrize(("signum", "group"), [(signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=["sigterm-launcher", "sigint-group"])
def test_stop_when_ready_stops_everything(launcher: Launcher, signum: int, group: bool) -> None:
    ready = _ready(launcher)
    tree = launcher.tree()
    names = " ".join(launcher.names())
    for part in ("moto.server", "inference.serve", "gunicorn", "nginx"):
        assert part in names, names
    code, seconds = _stop(launcher, signum, group=group)
    assert code == 0, launcher.tail()
    assert_gone(tree, ports=[*launcher.ports, _s3_port(ready)], timeout=5,
                context=launcher.tail())
    assert seconds < 10, f"an idle endpoint took {seconds:.1f} s to stop"
    print(f"stopped when ready in {seconds:.1f} s")


def _send_batch(ready: dict[str, str], fhe: KeyedClient, rows: np.ndarray) -> dict[str, str]:
    """Upload keys and a packed batch of ``rows`` to the embedded S3; invoke; return the reply."""
    s3 = boto3.client("s3", endpoint_url=ready["s3_endpoint_url"], region_name=LOCAL_REGION)
    s3.create_bucket(Bucket=BUCKET)
    name = uuid.uuid4().hex
    keys, batch, request = (f"client/{name}/keys.ekl", f"client/{name}/q.fheb",
                            f"client/{name}/r.json")
    s3.put_object(Bucket=BUCKET, Key=keys, Body=fhe.keys)
    s3.put_object(Bucket=BUCKET, Key=batch, Body=pack_batch([fhe.encrypt(r) for r in rows]))
    s3.put_object(Bucket=BUCKET, Key=request, Body=build_request(
        evaluation_keys_uri=f"s3://{BUCKET}/{keys}", encrypted_batch_uri=f"s3://{BUCKET}/{batch}"))
    runtime = boto3.client("sagemaker-runtime", endpoint_url=ready["runtime_url"],
                           region_name=LOCAL_REGION)
    return runtime.invoke_endpoint_async(EndpointName=ENDPOINT,
                                         InputLocation=f"s3://{BUCKET}/{request}")


def test_sigterm_mid_request_stops_everything(
        launcher: Launcher, keyed: dict[str, KeyedClient]) -> None:
    """An FHE run that will not end by itself (its worker is stopped mid-run)."""
    ready = _ready(launcher)
    worker = _gunicorn_worker(launcher)
    _send_batch(ready, keyed["tree"], keyed["tree"].model.scaled_test[:12])
    start = sum(worker.cpu_times()[:2])
    _wait_until(lambda: sum(worker.cpu_times()[:2]) - start > 0.5, timeout=60,
                what="the worker starts the FHE run")
    worker.suspend()
    tree = launcher.tree()
    code, seconds = _stop(launcher, signal.SIGTERM)
    assert code == 0, launcher.tail()
    assert_gone(tree, ports=[*launcher.ports, _s3_port(ready)], timeout=5,
                context=launcher.tail())
    print(f"stopped mid-request in {seconds:.1f} s")


# -- kill -9 ------------------------------------------------------------------------------------


def test_children_exit_by_themselves_after_kill_9_of_the_launcher(launcher: Launcher) -> None:
    ready = _ready(launcher)
    tree = launcher.tree()
    assert len(tree) >= 5, launcher.names()  # moto, serve, gunicorn master + worker, nginx (+1)
    started = time.monotonic()
    launcher.process.kill()
    launcher.process.wait()
    assert_gone(tree, ports=[*launcher.ports, _s3_port(ready)], timeout=ORPHAN_WAIT,
                context=launcher.tail())
    print(f"orphans gone {time.monotonic() - started:.1f} s after kill -9")
