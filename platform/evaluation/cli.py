"""Command-line options generated from a typed config dataclass: one flag per field, `--field-name`,
with the field's default, type, `help` and `choices` (from the field's metadata). Booleans get
`--flag/--no-flag`; tuples take several values; `X | None` fields accept the value or nothing."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """(inner type, optional?) of `X | None`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, required: tuple[str, ...] = ()) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, _ = _unwrap(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        kwargs: dict[str, Any] = {"dest": f.name, "help": f.metadata.get("help", "")}
        if f.name in required:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
            kwargs["help"] = f"{kwargs['help']} (default: {default!r})".strip()
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(tp) is tuple:
            elem = typing.get_args(tp)[0]
            parser.add_argument(flag, nargs="+", type=elem, **kwargs)
        else:
            parser.add_argument(flag, type=tp if tp in (int, float, str) else str, **kwargs)


def config_from_args(cls: type, args: argparse.Namespace):
    values = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name)
        if typing.get_origin(_unwrap(hints[f.name])[0]) is tuple and v is not None:
            v = tuple(v)
        values[f.name] = v
    return cls(**values)
