"""End to end: the training script in a subprocess, then real FHE with the saved artefact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.artifact import (
    CLIENT_ZIP,
    MANIFEST_NAME,
    SERVER_ZIP,
    NoScaler,
    file_sha256,
    read_manifest,
)
from tests.training.conftest import LABEL_COLUMN, run_script, sagemaker_env
from training.training_script import METRICS_NAME, REFERENCE_MODEL_NAME, do_training, model_fn

N_ROWS = 3


def _fhe_predict(model_dir: Path, key_dir: Path, scaled: np.ndarray) -> np.ndarray:
    """Encrypt each row with client.zip, run server.zip on ciphertexts, decrypt."""
    from concrete.ml.deployment import FHEModelClient, FHEModelServer

    client = FHEModelClient(str(model_dir), key_dir=str(key_dir))
    client.generate_private_and_evaluation_keys()
    keys = client.get_serialized_evaluation_keys()
    server = FHEModelServer(str(model_dir))
    server.load()
    rows = []
    for row in scaled:
        encrypted = client.quantize_encrypt_serialize(row.reshape(1, -1))
        rows.append(client.deserialize_decrypt_dequantize(server.run(encrypted, keys))[0])
    return np.asarray(rows)


def _reference(output_data: Path) -> object:
    from concrete.ml.common.serialization.loaders import loads

    return loads((output_data / REFERENCE_MODEL_NAME).read_text())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("channel_fixture", "args", "model_class"),
    [
        ("npy_channel", ["--model", "LogisticRegression", "--n_bits", "8"], "LogisticRegression"),
        ("csv_channel", ["--model", "DecisionTreeClassifier", "--max_depth", "2", "--n_bits", "3",
                         "--label_column", LABEL_COLUMN], "DecisionTreeClassifier"),
    ],
)
def test_subprocess_training_then_fhe_equals_clear_quantised(
    request: pytest.FixtureRequest, tmp_path: Path, breast_cancer: tuple[np.ndarray, np.ndarray],
    channel_fixture: str, args: list[str], model_class: str,
) -> None:
    channel = request.getfixturevalue(channel_fixture)
    root = tmp_path / "opt_ml"
    completed = run_script(args, sagemaker_env(root, channel))
    assert completed.returncode == 0, completed.stderr[-3000:]
    model_dir, output_data = root / "model", root / "output" / "data"

    assert sorted(p.name for p in model_dir.iterdir()) == [CLIENT_ZIP, MANIFEST_NAME, SERVER_ZIP]
    manifest = read_manifest(model_dir)
    assert manifest.model_class == model_class
    assert manifest.task == "classification"
    assert manifest.n_features == 30
    assert manifest.classes == (0, 1)
    assert manifest.fingerprints == {name: file_sha256(model_dir / name)
                                     for name in (CLIENT_ZIP, SERVER_ZIP)}
    assert not (root / "output" / "failure").exists()

    metrics = json.loads((output_data / METRICS_NAME).read_text())
    assert metrics["metric"] == "accuracy"
    assert metrics["n_train"] + metrics["n_test"] == 569
    assert 0.5 < metrics["clear_quantised"] <= 1.0
    assert 0.5 < metrics["float_sklearn"] <= 1.0

    scaled = manifest.scaler.transform(breast_cancer[0][:N_ROWS])
    expected = _reference(output_data).predict_proba(scaled, fhe="disable")
    decrypted = _fhe_predict(model_dir, tmp_path / "keys", scaled)
    np.testing.assert_allclose(decrypted, expected, rtol=0, atol=1e-9)


def test_hyperparameters_reach_the_model_and_manifest(npy_channel: Path, tmp_path: Path) -> None:
    result = do_training(tmp_path / "model", npy_channel,
                         hyperparameters={"model": "LogisticRegression", "n_bits": "5",
                                          "C": "0.5", "test_size": "0.3", "random_state": "7"})
    reference = _reference(tmp_path / "output" / "data")
    assert reference.n_bits == 5
    assert reference.C == 0.5
    assert result.manifest.hyperparameters["test_size"] == 0.3
    assert result.metrics["n_test"] == 171  # ceil(0.3 * 569)
    assert result.paths.output_data_dir == tmp_path / "output" / "data"


def test_rerun_into_the_same_model_dir_replaces_the_artefact(npy_channel: Path,
                                                             tmp_path: Path) -> None:
    first = do_training(tmp_path / "model", npy_channel,
                        hyperparameters={"model": "LogisticRegression", "n_bits": "6"})
    second = do_training(tmp_path / "model", npy_channel,
                         hyperparameters={"model": "LogisticRegression", "n_bits": "7"})
    assert read_manifest(tmp_path / "model") == second.manifest
    assert first.manifest.fingerprints != second.manifest.fingerprints


def test_scaler_none_and_test_size_zero_train_like_the_sample(npy_channel: Path, tmp_path: Path,
                                                              breast_cancer) -> None:
    result = do_training(tmp_path / "model", npy_channel,
                         hyperparameters={"model": "LogisticRegression", "scaler": "none",
                                          "test_size": "0"})
    assert result.manifest.scaler == NoScaler(30)
    doc = json.loads((tmp_path / "model" / MANIFEST_NAME).read_text())
    assert doc["scaler"] == {"kind": "none", "n_features": 30}
    assert (result.metrics["n_train"], result.metrics["n_test"]) == (569, 0)
    assert result.metrics["clear_quantised"] is None
    # The model was fitted on the rows as given: its input quantiser spans the raw feature range
    # (breast-cancer features go up to 4254), not the [-1, 1] of a min-max scaler.
    reference = _reference(tmp_path / "output" / "data")
    [quantiser] = reference.input_quantizers
    assert (quantiser.rmin, quantiser.rmax) == (breast_cancer[0].min(), breast_cancer[0].max())


def test_model_fn_says_serving_is_the_inference_containers_job(tmp_path: Path) -> None:
    with pytest.raises(NotImplementedError, match=r"serves models with the inference container"):
        model_fn(tmp_path / "model")


@pytest.mark.slow
def test_neural_net_on_digits_compiles_with_the_reference_config(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    channel = tmp_path / "digits"
    channel.mkdir()
    np.save(channel / "digits_training_features.npy", x[:300].reshape(-1, 8, 8))  # images
    np.save(channel / "digits_training_labels.npy", y[:300])
    result = do_training(tmp_path / "model", channel,
                         hyperparameters={"model": "NeuralNetClassifier", "max_epochs": "1"})
    reference = _reference(tmp_path / "output" / "data")
    assert result.manifest.n_features == 64
    assert result.manifest.classes == tuple(range(10))
    assert (reference.module__n_layers, reference.module__n_w_bits, reference.module__n_a_bits,
            reference.module__n_hidden_neurons_multiplier) == (2, 4, 4, 0.5)
    assert reference.module__activation_function.__name__ == "ReLU"
    assert result.metrics["n_test"] == 60
    scaled = result.manifest.scaler.transform(x[300:302])
    assert reference.predict_proba(scaled, fhe="disable").shape == (2, 10)


def test_regressor_on_csv(tmp_path: Path) -> None:
    import pandas as pd
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    channel = tmp_path / "diabetes"
    channel.mkdir()
    frame = pd.DataFrame(x, columns=[f"c{i}" for i in range(10)])
    frame["label"] = y
    frame.to_csv(channel / "train.csv", index=False)
    result = do_training(tmp_path / "model", channel,
                         hyperparameters={"model": "LinearRegression"})
    assert result.manifest.task == "regression"
    assert result.manifest.classes == ()
    assert result.manifest.feature_names == tuple(f"c{i}" for i in range(10))
    assert result.metrics["metric"] == "r2"
    assert result.metrics["clear_quantised"] > 0.2
