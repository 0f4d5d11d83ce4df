"""The README's client snippet runs as written, so the docs cannot rot."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def client_snippet() -> str:
    """The one ```python block between the client section's markers."""
    text = README.read_text()
    section = text[text.index("<!-- BEGIN client -->") : text.index("<!-- END client -->")]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1, "the client README section must hold exactly one python block"
    return blocks[0]


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
    exec(compile(client_snippet(), str(README), "exec"), namespace)
    labels, proba, patients = namespace["labels"], namespace["proba"], namespace["patients"]
    assert isinstance(labels, np.ndarray) and labels.shape == (5,)
    scaled = namespace["model"].model.manifest.scaler.transform(patients)
    [reference] = references
    np.testing.assert_array_equal(labels, reference.predict(scaled, fhe="disable"))
    np.testing.assert_allclose(proba, reference.predict_proba(scaled, fhe="disable"),
                               rtol=0, atol=1e-12)
    assert "EncryptedPredictor(endpoint_name=" in capsys.readouterr().out
