"""bench.images and the images table of docs/benchmark.md, without Docker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sagemaker.estimator import EstimatorBase

from bench.images import SAGEMAKER_HOST, create_job, docker_problem
from bench.report import IMAGES_BEGIN, IMAGES_END, render_images_section, update_readme

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGES = {
    "date": "2026-11-27T03:00:00+00:00", "base_image": "python:3.11-slim-bookworm",
    "base_image_source": "built", "model": "LogisticRegression (breast cancer)",
    "machine": {"host_kind": "2cpu-amd-epyc", "nproc": 2, "loadavg_start": [1.0, 1.0, 1.0]},
    "inference": {"size_bytes": 6_140_000_000, "torch_layer_bytes": 4_480_000_000,
                  "build_seconds_no_cache": 373.4, "build_seconds_cached": 1.9,
                  "healthy_ping_seconds": {"runs": [12.2, 11.9, 13.0], "median": 12.2}},
    "training": {"size_bytes": 6_210_000_000, "torch_layer_bytes": 4_480_000_000,
                 "build_seconds_no_cache": 417.0, "build_seconds_cached": 2.2,
                 "job_seconds": 12.3},
}


def test_training_job_config_is_what_sagemaker_writes(tmp_path: Path) -> None:
    hyperparameters = {"model": "LogisticRegression", "n_bits": 8, "C": 1.0}
    job = create_job(tmp_path, hyperparameters, instance_type="ml.m5.large")
    config = tmp_path / "input" / "config"
    written = json.loads((config / "hyperparameters.json").read_text())
    assert written == EstimatorBase._json_encode_hyperparameters(hyperparameters)
    assert written["model"] == '"LogisticRegression"'
    resources = json.loads((config / "resourceconfig.json").read_text())
    assert (resources["current_host"], resources["hosts"]) == (SAGEMAKER_HOST, [SAGEMAKER_HOST])
    assert resources["instance_groups"][0]["instance_type"] == "ml.m5.large"
    channels = json.loads((config / "inputdataconfig.json").read_text())
    assert channels["training"]["TrainingInputMode"] == "File"
    for folder in (job.channel_dir, job.model_dir, job.output_data_dir):
        assert folder.is_dir()
    assert job.failure_file == tmp_path / "output" / "failure"


def test_docker_problem_says_how_to_get_docker(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert "apt-get install docker.io" in (docker_problem() or "")


def test_images_section_renders_the_measurements(tmp_path: Path) -> None:
    section = render_images_section(IMAGES)
    assert section.startswith(IMAGES_BEGIN) and section.endswith(IMAGES_END)
    assert "| image size | 6.14 GB | 6.21 GB |" in section
    assert "| build, no layer cache (s) | 373 | 417 |" in section
    assert "12.2 (median of 3)" in section and "| - | 12.3 |" in section
    readme = tmp_path / "README.md"
    readme.write_text(f"# t\n\n{IMAGES_BEGIN}\nold\n{IMAGES_END}\n\nafter\n")
    update_readme(readme, section, begin=IMAGES_BEGIN, end=IMAGES_END)
    assert readme.read_text() == f"# t\n\n{section}\n\nafter\n"


def test_benchmark_page_has_one_images_section() -> None:
    text = (REPO_ROOT / "docs" / "benchmark.md").read_text()
    assert text.count(IMAGES_BEGIN) == text.count(IMAGES_END) == 1


def _summary(*runs: float) -> dict[str, object]:
    return {"runs": list(runs), "median": sorted(runs)[len(runs) // 2]}


def test_images_section_compares_the_two_inference_images() -> None:
    serving = {name: {"runtime": runtime, "size_bytes": size,
                      "healthy_ping_seconds": _summary(ping, ping + 1, ping - 1),
                      "worker_import_seconds": _summary(imports),
                      "worker_rss_bytes": _summary(rss), "request_seconds": _summary(latency)}
               for name, runtime, size, ping, imports, rss, latency in (
                   ("default", "concrete-ml", 6_140_000_000, 9.9, 9.25, 850e6, 0.2616),
                   ("slim", "compiler", 707_000_000, 2.4, 1.15, 325e6, 0.224))}
    section = render_images_section({**IMAGES, "serving": serving})
    assert "| serving | default (`FHE_RUNTIME=concrete-ml`) | slim (`FHE_RUNTIME=compiler`) |" \
        in section
    assert "| image size | 6.14 GB | 0.71 GB |" in section
    assert "| `docker run IMAGE serve` → healthy `/ping` (s) | 9.9 (median of 3) |" \
           " 2.4 (median of 3) |" in section
    assert "| worker RSS after load (MB) | 850 (median of 1) | 325 (median of 1) |" in section
    assert "| one request, end to end (s) | 0.262 (median of 1) | 0.224 (median of 1) |" \
        in section
    assert "serving" not in render_images_section(IMAGES)
