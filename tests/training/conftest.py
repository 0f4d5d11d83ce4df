"""Fixtures of the training tests: small training channels and a subprocess runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer

from local_mode.training_job import REPO_ROOT, TRAINING_SCRIPT

LABEL_COLUMN = "diagnosis"


@pytest.fixture(scope="session")
def breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's breast-cancer data: 569 rows x 30 features, labels 0/1."""
    return load_breast_cancer(return_X_y=True)


@pytest.fixture
def npy_channel(tmp_path: Path, breast_cancer: tuple[np.ndarray, np.ndarray]) -> Path:
    """A channel with the reference naming: *_features.npy and *_labels.npy."""
    channel = tmp_path / "channel"
    channel.mkdir()
    np.save(channel / "bc_training_features.npy", breast_cancer[0])
    np.save(channel / "bc_training_labels.npy", breast_cancer[1])
    return channel


@pytest.fixture
def csv_channel(tmp_path: Path, breast_cancer: tuple[np.ndarray, np.ndarray]) -> Path:
    """A channel with one CSV whose label column is ``diagnosis``."""
    channel = tmp_path / "csv_channel"
    channel.mkdir()
    frame = pd.DataFrame(breast_cancer[0], columns=[f"f{i}" for i in range(30)])
    frame[LABEL_COLUMN] = breast_cancer[1]
    frame.to_csv(channel / "patients.csv", index=False)
    return channel


def sagemaker_env(root: Path, channel: Path) -> dict[str, str]:
    """The SM_* environment of a job rooted at ``root`` (like /opt/ml)."""
    return {
        "SM_MODEL_DIR": str(root / "model"),
        "SM_CHANNEL_TRAINING": str(channel),
        "SM_OUTPUT_DIR": str(root / "output"),
        "SM_OUTPUT_DATA_DIR": str(root / "output" / "data"),
    }


def run_script(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run training_script.py as SageMaker's toolkit does: a plain script with --name value args."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    base["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run([sys.executable, str(TRAINING_SCRIPT), *args], env={**base, **env},
                          capture_output=True, text=True, timeout=600, check=False)
