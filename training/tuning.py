"""``tune=true``: the fastest circuit whose accuracy stays within a budget of the best candidate.

concrete-ml's defaults are not the fastest circuits that keep the accuracy (fewer quantisation
bits mean fewer and narrower programmable bootstraps). For every combination of the model
family's compile-time knobs (:attr:`training.models.ModelSpec.tune_grid`, the configured values
always included), :func:`tune`:

1. scores the candidate by its mean clear-quantised accuracy (r2 for regressors) over
   ``tune_folds`` stratified folds of the training rows: fit on the other folds,
   ``predict(fhe="disable")`` on the held fold. The job's test rows stay untouched, so the
   accuracy metrics.json reports is not the one the choice was made on;
2. fits every candidate within ``tune_budget`` points of the best mean score on all training
   rows, compiles it and reads its cost: the median of a timed FHE run on a few training rows
   after a warm-up (``tune_rank=measured``, the default; it generates throw-away keys for each
   candidate) or concrete's ``circuit.complexity`` (``tune_rank=complexity``: no keys, but it
   ranks candidates less like their FHE time);
3. keeps the cheapest (ties: the more accurate, then the configured one).

Which ranking predicts the FHE latency better is measured by ``python -m bench.tune_evidence``
(README, "Faster circuits": Spearman 1.00 / 0.98 for the timed run against 0.96 / 0.95 for the
complexity on the tree / NN grids).
"""

from __future__ import annotations

import itertools
import logging
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from training.errors import DataError, HyperparameterError
from training.models import (
    CLASSIFICATION,
    RANK_MEASURED,
    ResolvedHyperparameters,
    build_model,
)

logger = logging.getLogger(__name__)

# Rows timed per candidate with tune_rank=measured (after one warm-up row: a fresh key set pays a
# one-off cost on its first run).
MEASURED_ROWS = 3
POINTS = 100.0  # accuracy (or r2) 1.0 = 100 points
# Scores are means over folds: values this close are the same score.
SCORE_EPSILON = 1e-9

Fit = Callable[[Any, np.ndarray, np.ndarray], tuple[Any, Any]]
Score = Callable[[np.ndarray, np.ndarray], float]


@dataclass
class Candidate:
    """One configuration tried by the search.

    Attributes:
        config: The knob values (hyperparameter name -> value).
        configured: True for the job's own configuration (what ``tune=false`` would build).
        fold_scores: Clear-quantised score on each held-out fold.
        score: Their mean.
        within_budget: Scored within the budget of the best candidate.
        complexity: concrete's ``circuit.complexity`` of the full-data fit (within budget only).
        pbs_count: Programmable bootstraps in that circuit.
        keyswitch_count: Key switches in that circuit.
        fhe_seconds: Median seconds of one FHE run (``tune_rank=measured`` only).
        fit_seconds: Time spent fitting (folds and full data).
        compile_seconds: Time spent compiling.
        error: Why the candidate could not be fitted or compiled, if it could not.
        chosen: The kept candidate.
    """

    config: dict[str, Any]
    configured: bool = False
    fold_scores: list[float] = field(default_factory=list)
    score: float | None = None
    within_budget: bool = False
    complexity: float | None = None
    pbs_count: int | None = None
    keyswitch_count: int | None = None
    fhe_seconds: float | None = None
    fit_seconds: float = 0.0
    compile_seconds: float = 0.0
    error: str | None = None
    chosen: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON form (metrics.json)."""
        return asdict(self)


@dataclass
class TuningResult:
    """What the search kept, and its record.

    Attributes:
        resolved: The hyperparameters with the chosen knob values.
        model: The chosen model, fitted on all training rows and compiled.
        float_model: Its float twin (``fit_benchmark``).
        record: The ``tuning`` section of metrics.json.
    """

    resolved: ResolvedHyperparameters
    model: Any
    float_model: Any
    record: dict[str, Any]


def candidate_configs(resolved: ResolvedHyperparameters) -> list[dict[str, Any]]:
    """Every combination of the family's grid, the configured values included (configured first).

    Raises:
        HyperparameterError: the model has no knobs to tune.
    """
    grid = resolved.spec.tune_grid
    if not grid:
        raise HyperparameterError(
            f"tune=true is not available for {resolved.spec.class_name}: drop the hyperparameter")
    configured = {name: resolved.model[name] for name, _ in grid}
    axes = [sorted({*values, configured[name]}) for name, values in grid]
    combos = [dict(zip((name for name, _ in grid), values, strict=True))
              for values in itertools.product(*axes)]
    return [configured, *(c for c in combos if c != configured)]


def tune(resolved: ResolvedHyperparameters, x_train: np.ndarray, y_train: np.ndarray, *,
         score: Score, fit: Fit) -> TuningResult:
    """Search the knobs; return the cheapest candidate within the budget, fitted and compiled.

    Args:
        resolved: The job's hyperparameters (``resolved.tuning`` holds the search settings).
        x_train: Scaled training rows.
        y_train: Their targets.
        score: ``score(y_true, y_pred)``: accuracy or r2.
        fit: ``fit(model, x, y) -> (model, float_model)`` (the job's ``fit_benchmark`` wrapper).

    Raises:
        DataError: too few rows per class for the folds, or no candidate could be fitted.
    """
    settings = resolved.tuning
    started = time.perf_counter()
    budget = float(settings["tune_budget"])
    configs = candidate_configs(resolved)
    candidates = [Candidate(config, configured=i == 0) for i, config in enumerate(configs)]
    folds = _folds(resolved, y_train, int(settings["tune_folds"]))
    for candidate in candidates:
        _score_on_folds(candidate, with_config(resolved, candidate.config), x_train, y_train,
                        folds, score)
    scored = [c for c in candidates if c.score is not None]
    if not scored:
        raise DataError("no candidate configuration could be fitted: "
                        + "; ".join(f"{c.config}: {c.error}" for c in candidates))
    best = max(c.score for c in scored if c.score is not None)
    floor = best - budget / POINTS - SCORE_EPSILON
    kept: tuple[Candidate, Any, Any] | None = None
    for candidate in scored:
        candidate.within_budget = candidate.score is not None and candidate.score >= floor
        if not candidate.within_budget:
            continue
        fitted = _fit_and_cost(candidate, with_config(resolved, candidate.config), x_train,
                               y_train, fit=fit, measured=settings["tune_rank"] == RANK_MEASURED)
        if fitted is not None and (kept is None or _key(candidate) < _key(kept[0])):
            kept = (candidate, *fitted)
    if kept is None:
        raise DataError("no candidate within the budget could be compiled: "
                        + "; ".join(f"{c.config}: {c.error}" for c in scored if c.within_budget))
    chosen, model, float_model = kept
    chosen.chosen = True
    record = {
        **settings, "metric_points_per_unit": POINTS,
        "best_score": best, "configured": configs[0], "chosen": chosen.config,
        "reason": _reason(chosen, candidates, budget, settings["tune_rank"]),
        "candidates": [c.as_dict() for c in candidates],
        "seconds": round(time.perf_counter() - started, 3),
    }
    logger.info("tuning kept %s: %s", chosen.config, record["reason"])
    return TuningResult(with_config(resolved, chosen.config), model, float_model, record)


def with_config(resolved: ResolvedHyperparameters,
                config: Mapping[str, Any]) -> ResolvedHyperparameters:
    """``resolved`` with the knob values of ``config``."""
    return replace(resolved, model={**resolved.model, **config})


def _folds(resolved: ResolvedHyperparameters, y: np.ndarray,
           n_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import KFold, StratifiedKFold

    seed = resolved.job["random_state"]
    if resolved.spec.task != CLASSIFICATION:
        if len(y) < 2 * n_folds:
            raise DataError(f"tune_folds={n_folds} needs at least {2 * n_folds} training rows,"
                            f" got {len(y)}: lower tune_folds or add rows")
        return list(KFold(n_folds, shuffle=True, random_state=seed).split(y))
    classes, counts = np.unique(y, return_counts=True)
    if counts.min() < n_folds:
        rare = classes[counts < n_folds].tolist()
        raise DataError(f"tune_folds={n_folds} needs at least {n_folds} training rows of each"
                        f" class; classes {rare[:10]} have fewer: lower tune_folds or add rows")
    return list(StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(y, y))


def _score_on_folds(candidate: Candidate, resolved: ResolvedHyperparameters, x: np.ndarray,
                    y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]],
                    score: Score) -> None:
    started = time.perf_counter()
    try:
        for fit_rows, held_rows in folds:
            model = build_model(resolved)
            model.fit(x[fit_rows], y[fit_rows])
            predicted = _predict(model, x[held_rows], resolved.spec.task)
            candidate.fold_scores.append(float(score(y[held_rows], predicted)))
    except (ValueError, RuntimeError) as exc:
        candidate.error = f"fit failed: {exc}"
        candidate.fold_scores = []
    else:
        candidate.score = statistics.fmean(candidate.fold_scores)
    candidate.fit_seconds += time.perf_counter() - started


def _predict(model: Any, x: np.ndarray, task: str) -> np.ndarray:
    """Clear-quantised predictions shaped as the job's metrics use them."""
    predicted = np.asarray(model.predict(x, fhe="disable")).reshape(len(x), -1)
    return predicted.ravel() if task == CLASSIFICATION else predicted


def _fit_and_cost(candidate: Candidate, resolved: ResolvedHyperparameters, x: np.ndarray,
                  y: np.ndarray, *, fit: Fit, measured: bool) -> tuple[Any, Any] | None:
    """Fit on all rows, compile, read the cost; None (and ``candidate.error``) on failure."""
    started = time.perf_counter()
    try:
        model, float_model = fit(build_model(resolved), x, y)
    except (ValueError, RuntimeError, DataError) as exc:
        candidate.error = f"fit failed: {exc}"
        return None
    finally:
        candidate.fit_seconds += time.perf_counter() - started
    started = time.perf_counter()
    try:
        circuit = model.compile(x)
    except Exception as exc:  # concrete raises plain RuntimeError/AssertionError subclasses
        candidate.error = f"compile failed: {type(exc).__name__}: {exc}"
        return None
    finally:
        candidate.compile_seconds = time.perf_counter() - started
    candidate.complexity = float(circuit.complexity)
    stats = circuit.statistics
    candidate.pbs_count = int(stats.get("programmable_bootstrap_count", 0))
    candidate.keyswitch_count = int(stats.get("key_switch_count", 0))
    if measured:
        candidate.fhe_seconds = time_fhe_run(model, x[: MEASURED_ROWS + 1])
    return model, float_model


def time_fhe_run(model: Any, rows: np.ndarray) -> float:
    """Median seconds of ``circuit.run`` on ``rows[1:]`` after a warm-up run on ``rows[0]``.

    Generates a throw-away key set for the compiled ``model``.
    """
    circuit = model.fhe_circuit
    circuit.keygen(force=True)
    encrypted = [circuit.encrypt(model.quantize_input(row.reshape(1, -1))) for row in rows]
    circuit.run(encrypted[0])
    seconds = []
    for value in encrypted[1:]:
        started = time.perf_counter()
        circuit.run(value)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def _key(candidate: Candidate) -> tuple[float, float, bool]:
    """Sort key of kept candidates: cheaper, then more accurate, then the configured one."""
    cost = candidate.fhe_seconds if candidate.fhe_seconds is not None else candidate.complexity
    return (float(cost if cost is not None else np.inf), -(candidate.score or 0.0),
            not candidate.configured)


def _reason(chosen: Candidate, candidates: list[Candidate], budget: float, rank: str) -> str:
    within = [c for c in candidates if c.within_budget]
    best = max(c.score for c in candidates if c.score is not None)  # type: ignore[type-var]
    configured = candidates[0]
    unit = "s per FHE run" if rank == RANK_MEASURED else "complexity"

    def cost(c: Candidate) -> str:
        value = c.fhe_seconds if rank == RANK_MEASURED else c.complexity
        return "n/a" if value is None else f"{value:.4g}"

    text = (f"cheapest by {unit} ({cost(chosen)}) of the {len(within)} of {len(candidates)}"
            f" candidates scoring within {budget:g} point(s) of the best cross-validated score"
            f" ({POINTS * best:.2f}); it scored {POINTS * (chosen.score or 0.0):.2f}")
    if chosen.configured:
        return text
    configured_score = "n/a" if configured.score is None else f"{POINTS * configured.score:.2f}"
    configured_cost = (f"cost {cost(configured)}" if configured.within_budget
                       else "outside the budget")
    return (f"{text}; the configured {configured.config} scored {configured_score}"
            f" ({configured_cost})")
