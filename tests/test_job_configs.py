"""Every job's flags come from its config dataclass (clipsynth_platform.runtime.options): defaults, renamed flags,
tuple values and checks, read back as the config the job runs with."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from clipsynth_platform.experiments.demo import DemoConfig
from clipsynth_platform.experiments.table1 import CompareConfig, Table1Config
from clipsynth_platform.runtime.options import build_parser, parse_config
from clipsynth_platform.train.modality_gap import GapFitJobConfig

JOBS = Path(__file__).resolve().parents[1] / "jobs"
# migrated by the evaluation's own config module (platform/evaluation/cli.py)
OWN_PARSERS = {"evaluate.py", "train_mel_classifier.py"}


def test_no_job_spells_out_argparse():
    for job in sorted(JOBS.glob("*.py")):
        if job.name in OWN_PARSERS:
            continue
        tree = ast.parse(job.read_text())
        calls = [
            n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in ("add_argument", "ArgumentParser")
        ]
        assert not calls, f"{job.name} builds its own argparse"
        assert ast.get_docstring(tree), f"{job.name} has no docstring (its --help)"


def test_demo_flags_default_to_the_config_and_take_space_separated_tuples():
    assert parse_config(DemoConfig, [], None) == DemoConfig()
    cfg = parse_config(
        DemoConfig, ["--classes", "violin", "cello", "--queries", "playing violin", "--keep-serving"], None
    )
    assert (cfg.classes, cfg.queries, cfg.keep_serving) == (("violin", "cello"), ("playing violin",), True)
    assert cfg.query_list() == [("playing violin", "violin")]
    help_text = build_parser(DemoConfig, None).format_help()
    for f in dataclasses.fields(DemoConfig):
        assert "--" + f.name.replace("_", "-") in help_text, f.name


def test_table1_flags_and_checks(capsys):
    cfg = parse_config(Table1Config, ["--data", "d", "--variants", "image", "text", "--gap-methods", "shift"], None)
    assert (cfg.data, cfg.variants, cfg.gap_methods, cfg.lr) == ("d", ("image", "text"), ("shift",), 3e-3)
    with pytest.raises(SystemExit):
        parse_config(Table1Config, ["--data", "d", "--variants", "audio"], None)
    assert "variants must be among" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(Table1Config, [], None)
    assert "the following arguments are required: --data" in capsys.readouterr().err


def test_compare_and_gap_fit_flags_keep_their_spelling():
    cfg = parse_config(CompareConfig, ["--out", "o", "--no-mlflow", "--exclude-random"], None)
    assert (cfg.out, cfg.experiment, cfg.mlflow, cfg.exclude_random) == ("o", "clipsynth-eval", False, True)
    assert parse_config(CompareConfig, ["--out", "o"], None).mlflow is True
    gap = parse_config(GapFitJobConfig, ["--data", "d", "--bundle", "b", "--no-prior", "--prior-steps", "9"], None)
    assert (gap.with_prior, gap.prior_steps, gap.seed) == (False, 9, 0)
    assert parse_config(GapFitJobConfig, ["--data", "d", "--bundle", "b"], None).with_prior is True


def test_demo_and_table1_share_the_cpu_knobs_under_one_flag():
    knobs = ["--batch-size", "8", "--lr", "0.01", "--lr-schedule", "constant", "--vocoder-size", "small"]
    demo = parse_config(DemoConfig, knobs, None)
    table1 = parse_config(Table1Config, ["--data", "d", *knobs], None)
    # one declaration: the same knob, flag and default in both jobs, and the same train-config fields from them
    assert demo.diffusion_settings() == table1.diffusion_settings()
    assert demo.hifigan_settings() == table1.hifigan_settings()
    diffusion = demo.diffusion_settings()
    assert (diffusion["batch_size"], diffusion["lr"], diffusion["lr_schedule"]) == (8, 0.01, "constant")
    assert (demo.hifigan_settings()["model_size"], DemoConfig().batch_size, Table1Config(data="d").batch_size) == (
        "small",
        16,
        16,
    )
    with pytest.raises(SystemExit):
        parse_config(DemoConfig, ["--lr-schedule", "linear"], None)
