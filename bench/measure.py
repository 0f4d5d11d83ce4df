"""The measurements of one model: the limit, the async path, keys, cache, cold start, memory."""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.cases import ModelCase, Split, load_split
from bench.check import check_agreement, check_circuit_agreement
from bench.machine import rss_bytes
from bench.stack import (
    BUCKET,
    CLIENT_PREFIX,
    BenchError,
    BenchStack,
    Endpoint,
    ServerRequest,
    TrainedModel,
    parse_requests,
)
from bench.stats import summarize
from bench.unnamed import UnnamedKeysClient
from client.keys import KeyStore
from client.predictor import STAGES, EncryptedPredictor
from client.storage import S3Storage
from common.contract import S3Uri, parse_s3_uri
from local_mode.s3_server import local_session

logger = logging.getLogger(__name__)

LIMIT_STAGES = ("encrypt", "run", "decrypt")
# Pause between the interleaved measurements of P1, so that none overlaps the tail of the one
# before: the client's background DeleteObjects, or an FHE runtime thread still spinning after
# its run (concrete's OpenMP threads spin KMP_BLOCKTIME ms, 200 by default).
SETTLE_SECONDS = 0.25
SERVER_STAGES = ("keys", "fetch", "fhe")


@dataclass
class Samples:
    """Per-repetition samples, by name (seconds unless the name says otherwise)."""

    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        """Record one sample."""
        self.values.setdefault(name, []).append(float(value))

    def summary(self) -> dict[str, dict[str, Any]]:
        """median/min/max/n per name."""
        return {name: summarize(v).as_dict() for name, v in self.values.items()}

    def median(self, name: str) -> float:
        """Median of one series."""
        return summarize(self.values[name]).median


class LimitProbe:
    """The limit, in this process: client encrypt -> ``FHEModelServer.run`` -> client decrypt.

    Keys are generated once into ``key_dir`` (the async client later loads the same key set)
    and deserialised once, as a server with a warm cache holds them.

    Args:
        model: The trained model (its local model directory).
        key_dir: A fresh key directory.
    """

    def __init__(self, model: TrainedModel, key_dir: Path) -> None:
        self.model = model
        self.key_dir = key_dir
        self.setup: dict[str, Any] = {}
        self._client: Any = None
        self._server: Any = None
        self._keys: Any = None
        self._evaluation_keys = b""

    def __enter__(self) -> LimitProbe:
        from concrete import fhe
        from concrete.ml.deployment import FHEModelClient, FHEModelServer

        self._client = FHEModelClient(str(self.model.model_dir))
        keyset = KeyStore(self.key_dir).load_or_generate(
            self._client, self.model.manifest.client_fingerprint, progress=False)
        if not keyset.generated:
            raise BenchError(f"{self.key_dir} already held keys: use a fresh work dir")
        started = time.perf_counter()
        self._server = FHEModelServer(str(self.model.model_dir))
        load_seconds = time.perf_counter() - started
        started = time.perf_counter()
        self._evaluation_keys = keyset.read_evaluation_keys()
        self._keys = fhe.EvaluationKeys.deserialize(self._evaluation_keys)
        self.setup = {
            "keygen_seconds": keyset.seconds,
            "server_load_seconds": load_seconds,
            "keys_deserialize_seconds": time.perf_counter() - started,
            "sizes": {"model_tar_bytes": self.model.model_tar_bytes,
                      "evaluation_keys_bytes": keyset.evaluation_keys_bytes},
        }
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._client = self._server = self._keys = None
        gc.collect()

    def unnamed_keys_client(self, storage: S3Storage, runtime: Any, endpoint_name: str,
                            prefix: S3Uri) -> UnnamedKeysClient:
        """A client of this probe's key set that names its keys only by URI."""
        return UnnamedKeysClient(self._client, self._evaluation_keys, storage, runtime,
                                 endpoint_name, prefix)

    def sample(self, row: np.ndarray, samples: Samples | None) -> np.ndarray:
        """Run one raw row; add its stage timings to ``samples`` (None: a warm-up)."""
        scaled = self.model.manifest.scaler.transform(np.asarray(row).reshape(1, -1))
        t0 = time.perf_counter()
        ciphertext = self._client.quantize_encrypt_serialize(scaled)
        t1 = time.perf_counter()
        encrypted = self._server.run(ciphertext, self._keys)
        t2 = time.perf_counter()
        output = self._client.deserialize_decrypt_dequantize(encrypted)
        t3 = time.perf_counter()
        self.setup["sizes"].update(ciphertext_bytes=len(ciphertext), result_bytes=len(encrypted))
        if samples is not None:
            for name, value in zip((*LIMIT_STAGES, "total"),
                                   (t1 - t0, t2 - t1, t3 - t2, t3 - t0), strict=True):
                samples.add(name, value)
        return np.asarray(output)


class ModelBench:
    """Runs every measurement of one :class:`ModelCase` against a :class:`BenchStack`.

    Args:
        case: What to measure and how often.
        stack: The running S3 and the training/deployment helpers.
        client_options: Extra keyword arguments for :class:`EncryptedPredictor`.
    """

    def __init__(self, case: ModelCase, stack: BenchStack, *,
                 client_options: dict[str, Any] | None = None) -> None:
        self.case = case
        self.stack = stack
        self.client_options = client_options or {}
        self.split: Split = load_split(case)
        self.model: TrainedModel | None = None
        self.key_root = stack.work_dir / case.name / "keys"
        self.s3_prefix = f"{CLIENT_PREFIX}/{case.name}"
        self.limit_checks: list[dict[str, Any]] = []

    # -- correctness -------------------------------------------------------------------------
    def clear_outputs(self, x_raw: np.ndarray, model: TrainedModel | None = None) -> np.ndarray:
        """The clear quantised model's probabilities for raw rows (the reference).

        Args:
            x_raw: Raw rows.
            model: The model whose reference to use (default: the case's own model).
        """
        model = model or self._trained()
        return np.asarray(model.reference.predict_proba(model.manifest.scaler.transform(x_raw),
                                                        fhe="disable"))

    def verify(self, fhe_outputs: Any, x_raw: np.ndarray, *, what: str,
               model: TrainedModel | None = None) -> dict[str, Any]:
        """Fail loudly (:class:`bench.check.OutputMismatchError`) unless FHE equals clear."""
        return check_agreement(fhe_outputs, self.clear_outputs(x_raw, model),
                               what=f"{self.case.name} {what}").as_dict()

    def _trained(self) -> TrainedModel:
        if self.model is None:
            raise BenchError("train the model first (ModelBench.run does)")
        return self.model

    # -- the whole sequence ------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train, load the limit probe, measure the cold start, deploy, measure side by side."""
        logger.info("[%s] training via start_training.py --local", self.case.name)
        self.model = self.stack.train(self.case, self.split)
        result: dict[str, Any] = {
            "label": self.case.label, "dataset": self.case.dataset,
            "model_class": self.model.manifest.model_class,
            "hyperparameters": dict(self.case.hyperparameters),
            "training": {"seconds": self.model.train_seconds,
                         "metrics": {k: self.model.metrics.get(k) for k in
                                     ("metric", "float_sklearn", "clear_quantised", "n_train",
                                      "n_test", "timings")}},
        }
        logger.info("[%s] keygen and in-process FHEModelServer load", self.case.name)
        with LimitProbe(self.model, self.key_root / "main") as probe:
            result.update(probe.setup)
            logger.info("[%s] cold start of serve", self.case.name)
            cold = self.stack.cold_start(self.model)
            result["cold_start"] = {**cold, "compile_seconds": probe.setup["server_load_seconds"],
                                    "ratio_to_compile": cold["seconds"]
                                    / probe.setup["server_load_seconds"]}
            logger.info("[%s] deploying; limit and async path side by side", self.case.name)
            with self.stack.endpoint(self.case, self.model) as endpoint:
                result.update(self.measure_pipeline(endpoint, probe))
            result["peer"] = self.measure_peers()
            if self.case.tune_reps:
                result["tuned"] = self.measure_tuned(probe)
            result["sizes"] = dict(probe.setup["sizes"])
        result["targets"] = derived(result)
        return result

    # -- P7: the peers' serving approach ------------------------------------------------------
    def measure_peers(self) -> dict[str, Any]:
        """The single queries again, against :mod:`bench.peer` (keys deserialised per request).

        The same client, key set, S3 and async runtime as the measured path; the first query
        of each server (it fetches the keys, as the peers' key upload does) is checked, not
        timed.
        """
        out: dict[str, Any] = {}
        x = self.split.x_held
        for source in self.case.peer_sources if self.case.peer_reps else ():
            logger.info("[%s] the peers' approach (keys from %s, deserialised per request)",
                        self.case.name, source)
            checks = []
            with (self.stack.peer_endpoint(self.case, self._trained(), source) as endpoint,
                  self.predictor(endpoint, self.key_root / "main") as predictor):
                first = self._query(predictor, endpoint, x[:1], what=f"peer {source} query 0")
                checks.append(first[3])
                single = Samples()
                for rep in range(self.case.peer_reps):
                    seconds, timings, server, check = self._query(
                        predictor, endpoint, x[2 + rep: 3 + rep],
                        what=f"peer {source} query {rep}")
                    checks.append(check)
                    _add_single(single, seconds, timings, server[0])
            out[source] = {"first_query_seconds": first[0], "single": single.summary(),
                           "correctness": _merge_checks(checks)}
        return out

    # -- P8: the tuned circuit -----------------------------------------------------------------
    def measure_tuned(self, probe: LimitProbe) -> dict[str, Any]:
        """Train with ``tune=true``; time its FHE run against the default's, interleaved.

        Both circuits run in this process on the same rows, one after the other, each checked
        against its own clear quantised model.
        """
        case = replace(self.case, name=f"{self.case.name}-tuned",
                       hyperparameters={**self.case.hyperparameters,
                                        **self.case.tune_hyperparameters})
        logger.info("[%s] training with %s", self.case.name, dict(case.tune_hyperparameters))
        tuned = self.stack.train(case, self.split)
        default_runs, tuned_runs = Samples(), Samples()
        outputs: dict[str, list[np.ndarray]] = {"default": [], "tuned": []}
        x = self.split.x_held[: self.case.tune_reps + 1]
        with LimitProbe(tuned, self.key_root / "tuned") as tuned_probe:
            for rep in range(self.case.tune_reps + 1):  # the first round warms the keys up
                for name, which, samples in (("default", probe, default_runs),
                                             ("tuned", tuned_probe, tuned_runs)):
                    outputs[name].append(which.sample(x[rep], samples if rep else None))
            setup = tuned_probe.setup
        tuning = tuned.metrics.get("tuning") or {}
        circuit = tuned.manifest.circuit
        # Each circuit against its own clear quantised model, with its own oracle (exact, or the
        # statistical one for a circuit that is not exact: bench/check.py).
        correctness = {
            "default": self.verify(np.concatenate(outputs["default"]), x,
                                   what="default circuit, P8 runs"),
            "tuned": check_circuit_agreement(
                np.concatenate(outputs["tuned"]), self.clear_outputs(x, tuned),
                what=f"{self.case.name} tuned circuit, P8 runs", circuit=circuit),
        }
        return {
            "hyperparameters": dict(case.hyperparameters),
            "training_seconds": tuned.train_seconds,
            "chosen": tuning.get("chosen"), "configured": tuning.get("configured"),
            "reason": tuning.get("reason"), "tune_seconds": tuning.get("seconds"),
            "candidates": [{k: c.get(k) for k in ("config", "stage", "score", "simulated",
                                                  "within_budget", "complexity", "pbs_count",
                                                  "fhe_seconds", "pruned", "chosen")}
                           for c in tuning.get("candidates", [])],
            "circuit": circuit,
            "metric": tuned.metrics.get("metric"),
            "accuracy_default": self._trained().metrics.get("clear_quantised"),
            # the circuit as it runs: fhe="simulate" when it is not exact (rounding, p_error)
            "accuracy_tuned": tuned.metrics.get("fhe_simulated",
                                                tuned.metrics.get("clear_quantised")),
            "accuracy_tuned_clear_quantised": tuned.metrics.get("clear_quantised"),
            "run_default": default_runs.summary().get("run"),
            "run_tuned": tuned_runs.summary().get("run"),
            "keygen_seconds": setup["keygen_seconds"],
            "evaluation_keys_bytes": setup["sizes"]["evaluation_keys_bytes"],
            "evaluation_keys_bytes_default": probe.setup["sizes"]["evaluation_keys_bytes"],
            "correctness": correctness,
        }

    def measure_limit(self, probe: LimitProbe, rows: np.ndarray, samples: Samples | None) -> None:
        """Run ``rows`` through the in-process limit; check them; add their timings (if given)."""
        outputs = [probe.sample(row, samples) for row in rows]
        self.limit_checks.append(self.verify(np.concatenate(outputs), rows,
                                             what="limit (in-process)"))

    # -- the async path ----------------------------------------------------------------------
    def predictor(self, endpoint: Endpoint, key_dir: Path) -> EncryptedPredictor:
        """An :class:`EncryptedPredictor` on the local endpoint, as a user builds it."""
        options = {"key_dir": key_dir, "cache_dir": self.stack.work_dir / "client-cache",
                   "session": local_session(),
                   "s3_endpoint_url": self.stack.s3_server.endpoint_url,
                   "runtime_endpoint_url": endpoint.runtime_url, "progress": False,
                   **self.client_options}
        return EncryptedPredictor(endpoint.name, self._trained().model_data, self.s3_prefix,
                                  **options)

    def _query(self, predictor: EncryptedPredictor, endpoint: Endpoint, rows: np.ndarray,
               *, what: str) -> tuple[float, Any, list[ServerRequest], dict[str, Any]]:
        """One ``predict_proba`` call: wall seconds, client timings, server requests, check."""
        endpoint.log.skip()
        started = time.perf_counter()
        proba = predictor.predict_proba(rows)
        seconds = time.perf_counter() - started
        requests = _server_requests(endpoint, expected=-(-len(rows) // predictor.batch_size))
        return seconds, predictor.last_timings, requests, self.verify(proba, rows, what=what)

    def measure_pipeline(self, endpoint: Endpoint, probe: LimitProbe) -> dict[str, Any]:
        """The limit and P1-P5 and memory through the async path, repetitions interleaved.

        Each async query (client -> S3 -> runtime -> serve -> S3 -> client) follows an
        in-process limit run of the same row, so both see the same load on the machine.
        """
        x = self.split.x_held
        self.measure_limit(probe, x[:1], None)  # warm-up: checked, not timed
        pid = int(endpoint.metrics()["pid"])
        rss = [{"key_sets": 0, "rss_bytes": rss_bytes(pid), "key_cache_memory_bytes": 0}]
        checks: list[dict[str, Any]] = []
        with self.predictor(endpoint, self.key_root / "main") as predictor:
            predictor.ensure_keys()
            keys = self._first_two_queries(predictor, endpoint, x, checks)
            limit, single, ratios = self._single_queries(predictor, endpoint, probe, x, checks)
            batch = self._batches(predictor, endpoint, x, checks)
            keys.after_all = endpoint.metrics()
            keys.queries_total = predictor.timings.rows
            keys.key_uploads = predictor.timings.evaluation_key_uploads
            batch_size = predictor.batch_size
        objects = self.stack.object_stats(self.s3_prefix.removeprefix(f"s3://{BUCKET}/"))
        rss.append({"key_sets": 1, "rss_bytes": rss_bytes(pid),
                    "key_cache_memory_bytes": keys.after_all["key_cache"]["memory_bytes"]})
        rss += self._extra_key_sets(endpoint, pid, checks)
        unnamed = self.measure_unnamed_keys(endpoint, probe)
        return {
            "client_batch_size": batch_size,
            "limit": limit.summary(),
            "single": single.summary(),
            "p1_per_rep": ratios.summary().get("p1"),
            "batch": {"rows": self.case.batch_rows, **batch.summary()} if batch.values else None,
            "key_cache": {**keys.report(), "evaluation_keys_bytes": self._key_bytes(),
                          "unnamed_keys": unnamed["key_cache"]},
            "s3_objects": objects,
            "server_rss": rss,
            "correctness": {"limit": _merge_checks(self.limit_checks),
                            "pipeline": _merge_checks(checks),
                            **({"unnamed_keys": _merge_checks(unnamed["checks"])}
                               if unnamed["checks"] else {})},
        }

    def _first_two_queries(self, predictor: EncryptedPredictor, endpoint: Endpoint,
                           x: np.ndarray, checks: list[dict[str, Any]]) -> _KeyCacheRun:
        """P5 + P4: the first query of a fresh key set (upload, download, deserialise), then
        the second (served from the cache)."""
        before = endpoint.metrics()
        first = self._query(predictor, endpoint, x[:1], what="async query 1 (cold keys)")
        after_first = endpoint.metrics()
        uploads_first = predictor.timings.evaluation_key_uploads
        second = self._query(predictor, endpoint, x[1:2], what="async query 2 (cached keys)")
        checks += [first[3], second[3]]
        return _KeyCacheRun(first[2][0], second[2][0], before, after_first, uploads_first)

    def _single_queries(self, predictor: EncryptedPredictor, endpoint: Endpoint,
                        probe: LimitProbe, x: np.ndarray, checks: list[dict[str, Any]]
                        ) -> tuple[Samples, Samples, Samples]:
        """The limit, one-row async queries and their ratio (P1), repetitions interleaved."""
        limit, single, ratios = Samples(), Samples(), Samples()
        for rep in range(max(self.case.reps, self.case.limit_reps)):
            row = x[2 + rep: 3 + rep]
            if rep < self.case.limit_reps:
                self.measure_limit(probe, row, limit)
                time.sleep(SETTLE_SECONDS)
            if rep < self.case.reps:
                seconds, timings, server, check = self._query(
                    predictor, endpoint, row, what=f"async single query {rep}")
                checks.append(check)
                _add_single(single, seconds, timings, server[0])
                if rep < self.case.limit_reps:
                    ratios.add("p1", seconds / limit.values["total"][-1])
                time.sleep(SETTLE_SECONDS)
        return limit, single, ratios

    def _batches(self, predictor: EncryptedPredictor, endpoint: Endpoint, x: np.ndarray,
                 checks: list[dict[str, Any]]) -> Samples:
        """P3: batch requests of ``case.batch_rows`` rows."""
        batch = Samples()
        for rep in range(self.case.batch_reps):
            rows = x[: self.case.batch_rows]
            seconds, _timings, server, check = self._query(predictor, endpoint, rows,
                                                           what=f"async batch {rep}")
            checks.append(check)
            batch.add("seconds", seconds)
            batch.add("throughput_qps", len(rows) / seconds)
            batch.add("server_fhe", sum(r.fhe for r in server))
        return batch

    def measure_unnamed_keys(self, endpoint: Endpoint, probe: LimitProbe) -> dict[str, Any]:
        """P4 for clients that send no key hash: key bytes the server moves per request.

        The probe's key set is uploaded once under a fixed name (as the AWS sample's client
        does), then ``case.unnamed_queries`` single-row requests name it by URI only. The
        server's ``downloads`` counter around each request gives the bytes it moved.
        """
        rows = self.split.x_held[: self.case.unnamed_queries]
        downloads: list[int] = []
        checks: list[dict[str, Any]] = []
        if not len(rows):
            return {"key_cache": None, "checks": checks}
        session = local_session()
        storage = S3Storage(session.client("s3", endpoint_url=self.stack.s3_server.endpoint_url))
        runtime = session.client("sagemaker-runtime", endpoint_url=endpoint.runtime_url)
        client = probe.unnamed_keys_client(storage, runtime, endpoint.name,
                                           parse_s3_uri(f"{self.s3_prefix}-unnamed",
                                                        field="prefix"))
        try:
            client.upload_keys()
            scaler = self._trained().manifest.scaler
            for index, row in enumerate(rows):
                before = endpoint.metrics()
                output = client.predict_proba(scaler.transform(row[None, :]))
                downloads.append(_delta(before, endpoint.metrics(), "downloads"))
                checks.append(self.verify(output, row[None, :],
                                          what=f"unnamed-keys query {index}"))
        finally:
            storage.client.close()
            runtime.close()
        key_bytes = len(client.evaluation_keys)
        return {"key_cache": {"queries": len(rows), "client_uploads": 1,
                              "server_downloads": sum(downloads),
                              "server_key_bytes_per_request": [key_bytes * n for n in downloads]},
                "checks": checks}

    def _extra_key_sets(self, endpoint: Endpoint, pid: int,
                        checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send one query with each further key set; read the server's RSS after each."""
        points = []
        for index in range(2, self.case.key_sets + 1):
            with self.predictor(endpoint, self.key_root / f"extra-{index}") as predictor:
                row = self.split.x_held[index: index + 1]
                checks.append(self._query(predictor, endpoint, row,
                                          what=f"async query, key set {index}")[3])
            metrics = endpoint.metrics()
            points.append({"key_sets": index, "rss_bytes": rss_bytes(pid),
                           "key_cache_memory_bytes": metrics["key_cache"]["memory_bytes"]})
        return points

    def _key_bytes(self) -> int:
        meta = next((self.key_root / "main").glob("*/keys.json"))
        return int(json.loads(meta.read_text())["evaluation_keys_bytes"])


def _server_requests(endpoint: Endpoint, *, expected: int) -> list[ServerRequest]:
    """The server-side lines of the requests just made (waits briefly for the log to flush)."""
    deadline = time.monotonic() + 5.0
    text = ""
    while True:
        text += endpoint.log.new_text()
        found = parse_requests(text)
        if len(found) >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    if len(found) != expected:
        raise BenchError(
            f"expected {expected} 'request … ok: … keys X ms, fetch Y ms, fhe Z ms' line(s) in"
            f" {endpoint.log.path}, found {len(found)}: the server's log format changed; update"
            " bench/stack.py SERVER_LINE")
    return found


@dataclass
class _KeyCacheRun:
    """What the key cache did for the pipeline's queries (server metrics around them)."""

    first: ServerRequest
    second: ServerRequest
    before: dict[str, Any]
    after_first: dict[str, Any]
    uploads_first: int
    after_all: dict[str, Any] = field(default_factory=dict)
    queries_total: int = 0
    key_uploads: int = 0

    def report(self) -> dict[str, Any]:
        """The ``key_cache`` section of a model's results (first, second and all queries)."""
        delta = _delta
        return {
            "first_query": {"server_key_seconds": self.first.keys,
                            "server_fhe_seconds": self.first.fhe,
                            "client_uploads": self.uploads_first,
                            "server_downloads": delta(self.before, self.after_first, "downloads"),
                            "server_deserializations": delta(self.before, self.after_first,
                                                             "deserializations")},
            "second_query": {"server_key_seconds": self.second.keys,
                             "server_fhe_seconds": self.second.fhe},
            "all_queries": {"queries": self.queries_total, "client_uploads": self.key_uploads,
                            "server_downloads": delta(self.before, self.after_all, "downloads"),
                            "server_deserializations": delta(self.before, self.after_all,
                                                             "deserializations"),
                            "memory_hits": delta(self.before, self.after_all, "memory_hits")},
        }


def _add_single(samples: Samples, seconds: float, timings: Any, server: ServerRequest) -> None:
    samples.add("total", seconds)
    for stage in STAGES:
        samples.add(f"client_{stage}", getattr(timings, stage))
    for stage in SERVER_STAGES:
        samples.add(f"server_{stage}", getattr(server, stage))
    if server.container is not None:
        samples.add("runtime_container", server.container)


def _delta(before: dict[str, Any], after: dict[str, Any], name: str) -> int:
    return int(after["key_cache"][name]) - int(before["key_cache"][name])


def _merge_checks(checks: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {"rows": sum(c["rows"] for c in checks),
            "max_abs_gap": max((c["max_abs_gap"] for c in checks), default=0.0)}


def derived(result: dict[str, Any]) -> dict[str, Any]:
    """The target ratios of one model (P1-P6) from its measurements."""
    limit = result["limit"]["total"]["median"]
    single = result["single"]["total"]["median"]
    out: dict[str, Any] = {
        "p1_latency_ratio": single / limit,
        "p1_latency_ratio_per_rep": result.get("p1_per_rep"),
        "p2_overhead_ms": 1000 * (single - limit),
    }
    peers = {source: peer["single"]["total"]["median"] / single
             for source, peer in (result.get("peer") or {}).items() if peer["single"]}
    if peers:
        out["p7_peer_ratio"] = min(peers.values())  # the faster of the peers' two approaches
        out["p7_peer_ratio_by_source"] = peers
        # The ceiling of P7 for this circuit: the ratio if our path cost nothing above the
        # in-process limit (encrypt + warm run + decrypt). The peers pay the keys'
        # deserialisation and a fresh key object's first run on every request; when that costs
        # less than the warm run itself, no server of the same circuit reaches 2.
        out["p7_peer_ratio_at_limit"] = min(peer * single / limit for peer in peers.values())
    tuned = result.get("tuned")
    if tuned:
        out["p8_tuned_speedup"] = tuned["run_default"]["median"] / tuned["run_tuned"]["median"]
        out["p8_accuracy_default"] = tuned["accuracy_default"]
        out["p8_accuracy_tuned"] = tuned["accuracy_tuned"]
        out["p8_accuracy_loss_points"] = 100 * (tuned["accuracy_default"]
                                                - tuned["accuracy_tuned"])
    batch = result.get("batch")
    if batch:
        raw_qps = 1.0 / limit  # sequential in-process encrypt + run + decrypt, one at a time
        out["p3_throughput_ratio"] = batch["throughput_qps"]["median"] / raw_qps
        out["p3_raw_sequential_qps"] = raw_qps
    cache = result["key_cache"]
    out["p4_key_bytes_first_query"] = cache["evaluation_keys_bytes"] * (
        cache["first_query"]["client_uploads"] + cache["first_query"]["server_downloads"])
    out["p4_key_bytes_all_queries"] = cache["evaluation_keys_bytes"] * (
        cache["all_queries"]["client_uploads"] + cache["all_queries"]["server_downloads"])
    out["p4_queries"] = cache["all_queries"]["queries"]
    unnamed = cache.get("unnamed_keys")
    if unnamed and unnamed["queries"]:
        moved = unnamed["server_key_bytes_per_request"]
        out["p4_unnamed_key_bytes_first_query"] = moved[0]
        out["p4_unnamed_key_bytes_per_later_query"] = (
            sum(moved[1:]) / (len(moved) - 1) if len(moved) > 1 else None)
        out["p4_unnamed_queries"] = unnamed["queries"]
    first_keys = cache["first_query"]["server_key_seconds"]
    out["p5_key_load_ratio"] = (cache["second_query"]["server_key_seconds"] / first_keys
                                if first_keys > 0 else None)
    out["p6_cold_start_ratio"] = result["cold_start"]["ratio_to_compile"]
    return out

