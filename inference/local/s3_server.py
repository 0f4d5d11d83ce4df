"""An embedded S3 (moto's server) on a loopback port, for local mode and tests.

It runs in its own process, so it can be stopped and restarted (fault tests) and does not
compete with FHE work for the GIL. State lives in memory: a restart starts empty.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import requests

LOCAL_REGION = "us-east-1"
LOCAL_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_http(
    url: str, *, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll ``url`` until it answers any HTTP status.

    Raises:
        RuntimeError: ``process`` exited, or ``timeout`` seconds passed.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process for {url} exited with code {process.returncode}")
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


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


class LocalS3Server:
    """A moto S3 server on ``127.0.0.1``; a context manager.

    Attributes:
        endpoint_url: ``http://127.0.0.1:<port>``, for ``boto3.client("s3", endpoint_url=...)``
            or the ``AWS_ENDPOINT_URL_S3`` environment variable.
        log_path: Where the server's output goes (one line per HTTP request), if anywhere.
    """

    def __init__(self, *, port: int | None = None, log_path: str | Path | None = None) -> None:
        self.port = port or free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path) if log_path else None
        self._process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"LocalS3Server(endpoint_url={self.endpoint_url!r}, {state})"

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def env(self) -> dict[str, str]:
        """Environment variables that point boto3 (and this kit's scripts) at this server."""
        return {"AWS_ENDPOINT_URL_S3": self.endpoint_url, "AWS_DEFAULT_REGION": LOCAL_REGION,
                **LOCAL_CREDENTIALS}

    def start(self, *, timeout: float = 30.0) -> LocalS3Server:
        """Start the server and wait until it answers."""
        if self.running:
            return self
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        env = {**os.environ, **LOCAL_CREDENTIALS, "AWS_DEFAULT_REGION": LOCAL_REGION}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
        if log is not subprocess.DEVNULL:
            log.close()
        wait_for_http(f"{self.endpoint_url}/moto-api/", timeout=timeout, process=self._process)
        return self

    def stop(self) -> None:
        """Stop the server (its data is lost)."""
        if self._process is None:
            return
        stop_process(self._process, timeout=10)
        self._process = None

    def __enter__(self) -> LocalS3Server:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
