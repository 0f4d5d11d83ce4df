"""A gunicorn worker that ran a circuit still reports its real exit status to the arbiter.

The case that matters: a worker whose app load executed a circuit (a warm-up run, say) and then
failed exits with gunicorn's WORKER_BOOT_ERROR (3), which makes the arbiter halt instead of
respawning broken workers forever. Without ``inference.gunicorn_conf`` concrete's exit handler
turns that 3 into 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from local_mode.processes import free_port

REPO = Path(__file__).resolve().parents[2]
WORKER_BOOT_ERROR = 3

# An app module that executes a circuit while it loads, then fails to load.
BROKEN_APP = textwrap.dedent('''
    from concrete import fhe

    circuit = fhe.compiler({"x": "encrypted"})(lambda x: x + 1).compile(range(8))
    assert circuit.encrypt_run_decrypt(3) == 4
    raise RuntimeError("the model could not be loaded")
''')


def _gunicorn(tmp_path: Path, *config: str) -> tuple[subprocess.Popen[bytes], Path]:
    (tmp_path / "broken_app.py").write_text(BROKEN_APP)
    log = tmp_path / "gunicorn.log"
    with open(log, "wb") as out:
        arbiter = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{free_port()}",
             "--workers", "1", "--error-logfile", "-", *config, "broken_app:app"],
            cwd=tmp_path, env={**os.environ, "PYTHONPATH": f"{tmp_path}:{REPO}"},
            stdout=out, stderr=subprocess.STDOUT)
    return arbiter, log


def test_a_worker_failing_to_boot_after_fhe_halts_the_arbiter(tmp_path: Path) -> None:
    arbiter, log = _gunicorn(tmp_path, "--config", "python:inference.gunicorn_conf")
    try:
        assert arbiter.wait(timeout=120) == WORKER_BOOT_ERROR, log.read_text()[-3000:]
    finally:
        arbiter.kill()
    assert "Worker failed to boot" in log.read_text()
    assert log.read_text().count("Booting worker") == 1


def test_without_the_hook_the_arbiter_respawns_the_broken_worker(tmp_path: Path) -> None:
    """The control: the worker's status 3 becomes 0, so gunicorn keeps booting new workers."""
    arbiter, log = _gunicorn(tmp_path)
    try:
        deadline = time.monotonic() + 120
        while log.read_text().count("Booting worker") < 2:
            assert arbiter.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
    finally:
        arbiter.kill()
        arbiter.wait()


def test_serve_passes_the_hook_to_gunicorn() -> None:
    from inference.serve import gunicorn_command
    from inference.settings import Settings

    command = gunicorn_command(Settings(), bind="unix:/tmp/x.sock")
    assert command[command.index("--config") + 1] == "python:inference.gunicorn_conf"
