"""The one manifest of clips: VGG-Sound's CSV, MUSIC's JSON (solo and duet) and generic tables (CSV, TSV, JSONL,
Parquet) parsed into typed clips; errors with line numbers; split leaks reported and resolved; the Parquet round
trip; ingestion's label index built from it."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipsynth_platform.datasets.manifest import (
    LEAK_RULE,
    Clip,
    Manifest,
    detect_format,
    load_manifest,
    parse_manifest,
    parse_music_json,
    parse_table,
    parse_vggsound_csv,
)
from clipsynth_platform.ingest.labels import load_label_index

VGG = (
    '---g-f_I2yQ,1,"people marching, loudly",test\n'
    "abc_def,30,dog barking,train\n"
    "abc_def,120,dog barking,train\n"
    "\n"
    "xyz,0,cat,TRAIN\n"
)


def test_vggsound_clips_windows_and_quoted_labels():
    m = parse_vggsound_csv(VGG)
    assert m.format == "vggsound" and len(m) == 4
    first = m.clips[0]
    assert first == Clip(
        clip_id="---g-f_I2yQ_000001",
        video_id="---g-f_I2yQ",
        start=1.0,
        end=11.0,
        label="people marching, loudly",
        split="test",
        listed_split="test",
        line=1,
    )
    # One video, two start seconds: two clips, each its own 10 s window.
    two = [c for c in m if c.video_id == "abc_def"]
    assert [(c.clip_id, c.start, c.end) for c in two] == [
        ("abc_def_000030", 30.0, 40.0),
        ("abc_def_000120", 120.0, 130.0),
    ]
    assert m.lookup("xyz_000000").split == "train" and m.lookup("xyz_000000").line == 5  # blank line 4 counted
    # The unpadded spelling finds the same clip; a start not listed finds nothing.
    assert m.lookup("abc_def_30") is m.lookup("abc_def_000030")
    assert m.lookup("abc_def_000031") is None
    assert m.labels == ["cat", "dog barking", "people marching, loudly"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,1,dog,train\nb,2,cat\n", "line 2: expected youtube_id,start_seconds,label,split"),
        ("a,1,dog,train\n\nb,x,cat,test\n", "line 3: start_seconds 'x' is not a number"),
        ("a,-5,dog,train\n", "line 1: start_seconds '-5' must be a finite number >= 0"),
        ("a,1,dog,val\n", "line 1: split 'val' is not one of"),
        ("a,1,,train\n", "line 1: empty youtube_id or label"),
        ("a/b,1,dog,train\n", "line 1: clip id 'a/b_000001' cannot name a file"),
    ],
)
def test_vggsound_malformed_rows_name_their_line(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_vggsound_csv(text)


def test_vggsound_repeats_conflicts_and_an_optional_header():
    text = "youtube_id,start_seconds,label,split\na,1,dog,train\na,1,dog,train\na,1,cat,train\nb,2,owl,test\n"
    m = parse_vggsound_csv(text)
    assert [c.clip_id for c in m] == ["a_000001", "b_000002"]
    assert m.lookup("a_000001").label == "dog"  # the first listing is kept
    assert (m.duplicates, m.conflicts) == (1, ["a_000001"])


def test_split_leak_is_reported_and_the_video_kept_in_test():
    text = "v1,0,dog,train\nv1,10,dog,test\nv1,20,dog,train\nv2,0,cat,train\nv3,0,cat,test\n"
    m = parse_vggsound_csv(text)
    assert LEAK_RULE == "test"
    assert [(leak.video_id, leak.train_clips, leak.test_clips, leak.kept_in) for leak in m.leaks] == [
        ("v1", ("v1_000000", "v1_000020"), ("v1_000010",), "test")
    ]
    assert {c.clip_id: (c.listed_split, c.split) for c in m} == {
        "v1_000000": ("train", "test"),
        "v1_000010": ("test", "test"),
        "v1_000020": ("train", "test"),
        "v2_000000": ("train", "train"),
        "v3_000000": ("test", "test"),
    }
    # No video is left with clips in both splits.
    splits: dict[str, set[str]] = {}
    for c in m:
        splits.setdefault(c.video_id, set()).add(c.split)
    assert all(len(s) == 1 for s in splits.values())
    assert m.report().leaks == [leak.to_dict() for leak in m.leaks]


def test_music_solo_and_duet():
    solo = parse_music_json(json.dumps({"videos": {"accordion": ["aaa", "bbb"], "violin": ["ccc", "aaa"]}}, indent=1))
    assert [(c.clip_id, c.label, c.start, c.split) for c in solo] == [
        ("aaa", "accordion", None, None),
        ("bbb", "accordion", None, None),
        ("ccc", "violin", None, None),
    ]
    assert solo.conflicts == ["aaa"]  # listed under two classes: the first is kept
    assert solo.lookup("ccc").line == 8  # the line of its id in the file
    duet = parse_music_json(json.dumps({"videos": {"acoustic_guitar violin": ["d1"], "flute violin": ["d2"]}}))
    assert [(c.clip_id, c.label) for c in duet] == [("d1", "acoustic_guitar violin"), ("d2", "flute violin")]
    assert parse_music_json(json.dumps({"cello": ["x"]})).lookup("x").label == "cello"  # the inner mapping alone
    with pytest.raises(ValueError, match="must look like"):
        parse_music_json(json.dumps({"videos": ["a", "b"]}))
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_music_json("{oops")
    with pytest.raises(ValueError, match="lists a non-string or empty id 7"):
        parse_music_json(json.dumps({"videos": {"cello": [7]}}))


def _as_parquet(rows: list[dict]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue()


def test_tables_in_every_format_give_the_same_clips():
    rows = [
        {"id": "yt1", "start": 30, "end": 40, "label": "dog, barking", "split": "train", "notes": "x"},
        {"id": "yt1", "start": 50, "end": None, "label": "dog", "split": "test", "notes": ""},
        {"id": "yt2", "start": None, "end": None, "label": "", "split": "", "notes": ""},
    ]
    columns = list(rows[0])

    def delimited(sep: str) -> bytes:
        def cell(v: object) -> str:
            text = "" if v is None else str(v)
            return f'"{text}"' if sep in text else text

        lines = [sep.join(columns)] + [sep.join(cell(r[c]) for c in columns) for r in rows]
        return ("\n".join(lines) + "\n").encode()

    sources = {
        "t.csv": delimited(","),
        "t.tsv": delimited("\t"),
        "t.jsonl": "\n".join(json.dumps(r) for r in rows).encode(),
        "t.parquet": _as_parquet(rows),
    }
    manifests = {name: parse_table(data, name) for name, data in sources.items()}
    expected = [
        # yt1 is listed in train and in test: a leak, so both of its clips are kept in test.
        ("yt1_000030", "yt1", 30.0, 40.0, "dog, barking", "test"),
        ("yt1_000050", "yt1", 50.0, 60.0, "dog", "test"),  # a start without an end: a 10 s clip
        ("yt2", "yt2", None, None, None, None),  # no start: the whole video; empty cells: no label, no split
    ]
    for name, m in manifests.items():
        got = [(c.clip_id, c.video_id, c.start, c.end, c.label, c.split) for c in m]
        assert got == expected, name
        assert len(m.leaks) == 1, name
    assert manifests["t.parquet"].lookup("yt2").line == 3 and manifests["t.csv"].lookup("yt2").line == 4


def test_table_urls_clip_ids_and_collisions():
    text = (
        b"clip_id,url,start_seconds,label\n"
        b",https://www.youtube.com/watch?v=AbC-12&t=5,10,a\n"
        b",http://mirror.example/a/video.one.mp4,,b\n"
        b",http://other.example/b/video.one.mp4,,c\n"
        b"mine,http://x.example/v.mp4,0,d\n"
    )
    m = parse_table(text, "t.csv")
    ids = [c.clip_id for c in m]
    assert ids[0] == "AbC-12_000010" and m.clips[0].video_id == "AbC-12"
    # Two URLs with one stem: each gets a short hash of its URL, so neither clip overwrites the other.
    assert ids[1] != ids[2] and ids[1].startswith("video_one-") and ids[2].startswith("video_one-")
    assert ids[3] == "mine" and m.clips[3].source == "http://x.example/v.mp4"


@pytest.mark.parametrize(
    ("data", "name", "message"),
    [
        (b"id,start,end\nv,10,5\n", "t.csv", "table line 2: end 5.0 is not after start 10.0"),
        (b"id,start\nv,1.5\n", "t.csv", "table line 2: start 1.5 is not a whole second: give a clip_id column"),
        (b"id,end\nv,5\n", "t.csv", "table line 2: an end"),
        (b"id,label\n,dog\n", "t.csv", "table line 2: no url, path or id"),
        (b"id,split\nv,dev\n", "t.csv", "table line 2: split 'dev' is not one of"),
        (b'{"id": "a"}\n[1]\n', "t.jsonl", "table line 2: expected a JSON object"),
        (b'{"id": "a"}\n{oops\n', "t.jsonl", "table line 2: not valid JSON"),
        (b"a.mp4,cat\nb.mp4\n", "t.csv", "table line 2: expected path,label"),
        (b"id\tstart\nv\tsoon\n", "t.tsv", "table line 2: start 'soon' is not a number"),
    ],
)
def test_table_malformed_rows_name_their_line(data, name, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_table(data, name)


def test_format_detection_and_loading(tmp_path):
    assert detect_format("x.json", b"{}") == "music"
    assert detect_format("vggsound.csv", b"abc,10,dog,train\n") == "vggsound"
    assert detect_format("labels.csv", b"path,label\na.mp4,dog\n") == "table"
    assert detect_format("t.jsonl", b'{"id": "a"}\n') == "table"
    (tmp_path / "v.csv").write_text(VGG)
    m = load_manifest(str(tmp_path / "v.csv"))
    assert m.format == "vggsound" and m.source_uri == str(tmp_path / "v.csv") and len(m.source_sha1) == 40
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_manifest(str(tmp_path / "missing.csv"))
    with pytest.raises(ValueError, match="unknown manifest format"):
        parse_manifest(b"", "yaml")


def test_parquet_round_trip_keeps_clips_and_hygiene(tmp_path):
    m = parse_vggsound_csv("v1,0,dog,train\nv1,10,dog,test\nv1,10,cat,test\nv2,5,cat,train\n", "src.csv", "ab" * 20)
    uri = str(tmp_path / "out" / "_manifest.parquet")
    m.write(uri)
    back = Manifest.read(uri)
    assert back.clips == m.clips and back.digest() == m.digest()
    assert (back.format, back.source_uri, back.source_sha1) == ("vggsound", "src.csv", "ab" * 20)
    assert (back.conflicts, back.duplicates, back.leaks) == (m.conflicts, m.duplicates, m.leaks)
    # A written manifest is recognised as one, and read as it was.
    data = (tmp_path / "out" / "_manifest.parquet").read_bytes()
    assert detect_format("anything.parquet", data) == "manifest"
    assert load_manifest(uri).clips == m.clips
    # A plain Parquet table is a table, not a manifest.
    assert detect_format("t.parquet", _as_parquet([{"id": "a"}])) == "table"
    with pytest.raises(ValueError, match="not a clip manifest"):
        Manifest.from_arrow(pa.Table.from_pylist([{"id": "a"}]))
    # The expected coverage: clips per split and label.
    assert m.expected() == {"test": {"dog": 2}, "train": {"cat": 1}}


def test_ingestion_label_index_comes_from_the_manifest(tmp_path):
    (tmp_path / "v.csv").write_text("v1,0,dog,train\nv1,10,dog,test\nv2,5,cat,train\n")
    index = load_label_index(str(tmp_path / "v.csv"))
    assert index.manifest is not None and index.manifest.lookup("v2_000005").label == "cat"
    # Stems of files as VGG-Sound's mirrors name them, padded or not; the leak resolved there too.
    assert index.lookup("/d/v1_000000.mp4", "v1_000000.mp4").split == "test"
    assert index.lookup("/d/v2_5.mp4", "v2_5.mp4").label == "cat"
    # A fetch's _manifest.parquet is a label index as well.
    index.manifest.write(str(tmp_path / "_manifest.parquet"))
    again = load_label_index(str(tmp_path / "_manifest.parquet"))
    assert again.format == "vggsound" and again.entries == index.entries
    # A table naming ids (no paths) matches files by stem; one naming paths, by path.
    (tmp_path / "ids.jsonl").write_text('{"id": "yt9", "start": 20, "label": "owl"}\n')
    by_id = load_label_index(str(tmp_path / "ids.jsonl"))
    assert by_id.match_by == "stem" and by_id.lookup("/x/yt9_000020.mp4", "yt9_000020.mp4").label == "owl"
    (tmp_path / "urls.csv").write_text("url,start,label\nhttp://m.example/a/clipA.mp4,30,owl\n")
    by_url = load_label_index(str(tmp_path / "urls.csv"))  # the files a fetch of it wrote: {clip_id}.mp4
    assert by_url.match_by == "stem" and by_url.lookup("/f/clipA_000030.mp4", "clipA_000030.mp4").label == "owl"
    (tmp_path / "bad.csv").write_text("a.mp4,cat\nb.mp4,\n")  # headerless path,label rows need both
    with pytest.raises(ValueError, match=r"bad\.csv: table line 2: empty path or label"):
        load_label_index(str(tmp_path / "bad.csv"))
