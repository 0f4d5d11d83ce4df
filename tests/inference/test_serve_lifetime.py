"""``serve``'s children die with it, at every level, on the real processes.

``kill -9`` of ``serve``: the gunicorn master (parent-death SIGKILL), its worker (SIGKILL when
its master dies, ``post_fork``) and nginx (parent-death SIGTERM: a fast stop that ends its
workers too) all exit, and the port is free. ``kill -9`` of the gunicorn master alone: its
worker exits with it, and ``serve`` stops nginx and exits non-zero. ``kill -9`` of the nginx
master alone: ``serve`` kills what is left of its process group (the orphaned workers, which
still hold the port) and exits non-zero.
"""

from __future__ import annotations

from collections.abc import Iterator

import psutil
import pytest

from inference.serve import Supervisor
from local_mode.processes import free_port
from local_mode.s3_server import LocalS3Server
from tests.fixtures.models import FixtureModel
from tests.fixtures.process_tree import alive, assert_gone
from tests.fixtures.serving import RunningServe, serve_process, server_settings

pytestmark = pytest.mark.slow


@pytest.fixture
def serve(fixture_models: dict[str, FixtureModel], s3_server: LocalS3Server,
          serving_bucket: str, tmp_path) -> Iterator[tuple[RunningServe, list[psutil.Process]]]:
    """A fresh ``serve`` (nginx + gunicorn, one worker) and its process tree once healthy."""
    settings = server_settings(fixture_models["tree"], s3_server, serving_bucket,
                               tmp_path / "cache", port=free_port(), host="127.0.0.1")
    with serve_process(settings, tmp_path / "serve.log", extra_env=s3_server.env()) as running:
        tree = psutil.Process(running.process.pid).children(recursive=True)
        try:
            yield running, tree
        finally:
            for proc in alive(tree):
                proc.kill()


def _named(tree: list[psutil.Process], part: str) -> list[psutil.Process]:
    return [p for p in tree if part in " ".join(p.cmdline())]


def test_kill_9_of_serve_leaves_no_process_and_no_port(serve) -> None:
    running, tree = serve
    assert len(_named(tree, "gunicorn")) == 2 and len(_named(tree, "nginx")) == 2, \
        [" ".join(p.cmdline()[:3]) for p in tree]
    running.process.kill()
    running.process.wait()
    port = int(running.url.rsplit(":", 1)[1])
    seconds = assert_gone(tree, ports=[port], timeout=Supervisor.STOP_SECONDS)
    print(f"serve's children gone {seconds:.1f} s after kill -9 of serve")


def test_kill_9_of_the_gunicorn_master_takes_its_worker(serve) -> None:
    running, tree = serve
    master = next(p for p in _named(tree, "gunicorn") if p.ppid() == running.process.pid)
    [worker] = master.children()
    master.kill()
    assert_gone([worker], timeout=5)
    code = running.process.wait(timeout=Supervisor.STOP_SECONDS)
    assert code != 0
    port = int(running.url.rsplit(":", 1)[1])
    assert_gone(tree, ports=[port], timeout=5)


def test_kill_9_of_the_nginx_master_takes_its_workers_and_frees_the_port(serve) -> None:
    """nginx's workers have no parent-death signal: orphaned, they would keep the port."""
    running, tree = serve
    master = next(p for p in _named(tree, "nginx") if p.ppid() == running.process.pid)
    workers = master.children()
    assert workers, "nginx started no worker"
    master.kill()
    code = running.process.wait(timeout=Supervisor.STOP_SECONDS)
    assert code != 0
    port = int(running.url.rsplit(":", 1)[1])
    assert_gone(tree, ports=[port], timeout=5)
