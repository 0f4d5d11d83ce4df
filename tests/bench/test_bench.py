"""Smoke test of the benchmark machinery: one quick LogisticRegression run through the real stack.

No timing is asserted (speed goals are what the benchmark reports); the tests check that a run
produces every field, chart and README section, and that the FHE-vs-clear gate really fails.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench import cli
from bench.check import PROBA_ATOL, OutputMismatchError, check_agreement
from bench.measure import ModelBench
from bench.report import README_BEGIN, README_END, ReportError, update_readme

SUMMARY_KEYS = {"median", "min", "max", "n"}
README_TEXT = f"# title\n\nbefore\n\n{README_BEGIN}\nold table\n{README_END}\n\nafter\n"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``python -m bench --quick --models logreg`` into a temporary folder, README copy included."""
    root = tmp_path_factory.mktemp("bench")
    readme = root / "README.md"
    readme.write_text(README_TEXT)
    out_dir = root / "results"
    code = cli.main(["--quick", "--models", "logreg", "--work-dir", str(root / "work"),
                     "--out-dir", str(out_dir), "--readme", str(readme)])
    return {"code": code, "out_dir": out_dir, "readme": readme,
            "doc": json.loads((out_dir / "latest.json").read_text())}


def test_quick_run_writes_every_field(quick_run: dict[str, Any]) -> None:
    assert quick_run["code"] == 0
    doc = quick_run["doc"]
    assert doc["schema"] == 1 and doc["quick"] is True
    assert {"nproc", "cpu_model", "ram_gib", "host_kind", "loadavg_start"} <= set(doc["machine"])
    assert list(doc["models"]) == ["logreg"]
    result = doc["models"]["logreg"]
    for stage in ("encrypt", "run", "decrypt", "total"):
        assert set(result["limit"][stage]) == SUMMARY_KEYS
    for stage in ("total", "client_encrypt", "client_upload", "client_wait", "client_decrypt",
                  "server_keys", "server_fetch", "server_fhe", "runtime_container"):
        assert set(result["single"][stage]) == SUMMARY_KEYS
        assert result["single"][stage]["n"] == 1
    assert result["batch"]["rows"] == 4 and result["batch"]["seconds"]["n"] == 1
    assert set(result["targets"]) >= {"p1_latency_ratio", "p2_overhead_ms", "p3_throughput_ratio",
                                      "p4_key_bytes_first_query", "p4_key_bytes_all_queries",
                                      "p5_key_load_ratio", "p6_cold_start_ratio"}
    assert result["cold_start"]["seconds"] > 0 and result["cold_start"]["compile_seconds"] > 0
    assert result["sizes"]["evaluation_keys_bytes"] > 0
    assert result["sizes"]["ciphertext_bytes"] > 0 and result["sizes"]["result_bytes"] > 0
    assert [p["key_sets"] for p in result["server_rss"]] == [0, 1]
    assert all(p["rss_bytes"] > 0 for p in result["server_rss"])
    assert {t["goal"] for t in doc["targets"]} == {"P2", "P3", "P4", "P6", "P7", "P8"}
    assert set(result["targets"]) >= {"p7_peer_ratio", "p7_peer_ratio_by_source",
                                      "p8_tuned_speedup", "p8_accuracy_default",
                                      "p8_accuracy_tuned", "p8_accuracy_loss_points"}
    assert set(result["targets"]["p1_latency_ratio_per_rep"]) == SUMMARY_KEYS


def test_quick_run_measures_the_peers_approach(quick_run: dict[str, Any]) -> None:
    result = quick_run["doc"]["models"]["logreg"]
    assert set(result["peer"]) == {"disk", "ram"}
    for peer in result["peer"].values():
        assert peer["single"]["total"]["n"] == 1 and peer["first_query_seconds"] > 0
        assert peer["single"]["server_fhe"]["n"] == 1
        assert peer["correctness"]["rows"] == 2 and peer["correctness"]["max_abs_gap"] <= PROBA_ATOL
    ratios = result["targets"]["p7_peer_ratio_by_source"]
    assert ratios == {k: v["single"]["total"]["median"] / result["single"]["total"]["median"]
                      for k, v in result["peer"].items()}
    assert result["targets"]["p7_peer_ratio"] == min(ratios.values())
    assert result["targets"]["p7_peer_ratio_at_limit"] == pytest.approx(min(
        v["single"]["total"]["median"] for v in result["peer"].values()
    ) / result["limit"]["total"]["median"])


def test_quick_run_measures_the_tuned_circuit(quick_run: dict[str, Any]) -> None:
    result = quick_run["doc"]["models"]["logreg"]
    tuned = result["tuned"]
    assert tuned["hyperparameters"] == {"model": "LogisticRegression", "tune": "true"}
    assert tuned["configured"] == {"n_bits": 8}
    assert next(c for c in tuned["candidates"] if c["chosen"])["config"] == tuned["chosen"]
    assert tuned["run_default"]["n"] == tuned["run_tuned"]["n"] == 1
    assert result["targets"]["p8_tuned_speedup"] == (tuned["run_default"]["median"]
                                                    / tuned["run_tuned"]["median"])
    assert tuned["correctness"]["default"]["rows"] == tuned["correctness"]["tuned"]["rows"] == 2
    # a linear model has no circuit knobs: its tuned circuit is exact, and so is its oracle
    assert tuned["circuit"]["exact"] is True and tuned["correctness"]["tuned"]["oracle"] == "exact"
    assert tuned["evaluation_keys_bytes"] > 0 and tuned["evaluation_keys_bytes_default"] > 0
    assert 0.5 < tuned["accuracy_tuned"] <= 1 and 0.5 < tuned["accuracy_default"] <= 1


def test_quick_run_keys_move_once(quick_run: dict[str, Any]) -> None:
    result = quick_run["doc"]["models"]["logreg"]
    cache = result["key_cache"]
    # one upload and one server download for the whole key set, however many queries follow
    assert cache["first_query"]["client_uploads"] == 1
    assert cache["first_query"]["server_downloads"] == 1
    assert cache["all_queries"]["client_uploads"] == 1
    assert cache["all_queries"]["server_downloads"] == 1
    assert cache["all_queries"]["queries"] == 1 + 1 + 1 + 4
    assert result["s3_objects"]["keys"] == {"objects": 1, "bytes": cache["evaluation_keys_bytes"]}


def test_quick_run_hashless_client_keys_move_once(quick_run: dict[str, Any]) -> None:
    result = quick_run["doc"]["models"]["logreg"]
    unnamed = result["key_cache"]["unnamed_keys"]
    size = result["key_cache"]["evaluation_keys_bytes"]
    # a client naming its keys by URI only: one download, then no key bytes per request
    assert unnamed == {"queries": 3, "client_uploads": 1, "server_downloads": 1,
                       "server_key_bytes_per_request": [size, 0, 0]}
    assert result["targets"]["p4_unnamed_key_bytes_first_query"] == size
    assert result["targets"]["p4_unnamed_key_bytes_per_later_query"] == 0
    assert result["correctness"]["unnamed_keys"]["rows"] == 3
    hashless = [t for t in quick_run["doc"]["targets"] if "hash-less" in t["description"]]
    assert [(t["value"], t["met"]) for t in hashless] == [(1, True)]


def test_quick_run_checked_fhe_against_clear(quick_run: dict[str, Any]) -> None:
    correctness = quick_run["doc"]["models"]["logreg"]["correctness"]
    assert correctness["limit"]["rows"] == 2  # warm-up row + 1 repetition
    assert correctness["pipeline"]["rows"] == 1 + 1 + 1 + 4
    assert max(c["max_abs_gap"] for c in correctness.values()) <= PROBA_ATOL


def test_quick_run_writes_chart_and_readme(quick_run: dict[str, Any]) -> None:
    out_dir: Path = quick_run["out_dir"]
    assert (out_dir / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    dated = [p for p in out_dir.glob("*-quick.json")]
    assert len(dated) == 1 and json.loads(dated[0].read_text()) == quick_run["doc"]
    text = quick_run["readme"].read_text()
    assert text.startswith("# title\n\nbefore\n\n") and text.endswith("\n\nafter\n")
    section = text[text.index(README_BEGIN): text.index(README_END)]
    assert "old table" not in section
    assert "LogisticRegression (breast cancer)" in section
    assert f"{quick_run['doc']['machine']['nproc']} x" in section
    assert "**P2**" in section and "latency.png" in section
    size = quick_run["doc"]["models"]["logreg"]["key_cache"]["evaluation_keys_bytes"]
    assert ("| **P4** hash-less client (keys by URI only): server key bytes, 1st / each later"
            f" request | {size} B / 0 B (3 q.) |") in section
    assert "**P7**" in section and "**P8**" in section


def test_render_readme_only_regenerates_from_latest(quick_run: dict[str, Any],
                                                    tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(README_TEXT)
    code = cli.main(["--render-readme", "--out-dir", str(quick_run["out_dir"]),
                     "--readme", str(readme)])
    assert code == 0
    assert readme.read_text() == quick_run["readme"].read_text()


def test_bench_fails_loudly_when_fhe_and_clear_disagree(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    real = ModelBench.clear_outputs

    def swapped_classes(self: ModelBench, x_raw: np.ndarray, model: Any = None) -> np.ndarray:
        return real(self, x_raw, model)[:, ::-1]

    monkeypatch.setattr(ModelBench, "clear_outputs", swapped_classes)
    code = cli.main(["--quick", "--models", "logreg", "--work-dir", str(tmp_path / "work"),
                     "--out-dir", str(tmp_path / "results"), "--no-readme"])
    assert code == cli.EXIT_MISMATCH
    err = capsys.readouterr().err
    assert "bench: FAILED: logreg limit (in-process): FHE disagrees with the clear quantised" in err
    assert not (tmp_path / "results").exists()


def test_check_agreement_passes_equal_outputs() -> None:
    proba = np.array([[0.9, 0.1], [0.2, 0.8]])
    agreement = check_agreement(proba, proba + 1e-9, what="x")
    assert agreement.rows == 2 and agreement.max_abs_gap == pytest.approx(1e-9)


@pytest.mark.parametrize(("fhe", "message"), [
    ([[0.1, 0.9], [0.2, 0.8]], r"on 1 of 2 rows \(row 0: FHE class 1 vs clear 0, \|gap\| 0.8\)"),
    ([[0.9, 0.1], [0.25, 0.75]], r"on 1 of 2 rows \(row 1: FHE class 1 vs clear 1, \|gap\| 0.05\)"),
    ([[0.9, 0.1]], r"FHE output shape \(1, 2\) != clear quantised shape \(2, 2\)"),
])
def test_check_agreement_fails_on_any_difference(fhe: list[list[float]], message: str) -> None:
    with pytest.raises(OutputMismatchError, match=message):
        check_agreement(np.array(fhe), np.array([[0.9, 0.1], [0.2, 0.8]]), what="m")


def test_default_models_leave_the_long_mnist_case_to_an_explicit_request() -> None:
    assert [c.name for c in cli.BenchSettings.from_args([]).cases] == ["logreg", "tree", "nn"]
    assert [c.name for c in cli.BenchSettings.from_args(["--models", "all"]).cases] == [
        "mnist", "logreg", "tree", "nn"]
    assert [c.name for c in cli.BenchSettings.from_args(["--models", "mnist"]).cases] == ["mnist"]


def test_settings_overrides_per_model() -> None:
    settings = cli.BenchSettings.from_args(["--models", "logreg,tree", "--reps", "tree=2",
                                            "--batch-reps", "0", "--no-readme"])
    reps = {c.name: (c.reps, c.batch_reps) for c in settings.cases}
    assert reps == {"logreg": (10, 0), "tree": (2, 0)}
    assert settings.readme is None


@pytest.mark.parametrize(("argv", "message"), [
    (["--models", "svm"],
     "--models: unknown svm; choose from mnist, logreg, tree, nn \\(or all\\)"),
    (["--models", "tree", "--reps", "nn=2"], "--reps 'nn=2': N must be >= 0 and MODEL one of tree"),
    (["--reps", "many"], r"--reps 'many': expected \[MODEL=\]N"),
])
def test_settings_reject_bad_flags(argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        cli.BenchSettings.from_args(argv)


def test_update_readme_needs_one_marker_pair(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    with pytest.raises(ReportError, match="must contain exactly one <!-- BEGIN bench -->"):
        update_readme(readme, "x")
    assert readme.read_text() == "# no markers\n"


def _targets_of(name: str, **targets: Any) -> dict[str, Any]:
    """The fields evaluate_targets reads of one model, P1-P6 passing, ``targets`` added."""
    from bench.report import evaluate_targets

    cache = {"client_uploads": 1, "server_downloads": 1}
    result = {"key_cache": {"all_queries": cache},
              "targets": {"p1_latency_ratio": 1.0, "p2_overhead_ms": 1.0, "p4_queries": 3,
                          "p5_key_load_ratio": None, "p6_cold_start_ratio": 1.0, **targets}}
    return {t.goal: t for t in evaluate_targets({name: result}) if t.goal in ("P7", "P8")}


@pytest.mark.parametrize(("name", "speedup", "loss", "met"), [
    ("tree", 2.0, 1.0, True), ("tree", 1.99, 0.0, False), ("nn", 4.0, 1.0, True),
    ("nn", 3.9, 0.0, False), ("nn", 5.0, 1.01, False), ("mnist", 8.0, 0.5, True),
    ("mnist", 7.9, 0.5, False), ("logreg", 1.0, 5.0, None)])
def test_p8_goals_per_model(name: str, speedup: float, loss: float, met: bool | None) -> None:
    p8 = _targets_of(name, p8_tuned_speedup=speedup, p8_accuracy_loss_points=loss,
                     p8_accuracy_default=0.95, p8_accuracy_tuned=0.95 - loss / 100)["P8"]
    assert p8.met is met


@pytest.mark.parametrize(("name", "ratio", "ceiling", "met"), [
    ("nn", 1.40, 1.55, True), ("nn", 1.39, 1.55, False), ("tree", 1.99, 5.0, False),
    ("tree", 2.0, 1.5, True), ("logreg", 1.0, 1.5, None)])
def test_p7_nn_is_judged_against_its_ceiling(name: str, ratio: float, ceiling: float,
                                             met: bool | None) -> None:
    p7 = _targets_of(name, p7_peer_ratio=ratio, p7_peer_ratio_at_limit=ceiling)["P7"]
    assert p7.met is met
    if name == "nn":
        assert p7.limit == f">= 0.9 x ceiling = {0.9 * ceiling:.2f}"
