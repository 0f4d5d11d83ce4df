"""The circuit knobs (accumulator rounding, p_error): trained, recorded, saved, served, checked.

Oracles: a circuit that is exact (default p_error, no approximate rounding) must give exactly the
clear quantised model's outputs; one that is not must meet the statistical oracle of
bench/check.py (FHE argmax = clear argmax on all but the few rows a binomial with the disagreement
rate measured at training time allows at 99.9 %).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.check import (
    OutputMismatchError,
    allowed_disagreements,
    check_circuit_agreement,
    check_statistical_agreement,
)
from client.model import load_client_model
from common.artifact import MANIFEST_NAME, read_manifest
from tests.training.test_training_script import _fhe_predict, _reference
from training.circuit import describe, is_exact, rounding_threshold
from training.errors import HyperparameterError
from training.models import resolve_hyperparameters
from training.training_script import METRICS_NAME, do_training

NN = {"model": "NeuralNetClassifier", "scaler": "minmax", "max_epochs": "3"}
ROUNDED = {**NN, "rounding_bits": "5", "rounding_method": "approximate", "p_error": "0.1"}
FHE_ROWS = 24


def _train(tmp_path: Path, channel: Path, hyperparameters: dict[str, str]) -> tuple[Any, dict]:
    result = do_training(tmp_path / "model", channel, hyperparameters=hyperparameters)
    return result, json.loads((tmp_path / "output" / "data" / METRICS_NAME).read_text())


def test_knobs_parse_and_say_which_circuits_are_exact() -> None:
    resolved = resolve_hyperparameters(ROUNDED)
    assert rounding_threshold(resolved.model) == {"n_bits": 5, "method": "approximate"}
    assert not is_exact(resolved.model)
    default = resolve_hyperparameters({"model": "NeuralNetClassifier"}).model
    assert rounding_threshold(default) is None and is_exact(default)
    assert describe(default) == {"rounding_bits": None, "rounding_method": None,
                                 "p_error": None, "exact": True}
    exact_rounding = resolve_hyperparameters({**NN, "rounding_bits": "6"}).model
    assert is_exact(exact_rounding) and rounding_threshold(exact_rounding)["method"] == "exact"
    assert not is_exact(resolve_hyperparameters({**NN, "p_error": "0.01"}).model)
    tree = resolve_hyperparameters({"model": "DecisionTreeClassifier", "p_error": "0.05"})
    assert tree.model["p_error"] == 0.05 and not is_exact(tree.model)


def test_bad_knobs_are_listed_together() -> None:
    with pytest.raises(HyperparameterError) as info:
        resolve_hyperparameters({**NN, "rounding_method": "approximate", "p_error": "0.9"})
    assert "'rounding_method' only applies with rounding_bits" in str(info.value)
    assert "'p_error' must be <= 0.5, got '0.9'" in str(info.value)
    with pytest.raises(HyperparameterError, match="'rounding_bits' is not a hyperparameter of"
                                                  " LogisticRegression"):
        resolve_hyperparameters({"model": "LogisticRegression", "rounding_bits": "5"})


def test_statistical_oracle_allows_the_measured_rate_and_no_more() -> None:
    # 2 disagreements in 400 held-out rows measured: on 24 rows, 2 are allowed at 99.9 %
    # (P[Binomial(24, 0.005) > 2] < 0.1 %)
    assert allowed_disagreements(24, 398 / 400, 400) == (2, pytest.approx(0.005))
    # a measurement that saw none still allows its resolution (one row of it)
    assert allowed_disagreements(24, 1.0, 100)[1] == pytest.approx(0.01)
    clear = np.eye(3)[[0, 1, 2, 0, 1, 2] * 4]
    fhe = clear.copy()
    fhe[0] = [0.2, 0.7, 0.1]  # two rows of another class, probabilities that differ a bit
    fhe[3] = [0.1, 0.1, 0.8]
    fhe[4] = [0.1, 0.8, 0.1]  # same class, other probabilities: fine
    result = check_statistical_agreement(fhe, clear, what="t", measured_share=398 / 400,
                                         measured_rows=400)
    assert (result.rows, result.disagreements, result.allowed) == (24, 2, 2)
    fhe[1] = [1.0, 0.0, 0.0]
    with pytest.raises(OutputMismatchError, match=r"on 3 of 24 rows, more than the 2"):
        check_statistical_agreement(fhe, clear, what="t", measured_share=398 / 400,
                                    measured_rows=400)
    exact = {"exact": True}
    with pytest.raises(OutputMismatchError, match="disagrees with the clear quantised model"):
        check_circuit_agreement(clear + 1e-3, clear, what="t", circuit=exact)


@pytest.mark.slow
def test_rounded_network_is_saved_served_and_meets_its_oracle(npy_channel: Path,
                                                                tmp_path: Path) -> None:
    result, metrics = _train(tmp_path, npy_channel, ROUNDED)
    circuit = metrics["circuit"]
    assert circuit["rounding_bits"] == 5 and circuit["rounding_method"] == "approximate"
    assert circuit["p_error"] == 0.1 and circuit["exact"] is False
    agreement = circuit["agreement"]
    assert agreement["simulated"]["rows"] == metrics["n_test"]
    assert agreement["fhe"]["rows"] == 8 and "executed in FHE" in circuit["agreement_method"]
    draws = metrics["fhe_simulated_draws"]  # the mean of 5 simulated passes
    assert draws["n"] == 5 and draws["min"] <= metrics["fhe_simulated"] <= draws["max"]
    # the manifest (what clients read) carries the same record; the client exposes it
    manifest = read_manifest(tmp_path / "model")
    assert manifest.circuit == circuit == result.manifest.circuit
    client = load_client_model(str(tmp_path / "model"), storage=None,
                               cache_dir=tmp_path / "cache")
    assert client.p_error == 0.1 and client.exact is False
    assert client.agreement == agreement and client.circuit["rounding_bits"] == 5
    # the rounding survives the reference model's serialisation (clients' clear reference)
    reference = _reference(tmp_path / "output" / "data")
    x = np.load(npy_channel / "bc_training_features.npy")[:FHE_ROWS]
    scaled = manifest.scaler.transform(x)
    assert reference.quantized_module_.quant_layers_dict  # the rounded module, reloaded
    fhe = _fhe_predict(tmp_path / "model", tmp_path / "keys", scaled)
    check = check_circuit_agreement(fhe, reference.predict_proba(scaled, fhe="disable"),
                                    what="rounded network", circuit=manifest.circuit)
    assert check["oracle"] == "statistical" and check["rows"] == FHE_ROWS


@pytest.mark.slow
def test_exact_rounding_keeps_the_exact_oracle(npy_channel: Path, tmp_path: Path) -> None:
    _, metrics = _train(tmp_path, npy_channel, {**NN, "rounding_bits": "6"})
    circuit = metrics["circuit"]
    assert circuit["exact"] is True and circuit["rounding_method"] == "exact"
    assert circuit["agreement"] == {"exact": True, "simulated": None, "fhe": None}
    assert metrics["fhe_simulated"] == metrics["clear_quantised"]
    assert metrics["fhe_simulated_draws"]["n"] == 1  # exact: nothing to simulate
    doc = json.loads((tmp_path / "model" / MANIFEST_NAME).read_text())
    assert doc["circuit"]["exact"] is True and doc["hyperparameters"]["rounding_bits"] == 6
    reference = _reference(tmp_path / "output" / "data")
    scaled = read_manifest(tmp_path / "model").scaler.transform(
        np.load(npy_channel / "bc_training_features.npy")[:4])
    fhe = _fhe_predict(tmp_path / "model", tmp_path / "keys", scaled)
    np.testing.assert_allclose(fhe, reference.predict_proba(scaled, fhe="disable"), atol=1e-6)
