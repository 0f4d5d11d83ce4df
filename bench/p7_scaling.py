"""How P7 depends on the cores: ``python -m bench.p7_scaling``.

P7 compares the peers' way of serving (evaluation keys deserialised on every request, so every
request also pays a fresh key object's first run) with ours (one key object per key set, kept
warm). On the server, per request:

* ours: the warm run, ``T``;
* the peers': deserialise + first run, ``T + L``.

So no server of a given circuit can beat the peers by more than ``(T + L) / T = 1 + L / T``.
This script measures ``T`` and ``T + L`` in-process for the benchmark's cases at several thread
counts (a fresh process per count, ``OMP_NUM_THREADS=n``): the warm run parallelises over the
cores, the peers' extra ``L`` hardly does, so the ceiling grows with the cores of the machine.
Both ways decrypt to the same result (checked on every repetition).

Flags::

    --models tree,nn       cases (bench.cases) to train and measure
    --threads 1,2          thread counts (each <= the cores of this machine)
    --reps 3               interleaved repetitions per thread count
    --out FILE             JSON results (default bench/results/p7-scaling.json)

Exit status: 0 done, 1 the two ways disagreed, 2 a bad option or a failed step.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.cases import CASES, load_split
from bench.machine import describe
from bench.stack import BenchError, BenchStack
from common.artifact import read_manifest
from common.files import atomic_write_bytes
from common.process import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, run_main
from inference.serve import WORKER_ENV_DEFAULTS

logger = logging.getLogger("bench.p7_scaling")

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "p7-scaling.json"
PROBE_TIMEOUT = 1800.0


def probe(model_dir: Path, rows: Any) -> dict[str, Any]:
    """In this process: one peers' request and one warm run per row (after a warm-up row),
    interleaved. ``rows`` are raw rows; the model's shipped scaler scales them.

    Returns:
        ``warm_seconds`` and ``peer_seconds`` (deserialise + run) per repetition, the key bytes,
        and whether every pair decrypted to the same values.
    """
    import numpy as np
    from concrete import fhe
    from concrete.ml.deployment import FHEModelClient, FHEModelServer

    with tempfile.TemporaryDirectory(prefix="fhe-p7-keys-") as key_dir:
        client = FHEModelClient(str(model_dir), key_dir=key_dir)
        client.generate_private_and_evaluation_keys()
        serialized = client.get_serialized_evaluation_keys()
        server = FHEModelServer(str(model_dir))
        kept = fhe.EvaluationKeys.deserialize(serialized)
        scaled = read_manifest(model_dir).scaler.transform(np.asarray(rows, dtype=np.float64))
        server.run(client.quantize_encrypt_serialize(scaled[:1]), kept)  # our warm-up
        warm, peer, same = [], [], True
        for row in scaled[1:]:
            query = client.quantize_encrypt_serialize(row.reshape(1, -1))
            started = time.perf_counter()
            ours = server.run(query, kept)
            warm.append(time.perf_counter() - started)
            started = time.perf_counter()
            theirs = server.run(query, fhe.EvaluationKeys.deserialize(serialized))
            peer.append(time.perf_counter() - started)
            same &= bool(np.array_equal(client.deserialize_decrypt_dequantize(ours),
                                        client.deserialize_decrypt_dequantize(theirs)))
    return {"warm_seconds": warm, "peer_seconds": peer, "evaluation_keys_bytes": len(serialized),
            "same_results": same, "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def _probe_in_subprocess(model_dir: Path, rows_file: Path, threads: int) -> dict[str, Any]:
    """:func:`probe` in a fresh process with ``OMP_NUM_THREADS=threads`` (the FHE runtime reads
    it once, at start)."""
    env = {**os.environ, **WORKER_ENV_DEFAULTS, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "bench.p7_scaling", "--probe", str(model_dir),
               "--rows", str(rows_file)]
    done = subprocess.run(command, env=env, capture_output=True, text=True,
                          timeout=PROBE_TIMEOUT, check=False)
    if done.returncode != 0:
        raise BenchError(f"probe with {threads} thread(s) exited {done.returncode}:"
                         f" {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(raw: dict[str, Any], threads: int) -> dict[str, Any]:
    """Medians, the peers' extra cost ``L`` and the ceiling ``1 + L / T`` of one thread count."""
    warm = statistics.median(raw["warm_seconds"])
    peer = statistics.median(raw["peer_seconds"])
    return {"threads": threads, "warm_run_seconds": warm, "peer_request_seconds": peer,
            "peer_extra_seconds": peer - warm, "ceiling": peer / warm, **raw}


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.p7_scaling",
                                     description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tree,nn")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--probe", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in CASES]
    problems = [f"--models: unknown {', '.join(unknown)}; choose from {', '.join(CASES)}"
                ] if unknown or not args.models else []
    try:
        args.threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        args.threads = []
    cores = os.cpu_count() or 1
    if not args.threads or any(not 1 <= t <= cores for t in args.threads):
        problems.append(f"--threads: comma-separated counts from 1 to {cores} (the cores here)")
    if args.reps < 1:
        problems.append("--reps must be >= 1")
    if problems:
        parser.error("; ".join(problems))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Train each case, probe it at each thread count, write the JSON; see the docstring."""
    import numpy as np

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        args = _parse(argv)
    except SystemExit as exc:
        return EXIT_OK if exc.code == 0 else EXIT_BAD_INPUT
    if args.probe is not None:
        import numpy as np

        print(json.dumps(probe(args.probe, np.load(args.rows))), flush=True)
        return EXIT_OK
    doc: dict[str, Any] = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "machine": describe(), "models": {}}
    try:
        with tempfile.TemporaryDirectory(prefix="fhe-p7-") as work, \
                BenchStack(Path(work)) as stack:
            for name in args.models:
                case = CASES[name]
                logger.info("[%s] training via start_training.py --local", name)
                split = load_split(case)
                model = stack.train(case, split)
                rows_file = Path(work) / f"{name}-rows.npy"
                np.save(rows_file, split.x_held[: args.reps + 1])
                runs = []
                for threads in args.threads:
                    logger.info("[%s] %d thread(s): %d interleaved pairs", name, threads,
                                args.reps)
                    runs.append(summarise(
                        _probe_in_subprocess(model.model_dir, rows_file, threads), threads))
                    logger.info("[%s] %d thread(s): warm %.3f s, peers %.3f s, ceiling %.2f",
                                name, threads, runs[-1]["warm_run_seconds"],
                                runs[-1]["peer_request_seconds"], runs[-1]["ceiling"])
                doc["models"][name] = {"label": case.label, "runs": runs}
    except BenchError as exc:
        logger.error("%s", exc)
        return EXIT_BAD_INPUT
    atomic_write_bytes(args.out, (json.dumps(doc, indent=2) + "\n").encode())
    logger.info("wrote %s", args.out)
    disagreed = [n for n, m in doc["models"].items() if not all(r["same_results"]
                                                                for r in m["runs"])]
    if disagreed:
        logger.error("the peers' way and ours decrypted differently for %s", disagreed)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    run_main(main)
