"""The peers' way of serving the same circuit (P7): evaluation keys deserialised on every request.

The AWS sample's predictor and Zama's deployment server both pass the *serialized* evaluation
keys to ``FHEModelServer.run`` on every request, so every request deserialises them and then
pays the fresh key object's one-off cost on its first (and only) run:

* ``disk`` — the AWS sample (``inference/endpoint/container_files/predictor.py``): the keys are
  downloaded once into a folder, named by the sha256 of their URI, and read back from that file
  on every request;
* ``ram`` — Zama's ``concrete.ml.deployment.server``: the keys' bytes stay in a dict (keyed by
  uid there, by URI here) and are passed as bytes on every request.

This is our own implementation of those approaches. It speaks this kit's wire contract, so the
very same client, S3 and async runtime measure it: only the server's key handling differs from
:mod:`inference.predictor` (which deserialises once per key set and keeps the object).

``python -m bench.peer --model-dir DIR --key-source disk|ram ...`` serves it behind the local
async runtime (gunicorn binding the port with the same worker settings as ``serve``) until
SIGTERM, and writes a ready file like ``deploy_endpoint.py --local``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flask import Flask, Response, request

from common import contract
from common.process import EXIT_FAILED, EXIT_OK, run_main
from inference.errors import ServingError
from inference.model import FheModel
from inference.s3_store import S3Store, make_s3_client
from inference.settings import (
    ENV_ALLOWED_PREFIXES,
    ENV_HOST,
    ENV_KEY_CACHE_DIR,
    ENV_MODEL_DIR,
    ENV_PORT,
    ENV_S3_ENDPOINT,
    Settings,
)

logger = logging.getLogger("bench.peer")

ENV_KEY_SOURCE = "FHE_PEER_KEY_SOURCE"
KEY_SOURCE_DISK = "disk"
KEY_SOURCE_RAM = "ram"
KEY_SOURCES = (KEY_SOURCE_DISK, KEY_SOURCE_RAM)
WSGI_APP = "bench.peer:build_app()"
READY_TIMEOUT = 600.0


class PeerKeys:
    """Serialized evaluation keys, fetched once per URI and handed out as bytes every time.

    Args:
        source: ``disk`` (a file per URI, read on every request) or ``ram`` (a dict of bytes).
        store: Reads the keys from S3 the first time.
        folder: Where ``disk`` keeps its copies.
    """

    def __init__(self, source: str, store: S3Store, folder: Path) -> None:
        if source not in KEY_SOURCES:
            raise ValueError(f"{ENV_KEY_SOURCE} must be one of {', '.join(KEY_SOURCES)},"
                             f" got {source!r}")
        self.source = source
        self._store = store
        self._folder = folder
        self._ram: dict[str, bytes] = {}

    def get(self, uri: contract.S3Uri) -> bytes:
        """The serialized keys of ``uri`` (downloaded the first time)."""
        if self.source == KEY_SOURCE_RAM:
            if str(uri) not in self._ram:
                self._ram[str(uri)] = self._store.read(uri, what="evaluation keys")
            return self._ram[str(uri)]
        path = self._folder / contract.sha256_hex(str(uri).encode())
        if not path.exists():
            self._folder.mkdir(parents=True, exist_ok=True)
            path.write_bytes(self._store.read(uri, what="evaluation keys"))
        return path.read_bytes()


def create_peer_app(settings: Settings, *, key_source: str, s3_client: Any | None = None) -> Flask:
    """The peer server: ``GET /ping``, ``POST /invocations`` (this kit's contract).

    The model is loaded before the app is returned, as the peers load it at import.
    """
    model = FheModel.load(settings.model_dir)
    store = S3Store(s3_client or make_s3_client(settings),
                    allowed_prefixes=settings.allowed_prefixes,
                    max_object_bytes=settings.max_object_bytes)
    keys = PeerKeys(key_source, store, settings.key_cache_dir / "peer-evaluation-keys")
    app = Flask("bench.peer")

    @app.get("/ping")
    def ping() -> Response:
        return Response(b"", status=200)

    @app.post("/invocations")
    def invocations() -> Response:
        request_id = request.headers.get("X-Amzn-SageMaker-Inference-Id") or uuid.uuid4().hex
        try:
            return _invoke(request.get_data(cache=False), request_id, model, store, keys)
        except ServingError as exc:
            return _error(exc.row, exc.message)
        except contract.ContractError as exc:
            return _error(contract.BAD_REQUEST, str(exc))

    return app


def _invoke(body: bytes, request_id: str, model: FheModel, store: S3Store,
            keys: PeerKeys) -> Response:
    req = contract.parse_request(body)
    store.check_allowed([req.evaluation_keys_uri, *req.query_uris])
    mark = time.perf_counter()
    key_bytes = keys.get(req.evaluation_keys_uri)
    key_seconds = time.perf_counter() - mark
    mark = time.perf_counter()
    objects = [store.read(uri, what="ciphertext") for uri in req.query_uris]
    queries = contract.unpack_batch(objects[0]) if req.packed else objects
    fetch_seconds = time.perf_counter() - mark
    mark = time.perf_counter()
    # The peers' call: serialized keys in, so FHEModelServer.run deserialises them every time.
    results = [model.runtime.server.run(query, key_bytes) for query in queries]
    fhe_seconds = time.perf_counter() - mark
    logger.info(
        "request %s ok: %d ciphertext(s), %d bytes in, %d bytes out; keys %.1f ms, fetch %.1f ms,"
        " fhe %.1f ms", request_id, len(queries), sum(map(len, queries)), sum(map(len, results)),
        1000 * key_seconds, 1000 * fetch_seconds, 1000 * fhe_seconds)
    if req.batch:
        return Response(contract.pack_batch(results), status=200,
                        mimetype=contract.CONTENT_TYPE_BATCH)
    return Response(results[0], status=200, mimetype=contract.CONTENT_TYPE_RESULT)


def _error(error: contract.ErrorCode, message: str) -> Response:
    return Response(error.body(message), status=error.status, mimetype=contract.CONTENT_TYPE_JSON)


def build_app() -> Flask:
    """gunicorn's entry point: settings and the key source from the environment."""
    from inference.wsgi import LOG_FORMAT

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    return create_peer_app(Settings.from_env(),
                           key_source=os.environ.get(ENV_KEY_SOURCE, KEY_SOURCE_DISK))


# -- the local endpoint around it ------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.peer",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--key-source", choices=KEY_SOURCES, required=True)
    parser.add_argument("--endpoint-name", required=True)
    parser.add_argument("--output-path", required=True)
    parser.add_argument("--failure-path", required=True)
    parser.add_argument("--allowed-s3-prefix", required=True)
    parser.add_argument("--s3-endpoint-url", required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the peer app behind the local async runtime until SIGTERM/SIGINT."""
    import boto3

    from common.files import atomic_write_bytes
    from inference.serve import gunicorn_command, worker_env
    from local_mode.processes import free_port, stop_process, wait_for_ping
    from local_mode.runtime import LocalAsyncRuntime

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with tempfile.TemporaryDirectory(prefix="fhe-peer-") as work:
        port = free_port()
        settings = Settings.from_env({
            **os.environ, ENV_MODEL_DIR: str(args.model_dir), ENV_PORT: str(port),
            ENV_HOST: "127.0.0.1", ENV_KEY_CACHE_DIR: work,
            ENV_ALLOWED_PREFIXES: args.allowed_s3_prefix, ENV_S3_ENDPOINT: args.s3_endpoint_url})
        env = {**worker_env(settings), ENV_KEY_SOURCE: args.key_source}
        server = subprocess.Popen(gunicorn_command(settings, bind=f"127.0.0.1:{port}",
                                                   app=WSGI_APP), env=env)
        runtime = None
        try:
            serve_url = f"http://127.0.0.1:{port}"
            wait_for_ping(serve_url, timeout=READY_TIMEOUT, process=server, interval=0.2)
            runtime = LocalAsyncRuntime(
                endpoint_name=args.endpoint_name, container_url=serve_url,
                output_path=args.output_path, failure_path=args.failure_path,
                s3_client=boto3.client("s3", endpoint_url=args.s3_endpoint_url)).start()
            ready = {"endpoint_name": args.endpoint_name, "runtime_url": runtime.url,
                     "serve_url": serve_url, "s3_endpoint_url": args.s3_endpoint_url,
                     "key_source": args.key_source}
            atomic_write_bytes(args.ready_file, json.dumps(ready).encode())
            while not stop.wait(0.5):
                if server.poll() is not None:
                    logger.error("the peer server exited with code %s", server.returncode)
                    return EXIT_FAILED
            return EXIT_OK
        finally:
            if runtime is not None:
                runtime.stop()
            stop_process(server, timeout=60)


if __name__ == "__main__":
    run_main(main)
