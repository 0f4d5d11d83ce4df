"""The models measured side by side, and how much of each to run.

The headline case is the AWS sample's own: its zero-configuration job (the 784-input MNIST
NeuralNetClassifier, no scaler) on MNIST-shaped data. MNIST itself cannot be downloaded here,
so the benchmark uses ``prepare_data.py``'s stand-in (scikit-learn's digits upscaled to 28x28,
normalised like the sample): same shape, same network, same circuit size.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

HELD_OUT_FRACTION = 0.2
SPLIT_SEED = 0
MNIST_STAND_IN = "mnist_stand_in"  # not a scikit-learn loader: prepare_data.digits_stand_in


@dataclass(frozen=True)
class ModelCase:
    """One model of the benchmark.

    Attributes:
        name: Short id used in the JSON and on the command line.
        label: Human name (chart, docs tables).
        dataset: scikit-learn loader name (``load_breast_cancer``, ``load_digits``), or
            ``mnist_stand_in`` (MNIST-shaped rows from ``prepare_data.py``).
        hyperparameters: Training hyperparameters (``--hyperparameter KEY=VALUE``).
        reps: Repetitions of the single async query (end to end).
        limit_reps: Repetitions of the in-process limit (encrypt, run, decrypt).
        batch_rows: Rows of the throughput (P3) batch.
        batch_reps: Repetitions of that batch; 0 skips P3 for this model.
        key_sets: Key sets cached by the server when its RSS is read (1 = only the main one).
        unnamed_queries: Single-row requests of a client that names its keys by URI only
            (P4 for hash-less clients); 0 skips that measurement.
        peer_reps: Single queries against each of the peers' servers (P7); 0 skips P7.
        peer_sources: Which peers' key handling to measure (:data:`bench.peer.KEY_SOURCES`).
        tune_reps: Interleaved FHE runs of the default and the tuned circuit (P8); 0 skips P8.
        tune_hyperparameters: Added to ``hyperparameters`` for the tuned training.
    """

    name: str
    label: str
    dataset: str
    hyperparameters: Mapping[str, str] = field(default_factory=dict)
    reps: int = 5
    limit_reps: int = 5
    batch_rows: int = 32
    batch_reps: int = 1
    key_sets: int = 3
    unnamed_queries: int = 4
    peer_reps: int = 3
    peer_sources: tuple[str, ...] = ("disk", "ram")
    tune_reps: int = 5
    tune_hyperparameters: Mapping[str, str] = field(default_factory=lambda: {"tune": "true"})


# Decision tree: depth 4, 6 bits (the spec's measured case). NN: the reference configuration
# (the training defaults of NeuralNetClassifier), 10 repetitions for P1. One tree run takes
# ~0.8 s and one NN run ~1.1 s on 2 cores, so the 32-row batch is run once for the tree and
# skipped for the NN by default (``--batch-reps nn=1`` adds it).
CASES: dict[str, ModelCase] = {case.name: case for case in (
    # The sample's job: no hyperparameters. One image costs over a minute on 2 cores and its
    # evaluation keys are ~130 MB, hence a single repetition, one key set and one query per peer.
    # P8 trains it again with tune=true (accumulator rounding and p_error make it ~10x faster)
    # and times both circuits twice after a warm-up round. Its tuning budget is half a point:
    # with a 1-point budget the search kept a circuit 0.6 point below the best cross-validated
    # score that lost 1.0-1.4 points on the 288 held-out rows; with half a point it kept
    # approximate 6-bit rounding at p_error 0.1 on 4/2-bit weights/activations, 93.5 % held out
    # (simulated, mean of 5) against the default's 93.4 %, in 2 minutes of tuning on 2 cores.
    # The goal is <= 1 point held out. Opt-in: not in DEFAULT_MODELS.
    ModelCase("mnist", "MNIST NeuralNet 784-392-10, 4-bit (the sample's job; stand-in data)",
              MNIST_STAND_IN, {}, reps=1, limit_reps=1, batch_reps=0, key_sets=1,
              unnamed_queries=0, peer_reps=1, tune_reps=2,
              tune_hyperparameters={"tune": "true", "tune_budget": "0.5"}),
    ModelCase("logreg", "LogisticRegression (breast cancer)", "load_breast_cancer",
              {"model": "LogisticRegression"}, reps=10, limit_reps=20, batch_reps=3,
              key_sets=3),
    ModelCase("tree", "DecisionTree depth 4, 6 bits (breast cancer)", "load_breast_cancer",
              {"model": "DecisionTreeClassifier", "max_depth": "4", "n_bits": "6"},
              reps=5, batch_reps=1, key_sets=3),
    ModelCase("nn", "NeuralNet 2x4-bit (digits)", "load_digits",
              {"model": "NeuralNetClassifier", "scaler": "minmax"}, reps=10, limit_reps=10,
              batch_reps=0, key_sets=2),
)}


DEFAULT_MODELS: tuple[str, ...] = ("logreg", "tree", "nn")
"""What ``make bench`` measures without ``--models`` (a few minutes on 2 cores); ``mnist`` takes
about 30 minutes more (15 of them its P8: the tuned training and both circuits timed) and is
measured on request (``--models mnist`` or ``--models all``)."""


def quick(case: ModelCase) -> ModelCase:
    """The ``--quick`` variant: one repetition of everything, a 4-row batch once (if the case has
    one), one key set, 3 hash-less rows."""
    return replace(case, reps=1, limit_reps=1, batch_rows=4, batch_reps=min(case.batch_reps, 1),
                   key_sets=1, unnamed_queries=3, peer_reps=min(case.peer_reps, 1),
                   tune_reps=min(case.tune_reps, 1))


@dataclass(frozen=True)
class Split:
    """Training rows (uploaded for the training job) and held-out rows (the queries)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_held: np.ndarray
    y_held: np.ndarray
    feature_names: list[str]


def load_split(case: ModelCase) -> Split:
    """Split the case's dataset 80/20, stratified, with a fixed seed."""
    import sklearn.datasets
    from sklearn.model_selection import train_test_split

    if case.dataset == MNIST_STAND_IN:
        from prepare_data import digits_stand_in, prepare

        data = prepare(digits_stand_in(), test_size=HELD_OUT_FRACTION, seed=SPLIT_SEED)
        return Split(data.x_train, data.y_train, data.x_test, data.y_test, [])
    data = getattr(sklearn.datasets, case.dataset)()
    x_train, x_held, y_train, y_held = train_test_split(
        data.data, data.target, test_size=HELD_OUT_FRACTION, random_state=SPLIT_SEED,
        stratify=data.target)
    names = [str(n) for n in getattr(data, "feature_names", [])]
    return Split(x_train, y_train, x_held, y_held, names)
