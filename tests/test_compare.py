"""Table 1 from evaluation runs (compare.py) without Ray: FINISHED runs only, current metric names only,
one table per group of backbones and FAD reference with footnotes naming them, no random backbone beside a
real one, case-insensitive dataset names, and the HiFi-GAN reconstructions row."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import mlflow
import pytest

from clipsynth_platform.evaluation.compare import (
    build_tables,
    compare_experiment,
    footnotes,
    format_value,
    modality_gaps,
    to_markdown,
)
from clipsynth_platform.evaluation.runner import EVAL_MARKER, EVAL_MARKER_TAG, METRICS_VERSION, METRICS_VERSION_TAG

VGGISH = "vggish/sha256:1111aaaa2222bbbb"
INCEPTION = "fid-inception-v3/sha256:3333cccc4444dddd"
CLF_MUSIC = "mel-classifier/5555eeee"
CLF_VGG = "mel-classifier/6666ffff"


def tags(**changes) -> dict:
    base = {
        EVAL_MARKER_TAG: EVAL_MARKER,
        METRICS_VERSION_TAG: METRICS_VERSION,
        "model_name": "CLIPSynth",
        "variant": "image",
        "dataset": "music",
        "train_query_type": "image",
        "test_query_type": "text",
        "generative": "true",
        "unlabeled_only": "true",
        "fad_reference": "audio",
        "fad_metric": "fad",
        "fad_backbone": VGGISH,
        "fid_backbone": INCEPTION,
        "melclf_backbone": CLF_MUSIC,
        "random_backbones": "none",
    }
    return {**base, **changes}


class Runs:
    """Fake MLflow runs (the attributes compare.py reads), listed newest first as eval_runs returns them."""

    def __init__(self) -> None:
        self.runs: list = []

    def add(self, metrics: dict, status: str = "FINISHED", **tag_changes):
        n = len(self.runs)
        run = SimpleNamespace(
            info=SimpleNamespace(run_id=f"run{n}", status=status, start_time=1000 - n),
            data=SimpleNamespace(tags=tags(**tag_changes), metrics=dict(metrics)),
        )
        self.runs.append(run)
        return run


def test_only_finished_runs_with_current_metric_names_count():
    runs = Runs()
    runs.add({"fad": 99.0, "fid": 99.0}, status="FAILED")  # the newest: failed
    runs.add({"fad": 50.0}, status="RUNNING")
    old = runs.add({"fad": 77.0, "fid": 77.0})
    del old.data.tags[METRICS_VERSION_TAG]  # logged when "fid" was the classifier distance
    runs.add({"fad": 1.5, "fid": 12.25, "fd_melclf": 0.5})
    logged: list[str] = []
    (table,) = build_tables(runs.runs, log=logged.append)
    (row,) = table.rows
    assert row.cells["music"] == {"run_id": "run3", "fad": 1.5, "fid": 12.25, "fd_melclf": 0.5}
    assert table.metrics == ["fad", "fid", "fd_melclf"] and table.runs == 1
    assert any("run0: status FAILED" in line for line in logged)
    assert any("run1: status RUNNING" in line for line in logged)
    assert any("run2: logged with metric names of version 1" in line for line in logged)


def test_random_backbones_are_never_tabled_beside_real_ones():
    runs = Runs()
    runs.add({"fad": 0.0002}, fad_backbone="tiny-random-vggish/seed:0", random_backbones="fad")
    runs.add({"fad": 3.0})
    with pytest.raises(ValueError, match=r"refusing to put runs with random backbones beside .*run0.*run1"):
        build_tables(runs.runs, log=lambda _: None)
    # A run whose only random part is its FID network counts as random too.
    mixed = Runs()
    mixed.add({"fad": 3.0, "fid": 1.0}, fid_backbone="tiny-random-image-cnn/seed:0", random_backbones="fid")
    mixed.add({"fad": 4.0}, test_query_type="image")
    with pytest.raises(ValueError, match="random backbones"):
        build_tables(mixed.runs, log=lambda _: None)
    (table,) = build_tables(runs.runs, exclude_random=True, log=lambda _: None)
    assert not table.random and [r.cells["music"]["fad"] for r in table.rows] == [3.0]
    # Random runs alone make a table marked as such.
    (alone,) = build_tables(runs.runs[:1], log=lambda _: None)
    assert alone.random and "RANDOM backbones" in to_markdown([alone])


def test_runs_are_grouped_by_backbone_and_reference_with_footnotes():
    runs = Runs()
    runs.add({"fad": 2.0, "fid": 20.0})  # VGGish on raw audio
    runs.add({"fad": 2.5, "fid": 21.0}, test_query_type="image")
    runs.add({"fad": 9.0, "fid": 20.5}, fad_reference="vocoded_mels")  # another reference: another table
    runs.add(
        {"fad_melclf": 0.7, "fd_melclf": 0.3},
        fad_metric="fad_melclf",
        fad_backbone=f"melclf-audio/{CLF_MUSIC}/mel:abcd",
        fid_backbone="absent",
    )
    tables = build_tables(runs.runs, log=lambda _: None)
    assert len(tables) == 3
    first, vocoded, offline = tables
    assert [(r.test_query_type, r.cells["music"]["fad"]) for r in first.rows] == [("text", 2.0), ("image", 2.5)]
    assert [r.cells["music"]["fad"] for r in vocoded.rows] == [9.0]
    assert offline.metrics == ["fad_melclf", "fd_melclf"] and "fad" not in offline.rows[0].cells["music"]
    notes = "\n".join(footnotes(first))
    assert "VGGish, 128-d pre-activation embeddings, weights sha256:1111aaaa2222bbbb; against the test audio" in notes
    assert "pytorch-fid's FID Inception-v3 pool3, weights sha256:3333cccc4444dddd" in notes
    assert "test mels through the bundle's vocoder" in "\n".join(footnotes(vocoded))
    assert "mel classifier trained on the dataset, on the re-analysed audio" in "\n".join(footnotes(offline))
    markdown = to_markdown(tables)
    assert markdown.count("| Model | Generative |") == 3 and "## Table 1.1" in markdown and "## Table 1.3" in markdown
    assert "| MUSIC FAD↓ | MUSIC FID↓ |" in markdown and "| MUSIC FAD-melclf↓ | MUSIC FD-melclf↓ |" in markdown
    (gap_fad, gap_fid) = modality_gaps(first)
    assert (gap_fad["metric"], gap_fad["modality_gap"]) == ("fad", pytest.approx(-0.5))
    assert (gap_fid["metric"], gap_fid["modality_gap"]) == ("fid", pytest.approx(-1.0))


def test_datasets_share_a_table_when_only_their_own_classifiers_differ():
    runs = Runs()
    runs.add({"fad": 2.0, "fd_melclf": 0.4}, dataset="VGG-Sound", melclf_backbone=CLF_VGG)
    runs.add({"fad": 1.0, "fd_melclf": 0.2}, dataset="MUSIC")  # upper case: the same dataset as "music"
    runs.add({"fad": 8.0, "fd_melclf": 0.9}, dataset="music", melclf_backbone="mel-classifier/77770000")
    tables = build_tables(runs.runs, log=lambda _: None)
    assert [t.datasets for t in tables] == [["music", "vggsound"], ["music"]]
    row = tables[0].rows[0]
    assert row.cells["music"]["fad"] == 1.0 and row.cells["vggsound"]["fad"] == 2.0
    notes = "\n".join(footnotes(tables[0]))
    assert f"MUSIC: mel classifier trained on the dataset ({CLF_MUSIC})" in notes
    assert f"VGG-Sound: mel classifier trained on the dataset ({CLF_VGG})" in notes
    assert tables[1].rows[0].cells["music"]["fad"] == 8.0  # a retrained classifier: its own table


# The tags of a --hifigan-recon evaluation run (its model name aside).
RECON_TAGS = {
    "variant": "hifigan-recon",
    "train_query_type": "n/a",
    "test_query_type": "n/a",
    "generative": "false",
    "unlabeled_only": "n/a",
}


def test_the_hifigan_reconstructions_row_renders():
    runs = Runs()
    runs.add({"fad": 2.0, "fad_hifigan_recon": 0.8})
    (table,) = build_tables(runs.runs, log=lambda _: None)
    assert [r.variant for r in table.rows] == ["image", "hifigan-recon"]
    assert table.rows[1].cells["music"] == {"run_id": "run0", "fad": 0.8}
    markdown = to_markdown([table])
    assert "| HiFi-GAN reconstructions | × | - | - | - | 0.8 |" in markdown
    assert "the fad_hifigan_recon of run run0" in markdown
    # A --hifigan-recon run fills the row itself.
    runs.add({"fad": 0.6, "fad_hifigan_recon": 0.6}, **RECON_TAGS, model_name="HiFi-GAN reconstructions")
    (table,) = build_tables(runs.runs, log=lambda _: None)
    assert [r.cells["music"]["fad"] for r in table.rows] == [2.0, 0.6]


def test_a_reconstruction_run_under_another_name_is_the_only_reconstruction_row():
    runs = Runs()
    runs.add({"fad": 2.0, "fad_hifigan_recon": 0.8})
    runs.add({"fad": 0.7, "fad_hifigan_recon": 0.7}, **RECON_TAGS, model_name="Griffin-Lim reconstructions")
    (table,) = build_tables(runs.runs, log=lambda _: None)
    assert [(r.model, r.cells["music"]["fad"]) for r in table.rows] == [
        ("CLIPSynth", 2.0),
        ("Griffin-Lim reconstructions", 0.7),
    ]
    assert "HiFi-GAN reconstructions" not in to_markdown([table])


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    from mlflow.tracking._tracking_service import utils

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(utils, "_tracking_uri", uri)
    return uri


def test_compare_experiment_from_mlflow_leaves_out_failed_runs(tracking, tmp_path):
    experiment = mlflow.create_experiment("compare-test")
    for status, value in (("FINISHED", 1.25), ("FAILED", 99.0)):  # the failed run is the newer
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.set_tags(tags(dataset="MUSIC"))
            mlflow.log_metrics({"fad": value, "fid": value * 10})
        mlflow.MlflowClient().set_terminated(run.info.run_id, status=status)
        if status == "FINISHED":
            finished = run.info.run_id
    result = compare_experiment("compare-test", tmp_path / "out", log_to_mlflow=False)
    assert result.runs == 2 and result.used_runs == 1
    with open(tmp_path / "out" / "table.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert (row["music_fad"], row["music_fid"], row["music_run_id"]) == ("1.25", "12.5", finished)
    assert row["music_fad_backbone"] == VGGISH
    markdown = (tmp_path / "out" / "table.md").read_text()
    assert f"| {format_value(1.25)} | {format_value(12.5)} |" in markdown and format_value(99.0) not in markdown
