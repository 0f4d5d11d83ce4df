"""The examples run as documented (so they cannot rot)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_encrypted_inference_example_runs_end_to_end() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("AWS_ENDPOINT_URL_S3", None)
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "encrypted_inference.py")],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "refused: X has 5 features per row but the model expects 30" in result.stdout
    assert "second predictor: keygens 0 evaluation-key uploads 0" in result.stdout
