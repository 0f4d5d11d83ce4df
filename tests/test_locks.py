"""The two locks (Python 3.11 and 3.12), the Dockerfiles and the Makefile agree with each other."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "requirements"
LOCKS = {"3.11": REQUIREMENTS / "lock.txt", "3.12": REQUIREMENTS / "lock-py312.txt"}
DOCKERFILES = ("Dockerfile.training", "Dockerfile.inference")
SELECT = REQUIREMENTS / "select-lock.sh"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.\-]*)==(\S+)$")
# What Python 3.12 changes, and why (see the header of lock-py312.txt).
EXPECTED_DIFFERENCES = {"pandas": ("2.0.3", "2.2.3"), "triton": ("2.3.1", None)}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(path: Path) -> dict[str, str]:
    return {_norm(m[1]): m[2] for line in path.read_text().splitlines()
            if (m := PIN.match(line.strip()))}


def _header(path: Path, key: str) -> list[str]:
    found = [line.split(":", 1)[1].split() for line in path.read_text().splitlines()
             if line.startswith(f"# {key}:")]
    return found[0] if found else []


def _dockerfile(name: str) -> DockerfileParser:
    return DockerfileParser(fileobj=io.BytesIO((ROOT / name).read_bytes()))


def test_the_locks_differ_only_where_python_312_requires_it() -> None:
    old, new = _pins(LOCKS["3.11"]), _pins(LOCKS["3.12"])
    differences = {name: (old.get(name), new.get(name)) for name in set(old) | set(new)
                   if old.get(name) != new.get(name)}
    assert differences == EXPECTED_DIFFERENCES


@pytest.mark.parametrize("python", sorted(LOCKS))
def test_each_lock_satisfies_the_projects_pins_for_its_python(python: str) -> None:
    import tomllib

    pins = _pins(LOCKS[python])
    environment = {"python_version": python, "python_full_version": f"{python}.7"}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    sources = [*project, *(REQUIREMENTS / "requirements.in").read_text().splitlines()]
    for line in filter(None, (s.split("#")[0].strip() for s in sources)):
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        name = _norm(requirement.name)
        assert name in pins, f"{name} is not pinned in {LOCKS[python].name}"
        assert requirement.specifier.contains(pins[name]), (
            f"{LOCKS[python].name} pins {name}=={pins[name]}, {line!r} asks for {requirement}")


def test_source_builds_are_declared_with_their_toolchain() -> None:
    # onnxoptimizer 0.3.13 (pinned by concrete-ml 1.9.0) has no cp312 wheel.
    assert _header(LOCKS["3.12"], "source-builds") == ["onnxoptimizer"]
    assert set(_header(LOCKS["3.12"], "build-deps")) >= {"cmake", "build-essential"}
    assert _header(LOCKS["3.11"], "source-builds") == []  # 3.11 installs wheels only
    for name in DOCKERFILES:  # both install the selected lock's build-deps for its pip step
        assert "sed -n 's/^# build-deps: //p' /opt/kit/requirements/lock.txt" in \
            _dockerfile(name).content


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfiles_copy_every_lock_and_install_the_selected_one(name: str) -> None:
    parser = _dockerfile(name)
    steps = [(i["instruction"], i["value"]) for i in parser.structure]
    copy = next(index for index, (kind, value) in enumerate(steps)
                if kind == "COPY" and "requirements/lock.txt" in value)
    sources = steps[copy][1].split()[:-1]
    assert sorted(sources) == sorted(str(p.relative_to(ROOT)) for p in [*LOCKS.values(), SELECT])
    assert steps[copy + 1] == ("RUN", "sh /opt/kit/requirements/select-lock.sh"
                                      " /opt/kit/requirements")
    pip_runs = [index for index, (kind, value) in enumerate(steps)
                if kind == "RUN" and "pip install" in value]
    assert pip_runs and min(pip_runs) > copy + 1
    for index in pip_runs:
        assert re.search(r"pip install (-r|-c) /opt/kit/requirements/lock\.txt", steps[index][1])
    # Packages the image names must be pinned by every lock.
    for index in pip_runs:
        command = re.split(r"&&|;", steps[index][1].split("pip install", 1)[1])[0]
        for word in command.split():
            if word.startswith(("-", "/")):
                continue
            package = _norm(re.split(r"[=<>\[]", word.strip("\"'"))[0])
            if package == "sagemaker-training":  # the toolkit: not in the locks, constrained
                continue
            for lock in LOCKS.values():
                assert package in _pins(lock), f"{name} installs {package}, not in {lock.name}"


def _python_shim(tmp_path: Path, version: str) -> Path:
    folder = tmp_path / f"py{version}"
    folder.mkdir()
    shim = folder / "python"
    shim.write_text(f"#!/bin/sh\necho {version}\n")
    shim.chmod(0o755)
    return folder


@pytest.mark.parametrize(("python", "chosen"), [("3.11", "lock.txt"), ("3.12", "lock-py312.txt")])
def test_select_lock_installs_the_lock_of_the_running_python(tmp_path: Path, python: str,
                                                             chosen: str) -> None:
    image = tmp_path / "opt-kit-requirements"
    image.mkdir()
    for lock in LOCKS.values():
        shutil.copy(lock, image / lock.name)
    shim = _python_shim(tmp_path, python)
    done = subprocess.run(["sh", str(SELECT), str(image)], capture_output=True, text=True,
                          env={"PATH": f"{shim}:/usr/bin:/bin"}, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"Python {python}: requirements/{chosen}"
    assert [p.name for p in image.iterdir()] == ["lock.txt"]
    assert (image / "lock.txt").read_bytes() == (REQUIREMENTS / chosen).read_bytes()


def test_select_lock_refuses_a_python_without_a_lock(tmp_path: Path) -> None:
    shim = _python_shim(tmp_path, "3.10")
    done = subprocess.run(["sh", str(SELECT), str(tmp_path)], capture_output=True, text=True,
                          env={"PATH": f"{shim}:/usr/bin:/bin"}, check=False)
    assert done.returncode == 1
    assert "no lock for Python 3.10: build with PYTHON_VERSION=3.11 or 3.12" in done.stderr


@pytest.mark.parametrize(("python", "lock"), [("3.11", "lock.txt"), ("3.12", "lock-py312.txt")])
def test_make_installs_the_lock_of_its_python(tmp_path: Path, python: str, lock: str) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    shim = _python_shim(tmp_path, python) / "python"
    done = subprocess.run(["make", "-n", "venv", f"PYTHON={shim}", f"VENV={tmp_path / 'venv'}"],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert f"pip install --quiet -r requirements/{lock}" in done.stdout
