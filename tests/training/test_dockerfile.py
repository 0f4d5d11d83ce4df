"""Dockerfile.training: parses, installs exactly the lock's pins, runs the training script."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile.training"
LOCK = REPO / "requirements" / "lock.txt"
# Installed in the image but not part of the lock (documented in the Dockerfile).
NOT_IN_LOCK = {"sagemaker-training"}
PIN_RE = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.\-]*)(?:\[[^\]]*\])?==([A-Za-z0-9_.+\-]+)")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def parsed() -> DockerfileParser:
    return DockerfileParser(fileobj=io.BytesIO(DOCKERFILE.read_bytes()))


def _lock() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        match = PIN_RE.fullmatch(line.strip())
        if match:
            pins[_norm(match[1])] = match[2]
    return pins


def _expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), text)


def _runs(parsed: DockerfileParser) -> list[str]:
    return [i["value"] for i in parsed.structure if i["instruction"] == "RUN"]


def _all_args(parsed: DockerfileParser) -> dict[str, str]:
    args = {}
    for item in parsed.structure:
        if item["instruction"] == "ARG" and "=" in item["value"]:
            name, value = item["value"].split("=", 1)
            args[name.strip()] = value.strip().strip('"')
    return args


def test_python_version_is_a_build_arg_defaulting_to_311(parsed: DockerfileParser) -> None:
    assert _all_args(parsed)["PYTHON_VERSION"] == "3.11"
    assert parsed.baseimage.startswith("python:3.11")
    first = next(i for i in parsed.structure if i["instruction"] != "COMMENT")
    assert first["instruction"] == "ARG" and first["value"] == "PYTHON_VERSION=3.11"
    assert "same Python major.minor" in parsed.content


def test_every_pin_equals_the_lock(parsed: DockerfileParser) -> None:
    lock = _lock()
    args = _all_args(parsed)
    pins = [(_norm(m[1]), m[2]) for run in _runs(parsed)
            for m in PIN_RE.finditer(_expand(run, args))]
    assert pins, "the Dockerfile pins nothing explicitly"
    mismatches = [f"{name}=={ver} (lock: {lock.get(name)})" for name, ver in pins
                  if name not in NOT_IN_LOCK and lock.get(name) != ver]
    assert not mismatches
    assert {name for name, _ in pins} - set(lock) <= NOT_IN_LOCK


def _final_stage(parsed: DockerfileParser) -> list[dict[str, str]]:
    froms = [n for n, i in enumerate(parsed.structure) if i["instruction"] == "FROM"]
    return parsed.structure[froms[-1]:]


def test_installs_from_the_lock(parsed: DockerfileParser) -> None:
    final = _final_stage(parsed)
    copies = [i["value"] for i in final if i["instruction"] == "COPY"]
    assert any(c.startswith("requirements/lock.txt ") for c in copies)
    installs = [command.strip() for i in final if i["instruction"] == "RUN"
                for command in i["value"].split("&&") if "pip install" in command]
    assert any("concrete-ml" in command for command in installs)
    # Every install is constrained by the lock, so no pinned version can move.
    assert installs and all(re.search(r"pip install -c \S*lock\.txt", c) for c in installs)
    assert any("sagemaker-training==" in command for command in installs)


def test_entry_point_and_code(parsed: DockerfileParser) -> None:
    assert parsed.envs["SAGEMAKER_PROGRAM"] == "training_script.py"
    assert parsed.envs["SAGEMAKER_SUBMIT_DIRECTORY"] == "/opt/ml/code"
    copies = [i["value"].split() for i in parsed.structure if i["instruction"] == "COPY"
              and not i["value"].startswith("--from=")]
    assert ["training/training_script.py", "/opt/ml/code/training_script.py"] in copies
    for sources in (c[:-1] for c in copies):
        for source in sources:
            assert (REPO / source).exists(), source


def test_no_compiler_in_the_image(parsed: DockerfileParser) -> None:
    """The toolkit's C extension is built in a separate stage; the final image has binutils only."""
    final_runs = [i["value"] for i in _final_stage(parsed) if i["instruction"] == "RUN"]
    apt = [run for run in final_runs if "apt-get install" in run]
    assert apt and all(re.search(r"\b(gcc|g\+\+|build-essential|cmake|clang)\b", run) is None
                       for run in apt)
    assert any("binutils" in run for run in apt)
    assert any("gcc" in run for run in _runs(parsed))  # in the toolkit stage


def test_no_credentials_baked_in(parsed: DockerfileParser) -> None:
    secret = re.compile(r"AWS_(SECRET|ACCESS|SESSION)|PASSWORD|TOKEN|SECRET", re.I)
    names = list(parsed.envs) + list(_all_args(parsed))
    assert not [n for n in names if secret.search(n)]
    assert not re.search(r"AKIA[0-9A-Z]{16}", parsed.content)
