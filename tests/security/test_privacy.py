"""Privacy, proven: after an end-to-end run (train, deploy, encrypted predict through the local
stack) no plaintext row and no secret-key byte is found in any S3 object, any log, or the
server's key cache; secret key files are 0600 in 0700 directories; the server logs only ids,
sizes and timings."""

from __future__ import annotations

import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from client.keys import EVAL_KEYS_FILE, KEYSET_FILE
from local_mode.demo import load_case
from local_mode.stack import LocalStack, local_stack
from tests.security.scan import (
    Needle,
    Scanner,
    files_under,
    plaintext_needles,
    s3_objects,
    secret_key_needles,
)

pytestmark = pytest.mark.slow
TREE = {"model": "DecisionTreeClassifier", "max_depth": 2, "n_bits": 3}
# A row of unusual values: any text or binary form of it is unmistakable.
UNUSUAL = np.append(np.linspace(-7.654321, 98.7654321, 29) + np.arange(29) * 1e-7, 123.456789)
_REQUEST_LOG = re.compile(
    r"request [0-9a-zA-Z\-]+ (ok: \d+ ciphertext\(s\), \d+ bytes in, \d+ bytes out; keys [\d.]+ ms,"
    r" fetch [\d.]+ ms, fhe [\d.]+ ms|-> \d+ \w+ in [\d.]+ ms)$"
    # once, at model load: the circuit's own sizes (no request, no tenant data)
    r"|S3 objects bounded by the circuit: evaluation keys \d+ bytes, one encrypted row \d+ bytes"
    r" \(\+1% \+\d+ accepted\)$"
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, np.ndarray]]:
    x_train, x_held, y_train, _, names = load_case("breast-cancer")
    with local_stack(x_train, y_train, hyperparameters=TREE, feature_names=names,
                     work_dir=tmp_path_factory.mktemp("privacy")) as running:
        yield running, np.vstack([x_held[:3], UNUSUAL])


@pytest.fixture(scope="module")
def run(stack: tuple[LocalStack, np.ndarray]) -> dict[str, Any]:
    """One encrypted prediction of the known rows, objects kept; what the scans need."""
    local, rows = stack
    with local.predictor(keep_objects=True, batch_size=2, progress=False) as predictor:
        predictor.predict_proba(rows)
        fhe = predictor._fhe_client()
        scaled = predictor.model.manifest.scaler.transform(rows)
        key_dir = predictor.ensure_keys().directory
        quantized = [fhe.model.quantize_input(r[None, :]) for r in scaled]
    serve = [p for p in psutil.Process(local.endpoint_pid).children(recursive=True)
             if "FHE_KEY_CACHE_DIR" in p.environ()]
    cache_dir = Path(serve[0].environ()["FHE_KEY_CACHE_DIR"])
    haystacks = dict(s3_objects(local.s3_client()))
    haystacks.update({str(p): p.read_bytes() for p in files_under(cache_dir)})
    haystacks.update({str(p): p.read_bytes() for p in files_under(local.work_dir / "logs")})
    return {"rows": rows, "scaled": scaled, "quantized": quantized, "key_dir": key_dir,
            "haystacks": haystacks, "cache_files": list(files_under(cache_dir))}


@pytest.fixture(scope="module")
def scanner(run: dict[str, Any]) -> Scanner:
    needles: list[Needle] = []
    for i, (row, scaled, q) in enumerate(zip(run["rows"], run["scaled"], run["quantized"],
                                             strict=True)):
        needles += plaintext_needles(f"row {i}", row, q)
        needles += plaintext_needles(f"scaled row {i}", scaled, q)
    key_dir: Path = run["key_dir"]
    needles += secret_key_needles((key_dir / KEYSET_FILE).read_bytes(),
                                  (key_dir / EVAL_KEYS_FILE).read_bytes(), label="secret key")
    return Scanner(needles)


def test_scanner_finds_planted_plaintext_and_key_bytes(run, scanner: Scanner) -> None:
    """Positive control: the same scanner finds each kind of needle once planted."""
    blob = max(run["haystacks"].values(), key=len)[:2_000_000]  # evaluation keys
    row, q = run["rows"][3], run["quantized"][0]
    secret = next(n for n in scanner.needles if n.label.startswith("secret key"))
    plants = {
        "row 3 <f8": row.astype("<f8").tobytes(),
        "row 3 <f4": row.astype("<f4").tobytes(),
        "row 3 text row repr sep ','": ",".join(map(repr, row.tolist())).encode(),
        "row 3 value 123.456789 repr": b"123.456789",
        "row 0 quantised <i8": q.astype("<i8").tobytes(),
        "row 0 quantised u1": q.astype("u1").tobytes(),
        secret.label: secret.data,
    }
    for label, data in plants.items():
        middle = len(blob) // 2 + 3
        hits = scanner.scan(blob[:middle] + data + blob[middle:], "control")
        assert any(h.needle.startswith(label) and h.offset == middle for h in hits), label
    assert len(scanner.needles) > 1000


def test_no_plaintext_or_secret_key_anywhere(run, scanner: Scanner) -> None:
    hits = [hit for where, data in run["haystacks"].items() for hit in scanner.scan(data, where)]
    assert hits == []
    assert any(w.endswith(".ekl") and w.startswith("s3://") for w in run["haystacks"])
    assert run["cache_files"], "the server's key cache was not written"
    assert scanner.bytes_scanned > 30_000_000
    print(f"privacy scan: {len(scanner.needles)} needles, {scanner.blobs_scanned} objects/files,"
          f" {scanner.bytes_scanned} bytes, 0 hits")


def test_secret_key_files_are_private_and_stay_home(run) -> None:
    key_dir: Path = run["key_dir"]
    for path in [key_dir, *files_under(key_dir)]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
    keyset = (key_dir / KEYSET_FILE).read_bytes()
    uploaded = [data for where, data in run["haystacks"].items() if where.startswith("s3://")]
    assert (key_dir / EVAL_KEYS_FILE).read_bytes() in uploaded
    assert keyset not in uploaded and not any(len(d) == len(keyset) for d in uploaded)


def test_server_logs_only_ids_sizes_and_timings(run, stack) -> None:
    log = (stack[0].work_dir / "logs" / "endpoint.log").read_text(errors="replace")
    lines = [line.split("inference.predictor: ", 1)[1] for line in log.splitlines()
             if "inference.predictor: " in line]
    assert lines, "the server logged no request"
    assert [line for line in lines if not _REQUEST_LOG.match(line)] == []
    assert "s3://" not in "\n".join(lines)
