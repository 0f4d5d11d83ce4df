"""The SageMaker SDK's own local mode drives the training image through ``framework.Concrete``.

``instance_type="local"``: the SDK writes the job's config files, lays out /opt/ml, starts the
container with docker compose, and packs model.tar.gz and output.tar.gz, exactly the code paths
a SageMaker user runs (with local data and a local output path instead of S3).
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from bench.images import ImageBuild, docker
from framework import Concrete
from local_mode.s3_server import local_session
from local_mode.stack import training_csv
from tests.containers.conftest import GOOD_JOB, IMAGE_TEST_TIMEOUT, unavailable

# The first test to need an image builds it (cold: minutes), inside its own time limit.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(IMAGE_TEST_TIMEOUT)]
ROLE = "arn:aws:iam::123456789012:role/fhe-training"


def _compose_problem() -> str | None:
    """Why the SDK's local mode cannot start containers here (None when it can)."""
    plugin = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True,
                            check=False)
    if plugin.returncode == 0 and "v2" in plugin.stdout:
        return None
    if shutil.which("docker-compose"):
        return None
    return ("the SageMaker SDK's local mode needs docker compose: apt-get install docker-compose "
            "(CI's .ci/run installs it)")


def _members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name.removeprefix("./"): tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in tar.getmembers() if m.isfile()}


def _remove_compose_containers(root: Path) -> None:
    """Remove the (stopped) containers docker compose created for jobs under ``root``."""
    label = "com.docker.compose.project.working_dir"
    listing = docker("ps", "-a", "--filter", f"label={label}", "--format",
                     f'{{{{.ID}}}} {{{{.Label "{label}"}}}}').stdout
    ours = [line.split()[0] for line in listing.splitlines()
            if line.split()[1:] and Path(line.split()[1]).is_relative_to(root)]
    if ours:
        docker("rm", "-f", *ours, check=False)


@pytest.fixture
def local_mode(training_image: ImageBuild, breast_cancer: tuple[np.ndarray, ...],
               tmp_path: Path) -> Iterator[tuple[Callable[[dict[str, object]], Concrete], str]]:
    """``(estimator factory, training channel URI)`` for the SDK's local mode."""
    from sagemaker.local import LocalSession

    problem = _compose_problem()
    if problem:
        unavailable(problem)
    x_train, _, y_train, _ = breast_cancer
    channel = tmp_path / "data"
    channel.mkdir()
    (channel / "train.csv").write_bytes(training_csv(x_train, y_train))
    (tmp_path / "containers").mkdir()

    def estimator(hyperparameters: dict[str, object]) -> Concrete:
        session = LocalSession(boto_session=local_session())
        session.config = {"local": {"local_code": True,
                                    "container_root": str(tmp_path / "containers")}}
        return Concrete(image_uri=training_image.tag, role=ROLE, instance_type="local",
                        sagemaker_session=session, output_path=f"file://{tmp_path / 'out'}",
                        hyperparameters=hyperparameters)

    yield estimator, f"file://{channel}"
    _remove_compose_containers(tmp_path)


def test_estimator_fit_in_local_mode_packs_the_model(local_mode) -> None:
    make_estimator, channel = local_mode
    estimator = make_estimator(GOOD_JOB)
    estimator.fit({"training": channel}, wait=True, logs="None")
    model_tar = Path(estimator.model_data.removeprefix("file://"))
    assert sorted(_members(model_tar)) == ["client.zip", "manifest.json", "server.zip"]
    output = _members(model_tar.parent / "output.tar.gz")
    assert {"data/metrics.json", "data/reference_model.json"} <= set(output)
    assert "failure" not in output


def test_failed_job_in_local_mode_reports_the_reason(local_mode, tmp_path: Path) -> None:
    make_estimator, channel = local_mode
    with pytest.raises(RuntimeError, match="exited with code"):
        make_estimator({"model": "NoSuchModel"}).fit({"training": channel}, wait=True,
                                                     logs="None")
    output = _members(next((tmp_path / "out").rglob("output.tar.gz")))
    assert "NoSuchModel" in output["failure"].decode()
