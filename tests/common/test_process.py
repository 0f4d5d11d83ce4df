"""Exit statuses stay honest after an in-process FHE run (see common/process.py for the cause).

Each test runs a real process: pytest on a tiny suite, ``make test``, ``bash .ci/run`` and every
entry point of the kit, after a circuit has executed in that same process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

TINY_SUITE = textwrap.dedent('''
    from concrete import fhe


    def test_executes_a_circuit():
        circuit = fhe.compiler({"x": "encrypted"})(lambda x: x + 1).compile(range(8))
        assert circuit.encrypt_run_decrypt(3) == 4


    def test_fails():
        assert 1 == 2
''')

# Executes a circuit, then runs MODULE as ``python -m MODULE ARGS...`` in the same process.
DRIVER = textwrap.dedent('''
    import runpy, sys
    from concrete import fhe

    circuit = fhe.compiler({"x": "encrypted"})(lambda x: x + 1).compile(range(8))
    assert circuit.encrypt_run_decrypt(3) == 4
    sys.argv = sys.argv[1:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
''')


@pytest.fixture
def tiny_suite(tmp_path: Path) -> Path:
    """A folder holding one test that executes a circuit and one that fails."""
    suite = tmp_path / "tiny"
    suite.mkdir()
    (suite / "test_tiny.py").write_text(TINY_SUITE)
    return suite


def _run(argv: list[str], *, cwd: Path, env: dict[str, str] | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env={**os.environ, **(env or {})}, text=True,
                          capture_output=True, timeout=timeout, check=False)


def test_disarm_finds_the_handler_only_once_concrete_is_imported() -> None:
    probe = _run([sys.executable, "-c", textwrap.dedent('''
        from common.process import disarm_concrete_exit_handler
        print(disarm_concrete_exit_handler())
        import concrete.compiler
        print(disarm_concrete_exit_handler())
    ''')], cwd=REPO)
    assert probe.stdout.split() == ["False", "True"], probe.stderr


def test_pytest_exits_non_zero_when_a_test_fails_after_an_fhe_run(tiny_suite: Path) -> None:
    result = _run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(tiny_suite)],
                  cwd=tiny_suite)
    assert "1 failed, 1 passed" in result.stdout
    assert result.returncode == 1, result.stdout[-2000:]


def test_without_the_plugin_the_same_run_exits_zero(tiny_suite: Path) -> None:
    """The control: concrete's handler really does overwrite the status (else drop the plugin)."""
    result = _run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                   "-p", "no:fhe-exit-status", str(tiny_suite)], cwd=tiny_suite)
    assert "1 failed, 1 passed" in result.stdout
    assert result.returncode == 0


def test_make_test_exits_non_zero_when_a_test_fails(tiny_suite: Path) -> None:
    result = _run(["make", "test", f"PYTEST_ARGS=-p no:cacheprovider {tiny_suite}"], cwd=REPO)
    assert "1 failed, 1 passed" in result.stdout
    assert result.returncode != 0


@pytest.mark.parametrize("disable_plugin", [False, True], ids=["honest-status", "status-lies"])
def test_ci_run_fails_on_a_failed_test(tiny_suite: Path, disable_plugin: bool) -> None:
    """.ci/run fails on pytest's status and, as a second guard, on its summary line."""
    args = f"-p no:cacheprovider {'-p no:fhe-exit-status ' if disable_plugin else ''}{tiny_suite}"
    result = _run(["bash", ".ci/run"], cwd=REPO, env={"PYTEST_ARGS": args}, timeout=900)
    assert "1 failed, 1 passed" in result.stdout
    assert result.returncode != 0
    if disable_plugin:
        assert "pytest reported failed or error tests" in result.stderr


ENTRY_POINTS = {
    # module: (bad arguments, extra environment, exit status): every one is a bad input, so
    # every one exits EXIT_BAD_INPUT (common/process.py gives every entry point the same codes).
    "training.training_script": (["--model-dir", "{tmp}/model", "--train", "{tmp}/missing",
                                  "--failure-file", "{tmp}/failure"], {}, 2),
    "start_training": (["--local"], {}, 2),
    "deploy_endpoint": (["--local"], {}, 2),
    "iam.render": (["--out", "{tmp}/iam"], {}, 2),
    "client": (["predict", "--endpoint-name", "e", "--model", "s3://b/m.tar.gz",
                "--s3-prefix", "s3://b/p", "--input", "{tmp}/missing.npy",
                "--output", "{tmp}/out.npy"], {}, 2),
    "local_mode.demo": (["--hyperparameter", "no-equals-sign"], {}, 2),
    "bench": (["--models", "no-such-model"], {}, 2),
    "prepare_data": (["--source", "{tmp}/missing.npz", "--out-dir", "{tmp}/out"], {}, 2),
    "inference.serve": ([], {"SAGEMAKER_MODEL_SERVER_WORKERS": "many"}, 2),
}


@pytest.mark.parametrize("module", sorted(ENTRY_POINTS))
def test_entry_point_keeps_its_error_status_after_an_fhe_run(module: str, tmp_path: Path) -> None:
    args, env, status = ENTRY_POINTS[module]
    argv = [arg.format(tmp=tmp_path) for arg in args]
    result = _run([sys.executable, "-c", DRIVER, module, *argv], cwd=REPO, env=env)
    assert result.returncode == status, result.stderr[-3000:]


# Executes a circuit (when asked), then runs an entry point that is interrupted (Ctrl-C).
INTERRUPTED = textwrap.dedent('''
    import sys
    from common.process import run_main

    if sys.argv[1] == "after-fhe":
        from concrete import fhe

        circuit = fhe.compiler({"x": "encrypted"})(lambda x: x + 1).compile(range(8))
        assert circuit.encrypt_run_decrypt(3) == 4


    def main():
        raise KeyboardInterrupt


    run_main(main)
''')


@pytest.mark.parametrize("when", ["after-fhe", "no-fhe"])
def test_an_interrupted_entry_point_exits_130(when: str) -> None:
    """Ctrl-C is 128 + SIGINT, as a shell reports it, not a plain failure (1)."""
    from common.process import EXIT_INTERRUPTED

    result = _run([sys.executable, "-c", INTERRUPTED, when], cwd=REPO)
    assert result.returncode == EXIT_INTERRUPTED == 130, result.stderr[-2000:]


# Executes a circuit, then runs pytest in the same process (the plugin must keep its status).
PYTEST_AFTER_FHE = textwrap.dedent('''
    import sys
    from concrete import fhe

    circuit = fhe.compiler({"x": "encrypted"})(lambda x: x + 1).compile(range(8))
    assert circuit.encrypt_run_decrypt(3) == 4
    import pytest

    sys.exit(pytest.main(sys.argv[1:]))
''')
PYTEST_STATUSES = {
    # pytest's ExitCode: what makes it, and the status it must keep
    "interrupted": ("def test_x():\n    raise KeyboardInterrupt\n", [], 2),
    "internal-error": ("def test_x():\n    pass\n",
                       ["-p", "internal_error_plugin"], 3),
    "usage-error": ("def test_x():\n    pass\n", ["no-such-dir/"], 4),
    "no-tests-collected": ("def test_x():\n    pass\n", ["-k", "no_such_test"], 5),
}
INTERNAL_ERROR_PLUGIN = "def pytest_collection_modifyitems(items):\n    raise RuntimeError('x')\n"


@pytest.mark.parametrize("case", sorted(PYTEST_STATUSES))
def test_pytest_keeps_each_of_its_own_statuses_after_an_fhe_run(case: str,
                                                                tmp_path: Path) -> None:
    """2 interrupted, 3 internal error, 4 usage error, 5 no tests: never collapsed to 1 (or 0)."""
    source, args, status = PYTEST_STATUSES[case]
    (tmp_path / "test_one.py").write_text(source)
    (tmp_path / "internal_error_plugin.py").write_text(INTERNAL_ERROR_PLUGIN)
    result = _run([sys.executable, "-c", PYTEST_AFTER_FHE, "-p", "no:cacheprovider", *args],
                  cwd=tmp_path, env={"PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])})
    assert result.returncode == status, result.stdout[-2000:] + result.stderr[-2000:]
