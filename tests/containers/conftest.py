"""Fixtures for the container tests: Docker, both images (built once per session), a job.

Without a usable Docker the tests skip and say why; under CI (``CI=true``) that is a failure
instead, so a CI run can never pass without having built and run the images.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest

from bench.images import (
    DockerError,
    ImageBuild,
    TrainingRun,
    build_image,
    create_job,
    docker_problem,
    ensure_base_image,
    run_training,
)
from common.sagemaker_layout import JobLayout
from local_mode.stack import training_csv
from tests.fixtures.models import breast_cancer_split

ENV_CI = "CI"
# Checkouts that share one Docker daemon (worktrees testing at once) give each its own tags.
ENV_IMAGE_TAG = "KIT_TEST_IMAGE_TAG"
_TAG = os.environ.get(ENV_IMAGE_TAG, "").strip() or "test"
IMAGE_TAGS = {"inference": f"concrete-inference:{_TAG}", "training": f"concrete-training:{_TAG}",
              "slim": f"concrete-inference:{_TAG}-slim"}
SLIM_TARGET = "slim"
GOOD_JOB = {"model": "LogisticRegression", "n_bits": 8, "C": 1.0}
MEASURED: dict[str, float | str] = {}
# Seconds per test: enough for the cold builds (base image, then an image) in its setup.
IMAGE_TEST_TIMEOUT = 3600


def in_ci() -> bool:
    """True under CI (``CI`` set to anything but empty/0/false)."""
    return os.environ.get(ENV_CI, "").strip().lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> NoReturn:
    """Skip with ``reason``; under CI fail instead (CI must build and run the images)."""
    if in_ci():
        pytest.fail(f"container tests cannot run, and {ENV_CI} is set: {reason}", pytrace=False)
    pytest.skip(f"container tests need Docker: {reason}")


@pytest.fixture(scope="session")
def container_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where docker builds and containers log (a session folder)."""
    return tmp_path_factory.mktemp("container-logs")


@pytest.fixture(scope="session")
def docker_ready(container_logs: Path) -> str:
    """Docker works and the base image is there; returns how it got there."""
    problem = docker_problem()
    if problem:
        unavailable(problem)
    started = time.monotonic()
    try:
        how = ensure_base_image(log=container_logs / "base-image.log")
    except DockerError as exc:
        unavailable(str(exc))
    MEASURED["base image"] = f"{how} ({time.monotonic() - started:.0f} s)"
    return how


def _build(kind: str, logs: Path, *, target: str | None = None) -> ImageBuild:
    name = target or kind
    try:
        build = build_image(kind, tag=IMAGE_TAGS[name], log=logs / f"build-{name}.log",
                            target=target)
    except DockerError as exc:
        pytest.fail(f"Dockerfile.{kind} (target {target or 'default'}) does not build: {exc}",
                    pytrace=False)
    MEASURED[f"{name} image"] = (f"{build.size_bytes / 1e9:.2f} GB, built in "
                                 f"{build.seconds:.0f} s")
    return build


@pytest.fixture(scope="session")
def inference_image(docker_ready: str, container_logs: Path) -> ImageBuild:
    """Dockerfile.inference built from this checkout (once per session, layer cache on)."""
    return _build("inference", container_logs)


@pytest.fixture(scope="session")
def slim_image(docker_ready: str, container_logs: Path) -> ImageBuild:
    """Dockerfile.inference's ``slim`` target (no torch, concrete-ml or scikit-learn)."""
    return _build("inference", container_logs, target=SLIM_TARGET)


@pytest.fixture(scope="session")
def training_image(docker_ready: str, container_logs: Path) -> ImageBuild:
    """Dockerfile.training built from this checkout (once per session, layer cache on)."""
    return _build("training", container_logs)


@pytest.fixture(scope="session")
def breast_cancer() -> tuple[np.ndarray, ...]:
    """``x_train, x_test, y_train, y_test``."""
    return tuple(breast_cancer_split())


def new_job(root: Path, hyperparameters: dict[str, object], x: np.ndarray,
            y: np.ndarray) -> JobLayout:
    """A SageMaker job folder with ``x``/``y`` as train.csv in the training channel."""
    root.mkdir(parents=True, exist_ok=True)
    job = create_job(root, hyperparameters)
    (job.channel_dir / "train.csv").write_bytes(training_csv(x, y))
    return job


@pytest.fixture(scope="session")
def trained_job(training_image: ImageBuild, breast_cancer: tuple[np.ndarray, ...],
                tmp_path_factory: pytest.TempPathFactory,
                container_logs: Path) -> Iterator[tuple[JobLayout, TrainingRun]]:
    """One good training job run by the training image (its model is what gets served)."""
    x_train, _, y_train, _ = breast_cancer
    job = new_job(tmp_path_factory.mktemp("job-good"), GOOD_JOB, x_train, y_train)
    run = run_training(training_image.tag, job, job_name="fhe-good-job",
                       log=container_logs / "train-good.log")
    MEASURED["training job (docker run train)"] = f"{run.seconds:.1f} s"
    yield job, run


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the images' sizes and timings measured in this session."""
    if MEASURED:
        terminalreporter.write_sep("-", "container images")
        for name, value in MEASURED.items():
            terminalreporter.write_line(f"{name}: {value}")
