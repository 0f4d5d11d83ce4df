"""``make demo``: the whole encrypted job on this machine, through the kit's real scripts.

1. start an embedded S3 (:class:`local_mode.s3_server.LocalS3Server`);
2. upload the training rows as CSV (a clinic's records; held-out "patients" stay local);
3. ``start_training.py --local`` trains, quantises, compiles and writes model.tar.gz to S3;
4. ``deploy_endpoint.py --local`` serves it behind a local InvokeEndpointAsync runtime;
5. :class:`client.EncryptedPredictor` encrypts the patients, the endpoint predicts on
   ciphertexts, the client decrypts;
6. the encrypted predictions are compared with the clear quantised model (must agree 100 %)
   and with a float scikit-learn model, and everything is torn down (also on Ctrl-C).

Steps 1-4 are :func:`local_mode.stack.local_stack`, reusable from notebooks and tests.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from client.errors import EncryptedInferenceError
from common.process import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    interrupt_on_sigterm,
    run_main,
)
from local_mode.stack import StackError, local_stack

logger = logging.getLogger("local_mode.demo")

CASES: dict[str, dict[str, Any]] = {
    "breast-cancer": {
        "loader": "load_breast_cancer",
        "hyperparameters": {"model": "LogisticRegression"},
        "n_rows": 20,
        "what": "patients",
    },
    "digits": {
        "loader": "load_digits",
        "hyperparameters": {"model": "NeuralNetClassifier", "scaler": "minmax"},
        "n_rows": 3,
        "what": "images",
    },
}


# -- the demo ------------------------------------------------------------------------------
@dataclass(frozen=True)
class DemoReport:
    """What the demo measured."""

    n_rows: int
    fhe_accuracy: float
    clear_accuracy: float
    float_accuracy: float
    agreement: float
    max_proba_gap: float
    evaluation_keys_bytes: int
    timings: dict[str, float | int]
    training_metrics: dict[str, Any]

    @property
    def ok(self) -> bool:
        """FHE and clear quantised predictions agree on every row."""
        return self.agreement == 1.0


def load_case(
    case: str, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Split a scikit-learn dataset: ``x_train, x_held, y_train, y_held, feature_names``."""
    import sklearn.datasets
    from sklearn.model_selection import train_test_split

    data = getattr(sklearn.datasets, CASES[case]["loader"])()
    names = [str(n) for n in getattr(data, "feature_names", [])]
    x_train, x_held, y_train, y_held = train_test_split(
        data.data, data.target, test_size=0.2, random_state=seed, stratify=data.target
    )
    return x_train, x_held, y_train, y_held, names


def run_demo(
    *,
    case: str = "breast-cancer",
    n_rows: int | None = None,
    batch_size: int = 8,
    work_dir: Path | None = None,
    keep: bool = False,
    hyperparameters: Mapping[str, Any] | None = None,
    timeout: float = 600.0,
    progress: bool = True,
) -> DemoReport:
    """Run the whole flow and return what it measured (see the module docstring)."""
    from sklearn.linear_model import LogisticRegression

    x_train, x_held, y_train, y_held, names = load_case(case)
    n = min(n_rows or CASES[case]["n_rows"], len(x_held))
    x_rows, y_rows = x_held[:n], y_held[:n]
    params = {**CASES[case]["hyperparameters"], **(hyperparameters or {})}
    with local_stack(
        x_train, y_train, hyperparameters=params, feature_names=names, work_dir=work_dir, keep=keep
    ) as stack:
        with stack.predictor(batch_size=batch_size, timeout=timeout, progress=progress) as model:
            proba = model.predict_proba(x_rows)
            labels = np.asarray(model.model.manifest.classes or range(proba.shape[1]))
            fhe_pred = labels[np.argmax(proba, axis=1)]
            scaler = model.model.manifest.scaler
            keys_bytes = model.ensure_keys().evaluation_keys_bytes
            timings = model.timings.as_dict()
        reference, metrics = stack.reference()
    x_scaled = scaler.transform(x_rows)
    clear_pred = reference.predict(x_scaled, fhe="disable")
    clear_proba = reference.predict_proba(x_scaled, fhe="disable")
    float_model = LogisticRegression(max_iter=5000).fit(scaler.transform(x_train), y_train)
    return DemoReport(
        n_rows=n,
        fhe_accuracy=float(np.mean(fhe_pred == y_rows)),
        clear_accuracy=float(np.mean(clear_pred == y_rows)),
        float_accuracy=float(float_model.score(x_scaled, y_rows)),
        agreement=float(np.mean(fhe_pred == clear_pred)),
        max_proba_gap=float(np.max(np.abs(proba - clear_proba))),
        evaluation_keys_bytes=keys_bytes,
        timings=timings,
        training_metrics=metrics,
    )


def format_report(report: DemoReport, *, case: str) -> str:
    """Human-readable summary of a :class:`DemoReport`."""
    what = CASES[case]["what"]
    t = report.timings
    stages = "  ".join(
        f"{s} {t[s]:.2f}s"
        for s in ("keygen", "encrypt", "upload", "invoke", "wait", "download", "decrypt", "cleanup")
    )
    per_row = t["wait"] / max(report.n_rows, 1)
    lines = [
        f"== encrypted inference on {report.n_rows} held-out {what} ({case}) ==",
        f"accuracy, encrypted (FHE) predictions : {report.fhe_accuracy:.1%}",
        f"accuracy, clear quantised model       : {report.clear_accuracy:.1%}",
        f"accuracy, float scikit-learn LogisticRegression: {report.float_accuracy:.1%}",
        f"agreement FHE vs clear quantised      : {report.agreement:.1%}"
        f" (max |Δ probability| {report.max_proba_gap:.2g})",
        f"evaluation keys                       : {_size(report.evaluation_keys_bytes)}"
        " (uploaded once; the secret key never left this machine)",
        f"latency breakdown                     : {stages}",
        f"server wait per row                   : {per_row:.2f}s"
        f" ({t['requests']} request(s), {_size(int(t['bytes_uploaded']))} up,"
        f" {_size(int(t['bytes_downloaded']))} down)",
        f"training job report                   : {_metrics_line(report.training_metrics)}",
    ]
    return "\n".join(lines)


def _size(n_bytes: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes} B"


def _metrics_line(metrics: Mapping[str, Any]) -> str:
    shown = {
        k: metrics[k]
        for k in ("model", "metric", "float_sklearn", "clear_quantised", "n_train", "n_test")
        if k in metrics
    }
    return json.dumps(shown, default=str)


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"must look like KEY=VALUE, got {item!r}")
    return key, value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m local_mode.demo",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--case", choices=sorted(CASES), default="breast-cancer")
    parser.add_argument("--n-patients", "--n-rows", dest="n_rows", type=int, default=None,
                        help="held-out rows to predict encrypted (default: 20, digits: 3)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--hyperparameter", type=_key_value, action="append", default=[],
                        help="extra training hyperparameter KEY=VALUE; repeatable")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="leave the work dir in place")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``make demo``: 0 when FHE agrees with the clear model on every row."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    interrupt_on_sigterm()
    try:
        report = run_demo(case=args.case, n_rows=args.n_rows, batch_size=args.batch_size,
                          work_dir=args.work_dir, keep=args.keep, timeout=args.timeout,
                          hyperparameters=dict(args.hyperparameter))
    except KeyboardInterrupt:
        print("interrupted: local stack torn down", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (StackError, EncryptedInferenceError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(format_report(report, case=args.case))
    if not report.ok:
        print(f"FAIL: encrypted predictions disagree with the clear quantised model on"
              f" {1 - report.agreement:.1%} of rows", file=sys.stderr)
        return EXIT_FAILED
    print("OK: encrypted predictions match the clear quantised model on every row")
    return EXIT_OK


if __name__ == "__main__":
    run_main(main)
