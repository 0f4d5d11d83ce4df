"""Both Dockerfiles and the build context, read without Docker.

The two images share their first layers (torch, the CUDA libraries, concrete-ml: 5.9 GB) only
while those instructions are identical; the build context holds only what the images copy.
"""

from __future__ import annotations

import io
from pathlib import Path

from docker.utils.build import exclude_paths
from dockerfile_parse import DockerfileParser

from bench.images import DOCKERFILES, REPO_ROOT

CONTEXT_LIMIT_BYTES = 2 << 20


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    parser = DockerfileParser(fileobj=io.BytesIO((REPO_ROOT / dockerfile).read_bytes()))
    return [(i["instruction"], i["value"]) for i in parser.structure
            if i["instruction"] != "COMMENT"]


def _final_stage(dockerfile: str) -> list[tuple[str, str]]:
    """The instructions of the image's own stage, from its (last) FROM."""
    instructions = _instructions(dockerfile)
    start = max(n for n, (kind, _) in enumerate(instructions) if kind == "FROM")
    return instructions[start:]


def test_both_images_start_with_the_same_layers() -> None:
    inference = _final_stage(DOCKERFILES["inference"])
    end = next(n for n, (kind, value) in enumerate(inference)
               if kind == "RUN" and "concrete-ml" in value)
    prefix = inference[:end + 1]
    assert prefix[0] == ("FROM", "python:${PYTHON_VERSION}-slim-bookworm")
    runs = [value for kind, value in prefix if kind == "RUN"]
    assert "binutils" in runs[0] and "select-lock.sh" in runs[1] and "import torch" in runs[2]
    assert _final_stage(DOCKERFILES["training"])[:len(prefix)] == prefix
    versions = [i for i in _instructions(DOCKERFILES["training"])
                if i[1].startswith("PYTHON_VERSION")]
    assert versions == [("ARG", "PYTHON_VERSION=3.11")]


def _context() -> set[str]:
    patterns = [line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    return set(exclude_paths(str(REPO_ROOT), patterns))


def test_build_context_holds_what_the_images_copy_and_little_else() -> None:
    context = _context()
    copied: set[str] = set()
    for dockerfile in DOCKERFILES.values():
        for kind, value in _instructions(dockerfile):
            if kind == "COPY" and not value.startswith("--from="):
                for source in value.split()[:-1]:
                    path = REPO_ROOT / source
                    files = [path] if path.is_file() else [p for p in path.rglob("*")
                                                            if p.is_file()
                                                            and "__pycache__" not in p.parts]
                    copied |= {str(p.relative_to(REPO_ROOT)) for p in files}
    assert copied and copied <= context, sorted(copied - context)
    leaks = [name for name in context if name.split("/")[0] in
             (".venv", ".git", "tests", "bench", "client", ".pytest_cache", ".hypothesis")
             or "__pycache__" in name]
    assert leaks == []
    assert sum((REPO_ROOT / name).stat().st_size for name in context
               if (REPO_ROOT / name).is_file()) < CONTEXT_LIMIT_BYTES


def test_context_rules_do_exclude(tmp_path: Path) -> None:
    """Positive control: the same rules drop a venv, caches and scratch in a copy of the tree."""
    (tmp_path / ".dockerignore").write_text((REPO_ROOT / ".dockerignore").read_text())
    for name in (".venv/lib/x.py", "inference/__pycache__/a.pyc", "tests/x.py",
                 "inference/serve.py", "requirements/lock.txt", "bench/work/w.bin"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    patterns = [line.strip() for line in (tmp_path / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    kept = {name for name in exclude_paths(str(tmp_path), patterns) if (tmp_path / name).is_file()}
    assert kept - {".dockerignore"} == {"inference/serve.py", "requirements/lock.txt"}


def _stages(dockerfile: str) -> dict[str, list[tuple[str, str]]]:
    """Each stage's instructions, by name (``default`` for the last, unnamed one)."""
    instructions = _instructions(dockerfile)
    starts = [n for n, (kind, _) in enumerate(instructions) if kind == "FROM"]
    stages = {}
    for start, end in zip(starts, [*starts[1:], len(instructions)], strict=True):
        words = instructions[start][1].split()
        stages[words[2] if len(words) == 3 else "default"] = instructions[start:end]
    return stages


def test_the_slim_target_serves_with_the_default_images_layers_minus_torch() -> None:
    """Same base, same first layers, same serving layers; only the packages and runtime differ."""
    stages = _stages(DOCKERFILES["inference"])
    assert list(stages) == ["slim", "default"]  # the default image is the last stage
    slim, default = stages["slim"], stages["default"]
    assert slim[0][1] == f"{default[0][1]} AS slim"
    assert slim[1:5] == default[1:5]  # ENV, binutils, the lock
    packages = next(value for kind, value in slim if kind == "RUN" and "pip install" in value)
    assert "--no-deps concrete-python" in packages and "torch" not in packages.split("&&")[0]
    serving = default[next(n for n, i in enumerate(default) if "nginx" in i[1]):]
    tail = slim[next(n for n, i in enumerate(slim) if "nginx" in i[1]):]
    runtime_env = [i for i in tail if i[0] == "ENV" and "FHE_RUNTIME" in i[1]]
    assert runtime_env and "FHE_RUNTIME=compiler" in runtime_env[0][1]
    assert [i for i in tail if i not in runtime_env] == serving
