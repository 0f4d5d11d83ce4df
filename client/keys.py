"""The persistent key directory: FHE keys generated once per model and reused.

Layout (directories 0700, files 0600; nothing here is ever uploaded except the evaluation keys)::

    <key_dir>/<model fingerprint>/
        keyset.bin              secret + evaluation keys (concrete keyset), SECRET
        evaluation_keys.ekl     serialized evaluation keys (what the server receives)
        keys.json               {"evaluation_keys_sha256", "evaluation_keys_bytes", "created"}
        uploads.json            S3 URIs the evaluation keys were uploaded to (an audit trail)

A key set is written into a staging directory and renamed into place, so concurrent
processes never see half a key set: the first rename wins and the loser loads the winner's.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs
from tqdm.auto import tqdm

from client.errors import KeyStoreError
from common.contract import sha256_hex
from common.files import atomic_write_bytes

APP_NAME = "concrete-sagemaker-kit"
KEYSET_FILE = "keyset.bin"
EVAL_KEYS_FILE = "evaluation_keys.ekl"
META_FILE = "keys.json"
UPLOADS_FILE = "uploads.json"
SECRET_MODE = 0o600
DIR_MODE = 0o700


def default_key_dir() -> Path:
    """Per-user key directory (under the platform's user cache dir)."""
    return Path(platformdirs.user_cache_dir(APP_NAME)) / "keys"


def default_cache_dir() -> Path:
    """Per-user cache of downloaded model archives."""
    return Path(platformdirs.user_cache_dir(APP_NAME)) / "models"


@dataclass(frozen=True)
class KeySet:
    """Keys of one model in the key directory.

    Attributes:
        directory: ``<key_dir>/<fingerprint>``.
        evaluation_keys_sha256: sha256 of the serialized evaluation keys (their S3 name).
        evaluation_keys_bytes: Their size.
        generated: True when this call generated them (False: loaded from disk).
        seconds: Time spent generating (0.0 when loaded).
    """

    directory: Path
    evaluation_keys_sha256: str
    evaluation_keys_bytes: int
    generated: bool
    seconds: float = 0.0

    @property
    def evaluation_keys_path(self) -> Path:
        """The serialized evaluation keys file."""
        return self.directory / EVAL_KEYS_FILE

    def read_evaluation_keys(self) -> bytes:
        """Read the serialized evaluation keys."""
        return self.evaluation_keys_path.read_bytes()


class KeyStore:
    """Finds, generates and records FHE keys under one root directory."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_key_dir()

    def __repr__(self) -> str:
        return f"KeyStore(root={str(self.root)!r})"

    def directory(self, fingerprint: str) -> Path:
        """The key directory of one model."""
        return self.root / fingerprint

    def load_or_generate(
        self, fhe_client: Any, fingerprint: str, *, progress: bool = True
    ) -> KeySet:
        """Load this model's keys into ``fhe_client`` (a concrete-ml FHEModelClient) or create them.

        Raises:
            KeyStoreError: the key directory is unusable or holds a damaged key set.
        """
        final = self.directory(fingerprint)
        if (final / META_FILE).is_file():
            return self._load(fhe_client, final)
        try:
            return self._generate(fhe_client, final, progress=progress)
        except OSError as exc:
            raise KeyStoreError(
                f"cannot write keys under {self.root}: {exc}; pass a writable key_dir"
            ) from exc

    def _load(self, fhe_client: Any, directory: Path) -> KeySet:
        try:
            meta = json.loads((directory / META_FILE).read_text())
            fhe_client.client.keys.load_from_bytes((directory / KEYSET_FILE).read_bytes())
            actual = sha256_hex((directory / EVAL_KEYS_FILE).read_bytes())
        except (OSError, ValueError, RuntimeError) as exc:
            raise KeyStoreError(
                f"key set in {directory} is unreadable ({exc}); delete that"
                " directory to generate new keys"
            ) from exc
        if actual != meta.get("evaluation_keys_sha256"):
            raise KeyStoreError(
                f"{directory / EVAL_KEYS_FILE} does not match {META_FILE};"
                " delete that directory to generate new keys"
            )
        return KeySet(directory, actual, int(meta["evaluation_keys_bytes"]), generated=False)

    def _generate(self, fhe_client: Any, final: Path, *, progress: bool) -> KeySet:
        self.root.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        start = time.perf_counter()
        with _ticker(f"Generating FHE keys for model {final.name[:12]} (once per model)", progress):
            fhe_client.generate_private_and_evaluation_keys(force=True)
            keyset = fhe_client.client.keys.serialize()
            eval_keys = fhe_client.get_serialized_evaluation_keys()
        seconds = time.perf_counter() - start
        meta = {
            "evaluation_keys_sha256": sha256_hex(eval_keys),
            "evaluation_keys_bytes": len(eval_keys),
            "created": time.time(),
        }
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{final.name[:16]}."))
        try:
            os.chmod(staging, DIR_MODE)
            atomic_write_bytes(staging / KEYSET_FILE, keyset, mode=SECRET_MODE)
            atomic_write_bytes(staging / EVAL_KEYS_FILE, eval_keys, mode=SECRET_MODE)
            atomic_write_bytes(staging / META_FILE, json.dumps(meta).encode(), mode=SECRET_MODE)
            try:
                os.rename(staging, final)
            except OSError:
                if (final / META_FILE).is_file():  # another process won the race: use its keys
                    return self._load(fhe_client, final)
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return KeySet(
            final, meta["evaluation_keys_sha256"], len(eval_keys), generated=True, seconds=seconds
        )

    def record_upload(self, fingerprint: str, uri: str) -> None:
        """Remember that this model's evaluation keys were uploaded to ``uri``."""
        uploads = self.uploads(fingerprint)
        if uri not in uploads:
            path = self.directory(fingerprint) / UPLOADS_FILE
            atomic_write_bytes(
                path, json.dumps([*uploads, uri], indent=1).encode(), mode=SECRET_MODE
            )

    def uploads(self, fingerprint: str) -> list[str]:
        """S3 URIs this model's evaluation keys were uploaded to."""
        path = self.directory(fingerprint) / UPLOADS_FILE
        try:
            return list(json.loads(path.read_text()))
        except (OSError, ValueError):
            return []

    def summary(self) -> list[dict[str, Any]]:
        """One entry per stored key set: fingerprint, sizes, uploads."""
        if not self.root.is_dir():
            return []
        entries = []
        for directory in sorted(p for p in self.root.iterdir() if (p / META_FILE).is_file()):
            files = {p.name: p.stat().st_size for p in directory.iterdir() if p.is_file()}
            entries.append(
                {
                    "fingerprint": directory.name,
                    "directory": str(directory),
                    "files": files,
                    "uploads": self.uploads(directory.name),
                }
            )
        return entries


@contextmanager
def _ticker(description: str, enabled: bool) -> Iterator[None]:
    """Show an elapsed-time bar while a long, silent call runs."""
    if not enabled:
        yield
        return
    bar = tqdm(desc=description, bar_format="{desc}: {elapsed}", leave=False)
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(0.5):
            bar.refresh()

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        bar.close()
