"""No credentials or keys baked into the images: both Dockerfiles and everything they COPY."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = ("Dockerfile.inference", "Dockerfile.training")
SECRET_PATTERNS = {
    "AWS access key id": re.compile(rb"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret key assignment": re.compile(
        rb"aws_secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+]{40}", re.I),
    "private key": re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
}
KEY_FILES = re.compile(r"(\.ekl|keyset\.bin|\.pem|\.key|credentials|\.env)$")


def _parse(dockerfile: str) -> DockerfileParser:
    return DockerfileParser(fileobj=io.BytesIO((REPO / dockerfile).read_bytes()))


def copied_files(dockerfile: str) -> list[Path]:
    """Every file in the build context that ``dockerfile`` COPYs or ADDs."""
    parser = _parse(dockerfile)
    files: list[Path] = []
    for item in parser.structure:
        if item["instruction"] not in ("COPY", "ADD") or item["value"].startswith("--from="):
            continue  # COPY --from takes files from a build stage, not from the context
        sources = [s for s in item["value"].split()[:-1] if not s.startswith("--")]
        for source in sources:
            path = REPO / source
            assert path.exists(), f"{dockerfile} copies missing {source}"
            files += [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return files


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_no_credentials_or_keys_in_dockerfile_or_context(dockerfile: str) -> None:
    files = [REPO / dockerfile, *copied_files(dockerfile)]
    assert len(files) > 3
    found = [(str(f.relative_to(REPO)), name) for f in files
             for name, pattern in SECRET_PATTERNS.items() if pattern.search(f.read_bytes())]
    assert found == []
    assert [f for f in files if KEY_FILES.search(f.name)] == []


def test_scan_finds_a_planted_access_key() -> None:
    """Positive control for the patterns above (the key is AWS's documented example)."""
    sample = b"aws_access_key_id = AKIAIOSFODNN7EXAMPLE\n-----BEGIN RSA PRIVATE KEY-----"
    assert all(p.search(sample) for n, p in SECRET_PATTERNS.items() if "secret" not in n)


def test_inference_image_runs_as_non_root() -> None:
    parser = _parse("Dockerfile.inference")
    users = [i["value"] for i in parser.structure if i["instruction"] == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
