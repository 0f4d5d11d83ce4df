"""The client page's Python snippet runs as written, so the docs cannot rot."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

CLIENT_DOC = Path(__file__).resolve().parents[2] / "docs" / "client.md"


def client_snippet() -> str:
    """The one ```python block of docs/client.md that runs the local stack."""
    blocks = re.findall(r"```python\n(.*?)```", CLIENT_DOC.read_text(), flags=re.DOTALL)
    runnable = [b for b in blocks if "local_stack(" in b]
    assert len(runnable) == 1, "docs/client.md must hold exactly one runnable python block"
    return runnable[0]


@pytest.mark.slow
def test_readme_snippet_runs(capsys, monkeypatch) -> None:
    """The snippet's encrypted predictions equal the clear quantised model of its own stack."""
    import local_mode.stack

    real_stack, references = local_mode.stack.local_stack, []

    @contextmanager
    def stack_keeping_its_reference(*args: Any, **kwargs: Any) -> Iterator[Any]:
        with real_stack(*args, **kwargs) as stack:
            yield stack
            references.append(stack.reference()[0])  # before the stack is torn down

    monkeypatch.setattr(local_mode.stack, "local_stack", stack_keeping_its_reference)
    namespace: dict[str, Any] = {"__name__": "readme"}
    exec(compile(client_snippet(), str(CLIENT_DOC), "exec"), namespace)
    labels, proba, patients = namespace["labels"], namespace["proba"], namespace["patients"]
    assert isinstance(labels, np.ndarray) and labels.shape == (5,)
    scaled = namespace["model"].model.manifest.scaler.transform(patients)
    [reference] = references
    np.testing.assert_array_equal(labels, reference.predict(scaled, fhe="disable"))
    np.testing.assert_allclose(proba, reference.predict_proba(scaled, fhe="disable"),
                               rtol=0, atol=1e-12)
    assert "EncryptedPredictor(endpoint_name=" in capsys.readouterr().out
