"""bench.p7_scaling: the probe's pairs decrypt alike, the summary's arithmetic, the options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench import p7_scaling


def test_probe_times_both_ways_and_they_decrypt_alike(fixture_models: dict[str, Any]) -> None:
    model = fixture_models["linear"]
    raw = p7_scaling.probe(model.model_dir, model.raw_test[:3])
    assert raw["same_results"] is True
    assert len(raw["warm_seconds"]) == len(raw["peer_seconds"]) == 2
    assert all(s > 0 for s in raw["warm_seconds"] + raw["peer_seconds"])
    assert raw["evaluation_keys_bytes"] > 0


def test_summary_is_the_ceiling_of_any_server_of_the_circuit() -> None:
    raw = {"warm_seconds": [1.0, 2.0, 1.5], "peer_seconds": [2.5, 3.5, 3.0],
           "evaluation_keys_bytes": 10, "same_results": True}
    summary = p7_scaling.summarise(raw, 2)
    assert summary["warm_run_seconds"] == 1.5 and summary["peer_request_seconds"] == 3.0
    assert summary["peer_extra_seconds"] == pytest.approx(1.5)
    assert summary["ceiling"] == pytest.approx(2.0) and summary["threads"] == 2


def test_probe_subprocess_honours_the_thread_count(fixture_models: dict[str, Any],
                                                   tmp_path: Path) -> None:
    model = fixture_models["linear"]
    np.save(tmp_path / "rows.npy", model.raw_test[:2])
    raw = p7_scaling._probe_in_subprocess(model.model_dir, tmp_path / "rows.npy", 1)
    assert raw["same_results"] is True and len(raw["peer_seconds"]) == 1
    assert raw["omp_num_threads"] == "1"


@pytest.mark.parametrize(("argv", "message"), [
    (["--models", "svm"], "--models: unknown svm"),
    (["--threads", "0"], "--threads: comma-separated counts from 1 to"),
    (["--threads", "x"], "--threads: comma-separated counts from 1 to"),
    (["--reps", "0"], "--reps must be >= 1"),
])
def test_bad_options_exit_2_and_say_which(argv: list[str], message: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert p7_scaling.main(argv) == 2
    assert message in capsys.readouterr().err
