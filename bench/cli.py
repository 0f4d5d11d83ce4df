"""``python -m bench`` / ``make bench``: measure, write the results, update docs/benchmark.md.

Every flag is described by ``python -m bench --help`` (the parser below is the one source).
``--images`` measures the two container images instead (needs Docker, about 15 minutes).

Exit status: 0 done (missed targets are reported, not fatal), 1 FHE disagreed with the clear
quantised model or the stack or the results could not be produced, 2 a bad option.
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
DEFAULT_README = REPO_ROOT / "docs" / "benchmark.md"
"""The page holding the generated tables (between the bench and images markers)."""
EXIT_MISMATCH = EXIT_FAILED  # FHE output differs from the clear model's
EXIT_ERROR = EXIT_FAILED     # the stack or the report failed


@dataclass(frozen=True)
class BenchSettings:
    """One run's configuration (from the command line).

    Attributes:
        cases: The models to measure, with their repetition counts.
        quick: A smoke run: results stay in the work dir, the docs page is not touched.
        batch_size: ``EncryptedPredictor`` batch_size override (None: the client's default).
        out_dir: Where results are written (None: ``bench/results``, or the work dir if quick).
        work_dir: Logs, models, keys (None: a temporary folder).
        keep: Keep ``work_dir``.
        readme: Page whose generated tables to update (None: leave it alone).
        render_only: Only regenerate the tables from ``out_dir/latest.json``.
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
                                     epilog=__doc__.split("\n\n")[-1].strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--models", default=",".join(DEFAULT_MODELS), metavar="NAME[,NAME...]",
        help=f"models to measure side by side, of {', '.join(CASES)} or all (default:"
        f" {','.join(DEFAULT_MODELS)}; mnist, the sample's 784-input network, +~30 min with P8)")
    add("--quick", action="store_true",
        help="smoke run: 1 repetition, 4-row batch, 1 key set; results go to the work dir and"
        " the committed results and docs stay untouched")
    for flag, what in (
            ("--reps", "async single-query repetitions"),
            ("--limit-reps", "in-process limit repetitions"),
            ("--batch-reps", "repetitions of the 32-query batch (0 skips P3)"),
            ("--key-sets", "key sets cached by the server when its RSS is read"),
            ("--unnamed-queries", "requests of a client naming its keys by URI only (0 skips)"),
            ("--peer-reps", "queries against each of the peers' servers (P7; 0 skips)"),
            ("--tune-reps", "interleaved FHE runs, default vs tune=true circuit (P8; 0 skips)")):
        add(flag, action="append", default=[], metavar="[MODEL=]N",
            help=f"{what}; repeatable, MODEL= for one model")
    add("--batch-size", type=int, default=None, metavar="N",
        help="EncryptedPredictor batch_size (default: the client's)")
    add("--out-dir", type=Path, default=None, metavar="DIR",
        help="results folder (default: bench/results)")
    add("--work-dir", type=Path, default=None, metavar="DIR",
        help="logs, models and keys (default: a temporary folder, removed unless --keep)")
    add("--keep", action="store_true", help="keep the work dir")
    add("--no-readme", action="store_true", help="do not rewrite the generated docs tables")
    add("--readme", type=Path, default=None, metavar="PATH",
        help="page whose generated tables to rewrite (default: docs/benchmark.md)")
    add("--render-readme", action="store_true",
        help="only regenerate the tables from <out-dir>/latest.json (no measurement)")
    add("--images", action="store_true",
        help="instead: build both images (no layer cache, then cached), run a training job in"
        " one and time the other to a healthy /ping; writes `images` into latest.json and the"
        " images table (needs Docker; about 15 minutes on 2 cores)")
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
