"""Dockerfile.inference: parses, installs only lock versions, runs `serve` as a non-root user."""

from __future__ import annotations

import io
import re
from pathlib import Path

from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[2]
TRAINING_ONLY = ("sagemaker", "sagemaker-training", "pytest", "moto", "ruff", "hypothesis",
                 "matplotlib", "dockerfile-parse", "parliament")


def _parser() -> DockerfileParser:
    # In memory: DockerfileParser() without a file object would write ./Dockerfile.
    return DockerfileParser(fileobj=io.BytesIO((ROOT / "Dockerfile.inference").read_bytes()))


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements" / "lock.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if match:
            pins[match[1].lower().replace("_", "-")] = match[2]
    return pins


def _pip_commands(parser: DockerfileParser, verb: str) -> list[str]:
    """Every ``pip <verb> ...`` command of the RUN lines (``&&``-chains split)."""
    return [command.strip() for i in parser.structure if i["instruction"] == "RUN"
            for command in i["value"].split("&&") if f"pip {verb} " in command]


def _pip_installs(parser: DockerfileParser) -> list[str]:
    """Each `pip install ...` command of the RUN lines (shell commands split on && and ;)."""
    commands = [c.strip() for i in parser.structure if i["instruction"] == "RUN"
                for c in re.split(r"&&|;", i["value"].replace("\\\n", " "))]
    return [c for c in commands if c.startswith("pip install")]


def test_python_base_and_nginx() -> None:
    parser = _parser()
    first = next(i for i in parser.structure if i["instruction"] != "COMMENT")
    assert (first["instruction"], first["value"]) == ("ARG", "PYTHON_VERSION=3.11")
    assert parser.baseimage == "python:3.11-slim-bookworm"
    assert any("apt-get install" in i["value"] and "nginx" in i["value"]
               for i in parser.structure if i["instruction"] == "RUN")


def test_every_install_is_constrained_by_the_lock_and_pins_match() -> None:
    parser, lock = _parser(), _lock()
    installs = _pip_installs(parser)
    assert installs, "no pip install found"
    for command in installs:
        assert "-c /opt/kit/requirements/lock.txt" in command or "-r " in command, command
        words = command.replace("\\", " ").split()
        packages = [w for w in words[words.index("install") + 1:] if not w.startswith("-")
                    and not w.startswith("/")]
        for package in packages:
            name, _, version = package.partition("==")
            assert name.lower() in lock, f"{name} is not in the lock"
            assert name.lower() not in TRAINING_ONLY, f"{name} is training/test only"
            if version:
                assert version == lock[name.lower()], f"{package} differs from the lock"
    assert re.search(r"COPY requirements/lock\.txt .*/opt/kit/requirements/", parser.content)


def test_runs_serve_as_non_root_without_credentials() -> None:
    parser = _parser()
    users = [i["value"] for i in parser.structure if i["instruction"] == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert parser.cmd == '["serve"]' or "serve" in (parser.cmd or "")
    assert "/usr/local/bin/serve" in parser.content
    assert not re.search(r"AWS_(ACCESS|SECRET|SESSION)", parser.content)
    assert "SAGEMAKER_BIND_TO_PORT=8080" in parser.content


def test_only_gpu_only_packages_are_removed_and_torch_still_imports() -> None:
    parser, lock = _parser(), _lock()
    removed = parser.args["GPU_ONLY_PACKAGES"].split()
    assert removed and all(name in lock for name in removed)
    assert all(name == "triton" or name.startswith("nvidia-") for name in removed)
    uninstalls = _pip_commands(parser, "uninstall")
    assert uninstalls and all(c == "pip uninstall -y ${GPU_ONLY_PACKAGES}" for c in uninstalls)
    assert 'python -c "import torch"' in parser.content
