"""The README's client snippet runs as written, so the docs cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

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
def test_readme_snippet_runs(capsys) -> None:
    namespace: dict[str, object] = {"__name__": "readme"}
    exec(compile(client_snippet(), str(README), "exec"), namespace)
    labels, proba = namespace["labels"], namespace["proba"]
    assert isinstance(labels, np.ndarray) and labels.shape == (5,)
    assert set(labels.tolist()) <= {0, 1}
    assert proba.shape == (5, 2)
    np.testing.assert_array_equal(labels, np.argmax(proba, axis=1))
    assert "EncryptedPredictor(endpoint_name=" in capsys.readouterr().out
