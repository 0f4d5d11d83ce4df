"""Child processes of local mode: free ports, waiting until a server answers, stopping.

One copy of the helpers the embedded S3, the local endpoint, the demo, the benchmark and the
tests use to start and stop the kit's servers.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import requests

POLL_SECONDS = 0.05


class ProcessError(RuntimeError):
    """A child process exited, or did not become ready in time; the message says which."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _check_alive(process: subprocess.Popen[bytes] | None, what: str) -> None:
    if process is not None and process.poll() is not None:
        raise ProcessError(f"{what} exited with code {process.returncode}")


def wait_for_http(url: str, *, timeout: float, process: subprocess.Popen[bytes] | None = None,
                  healthy: bool = False, interval: float = POLL_SECONDS) -> float:
    """Poll ``url`` until it answers (any HTTP status; with ``healthy``, 200).

    Returns:
        Seconds waited.

    Raises:
        ProcessError: ``process`` exited, or ``timeout`` seconds passed.
    """
    started = time.monotonic()
    with requests.Session() as http:
        while time.monotonic() - started < timeout:
            _check_alive(process, f"the process serving {url}")
            try:
                if http.get(url, timeout=2).status_code == 200 or not healthy:
                    return time.monotonic() - started
            except requests.RequestException:
                pass
            time.sleep(interval)
    raise ProcessError(f"{url} did not answer{' 200' if healthy else ''} within {timeout:.0f} s")


def wait_for_ping(url: str, *, timeout: float, process: subprocess.Popen[bytes] | None = None,
                  interval: float = POLL_SECONDS) -> float:
    """Poll a serving container's ``url/ping`` until it answers 200 (the model is loaded).

    Returns:
        Seconds waited.

    Raises:
        ProcessError: ``process`` exited, or ``timeout`` seconds passed.
    """
    return wait_for_http(f"{url.rstrip('/')}/ping", timeout=timeout, process=process,
                         healthy=True, interval=interval)


def wait_for_ready_file(path: Path, *, timeout: float, process: subprocess.Popen[bytes],
                        what: str = "deploy_endpoint.py --local", log: Path | None = None
                        ) -> dict[str, Any]:
    """Wait for the JSON document a child writes once it is ready (``--ready-file``).

    Raises:
        ProcessError: ``process`` exited, or ``timeout`` seconds passed (with the tail of
            ``log``, if given).
    """
    deadline = time.monotonic() + timeout
    try:
        while not path.is_file():
            _check_alive(process, what)
            if time.monotonic() > deadline:
                raise ProcessError(f"{what} was not ready within {timeout:.0f} s")
            time.sleep(POLL_SECONDS)
    except ProcessError as exc:
        if log is None:
            raise
        raise ProcessError(f"{exc}; see {log}:\n{tail(log)}") from exc
    return dict(json.loads(path.read_text()))


def stop_process(process: subprocess.Popen[bytes], *, timeout: float = 30.0) -> int:
    """SIGTERM ``process``, wait up to ``timeout`` seconds, then SIGKILL; return its exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def tail(log: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file ("" when it cannot be read)."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
