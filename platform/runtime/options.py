"""The one way a typed config becomes command-line flags and back: every job, the demo, Table 1 and serve use it.

A config is a dataclass whose fields carry their help text (`opt(default, "help")`, or `required("help")` for a
field the user must give). `parse_config(Cls, argv, doc)` builds the parser, parses, builds the config and runs
its `check()`; a bad value exits with argparse's usage line and the check's message.

Flags: `max_steps` -> `--max-steps`; booleans get `--flag/--no-flag`; `tuple[T, ...]` takes several values
(`--queries "playing cello" "playing flute"`, none for the empty tuple); `T | None` takes a value or stays None;
`choices=` in `opt` restricts the values; `flag="fps"` spells the option differently from the field (a short
name users already type); `internal(default)` marks a field no command line sets (test hooks). `defaults` (a
job's preset) overrides the dataclass defaults, so `--help` shows what that job really runs with.

Why our own 100 lines rather than tyro or jsonargparse: both read help from docstrings or `Annotated`
metadata, not from `field(metadata=...)`, so every config (about 200 fields) would be rewritten to move its
help; what the jobs need (presets as overrides, `--no-flag`, checks with the usage line) is a thin layer on
argparse, which the standard library keeps.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from .console import set_verbose

T = TypeVar("T")


def opt(default: Any, help: str, **extra: Any) -> Any:  # noqa: A002 - mirrors argparse's keyword
    """A config field with its command-line help (and argparse extras such as `choices`)."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use immutable defaults (tuples) for config fields")
    return dataclasses.field(default=default, metadata={"help": help, **extra})


def required(help: str, **extra: Any) -> Any:  # noqa: A002
    """A config field without a default: its flag must be given."""
    return dataclasses.field(metadata={"help": help, **extra})


def internal(default: Any) -> Any:
    """A config field kept off the command line (and out of the config's repr): it keeps its default there."""
    return dataclasses.field(default=default, repr=False, metadata={"cli": False})


def on_command_line(f: dataclasses.Field) -> bool:
    return f.init and f.metadata.get("cli", True)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the job's docstring layout and shows every default."""


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """(T, True) for `T | None`, else (tp, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"a config field may be T or T | None, not {tp}")
        return args[0], True
    return tp, False


def _is_tuple(tp: Any) -> bool:
    return typing.get_origin(tp) is tuple


def _tuple_element(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not Ellipsis]
    if len(set(args)) != 1:
        raise TypeError(f"tuple config fields must be tuple[T, ...], not {tp}")
    return args[0]


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def field_flag(f: dataclasses.Field) -> str:
    """The option of a config field: `--max-steps` for `max_steps`, or the `flag=` its `opt` names."""
    return flag_name(f.metadata.get("flag", f.name))


def check_choices(config: Any) -> None:
    """Raise ValueError when a field declared with `choices=` holds another value: a config built in Python (a
    preset, the demo's stage configs, a test) meets the same rule as one parsed from flags."""
    for f in dataclasses.fields(config):
        choices = f.metadata.get("choices")
        value = getattr(config, f.name)
        if choices is not None and value is not None and value not in choices:  # None: "the default" fields
            raise ValueError(f"{field_flag(f)} must be one of {tuple(choices)}, got {value!r}")


def check_all(checks: Sequence[tuple[bool, str]]) -> None:
    """Raise ValueError with the message of the first (condition, message) pair whose condition is false: a
    config's `validate` lists its bounds as data, one line each."""
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def add_config_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, defaults: Mapping[str, Any] | None = None
) -> None:
    """One option per field of `cls`; `defaults` overrides the dataclass defaults."""
    hints = typing.get_type_hints(cls)
    defaults = defaults or {}
    unknown = sorted(set(defaults) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"defaults name no field of {cls.__name__}: {unknown}")
    for f in dataclasses.fields(cls):
        if not on_command_line(f):
            continue
        tp, _optional = _unwrap_optional(hints[f.name])
        kwargs: dict[str, Any] = {"dest": f.name, "help": f.metadata.get("help", "")}
        if f.name in defaults:
            kwargs["default"] = defaults[f.name]
        elif f.default is not dataclasses.MISSING:
            kwargs["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            kwargs["default"] = f.default_factory()
        else:
            kwargs["required"] = True
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if tp is bool:
            parser.add_argument(field_flag(f), action=argparse.BooleanOptionalAction, **kwargs)
        elif _is_tuple(tp):
            parser.add_argument(field_flag(f), nargs="*", type=_tuple_element(tp), **kwargs)
        elif tp in (int, float, str):
            parser.add_argument(field_flag(f), type=tp, **kwargs)
        else:
            raise TypeError(f"config field {cls.__name__}.{f.name}: no command-line form for {tp}")


def build_parser(
    cls: type, description: str | None, defaults: Mapping[str, Any] | None = None
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    add_config_arguments(parser, cls, defaults)
    parser.add_argument(
        "-v",
        "--verbose",
        action=_VerboseAction,
        help="show everything on the console (Ray's and the workers' output, library logs); by default they go to "
        "the log file whose path the job prints first (also: CLIPSYNTH_VERBOSE=1)",
    )
    return parser


class _VerboseAction(argparse.Action):
    """`-v`: a console setting, not part of the job's config; set in the environment, which Ray workers and the
    stages' own processes inherit (clipsynth_platform.runtime.console)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        set_verbose(True)


def config_from_namespace(cls: type[T], args: argparse.Namespace) -> T:
    """The config the parsed flags describe (not yet checked)."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not on_command_line(f):
            continue
        value = getattr(args, f.name)
        if _is_tuple(_unwrap_optional(hints[f.name])[0]) and value is not None:
            value = tuple(value)
        values[f.name] = value
    return cls(**values)


def check_config(config: T) -> T:
    """Run the config's own `check()` when it has one (it raises ValueError for values no run can use)."""
    check = getattr(config, "check", None)
    if callable(check):
        check()
    return config


def parse_config(
    cls: type[T],
    argv: Sequence[str] | None,
    description: str | None,
    defaults: Mapping[str, Any] | None = None,
    parser: argparse.ArgumentParser | None = None,
) -> T:
    """Parse the command line into a checked config; a bad value exits with the usage line and the reason.

    Give `parser` (already holding the config's options and any extra ones) to read extra flags afterwards."""
    parser = parser or build_parser(cls, description, defaults)
    args = parser.parse_args(argv)
    try:
        return check_config(config_from_namespace(cls, args))
    except ValueError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits


def config_from_dict(cls: type[T], values: Mapping[str, Any]) -> T:
    """Rebuild a config from `dataclasses.asdict` output (JSON turns tuples into lists)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {unknown}")
    hints = typing.get_type_hints(cls)
    fixed = {
        k: tuple(v) if v is not None and _is_tuple(_unwrap_optional(hints[k])[0]) else v for k, v in values.items()
    }
    return cls(**fixed)


def fields_from(cls: type[T], source: Any, **overrides: Any) -> T:
    """A `cls` whose fields take `source`'s attributes of the same names, then `overrides`.

    For a config built from a larger one (a job's settings for one stage): the shared fields are named once,
    in `cls`, instead of copied by hand. A field of `cls` that `source` lacks keeps its default.
    """
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {unknown}")
    values = {n: getattr(source, n) for n in names if n not in overrides and hasattr(source, n)}
    return cls(**values, **overrides)


def config_json(config: Any) -> str:
    """The config as the JSON every job prints at start and logs to MLflow."""
    return json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True, default=str)
