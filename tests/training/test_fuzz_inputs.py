"""Fuzzed training channels: every input trains, or fails with exit 2 and a failure file.

Never exit 1 (an internal error), never an uncaught exception, never a failure without a
failure file, and never a half-written artefact.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from common.artifact import CLIENT_ZIP, MANIFEST_NAME, SERVER_ZIP
from common.process import EXIT_BAD_INPUT
from training.training_script import main

FUZZ = settings(max_examples=40, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=64)
_CELLS = st.one_of(_FLOATS, st.integers(-10**6, 10**6), st.sampled_from(["", "x", "1e999", "nan"]))
_DTYPES = st.sampled_from(["float64", "float32", "int64", "bool", "complex128", "<U3", "uint8"])


@st.composite
def npy_channels(draw: st.DrawFn) -> dict[str, bytes | np.ndarray]:
    """A features/labels .npy pair: any dtype, NaN/inf, ragged lengths, 0 to 40 rows."""
    rows = draw(st.integers(0, 40))
    cols = draw(st.integers(0, 4))
    features = draw(hnp.arrays(draw(_DTYPES), (rows, cols)))
    label_rows = rows + draw(st.sampled_from([0, 0, 0, -1, 1]))
    labels = draw(st.one_of(
        hnp.arrays("int64", max(label_rows, 0), elements=st.integers(0, 2)),
        hnp.arrays("float64", max(label_rows, 0)),
        st.just(np.zeros(max(label_rows, 0))),  # one class only
    ))
    return {"x_features.npy": features, "x_labels.npy": labels}


@st.composite
def csv_channels(draw: st.DrawFn) -> dict[str, bytes | np.ndarray]:
    """One CSV: mixed cells (text, NaN, inf, huge), with or without the label column."""
    rows = draw(st.integers(0, 40))
    names = draw(st.lists(st.sampled_from(["a", "b", "c", "label"]), min_size=0, max_size=4,
                          unique=True))
    frame = pd.DataFrame({
        name: draw(st.lists(st.integers(0, 1) if name == "label" and draw(st.booleans())
                            else _CELLS, min_size=rows, max_size=rows))
        for name in names
    })
    return {"data.csv": frame.to_csv(index=False).encode()}


raw_channels = st.builds(
    lambda name, data: {name: data},
    st.sampled_from(["data.csv", "x_features.npy"]),
    st.binary(max_size=300),
)


DEFECTS = ("none", "nan", "inf", "one class", "text cell", "empty", "ragged", "huge", "bool")


@st.composite
def defective_channels(draw: st.DrawFn, defect: str) -> dict[str, bytes | np.ndarray]:
    """A valid dataset (npy pair or CSV) with the named ``defect`` injected ("none": valid)."""
    # 15+ rows: the 20 % held out for metrics then holds at least 3 rows, one per class.
    rows, cols = draw(st.integers(15, 40)), draw(st.integers(1, 4))
    x = draw(hnp.arrays("float64", (rows, cols), elements=st.floats(-1e3, 1e3, width=32)))
    y = np.arange(rows) % draw(st.integers(2, 3))
    row, col = draw(st.integers(0, rows - 1)), draw(st.integers(0, cols - 1))
    cells: np.ndarray = x.astype(object) if defect == "text cell" else x.copy()
    if defect in ("nan", "inf", "huge", "text cell"):
        cells[row, col] = {"nan": np.nan, "inf": -np.inf, "huge": 1.7e308,
                           "text cell": "high"}[defect]
        if defect == "huge":
            cells[(row + 1) % rows, col] = -1.7e308
    if defect == "one class":
        y = np.zeros(rows, dtype=int)
    if defect == "empty":
        cells, y = cells[:0], y[:0]
    if defect == "bool":
        cells = cells > 0
    if draw(st.booleans()):
        frame = pd.DataFrame(cells, columns=[f"f{i}" for i in range(cols)])
        frame["label"] = y if defect != "ragged" else np.append(y[:-1], np.nan)
        return {"data.csv": frame.to_csv(index=False).encode()}
    labels = y[:-1] if defect == "ragged" else y
    return {"x_features.npy": cells.astype(str) if defect == "text cell" else cells,
            "x_labels.npy": labels}


def _write(channel: Path, files: dict[str, bytes | np.ndarray]) -> None:
    for name, content in files.items():
        if isinstance(content, bytes):
            (channel / name).write_bytes(content)
        else:
            np.save(channel / name, content, allow_pickle=False)


def _first_words(failure: Path) -> str:
    return " ".join(failure.read_text().split()[:4]) if failure.exists() else "no failure file"


def _train(files: dict[str, bytes | np.ndarray]) -> tuple[int, str]:
    """Run the script on ``files``; assert it trained fully or failed cleanly.

    Returns:
        The exit code and the failure file's text ("" after a good job).
    """
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        channel = root / "channel"
        channel.mkdir()
        _write(channel, files)
        failure = root / "failure"
        try:
            code = main(["--model-dir", str(root / "model"), "--train", str(channel),
                         "--failure-file", str(failure), "--model", "LogisticRegression",
                         "--n_bits", "4"], environ={})
        except SystemExit as exc:
            code = exc.code
        model_dir = root / "model"
        artefacts = sorted(p.name for p in model_dir.glob("*")) if model_dir.exists() else []
        event("trained" if code == 0 else f"refused: {_first_words(failure)}")
        if code == 0:
            assert artefacts == sorted([CLIENT_ZIP, MANIFEST_NAME, SERVER_ZIP])
            assert not failure.exists()
            return 0, ""
        assert code == EXIT_BAD_INPUT, failure.read_text() if failure.exists() else code
        message = failure.read_text()
        assert message.split(":", 1)[0].endswith("Error") and len(message) > 20, message
        assert "Traceback" not in message
        assert not {CLIENT_ZIP, SERVER_ZIP} & set(artefacts)
        return code, message


TRAINS = {"none", "bool"}  # valid data; booleans are 0/1 features
REASONS = {  # what the failure file must name, per injected defect
    "nan": r"DataError: training data has 1 NaN feature values in 1 rows",
    "inf": r"DataError: training data has 1 inf feature values in 1 rows",
    "one class": r"DataError: labels hold a single class",
    "text cell": r"DataError: (data\.csv has non-numeric columns: f\d|x_features\.npy has dtype"
                 r" <U\d+ \(text\))",
    "empty": r"DataError: (data\.csv has a header but no data rows|the training data is empty)",
    "ragged": r"DataError: (features and labels length mismatch|training data has 1 NaN labels)",
    "huge": r"DataError: feature values are too large to scale",
}


@pytest.mark.parametrize("defect", DEFECTS)
@settings(FUZZ, max_examples=5)
@given(data=st.data())
def test_each_defect_is_refused_with_its_reason(defect: str, data: st.DataObject) -> None:
    """Valid data trains; each injected defect ends in exit 2 and a failure file naming it."""
    code, message = _train(data.draw(defective_channels(defect)))
    assert code == (0 if defect in TRAINS else EXIT_BAD_INPUT)
    if defect not in TRAINS:
        assert re.match(REASONS[defect], message), message


@FUZZ
@given(st.one_of(npy_channels(), csv_channels(), raw_channels))
def test_any_channel_trains_or_fails_cleanly(files: dict[str, bytes | np.ndarray]) -> None:
    """Arbitrary dtypes, shapes, cells and raw bytes: never a crash without a failure file."""
    _train(files)
