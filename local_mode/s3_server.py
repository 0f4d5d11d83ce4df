"""An embedded S3 (moto's server) on a loopback port, for local mode and tests.

It runs in its own process, so it can be stopped and restarted (fault tests) and does not
compete with FHE work for the GIL. State lives in memory: a restart starts empty.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

import boto3

from common.process import die_with_parent
from local_mode.processes import free_port, stop_process, wait_for_http

LOCAL_REGION = "us-east-1"
LOCAL_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}


def local_session() -> boto3.session.Session:
    """A boto3 session with the embedded S3's fake credentials (never real ones)."""
    return boto3.session.Session(
        aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=LOCAL_CREDENTIALS["AWS_SESSION_TOKEN"],
        region_name=LOCAL_REGION,
    )


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

    def client(self) -> Any:
        """A boto3 S3 client of this server, with its fake credentials."""
        return local_session().client("s3", endpoint_url=self.endpoint_url)

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
            stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent(),
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
