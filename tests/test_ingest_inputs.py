"""Ingestion's inputs without Ray (issue 26): listing files, WebDataset shards and Parquet files of video bytes,
reading their members back byte for byte, read units, the label join, the coverage report and the hygiene rules."""

from __future__ import annotations

import io
import json
import math
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from media import run_ffmpeg, time_coded_input

from clipsynth_platform.ingest.config import IngestConfig
from clipsynth_platform.ingest.containers import ListingSettings, index_container
from clipsynth_platform.ingest.coverage import coverage_report, distinct_clips
from clipsynth_platform.ingest.decode import process_video, rms_dbfs
from clipsynth_platform.ingest.inputs import list_inputs
from clipsynth_platform.ingest.labels import parse_vggsound_csv
from clipsynth_platform.ingest.members import Member, TempFiles
from clipsynth_platform.ingest.readers import ReadUnit, open_unit, plan_units
from clipsynth_platform.ingest.settings import DecodeSettings
from clipsynth_platform.ingest.sources import FROM_HASH, FROM_INDEX, FROM_MEMBER, plan_sources
from clipsynth_platform.ingest.tarshard import read_tar
from clipsynth_platform.ingest.videoparquet import read_parquet_rows

EXT = IngestConfig().extensions
LISTING = ListingSettings(EXT, "video", None)


def write_tar(path: Path, members: list[tuple[str, bytes]], compressed: bool = False) -> None:
    with tarfile.open(path, "w:gz" if compressed else "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def payload(i: int, n: int = 3000) -> bytes:
    return np.random.default_rng(i).bytes(n)


def sidecar(**fields) -> bytes:
    return json.dumps(fields).encode()


SHARD = [
    ("a/x_000010.mp4", payload(1)),
    ("a/x_000010.json", sidecar(label="dog", split="test")),
    ("y_000000.mp4", payload(2, 5000)),
    ("notes.txt", b"not a video"),
    ("._y_000000.mp4", b"macOS resource fork"),
    ("z_000020.webm", payload(3, 10)),
    ("z_000020.json", b"{not json"),
    ("y_000000.mp4", payload(4)),  # the same name again (tar appends): its own member
]


@pytest.mark.parametrize("compressed", [False, True])
def test_a_shard_lists_its_videos_and_reads_them_back_byte_for_byte(tmp_path, compressed):
    shard = tmp_path / ("s.tar.gz" if compressed else "s.tar")
    write_tar(shard, SHARD, compressed)
    index = index_container(str(shard), "tar.gz" if compressed else "tar", LISTING)
    assert index.error is None
    assert [(m.name, m.occurrence, m.label, m.split) for m in index.members] == [
        ("a/x_000010.mp4", 0, "dog", "test"),
        ("y_000000.mp4", 0, None, None),
        ("z_000020.webm", 0, None, None),  # its sidecar is not JSON: counted, the video stays
        ("y_000000.mp4", 1, None, None),
    ]
    assert (index.other_files, index.bad_metadata, index.repeated_names) == (2, 1, 1)
    uris = [m.uri_in(str(shard)) for m in index.members]
    assert len(set(uris)) == 4 and uris[3] == f"{shard}#y_000000.mp4~1"
    videos = [d for n, d in SHARD if n.endswith((".mp4", ".webm")) and not n.startswith(".")]
    assert [m.size for m in index.members] == [len(d) for d in videos]
    # Read back (a subset, out of order): every member's exact bytes, whatever the access path.
    with TempFiles() as files:
        wanted = [index.members[3], index.members[0]]
        got = {
            (m.name, m.occurrence): Path(f.path).read_bytes()
            for m, f in read_tar(str(shard), compressed, wanted, files)
        }
    assert got == {("y_000000.mp4", 1): videos[3], ("a/x_000010.mp4", 0): videos[0]}


def test_a_truncated_tar_gz_keeps_what_came_before_the_break_and_fails_the_rest(tmp_path):
    shard = tmp_path / "s.tar.gz"
    big = [(f"v{i}_000000.mp4", payload(i, 200_000)) for i in range(4)]
    write_tar(shard, big, compressed=True)
    whole = shard.read_bytes()
    cut = int(len(whole) * 0.6)  # random payloads do not compress: members 0 and 1 whole, 2 cut inside
    shard.write_bytes(whole[:cut])
    index = index_container(str(shard), "tar.gz", LISTING)
    assert index.error is not None and [m.name for m in index.members] == [n for n, _ in big[:3]]
    missing = index_container(str(tmp_path / "gone.tar.gz"), "tar.gz", LISTING)
    assert "No such file" in missing.error and missing.members == []  # an error in the index, not a raise
    # Members before the break read back whole; the one cut and any after it fail with the reason.
    with TempFiles() as files:
        got = [(m.name, f.failure or Path(f.path).read_bytes()) for m, f in read_tar(str(shard), True, [*index.members, Member("v3_000000.mp4")], files)]  # fmt: skip
    assert got[:2] == [(n, d) for n, d in big[:2]]
    assert [name for name, _ in got[2:]] == ["v2_000000.mp4", "v3_000000.mp4"]
    assert all(str(failure).startswith("shard unreadable after 3 members:") for _, failure in got[2:])


def test_a_parquet_file_lists_rows_by_id_and_reads_their_bytes(tmp_path):
    videos = [payload(i, 1000 + i) for i in range(5)]
    table = pa.table(
        {
            "key": ["p_000000", "q_000010", "q_000010", "r_000000", "s_000000"],
            "video": pa.array([{"bytes": v, "path": f"d/{i}.mp4"} for i, v in enumerate(videos)]),
            "label": ["cat", None, "cow", "cow", "cow"],
            "split": ["test", None, "train", "validation", None],
        }
    )
    path = tmp_path / "v.parquet"
    pq.write_table(table, path, row_group_size=2)
    index = index_container(str(path), "parquet", LISTING)
    assert index.error is None
    assert [(m.name, m.occurrence, m.row_group, m.row, m.label, m.split) for m in index.members] == [
        ("p_000000", 0, 0, 0, "cat", "test"),
        ("q_000010", 0, 0, 1, None, None),
        ("q_000010", 1, 1, 0, "cow", "train"),
        ("r_000000", 0, 1, 1, None, None),  # "validation" is no split: the row's metadata is dropped, counted
        ("s_000000", 0, 2, 0, "cow", None),
    ]
    assert index.bad_metadata == 1 and index.repeated_names == 1
    with TempFiles() as files:
        got = [Path(f.path).read_bytes() for _, f in read_parquet_rows(str(path), "video", index.members, files)]
    assert got == videos
    # Without an id column the struct's path names a row; a binary column without either, the row number.
    pq.write_table(table.drop(["key"]), tmp_path / "p.parquet")
    assert [m.name for m in index_container(str(tmp_path / "p.parquet"), "parquet", LISTING).members][:2] == [
        "0.mp4",
        "1.mp4",
    ]
    pq.write_table(pa.table({"mp4": pa.array(videos, pa.binary())}), tmp_path / "b.parquet")
    named = index_container(str(tmp_path / "b.parquet"), "parquet", ListingSettings(EXT, "mp4", None))
    assert [m.name for m in named.members][:2] == ["row000000000", "row000000001"]
    missing = index_container(str(tmp_path / "b.parquet"), "parquet", LISTING)
    assert "has no column 'video' (columns: mp4)" in missing.error and "--parquet-video-column" in missing.error
    assert missing.members == []


def test_inputs_are_listed_by_kind_from_files_folders_and_lists(tmp_path):
    for rel in ("m/b.tar", "m/a.tar.gz", "m/c.tgz", "m/d.parquet", "m/_fetch_ledger.parquet", "m/_x_000001.mp4",
                "m/sub/e.MP4", "m/.hidden/f.mp4", "m/notes.txt", "other/g.webm"):  # fmt: skip
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    found = list_inputs([str(tmp_path / "m"), str(tmp_path / "other/g.webm"), str(tmp_path / "m/b.tar")], EXT)
    assert [(f.relative_path, f.kind) for f in found] == [
        ("_x_000001.mp4", "video"),  # a YouTube id may begin with "_": kept
        ("a.tar.gz", "tar.gz"),
        ("b.tar", "tar"),
        ("c.tgz", "tar.gz"),
        ("d.parquet", "parquet"),  # _fetch_ledger.parquet: metadata beside data, skipped
        ("sub/e.MP4", "video"),
        ("g.webm", "video"),  # a file given by name; b.tar, given twice, is listed once
    ]
    with pytest.raises(ValueError, match="is not a video"):
        list_inputs([str(tmp_path / "m/notes.txt")], EXT)


def _vggsound_sources(tmp_path):
    shard = tmp_path / "s.tar"
    write_tar(shard, [(f"{n}.mp4", payload(i)) for i, n in enumerate(["a_000000", "b_000010", "h_000000"])])
    write_tar(tmp_path / "t.tar.gz", [("c_000005.mp4", payload(9)), ("c_000005.json", sidecar(label="x"))], True)
    (tmp_path / "a_000000.mp4").write_bytes(payload(1))  # the same clip as a file: counted once by coverage
    labels = parse_vggsound_csv(
        'a,0,dog,train\nb,10,"cat, domestic",test\nc,5,dog,test\nd,0,dog,train\ne,100000,cow,test\n'
    )
    files = list_inputs([str(tmp_path)], EXT)
    indexes = {f.uri: index_container(f.uri, f.kind, LISTING) for f in files if f.kind != "video"}
    return labels, plan_sources(files, indexes, 0.5, labels)


def test_labels_join_by_clip_id_index_first_then_the_members_own(tmp_path):
    labels, sources = _vggsound_sources(tmp_path)
    by_uri = {s.uri: s for s in sources}
    got = {(s.clip_id, s.kind): (s.label, s.split, s.label_from, s.split_from) for s in sources}
    assert got == {
        ("a_000000", "video"): ("dog", "train", FROM_INDEX, FROM_INDEX),
        ("a_000000", "tar"): ("dog", "train", FROM_INDEX, FROM_INDEX),
        ("b_000010", "tar"): ("cat, domestic", "test", FROM_INDEX, FROM_INDEX),
        ("h_000000", "tar"): (None, got[("h_000000", "tar")][1], None, FROM_HASH),
        # the index wins over the member's own label ("x"); its split is the index's
        ("c_000005", "tar.gz"): ("dog", "test", FROM_INDEX, FROM_INDEX),
    }
    member = by_uri[f"{tmp_path / 's.tar'}#b_000010.mp4"]
    assert member.container == str(tmp_path / "s.tar") and member.relative_path == "s.tar/b_000010.mp4"
    # A member the index does not list keeps its own label; without a split of its own, it is hashed.
    write_tar(tmp_path / "u.tar", [("u_000000.mp4", payload(5)), ("u_000000.json", sidecar(label="owl"))])
    files = list_inputs([str(tmp_path / "u.tar")], EXT)
    [u] = plan_sources(files, {files[0].uri: index_container(files[0].uri, "tar", LISTING)}, 0.5, labels)
    assert (u.label, u.label_from, u.split_from) == ("owl", FROM_MEMBER, FROM_HASH)


def test_coverage_counts_expected_found_and_ok_per_split_and_class(tmp_path):
    labels, sources = _vggsound_sources(tmp_path)
    # each clip once: unpadded spellings (x_10 for x_000010) are matched by lookup, not stored as more entries
    assert len(labels.entries) == 5 and len(distinct_clips(labels)) == 5
    ok_ids = {"a_000000", "c_000005"}
    status = {s.uri: "ok" if s.clip_id in ok_ids and s.kind != "video" else "failed" for s in sources}
    report = coverage_report(labels, "vgg.csv", sources, status).to_dict()
    # By hand: expected a,d (train dog), b (test cat), c (test dog), e (test cow); found a (twice: once), b, c.
    assert (report["expected"], report["found"], report["ok"]) == (5, 3, 2)
    assert report["repeated_inputs"] == 1 and report["inputs_not_in_index"] == 1  # h
    assert report["by_split"] == {
        "test": {"expected": 3, "found": 2, "ok": 1, "ok_share": round(1 / 3, 4)},
        "train": {"expected": 2, "found": 1, "ok": 1, "ok_share": 0.5},
    }
    assert report["by_split_class"]["test"]["cat, domestic"] == {"expected": 1, "found": 1, "ok": 0, "ok_share": 0.0}
    assert report["classes_without_clips"] == ["cat, domestic", "cow"]


def test_read_units_group_members_by_how_they_can_be_read(tmp_path):
    write_tar(tmp_path / "a.tar", [(f"t{i}_000000.mp4", payload(i)) for i in range(5)])
    write_tar(tmp_path / "b.tar.gz", [(f"g{i}_000000.mp4", payload(i)) for i in range(3)], compressed=True)
    pq.write_table(pa.table({"video": [payload(i) for i in range(3)]}), tmp_path / "c.parquet", row_group_size=2)
    for i in range(3):
        (tmp_path / f"f{i}.mp4").write_bytes(payload(i))
    files = list_inputs([str(tmp_path)], EXT)
    sources = plan_sources(
        files, {f.uri: index_container(f.uri, f.kind, LISTING) for f in files if f.kind != "video"}, 0.1
    )
    units = plan_units(sources, videos_per_task=2)
    shape = [(u.kind, len(u.sources)) for u in units]
    # the .tar.gz whole and first; the .tar by twos; Parquet by row group; files by twos
    assert shape == [("tar.gz", 3), ("tar", 2), ("tar", 2), ("tar", 1), ("parquet", 2), ("parquet", 1), ("video", 2), ("video", 1)]  # fmt: skip
    assert sorted(s.uri for u in units for s in u.sources) == sorted(s.uri for s in sources)
    # A unit survives its trip through JSON, and reading it gives each source its own bytes.
    for unit in units:
        again = ReadUnit.from_json(unit.to_json())
        assert again == unit
        for source, fetched in open_unit(again, "video"):
            if unit.kind == "video":
                assert fetched is None
                continue
            i = int(source.member.name[1]) if unit.kind != "parquet" else int(source.member.name[3:])
            assert Path(fetched.path).read_bytes() == payload(i)


def test_rms_dbfs_of_a_sine_and_of_silence():
    t = np.arange(16_000) / 16_000
    assert rms_dbfs(np.sin(2 * np.pi * 440 * t)) == pytest.approx(-3.0103, abs=1e-3)
    assert rms_dbfs(0.01 * np.sin(2 * np.pi * 440 * t)) == pytest.approx(-43.0103, abs=1e-3)
    assert rms_dbfs(np.zeros(100)) == -math.inf


def test_hygiene_rejects_silent_clips_under_the_threshold_with_their_level(tmp_path):
    # A 5 s 440 Hz tone at 0.01 amplitude: -43 dBFS RMS, kept at the default -60 dB, rejected at -30 dB.
    path = str(tmp_path / "quiet.mkv")
    run_ffmpeg(*time_coded_input(5), "-f", "lavfi", "-i", "aevalsrc=0.01*sin(440*2*PI*t):s=44100:d=5",
               "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "pcm_s16le", "-shortest", path)  # fmt: skip
    source = {"uri": path, "video_id": "q", "split": "train", "label": None}

    def video_row(**settings):
        table = pa.concat_tables(list(process_video(source, DecodeSettings(**settings))))
        [row] = table.filter(pc.equal(table["record"], "video")).to_pylist()
        return row, json.loads(row["info_json"])

    row, info = video_row()
    assert row["status"] == "ok" and info["audio_rms_dbfs"] == pytest.approx(-43.0, abs=0.1)
    row, info = video_row(silence_db=-30.0)
    assert (row["status"], row["fail_stage"], info["hygiene"]) == ("failed", "hygiene", "silent")
    assert row["fail_reason"].startswith("silent: audio level -43.0 dBFS (RMS) is below the -30 dBFS threshold")
    row, info = video_row(min_chunk_samples=6 * 16_000)
    assert (row["fail_stage"], info["hygiene"], row["fail_reason"]) == (
        "hygiene",
        "too_short",
        "too short: 5.00 s of audio, need 6.00 s for one window",
    )


def test_cli_takes_several_inputs_and_the_new_options():
    from clipsynth_platform.ingest.job import parse

    config = parse(
        ["--input", "a.tar", "s3://b/shards/", "dir", "--output", "o", "--parquet-video-column", "mp4",
         "--parquet-id-column", "ytid", "--silence-db", "-50", "--tracking-uri", "sqlite:///x.db"]
    )  # fmt: skip
    assert config.input == ("a.tar", "s3://b/shards/", "dir")
    assert (config.parquet_video_column, config.parquet_id_column, config.silence_db) == ("mp4", "ytid", -50.0)
    assert config.tracking_uri == "sqlite:///x.db" and config.experiment == "clipsynth-ingest"
    assert IngestConfig(input="one/", output="o").input == ("one/",)
    with pytest.raises(ValueError, match="--silence-db"):
        IngestConfig(input="i", output="o", silence_db=3.0).validate()


def test_reading_an_early_member_of_a_tar_gz_stops_there(tmp_path, monkeypatch):
    """A .tar.gz is streamed, never extracted whole: reading its first member reads a small part of the file."""
    import clipsynth_platform.ingest.tarshard as tarshard

    shard = tmp_path / "s.tar.gz"
    write_tar(shard, [(f"v{i}_000000.mp4", payload(i, 100_000)) for i in range(20)], compressed=True)
    index = index_container(str(shard), "tar.gz", LISTING)
    read = []

    class CountingFS:
        def open(self, path, mode):
            f = open(path, mode)  # noqa: SIM115 - returned to the caller's `with`
            real = f.read

            def counted(n=-1):
                data = real(n)
                read.append(len(data))
                return data

            f.read = counted
            return f

    monkeypatch.setattr(tarshard, "fsspec_filesystem", lambda uri: CountingFS())
    with TempFiles() as files:
        got = list(read_tar(str(shard), True, index.members[:1], files))
        assert len(got) == 1 and Path(got[0][1].path).read_bytes() == payload(0, 100_000)
    assert 100_000 < sum(read) < 0.2 * shard.stat().st_size  # 20 members of 100 kB: about 2 MB in all


def test_container_indexes_are_kept_in_the_output_and_listed_again_only_when_changed(tmp_path):
    from clipsynth_platform.ingest.containers import index_inputs
    from clipsynth_platform.ingest.store import OutputStore

    (tmp_path / "in").mkdir()
    for k in range(3):
        write_tar(tmp_path / "in" / f"s{k}.tar", [(f"v{k}{i}_000000.mp4", payload(10 * k + i)) for i in range(2)])
    containers = list_inputs([str(tmp_path / "in")], EXT)
    store = OutputStore(str(tmp_path / "out"))
    listed: list[str] = []

    def list_all(items):
        listed.extend(Path(i.uri).name for i in items)
        return [index_container(i.uri, i.kind, LISTING) for i in items]

    first = index_inputs(store, containers, LISTING, list_all)
    assert listed == ["s0.tar", "s1.tar", "s2.tar"] and sum(len(i.members) for i in first.values()) == 6
    again = index_inputs(store, containers, LISTING, list_all)
    assert listed == ["s0.tar", "s1.tar", "s2.tar"] and again == first  # read back, nothing listed
    # A shard that changed is listed again; so are all when the listing settings change.
    write_tar(tmp_path / "in" / "s1.tar", [("w_000000.mp4", payload(99))])
    changed = index_inputs(store, containers, LISTING, list_all)
    assert listed[3:] == ["s1.tar"] and [m.name for m in changed[containers[1].uri].members] == ["w_000000.mp4"]
    index_inputs(store, containers, ListingSettings((".webm",), "video", None), list_all)
    assert listed[4:] == ["s0.tar", "s1.tar", "s2.tar"]
    # With --limit, containers are listed one at a time until enough videos are known.
    fresh = OutputStore(str(tmp_path / "out2"))
    listed.clear()
    index_inputs(
        fresh, containers, LISTING, list_all, enough=lambda idx: sum(len(i.members) for i in idx.values()) >= 2
    )
    assert listed == ["s0.tar"]


def test_clips_of_one_video_share_a_hashed_split_and_index_splits_that_leak_are_reported(tmp_path):
    from clipsynth_platform.ingest.coverage import index_split_leaks, split_leaks
    from clipsynth_platform.ingest.sources import hashed_split, source_video_of

    assert source_video_of("-4MWWoKUzKQ_000030") == "-4MWWoKUzKQ" and source_video_of("abc") == "abc"
    # Without an index, 40 videos x 3 clips: every video's clips land in one split, its id's hashed split.
    for v in range(40):
        for start in (0, 10, 20):
            (tmp_path / f"vid{v:02d}-yt_{start:06d}.mp4").write_bytes(b"")
    sources = plan_sources(list_inputs([str(tmp_path)], EXT), {}, 0.3)
    by_video: dict[str, set[str]] = {}
    for s in sources:
        by_video.setdefault(source_video_of(s.clip_id), set()).add(s.split)
    assert all(splits == {hashed_split(v, 0.3)} for v, splits in by_video.items())
    assert {next(iter(s)) for s in by_video.values()} == {"train", "test"}  # both splits are used
    assert split_leaks(sources, {s.uri: "ok" for s in sources})["videos_in_both_splits"] == 0
    # An index that puts one video's clips in both splits: the manifest keeps them all in test (and names the
    # leak); a clip it does not list (vid01-yt_000020) follows its video's split, not the hash.
    labels = parse_vggsound_csv(
        "vid00-yt,0,dog,train\nvid00-yt,10,dog,test\nvid00-yt,20,dog,test\nvid01-yt,0,cat,train\nvid01-yt,10,cat,test\n"
    )
    leaks = index_split_leaks(labels)
    assert leaks["videos"] == 2 and [e["video_id"] for e in leaks["examples"]] == ["vid00-yt", "vid01-yt"]
    assert leaks["examples"][1] == {
        "video_id": "vid01-yt",
        "train_clips": ["vid01-yt_000000"],
        "test_clips": ["vid01-yt_000010"],
        "kept_in": "test",
    }
    assert index_split_leaks(None) == {"videos": 0, "examples": []}
    sources = plan_sources(list_inputs([str(tmp_path)], EXT), {}, 0.3, labels)
    split_of = {s.clip_id: (s.split, s.split_from) for s in sources}
    for clip in ("vid00-yt_000000", "vid00-yt_000010", "vid00-yt_000020", "vid01-yt_000000", "vid01-yt_000010"):
        assert split_of[clip] == ("test", FROM_INDEX), clip
    assert split_of["vid01-yt_000020"] == ("test", FROM_INDEX)  # unlisted: its video's split
    assert split_leaks(sources, {s.uri: "ok" for s in sources})["videos_in_both_splits"] == 0
    # What split_leaks reports when the splits do straddle a video (an index built without the manifest's rule):
    # kept clips only, each video once.
    straddling = [replace(s, split="train") if s.clip_id == "vid00-yt_000000" else s for s in sources]
    status = {s.uri: "failed" if s.clip_id == "vid00-yt_000010" else "ok" for s in straddling}
    assert split_leaks(straddling, status) == {"videos_in_both_splits": 1, "their_clips": 2, "examples": ["vid00-yt"]}
