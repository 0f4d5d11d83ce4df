"""The layering is visible from the folders: roles import down into common/, never sideways.

``common/`` imports no other package of the kit; each role package (``training/``,
``inference/``, ``client/``) imports only ``common/`` besides itself; the images copy whole
packages (the inference image never ships ``local_mode/``) and the training job uploads exactly
what its image holds.
"""

from __future__ import annotations

import ast
import io
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

import framework

REPO = Path(__file__).resolve().parents[1]
ROLES = ("training", "inference", "client")
KIT = {p.name for p in REPO.iterdir() if (p / "__init__.py").is_file()} | {
    p.stem for p in REPO.glob("*.py")}


def kit_imports(package: str) -> dict[str, set[str]]:
    """For each module of ``package``: the top-level kit packages it imports (itself excluded)."""
    found: dict[str, set[str]] = {}
    for path in sorted((REPO / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(REPO))] = (names & KIT) - {package}
    return found


def test_the_shared_package_imports_no_other_package_of_the_kit() -> None:
    assert {module: used for module, used in kit_imports("common").items() if used} == {}


@pytest.mark.parametrize("role", ROLES)
def test_a_role_imports_only_common(role: str) -> None:
    sideways = {module: used - {"common"} for module, used in kit_imports(role).items()}
    assert {module: used for module, used in sideways.items() if used} == {}


def _copied_packages(dockerfile: str) -> tuple[set[str], set[str]]:
    """The kit packages a Dockerfile COPYs, and the single kit files it COPYs."""
    parser = DockerfileParser(fileobj=io.BytesIO((REPO / dockerfile).read_bytes()))
    sources = [source for item in parser.structure if item["instruction"] == "COPY"
               and not item["value"].startswith("--from=")
               for source in item["value"].split()[:-1]]
    return {source.split("/")[0] for source in sources} & KIT, {
        source for source in sources if source.split("/")[0] in KIT and "/" in source}


@pytest.mark.parametrize(("dockerfile", "packages", "files"), [
    ("Dockerfile.inference", {"common", "inference"}, set()),
    ("Dockerfile.training", {"common", "training"}, {"training/training_script.py"}),
])
def test_images_copy_whole_packages(dockerfile: str, packages: set[str], files: set[str]) -> None:
    copied, single_files = _copied_packages(dockerfile)
    assert copied == packages  # never local_mode/, client/ or the other role
    assert single_files == files  # the training toolkit's entry point, copied again on its own


def test_the_training_job_uploads_what_the_training_image_holds() -> None:
    assert {path.name for path in framework.CODE_DEPENDENCIES} == {"common", "training"}
