"""Prepare MNIST-shaped training data the way the AWS sample's setup step does, and upload it.

Writes the sample's four arrays (784 features per row, normalised like the sample: ``x / 255``,
then ``(x - 0.1307) / 0.3081``, rounded to 4 decimals; labels int64)::

    <out-dir>/training_data/mnist_training_features.npy   mnist_training_labels.npy
    <out-dir>/testing_data/mnist_testing_features.npy     mnist_testing_labels.npy

and, with ``--upload s3://bucket/prefix``, puts the training pair under that prefix with
server-side encryption (SSE-S3), ready for ``start_training.py --train s3://bucket/prefix/``.

Sources (``--source``):

* ``openml`` (default): scikit-learn's ``fetch_openml("mnist_784")``, where it is reachable;
* a local file: ``.npz`` (Keras' ``mnist.npz`` with ``x_train``/``y_train``/``x_test``/
  ``y_test``, or arrays ``x``/``y``) or ``.csv`` (784 pixel columns and a ``class`` or
  ``label`` column), pixels 0-255;
* ``digits``: a stand-in of the same shape made on this machine from scikit-learn's bundled
  8x8 digits (1797 images), upscaled to a 20x20 box centred in 28x28 like MNIST's digits.

Train and test rows are split with ``train_test_split(random_state=0)``, 10000 test rows as in
the sample (20 % for sets under 20000 rows), after an optional random subsample
(``--max-rows``). Exit codes: 0 ok, 2 bad input or settings, 1 AWS or network failure.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.files import atomic_write_bytes
from common.process import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, run_main
from common.s3_access import SSE
from common.s3_location import S3LocationError, parse_s3_prefix

logger = logging.getLogger("prepare_data")

SOURCE_OPENML = "openml"
SOURCE_DIGITS = "digits"
OPENML_NAME = "mnist_784"
SIDE = 28
BOX = 20  # MNIST centres each digit in a 20x20 box of the 28x28 image
N_FEATURES = SIDE * SIDE
MAX_PIXEL = 255.0
MEAN = 0.1307
STD = 0.3081
DECIMALS = 4
SAMPLE_TEST_ROWS = 10000
SMALL_SET_TEST_FRACTION = 0.2
SPLIT_SEED = 0
TRAINING_DIR = "training_data"
TESTING_DIR = "testing_data"
TRAINING_FEATURES = "mnist_training_features.npy"
TRAINING_LABELS = "mnist_training_labels.npy"
TESTING_FEATURES = "mnist_testing_features.npy"
TESTING_LABELS = "mnist_testing_labels.npy"
LABEL_COLUMNS = ("class", "label")


class PrepareError(ValueError):
    """The source or the settings cannot give MNIST-shaped data; the message says the fix."""


class SourceUnavailable(RuntimeError):
    """The source could not be fetched (network) or S3 refused the upload."""


@dataclass(frozen=True)
class Images:
    """Raw images of one source: pixels 0-255 as (rows, 784) float64, labels int64."""

    pixels: np.ndarray
    labels: np.ndarray
    source: str


@dataclass(frozen=True)
class PreparedData:
    """The four arrays written, normalised."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def files(self, out_dir: Path) -> dict[Path, np.ndarray]:
        """Where each array goes, with the sample's names."""
        return {
            out_dir / TRAINING_DIR / TRAINING_FEATURES: self.x_train,
            out_dir / TRAINING_DIR / TRAINING_LABELS: self.y_train,
            out_dir / TESTING_DIR / TESTING_FEATURES: self.x_test,
            out_dir / TESTING_DIR / TESTING_LABELS: self.y_test,
        }


def normalise(pixels: np.ndarray) -> np.ndarray:
    """The sample's normalisation: ``round((x / 255 - 0.1307) / 0.3081, 4)``."""
    return ((np.asarray(pixels, dtype=np.float64) / MAX_PIXEL - MEAN) / STD).round(DECIMALS)


def digits_stand_in() -> Images:
    """MNIST-shaped images from scikit-learn's bundled digits (no download).

    Each 8x8 image (values 0-16) is scaled to 0-255, upscaled bilinearly to 20x20 and centred in
    a 28x28 frame, as MNIST centres its digits in a 20x20 box.
    """
    from scipy import ndimage
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images * (MAX_PIXEL / 16.0)
    frames = np.zeros((len(images), SIDE, SIDE))
    start = (SIDE - BOX) // 2
    for index, image in enumerate(images):
        frames[index, start:start + BOX, start:start + BOX] = ndimage.zoom(
            image, BOX / image.shape[0], order=1)
    pixels = np.clip(frames, 0.0, MAX_PIXEL).reshape(len(images), N_FEATURES)
    return Images(pixels, digits.target.astype(np.int64), "scikit-learn digits, upscaled")


def fetch_openml_mnist(data_home: Path | None = None) -> Images:
    """MNIST from openml (cached by scikit-learn under ``data_home``).

    Raises:
        SourceUnavailable: openml cannot be reached.
    """
    from sklearn.datasets import fetch_openml

    try:
        bunch = fetch_openml(OPENML_NAME, version=1, as_frame=False, parser="liac-arff",
                             data_home=None if data_home is None else str(data_home))
    except (OSError, ValueError) as exc:
        raise SourceUnavailable(
            f"cannot fetch {OPENML_NAME} from openml ({exc}): without network access pass"
            " --source PATH (a local mnist.npz or CSV) or --source digits (a stand-in of the"
            " same shape)"
        ) from exc
    return Images(np.asarray(bunch.data, dtype=np.float64),
                  np.asarray(bunch.target).astype(np.int64), f"openml {OPENML_NAME}")


def read_local(path: Path) -> Images:
    """MNIST from a local ``.npz`` or ``.csv`` file (pixels 0-255).

    Raises:
        PrepareError: unknown format, missing arrays or columns, wrong shape or range.
    """
    if not path.is_file():
        raise PrepareError(f"--source {path}: no such file (or use 'openml' or 'digits')")
    if path.suffix == ".npz":
        pixels, labels = _read_npz(path)
    elif path.suffix == ".csv":
        pixels, labels = _read_csv(path)
    else:
        raise PrepareError(f"--source {path}: give a .npz or .csv file")
    return _checked(Images(pixels, labels, str(path)))


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = set(archive.files)
            if {"x_train", "y_train", "x_test", "y_test"} <= names:  # Keras' mnist.npz
                # Train then test rows: the order openml's mnist_784 has, so the split below
                # is the sample's.
                pixels = np.concatenate([archive["x_train"], archive["x_test"]])
                labels = np.concatenate([archive["y_train"], archive["y_test"]])
            elif {"x", "y"} <= names:
                pixels, labels = archive["x"], archive["y"]
            else:
                raise PrepareError(
                    f"{path} holds arrays {sorted(names)}: expected x_train, y_train, x_test,"
                    " y_test (Keras' mnist.npz) or x, y"
                )
    except (OSError, ValueError) as exc:
        if isinstance(exc, PrepareError):
            raise
        raise PrepareError(f"{path} is not a readable .npz of numeric arrays ({exc})") from exc
    return np.asarray(pixels).reshape(len(pixels), -1), np.asarray(labels)


def _read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise PrepareError(f"{path} is not a readable CSV ({exc})") from exc
    label = next((c for c in LABEL_COLUMNS if c in frame.columns), None)
    if label is None:
        raise PrepareError(f"{path} has no label column: name it one of {LABEL_COLUMNS}")
    return frame.drop(columns=[label]).to_numpy(), frame[label].to_numpy()


def _checked(images: Images) -> Images:
    """Check shape, range and labels of raw images.

    Raises:
        PrepareError: every problem found, in one message.
    """
    pixels, labels = images.pixels, images.labels
    problems = []
    if pixels.ndim != 2 or pixels.shape[1] != N_FEATURES:
        problems.append(f"images have {pixels.shape[1:]} values each, MNIST has {N_FEATURES}"
                        " (28x28)")
    if len(pixels) != len(labels):
        problems.append(f"{len(pixels)} images but {len(labels)} labels")
    if pixels.dtype.kind not in "biuf" or labels.dtype.kind not in "biuf":
        problems.append("pixels and labels must be numbers")
    elif not problems:
        if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > MAX_PIXEL:
            problems.append("pixels must be raw values between 0 and 255 (not normalised yet)")
        if not np.array_equal(labels, np.round(labels)):
            problems.append("labels must be whole numbers (the digit)")
    if problems:
        raise PrepareError(f"{images.source}: " + "; ".join(problems))
    return Images(pixels.astype(np.float64), labels.astype(np.int64), images.source)


def load_images(source: str, *, data_home: Path | None = None) -> Images:
    """Raw images of ``source`` (``openml``, ``digits`` or a file path)."""
    if source == SOURCE_OPENML:
        return _checked(fetch_openml_mnist(data_home))
    if source == SOURCE_DIGITS:
        return _checked(digits_stand_in())
    return read_local(Path(source))


def prepare(images: Images, *, test_size: float | None = None, max_rows: int | None = None,
            seed: int = SPLIT_SEED) -> PreparedData:
    """Subsample, normalise and split like the sample.

    Args:
        test_size: Test rows (>= 1) or fraction (< 1); default 10000 rows, or 20 % of sets
            under 20000 rows.
        max_rows: Keep a random subsample of this many rows first (seeded).

    Raises:
        PrepareError: too few rows for the split asked.
    """
    from sklearn.model_selection import train_test_split

    pixels, labels = images.pixels, images.labels
    if max_rows is not None:
        if max_rows < 4:
            raise PrepareError(f"--max-rows {max_rows}: keep at least 4 rows")
        if max_rows < len(labels):
            keep = np.sort(np.random.default_rng(seed).permutation(len(labels))[:max_rows])
            pixels, labels = pixels[keep], labels[keep]
    if test_size is None:
        test_size = SAMPLE_TEST_ROWS if len(labels) >= 2 * SAMPLE_TEST_ROWS \
            else SMALL_SET_TEST_FRACTION
    split_size: float | int = int(test_size) if test_size >= 1 else float(test_size)
    try:
        x_train, x_test, y_train, y_test = train_test_split(
            normalise(pixels), labels, test_size=split_size, random_state=seed)
    except ValueError as exc:
        raise PrepareError(f"cannot hold out {split_size} of {len(labels)} rows ({exc}):"
                           " change --test-size or --max-rows") from exc
    return PreparedData(x_train, y_train, x_test, y_test)


def write_arrays(data: PreparedData, out_dir: Path) -> list[Path]:
    """Write the four .npy files atomically; return their paths."""
    written = []
    for path, array in data.files(out_dir).items():
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        atomic_write_bytes(path, buffer.getvalue())
        written.append(path)
    return written


def upload_training_pair(s3: Any, out_dir: Path, prefix: str, *, replace: bool = False
                         ) -> list[str]:
    """Put the training pair under ``s3://bucket/prefix/`` with SSE-S3; return their URIs.

    The training job reads every data file under the prefix, so other objects there are refused
    (listed), unless ``replace`` deletes them first, as the sample's setup does.

    Raises:
        PrepareError: a bad prefix, or other objects under it without ``replace``.
        SourceUnavailable: S3 refused a call.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        location = parse_s3_prefix(prefix, field="--upload")
    except S3LocationError as exc:
        raise PrepareError(str(exc)) from exc
    key_prefix = location.prefix
    names = (TRAINING_FEATURES, TRAINING_LABELS)
    try:
        existing = _list_keys(s3, location.bucket, key_prefix)
        foreign = sorted(k for k in existing if k not in {key_prefix + n for n in names})
        if foreign and not replace:
            shown = ", ".join(foreign[:5]) + (" …" if len(foreign) > 5 else "")
            raise PrepareError(
                f"{location} already holds {len(foreign)} other"
                f" object(s) ({shown}) that the training job would read too: pass --replace to"
                " delete them, or upload to another prefix"
            )
        if replace:
            for start in range(0, len(existing), 1000):  # DeleteObjects takes 1000 keys a call
                chunk = [{"Key": k} for k in existing[start:start + 1000]]
                s3.delete_objects(Bucket=location.bucket,
                                  Delete={"Objects": chunk, "Quiet": True})
        uris = []
        for name in names:
            with open(out_dir / TRAINING_DIR / name, "rb") as body:
                s3.put_object(Bucket=location.bucket, Key=key_prefix + name, Body=body, **SSE)
            uris.append(str(location.join(name)))
    except (ClientError, BotoCoreError) as exc:
        raise SourceUnavailable(f"S3 refused the upload to {prefix} ({exc}): check the bucket,"
                                " the credentials and the region") from exc
    return uris


def _list_keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [item["Key"] for item in page.get("Contents", [])]
    return keys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python prepare_data.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=SOURCE_OPENML,
                        help="openml (default), digits (stand-in), or a .npz/.csv file")
    parser.add_argument("--out-dir", type=Path, default=Path("data/mnist"),
                        help="where the four .npy files go (default data/mnist)")
    parser.add_argument("--test-size", type=float, default=None,
                        help="test rows (>= 1) or fraction (< 1); default 10000, or 0.2 for"
                             " sets under 20000 rows")
    parser.add_argument("--max-rows", type=int, default=None,
                        help="keep a random subsample of this many rows (e.g. for a quick job)")
    parser.add_argument("--seed", type=int, default=SPLIT_SEED)
    parser.add_argument("--data-home", type=Path, default=None,
                        help="openml download cache (default: scikit-learn's)")
    parser.add_argument("--upload", metavar="S3_PREFIX",
                        help="put the training pair under s3://bucket/prefix (SSE-S3)")
    parser.add_argument("--replace", action="store_true",
                        help="with --upload: delete other objects under the prefix first")
    parser.add_argument("--s3-endpoint-url", default=None,
                        help="S3 endpoint (default AWS_ENDPOINT_URL_S3, else AWS)")
    parser.add_argument("--region", default=None, help="AWS region")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 bad input, 1 network/AWS failure)."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        images = load_images(args.source, data_home=args.data_home)
        data = prepare(images, test_size=args.test_size, max_rows=args.max_rows, seed=args.seed)
        written = write_arrays(data, args.out_dir)
        uploaded: list[str] = []
        if args.upload:
            import boto3

            s3 = boto3.session.Session(region_name=args.region).client(
                "s3", endpoint_url=args.s3_endpoint_url)
            uploaded = upload_training_pair(s3, args.out_dir, args.upload, replace=args.replace)
    except PrepareError as exc:
        print(f"prepare_data: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SourceUnavailable as exc:
        print(f"prepare_data: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps({
        "source": images.source,
        "train_rows": len(data.y_train), "test_rows": len(data.y_test),
        "features": N_FEATURES, "files": [str(p) for p in written], "uploaded": uploaded,
    }, indent=2))
    return EXIT_OK


if __name__ == "__main__":
    run_main(main)
