"""Options of the operator scripts, read one way: flags > environment > config file > defaults.

A script describes its options once: a frozen dataclass (names, types, defaults; help texts in
:func:`option` fields, from which :func:`add_arguments` makes the flags) and an argparse parser
whose ``dest`` names are the dataclass's fields and whose defaults are all None, so a flag that
was not given is None. :func:`resolve` layers the flags given over the environment over the
config file (:func:`read_config`) over the dataclass defaults, converts every value to its
field's type and reports every problem in one :class:`OptionsError`. No argparse internals.

Types understood: ``str``, ``int``, ``float``, ``bool``, ``Path``, ``tuple[str, ...]`` (from the
environment: comma-separated) and ``dict[str, str]``, each optionally ``| None``.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import field, fields
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


class OptionsError(ValueError):
    """Options that cannot be used: the message lists every problem."""


def option(help: str, default: Any = None, **argparse_options: Any) -> Any:
    """A settings field that is also a command-line flag (see :func:`add_arguments`)."""
    return field(default=default, metadata={"help": help, **argparse_options})


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add ``--field-name`` for every :func:`option` field of ``cls``, typed by the field.

    Every default is None (the dataclass holds the real ones, named in the help), so
    :func:`given` tells the flags given from the others. ``bool`` fields are switches,
    ``tuple`` fields repeatable flags.
    """
    hints = typing.get_type_hints(cls)
    for item in fields(cls):
        if "help" not in item.metadata:
            continue
        extra = {key: value for key, value in item.metadata.items() if key != "help"}
        text = item.metadata["help"]
        if item.default not in (None, False, ()):
            text += f" (default {item.default})"
        kind = _base(hints[item.name])
        if kind is bool:
            extra.update(action="store_true", default=None)
        elif typing.get_origin(kind) is tuple:
            extra.update(action="append")
        elif kind in (int, float):
            extra.update(type=kind)
        parser.add_argument("--" + item.name.replace("_", "-"), help=text, **extra)


def read_config(path: Path, *, known: Iterable[str]) -> dict[str, Any]:
    """Read a JSON config file: one object whose keys are option names (``-`` or ``_``).

    Raises:
        OptionsError: unreadable, not an object, or keys that name no option (all listed).
    """
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise OptionsError(f"cannot read config file {path}: {exc}") from exc
    if not isinstance(doc, dict):
        raise OptionsError(f"config file {path} must hold a JSON object")
    config = {str(key).replace("-", "_"): value for key, value in doc.items()}
    names = set(known)
    unknown = sorted(set(config) - names)
    if unknown:
        raise OptionsError(f"unknown keys in {path}: {', '.join(unknown)} (known: "
                           f"{', '.join(sorted(names))})")
    return config


def given(args: argparse.Namespace) -> dict[str, Any]:
    """The flags given on the command line (a parser whose defaults are all None)."""
    return {name: value for name, value in vars(args).items() if value is not None}


def resolve(cls: type[T], *, flags: Mapping[str, Any], environ: Mapping[str, str],
            env_names: Mapping[str, str], config: Mapping[str, Any]) -> T:
    """Build ``cls`` from flags, else the environment (``env_names``: field -> variable), else
    the config, else the field's default.

    Raises:
        OptionsError: values that do not have their field's type (every one listed).
    """
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    problems: list[str] = []
    for item in fields(cls):  # type: ignore[arg-type]
        env_name = env_names.get(item.name)
        if item.name in flags:
            source, value, text = item.name, flags[item.name], False
        elif env_name and environ.get(env_name):
            source, value, text = env_name, environ[env_name], True
        elif item.name in config:
            source, value, text = item.name, config[item.name], False
        else:
            continue
        try:
            values[item.name] = _convert(value, hints[item.name], text=text)
        except (TypeError, ValueError) as exc:
            problems.append(f"{source} must be {exc}, got {value!r}")
    if problems:
        raise OptionsError("; ".join(problems))
    return cls(**values)


def _base(hint: Any) -> Any:
    """``X`` for ``X | None``; ``hint`` otherwise."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return hint


def _convert(value: Any, hint: Any, *, text: bool) -> Any:
    """``value`` as type ``hint``; raises ValueError("<type name>") when it is not one."""
    if value is None and type(None) in typing.get_args(hint):
        return None
    hint = _base(hint)
    origin = typing.get_origin(hint) or hint
    if origin is tuple:
        items = [v for v in value.split(",") if v] if text and isinstance(value, str) else value
        items = [items] if isinstance(items, str) else items
        if not isinstance(items, list | tuple) or not all(isinstance(v, str) for v in items):
            raise ValueError("a list of strings")
        return tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError("an object")
        return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}
    return _scalar(value, origin, text=text)


def _scalar(value: Any, kind: type, *, text: bool) -> Any:
    if kind is bool:
        if text and isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if not isinstance(value, bool):
            raise ValueError("bool")
        return value
    if kind in (int, float):
        if text and isinstance(value, str):
            try:
                return kind(value.strip())
            except ValueError:
                raise ValueError(kind.__name__) from None
        allowed = (int, float) if kind is float else (int,)
        if isinstance(value, bool) or not isinstance(value, allowed):
            raise ValueError(kind.__name__)
        return kind(value)
    if kind is Path:
        if not isinstance(value, str | Path):
            raise ValueError("a path")
        return Path(value)
    if not isinstance(value, str):
        raise ValueError("str")
    return value
