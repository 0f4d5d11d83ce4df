"""``tune=true``: the search keeps the cheapest circuit within the budget, and records why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.training.test_training_script import _fhe_predict, _reference
from training.errors import DataError, HyperparameterError
from training.models import resolve_hyperparameters
from training.training_script import METRICS_NAME, do_training
from training.tuning import candidate_configs

TREE = {"model": "DecisionTreeClassifier", "max_depth": "4"}


def _tuned(tmp_path: Path, channel: Path, **extra: str) -> tuple[Any, dict[str, Any]]:
    result = do_training(tmp_path / "model", channel,
                         hyperparameters={**TREE, "tune": "true", **extra})
    metrics = json.loads((tmp_path / "output" / "data" / METRICS_NAME).read_text())
    return result, metrics


def _independent_cv_score(n_bits: int, x: np.ndarray, y: np.ndarray, folds: int) -> float:
    """The mean held-fold clear-quantised accuracy of one tree configuration, computed here."""
    from concrete.ml.sklearn import DecisionTreeClassifier
    from sklearn.model_selection import StratifiedKFold

    scores = []
    for fit_rows, held_rows in StratifiedKFold(folds, shuffle=True, random_state=0).split(x, y):
        model = DecisionTreeClassifier(n_bits=n_bits, max_depth=4, random_state=0)
        model.fit(x[fit_rows], y[fit_rows])
        scores.append(float(np.mean(model.predict(x[held_rows], fhe="disable") == y[held_rows])))
    return float(np.mean(scores))


def _job_training_rows(channel: Path) -> tuple[np.ndarray, np.ndarray]:
    """The scaled training rows of a job on ``channel`` (same split and scaler as the job)."""
    from sklearn.model_selection import train_test_split

    from common.artifact import Scaler

    x = np.load(channel / "bc_training_features.npy")
    y = np.load(channel / "bc_training_labels.npy")
    x_train, _, y_train, _ = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return Scaler.fit(x_train).transform(x_train), y_train


def test_candidates_cover_the_grid_with_the_configured_values_first() -> None:
    tree = candidate_configs(resolve_hyperparameters({**TREE, "n_bits": "11", "tune": "true"}))
    assert tree[0] == {"n_bits": 11}
    assert sorted(c["n_bits"] for c in tree) == [2, 3, 4, 5, 6, 7, 8, 11]
    nn = candidate_configs(resolve_hyperparameters({"model": "NeuralNetClassifier",
                                                    "tune": "true"}))
    assert nn[0] == {"n_w_bits": 4, "n_a_bits": 4}
    assert len(nn) == 9 and len({tuple(c.items()) for c in nn}) == 9


def test_tuning_settings_are_checked_and_recorded_only_when_on() -> None:
    with pytest.raises(HyperparameterError) as info:
        resolve_hyperparameters({**TREE, "tune_budget": "2", "tune_folds": "4"})
    assert "'tune_budget' only applies with tune=true" in str(info.value)
    assert "'tune_folds' only applies with tune=true" in str(info.value)
    with pytest.raises(HyperparameterError, match=r"'tune' must be true or false, got 'maybe'"):
        resolve_hyperparameters({**TREE, "tune": "maybe"})
    with pytest.raises(HyperparameterError, match=r"'tune_rank' must be one of measured,"
                                                  r" complexity"):
        resolve_hyperparameters({**TREE, "tune": "true", "tune_rank": "guess"})
    assert "tune" not in resolve_hyperparameters({**TREE, "tune": "false"}).as_dict()
    assert resolve_hyperparameters({**TREE, "tune": '"True"'}).tuning == {
        "tune": True, "tune_budget": 1.0, "tune_folds": 3, "tune_rank": "measured"}


@pytest.mark.slow
def test_tuned_tree_is_the_fastest_within_budget_recorded_and_fhe_equals_clear(
        npy_channel: Path, tmp_path: Path) -> None:
    result, metrics = _tuned(tmp_path, npy_channel)
    tuning = metrics["tuning"]
    candidates = tuning["candidates"]
    assert [c["config"]["n_bits"] for c in candidates] == [6, 2, 3, 4, 5, 7, 8]
    assert candidates[0]["configured"] and tuning["configured"] == {"n_bits": 6}
    best = max(c["score"] for c in candidates)
    assert tuning["best_score"] == best
    within = [c for c in candidates if c["score"] >= best - 0.01 - 1e-9]
    assert [c["within_budget"] for c in candidates] == [c in within for c in candidates]
    # every candidate within the budget was compiled and timed; the others were not
    assert all(c["complexity"] > 0 and c["pbs_count"] > 0 and c["fhe_seconds"] > 0
               for c in within)
    assert all(c["complexity"] is None and c["fhe_seconds"] is None
               for c in candidates if c not in within)
    chosen = [c for c in candidates if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["config"] == tuning["chosen"]
    assert chosen[0]["fhe_seconds"] == min(c["fhe_seconds"] for c in within)
    assert f"cheapest by s per FHE run ({chosen[0]['fhe_seconds']:.4g}) of the {len(within)} of 7" \
        in tuning["reason"]
    # the recorded scores are real: recompute the chosen one's folds independently
    x_train, y_train = _job_training_rows(npy_channel)
    n_bits = tuning["chosen"]["n_bits"]
    assert chosen[0]["score"] == pytest.approx(_independent_cv_score(n_bits, x_train, y_train, 3))
    # the artefact is the chosen configuration, and says so
    reference = _reference(tmp_path / "output" / "data")
    assert reference.n_bits in (n_bits, {"op_inputs": n_bits, "op_leaves": n_bits})
    assert result.manifest.hyperparameters["n_bits"] == n_bits
    assert result.manifest.hyperparameters["tune"] is True
    assert metrics["hyperparameters"]["n_bits"] == n_bits and metrics["timings"]["tune_s"] > 0
    # its FHE output equals its clear quantised output
    x = np.load(npy_channel / "bc_training_features.npy")
    scaled = result.manifest.scaler.transform(x[:3])
    fhe = _fhe_predict(tmp_path / "model", tmp_path / "keys", scaled)
    np.testing.assert_allclose(fhe, reference.predict_proba(scaled, fhe="disable"), atol=1e-6)


@pytest.mark.slow
def test_complexity_ranking_with_zero_budget_keeps_the_cheapest_best_scorer(
        npy_channel: Path, tmp_path: Path) -> None:
    _, metrics = _tuned(tmp_path, npy_channel, tune_budget="0", tune_rank="complexity")
    tuning = metrics["tuning"]
    best = [c for c in tuning["candidates"] if c["score"] == tuning["best_score"]]
    assert all(c["within_budget"] == (c in best) for c in tuning["candidates"])
    assert all(c["fhe_seconds"] is None for c in tuning["candidates"])  # no keys generated
    chosen = next(c for c in tuning["candidates"] if c["chosen"])
    assert chosen in best and chosen["complexity"] == min(c["complexity"] for c in best)
    assert "cheapest by complexity" in tuning["reason"]


def test_too_few_rows_per_class_for_the_folds_says_so(tmp_path: Path,
                                                      breast_cancer: tuple[np.ndarray,
                                                                           np.ndarray]) -> None:
    x, y = breast_cancer
    rows = np.r_[np.nonzero(y == 0)[0][:3], np.nonzero(y == 1)[0][:40]]
    channel = tmp_path / "channel"
    channel.mkdir()
    np.save(channel / "few_features.npy", x[rows])
    np.save(channel / "few_labels.npy", y[rows])
    with pytest.raises(DataError, match=r"tune_folds=5 needs at least 5 training rows of each"
                                        r" class; classes \[0\] have fewer: lower tune_folds"):
        do_training(tmp_path / "model", channel,
                    hyperparameters={**TREE, "tune": "true", "tune_folds": "5",
                                     "test_size": "0.3"})
