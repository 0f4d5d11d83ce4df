"""Without Docker the container tests skip and say why; under CI that is a failure."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.containers.conftest import ENV_CI, unavailable

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("value", ["", "0", "false"])
def test_outside_ci_a_missing_docker_skips_with_the_reason(
        value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_CI, value)
    with pytest.raises(pytest.skip.Exception, match="container tests need Docker: no daemon"):
        unavailable("no daemon")


@pytest.mark.parametrize("value", ["true", "1", "yes"])
def test_under_ci_a_missing_docker_fails(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_CI, value)
    with pytest.raises(pytest.fail.Exception, match="CI is set: no daemon"):
        unavailable("no daemon")


CLEAN_SUMMARY = "============ 340 passed, 2 skipped in 345.10s (0:05:45) ============"


@pytest.mark.parametrize("status", [0, 1, 2, 3])
def test_ci_run_exits_with_make_tests_status_even_after_a_clean_summary(
        status: int, tmp_path: Path) -> None:
    """.ci/run's gate: a clean pytest summary line never hides a failing ``make test`` status.

    A fake ``make`` (first on PATH) prints a clean summary and exits ``status``; the real
    script runs around it (its tool checks find what is installed here).
    """
    fake = tmp_path / "bin" / "make"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho '{CLEAN_SUMMARY}'\nexit {status}\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", ".ci/run"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300, check=False)
    assert CLEAN_SUMMARY in result.stdout, result.stderr[-2000:]
    assert result.returncode == status, result.stderr[-2000:]
