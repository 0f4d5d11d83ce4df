"""Which concrete-ml models training can build, and their hyperparameters.

SageMaker passes hyperparameters as strings (``--name value``); :func:`resolve_hyperparameters`
parses and checks them all at once against the chosen model's table, so one failed job lists every
mistake. :func:`build_model` turns the result into an unfitted concrete-ml estimator.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from training.errors import HyperparameterError

CLASSIFICATION = "classification"
REGRESSION = "regression"
# A job without hyperparameters trains the AWS sample's network: concrete-ml's MNIST
# NeuralNetClassifier (2 layers, 4-bit weights and activations, hidden width 0.5 x inputs, ReLU,
# 7 epochs) on rows used as given (no scaler), so a plain concrete-ml client can query it.
DEFAULT_MODEL = "NeuralNetClassifier"
SCALER_NONE = "none"
SCALER_MINMAX = "minmax"
SCALERS = (SCALER_NONE, SCALER_MINMAX)
# Hyperparameters SageMaker itself adds (sagemaker_program, sagemaker_region, ...): not ours.
SAGEMAKER_PREFIX = "sagemaker_"
ACTIVATIONS = ("relu", "sigmoid", "tanh", "celu", "selu", "elu", "leakyrelu", "hardtanh")


@dataclass(frozen=True)
class Param:
    """One hyperparameter: its type, default, bounds and the constructor argument it feeds.

    Attributes:
        name: Hyperparameter name as given to the job (``--name value``).
        kind: ``bool``, ``int``, ``float`` or ``str``.
        default: Value used when the job does not set it.
        low: Smallest allowed value (numbers), inclusive.
        high: Largest allowed value (numbers), inclusive.
        choices: Allowed values (strings).
        target: Constructor keyword of the concrete-ml class; empty for job-level settings.
        doc: One-line description (README table).
    """

    name: str
    kind: type
    default: Any
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    target: str = ""
    doc: str = ""

    def parse(self, raw: Any) -> Any:
        """Convert a raw (usually string) value; raises ValueError with the allowed range."""
        value = _unquote(raw)
        if self.kind is bool:
            parsed: Any = _parse_bool(value, raw)
        elif self.kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(f"must be an integer, got {raw!r}")
            parsed = int(value) if not isinstance(value, str) else int(value.strip())
        elif self.kind is float:
            parsed = float(value)
            if parsed != parsed or parsed in (float("inf"), float("-inf")):
                raise ValueError(f"must be a finite number, got {raw!r}")
        else:
            parsed = str(value)
        if self.choices and parsed.lower() not in self.choices:
            raise ValueError(f"must be one of {', '.join(self.choices)}; got {raw!r}")
        if self.low is not None and parsed < self.low:
            raise ValueError(f"must be >= {self.low}, got {raw!r}")
        if self.high is not None and parsed > self.high:
            raise ValueError(f"must be <= {self.high}, got {raw!r}")
        return parsed.lower() if self.choices else parsed


@dataclass(frozen=True)
class ModelSpec:
    """A concrete-ml class training can build.

    Attributes:
        class_name: Name in ``concrete.ml.sklearn`` (the ``model`` hyperparameter's value).
        task: ``classification`` or ``regression``.
        params: The hyperparameters it accepts besides the job-level ones.
        seeded: The constructor takes ``random_state``.
        default_scaler: The ``scaler`` when the job does not set one: ``minmax`` (concrete-ml
            quantises all inputs of a linear model with one shared range, so features of
            different magnitudes need scaling), ``none`` for the sample's network, whose rows
            come normalised by the data preparation (as MNIST's do).
        tune_grid: With ``tune=true``: the values tried for each training knob (each value is
            one retraining; the configured value is always tried too).
        circuit_grid: With ``tune=true``: the values tried for each circuit knob (compile-time
            only: no retraining; ``None`` is concrete-ml's default), see training/tuning.py.
    """

    class_name: str
    task: str
    params: tuple[Param, ...]
    seeded: bool = True
    default_scaler: str = SCALER_MINMAX
    tune_grid: tuple[tuple[str, tuple[int, ...]], ...] = ()
    circuit_grid: tuple[tuple[str, tuple[Any, ...]], ...] = ()


_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _parse_bool(value: Any, raw: Any) -> bool:
    if isinstance(value, bool):
        return value
    try:
        return _BOOLEANS[str(value).strip().lower()]
    except KeyError:
        raise ValueError(f"must be true or false, got {raw!r}") from None


def _unquote(raw: Any) -> Any:
    """Undo SageMaker's JSON encoding of hyperparameter values (``'"relu"'`` -> ``'relu'``)."""
    if isinstance(raw, str) and len(raw) >= 2 and raw[0] == raw[-1] == '"':
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


def _n_bits(default: int) -> Param:
    return Param("n_bits", int, default, 2, 16, target="n_bits",
                 doc="quantisation bits of inputs/weights (lower = faster FHE, less accurate)")


# Circuit knobs: compile-time only (no constructor argument, no retraining), see
# training/circuit.py. None keeps concrete-ml's default (an exact circuit).
ROUNDING_BITS = "rounding_bits"
ROUNDING_METHOD = "rounding_method"
P_ERROR = "p_error"
ROUNDING_EXACT = "exact"
ROUNDING_APPROXIMATE = "approximate"
_P_ERROR = Param(P_ERROR, float, None, 1e-40, 0.5,
                 doc="probability that one programmable bootstrap is off by one (default:"
                 " concrete-ml's, about 2^-40: exact); raising it makes FHE faster but results"
                 " may differ from the clear model's")
_ROUNDING_PARAMS = (
    Param(ROUNDING_BITS, int, None, 2, 16,
          doc="round every accumulator to this many bits before its activation (default: no"
          " rounding); fewer bits = narrower, faster bootstraps"),
    Param(ROUNDING_METHOD, str, ROUNDING_EXACT, choices=(ROUNDING_EXACT, ROUNDING_APPROXIMATE),
          doc="exact rounding, or approximate (much cheaper; may be off by one in FHE)"),
)

_MAX_DEPTH = Param("max_depth", int, 4, 1, 10, target="max_depth",
                   doc="tree depth (FHE cost grows ~2^depth)")
_N_ESTIMATORS = Param("n_estimators", int, 20, 1, 500, target="n_estimators",
                      doc="number of trees")
_C = Param("C", float, 1.0, 1e-9, 1e9, target="C", doc="inverse regularisation strength")

# The reference neural network: 2 layers, 4-bit weights and activations, hidden multiplier 0.5,
# ReLU, 7 epochs.
_NN_PARAMS = (
    Param("n_layers", int, 2, 1, 10, target="module__n_layers", doc="linear layers"),
    Param("n_w_bits", int, 4, 2, 8, target="module__n_w_bits", doc="weight bits"),
    Param("n_a_bits", int, 4, 2, 8, target="module__n_a_bits", doc="activation bits"),
    Param("n_accum_bits", int, 32, 4, 32, target="module__n_accum_bits",
          doc="accumulator bits (pruning target)"),
    Param("n_hidden_neurons_multiplier", float, 0.5, 0.01, 16.0,
          target="module__n_hidden_neurons_multiplier", doc="hidden width = multiplier x inputs"),
    Param("activation", str, "relu", choices=ACTIVATIONS, target="module__activation_function",
          doc="activation function"),
    Param("max_epochs", int, 7, 1, 1000, target="max_epochs", doc="training epochs"),
    Param("lr", float, 0.01, 1e-9, 10.0, target="lr", doc="Adam learning rate"),
    Param("batch_size", int, 128, 1, 65536, target="batch_size", doc="mini-batch size"),
    *_ROUNDING_PARAMS,
    _P_ERROR,
)

# The compile-time knobs ``tune=true`` searches: quantisation bits of linear and tree models;
# weight and activation bits of the neural network (each value is one retraining).
_BITS_GRID = (("n_bits", (2, 3, 4, 5, 6, 7, 8)),)
_NN_GRID = (("n_w_bits", (2, 3, 4)), ("n_a_bits", (2, 3, 4)))
# Circuit knobs searched with tune=true (training/tuning.py says how the search is pruned).
# p_error: concrete-ml's default (exact), then 0.01 / 0.05 / 0.1 (Zama's published MNIST MLPs use
# 0.1). Rounding: none, exact to 6 bits, approximate to 5-7 bits. The 784-input network's
# accumulators are 12 bits wide, the digits network's 8-10: approximate 5-6 bits made them 4-13x
# faster at no accuracy loss in the probes. 8 bits rounds little off the digits network, and 4
# bits is no wider than the 4-bit activations it feeds: approximate rounding's off-by-one is then
# 1/16 of the range (98.3 % agreement with the clear model on the digits network against 99.7 %
# at 5 bits, and a cross-validated loss at the edge of the 1-point budget).
P_ERRORS = (None, 0.01, 0.05, 0.1)
ROUNDINGS: tuple[tuple[int | None, str], ...] = (
    (None, ROUNDING_EXACT), (6, ROUNDING_EXACT), (5, ROUNDING_APPROXIMATE),
    (6, ROUNDING_APPROXIMATE), (7, ROUNDING_APPROXIMATE))
_NN_CIRCUIT_GRID: tuple[tuple[str, tuple[Any, ...]], ...] = (
    ("rounding", ROUNDINGS), (P_ERROR, P_ERRORS))
_TREE_CIRCUIT_GRID: tuple[tuple[str, tuple[Any, ...]], ...] = ((P_ERROR, P_ERRORS),)
_XGB_DEPTH = Param("max_depth", int, 3, 1, 10, target="max_depth", doc="tree depth")


def _tree(class_name: str, task: str, params: tuple[Param, ...]) -> ModelSpec:
    """A tree family: searched over ``n_bits`` (retraining) and ``p_error`` (compile time)."""
    return ModelSpec(class_name, task, params, tune_grid=_BITS_GRID,
                     circuit_grid=_TREE_CIRCUIT_GRID)


MODELS: dict[str, ModelSpec] = {spec.class_name: spec for spec in (
    ModelSpec("LogisticRegression", CLASSIFICATION, (
        _n_bits(8), _C, Param("max_iter", int, 100, 1, 100000, target="max_iter",
                              doc="solver iterations")), tune_grid=_BITS_GRID),
    ModelSpec("LinearSVC", CLASSIFICATION, (_n_bits(8), _C), seeded=True, tune_grid=_BITS_GRID),
    _tree("DecisionTreeClassifier", CLASSIFICATION, (_n_bits(6), _MAX_DEPTH, _P_ERROR)),
    _tree("RandomForestClassifier", CLASSIFICATION,
          (_n_bits(6), _MAX_DEPTH, _N_ESTIMATORS, _P_ERROR)),
    _tree("XGBClassifier", CLASSIFICATION, (_n_bits(6), _XGB_DEPTH, _N_ESTIMATORS, _P_ERROR)),
    ModelSpec("NeuralNetClassifier", CLASSIFICATION, _NN_PARAMS, seeded=False,
              default_scaler=SCALER_NONE, tune_grid=_NN_GRID, circuit_grid=_NN_CIRCUIT_GRID),
    ModelSpec("LinearRegression", REGRESSION, (_n_bits(8),), seeded=False, tune_grid=_BITS_GRID),
    ModelSpec("Ridge", REGRESSION, (
        _n_bits(8), Param("alpha", float, 1.0, 0.0, 1e9, target="alpha",
                          doc="L2 regularisation")), seeded=False, tune_grid=_BITS_GRID),
    _tree("DecisionTreeRegressor", REGRESSION, (_n_bits(6), _MAX_DEPTH, _P_ERROR)),
    _tree("RandomForestRegressor", REGRESSION, (_n_bits(6), _MAX_DEPTH, _N_ESTIMATORS, _P_ERROR)),
    _tree("XGBRegressor", REGRESSION, (_n_bits(6), _XGB_DEPTH, _N_ESTIMATORS, _P_ERROR)),
)}

# Job-level hyperparameters, valid with every model.
JOB_PARAMS: tuple[Param, ...] = (
    Param("model", str, DEFAULT_MODEL, doc="concrete-ml class name (table below)"),
    Param("label_column", str, "label", doc="CSV column holding the target"),
    Param("test_size", float, 0.2, 0.0, 0.9,
          doc="held-out fraction for metrics.json (0: train on every row, no metrics)"),
    Param("random_state", int, 0, 0, 2**31 - 1, doc="seed for the split and the model"),
    Param("scaler", str, None, choices=SCALERS,
          doc="input scaling shipped to clients: none (rows as given) or minmax ([-1, 1]);"
          " default none for NeuralNetClassifier, minmax for the others"),
)

# The circuit search (``tune=true``, training/tuning.py), valid with every model. Recorded only
# when tuning is on.
TUNE = "tune"
RANK_COMPLEXITY = "complexity"
RANK_MEASURED = "measured"
TUNE_PARAMS: tuple[Param, ...] = (
    Param(TUNE, bool, False, doc="search the compile-time knobs for the fastest circuit"
          " within tune_budget"),
    Param("tune_budget", float, 1.0, 0.0, 100.0,
          doc="accuracy points (r2 x 100 for regressors) the tuned model may give up against"
          " the most accurate candidate"),
    Param("tune_folds", int, 3, 2, 10,
          doc="cross-validation folds of the training rows that score each candidate"),
    Param("tune_rank", str, RANK_MEASURED, choices=(RANK_MEASURED, RANK_COMPLEXITY),
          doc="speed ranking: a timed FHE run of each candidate within the budget, or"
          " concrete's circuit complexity (no keys generated; ranks less well)"),
)


@dataclass(frozen=True)
class ResolvedHyperparameters:
    """Parsed hyperparameters of one job.

    Attributes:
        spec: The chosen model.
        job: Job-level values (model, label_column, test_size, random_state).
        model: The chosen model's values by hyperparameter name, defaults filled in.
        tuning: The circuit search's settings when ``tune=true``, else empty.
    """

    spec: ModelSpec
    job: dict[str, Any]
    model: dict[str, Any]
    tuning: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """All values, as recorded in the manifest and metrics."""
        return {**self.job, **self.model, **self.tuning}


def resolve_hyperparameters(raw: Mapping[str, Any]) -> ResolvedHyperparameters:
    """Parse and validate every hyperparameter; fill defaults.

    Raises:
        HyperparameterError: unknown model, unknown names or invalid values (all listed).
    """
    raw = {name: value for name, value in raw.items() if not name.startswith(SAGEMAKER_PREFIX)}
    model_name = str(_unquote(raw.get("model", DEFAULT_MODEL))).strip()
    spec = MODELS.get(model_name) or _case_insensitive(model_name)
    if spec is None:
        raise HyperparameterError(
            f"unknown model type {model_name!r}: set hyperparameter 'model' to one of "
            f"{', '.join(MODELS)}"
        )
    problems: list[str] = []
    job = _parse_group(JOB_PARAMS, raw, problems)
    job["model"] = spec.class_name
    job["scaler"] = job.get("scaler") or spec.default_scaler
    values = _parse_group(spec.params, raw, problems)
    if ROUNDING_METHOD in raw and ROUNDING_BITS not in raw:
        problems.append(f"'{ROUNDING_METHOD}' only applies with {ROUNDING_BITS}")
    tuning = _parse_group(TUNE_PARAMS, raw, problems)
    if not tuning.get(TUNE, False):
        problems += [f"'{name}' only applies with tune=true" for name in
                     sorted(set(raw) & {p.name for p in TUNE_PARAMS[1:]})]
        tuning = {}
    known = {p.name for p in (*JOB_PARAMS, *TUNE_PARAMS, *spec.params)}
    for name in sorted(set(raw) - known):
        problems.append(
            f"'{name}' is not a hyperparameter of {spec.class_name} "
            f"(it accepts: {', '.join(sorted(known))})"
        )
    if problems:
        raise HyperparameterError("bad hyperparameters: " + "; ".join(problems))
    return ResolvedHyperparameters(spec, job, values, tuning)


def _case_insensitive(name: str) -> ModelSpec | None:
    matches = [spec for key, spec in MODELS.items() if key.lower() == name.lower()]
    return matches[0] if matches else None


def _parse_group(params: tuple[Param, ...], raw: Mapping[str, Any], problems: list[str]
                 ) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for param in params:
        if param.name not in raw:
            values[param.name] = param.default
            continue
        try:
            values[param.name] = param.parse(raw[param.name])
        except (TypeError, ValueError) as exc:
            problems.append(f"'{param.name}' {exc}")
    return values


def constructor_kwargs(resolved: ResolvedHyperparameters) -> dict[str, Any]:
    """Keyword arguments for the concrete-ml constructor (activation names become torch classes)."""
    kwargs: dict[str, Any] = {}
    for param in resolved.spec.params:
        if not param.target:  # a circuit knob: compile time (training/circuit.py)
            continue
        value = resolved.model[param.name]
        if param.name == "activation":
            value = _activation_class(value)
        kwargs[param.target] = value
    if resolved.spec.seeded:
        kwargs["random_state"] = resolved.job["random_state"]
    if resolved.spec.class_name.startswith("NeuralNet"):
        kwargs["verbose"] = 0
        kwargs["callbacks"] = "disable"  # skorch callbacks cannot be serialised by model.dumps()
    return kwargs


def _activation_class(name: str) -> type:
    from torch import nn

    classes = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "celu": nn.CELU,
               "selu": nn.SELU, "elu": nn.ELU, "leakyrelu": nn.LeakyReLU, "hardtanh": nn.Hardtanh}
    return classes[name]


def build_model(resolved: ResolvedHyperparameters) -> Any:
    """Return the unfitted concrete-ml estimator for ``resolved``."""
    from concrete.ml import sklearn as cml

    if resolved.spec.class_name.startswith("NeuralNet"):
        import torch

        torch.manual_seed(resolved.job["random_state"])
    return getattr(cml, resolved.spec.class_name)(**constructor_kwargs(resolved))
