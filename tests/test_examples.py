"""The examples run as documented (so they cannot rot): the script and the notebooks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import nbformat
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
LOCAL_NOTEBOOK = EXAMPLES / "encrypted_inference_local.ipynb"
AWS_NOTEBOOK = EXAMPLES / "encrypted_inference_aws.ipynb"
# FHE and the clear quantised model compute the same integers; only float rounding differs.
PROBA_ATOL = 1e-6


def _example_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    env.pop("AWS_ENDPOINT_URL_S3", None)
    return env


@pytest.mark.slow
def test_encrypted_inference_example_runs_end_to_end() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "encrypted_inference.py")],
        capture_output=True, text=True, cwd=ROOT, env=_example_env(), timeout=600, check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "refused: X has 5 features per row but the model expects 30" in result.stdout
    assert "second predictor: keygens 0 evaluation-key uploads 0" in result.stdout


# -- the notebooks -------------------------------------------------------------------------


def _tags(cell: Any) -> list[str]:
    return list(cell.metadata.get("tags", []))


def _tagged(nb: Any, tag: str) -> Any:
    [cell] = [c for c in nb.cells if tag in _tags(c)]
    return cell


def _stdout(cell: Any) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def test_notebooks_are_committed_without_outputs() -> None:
    paths = sorted(EXAMPLES.glob("*.ipynb"))
    assert paths == [AWS_NOTEBOOK, LOCAL_NOTEBOOK]
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code, path.name
        assert all(c.outputs == [] and c.execution_count is None for c in code), path.name


def test_the_aws_notebook_differs_only_in_its_environment() -> None:
    local, aws = (nbformat.read(p, as_version=4) for p in (LOCAL_NOTEBOOK, AWS_NOTEBOOK))
    assert [_tags(c) for c in local.cells] == [_tags(c) for c in aws.cells]
    differing = [_tags(a) for a, b in zip(local.cells, aws.cells, strict=True)
                 if a.source != b.source]
    assert differing == [["intro"], ["environment"]]
    environment = _tagged(aws, "environment").source
    assert "boto3.Session()" in environment and "stack" not in environment
    assert "s3_endpoint_url" not in environment and "runtime_endpoint_url" not in environment


# Run in the notebook's kernel just before its teardown: saves what the notebook computed and
# the training job's archives, so the test checks the FHE results with its own oracle.
_EVIDENCE = """
import json as _json
_s3 = stack.s3_client()
for _uri, _name in ((stack.model_data, "model.tar.gz"), (stack.output_data, "output.tar.gz")):
    _bucket, _key = _uri.removeprefix("s3://").split("/", 1)
    _s3.download_file(_bucket, _key, {out!r} + "/" + _name)
with open({out!r} + "/notebook.json", "w") as _file:
    _json.dump({{"proba": proba.tolist(), "patients": patients.tolist(),
                "endpoint_pid": stack.endpoint_pid, "work_dir": str(stack.work_dir)}}, _file)
"""


def _clear_quantised(evidence: Path, patients: np.ndarray) -> np.ndarray:
    """The clear quantised model's probabilities, from the training job's own archives."""
    from concrete.ml.common.serialization.loaders import loads

    from common.artifact import read_manifest

    model_dir = evidence / "model"
    with tarfile.open(evidence / "model.tar.gz") as tar:
        tar.extractall(model_dir, filter="data")
    with tarfile.open(evidence / "output.tar.gz") as tar:
        member = tar.extractfile("reference_model.json")
        assert member is not None
        reference = loads(member.read().decode())
    scaled = read_manifest(model_dir).scaler.transform(patients)
    return np.asarray(reference.predict_proba(scaled, fhe="disable"))


@pytest.mark.slow
def test_local_notebook_runs_in_a_real_kernel(tmp_path: Path) -> None:
    from nbclient import NotebookClient

    nb = nbformat.read(LOCAL_NOTEBOOK, as_version=4)
    client = NotebookClient(nb, kernel_name="python3", timeout=600,
                            resources={"metadata": {"path": str(ROOT)}})
    with client.setup_kernel(env=_example_env()):
        for index, cell in enumerate(nb.cells):
            if "teardown" in _tags(cell):
                client.execute_cell(nbformat.v4.new_code_cell(_EVIDENCE.format(out=str(tmp_path))),
                                    index)
            client.execute_cell(cell, index)

    seen = json.loads((tmp_path / "notebook.json").read_text())
    proba, patients = np.asarray(seen["proba"]), np.asarray(seen["patients"])
    clear = _clear_quantised(tmp_path, patients)
    assert proba.shape == clear.shape == (10, 2)
    assert (proba.argmax(axis=1) == clear.argmax(axis=1)).all()
    np.testing.assert_allclose(proba, clear, rtol=0, atol=PROBA_ATOL)

    # What the notebook shows its reader.
    keys = _stdout(_tagged(nb, "keys"))
    assert "evaluation keys:" in keys and "generated now: True" in keys
    assert "predicted    [" in _stdout(_tagged(nb, "predict"))
    check = _stdout(_tagged(nb, "check"))
    assert "FHE vs clear quantised model: same class for 10/10 patients" in check, check
    assert float(check.split("largest |difference| ")[1].split()[0].rstrip(",")) <= PROBA_ATOL
    assert any("image/png" in o.get("data", {}) for o in _tagged(nb, "plot").outputs)
    assert _stdout(_tagged(nb, "teardown")) == "closed\n"
    # Teardown stopped the endpoint and removed the stack's folder.
    with pytest.raises(ProcessLookupError):
        os.kill(seen["endpoint_pid"], 0)
    assert not Path(seen["work_dir"]).exists()
