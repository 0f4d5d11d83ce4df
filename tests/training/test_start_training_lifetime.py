"""``start_training.py --local`` owns its training subprocess, on the real processes.

SIGTERM mid-training stops the training script too (and exits 130, an interrupted job);
after ``kill -9`` of the launcher the training script exits by itself (parent-death signal).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from common.process import EXIT_INTERRUPTED
from local_mode.stack import REPO_ROOT
from tests.fixtures.process_tree import assert_gone

pytestmark = pytest.mark.slow


@pytest.fixture
def training(npy_channel: Path, s3_env: dict[str, str], bucket: str, tmp_path: Path
             ) -> Iterator[tuple[subprocess.Popen[bytes], psutil.Process]]:
    """``start_training.py --local`` and its training script, once that runs."""
    argv = [sys.executable, "start_training.py", "--local", "--train", str(npy_channel),
            "--output-path", f"s3://{bucket}/models", "--job-name", "lifetime",
            "-H", "model=DecisionTreeClassifier"]
    with open(tmp_path / "launcher.log", "wb") as log:
        process = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    seen: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 60
        while not seen:
            assert process.poll() is None, (tmp_path / "launcher.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the training script never started"
            seen = [p for p in psutil.Process(process.pid).children(recursive=True)
                    if "training_script" in " ".join(p.cmdline())]
            time.sleep(0.05)
        yield process, seen[0]
    finally:
        process.kill()
        process.wait()
        for proc in seen:
            if proc.is_running():
                proc.kill()


def test_sigterm_mid_training_stops_the_training_script(training) -> None:
    process, script = training
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == EXIT_INTERRUPTED
    assert_gone([script], timeout=5)


def test_the_training_script_exits_after_kill_9_of_the_launcher(training) -> None:
    process, script = training
    process.kill()
    process.wait()
    assert_gone([script], timeout=5)
