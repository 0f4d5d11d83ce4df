"""What is installed in each built image: the lock's versions, a linker but no compiler, torch
without its GPU-only extras, no SDK or test tools."""

from __future__ import annotations

import re

import pytest

from bench.images import REPO_ROOT, ImageBuild, docker
from tests.containers.conftest import IMAGE_TEST_TIMEOUT

# The first test to need an image builds it (cold: minutes), inside its own time limit.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(IMAGE_TEST_TIMEOUT)]
LOCK = REPO_ROOT / "requirements" / "lock.txt"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.\-]*)==(\S+)$")
GPU_ONLY = {"triton", "nvidia-cusolver-cu12", "nvidia-cuda-nvrtc-cu12"}
# What both images install from the lock (their shared pip install line, with dependencies).
ROOTS = {"concrete-ml", "concrete-python", "flask", "gunicorn", "boto3", "requests", "numpy",
         "pandas", "scikit-learn"}
# In the lock for the client and the tests; in neither image.
NOT_IN_IMAGES = {"sagemaker", "moto", "pytest", "ruff", "hypothesis", "matplotlib", "parliament"}
PROBE = ("pip freeze; echo '-- ld'; ld --version | head -n 1; echo '-- compilers';"
         " command -v gcc cc g++ clang cmake; echo '-- import';"
         " python -c 'import torch, concrete.ml; print(torch.__version__)'")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(text: str) -> dict[str, str]:
    return {_norm(m[1]): m[2] for m in map(PIN.match, text.splitlines()) if m}


def _probe(image: ImageBuild) -> dict[str, str]:
    """``pip freeze`` and the other probes' output, by section (``freeze``, ``ld``, ...)."""
    out = docker("run", "--rm", "--network", "none", "--entrypoint", "sh", image.tag, "-c",
                 PROBE, timeout=300).stdout
    sections, name = {"freeze": ""}, "freeze"
    for line in out.splitlines():
        if line.startswith("-- "):
            name = line[3:]
            sections[name] = ""
        else:
            sections[name] += line + "\n"
    return sections


@pytest.mark.parametrize("kind", ["inference", "training"])
def test_image_has_the_lock_versions_a_linker_no_compiler_and_torch(kind: str, request) -> None:
    image: ImageBuild = request.getfixturevalue(f"{kind}_image")
    probe = _probe(image)
    installed, lock = _pins(probe["freeze"]), _pins(LOCK.read_text())
    assert probe["ld"].startswith("GNU ld")
    assert probe["compilers"] == ""
    assert probe["import"].splitlines()[-1].startswith(f"{lock['torch']}+")
    moved = {name: (version, lock[name]) for name, version in installed.items()
             if name in lock and lock[name] != version}
    assert moved == {}
    assert GPU_ONLY & set(installed) == set()
    assert installed["torch"] == lock["torch"]
    assert set(installed) >= ROOTS
    assert NOT_IN_IMAGES & set(installed) == set()
    extra = set(installed) - set(lock)
    if kind == "inference":
        assert extra == set()
    else:  # the toolkit and what it brings (gevent, paramiko, ...), none of it in the lock
        assert "sagemaker-training" in extra


# What the slim target installs: concrete-python without its declared dependencies, numpy, the
# serving stack and their dependencies; none of the frontend's or concrete-ml's packages.
SLIM_ROOTS = {"concrete-python", "numpy", "flask", "gunicorn", "boto3", "requests"}
NOT_IN_SLIM = {"torch", "concrete-ml", "scikit-learn", "scipy", "jsonpickle", "networkx",
               "z3-solver", "pandas", "skorch", "brevitas", "onnx"}
SLIM_PROBE = ("pip freeze; echo '-- ld'; ld --version | head -n 1; echo '-- compilers';"
              " command -v gcc cc g++ clang cmake; echo '-- import';"
              " python -c 'import concrete.compiler, inference.runtimes, sys;"
              " print(sorted(m for m in (\"torch\", \"sklearn\", \"concrete.ml\", \"concrete.fhe\")"
              " if m in sys.modules))';"
              " python -c 'import torch' 2>&1 | tail -n 1; python -c 'import concrete.ml' 2>&1"
              " | tail -n 1; echo '-- env'; echo $FHE_RUNTIME")


def test_slim_image_has_no_torch_concrete_ml_or_scikit_learn(slim_image: ImageBuild) -> None:
    out = docker("run", "--rm", "--network", "none", "--entrypoint", "sh", slim_image.tag, "-c",
                 SLIM_PROBE, timeout=300).stdout
    freeze, rest = out.split("-- ld\n", 1)
    installed, lock = _pins(freeze), _pins(LOCK.read_text())
    assert rest.startswith("GNU ld")
    assert "-- compilers\n-- import\n[]\n" in rest
    assert "No module named 'torch'" in rest and "No module named 'concrete.ml'" in rest
    assert rest.endswith("-- env\ncompiler\n")
    assert NOT_IN_SLIM & set(installed) == set()
    assert set(installed) >= SLIM_ROOTS
    assert {name: version for name, version in installed.items()
            if lock.get(name) != version} == {}
