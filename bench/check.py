"""The benchmark's correctness gate: FHE outputs must equal the clear quantised model's."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# FHE and the clear quantised model (fhe="disable") compute the same integers; dequantisation
# and the final sigmoid/softmax are float ops on identical inputs, so only rounding can differ.
PROBA_ATOL = 1e-6
MAX_LISTED_ROWS = 10


class OutputMismatchError(AssertionError):
    """FHE outputs disagree with the clear quantised model: the numbers measured are meaningless."""


@dataclass(frozen=True)
class Agreement:
    """Result of a passed check.

    Attributes:
        rows: Rows compared.
        max_abs_gap: Largest |FHE - clear| over all outputs.
    """

    rows: int
    max_abs_gap: float

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def check_agreement(fhe: Any, clear: Any, *, what: str, atol: float = PROBA_ATOL) -> Agreement:
    """Compare FHE outputs with the clear quantised model's, row by row.

    Args:
        fhe: Outputs decrypted from FHE, shape (rows, outputs).
        clear: ``model.predict_proba(x_scaled, fhe="disable")`` of the same rows.
        what: Names the measurement in the error (model and path).
        atol: Largest tolerated absolute difference per output.

    Raises:
        OutputMismatchError: shapes differ, or some rows differ in class or beyond ``atol``
            (every such row is counted; the first ones are listed).
    """
    fhe_arr = np.asarray(fhe, dtype=np.float64)
    clear_arr = np.asarray(clear, dtype=np.float64)
    if fhe_arr.shape != clear_arr.shape:
        raise OutputMismatchError(
            f"{what}: FHE output shape {fhe_arr.shape} != clear quantised shape {clear_arr.shape}")
    flat_fhe = fhe_arr.reshape(len(fhe_arr), -1)
    flat_clear = clear_arr.reshape(len(clear_arr), -1)
    gaps = np.abs(flat_fhe - flat_clear).max(axis=1) if flat_fhe.size else np.zeros(0)
    other_class = np.argmax(flat_fhe, axis=1) != np.argmax(flat_clear, axis=1)
    bad = np.nonzero(other_class | ~(gaps <= atol))[0]
    if bad.size:
        listed = ", ".join(
            f"row {i}: FHE class {int(np.argmax(flat_fhe[i]))} vs clear"
            f" {int(np.argmax(flat_clear[i]))}, |gap| {gaps[i]:.3g}" for i in bad[:MAX_LISTED_ROWS])
        raise OutputMismatchError(
            f"{what}: FHE disagrees with the clear quantised model on {bad.size} of"
            f" {len(flat_fhe)} rows ({listed}{' …' if bad.size > MAX_LISTED_ROWS else ''});"
            " the endpoint is not computing this model: check that it serves the model.tar.gz"
            " the client encrypted for, and the concrete-ml versions on both sides")
    return Agreement(rows=len(flat_fhe), max_abs_gap=float(gaps.max()) if gaps.size else 0.0)
