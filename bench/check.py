"""The benchmark's correctness gate: FHE outputs must equal the clear quantised model's.

Two oracles, chosen by the circuit (its manifest's ``circuit.exact``):

* exact circuits (default ``p_error``, no approximate rounding): :func:`check_agreement`, every
  row equal to the clear quantised model's, class and probabilities (within float rounding);
* circuits that are not exact: :func:`check_statistical_agreement`, the FHE argmax equals the
  clear quantised model's on enough rows: at most the number of disagreements that a binomial
  with the disagreement rate measured at training time (on every held-out row, simulated)
  exceeds with probability under 0.1 %.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# FHE and the clear quantised model (fhe="disable") compute the same integers; dequantisation
# and the final sigmoid/softmax are float ops on identical inputs, so only rounding can differ.
PROBA_ATOL = 1e-6
MAX_LISTED_ROWS = 10
# The statistical oracle fails when the observed disagreements are this unlikely.
STATISTICAL_CONFIDENCE = 0.999


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


@dataclass(frozen=True)
class StatisticalAgreement:
    """Result of a passed statistical check.

    Attributes:
        rows: Rows compared.
        disagreements: Rows whose FHE argmax differs from the clear quantised argmax.
        allowed: The most disagreements the oracle accepts on that many rows.
        expected_rate: The disagreement rate measured at training time (floored, see below).
    """

    rows: int
    disagreements: int
    allowed: int
    expected_rate: float

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def allowed_disagreements(rows: int, measured_share: float | None, measured_rows: int) -> tuple[
        int, float]:
    """The oracle's limit: (most disagreements accepted on ``rows``, the rate it assumes).

    The rate is the measured disagreement rate, floored at one row of the measurement (a sample
    that saw no disagreement does not prove there are none).
    """
    from scipy.stats import binom

    share = 1.0 if measured_share is None else float(measured_share)
    rate = min(1.0, max(1.0 - share, 1.0 / max(measured_rows, 1)))
    return int(binom.ppf(STATISTICAL_CONFIDENCE, rows, rate)), rate


def check_statistical_agreement(fhe: Any, clear: Any, *, what: str,
                                measured_share: float | None,
                                measured_rows: int) -> StatisticalAgreement:
    """Compare the FHE argmax with the clear quantised argmax, allowing the measured error rate.

    Raises:
        OutputMismatchError: shapes differ, or more rows disagree than the oracle allows.
    """
    fhe_arr = np.asarray(fhe, dtype=np.float64)
    clear_arr = np.asarray(clear, dtype=np.float64)
    if fhe_arr.shape != clear_arr.shape:
        raise OutputMismatchError(
            f"{what}: FHE output shape {fhe_arr.shape} != clear quantised shape {clear_arr.shape}")
    fhe_class = np.argmax(fhe_arr.reshape(len(fhe_arr), -1), axis=1)
    clear_class = np.argmax(clear_arr.reshape(len(clear_arr), -1), axis=1)
    disagreements = int(np.sum(fhe_class != clear_class))
    allowed, rate = allowed_disagreements(len(fhe_class), measured_share, measured_rows)
    if disagreements > allowed:
        raise OutputMismatchError(
            f"{what}: the FHE class differs from the clear quantised model's on {disagreements}"
            f" of {len(fhe_class)} rows, more than the {allowed} a disagreement rate of"
            f" {rate:.3%} (measured at training time) allows at {STATISTICAL_CONFIDENCE:.1%}:"
            " the endpoint is not computing this model, or its p_error/rounding costs more"
            " accuracy than measured")
    return StatisticalAgreement(len(fhe_class), disagreements, allowed, rate)


def check_circuit_agreement(fhe: Any, clear: Any, *, what: str,
                            circuit: Mapping[str, Any]) -> dict[str, Any]:
    """The oracle of a circuit as its manifest records it (exact unless it says otherwise)."""
    if circuit.get("exact", True):
        return {"oracle": "exact", **check_agreement(fhe, clear, what=what).as_dict()}
    simulated = (circuit.get("agreement") or {}).get("simulated") or {}
    result = check_statistical_agreement(fhe, clear, what=what,
                                         measured_share=simulated.get("share"),
                                         measured_rows=int(simulated.get("rows") or 1))
    return {"oracle": "statistical", **result.as_dict()}
