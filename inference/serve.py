"""``serve``: the container entry point SageMaker runs (``docker run IMAGE serve``).

Starts nginx in front of gunicorn (``inference.wsgi:build_app()``) on
``SAGEMAKER_BIND_TO_PORT``; without nginx on PATH (or with ``--no-nginx``) gunicorn binds the
port itself, and says so. SIGTERM/SIGINT stop both gracefully and exit 0; if either child dies
the other is stopped and ``serve`` exits non-zero.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from string import Template

from common.process import EXIT_BAD_INPUT, die_with_parent, run_main
from inference.connection import ENV_HPX_HANDLE_SIGNALS
from inference.settings import Settings, SettingsError
from inference.wsgi import LOG_FORMAT

logger = logging.getLogger("inference.serve")

NGINX_EXTRA_TIMEOUT = 10  # nginx waits this much longer than gunicorn, so gunicorn times out first
GRACEFUL_SECONDS = 30
WSGI_APP = "inference.wsgi:build_app()"
# The FHE runtime's OpenMP threads (concrete-python's bundled libomp) spin-wait KMP_BLOCKTIME ms
# after each parallel region before they sleep: 200 ms by default, so every FHE run left a core
# busy for 200 ms while the response was written, the result uploaded and the next request
# fetched (and, with the client or S3 on the same cores, while they worked). 0 makes them sleep
# at once. HPX (concrete's dataflow runtime), started by a worker's first FHE run, replaces the
# worker's ignored SIGPIPE with a handler that kills the process: a reply written to a caller
# that went away (an invocation timeout) then killed the worker and its key cache. With
# HPX_HANDLE_SIGNALS=0 it installs no handler (see inference.connection). An explicit setting
# in the environment wins.
WORKER_ENV_DEFAULTS = {"KMP_BLOCKTIME": "0", ENV_HPX_HANDLE_SIGNALS: "0"}


class _NginxTemplate(Template):
    delimiter = "@"


def render_nginx_conf(settings: Settings, *, runtime_dir: Path, socket_path: Path) -> str:
    """Fill the packaged nginx.conf template from ``settings``."""
    template = resources.files("inference").joinpath("nginx.conf").read_text()
    return _NginxTemplate(template).substitute(
        runtime_dir=runtime_dir,
        socket_path=socket_path,
        listen=f"{settings.host}:{settings.port}",
        max_body_bytes=settings.max_request_bytes,
        timeout=settings.timeout,
        proxy_timeout=settings.timeout + NGINX_EXTRA_TIMEOUT,
    )


def gunicorn_command(settings: Settings, *, bind: str, app: str = WSGI_APP) -> list[str]:
    """The gunicorn command line for ``settings``, binding ``bind``, serving ``app``."""
    return [
        sys.executable, "-m", "gunicorn",
        "--bind", bind,
        "--workers", str(settings.workers),
        "--worker-class", "sync",
        "--timeout", str(settings.timeout),
        "--graceful-timeout", str(GRACEFUL_SECONDS),
        "--keep-alive", "75",
        "--log-level", "info",
        "--no-control-socket",
        "--error-logfile", "-",
        "--config", "python:inference.gunicorn_conf",
        app,
    ]


def worker_env(settings: Settings, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The gunicorn workers' environment: ``environ``, ``settings``, then the runtime defaults."""
    env = {**(os.environ if environ is None else environ), **settings.to_env()}
    for name, value in WORKER_ENV_DEFAULTS.items():
        env.setdefault(name, value)
    return env


# Where the runtime directory goes when TMPDIR is private to serve's user (see runtime_parent).
SHARED_TMP = Path("/tmp")


def others_can_traverse(path: Path) -> bool:
    """True when every folder from ``/`` down to ``path`` lets other users through (o+x)."""
    resolved = path.resolve()
    try:
        return all(p.stat().st_mode & stat.S_IXOTH for p in (resolved, *resolved.parents))
    except OSError:
        return False


def runtime_parent(tmpdir: Path, *, euid: int) -> Path:
    """The folder to create ``serve``'s runtime directory (gunicorn socket, nginx.conf) in.

    Run as root, nginx's master starts its workers as another user (``nobody``), who must
    traverse every folder down to the gunicorn socket: a private TMPDIR (0700) would leave
    ``/ping`` failing with "Permission denied" on the socket. Then the shared ``/tmp`` is used
    instead. Run as another user, nginx's workers are that user: ``tmpdir`` always works.

    Raises:
        SettingsError: serve runs as root and neither ``tmpdir`` nor ``/tmp`` is traversable.
    """
    if euid != 0 or others_can_traverse(tmpdir):
        return tmpdir
    if others_can_traverse(SHARED_TMP):
        logger.info("TMPDIR %s is private to root: nginx's workers (another user) could not"
                    " reach the gunicorn socket there; its runtime directory goes in %s",
                    tmpdir, SHARED_TMP)
        return SHARED_TMP
    raise SettingsError(
        f"neither TMPDIR ({tmpdir}) nor {SHARED_TMP} can be traversed by other users, and"
        " serve runs as root: nginx's workers (another user) could not reach the gunicorn"
        " socket; set TMPDIR to a folder with o+x on every level, or run serve as non-root"
    )


class Supervisor:
    """Owns the child processes (gunicorn, nginx); stops them all, within a bound, on exit.

    Shutdown is bounded by :attr:`STOP_SECONDS`: SIGTERM asks gunicorn for a graceful stop
    (a request in progress may finish within ``--graceful-timeout``, :data:`GRACEFUL_SECONDS`)
    and nginx for a graceful quit; whatever still runs :attr:`STOP_SECONDS` after the signal
    is killed. A gunicorn worker's SIGTERM handler only sets a flag: an FHE run in progress is
    one C call that Python signal handlers cannot interrupt, so the worker computes on until
    the run ends or the graceful timeout kills it. Before, a worker could therefore outlive
    its ``serve`` by the rest of that timeout (e.g. 25 s of a 30 s one) when ``serve`` itself
    was killed earlier: its gunicorn master, orphaned, kept waiting for it.

    Every child also dies with ``serve``: it gets a parent-death signal
    (:func:`common.process.die_with_parent`; nginx SIGTERM, a fast stop that also ends its
    workers; the gunicorn master SIGKILL) and each gunicorn worker gets SIGKILL when its
    master dies (``post_fork`` in :mod:`inference.gunicorn_conf`). So ``kill -9`` of ``serve``
    (or of whatever started it) leaves no process and no held port behind. Each child leads its
    own process group, and once it has exited whatever is left of that group is killed: nginx's
    workers have no parent-death signal, so a master killed alone would leave them holding the
    port.
    """

    STOP_SECONDS = GRACEFUL_SECONDS + 5
    """Longest time :meth:`stop` takes."""
    STOP_SIGNALS = {"nginx": signal.SIGQUIT, "gunicorn": signal.SIGTERM}
    PARENT_DEATH_SIGNALS = {"nginx": signal.SIGTERM, "gunicorn": signal.SIGKILL}

    def __init__(self) -> None:
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.stopping = False

    def request_stop(self, signum: int, _frame: object = None) -> None:
        """Signal handler: stop (:meth:`wait` returns 0)."""
        logger.info("received %s; shutting down", signal.Signals(signum).name)
        self.stopping = True

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        """Start a child process that dies with this one."""
        logger.info("starting %s", name)
        self.children[name] = subprocess.Popen(
            argv, env=env, process_group=0,
            preexec_fn=die_with_parent(self.PARENT_DEATH_SIGNALS.get(name, signal.SIGTERM)))

    def wait(self) -> int:
        """Block until a stop signal (exit 0) or a child exits (its code, at least 1)."""
        while not self.stopping:
            for name, child in self.children.items():
                code = child.poll()
                if code is not None:
                    logger.error("%s exited with code %s; stopping", name, code)
                    return code or 1
            time.sleep(0.2)
        return 0

    def stop(self) -> None:
        """Stop children gracefully (nginx: SIGQUIT, gunicorn: SIGTERM); after
        :attr:`STOP_SECONDS`, kill what is left (a gunicorn worker dies with its master)."""
        started = time.monotonic()
        for name, child in self.children.items():
            if child.poll() is None:
                child.send_signal(self.STOP_SIGNALS.get(name, signal.SIGTERM))
        deadline = started + self.STOP_SECONDS
        for name, child in self.children.items():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop within %d s; killing it", name,
                               self.STOP_SECONDS)
                child.kill()
                child.wait()
            _kill_process_group(name, child.pid)
        if self.children:
            logger.info("stopped in %.1f s", time.monotonic() - started)


def _kill_process_group(name: str, pgid: int) -> None:
    """SIGKILL what is left of a stopped child's process group (it has exited by now).

    Each child leads its own group, so its own children stay in it even when it dies first:
    nginx's workers have no parent-death signal, and a master killed alone would leave them
    holding the port.
    """
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return
    logger.warning("killed what %s left behind (process group %d)", name, pgid)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``serve``'s flags (SageMaker passes none)."""
    parser = argparse.ArgumentParser(prog="serve", description=__doc__.splitlines()[0])
    parser.add_argument("--no-nginx", action="store_true",
                        help="let gunicorn bind the port itself (also the fallback without nginx)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGTERM/SIGINT; see the module docstring."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    args = parse_args(argv)
    try:
        settings = Settings.from_env()
        parent = runtime_parent(Path(tempfile.gettempdir()), euid=os.geteuid())
    except SettingsError as exc:
        logger.error("%s", exc)
        return EXIT_BAD_INPUT
    supervisor = Supervisor()
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    nginx = None if args.no_nginx else shutil.which("nginx")
    env = worker_env(settings)
    with tempfile.TemporaryDirectory(prefix="fhe-serve-", dir=parent) as runtime:
        runtime_dir = Path(runtime)
        # nginx workers (another user when serve runs as root) must reach the socket inside.
        runtime_dir.chmod(0o711)
        try:
            if nginx is None:
                logger.warning("nginx %s: gunicorn binds %s:%d directly",
                               "disabled" if args.no_nginx else "not found on PATH",
                               settings.host, settings.port)
                supervisor.start("gunicorn", gunicorn_command(
                    settings, bind=f"{settings.host}:{settings.port}"), env)
            else:
                socket_path = runtime_dir / "gunicorn.sock"
                conf = runtime_dir / "nginx.conf"
                conf.write_text(render_nginx_conf(settings, runtime_dir=runtime_dir,
                                                  socket_path=socket_path))
                supervisor.start("gunicorn", gunicorn_command(
                    settings, bind=f"unix:{socket_path}"), env)
                nginx_argv = [nginx, "-c", str(conf), "-p", str(runtime_dir), "-e", "stderr"]
                supervisor.start("nginx", nginx_argv, env)
            logger.info("serving %s on %s:%d (workers=%d, timeout=%d s)", settings.model_dir,
                        settings.host, settings.port, settings.workers, settings.timeout)
            return supervisor.wait()
        finally:
            supervisor.stop()


if __name__ == "__main__":
    run_main(main)
