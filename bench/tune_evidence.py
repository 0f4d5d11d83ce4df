"""``python -m bench.tune_evidence``: which cost ranks ``tune=true`` candidates like their FHE time?

For every candidate of a benchmark case's tuning grid (:func:`training.tuning.candidate_configs`)
it fits and compiles the model on the case's training rows, reads concrete's cost figures
(``circuit.complexity``, the programmable-bootstrap count), times what ``tune_rank=measured``
times (:func:`training.tuning.time_fhe_run`: one warm-up row, the median of 3) and then a
longer reference run (the median of ``--reps`` more rows). It writes how well each predictor
ranks the candidates like the reference (Spearman's rho and Kendall's tau, 1.0 = the same
order) to ``bench/results/tune-evidence.json``.

Flags: ``--models tree,nn`` ``--reps N`` ``--out PATH``. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench import machine
from bench.cases import CASES, ModelCase, load_split
from common.files import atomic_write_bytes

logger = logging.getLogger("bench.tune_evidence")

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "tune-evidence.json"
PREDICTORS = ("complexity", "pbs_count", "measured_quick")


def measure_case(case: ModelCase, *, reps: int) -> dict[str, Any]:
    """Every candidate of ``case``'s grid: cost figures, the quick timing, the reference timing."""
    from common.artifact import Scaler
    from training.models import build_model, resolve_hyperparameters
    from training.tuning import MEASURED_ROWS, candidate_configs, time_fhe_run, with_config

    split = load_split(case)
    scaler = Scaler.fit(split.x_train)
    x_train, x_held = scaler.transform(split.x_train), scaler.transform(split.x_held)
    resolved = resolve_hyperparameters({**case.hyperparameters, "tune": "true"})
    rows = []
    for config in candidate_configs(resolved):
        logger.info("[%s] %s", case.name, config)
        model = build_model(with_config(resolved, config))
        model.fit(x_train, split.y_train)
        circuit = model.compile(x_train)
        quick = time_fhe_run(model, x_held[: MEASURED_ROWS + 1])
        reference = time_fhe_run(model, x_held[MEASURED_ROWS + 1: MEASURED_ROWS + 2 + reps])
        rows.append({"config": config, "complexity": float(circuit.complexity),
                     "pbs_count": int(circuit.statistics["programmable_bootstrap_count"]),
                     "measured_quick": quick, "reference_seconds": reference,
                     "accuracy": float(np.mean(np.asarray(model.predict(x_held, fhe="disable"))
                                               .ravel() == split.y_held))})
    return {"candidates": rows, "agreement": agreement(rows)}


def agreement(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Spearman's rho and Kendall's tau of each predictor against the reference seconds."""
    from scipy.stats import kendalltau, spearmanr

    truth = [r["reference_seconds"] for r in rows]
    return {name: {"spearman": float(spearmanr([r[name] for r in rows], truth).statistic),
                   "kendall": float(kendalltau([r[name] for r in rows], truth).statistic)}
            for name in PREDICTORS}


def main(argv: Sequence[str] | None = None) -> int:
    """Measure the cases, write the JSON, print the agreement."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m bench.tune_evidence",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tree,nn")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"--models: unknown {', '.join(unknown)}; choose from {', '.join(CASES)}")
    started = time.perf_counter()
    doc = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine.describe(),
           "reps": args.reps, "models": {n: measure_case(CASES[n], reps=args.reps) for n in names}}
    doc["machine"]["loadavg_end"] = machine.loadavg()
    doc["seconds"] = time.perf_counter() - started
    atomic_write_bytes(args.out, json.dumps(doc, indent=2).encode() + b"\n")
    for name, result in doc["models"].items():
        for predictor, values in result["agreement"].items():
            print(f"{name:5s} {predictor:15s} spearman {values['spearman']:.3f}"
                  f" kendall {values['kendall']:.3f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    from common.process import run_main

    run_main(main)
