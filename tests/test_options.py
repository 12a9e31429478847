"""The one config-to-flags mechanism (clipsynth_platform.runtime.options): types, defaults, checks, round trips."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import pytest

from clipsynth_platform.runtime.options import build_parser, config_from_dict, config_json, opt, parse_config, required


@dataclass(frozen=True)
class Example:
    data: str = required("where the data is")
    steps: int = opt(10, "how many steps")
    rate: float = opt(0.5, "a rate")
    fast: bool = opt(False, "go fast")
    mode: str = opt("a", "a mode", choices=("a", "b"))
    queries: tuple[str, ...] = opt((), "text queries")
    sizes: tuple[int, ...] = opt((1, 2), "sizes")
    guidance: float | None = opt(None, "guidance; default: the bundle's")

    def check(self) -> None:
        if self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")


def test_every_field_type_parses_to_its_value():
    argv = ["--data", "d", "--steps", "3", "--rate", "0.25", "--fast", "--mode", "b", "--sizes", "4", "5", "6"]
    cfg = parse_config(Example, [*argv, "--guidance", "2.5", "--queries", "x y", "z"], None)
    assert cfg == Example("d", 3, 0.25, True, "b", ("x y", "z"), (4, 5, 6), 2.5)
    assert isinstance(cfg.queries, tuple) and isinstance(cfg.sizes, tuple)


def test_defaults_and_overrides():
    cfg = parse_config(Example, ["--data", "d"], None)
    assert (cfg.steps, cfg.fast, cfg.queries, cfg.sizes, cfg.guidance) == (10, False, (), (1, 2), None)
    # a job's preset overrides the dataclass default, and --help shows the override
    parser = build_parser(Example, "doc", {"steps": 99, "fast": True})
    assert "(default: 99)" in parser.format_help()
    cfg = parse_config(Example, ["--data", "d", "--no-fast"], None, {"steps": 99, "fast": True})
    assert (cfg.steps, cfg.fast) == (99, False)
    assert parse_config(Example, ["--data", "d", "--queries"], None, {"queries": ("q",)}).queries == ()
    with pytest.raises(ValueError, match=r"no field of Example: \['stepz'\]"):
        build_parser(Example, None, {"stepz": 1})


def test_bad_values_exit_with_the_reason(capsys):
    for argv, reason in (
        ([], "the following arguments are required: --data"),
        (["--data", "d", "--mode", "c"], "invalid choice: 'c'"),
        (["--data", "d", "--steps", "x"], "invalid int value: 'x'"),
        (["--data", "d", "--steps", "0"], "--steps must be >= 1, got 0"),
    ):
        with pytest.raises(SystemExit) as exc:
            parse_config(Example, argv, None)
        assert exc.value.code == 2
        assert reason in capsys.readouterr().err


def test_json_round_trip_restores_tuples():
    cfg = Example("d", queries=("a", "b"), sizes=(3,))
    back = config_from_dict(Example, json.loads(config_json(cfg)))
    assert back == cfg and isinstance(back.sizes, tuple)
    with pytest.raises(ValueError, match=r"unknown Example fields: \['extra'\]"):
        config_from_dict(Example, {**dataclasses.asdict(cfg), "extra": 1})


def test_fields_without_a_command_line_form_are_refused():
    @dataclass
    class Bad:
        mapping: dict = dataclasses.field(default_factory=dict)

    with pytest.raises(TypeError, match="no command-line form"):
        build_parser(Bad, None)
    with pytest.raises(TypeError, match="immutable defaults"):
        opt([], "a list")


def test_a_field_may_name_its_flag_and_internal_fields_have_none(capsys):
    from clipsynth_platform.runtime.options import internal

    @dataclass
    class Named:
        frames_per_second: float = opt(1.0, "frames per second", flag="fps")
        with_audio: bool = opt(True, "store audio", flag="audio")
        hook: bool = internal(False)

    cfg = parse_config(Named, ["--fps", "2.5", "--no-audio"], None)
    assert (cfg.frames_per_second, cfg.with_audio, cfg.hook) == (2.5, False, False)
    assert "hook" not in repr(cfg)
    help_text = build_parser(Named, None).format_help()
    assert "--fps" in help_text and "--frames-per-second" not in help_text and "--hook" not in help_text
    for argv in (["--frames-per-second", "2"], ["--hook"]):
        with pytest.raises(SystemExit):
            parse_config(Named, argv, None)
        assert "unrecognized arguments" in capsys.readouterr().err


def test_fields_from_copies_the_same_named_attributes_then_the_overrides():
    from types import SimpleNamespace

    from clipsynth_platform.runtime.options import fields_from

    @dataclasses.dataclass
    class Stage:
        lr: float = 1.0
        steps: int = 10
        name: str = "default"

    source = SimpleNamespace(lr=0.5, steps=99, unrelated="ignored")
    assert fields_from(Stage, source) == Stage(lr=0.5, steps=99, name="default")  # name: absent, its default
    assert fields_from(Stage, source, steps=3) == Stage(lr=0.5, steps=3)
    with pytest.raises(ValueError, match=r"unknown Stage fields: \['stepz'\]"):
        fields_from(Stage, source, stepz=3)


def test_check_choices_holds_configs_built_in_python_to_their_declared_choices():
    from clipsynth_platform.runtime.options import check_choices
    from clipsynth_platform.train.config import DiffusionTrainConfig, HiFiGANTrainConfig

    check_choices(Example("d"))  # the defaults are among the choices, and None stands for "the default"
    with pytest.raises(ValueError, match=r"^--mode must be one of \('a', 'b'\), got 'c'$"):
        check_choices(Example("d", mode="c"))
    # the training configs' own check() runs it: a preset or a stage config that names no such value is refused
    with pytest.raises(ValueError, match=r"--variant must be one of \('image', 'text', 'hybrid'\), got 'audio'"):
        DiffusionTrainConfig(data="d", variant="audio").check()
    with pytest.raises(ValueError, match=r"--placement-strategy must be one of .*got 'STRICT_PACK'"):
        HiFiGANTrainConfig(data="d", placement_strategy="STRICT_PACK").check()
    DiffusionTrainConfig(data="d").check()
