"""The client's exception tree is the one its module docstring documents."""

from __future__ import annotations

import builtins
import re

import pytest

from client import errors

# "├── NameError(BuiltinError)   text" or "└── NameError   text", at any depth.
DOCUMENTED = re.findall(r"── (\w+)(?:\((\w+)\))?", errors.__doc__ or "")


def test_every_error_class_is_documented() -> None:
    classes = {name for name, value in vars(errors).items()
               if isinstance(value, type) and issubclass(value, Exception)
               and value.__module__ == errors.__name__}
    assert {name for name, _ in DOCUMENTED} == classes - {"EncryptedInferenceError"}


@pytest.mark.parametrize(("name", "builtin"), DOCUMENTED, ids=[n for n, _ in DOCUMENTED])
def test_error_derives_from_the_documented_builtin(name: str, builtin: str) -> None:
    cls = getattr(errors, name)
    assert issubclass(cls, errors.EncryptedInferenceError)
    expected = getattr(builtins, builtin) if builtin else None
    if expected is None:  # documented under its parent only (ServiceUnavailableError's parent)
        return
    assert issubclass(cls, expected)
    error = cls("S3 said no") if name != "InferenceFailedError" else cls("no", status=500)
    assert isinstance(error, expected) and "no" in str(error)


def test_every_error_but_the_base_has_a_builtin_base() -> None:
    for name, builtin in DOCUMENTED:
        cls = getattr(errors, name)
        assert builtin or any(issubclass(cls, b) for b in (OSError, ValueError, RuntimeError,
                                                           TypeError)), name
