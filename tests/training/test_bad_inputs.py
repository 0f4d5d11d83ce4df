"""Every bad input: exit code 2, a failure file that says the fix, no artefact left behind."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.process import EXIT_BAD_INPUT, EXIT_FAILED
from tests.training.conftest import run_script, sagemaker_env
from training import training_script
from training.training_script import main

Maker = Callable[[Path], list[str]]


def _npy(features: np.ndarray, labels: np.ndarray) -> Maker:
    def make(channel: Path) -> list[str]:
        np.save(channel / "x_features.npy", features, allow_pickle=True)
        np.save(channel / "x_labels.npy", labels, allow_pickle=True)
        return []
    return make


def _csv(frame: pd.DataFrame, *args: str, name: str = "data.csv") -> Maker:
    def make(channel: Path) -> list[str]:
        frame.to_csv(channel / name, index=False)
        return list(args)
    return make


def _text(name: str, content: str, *args: str) -> Maker:
    def make(channel: Path) -> list[str]:
        (channel / name).write_text(content)
        return list(args)
    return make


RNG = np.random.default_rng(0)
X = RNG.normal(size=(40, 3))
Y = np.arange(40) % 2
GOOD_FRAME = pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "label": Y})
# Hyperparameter checks are about a chosen family; the default job is the neural network.
LINEAR = ("--model", "LogisticRegression")


def _with(frame: pd.DataFrame, column: str, row: int, value: object) -> pd.DataFrame:
    frame = frame.copy().astype({column: object}) if isinstance(value, str) else frame.copy()
    frame.loc[row, column] = value
    return frame


def _two_csvs(channel: Path) -> list[str]:
    GOOD_FRAME.to_csv(channel / "a.csv", index=False)
    GOOD_FRAME.to_csv(channel / "b.csv", index=False)
    return []


def _truncated_npy(channel: Path) -> list[str]:
    _npy(X, Y)(channel)
    data = (channel / "x_features.npy").read_bytes()
    (channel / "x_features.npy").write_bytes(data[: len(data) // 2])
    return []


def _nan_features() -> np.ndarray:
    x = X.copy()
    x[3, 1] = np.nan
    return x


CASES: dict[str, tuple[Maker, str]] = {
    "no data file": (_text("README.txt", "hello"), r"no data file in training channel"),
    "only labels npy": (lambda c: (np.save(c / "y_labels.npy", Y), [])[1],
                        r"no \.npy file with 'features' in its name"),
    "length mismatch": (_npy(X, Y[:30]), r"features and labels length mismatch: .* 40 rows, .* 30"),
    "labels 2-D": (_npy(X, np.stack([Y, Y], axis=1)), r"labels must be one value per row"),
    "NaN features": (_npy(_nan_features(), Y), r"1 NaN feature values in 1 rows"),
    "inf labels": (_npy(X, np.where(np.arange(40) == 5, np.inf, Y)), r"1 inf labels"),
    "text labels (dtype)": (_npy(X, Y.astype(str)), r"dtype <U\d+ \(text\)"),
    "object features (pickle)": (_npy(X.astype(object), Y), r"holds Python objects \(pickled\)"),
    "complex features": (_npy(X.astype(complex), Y), r"dtype complex128"),
    "empty data": (_npy(np.empty((0, 3)), np.empty(0)), r"training data is empty"),
    "too few rows": (_npy(X[:3], Y[:3]), r"only 3 rows of training data"),
    "single class": (_npy(X, np.zeros(40)), r"single class \(\[0\]\)"),
    "class with one row": (_npy(X, np.where(np.arange(40) == 0, 7, Y)),
                           r"1 classes \(e\.g\. \[7\]\) have a single row"),
    "truncated npy": (_truncated_npy, r"x_features\.npy is not a readable \.npy file"),
    "scalar npy": (_npy(np.float64(1.0), np.float64(0.0)), r"hold a single value"),
    "overflowing range": (_npy(np.where(np.arange(120).reshape(40, 3) % 2, -1.7e308, 1.7e308),
                               Y), r"too large to scale"),
    "continuous labels for classifier": (_npy(X, X[:, 0]), r"labels are not whole numbers"),
    "float32 overflow in the default network": (
        _npy(X * 1e39, Y), r"too large to scale or quantise \(their range overflows float32, "
                           r"which NeuralNetClassifier computes in\)"),
    "non-numeric CSV": (_csv(_with(GOOD_FRAME, "b", 2, "high")), r"non-numeric columns: b"),
    "inf in CSV": (_csv(_with(GOOD_FRAME, "a", 4, np.inf)), r"inf feature values .* columns a"),
    "NaN in CSV": (_csv(_with(GOOD_FRAME, "a", 4, np.nan)), r"NaN feature values .* columns a"),
    "no label column": (_csv(GOOD_FRAME.rename(columns={"label": "y"})),
                        r"no label column 'label' \(columns: a, b, y\)"),
    "empty CSV": (_text("data.csv", ""), r"data\.csv is empty"),
    "two CSVs": (_two_csvs, r"found 2 CSV files"),
    "unknown model type": (_csv(GOOD_FRAME, "--model", "SVM9000"),
                           r"unknown model type 'SVM9000': set hyperparameter 'model' to one of"),
    "bad hyperparameter value": (_csv(GOOD_FRAME, *LINEAR, "--n_bits", "abc"),
                                 r"'n_bits' invalid literal for int"),
    "hyperparameter out of range": (_csv(GOOD_FRAME, *LINEAR, "--n_bits", "99"),
                                    r"'n_bits' must be <= 16"),
    "hyperparameter of another model": (
        _csv(GOOD_FRAME, *LINEAR, "--max_depth", "3", "--n_bits", "0"),
        r"'n_bits' must be >= 2.*'max_depth' is not a hyperparameter of LogisticRegression"),
    "stray argument": (_csv(GOOD_FRAME, "oops"), r"stray argument 'oops'"),
    "hyperparameter without value": (_csv(GOOD_FRAME, "--n_bits"), r"--n_bits has no value"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_1_with_failure_file(case: str, tmp_path: Path) -> None:
    make, expected = CASES[case]
    channel = tmp_path / "channel"
    channel.mkdir()
    extra = make(channel)
    failure = tmp_path / "failure"
    with pytest.raises(SystemExit) as exit_info:
        main(["--model-dir", str(tmp_path / "model"), "--train", str(channel),
              "--failure-file", str(failure), *extra], environ={})
    assert exit_info.value.code == EXIT_BAD_INPUT
    assert re.search(expected, failure.read_text()), failure.read_text()
    assert not list((tmp_path / "model").glob("*.zip"))


def test_missing_channel(tmp_path: Path) -> None:
    failure = tmp_path / "failure"
    with pytest.raises(SystemExit) as exit_info:
        main(["--model-dir", str(tmp_path / "m"), "--train", str(tmp_path / "nope"),
              "--failure-file", str(failure)], environ={})
    assert exit_info.value.code == EXIT_BAD_INPUT
    assert "training channel" in failure.read_text()
    assert "does not exist: give the job a 'training' input channel" in failure.read_text()


def test_neither_model_dir_nor_channel_outside_sagemaker(tmp_path: Path) -> None:
    failure = tmp_path / "failure"
    with pytest.raises(SystemExit) as exit_info:
        main([], environ={"FHE_TRAINING_FAILURE_FILE": str(failure)})
    assert exit_info.value.code == EXIT_BAD_INPUT
    assert failure.read_text() == (
        "ConfigurationError: no model directory: pass --model-dir DIR or set SM_MODEL_DIR; "
        "no training data: pass --train DIR or set SM_CHANNEL_TRAINING (in SageMaker: "
        "fit({'training': 's3://...'}))"
    )


def test_failure_file_defaults_next_to_the_model_dir(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["--model-dir", str(tmp_path / "model"), "--train", str(tmp_path / "nope")],
             environ={})
    assert "does not exist" in (tmp_path / "output" / "failure").read_text()


def test_model_dir_with_foreign_files(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "notes.txt").write_text("keep me")
    channel = tmp_path / "channel"
    channel.mkdir()
    _csv(GOOD_FRAME)(channel)
    with pytest.raises(SystemExit):
        main(["--model-dir", str(tmp_path / "model"), "--train", str(channel)], environ={})
    assert "holds other files (notes.txt)" in (tmp_path / "output" / "failure").read_text()
    assert (tmp_path / "model" / "notes.txt").read_text() == "keep me"


def test_unexpected_error_exits_2_and_is_logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("compiler exploded")

    monkeypatch.setattr(training_script, "build_model", broken)
    channel = tmp_path / "channel"
    channel.mkdir()
    _csv(GOOD_FRAME)(channel)
    with pytest.raises(SystemExit) as exit_info:
        main(["--model-dir", str(tmp_path / "model"), "--train", str(channel)], environ={})
    assert exit_info.value.code == EXIT_FAILED
    text = (tmp_path / "output" / "failure").read_text()
    assert text.startswith("internal error while training (RuntimeError: compiler exploded)")
    assert "training failed with an unexpected error" in caplog.text


def test_subprocess_failure_uses_sm_output_dir(tmp_path: Path) -> None:
    channel = tmp_path / "channel"
    channel.mkdir()
    _csv(_with(GOOD_FRAME, "a", 1, np.nan))(channel)
    completed = run_script([], sagemaker_env(tmp_path, channel))
    assert completed.returncode == EXIT_BAD_INPUT
    text = (tmp_path / "output" / "failure").read_text()
    assert text.startswith("DataError: training data has 1 NaN feature values in 1 rows")
    assert "drop or impute those rows" in text
    assert "Traceback" not in completed.stderr
