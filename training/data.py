"""Reading and checking the training channel: a features/labels ``.npy`` pair or one CSV.

Every problem raises :class:`~training.errors.DataError` with the fix; problems of one kind
(non-numeric columns, non-finite cells) are aggregated into one message.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.errors import ConfigurationError, DataError

FEATURES_MARK = "features"
LABELS_MARK = "labels"
MIN_ROWS = 4
MAX_LISTED = 5


@dataclass(frozen=True)
class Dataset:
    """Training data as read from the channel.

    Attributes:
        features: 2-D float64 array (rows x features), finite.
        labels: 1-D array (numeric), finite, same length as ``features``.
        feature_names: Column names (CSV) or empty (npy).
        source: Files the data came from, for logs.
    """

    features: np.ndarray
    labels: np.ndarray
    feature_names: tuple[str, ...]
    source: tuple[str, ...]


def load_dataset(channel: str | Path, *, label_column: str = "label") -> Dataset:
    """Find and read the data in a channel directory (searched recursively).

    Raises:
        ConfigurationError: the channel directory does not exist.
        DataError: no data file, ambiguous files, or unusable content.
    """
    channel = Path(channel)
    if not channel.is_dir():
        raise ConfigurationError(
            f"training channel {channel} does not exist: give the job a 'training' input "
            "channel (estimator.fit({'training': 's3://...'})), or pass --train DIR / set "
            "SM_CHANNEL_TRAINING"
        )
    files = sorted(p for p in channel.rglob("*") if p.is_file() and not p.name.startswith("."))
    npys = [p for p in files if p.suffix.lower() == ".npy"]
    csvs = [p for p in files if p.suffix.lower() == ".csv"]
    if npys:
        dataset = _load_npy_pair(channel, npys)
    elif len(csvs) == 1:
        dataset = _load_csv(csvs[0], label_column)
    elif csvs:
        raise DataError(
            f"found {len(csvs)} CSV files in {channel} ({_names(csvs, channel)}): put exactly one "
            "CSV (features plus a label column) in the training channel"
        )
    else:
        raise DataError(
            f"no data file in training channel {channel} "
            f"(found: {_names(files, channel) or 'nothing'}): upload a pair of .npy files "
            f"whose names contain '{FEATURES_MARK}' and "
            f"'{LABELS_MARK}', or one CSV file with a '{label_column}' column"
        )
    check_dataset(dataset)
    return dataset


def _names(paths: list[Path], root: Path) -> str:
    shown = [str(p.relative_to(root)) for p in paths[:MAX_LISTED]]
    more = f" and {len(paths) - MAX_LISTED} more" if len(paths) > MAX_LISTED else ""
    return ", ".join(shown) + more


def _pick(npys: list[Path], mark: str, channel: Path) -> Path:
    found = [p for p in npys if mark in p.name.lower()]
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise DataError(
            f"{what} .npy file with '{mark}' in its name in {channel} "
            f"(.npy files: {_names(npys, channel)}): upload exactly one '*{FEATURES_MARK}*.npy' "
            f"and one '*{LABELS_MARK}*.npy'"
        )
    return found[0]


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DataError(
                f"{path.name} holds Python objects (pickled), which training refuses to load: "
                "save a numeric array (np.save(path, array.astype(np.float64)))"
            ) from exc
        raise DataError(
            f"{path.name} is not a readable .npy file ({exc}): re-save it with np.save"
        ) from exc
    except (OSError, EOFError) as exc:
        raise DataError(
            f"{path.name} is not a readable .npy file ({exc}): re-save it with np.save"
        ) from exc


def _load_npy_pair(channel: Path, npys: list[Path]) -> Dataset:
    features_path = _pick(npys, FEATURES_MARK, channel)
    labels_path = _pick(npys, LABELS_MARK, channel)
    features = _numeric(_load_npy(features_path), features_path.name)
    labels = _numeric(_load_npy(labels_path), labels_path.name)
    if features.ndim == 0 or labels.ndim == 0:
        raise DataError(
            f"{features_path.name} / {labels_path.name} hold a single value: save one row per "
            "example (features rows x columns, labels one per row)"
        )
    if features.ndim == 1:
        features = features.reshape(-1, 1)
    elif features.ndim > 2:
        features = features.reshape(features.shape[0], -1)  # images: flatten each row
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels.ravel()
    if labels.ndim != 1:
        raise DataError(
            f"{labels_path.name} has shape {labels.shape}: labels must be one value per row "
            "(a 1-D array)"
        )
    if features.shape[0] != labels.shape[0]:
        raise DataError(
            f"features and labels length mismatch: {features_path.name} has "
            f"{features.shape[0]} rows, {labels_path.name} has {labels.shape[0]}: "
            "save them from the same rows, in the same order"
        )
    return Dataset(features.astype(np.float64), labels, (),
                   (features_path.name, labels_path.name))


def _numeric(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise DataError(
            f"{name} has dtype {array.dtype} ({_kind_name(array.dtype.kind)}): training needs "
            "numbers; convert it (e.g. array.astype(np.float64), or encode categories as integers)"
        )
    return array


def _kind_name(kind: str) -> str:
    return {"c": "complex", "U": "text", "S": "bytes", "O": "objects", "M": "datetimes",
            "m": "timedeltas", "V": "records"}.get(kind, "not numeric")


def _load_csv(path: Path, label_column: str) -> Dataset:
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path.name} is empty: upload a CSV with a header row and data rows")\
            from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path.name} is not a readable CSV ({exc}): save it as UTF-8 CSV "
                        "with a header row") from exc
    if label_column not in frame.columns:
        raise DataError(
            f"{path.name} has no label column {label_column!r} (columns: "
            f"{', '.join(map(str, frame.columns[:20]))}): set hyperparameter 'label_column' to "
            "the target's column name"
        )
    if frame.empty:
        raise DataError(f"{path.name} has a header but no data rows: upload at least {MIN_ROWS}"
                        " rows under the header")
    bad = [str(c) for c in frame.columns if not _numeric_column(frame[c])]
    if bad:
        raise DataError(
            f"{path.name} has non-numeric columns: {', '.join(bad[:20])}: encode categories as "
            "numbers and remove free text before training (FHE models take numbers only)"
        )
    features = frame.drop(columns=[label_column])
    if features.shape[1] == 0:
        raise DataError(f"{path.name} has only the label column: add feature columns")
    return Dataset(features.to_numpy(dtype=np.float64), frame[label_column].to_numpy(),
                   tuple(map(str, features.columns)), (path.name,))


def _numeric_column(column: object) -> bool:
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    numeric = bool(is_numeric_dtype(column) or is_bool_dtype(column))
    return numeric and column.dtype.kind != "c"  # type: ignore[attr-defined]


def check_dataset(dataset: Dataset) -> None:
    """Reject empty, too small or non-finite data.

    Raises:
        DataError: listing every problem found.
    """
    rows = dataset.features.shape[0]
    if rows == 0 or dataset.features.shape[1] == 0:
        raise DataError(
            f"the training data is empty ({rows} rows x {dataset.features.shape[1]} features): "
            f"upload at least {MIN_ROWS} rows"
        )
    if rows < MIN_ROWS:
        raise DataError(f"only {rows} rows of training data: upload at least {MIN_ROWS} rows")
    problems = []
    bad_features = ~np.isfinite(dataset.features)
    if bad_features.any():
        cols = np.flatnonzero(bad_features.any(axis=0))
        names = [dataset.feature_names[i] if dataset.feature_names else f"#{i}" for i in cols]
        rows_hit = np.flatnonzero(bad_features.any(axis=1))
        kinds = _nonfinite_kinds(dataset.features[bad_features])
        problems.append(
            f"{int(bad_features.sum())} {kinds} feature values in {len(rows_hit)} rows "
            f"(first rows {rows_hit[:MAX_LISTED].tolist()}, columns {', '.join(names[:20])})"
        )
    labels = dataset.labels.astype(np.float64)
    bad_labels = ~np.isfinite(labels)
    if bad_labels.any():
        problems.append(
            f"{int(bad_labels.sum())} {_nonfinite_kinds(labels[bad_labels])} labels "
            f"(first rows {np.flatnonzero(bad_labels)[:MAX_LISTED].tolist()})"
        )
    if problems:
        raise DataError(
            "training data has " + "; ".join(problems)
            + ": drop or impute those rows before training (FHE models need finite numbers)"
        )
    _check_ranges(dataset)


def _check_ranges(dataset: Dataset) -> None:
    """Refuse columns whose range overflows float64: neither scaling nor quantisation can work.

    Checked on every row, before the split, so the outcome cannot depend on which rows are held
    out.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        span = dataset.features.max(axis=0) - dataset.features.min(axis=0)
    cols = np.flatnonzero(~np.isfinite(span))
    if cols.size:
        names = [dataset.feature_names[i] if dataset.feature_names else f"#{i}" for i in cols]
        raise DataError(
            f"feature values are too large to scale (the range of columns {', '.join(names[:20])}"
            " overflows float64): rescale those columns (e.g. divide by 1e100) before training"
        )


def _nonfinite_kinds(values: np.ndarray) -> str:
    kinds = []
    if np.isnan(values).any():
        kinds.append("NaN")
    if np.isinf(values).any():
        kinds.append("inf")
    return "/".join(kinds)
