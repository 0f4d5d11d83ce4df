"""``python -m bench`` / ``make bench``: measure, write the results, update the README.

Flags::

    --models logreg,tree,nn     models to measure, side by side (default: those three; ``mnist``,
                                the sample's 784-input network, adds ~15 minutes; ``all``)
    --quick                     1 repetition, 4-row batch, 1 key set; results go to the work dir
                                (the committed results and README stay untouched)
    --reps [MODEL=]N            async single-query repetitions (repeatable; MODEL= for one model)
    --limit-reps [MODEL=]N      in-process limit repetitions
    --batch-reps [MODEL=]N      repetitions of the 32-query batch (0 skips P3)
    --key-sets [MODEL=]N        key sets cached by the server when its RSS is read
    --unnamed-queries [MODEL=]N requests of a client naming its keys by URI only (0 skips)
    --peer-reps [MODEL=]N       queries against each of the peers' servers (P7; 0 skips)
    --tune-reps [MODEL=]N       interleaved FHE runs, default vs tuned circuit (P8; 0 skips)
    --batch-size N              EncryptedPredictor batch_size (default: the client's)
    --out-dir DIR               results folder (default bench/results)
    --work-dir DIR --keep       where logs, models and keys go; kept with --keep
    --no-readme                 do not rewrite the README section
    --readme PATH               README to update (default: the repository's)
    --render-readme             only regenerate the README section from <out-dir>/latest.json
    --images                    instead: build both container images (no layer cache, then from
                                cache), run a training job in one and time the other to a healthy
                                /ping; writes `images` into <out-dir>/latest.json and the README's
                                images section (needs Docker; about 15 minutes on 2 cores)

Exit status: 0 done (missed targets are reported, not fatal), 1 FHE disagreed with the clear
quantised model, 2 the stack or the results could not be produced.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import machine
from bench.cases import CASES, DEFAULT_MODELS, ModelCase, quick
from bench.check import OutputMismatchError
from bench.images import DockerError
from bench.report import (
    IMAGES_BEGIN,
    IMAGES_END,
    LATEST,
    SCHEMA_VERSION,
    ReportError,
    evaluate_targets,
    load_results,
    render_images_section,
    render_readme_section,
    update_readme,
    write_results,
)
from bench.stack import BenchError, BenchStack
from common.files import atomic_write_bytes
from common.process import EXIT_BAD_INPUT, EXIT_FAILED
from inference.serve import WORKER_ENV_DEFAULTS

logger = logging.getLogger("bench")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT_DIR = REPO_ROOT / "bench" / "results"
DEFAULT_README = REPO_ROOT / "README.md"
EXIT_MISMATCH = EXIT_FAILED  # FHE output differs from the clear model's
EXIT_ERROR = EXIT_FAILED     # the stack or the report failed


@dataclass(frozen=True)
class BenchSettings:
    """One run's configuration (from the command line).

    Attributes:
        cases: The models to measure, with their repetition counts.
        quick: A smoke run: results stay in the work dir, the README is not touched.
        batch_size: ``EncryptedPredictor`` batch_size override (None: the client's default).
        out_dir: Where results are written (None: ``bench/results``, or the work dir if quick).
        work_dir: Logs, models, keys (None: a temporary folder).
        keep: Keep ``work_dir``.
        readme: README to update (None: leave it alone).
        render_only: Only regenerate the README from ``out_dir/latest.json``.
        images: Measure the container images instead of the encrypted path.
    """

    cases: tuple[ModelCase, ...]
    quick: bool = False
    batch_size: int | None = None
    out_dir: Path | None = None
    work_dir: Path | None = None
    keep: bool = False
    readme: Path | None = DEFAULT_README
    render_only: bool = False
    images: bool = False

    @classmethod
    def from_args(cls, argv: Sequence[str] | None) -> BenchSettings:
        """Parse the command line (see the module docstring)."""
        args = _parser().parse_args(argv)
        names = [n.strip() for n in args.models.split(",") if n.strip()]
        if names == ["all"]:
            names = list(CASES)
        unknown = [n for n in names if n not in CASES]
        if unknown or not names:
            raise SystemExit(f"bench: --models: unknown {', '.join(unknown) or '(empty)'}; choose"
                             f" from {', '.join(CASES)} (or all)")
        cases = [quick(CASES[n]) if args.quick else CASES[n] for n in names]
        for field_name, items in (("reps", args.reps), ("limit_reps", args.limit_reps),
                                  ("batch_reps", args.batch_reps),
                                  ("key_sets", args.key_sets),
                                  ("unnamed_queries", args.unnamed_queries),
                                  ("peer_reps", args.peer_reps),
                                  ("tune_reps", args.tune_reps)):
            overrides = _overrides(items, f"--{field_name.replace('_', '-')}", names)
            cases = [replace(c, **{field_name: overrides[c.name]}) if c.name in overrides else c
                     for c in cases]
        return cls(cases=tuple(cases), quick=args.quick, batch_size=args.batch_size,
                   out_dir=args.out_dir, work_dir=args.work_dir, keep=args.keep,
                   readme=None if (args.no_readme or (args.quick and args.readme is None))
                   else (args.readme or DEFAULT_README),
                   render_only=args.render_readme, images=args.images)

    @property
    def results_dir(self) -> Path:
        """Where results go when no work dir is known yet (quick runs choose theirs later)."""
        return self.out_dir or DEFAULT_OUT_DIR


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench",
                                     description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", action="append", default=[], metavar="[MODEL=]N")
    parser.add_argument("--limit-reps", action="append", default=[], metavar="[MODEL=]N")
    parser.add_argument("--batch-reps", action="append", default=[], metavar="[MODEL=]N")
    parser.add_argument("--key-sets", action="append", default=[], metavar="[MODEL=]N")
    parser.add_argument("--unnamed-queries", action="append", default=[], metavar="[MODEL=]N")
    parser.add_argument("--peer-reps", action="append", default=[], metavar="[MODEL=]N")
    parser.add_argument("--tune-reps", action="append", default=[], metavar="[MODEL=]N")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--no-readme", action="store_true")
    parser.add_argument("--readme", type=Path, default=None)
    parser.add_argument("--render-readme", action="store_true")
    parser.add_argument("--images", action="store_true")
    return parser


def _overrides(items: Sequence[str], flag: str, names: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        model, sep, value = item.rpartition("=")
        try:
            number = int(value)
        except ValueError:
            raise SystemExit(f"bench: {flag} {item!r}: expected [MODEL=]N") from None
        if number < 0 or (sep and model not in names):
            raise SystemExit(f"bench: {flag} {item!r}: N must be >= 0 and MODEL one of"
                             f" {', '.join(names)}")
        out.update({model: number} if sep else dict.fromkeys(names, number))
    return out


def run(settings: BenchSettings, work_dir: Path) -> dict[str, Any]:
    """Measure every case of ``settings`` in one stack; return the results document.

    Raises:
        OutputMismatchError: FHE and clear outputs disagree somewhere.
        BenchError: the stack failed.
    """
    from bench.measure import ModelBench

    started = datetime.now(UTC)
    info = machine.describe()
    options = {} if settings.batch_size is None else {"batch_size": settings.batch_size}
    models: dict[str, Any] = {}
    with BenchStack(work_dir) as stack:
        for case in settings.cases:
            models[case.name] = ModelBench(case, stack, client_options=options).run()
    info["loadavg_end"] = machine.loadavg()
    return {
        "schema": SCHEMA_VERSION,
        "date": started.isoformat(timespec="seconds"),
        "duration_seconds": (datetime.now(UTC) - started).total_seconds(),
        "quick": settings.quick,
        "machine": info,
        "settings": {c.name: {"reps": c.reps, "limit_reps": c.limit_reps,
                              "batch_rows": c.batch_rows,
                              "batch_reps": c.batch_reps, "key_sets": c.key_sets,
                              "unnamed_queries": c.unnamed_queries,
                              "peer_reps": c.peer_reps, "peer_sources": list(c.peer_sources),
                              "tune_reps": c.tune_reps,
                              "tune_hyperparameters": dict(c.tune_hyperparameters)}
                     for c in settings.cases},
        "models": models,
        "targets": [t.as_dict() for t in evaluate_targets(models)],
    }


def summary_lines(doc: Mapping[str, Any]) -> list[str]:
    """A few human-readable lines of a results document."""
    lines = []
    for name, result in doc["models"].items():
        lines.append(f"{name:7s} limit {1000 * result['limit']['total']['median']:9.1f} ms   async"
                     f" {1000 * result['single']['total']['median']:9.1f} ms   P1"
                     f" {result['targets']['p1_latency_ratio']:.3f}   overhead"
                     f" {result['targets']['p2_overhead_ms']:.1f} ms   P7"
                     f" {_fmt(result['targets'].get('p7_peer_ratio'))}   P8"
                     f" {_fmt(result['targets'].get('p8_tuned_speedup'))}")
    for target in doc["targets"]:
        status = {True: "met", False: "MISSED", None: "reported"}[target["met"]]
        value = "-" if target["value"] is None else f"{target['value']:.4g}"
        lines.append(f"{target['goal']} {target['model']:7s} {target['description']}: {value}"
                     f" ({target['limit']}) {status}")
    return lines


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``make bench``; see the module docstring."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        settings = BenchSettings.from_args(argv)
    except SystemExit as exc:  # a bad option: the message says which and what it may be
        if not isinstance(exc.code, str):
            raise
        print(exc.code, file=sys.stderr)
        return EXIT_BAD_INPUT
    # The in-process runs (limit, P8) use the FHE runtime settings of the server's workers.
    for name, value in WORKER_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    try:
        if settings.render_only:
            doc = load_results(settings.results_dir / LATEST)
            update_readme(settings.readme or DEFAULT_README, render_readme_section(doc))
            return 0
        if settings.images:
            return _measure_images(settings)
        return _measure(settings)
    except OutputMismatchError as exc:
        print(f"bench: FAILED: {exc}", file=sys.stderr)
        return EXIT_MISMATCH
    except (BenchError, ReportError, DockerError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _measure(settings: BenchSettings) -> int:
    temporary = settings.work_dir is None
    work_dir = Path(tempfile.mkdtemp(prefix="fhe-bench-")) if temporary else settings.work_dir
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        doc = run(settings, work_dir)
        previous = settings.results_dir / LATEST
        if not settings.quick and previous.is_file():  # keep the last images measurement
            doc.setdefault("images", load_results(previous).get("images"))
        out_dir = settings.out_dir or (work_dir / "results" if settings.quick else DEFAULT_OUT_DIR)
        stamp = datetime.fromisoformat(doc["date"]).strftime("%Y%m%d-%H%M")
        stem = f"{stamp}-{doc['machine']['host_kind']}{'-quick' if settings.quick else ''}"
        paths = write_results(doc, out_dir, stem=stem)
        if settings.readme is not None:
            update_readme(settings.readme, render_readme_section(doc))
            paths.append(settings.readme)
    finally:
        if temporary and not settings.keep and not settings.quick:
            shutil.rmtree(work_dir, ignore_errors=True)
    print("\n".join(summary_lines(doc)))
    print("wrote " + ", ".join(map(str, paths)))
    return 0


def _measure_images(settings: BenchSettings) -> int:
    """``--images``: measure the container images into ``latest.json`` (key ``images``)."""
    from bench.images import measure

    temporary = settings.work_dir is None
    work_dir = (Path(tempfile.mkdtemp(prefix="fhe-bench-images-")) if temporary
                else settings.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        started = datetime.now(UTC)
        images = measure(work_dir)
        images["date"] = started.isoformat(timespec="seconds")
    finally:
        if temporary and not settings.keep:
            shutil.rmtree(work_dir, ignore_errors=True)
    latest = settings.results_dir / LATEST
    doc = load_results(latest)
    doc["images"] = images
    stem = f"{started.strftime('%Y%m%d-%H%M')}-{images['machine']['host_kind']}-images"
    paths = write_results(doc, settings.results_dir, stem=stem, latest=False)
    atomic_write_bytes(latest, json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n")
    paths.append(latest)
    if settings.readme is not None:
        update_readme(settings.readme, render_images_section(images), begin=IMAGES_BEGIN,
                      end=IMAGES_END)
        paths.append(settings.readme)
    print(json.dumps({k: images[k] for k in ("inference", "training")}, indent=2))
    print("wrote " + ", ".join(map(str, paths)))
    return 0
