"""``tune=true``: the fastest circuit whose accuracy stays within a budget of the best candidate.

concrete-ml's defaults are not the fastest circuits that keep the accuracy (fewer quantisation
bits mean fewer and narrower programmable bootstraps; rounded accumulators and a raised error
probability mean narrower and cheaper ones). :func:`tune` searches two kinds of knobs:

* training knobs (:attr:`training.models.ModelSpec.tune_grid`: ``n_bits``, or a network's weight
  and activation bits), each value one retraining;
* circuit knobs (:attr:`training.models.ModelSpec.circuit_grid`: a network's accumulator
  rounding and every PBS model's ``p_error``, :mod:`training.circuit`), compile-time only.

The steps, with the configured values always included:

1. every training configuration is scored by its mean accuracy (r2 for regressors) over
   ``tune_folds`` stratified folds of the training rows: fit on the other folds, predict the held
   fold with the circuit as it will run: ``fhe="disable"`` (clear quantised) for an exact circuit,
   ``fhe="simulate"`` (which models approximate rounding and ``p_error``) otherwise. The job's
   test rows stay untouched, so the accuracy metrics.json reports is not the one the choice was
   made on. The floor is ``tune_budget`` points below the best of these scores;
2. circuit variants (every rounding x ``p_error`` combination) are tried on the
   ``CIRCUIT_BASES`` most accurate trainings within the budget (networks; every one for trees),
   reusing the folds' fitted models. Pruned, cheapest first: a rounding whose clear score is
   already below the floor is dropped without compiling (FHE can only lose more); the rest are
   compiled on all rows and ordered by concrete's complexity (a compile-only cost proxy), and
   scored by simulation in that order until ``ACCEPTED_VARIANTS`` are within the budget;
3. of every candidate within the budget, compiled on all rows, the ``MAX_TIMED`` cheapest by
   complexity get a timed FHE run on a few training rows after a warm-up
   (``tune_rank=measured``, the default; it generates throw-away keys for each) or are ranked by
   the complexity itself (``tune_rank=complexity``: no keys, ranks a little less like FHE time);
4. the cheapest is kept (ties: the more accurate, then the configured one).

Every candidate, its scores, costs and why it was pruned are recorded in metrics.json.

Which ranking predicts the FHE latency better is measured by ``python -m bench.tune_evidence``
(README, "Faster circuits": Spearman 1.00 / 0.98 for the timed run against 0.96 / 0.95 for the
complexity on the tree / NN grids).
"""

from __future__ import annotations

import itertools
import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from training import circuit
from training.errors import DataError, HyperparameterError
from training.models import (
    CLASSIFICATION,
    RANK_MEASURED,
    ROUNDING_BITS,
    ROUNDING_METHOD,
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
# Circuit knobs (networks): tried on this many of the most accurate trainings within the budget.
# With accumulator rounding every bootstrap is as wide as the rounding, whatever the weight and
# activation bits, so the most accurate trainings are the ones worth rounding; each network
# compile costs seconds, each simulated fold more.
CIRCUIT_BASES = 2
# Circuit variants scored by simulation, cheapest by complexity first, until this many are
# within the budget.
ACCEPTED_VARIANTS = 3
# With tune_rank=measured: candidates within the budget timed in FHE (the cheapest by complexity;
# complexity ranks like the FHE time, Spearman 0.95-0.96 in bench/results/tune-evidence.json).
MAX_TIMED = 4
# ... and only those within this factor of the lowest complexity: in the measured grids the
# complexity never ranked two circuits against their FHE time when it differed by more than 1.25x.
PROXY_MARGIN = 2.0
_CIRCUIT_KEYS = (ROUNDING_BITS, ROUNDING_METHOD, "p_error")
STAGE_TRAINING = "training"
STAGE_CIRCUIT = "circuit"

Fit = Callable[[Any, np.ndarray, np.ndarray], tuple[Any, Any]]
Score = Callable[[np.ndarray, np.ndarray], float]


@dataclass
class Candidate:
    """One configuration tried by the search.

    Attributes:
        config: The knob values (hyperparameter name -> value).
        configured: True for the job's own configuration (what ``tune=false`` would build).
        stage: ``training`` (a grid value of the training knobs) or ``circuit`` (a circuit
            variant of a training: rounding, p_error).
        simulated: Scored by ``fhe="simulate"`` (the circuit is not exact), else clear-quantised.
        fold_scores: Score on each held-out fold.
        score: Their mean.
        within_budget: Scored within the budget of the best candidate.
        complexity: concrete's ``circuit.complexity`` of the full-data fit (within budget only).
        pbs_count: Programmable bootstraps in that circuit.
        keyswitch_count: Key switches in that circuit.
        fhe_seconds: Median seconds of one FHE run (``tune_rank=measured`` only).
        fit_seconds: Time spent fitting (folds and full data).
        compile_seconds: Time spent compiling.
        error: Why the candidate could not be fitted or compiled, if it could not.
        pruned: Why the search skipped scoring or timing it (cost proxies), if it did.
        chosen: The kept candidate.
    """

    config: dict[str, Any]
    configured: bool = False
    stage: str = STAGE_TRAINING
    simulated: bool = False
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
    pruned: str | None = None
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
    circuit_knobs = {name: resolved.model[name] for name in _circuit_names(resolved)}
    return [{**c, **circuit_knobs} for c in
            [configured, *(c for c in combos if c != configured)]]


def _circuit_names(resolved: ResolvedHyperparameters) -> list[str]:
    names: list[str] = []
    for name, _ in resolved.spec.circuit_grid:
        names += [ROUNDING_BITS, ROUNDING_METHOD] if name == "rounding" else [name]
    return names


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
    search = _Search(resolved, x_train, y_train, folds, score, fit)
    for candidate in candidates:
        search.score_training(candidate)
    scored = [c for c in candidates if c.score is not None]
    if not scored:
        raise DataError("no candidate configuration could be fitted: "
                        + "; ".join(f"{c.config}: {c.error}" for c in candidates))
    best = max(c.score for c in scored if c.score is not None)
    search.floor = best - budget / POINTS - SCORE_EPSILON
    for candidate in scored:
        candidate.within_budget = candidate.score is not None and candidate.score >= search.floor
    candidates += search.circuit_variants([c for c in scored if c.within_budget])
    kept = search.cheapest([c for c in candidates if c.within_budget],
                           measured=settings["tune_rank"] == RANK_MEASURED)
    if kept is None:
        raise DataError("no candidate within the budget could be compiled: "
                        + "; ".join(f"{c.config}: {c.error}" for c in candidates
                                    if c.within_budget))
    chosen, model, float_model = kept
    chosen.chosen = True
    record = {
        **settings, "metric_points_per_unit": POINTS,
        "best_score": best, "configured": configs[0], "chosen": chosen.config,
        "reason": _reason(chosen, candidates, budget, settings["tune_rank"], best),
        "candidates": [c.as_dict() for c in candidates],
        "seconds": round(time.perf_counter() - started, 3),
    }
    logger.info("tuning kept %s: %s", chosen.config, record["reason"])
    return TuningResult(with_config(resolved, chosen.config), model, float_model, record)


class _Search:
    """The state of one search: the folds' fitted models, the full-data fits, the floor."""

    def __init__(self, resolved: ResolvedHyperparameters, x: np.ndarray, y: np.ndarray,
                 folds: list[tuple[np.ndarray, np.ndarray]], score: Score, fit: Fit) -> None:
        self.resolved, self.x, self.y, self.folds = resolved, x, y, folds
        self.score, self.fit = score, fit
        self.floor = -np.inf
        self.fold_models: dict[str, list[Any]] = {}
        self.full_fits: dict[str, tuple[Any, Any] | None] = {}
        self.holds: dict[str, str] = {}  # training -> the circuit its full fit is compiled as
        self.training_knobs = [name for name, _ in resolved.spec.tune_grid]

    def _training_key(self, config: Mapping[str, Any]) -> str:
        return repr([config[name] for name in self.training_knobs])

    def _resolved(self, config: Mapping[str, Any]) -> ResolvedHyperparameters:
        return with_config(self.resolved, config)

    def score_training(self, candidate: Candidate) -> None:
        """Fit the candidate on each fold and score its circuit on the held fold."""
        started = time.perf_counter()
        resolved = self._resolved(candidate.config)
        models = []
        try:
            for fit_rows, _ in self.folds:
                model = build_model(resolved)
                model.fit(self.x[fit_rows], self.y[fit_rows])
                models.append(model)
        except (ValueError, RuntimeError) as exc:
            candidate.error = f"fit failed: {exc}"
            return
        finally:
            candidate.fit_seconds += time.perf_counter() - started
        self.fold_models[self._training_key(candidate.config)] = models
        self._score_circuit(candidate)

    def _score_circuit(self, candidate: Candidate) -> None:
        """Score the candidate's circuit with its training's fold models: clear quantised
        predictions when the circuit is exact, ``fhe="simulate"`` otherwise (compiles)."""
        models = self.fold_models[self._training_key(candidate.config)]
        exact = circuit.is_exact(candidate.config)
        candidate.simulated = not exact
        started = time.perf_counter()
        scores = []
        try:
            for model, (fit_rows, held_rows) in zip(models, self.folds, strict=True):
                if exact:
                    circuit.apply_rounding(model, self.x[fit_rows], candidate.config)
                else:
                    circuit.compile_circuit(model, self.x[fit_rows], candidate.config)
                predicted = _predict(model, self.x[held_rows], self.resolved.spec.task,
                                     fhe="disable" if exact else "simulate")
                scores.append(float(self.score(self.y[held_rows], predicted)))
        except Exception as exc:  # concrete raises plain RuntimeError/AssertionError subclasses
            candidate.error = f"scoring failed: {type(exc).__name__}: {exc}"
            return
        finally:
            candidate.compile_seconds += time.perf_counter() - started
        candidate.fold_scores = scores
        candidate.score = statistics.fmean(scores)
        logger.info("tuning: %s scored %.2f (%s, %.1f s)", candidate.config,
                    POINTS * candidate.score, "simulated" if not exact else "clear quantised",
                    candidate.compile_seconds + candidate.fit_seconds)

    def circuit_variants(self, bases: list[Candidate]) -> list[Candidate]:
        """The circuit knobs' candidates tried on the best trainings within the budget.

        Cheapest first, with two prunes, each recorded on the candidate: a rounding whose clear
        cross-validated score is already below the floor is dropped without compiling (FHE can
        only lose more), and a variant that costs at least as much as one already within the
        budget (:func:`_cheaper_or_equal`: fewer or as many rounded bits, approximate before
        exact before none, a higher or equal ``p_error``) is not scored at all.
        """
        grid = self.resolved.spec.circuit_grid
        if not grid:
            return []
        limit = CIRCUIT_BASES if _has_rounding(grid) else None
        ordered = sorted(bases, key=lambda c: (-(c.score or 0.0), not c.configured))[:limit]
        variants: list[Candidate] = []
        for base in ordered:
            variants += self._variants_of(base, grid)
        return variants

    def _variants_of(self, base: Candidate, grid: Sequence[tuple[str, Sequence[Any]]]
                     ) -> list[Candidate]:
        seen = {repr(sorted(base.config.items()))}
        configs = []
        for values in itertools.product(*(values for _, values in grid)):
            config = {**base.config, **_knob_values(grid, values)}
            if repr(sorted(config.items())) not in seen:
                seen.add(repr(sorted(config.items())))
                configs.append(config)
        configs.sort(key=_aggressiveness)
        accepted = [base.config] if base.within_budget else []
        clear_scores: dict[str, float | None] = {}
        variants = []
        for config in configs:
            variant = Candidate(config, stage=STAGE_CIRCUIT)
            variants.append(variant)
            cheaper = next((a for a in accepted if _cheaper_or_equal(a, config)), None)
            if cheaper is not None:
                variant.pruned = ("not scored: costs at least as much as"
                                  f" {_circuit_text(cheaper)}, already within the budget")
                continue
            rounding = repr(circuit.rounding_threshold(config))
            if circuit.rounding_threshold(config) is not None:
                if rounding not in clear_scores:
                    clear_scores[rounding] = self._clear_score(config)
                clear = clear_scores[rounding]
                if clear is None or clear < self.floor:
                    shown = "n/a" if clear is None else f"{POINTS * clear:.2f}"
                    variant.pruned = ("not scored: its rounding already scores below the budget"
                                      f" in the clear ({shown})")
                    continue
            if circuit.is_exact(config) and circuit.rounding_threshold(config) is not None:
                variant.score = clear_scores[rounding]
            else:
                self._score_circuit(variant)
            variant.within_budget = variant.score is not None and variant.score >= self.floor
            if variant.within_budget:
                accepted.append(config)
        return variants

    def _clear_score(self, config: Mapping[str, Any]) -> float | None:
        probe = Candidate({**config, "p_error": None})
        self._score_circuit(probe)
        return probe.score

    def _full_fit(self, config: Mapping[str, Any], candidate: Candidate) -> tuple[Any, Any] | None:
        """The training's fit on all rows (once per training configuration)."""
        key = self._training_key(config)
        if key not in self.full_fits:
            started = time.perf_counter()
            try:
                self.full_fits[key] = self.fit(build_model(self._resolved(config)), self.x,
                                               self.y)
            except (ValueError, RuntimeError, DataError) as exc:
                candidate.error = f"fit failed: {exc}"
                self.full_fits[key] = None
            finally:
                candidate.fit_seconds += time.perf_counter() - started
        return self.full_fits[key]

    def _compile_full(self, candidate: Candidate) -> tuple[Any, Any] | None:
        """Fit (once per training) and compile the candidate on all rows; read its cost."""
        fitted = self._full_fit(candidate.config, candidate)
        if fitted is None:
            candidate.error = candidate.error or "fit failed"
            return None
        key, circuit_key = self._training_key(candidate.config), repr(candidate.config)
        if self.holds.get(key) == circuit_key:
            return fitted
        started = time.perf_counter()
        try:
            compiled = circuit.compile_circuit(fitted[0], self.x, candidate.config)
        except Exception as exc:  # concrete raises plain RuntimeError/AssertionError subclasses
            candidate.error = f"compile failed: {type(exc).__name__}: {exc}"
            self.holds.pop(key, None)
            return None
        finally:
            candidate.compile_seconds += time.perf_counter() - started
        self.holds[key] = circuit_key
        candidate.complexity = float(compiled.complexity)
        stats = compiled.statistics
        candidate.pbs_count = int(stats.get("programmable_bootstrap_count", 0))
        candidate.keyswitch_count = int(stats.get("key_switch_count", 0))
        return fitted

    def cheapest(self, within: list[Candidate], *, measured: bool
                 ) -> tuple[Candidate, Any, Any] | None:
        """Compile every candidate within the budget on all rows, time the ``MAX_TIMED``
        cheapest by complexity (``tune_rank=measured``) and return the cheapest, compiled."""
        for candidate in within:
            if candidate.complexity is None and candidate.error is None:
                self._compile_full(candidate)
        compiled = [c for c in within if c.complexity is not None]
        compiled.sort(key=lambda c: (c.complexity, -(c.score or 0.0), not c.configured))
        ranked = compiled
        if measured and compiled:
            cheapest = compiled[0].complexity or 0.0
            ranked = [c for c in compiled[:MAX_TIMED]
                      if (c.complexity or 0.0) <= PROXY_MARGIN * cheapest]
            for candidate in compiled:
                if candidate not in ranked:
                    candidate.pruned = (
                        f"not timed: complexity over {PROXY_MARGIN:g}x the cheapest's, or"
                        f" {MAX_TIMED} candidates within the budget have a lower one")
            for candidate in ranked:
                fitted = self._compile_full(candidate)
                if fitted is not None:
                    candidate.fhe_seconds = time_fhe_run(fitted[0], self.x[: MEASURED_ROWS + 1])
                    logger.info("tuning: %s runs in %.3f s (complexity %.3g)", candidate.config,
                                candidate.fhe_seconds, candidate.complexity)
            ranked = [c for c in ranked if c.fhe_seconds is not None]
        if not ranked:
            return None
        chosen = min(ranked, key=_key)
        fitted = self._compile_full(chosen)  # the model now holds the chosen circuit
        return None if fitted is None else (chosen, *fitted)


APPROXIMATE, NO_ROUNDING, EXACT = 0, 1, 2


def _rounding_rank(config: Mapping[str, Any]) -> tuple[int, int]:
    """Search order of roundings: approximate (fewer bits first), none, exact (exact rounding
    adds bootstraps of its own: it cost more than no rounding on the digits network)."""
    rounding = circuit.rounding_threshold(config)
    if rounding is None:
        return (NO_ROUNDING, 0)
    return (APPROXIMATE if rounding["method"] == "approximate" else EXACT,
            int(rounding["n_bits"]))


def _aggressiveness(config: Mapping[str, Any]) -> tuple[tuple[int, int], float]:
    """Sort key of circuit variants: the cheapest-looking first."""
    return (_rounding_rank(config), -(config.get("p_error") or 0.0))


def _cheaper_or_equal(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Circuit ``a`` costs at most what ``b`` costs, by construction: the same training, a
    rounding at most as wide (approximate to n bits <= approximate or exact to n or more bits,
    and <= no rounding; exact rounding is compared with itself only) and a ``p_error`` at least
    as high (the optimiser's constraint is looser, so its cheapest parameters cost no more)."""
    training = {k: v for k, v in a.items() if k not in _CIRCUIT_KEYS}
    if training != {k: v for k, v in b.items() if k not in _CIRCUIT_KEYS}:
        return False
    (kind_a, bits_a), (kind_b, bits_b) = _rounding_rank(a), _rounding_rank(b)
    if kind_a == APPROXIMATE:
        rounding_ok = kind_b == NO_ROUNDING or bits_a <= bits_b
    else:
        rounding_ok = (kind_a, bits_a) == (kind_b, bits_b)
    return rounding_ok and (a.get("p_error") or 0.0) >= (b.get("p_error") or 0.0)


def _has_rounding(grid: Sequence[tuple[str, Sequence[Any]]]) -> bool:
    return any(name == "rounding" for name, _ in grid)


def _knob_values(grid: Sequence[tuple[str, Sequence[Any]]],
                 values: Sequence[Any]) -> dict[str, Any]:
    """Grid values as hyperparameters (``rounding`` is the (bits, method) pair)."""
    config: dict[str, Any] = {}
    for (name, _), value in zip(grid, values, strict=True):
        if name == "rounding":
            config[ROUNDING_BITS], config[ROUNDING_METHOD] = value
        else:
            config[name] = value
    return config


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


def _predict(model: Any, x: np.ndarray, task: str, *, fhe: str = "disable") -> np.ndarray:
    """Clear-quantised (or simulated) predictions shaped as the job's metrics use them."""
    predicted = np.asarray(model.predict(x, fhe=fhe)).reshape(len(x), -1)
    return predicted.ravel() if task == CLASSIFICATION else predicted


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


def _reason(chosen: Candidate, candidates: list[Candidate], budget: float, rank: str,
            best: float) -> str:
    within = [c for c in candidates if c.within_budget]
    configured = candidates[0]
    unit = "s per FHE run" if rank == RANK_MEASURED else "complexity"

    def cost(c: Candidate) -> str:
        value = c.fhe_seconds if rank == RANK_MEASURED else c.complexity
        if value is None and c.complexity is not None:
            return f"not timed, complexity {c.complexity:.4g}"
        return "n/a" if value is None else f"{value:.4g}"

    text = (f"cheapest by {unit} ({cost(chosen)}) of the {len(within)} of {len(candidates)}"
            f" candidates scoring within {budget:g} point(s) of the best cross-validated score"
            f" ({POINTS * best:.2f}); it scored {POINTS * (chosen.score or 0.0):.2f}"
            f" ({'fhe=simulate' if chosen.simulated else 'clear quantised'}; circuit"
            f" {_circuit_text(chosen.config)})")
    if chosen.configured:
        return text
    configured_score = "n/a" if configured.score is None else f"{POINTS * configured.score:.2f}"
    configured_cost = (f"cost {cost(configured)}" if configured.within_budget
                       else "outside the budget")
    return (f"{text}; the configured {configured.config} scored {configured_score}"
            f" ({configured_cost})")


def _circuit_text(config: Mapping[str, Any]) -> str:
    knobs = circuit.describe(config)
    rounding = ("no rounding" if knobs["rounding_bits"] is None
                else f"{knobs['rounding_method']} rounding to {knobs['rounding_bits']} bits")
    p_error = "default p_error" if knobs["p_error"] is None else f"p_error {knobs['p_error']:g}"
    return f"{'exact' if knobs['exact'] else 'not exact'}: {rounding}, {p_error}"
