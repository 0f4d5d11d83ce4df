"""prepare_data.py: the sample's four MNIST arrays, normalised like it, uploaded with SSE."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import numpy as np
import pytest

import prepare_data
from prepare_data import (
    N_FEATURES,
    PrepareError,
    SourceUnavailable,
    digits_stand_in,
    load_images,
    main,
    normalise,
    prepare,
    upload_training_pair,
    write_arrays,
)

NAMES = ["testing_data/mnist_testing_features.npy", "testing_data/mnist_testing_labels.npy",
         "training_data/mnist_training_features.npy", "training_data/mnist_training_labels.npy"]


def _written(out_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*.npy"))


def test_normalisation_is_the_samples() -> None:
    # (x / 255 - 0.1307) / 0.3081 rounded to 4 decimals, worked out by hand.
    np.testing.assert_array_equal(normalise(np.array([[0.0, 255.0, 127.5]])),
                                  [[-0.4242, 2.8215, 1.1986]])


def test_digits_stand_in_is_mnist_shaped() -> None:
    images = digits_stand_in()
    assert images.pixels.shape == (1797, N_FEATURES)
    assert images.labels.dtype == np.int64 and set(images.labels) == set(range(10))
    frames = images.pixels.reshape(-1, 28, 28)
    assert frames[:, :4, :].max() == 0 and frames[:, 24:, :].max() == 0  # a 20x20 box, centred
    assert frames[:, :, :4].max() == 0 and frames[:, :, 24:].max() == 0
    assert images.pixels.min() >= 0.0 and images.pixels.max() <= 255.0
    from scipy import ndimage
    from sklearn.datasets import load_digits

    # Each digit survives the upscale: shrunk back to 8x8, every image matches its original.
    originals = load_digits().images * 255 / 16
    for frame, original in zip(frames[:, 4:24, 4:24], originals, strict=True):
        back = ndimage.zoom(frame, 8 / 20, order=1)
        assert np.corrcoef(back.ravel(), original.ravel())[0, 1] > 0.95


def test_command_writes_the_four_files_split_like_the_sample(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]
                                                             ) -> None:
    assert main(["--source", "digits", "--out-dir", str(tmp_path), "--max-rows", "300"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["train_rows"], summary["test_rows"], summary["features"]) == (240, 60, 784)
    assert _written(tmp_path) == NAMES
    x_train = np.load(tmp_path / "training_data" / "mnist_training_features.npy")
    y_test = np.load(tmp_path / "testing_data" / "mnist_testing_labels.npy")
    assert x_train.shape == (240, 784) and x_train.dtype == np.float64
    assert y_test.shape == (60,) and y_test.dtype == np.int64
    np.testing.assert_array_equal(x_train, x_train.round(4))
    assert x_train.min() == -0.4242 and x_train.max() == 2.8215


def test_keras_npz_is_rejoined_in_openml_order_and_split_with_the_samples_seed(
        tmp_path: Path) -> None:
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(50, 28, 28)).astype(np.uint8)
    y = rng.integers(0, 10, size=50)
    np.savez(tmp_path / "mnist.npz", x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:])
    data = prepare(load_images(str(tmp_path / "mnist.npz")), test_size=10)
    # The sample: train_test_split(features, test_size=10000, random_state=0) on openml's rows.
    x_train, x_test, y_train, y_test = train_test_split(
        normalise(x.reshape(50, -1)), y, test_size=10, random_state=0)
    np.testing.assert_array_equal(data.x_train, x_train)
    np.testing.assert_array_equal(data.x_test, x_test)
    np.testing.assert_array_equal(data.y_train, y_train)
    np.testing.assert_array_equal(data.y_test, y_test)


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: np.savez(p / "m.npz", x=np.zeros((3, 8, 8)), y=np.zeros(3)),
     r"images have \(64,\) values each, MNIST has 784"),
    (lambda p: np.savez(p / "m.npz", x=np.full((3, 784), 2.5) / 255 - 1, y=np.zeros(3)),
     r"pixels must be raw values between 0 and 255"),
    (lambda p: np.savez(p / "m.npz", images=np.zeros((3, 784))),
     r"holds arrays \['images'\]: expected x_train"),
    (lambda p: (p / "m.csv").write_text("a,b\n1,2\n"), r"no label column: name it one of"),
    (lambda p: (p / "m.txt").write_text("x"), r"give a \.npz or \.csv file"),
])
def test_bad_local_files_say_what_is_wrong(tmp_path: Path, make, message: str) -> None:
    make(tmp_path)
    [path] = [p for p in tmp_path.iterdir()]
    with pytest.raises(PrepareError, match=message):
        load_images(str(path))


def test_openml_unreachable_names_the_alternatives(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str],
                                                   tmp_path: Path) -> None:
    def offline(*args: object, **kwargs: object) -> None:  # this machine has no openml access
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr("sklearn.datasets.fetch_openml", offline)
    with pytest.raises(SourceUnavailable, match=r"--source digits \(a stand-in"):
        load_images("openml")
    assert main(["--out-dir", str(tmp_path)]) == 1
    assert "cannot fetch mnist_784 from openml" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_upload_puts_the_training_pair_with_sse_and_refuses_strangers(
        s3_client, bucket: str, tmp_path: Path) -> None:
    write_arrays(prepare(digits_stand_in(), max_rows=50), tmp_path)
    s3_client.put_object(Bucket=bucket, Key="MNIST/old_features.npy", Body=b"stale")
    with pytest.raises(PrepareError, match=r"already holds 1 other object\(s\) "
                                           r"\(MNIST/old_features.npy\).*--replace"):
        upload_training_pair(s3_client, tmp_path, f"s3://{bucket}/MNIST")
    uris = upload_training_pair(s3_client, tmp_path, f"s3://{bucket}/MNIST/", replace=True)
    assert uris == [f"s3://{bucket}/MNIST/mnist_training_features.npy",
                    f"s3://{bucket}/MNIST/mnist_training_labels.npy"]
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted(keys) == ["MNIST/mnist_training_features.npy", "MNIST/mnist_training_labels.npy"]
    for key in keys:
        head = s3_client.head_object(Bucket=bucket, Key=key)
        assert head["ServerSideEncryption"] == "AES256"
        local = tmp_path / "training_data" / key.split("/")[-1]
        assert s3_client.get_object(Bucket=bucket, Key=key)["Body"].read() == local.read_bytes()
    # Uploading again over its own two objects needs no --replace.
    upload_training_pair(s3_client, tmp_path, f"s3://{bucket}/MNIST")


def test_bad_upload_prefix_is_a_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    code = main(["--source", "digits", "--max-rows", "20", "--out-dir", str(tmp_path),
                 "--upload", "bucket/no-scheme"])
    assert code == 2
    assert "'--upload' must look like 's3://bucket/prefix'" in capsys.readouterr().err


def test_too_few_rows_for_the_split() -> None:
    with pytest.raises(PrepareError, match=r"cannot hold out 10000 of 20 rows"):
        prepare(prepare_data.digits_stand_in(), max_rows=20, test_size=10000)
