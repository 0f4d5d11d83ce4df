"""``tune=true``: the search keeps the cheapest circuit within the budget, and records why."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.check import check_circuit_agreement
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
    assert tree[0] == {"n_bits": 11, "p_error": None}  # training knobs + the configured circuit
    assert sorted(c["n_bits"] for c in tree) == [2, 3, 4, 5, 6, 7, 8, 11]
    nn = candidate_configs(resolve_hyperparameters({"model": "NeuralNetClassifier",
                                                    "tune": "true", "p_error": "0.01"}))
    assert nn[0] == {"n_w_bits": 4, "n_a_bits": 4, "rounding_bits": None,
                     "rounding_method": "exact", "p_error": 0.01}
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
@pytest.mark.timeout(1800)  # 7 trainings x 3 folds, p_error variants simulated, 4 timed
def test_tuned_tree_is_the_fastest_within_budget_recorded_and_meets_its_oracle(
        npy_channel: Path, tmp_path: Path) -> None:
    result, metrics = _tuned(tmp_path, npy_channel)
    tuning = metrics["tuning"]
    candidates = tuning["candidates"]
    training = [c for c in candidates if c["stage"] == "training"]
    assert [c["config"]["n_bits"] for c in training] == [6, 2, 3, 4, 5, 7, 8]
    assert training[0]["configured"] and tuning["configured"] == {"n_bits": 6, "p_error": None}
    best = max(c["score"] for c in training)
    assert tuning["best_score"] == best
    floor = best - 0.01 - 1e-9
    assert all(c["within_budget"] == (c["score"] is not None and c["score"] >= floor)
               for c in candidates)
    # p_error variants were tried on the trainings within the budget, scored by simulation
    variants = [c for c in candidates if c["stage"] == "circuit"]
    assert variants and all(c["config"]["p_error"] in (0.01, 0.05, 0.1) for c in variants)
    assert all(c["simulated"] for c in variants if c["score"] is not None)
    assert all(c["pruned"] for c in variants if c["score"] is None)
    within = [c for c in candidates if c["within_budget"]]
    # every candidate within the budget was compiled; the cheapest by complexity were timed
    assert all(c["complexity"] > 0 and c["pbs_count"] > 0 for c in within)
    timed = [c for c in within if c["fhe_seconds"] is not None]
    assert timed and all(c["pruned"] for c in within if c not in timed)
    assert all(c["fhe_seconds"] is None for c in candidates if not c["within_budget"])
    chosen = [c for c in candidates if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["config"] == tuning["chosen"]
    assert chosen[0]["fhe_seconds"] == min(c["fhe_seconds"] for c in timed)
    assert (f"cheapest by s per FHE run ({chosen[0]['fhe_seconds']:.4g}) of the {len(within)} of"
            f" {len(candidates)}") in tuning["reason"]
    # the recorded scores are real: recompute the chosen training's clear folds independently
    x_train, y_train = _job_training_rows(npy_channel)
    n_bits = tuning["chosen"]["n_bits"]
    clear = next(c for c in training if c["config"]["n_bits"] == n_bits)
    assert clear["score"] == pytest.approx(_independent_cv_score(n_bits, x_train, y_train, 3))
    # the artefact is the chosen configuration, and says so
    reference = _reference(tmp_path / "output" / "data")
    assert reference.n_bits in (n_bits, {"op_inputs": n_bits, "op_leaves": n_bits})
    assert result.manifest.hyperparameters["n_bits"] == n_bits
    assert result.manifest.hyperparameters["p_error"] == tuning["chosen"]["p_error"]
    assert result.manifest.circuit["p_error"] == tuning["chosen"]["p_error"]
    assert result.manifest.circuit["reason"] == tuning["reason"]
    assert result.manifest.hyperparameters["tune"] is True
    assert metrics["hyperparameters"]["n_bits"] == n_bits and metrics["timings"]["tune_s"] > 0
    # its FHE output meets its oracle against its clear quantised output: exact equality for an
    # exact circuit, the statistical oracle (bench/check.py) for a raised p_error
    x = np.load(npy_channel / "bc_training_features.npy")
    scaled = result.manifest.scaler.transform(x[:3])
    fhe = _fhe_predict(tmp_path / "model", tmp_path / "keys", scaled)
    check = check_circuit_agreement(fhe, reference.predict_proba(scaled, fhe="disable"),
                                    what="tuned tree", circuit=result.manifest.circuit)
    assert check["oracle"] == ("exact" if tuning["chosen"]["p_error"] is None else "statistical")


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


# -- the choice itself, on stub models (no concrete-ml): several candidates within the budget ----

class _StubCircuit:
    def __init__(self, cost: float) -> None:
        self.complexity = cost
        self.statistics = {"programmable_bootstrap_count": 1, "key_switch_count": 1}


class _StubModel:
    """A model whose held-fold accuracy and FHE cost are looked up from its knob values.

    ``predict`` returns the accuracy in every row (the stub ``score`` reads it back), so a
    candidate's cross-validated score is exactly the table's value.
    """

    def __init__(self, table: Callable[[dict[str, Any]], tuple[float, float]],
                 knobs: dict[str, Any]) -> None:
        self.table, self.knobs = table, dict(knobs)

    def fit(self, x: np.ndarray, y: np.ndarray) -> _StubModel:
        return self

    def compile(self, x: np.ndarray, p_error: float | None = None) -> _StubCircuit:
        self.knobs["p_error"] = p_error
        return _StubCircuit(self.table(self.knobs)[1])

    def predict(self, x: np.ndarray, fhe: str) -> np.ndarray:
        knobs = self.knobs if fhe == "simulate" else {**self.knobs, "p_error": None}
        return np.full(len(x), self.table(knobs)[0])


def _stub_tune(monkeypatch: pytest.MonkeyPatch, hyperparameters: dict[str, str],
               table: Callable[[dict[str, Any]], tuple[float, float]]) -> dict[str, Any]:
    """Run tune() with stub models: ``table(knobs) -> (accuracy, cost)``; cost is both the
    complexity and the timed FHE seconds."""
    import training.tuning as tuning

    resolved = resolve_hyperparameters({**hyperparameters, "tune": "true"})
    knob_names = [name for name, _ in resolved.spec.tune_grid]
    monkeypatch.setattr(tuning, "build_model", lambda r: _StubModel(
        table, {name: r.model[name] for name in knob_names}))
    monkeypatch.setattr(tuning, "time_fhe_run", lambda model, rows: table(model.knobs)[1])
    x, y = np.zeros((30, 2)), np.repeat([0, 1, 2], 10)
    result = tuning.tune(resolved, x, y, score=lambda truth, predicted: float(predicted[0]),
                         fit=lambda model, rows, target: (model.fit(rows, target), "float"))
    assert all(result.resolved.model[k] == v for k, v in result.record["chosen"].items())
    return result.record


LOGREG = {"model": "LogisticRegression"}  # n_bits 2-8 searched, 8 configured


@pytest.mark.parametrize("rank", ["measured", "complexity"])
def test_stub_the_cheapest_of_several_within_budget_is_kept(
        monkeypatch: pytest.MonkeyPatch, rank: str) -> None:
    accuracy = {8: 0.95, 7: 0.95, 6: 0.948, 5: 0.945, 4: 0.93, 3: 0.90, 2: 0.80}
    record = _stub_tune(monkeypatch, {**LOGREG, "tune_rank": rank},
                        lambda k: (accuracy[k["n_bits"]], float(k["n_bits"])))
    within = [c["config"]["n_bits"] for c in record["candidates"] if c["within_budget"]]
    assert sorted(within) == [5, 6, 7, 8]
    assert record["chosen"] == {"n_bits": 5}  # not 8, the most expensive


def test_stub_a_score_exactly_at_the_floor_is_within_the_budget(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # tune_budget=1 point below the best (0.75: its mean over folds is exact), as tune() computes it
    floor = 0.75 - 1.0 / 100 - 1e-9
    accuracy = {8: 0.75, 7: 0.75, 6: 0.748, 5: 0.745, 4: floor, 3: floor - 1e-6, 2: 0.6}
    record = _stub_tune(monkeypatch, LOGREG, lambda k: (accuracy[k["n_bits"]],
                                                        float(k["n_bits"])))
    by_bits = {c["config"]["n_bits"]: c for c in record["candidates"]}
    assert by_bits[4]["within_budget"] and not by_bits[3]["within_budget"]
    assert record["chosen"] == {"n_bits": 4}


def test_stub_ties_in_cost_go_to_the_more_accurate_then_to_the_configured(
        monkeypatch: pytest.MonkeyPatch) -> None:
    accuracy = {8: 0.95, 7: 0.949, 6: 0.946, 5: 0.947, 4: 0.5, 3: 0.5, 2: 0.5}
    cost = {8: 9.0, 7: 9.0, 6: 3.0, 5: 3.0, 4: 1.0, 3: 1.0, 2: 1.0}
    record = _stub_tune(monkeypatch, LOGREG, lambda k: (accuracy[k["n_bits"]],
                                                        cost[k["n_bits"]]))
    assert record["chosen"] == {"n_bits": 5}  # 5 and 6 cost the same; 5 is more accurate
    same = {8: 0.95, 7: 0.95, 6: 0.5, 5: 0.5, 4: 0.5, 3: 0.5, 2: 0.5}
    record = _stub_tune(monkeypatch, LOGREG, lambda k: (same[k["n_bits"]], 9.0))
    assert record["chosen"] == {"n_bits": 8}  # the configured one wins a full tie
    chosen = next(c for c in record["candidates"] if c["chosen"])
    assert chosen["configured"]


def test_stub_p_error_variants_are_accepted_on_simulated_accuracy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Trees: each training within the budget is tried with every p_error; a raised p_error
    scores by fhe=simulate (here 0.1 loses 3 points, 0.05 exactly the 1-point budget)."""
    floor = 0.75 - 1.0 / 100 - 1e-9
    simulated = {None: 0.75, 0.01: 0.748, 0.05: floor, 0.1: 0.72}
    speed = {None: 1.0, 0.01: 1.5, 0.05: 2.0, 0.1: 3.0}
    accuracy = {8: 0.75, 7: 0.75, 6: 0.75, 5: 0.75, 4: 0.72, 3: 0.70, 2: 0.60}

    def table(knobs: dict[str, Any]) -> tuple[float, float]:
        p_error = knobs.get("p_error")
        score = accuracy[knobs["n_bits"]] if p_error is None else min(
            accuracy[knobs["n_bits"]], simulated[p_error])
        return score, knobs["n_bits"] / speed[p_error]

    record = _stub_tune(monkeypatch, {"model": "DecisionTreeClassifier"}, table)
    assert record["chosen"] == {"n_bits": 5, "p_error": 0.05}
    variants = [c for c in record["candidates"] if c["stage"] == "circuit"]
    assert {(c["config"]["n_bits"], c["config"]["p_error"]) for c in variants} >= {
        (5, 0.1), (5, 0.05), (5, 0.01)}
    rejected = next(c for c in variants if c["config"] == {"n_bits": 5, "p_error": 0.1})
    assert rejected["simulated"] and not rejected["within_budget"]
    assert rejected["score"] == pytest.approx(0.72)
    # a lower p_error than an accepted one costs at least as much: never scored
    lower = next(c for c in variants if c["config"] == {"n_bits": 5, "p_error": 0.01})
    assert lower["score"] is None and "costs at least as much as" in lower["pruned"]
    assert "fhe=simulate" in record["reason"] and "p_error 0.05" in record["reason"]


def test_stub_network_roundings_are_pruned_in_the_clear_then_by_cost(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Networks: a rounding already below the floor in the clear is never compiled; once a
    variant is within the budget, every variant that cannot be cheaper is not scored."""
    import training.circuit as circuit

    def round_stub(model: _StubModel, x: np.ndarray, values: dict[str, Any]) -> None:
        model.knobs["rounding"] = circuit.rounding_threshold(values)

    monkeypatch.setattr(circuit, "apply_rounding", round_stub)
    clear = {None: 0.75, 5: 0.70, 6: 0.75, 7: 0.75}

    def table(knobs: dict[str, Any]) -> tuple[float, float]:
        rounding = knobs.get("rounding")
        bits = None if rounding is None else rounding["n_bits"]
        trained = 0.75 if (knobs["n_w_bits"], knobs["n_a_bits"]) == (4, 4) else 0.6
        score = min(trained, clear[bits]) - (0.005 if knobs.get("p_error") else 0.0)
        return score, (16 if bits is None else bits) / (1 + 10 * (knobs.get("p_error") or 0))

    record = _stub_tune(monkeypatch, {"model": "NeuralNetClassifier"}, table)
    assert record["chosen"] == {"n_w_bits": 4, "n_a_bits": 4, "rounding_bits": 6,
                                "rounding_method": "approximate", "p_error": 0.1}
    variants = [c for c in record["candidates"] if c["stage"] == "circuit"]
    assert len(variants) == 5 * 4 - 1  # every rounding x p_error but the training's own
    scored = [c for c in variants if c["score"] is not None]
    assert [c["config"] for c in scored] == [record["chosen"]]  # one simulation in all
    five = [c for c in variants if c["config"]["rounding_bits"] == 5]
    assert len(five) == 4 and all("in the clear (70.00)" in c["pruned"] for c in five)
    rest = [c for c in variants if c not in five and c not in scored]
    assert rest and all("costs at least as much as" in c["pruned"] for c in rest)
