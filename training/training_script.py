"""The training job: what runs inside the training container (and in ``start_training.py --local``).

SageMaker's training toolkit runs ``python training_script.py --name value ...`` with the job's
hyperparameters as arguments and the ``SM_*`` environment describing the folders:

* ``SM_CHANNEL_TRAINING`` (``--train``): the ``training`` channel: a pair of ``.npy`` files whose
  names contain ``features`` and ``labels``, or one CSV with a label column.
* ``SM_MODEL_DIR`` (``--model-dir``): receives server.zip, client.zip and manifest.json
  (packed by SageMaker into model.tar.gz).
* ``SM_OUTPUT_DATA_DIR`` (``--output-data-dir``): receives metrics.json and reference_model.json
  (packed into output.tar.gz). Default outside SageMaker: ``<model-dir>/../output/data``.
* the failure file (``--failure-file``, env ``FHE_TRAINING_FAILURE_FILE``): default
  ``$SM_OUTPUT_DIR/failure``, else ``<model-dir>/../output/failure`` (``/opt/ml/output/failure``
  in the container). SageMaker shows its text as the job's FailureReason.

Exit codes (:mod:`common.process`): 0 success, 2 bad input (the failure file says the fix),
1 unexpected error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

# Runnable both as a module and as a plain script (the toolkit's `python training_script.py`).
# Run as training/training_script.py from a checkout, Python puts training/ itself first on
# sys.path (so data.py, models.py... would shadow top-level modules): import the package from its
# parent instead. In the image the script sits in /opt/ml/code and the package is on PYTHONPATH.
if __package__ in (None, ""):
    _HERE = Path(__file__).resolve().parent
    if (_HERE / "__init__.py").is_file():
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
        sys.path.insert(0, str(_HERE.parent))

from common.artifact import (
    CLIENT_ZIP,
    MANIFEST_NAME,
    METRICS_NAME,
    REFERENCE_MODEL_NAME,
    SERVER_ZIP,
    InputScaler,
    Manifest,
    Scaler,
    fit_scaler,
    save_artifact,
)
from common.files import atomic_write_bytes
from common.process import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, run_main
from common.sagemaker_layout import (
    BASE_DIR,
    ENV_MODEL_DIR,
    ENV_OUTPUT_DATA_DIR,
    FAILURE_FILE,
    TRAINING_CHANNEL,
    JobLayout,
    TrainingEnvironment,
    channel_env,
)
from training import circuit
from training.data import load_dataset
from training.errors import ConfigurationError, DataError, TrainingError
from training.models import (
    CLASSIFICATION,
    ResolvedHyperparameters,
    build_model,
    resolve_hyperparameters,
)
from training.tuning import tune

logger = logging.getLogger("training")

ENV_CHANNEL_TRAINING = channel_env(TRAINING_CHANNEL)
ENV_FAILURE_FILE = "FHE_TRAINING_FAILURE_FILE"
ARTIFACT_FILES = (SERVER_ZIP, CLIENT_ZIP, MANIFEST_NAME)
# fhe="simulate" passes averaged into the held-out score of a circuit that is not exact.
SIMULATION_DRAWS = 5
# SageMaker keeps the first 1024 characters of the failure file as FailureReason.
FAILURE_MAX_CHARS = 1024
# One-letter hyperparameter as SageMaker's training toolkit passes it: `-C 1.0` (longer names get
# two dashes).
SHORT_FLAG = re.compile(r"^-[A-Za-z](=.*)?$")


@dataclass(frozen=True)
class TrainingSettings:
    """Folder locations from the environment (SageMaker's ``SM_*`` names); flags override them."""

    model_dir: Path | None = None
    train_dir: Path | None = None
    output_data_dir: Path | None = None
    output_dir: Path | None = None
    failure_file: Path | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> TrainingSettings:
        """Read the settings; unset or empty variables stay None (no KeyError outside SageMaker)."""
        job = TrainingEnvironment.from_env(environ)
        failure_file = environ.get(ENV_FAILURE_FILE, "").strip()
        return cls(
            model_dir=job.model_dir,
            train_dir=job.channel(TRAINING_CHANNEL),
            output_data_dir=job.output_data_dir,
            output_dir=job.output_dir,
            failure_file=Path(failure_file) if failure_file else None,
        )


@dataclass(frozen=True)
class JobPaths:
    """The resolved folders of one run."""

    model_dir: Path
    train_dir: Path
    output_data_dir: Path


@dataclass(frozen=True)
class TrainingResult:
    """What a successful run produced.

    Attributes:
        manifest: The manifest written to the model directory.
        metrics: The content of metrics.json.
        paths: Where everything went.
    """

    manifest: Manifest
    metrics: dict[str, Any]
    paths: JobPaths


@dataclass
class _Timer:
    timings: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.timings[f"{name}_s"] = round(time.perf_counter() - start, 3)
        logger.info("%s took %.2f s", name, self.timings[f"{name}_s"])


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so bad flags also reach the failure file."""

    def error(self, message: str) -> NoReturn:
        raise ConfigurationError(f"bad command line: {message} (see --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        description="Train, compile and package a concrete-ml model. Any other --name value "
        "pair is a hyperparameter (see docs/training.md).",
        allow_abbrev=False,
    )
    parser.add_argument("--model-dir", type=Path,
                        help=f"output model folder (env {ENV_MODEL_DIR})")
    parser.add_argument("--train", type=Path,
                        help=f"training data folder (env {ENV_CHANNEL_TRAINING})")
    parser.add_argument("--output-data-dir", type=Path,
                        help=f"metrics folder (env {ENV_OUTPUT_DATA_DIR}; "
                        "default <model-dir>/../output/data)")
    parser.add_argument("--failure-file", type=Path,
                        help=f"where to write the failure reason (env {ENV_FAILURE_FILE})")
    return parser


def _flag_name(token: str) -> str | None:
    """``--name[=v]`` -> ``name[=v]``; ``-C[=v]`` -> ``C[=v]`` (SageMaker's training toolkit
    passes one-letter hyperparameters such as ``C`` with a single dash); otherwise None."""
    if token.startswith("--") and token != "--":
        return token[2:]
    if SHORT_FLAG.match(token):
        return token[1:]
    return None


def parse_hyperparameters(tokens: Sequence[str]) -> dict[str, str]:
    """Turn ``--name value`` / ``--name=value`` / ``-C value`` tokens into a dict (dashes in
    names become ``_``).

    Raises:
        ConfigurationError: a stray token or a name without a value (all listed).
    """
    values: dict[str, str] = {}
    problems: list[str] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        flag = _flag_name(token)
        if flag is None:
            problems.append(f"stray argument {token!r}")
            continue
        name, sep, value = flag.partition("=")
        if not sep:
            if index >= len(tokens) or _flag_name(tokens[index]) is not None:
                problems.append(f"hyperparameter {token} has no value")
                continue
            value = tokens[index]
            index += 1
        values[name.replace("-", "_")] = value
    if problems:
        raise ConfigurationError(
            "bad command line: " + "; ".join(problems) + ": pass hyperparameters as --name value"
        )
    return values


def failure_file_path(settings: TrainingSettings, *, flag: Path | None = None,
                      model_dir: Path | None = None) -> Path:
    """Where the failure reason goes: flag, env, ``$SM_OUTPUT_DIR/failure``, near the model dir."""
    if flag:
        return Path(flag)
    if settings.failure_file:
        return settings.failure_file
    if settings.output_dir:
        return settings.output_dir / FAILURE_FILE
    model_dir = model_dir or settings.model_dir
    return JobLayout(Path(model_dir).parent if model_dir else BASE_DIR).failure_file


def resolve_paths(args: argparse.Namespace, settings: TrainingSettings) -> JobPaths:
    """Combine flags and environment into the run's folders.

    Raises:
        ConfigurationError: the model dir and/or the training channel are not given (both listed).
    """
    model_dir = args.model_dir or settings.model_dir
    train_dir = args.train or settings.train_dir
    missing = []
    if model_dir is None:
        missing.append(f"no model directory: pass --model-dir DIR or set {ENV_MODEL_DIR}")
    if train_dir is None:
        missing.append(f"no training data: pass --train DIR or set {ENV_CHANNEL_TRAINING} "
                       "(in SageMaker: fit({'training': 's3://...'}))")
    if model_dir is None or train_dir is None:
        raise ConfigurationError("; ".join(missing))
    output = args.output_data_dir or settings.output_data_dir
    if output is None:
        output = JobLayout(Path(model_dir).parent).output_data_dir
    return JobPaths(Path(model_dir), Path(train_dir), Path(output))


def encode_labels(labels: np.ndarray, task: str) -> tuple[np.ndarray, list[Any]]:
    """Return the fitting target and the class list (empty for regression).

    Classifiers are fitted on class indices 0..k-1; the manifest keeps the original class values
    so clients map an argmax back to a label.

    Raises:
        DataError: non-integer labels for a classifier, one class only, or a class with one row.
    """
    if task != CLASSIFICATION:
        return labels.astype(np.float64), []
    as_float = labels.astype(np.float64)
    if not np.all(as_float == np.round(as_float)):
        example = as_float[as_float != np.round(as_float)][0]
        raise DataError(
            f"labels are not whole numbers (e.g. {example!r}) but the model is a classifier: "
            "encode classes as integers, or choose a regressor (model=LinearRegression, "
            "DecisionTreeRegressor, ...)"
        )
    classes, target, counts = np.unique(as_float.astype(np.int64), return_inverse=True,
                                        return_counts=True)
    if len(classes) < 2:
        raise DataError(
            f"labels hold a single class ({classes.tolist()}): a classifier needs rows of at "
            "least 2 classes"
        )
    lonely = classes[counts < 2].tolist()
    if lonely:
        raise DataError(
            f"{len(lonely)} classes (e.g. {lonely[:10]}) have a single row: each class needs "
            "at least 2 rows (one for training, one held out); add rows or drop those classes, "
            "or choose a regressor if the target is a continuous quantity"
        )
    return target.astype(np.int64), classes.tolist()


def prepare_model_dir(model_dir: Path) -> None:
    """Make sure the model folder can receive a new artefact (concrete-ml needs it empty).

    A previous artefact (server.zip, client.zip, manifest.json only) is removed, so re-running by
    hand works; anything else is left alone and reported.

    Raises:
        ConfigurationError: the folder holds other files, or is a file.
    """
    if model_dir.exists() and not model_dir.is_dir():
        raise ConfigurationError(f"model directory {model_dir} is a file: pass a folder")
    model_dir.mkdir(parents=True, exist_ok=True)
    entries = list(model_dir.iterdir())
    foreign = sorted(p.name for p in entries if p.name not in ARTIFACT_FILES)
    if foreign:
        raise ConfigurationError(
            f"model directory {model_dir} holds other files ({', '.join(foreign[:5])}): point "
            "--model-dir / SM_MODEL_DIR at an empty folder"
        )
    for entry in entries:
        entry.unlink()


def _split(features: np.ndarray, target: np.ndarray, resolved: ResolvedHyperparameters,
           task: str) -> list[np.ndarray]:
    from sklearn.model_selection import train_test_split

    if resolved.job["test_size"] == 0:  # train on every row, as the AWS sample does
        return [features, features[:0], target, target[:0]]
    try:
        return train_test_split(
            features, target, test_size=resolved.job["test_size"],
            random_state=resolved.job["random_state"],
            stratify=target if task == CLASSIFICATION else None,
        )
    except ValueError as exc:
        raise DataError(
            f"cannot hold out {resolved.job['test_size']:.0%} of {len(target)} rows for "
            f"metrics ({exc}): add rows or change hyperparameter 'test_size'"
        ) from exc


def _score(task: str) -> Callable[[np.ndarray, np.ndarray], float]:
    from sklearn.metrics import accuracy_score, r2_score

    return accuracy_score if task == CLASSIFICATION else r2_score


def do_training(
    model_dir: str | Path,
    train: str | Path,
    *,
    output_data_dir: str | Path | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
) -> TrainingResult:
    """Fit, compile, evaluate and save a concrete-ml model.

    Args:
        model_dir: Receives server.zip, client.zip, manifest.json.
        train: The training channel folder.
        output_data_dir: Receives metrics.json and reference_model.json
            (default ``<model_dir>/../output/data``).
        hyperparameters: Raw hyperparameters (strings are parsed), see docs/training.md.

    Raises:
        TrainingError: bad data or hyperparameters; the message says the fix.
    """
    model_dir = Path(model_dir)
    output = Path(output_data_dir or JobLayout(model_dir.parent).output_data_dir)
    paths = JobPaths(model_dir, Path(train), output)
    resolved = resolve_hyperparameters(hyperparameters or {})
    prepare_model_dir(paths.model_dir)
    timer = _Timer()
    data = _prepare(paths.train_dir, resolved, timer)
    fitted = _fit_or_tune(resolved, data, timer)
    task, resolved = resolved.spec.task, fitted.resolved
    with timer.step("evaluate"):
        metrics = _evaluate(fitted.model, fitted.float_model, data.x_test, data.y_test, task,
                            exact=circuit.is_exact(resolved.model))
    with timer.step("agreement"):
        circuit_record = _circuit_record(fitted, data.x_test)
    with timer.step("save"):
        manifest = save_artifact(
            paths.model_dir, fitted.model, scaler=data.scaler, task=task, classes=data.classes,
            feature_names=data.feature_names, hyperparameters=resolved.as_dict(),
            circuit=circuit_record,
        )
    metrics.update(
        model=resolved.spec.class_name, task=task, n_train=len(data.y_train),
        n_test=len(data.y_test), n_features=data.scaler.n_features, classes=data.classes,
        hyperparameters=resolved.as_dict(), fingerprints=manifest.fingerprints,
        timings=timer.timings, circuit=circuit_record,
        **({} if fitted.tuning is None else {"tuning": fitted.tuning}),
    )
    write_outputs(paths.output_data_dir, metrics=metrics, reference_model=fitted.model.dumps())
    logger.info("metrics: %s", json.dumps({k: metrics[k] for k in ("metric", "float_sklearn",
                                                                     "clear_quantised")}))
    return TrainingResult(manifest, metrics, paths)


@dataclass(frozen=True)
class _Prepared:
    """The channel's rows: labels encoded, split, scaled as the client will scale them."""

    x_train: np.ndarray
    x_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray
    scaler: InputScaler
    classes: list[Any]
    feature_names: Sequence[str]


def _prepare(train_dir: Path, resolved: ResolvedHyperparameters, timer: _Timer) -> _Prepared:
    task = resolved.spec.task
    with timer.step("load"):
        dataset = load_dataset(train_dir, label_column=resolved.job["label_column"])
    logger.info("loaded %d rows x %d features from %s", *dataset.features.shape,
                ", ".join(dataset.source))
    target, classes = encode_labels(dataset.labels, task)
    x_train, x_test, y_train, y_test = _split(dataset.features, target, resolved, task)
    scaler = fit_scaler(resolved.job["scaler"], x_train)
    x_train, x_test = _scale(scaler, x_train, x_test,
                             float32=resolved.spec.class_name.startswith("NeuralNet"))
    return _Prepared(x_train, x_test, y_train, y_test, scaler, classes, dataset.feature_names)


@dataclass(frozen=True)
class _Fitted:
    """A compiled model, its float twin, the hyperparameters it was built with (tuned ones
    with ``tune=true``) and the tuning record (None without tuning)."""

    resolved: ResolvedHyperparameters
    model: Any
    float_model: Any
    tuning: dict[str, Any] | None = None


def _fit_or_tune(resolved: ResolvedHyperparameters, data: _Prepared, timer: _Timer) -> _Fitted:
    if resolved.tuning:
        with timer.step("tune"):
            tuned = tune(resolved, data.x_train, data.y_train,
                         score=_score(resolved.spec.task), fit=_fit)
        return _Fitted(tuned.resolved, tuned.model, tuned.float_model, tuned.record)
    model = build_model(resolved)
    with timer.step("fit"):
        model, float_model = _fit(model, data.x_train, data.y_train)
    with timer.step("compile"):
        circuit.compile_circuit(model, data.x_train, resolved.model)
    return _Fitted(resolved, model, float_model)


def _circuit_record(fitted: _Fitted, x_test: np.ndarray) -> dict[str, Any]:
    """The circuit's knobs, its measured agreement with the clear quantised model on the held-out
    rows, and why it was chosen (recorded in the manifest and metrics.json)."""
    record: dict[str, Any] = {
        **circuit.describe(fitted.resolved.model),
        "agreement": circuit.agreement(fitted.model, x_test, fitted.resolved.model),
        "agreement_method": circuit.AGREEMENT_METHOD,
    }
    if fitted.tuning is not None:
        record["reason"] = fitted.tuning["reason"]
    return record


def _fit(model: Any, x_train: np.ndarray, y_train: np.ndarray) -> tuple[Any, Any]:
    """Fit the concrete-ml model and its float twin; data the library rejects is a DataError."""
    try:
        return model.fit_benchmark(x_train, y_train)
    except ValueError as exc:
        raise DataError(
            f"{type(model).__name__} could not be fitted on this data ({exc}): check the rows "
            "per class and the hyperparameters, or add training rows"
        ) from exc


def _scale(scaler: InputScaler, x_train: np.ndarray, x_test: np.ndarray, *,
           float32: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Apply the job's scaler to both splits and check the model can represent the result.

    Args:
        float32: The model computes in float32 (the torch-based NeuralNetClassifier).

    Raises:
        DataError: min-max scaling overflows float64, or unscaled values overflow the model's
            float range (their span must be finite for the quantiser).
    """
    limit = float(np.finfo(np.float32 if float32 else np.float64).max)
    with np.errstate(over="ignore", invalid="ignore"):
        x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)
        if isinstance(scaler, Scaler):
            spans = np.asarray(scaler.data_max) - np.asarray(scaler.data_min)
        else:
            spans = np.array([np.max(x_train) - np.min(x_train)])
        extreme = max(np.max(np.abs(x_train)), np.max(np.abs(x_test), initial=0.0))
    if not (np.isfinite(spans).all() and np.isfinite(x_train).all() and np.isfinite(x_test).all()
            and float(np.max(spans)) <= limit
            and extreme <= limit):
        kind = "float32, which NeuralNetClassifier computes in" if float32 else "float64"
        raise DataError(f"feature values are too large to scale or quantise (their range overflows"
                        f" {kind}): rescale those columns (e.g. divide by 1e100) before training")
    return x_train, x_test


def _evaluate(model: Any, float_model: Any, x_test: np.ndarray, y_test: np.ndarray,
              task: str, *, exact: bool = True) -> dict[str, Any]:
    """Held-out scores: float model, clear quantised model, and the circuit as it runs
    (``fhe_simulated``: the clear quantised score for an exact circuit, else the mean of
    ``SIMULATION_DRAWS`` ``fhe="simulate"`` passes: each draws the bootstraps' errors anew, and
    one draw on a few hundred rows moves the score by a few rows)."""
    metric = "accuracy" if task == CLASSIFICATION else "r2"
    if len(y_test) == 0:  # test_size=0: nothing held out
        return {"metric": metric, "float_sklearn": None, "clear_quantised": None,
                "fhe_simulated": None, "fhe_simulated_draws": None}
    score = _score(task)
    float_input = x_test.astype(np.float32) if _is_torch(model) else x_test
    float_pred = np.asarray(float_model.predict(float_input)).reshape(len(y_test), -1)
    quant_pred = np.asarray(model.predict(x_test, fhe="disable")).reshape(len(y_test), -1)
    if task == CLASSIFICATION:
        float_pred, quant_pred = float_pred.ravel(), quant_pred.ravel()
    clear_score = float(score(y_test, quant_pred))
    draws = [clear_score] if exact else [
        float(score(y_test, _simulated(model, x_test, task))) for _ in range(SIMULATION_DRAWS)]
    return {
        "metric": metric,
        "float_sklearn": float(score(y_test, float_pred)),
        "clear_quantised": clear_score,
        "fhe_simulated": float(np.mean(draws)),
        "fhe_simulated_draws": {"n": len(draws), "min": min(draws), "max": max(draws)},
    }


def _simulated(model: Any, x: np.ndarray, task: str) -> np.ndarray:
    """One ``fhe="simulate"`` pass (a fresh draw of the bootstraps' errors)."""
    predicted = np.asarray(model.predict(x, fhe="simulate")).reshape(len(x), -1)
    return predicted.ravel() if task == CLASSIFICATION else predicted


def _is_torch(model: Any) -> bool:
    return type(model).__name__.startswith("NeuralNet")


def write_outputs(output_data_dir: Path, *, metrics: Mapping[str, Any],
                  reference_model: str) -> None:
    """Write metrics.json and reference_model.json atomically."""
    doc = json.dumps(metrics, indent=2, sort_keys=True, default=_json_default)
    atomic_write_bytes(output_data_dir / METRICS_NAME, doc.encode())
    atomic_write_bytes(output_data_dir / REFERENCE_MODEL_NAME, reference_model.encode())


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def model_fn(model_dir: str | Path) -> Any:
    """Not used: serving is the inference container's job, not the training framework's.

    SageMaker framework containers call ``model_fn`` to load a model for serving. This kit
    serves with its own image (``Dockerfile.inference``: ``serve`` -> nginx + gunicorn ->
    ``inference.predictor``), which loads server.zip and checks it against the manifest.

    Raises:
        NotImplementedError: always.
    """
    raise NotImplementedError(
        f"model_fn({str(model_dir)!r}): this kit serves models with the inference container"
        " (Dockerfile.inference, `serve`), deployed by deploy_endpoint.py; the training image"
        " does not serve"
    )


def write_failure(path: Path, message: str) -> None:
    """Write SageMaker's failure file; never raises (a read-only disk must not hide the error)."""
    try:
        atomic_write_bytes(path, message[:FAILURE_MAX_CHARS].encode())
    except OSError as exc:
        logger.warning("could not write failure file %s: %s", path, exc)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point: parse arguments, train, and on failure write the failure file.

    Returns:
        0 on success. Failures raise SystemExit(EXIT_BAD_INPUT) or SystemExit(EXIT_FAILED)
        after writing the failure file.
    """
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = TrainingSettings.from_env(os.environ if environ is None else environ)
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    failure_file = failure_file_path(settings)
    try:
        args, rest = parser.parse_known_args(argv)
        failure_file = failure_file_path(settings, flag=args.failure_file, model_dir=args.model_dir)
        hyperparameters = parse_hyperparameters(rest)
        paths = resolve_paths(args, settings)
        result = do_training(paths.model_dir, paths.train_dir,
                             output_data_dir=paths.output_data_dir,
                             hyperparameters=hyperparameters)
    except TrainingError as exc:
        message = f"{type(exc).__name__}: {exc}"
        logger.error("training failed: %s", message)
        write_failure(failure_file, message)
        raise SystemExit(EXIT_BAD_INPUT) from exc
    except Exception as exc:
        logger.exception("training failed with an unexpected error")
        write_failure(failure_file, f"internal error while training ({type(exc).__name__}: {exc}); "
                      "see the job's logs. If compilation failed, lower n_bits / max_depth / "
                      "n_w_bits / n_a_bits")
        raise SystemExit(EXIT_FAILED) from exc
    logger.info("model written to %s (client fingerprint %s)", result.paths.model_dir,
                result.manifest.client_fingerprint)
    return EXIT_OK


if __name__ == "__main__":
    run_main(main)
