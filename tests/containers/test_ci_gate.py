"""Without Docker the container tests skip and say why; under CI that is a failure."""

from __future__ import annotations

import pytest

from tests.containers.conftest import ENV_CI, unavailable


@pytest.mark.parametrize("value", ["", "0", "false"])
def test_outside_ci_a_missing_docker_skips_with_the_reason(
        value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_CI, value)
    with pytest.raises(pytest.skip.Exception, match="container tests need Docker: no daemon"):
        unavailable("no daemon")


@pytest.mark.parametrize("value", ["true", "1", "yes"])
def test_under_ci_a_missing_docker_fails(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_CI, value)
    with pytest.raises(pytest.fail.Exception, match="CI is set: no daemon"):
        unavailable("no daemon")
