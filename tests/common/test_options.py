"""The operator scripts' options: flags > environment > config file > defaults, typed."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.options import OptionsError, given, read_config, resolve


@dataclass(frozen=True)
class Example:
    name: str | None = None
    count: int = 1
    ratio: float = 0.5
    dry_run: bool = False
    prefixes: tuple[str, ...] = ()
    out: Path | None = None


ENV = {"name": "X_NAME", "count": "X_COUNT", "ratio": "X_RATIO", "dry_run": "X_DRY_RUN",
       "prefixes": "X_PREFIXES", "out": "X_OUT"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name")
    parser.add_argument("--count", type=int)
    parser.add_argument("--dry-run", action="store_true", default=None)
    parser.add_argument("--prefixes", action="append")
    return parser


def test_flags_beat_env_which_beats_config_which_beats_defaults() -> None:
    flags = given(_parser().parse_args(["--name", "flag", "--prefixes", "s3://a"]))
    environ = {"X_NAME": "env", "X_COUNT": "7", "X_PREFIXES": "s3://e,s3://f", "X_DRY_RUN": "yes"}
    config = {"name": "config", "count": 3, "ratio": 2}
    settings = resolve(Example, flags=flags, environ=environ, env_names=ENV, config=config)
    assert settings == Example(name="flag", count=7, ratio=2.0, dry_run=True,
                               prefixes=("s3://a",), out=None)


def test_an_empty_variable_is_not_set() -> None:
    settings = resolve(Example, flags={}, environ={"X_COUNT": ""}, env_names=ENV,
                       config={"count": 4})
    assert settings.count == 4


def test_every_mistyped_value_is_listed() -> None:
    with pytest.raises(OptionsError, match=r"X_COUNT must be int, got 'many'; X_DRY_RUN must be"
                                           r" bool, got 'maybe'; prefixes must be a list of"
                                           r" strings, got \[1\]"):
        resolve(Example, flags={}, environ={"X_COUNT": "many", "X_DRY_RUN": "maybe"},
                env_names=ENV, config={"prefixes": [1]})
    with pytest.raises(OptionsError, match="count must be int, got True"):
        resolve(Example, flags={}, environ={}, env_names=ENV, config={"count": True})


def test_config_keys_take_dashes_and_unknown_ones_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"dry-run": True, "out": "o"}))
    assert read_config(path, known=ENV) == {"dry_run": True, "out": "o"}
    path.write_text(json.dumps({"nmae": "x", "count": 1}))
    with pytest.raises(OptionsError, match=r"unknown keys in .*c\.json: nmae \(known: count"):
        read_config(path, known=ENV)
    path.write_text("[1]")
    with pytest.raises(OptionsError, match="must hold a JSON object"):
        read_config(path, known=ENV)
