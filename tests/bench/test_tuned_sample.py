"""bench.tuned_sample: its oracle records what each client got; the server's per-image seconds.

The whole flow (tuning the 784-input network, ~10 minutes) is a benchmark run, not a test; what
it decides is tested here on a real compiled model.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench import tuned_sample


def _labels(model: Any) -> np.ndarray:
    return np.argmax(model.clear_model.predict_proba(model.scaled_test, fhe="disable"), axis=1)


def test_an_exact_circuit_must_equal_the_clear_model(fixture_models: dict[str, Any]) -> None:
    model = fixture_models["linear"]
    rows = model.raw_test[:6]
    clear = model.clear_model.predict_proba(model.scaled_test[:6], fhe="disable")
    out = tuned_sample._check("kit", clear, rows, _labels(model)[:6], model.clear_model,
                              model.manifest)
    assert out["met"] is True and out["oracle"]["oracle"] == "exact"
    assert out["argmax_agreement"] == 1.0 and out["rows"] == 6
    flipped = clear[:, ::-1]  # every class swapped: not this model's output
    out = tuned_sample._check("kit", flipped, rows, _labels(model)[:6], model.clear_model,
                              model.manifest)
    assert out["met"] is False
    assert "FHE disagrees with the clear quantised model on 6 of 6 rows" in out["oracle"]["error"]


def test_a_circuit_that_is_not_exact_gets_the_statistical_oracle(
        fixture_models: dict[str, Any]) -> None:
    model = fixture_models["linear"]
    n = 40
    rows, clear = model.raw_test[:n], model.clear_model.predict_proba(model.scaled_test[:n],
                                                                      fhe="disable")
    circuit = {"exact": False, "agreement": {"simulated": {"share": 0.99, "rows": 200}}}
    manifest = replace(model.manifest, circuit=circuit)
    one_off = clear.copy()
    one_off[0] = one_off[0][::-1]  # one row's class differs: within a 1 % disagreement rate
    out = tuned_sample._check("plain", one_off, rows, _labels(model)[:n], model.clear_model,
                              manifest)
    assert out["met"] is True and out["oracle"]["oracle"] == "statistical"
    assert out["oracle"]["disagreements"] == 1 and out["argmax_agreement"] == (n - 1) / n
    out = tuned_sample._check("plain", clear[:, ::-1], rows, _labels(model)[:n],
                              model.clear_model, manifest)
    assert out["met"] is False
    assert f"differs from the clear quantised model's on {n} of {n} rows" in out["oracle"]["error"]


def test_server_seconds_come_from_the_request_lines(tmp_path: Path) -> None:
    log = tmp_path / "endpoint.log"
    log.write_text(
        "request a ok: 8 ciphertext(s), 10 bytes in, 20 bytes out; keys 1.0 ms, fetch 2.0 ms,"
        " fhe 16000.0 ms\n"
        "request b ok: 1 ciphertext(s), 10 bytes in, 20 bytes out; keys 1.0 ms, fetch 2.0 ms,"
        " fhe 3000.0 ms\n")
    out = tuned_sample._server_seconds(log)
    assert out["requests"] == 2
    assert out["fhe_seconds_per_image_median"] == pytest.approx(2.5)
    assert out["fhe_seconds_per_image_min_max"] == pytest.approx([2.0, 3.0])


def test_the_command_line_defaults() -> None:
    args = tuned_sample.build_parser().parse_args(["-H", "tune_budget=0.5"])
    assert (args.rows, args.plain_rows, args.hyperparameter) == (24, 4, ["tune_budget=0.5"])
    assert args.work_dir is None and args.keep is False
    assert args.out == tuned_sample.DEFAULT_OUT
