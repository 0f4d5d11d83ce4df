"""The circuit knobs: accumulator rounding and the error probability of each bootstrap.

Both are compile-time only (no retraining):

* ``rounding_bits`` / ``rounding_method`` (neural networks): every accumulator is rounded to
  ``rounding_bits`` before its activation's programmable bootstrap (PBS), so the PBS is that many
  bits wide instead of the accumulator's full width. ``exact`` rounding is computed exactly (the
  clear quantised model predicts the FHE output bit for bit); ``approximate`` is much cheaper
  but its rounding may be off by one in FHE.
* ``p_error``: the probability that one PBS result is off by one. concrete-ml's default (about
  2^-40) makes the circuit exact in practice; a raised value lets the compiler pick smaller,
  faster cryptographic parameters, and FHE results are then no longer bit for bit those of the
  clear model.

``fhe="simulate"`` models both, so it is the accuracy of the circuit as it will run.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np

from training.models import P_ERROR, ROUNDING_APPROXIMATE, ROUNDING_BITS, ROUNDING_METHOD

# Held-out rows run in real FHE at training time to measure the FHE-vs-clear agreement of a
# circuit that is not exact (each costs one FHE run: ~0.4 s for the digits network, ~6 s for the
# tuned 784-input one, on 2 cores).
AGREEMENT_FHE_ROWS = 8
# The rounding each network's quantised module was last rebuilt with (absent: as fitted, none).
_ROUNDED: weakref.WeakKeyDictionary[Any, dict[str, Any] | None] = weakref.WeakKeyDictionary()
AGREEMENT_METHOD = (
    "predictions of the compiled circuit compared with the clear quantised model's"
    " (fhe='disable') on the job's held-out rows: 'simulated' on every held-out row"
    f" (fhe='simulate'), 'fhe' executed in FHE on the first {AGREEMENT_FHE_ROWS} of them;"
    " nothing is run for an exact circuit, which agrees by construction")


def rounding_threshold(values: Mapping[str, Any]) -> dict[str, Any] | None:
    """concrete-ml's ``rounding_threshold_bits`` for the knob values (None: no rounding)."""
    bits = values.get(ROUNDING_BITS)
    if bits is None:
        return None
    return {"n_bits": int(bits), "method": values.get(ROUNDING_METHOD) or "exact"}


def is_exact(values: Mapping[str, Any]) -> bool:
    """The circuit computes exactly what the clear quantised model computes (default p_error, no
    approximate rounding)."""
    rounding = rounding_threshold(values)
    return values.get(P_ERROR) is None and (
        rounding is None or rounding["method"] != ROUNDING_APPROXIMATE)


def describe(values: Mapping[str, Any]) -> dict[str, Any]:
    """The circuit knobs as recorded in metrics.json and the manifest."""
    rounding = rounding_threshold(values)
    return {"rounding_bits": None if rounding is None else rounding["n_bits"],
            "rounding_method": None if rounding is None else rounding["method"],
            "p_error": values.get(P_ERROR), "exact": is_exact(values)}


def apply_rounding(model: Any, x: np.ndarray, values: Mapping[str, Any]) -> None:
    """Re-import a fitted NeuralNetClassifier's quantised network with the knobs' rounding.

    The sklearn estimator builds its quantised module without rounding; this rebuilds it from
    the same trained network (its ONNX export) with ``rounding_threshold_bits``, calibrating
    the rounding on ``x``, as ``compile_brevitas_qat_model`` does. No-op for other models, and
    for a network that already holds that rounding (a fitted network holds none: the sample's
    default circuit is the estimator's own, untouched).
    """
    rounding = rounding_threshold(values)
    if not type(model).__name__.startswith("NeuralNet") or _ROUNDED.get(model) == rounding:
        return
    import torch
    from concrete.ml.quantization.post_training import PostTrainingQATImporter
    from concrete.ml.torch.numpy_module import NumpyModule

    numpy_model = NumpyModule(model.onnx_model_, torch.tensor(x[[0]]))
    importer = PostTrainingQATImporter(model.base_module.n_a_bits, numpy_model,
                                       rounding_threshold_bits=rounding_threshold(values))
    model.quantized_module_ = importer.quantize_module(x)
    _ROUNDED[model] = rounding


def compile_circuit(model: Any, x: np.ndarray, values: Mapping[str, Any]) -> Any:
    """Apply the rounding (networks) and compile with the knobs' ``p_error``; return the circuit."""
    apply_rounding(model, x, values)
    return model.compile(x, p_error=values.get(P_ERROR))


def agreement(model: Any, x_held: np.ndarray, values: Mapping[str, Any], *,
              fhe_rows: int = AGREEMENT_FHE_ROWS) -> dict[str, Any]:
    """How often the compiled circuit's predictions equal the clear quantised model's.

    Exact circuits agree by construction (nothing is run). Otherwise: ``simulated`` compares
    ``fhe="simulate"`` with ``fhe="disable"`` on every held-out row; ``fhe`` executes the real
    circuit (fresh keys) on the first ``fhe_rows`` of them.
    """
    if is_exact(values) or len(x_held) == 0:
        return {"exact": is_exact(values), "simulated": None, "fhe": None}
    clear = _labels(model.predict(x_held, fhe="disable"))
    simulated = _labels(model.predict(x_held, fhe="simulate"))
    rows = x_held[:fhe_rows]
    model.fhe_circuit.keygen()
    executed = _labels(model.predict(rows, fhe="execute"))
    return {
        "exact": False,
        "simulated": _share(simulated, clear),
        "fhe": _share(executed, clear[: len(rows)]),
        "fhe_vs_simulated": _share(executed, simulated[: len(rows)]),
    }


def _labels(predicted: Any) -> np.ndarray:
    array = np.asarray(predicted)
    return array.reshape(len(array), -1)


def _share(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Rows whose predictions are equal (within 1e-6 for regressors' values)."""
    same = np.all(np.isclose(a, b, rtol=0, atol=1e-6), axis=1)
    return {"rows": len(same), "equal": int(same.sum()),
            "share": float(same.mean()) if len(same) else None}
