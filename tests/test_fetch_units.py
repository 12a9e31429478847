"""The fetch stage without Ray or a network: failure classes from yt-dlp's and YouTube's own messages, retries
and back-off, the plan a re-run makes from the ledger, WebDataset shards, atomic writes, the job's flags."""

from __future__ import annotations

import json
import os
import tarfile

import pytest

from clipsynth_platform.datasets.manifest import parse_vggsound_csv
from clipsynth_platform.fetch import PERMANENT, TRANSIENT, Ledger, LedgerRow, classify
from clipsynth_platform.fetch.attempts import ClipRequest, RetryPolicy, fetch_with_retries
from clipsynth_platform.fetch.config import FetchConfig, default_format_selector, render_url
from clipsynth_platform.fetch.failures import clean_message
from clipsynth_platform.fetch.output import ShardWriter, list_output, next_shard_index
from clipsynth_platform.fetch.plan import ADOPTED_MESSAGE, plan_fetch
from clipsynth_platform.fetch.ytdlp import DownloadReply
from clipsynth_platform.runtime.options import build_parser, parse_config
from clipsynth_platform.runtime.uri import copy_atomically, write_atomically

# What yt-dlp 2026.11 and YouTube say (the generic extractor's lines were produced on loopback; YouTube's
# reasons are its playability texts as yt-dlp's YouTube extractor reports them).
MESSAGES = [
    (
        "ERROR: [generic] x: Unable to download webpage: HTTP Error 404: File not found (caused by ...)",
        404,
        "unavailable",
    ),
    ("ERROR: [generic] x: Unable to download webpage: HTTP Error 429: Too Many Requests", 429, "rate_limited"),
    ("ERROR: [youtube] abc: Video unavailable", None, "unavailable"),
    ("ERROR: [youtube] abc: Video unavailable. This video is private", None, "private"),
    ("ERROR: [youtube] abc: Private video. Sign in if you've been granted access to this video", None, "private"),
    ("ERROR: [youtube] abc: Video unavailable. This video has been removed by the uploader", None, "removed"),
    (
        "ERROR: [youtube] abc: Video unavailable. This video is no longer available because the YouTube account "
        "associated with this video has been terminated.",
        None,
        "removed",
    ),
    (
        "ERROR: [youtube] abc: Sign in to confirm you’re not a bot. Use --cookies-from-browser or --cookies",
        None,
        "bot_check",
    ),
    (
        "ERROR: [youtube] abc: Sign in to confirm your age. This video may be inappropriate for some users.",
        None,
        "login_required",
    ),
    ("ERROR: [youtube] abc: The uploader has not made this video available in your country", None, "geo_blocked"),
    ("ERROR: [youtube] abc: This content isn't available, try again later.", None, "rate_limited"),
    (
        "ERROR: ffmpeg exited with code 1: moov atom not found | x: Invalid data found when processing input",
        None,
        "invalid_media",
    ),
    ("ERROR: [generic] x: Unable to download webpage: Read timed out. (read timeout=30.0)", None, "network"),
    ("ERROR: [generic] x: Unable to download webpage: HTTP Error 503: Service Unavailable", 503, "network"),
    ("ERROR: Unsupported URL: http://example.com/page", None, "unsupported"),
    ("something nobody has seen before", None, "other"),
]


@pytest.mark.parametrize(("message", "status", "expected"), MESSAGES)
def test_failures_are_classified_from_the_tools_message(message, status, expected):
    assert classify(clean_message(message), status) == expected


def test_failure_classes_split_into_permanent_and_transient():
    assert set(PERMANENT).isdisjoint(TRANSIENT)
    assert {"unavailable", "private", "removed"} <= set(PERMANENT)
    assert {"rate_limited", "bot_check", "network", "timeout"} <= set(TRANSIENT)
    assert clean_message("\x1b[0;31mERROR:\x1b[0m  [generic]   x:\n bad") == "[generic] x: bad"


class Scripted:
    """A stand-in download: answers each call with the next reply of a script, recording the calls."""

    def __init__(self, *replies: DownloadReply) -> None:
        self.replies = list(replies)
        self.calls: list[tuple] = []

    def __call__(self, url, clip_id, start, end, timeout) -> DownloadReply:
        self.calls.append((url, clip_id, start, end, timeout))
        return self.replies.pop(0)


OK = DownloadReply(ok=True, path="/tmp/x.mp4", bytes=10, duration=10.0)
RATE = DownloadReply(ok=False, message="ERROR: HTTP Error 429: Too Many Requests", http_status=429)
BOT = DownloadReply(ok=False, message="ERROR: [youtube] a: Sign in to confirm you’re not a bot.")
GONE = DownloadReply(ok=False, message="ERROR: [youtube] a: Video unavailable")
HUNG = DownloadReply(ok=False, error_kind="timeout", message="no result after 5 s: the download was stopped")
REQUEST = ClipRequest("a_000030", "http://h/a.mp4", 30.0, 40.0)


def test_transient_failures_are_retried_with_doubling_backoff():
    download = Scripted(RATE, BOT, HUNG, OK)
    waits: list[float] = []
    policy = RetryPolicy(retries=3, backoff_seconds=2.0, max_backoff_seconds=100.0, timeout_seconds=5.0)
    done = fetch_with_retries(REQUEST, download, policy, sleep=waits.append, rng=lambda: 0.5)
    assert done.failure is None and done.attempts == 4 and done.reply is OK
    assert waits == [2.0, 4.0, 8.0] == list(done.waits)  # 2 * 2**(k-1), times 1.0 (rng 0.5)
    assert download.calls == [("http://h/a.mp4", "a_000030", 30.0, 40.0, 5.0)] * 4


def test_retries_run_out_and_the_last_failure_is_kept():
    download = Scripted(RATE, RATE, BOT)
    waits: list[float] = []
    policy = RetryPolicy(retries=2, backoff_seconds=10.0, max_backoff_seconds=15.0)
    done = fetch_with_retries(REQUEST, download, policy, sleep=waits.append, rng=lambda: 0.99)
    assert (done.attempts, done.failure.error_class, done.failure.permanent) == (3, "bot_check", False)
    assert waits == [pytest.approx(14.9), 15.0]  # 10 * 1.49, then 20 * 1.49 capped at 15


def test_permanent_failures_and_timeouts():
    waits: list[float] = []
    done = fetch_with_retries(REQUEST, Scripted(GONE), RetryPolicy(retries=5), sleep=waits.append)
    assert (done.attempts, done.failure.error_class, done.failure.permanent, waits) == (1, "unavailable", True, [])
    assert done.failure.message == "[youtube] a: Video unavailable"
    done = fetch_with_retries(REQUEST, Scripted(HUNG), RetryPolicy(retries=0), sleep=waits.append)
    assert (done.failure.error_class, done.failure.permanent) == ("timeout", False)
    # The jitter stays within [0.5, 1.5) of the doubling base.
    policy = RetryPolicy(backoff_seconds=4.0, max_backoff_seconds=1e9)
    assert policy.delay(3, lambda: 0.0) == 8.0 and policy.delay(3, lambda: 0.999999) < 24.0


def test_url_templates_and_the_format_selector():
    assert render_url("https://www.youtube.com/watch?v={id}", "abc", "abc_000030", 30.0, 40.0) == (
        "https://www.youtube.com/watch?v=abc"
    )
    assert render_url("http://m/{clip_id}.mp4?s={start}&e={end}", "v", "v_000001", 1.0, 11.5) == (
        "http://m/v_000001.mp4?s=1&e=11.5"
    )
    assert render_url("http://m/{id}.mp4", "v", "v", None, None) == "http://m/v.mp4"
    selector = default_format_selector(360)
    assert selector.startswith("bv*[vcodec^=avc1][height<=?360]+ba[acodec^=mp4a]/") and selector.endswith("/b")


def test_config_flags_and_checks(capsys):
    cfg = parse_config(
        FetchConfig,
        ["--manifest", "v.csv", "--format", "vggsound", "--output", "s3://b/v", "--url-template", "http://m/{id}.mp4"],
        None,
    )
    assert (cfg.format, cfg.output_format, cfg.concurrency, cfg.cut, cfg.retry_failed) == (
        "vggsound",
        "files",
        4,
        True,
        False,
    )
    help_text = build_parser(FetchConfig, None).format_help()
    for flag in ("--cookies", "--proxy", "--sleep-interval", "--retries", "--timeout-seconds", "--output-format"):
        assert flag in help_text
    for argv, message in [
        (["--output", "o"], "--manifest is required"),
        (["--manifest", "m", "--output", "o", "--url-template", "http://m/x.mp4"], "must contain {id} or {clip_id}"),
        (["--manifest", "m", "--output", "o", "--url-template", "http://m/{ytid}"], "is not a template"),
        (["--manifest", "m", "--output", "o", "--concurrency", "0"], "--concurrency must be"),
        (["--manifest", "m", "--output", "o", "--format", "yaml"], "invalid choice"),
    ]:
        with pytest.raises(SystemExit):
            parse_config(FetchConfig, argv, None)
        assert message in capsys.readouterr().err
    # Secrets stay out of what is logged.
    logged = FetchConfig(manifest="m", output="o", proxy="http://user:pw@proxy:3128", cookies="c.txt").to_dict()
    assert logged["proxy"] == "set" and "pw" not in json.dumps(logged)


def _row(clip_id: str, status: str, error_class: str | None = None, permanent: bool = False, location=None):
    return LedgerRow(clip_id, "u", status, error_class, permanent, "", 1, 0, 0.0, None, None, None, location, "t", 1)


def test_a_rerun_plans_only_what_is_not_done():
    manifest = parse_vggsound_csv("a,0,x,train\nb,0,x,train\nc,0,x,train\nd,0,x,train\ne,0,x,train\nf,0,x,train\n")
    ledger = Ledger(
        {
            "a_000000": _row("a_000000", "ok", location="a_000000.mp4"),
            "b_000000": _row("b_000000", "failed", "unavailable", permanent=True),
            "c_000000": _row("c_000000", "failed", "rate_limited"),
            "d_000000": _row("d_000000", "ok", location="d_000000.mp4"),  # its file is gone
        }
    )
    present = {"a_000000.mp4": 5, "e_000000.mp4": 7}  # e: written by a run that stopped before its ledger
    config = FetchConfig(manifest="m", output="o", url_template="http://h/{id}.mp4")
    plan = plan_fetch(manifest, ledger, present, config, run=2, tool="yt-dlp x")
    assert [r.clip_id for _, r in plan.to_fetch] == ["c_000000", "d_000000", "f_000000"]
    assert plan.to_fetch[0][1].url == "http://h/c.mp4" and plan.to_fetch[0][1].start == 0.0
    assert (plan.skipped_ok, plan.skipped_permanent, plan.adopted, plan.missing_outputs) == (1, 1, 1, 1)
    adopted = ledger.get("e_000000")
    assert (adopted.status, adopted.bytes, adopted.message, adopted.run) == ("ok", 7, ADOPTED_MESSAGE, 2)
    # --retry-failed: the permanent failure too; --limit: no more than asked.
    config = FetchConfig(manifest="m", output="o", url_template="http://h/{id}.mp4", retry_failed=True, limit=2)
    plan = plan_fetch(manifest, ledger, present, config, run=3, tool="t")
    assert [r.clip_id for _, r in plan.to_fetch] == ["b_000000", "c_000000"] and plan.limited == 2


def test_a_table_row_without_a_url_is_refused_before_any_download():
    from clipsynth_platform.datasets.manifest import parse_table

    manifest = parse_table(b"path,label\nvideos/a.mp4,dog\n", "t.csv")
    with pytest.raises(ValueError, match=r"manifest line 2: 'videos/a\.mp4' is not a URL"):
        plan_fetch(manifest, Ledger(), {}, FetchConfig(manifest="m", output="o"), 1, "t")


def test_shards_hold_video_and_sidecar_and_appear_whole(tmp_path):
    out = str(tmp_path / "out")
    writer = ShardWriter(out, clips_per_shard=2, index=next_shard_index({"shard-000004.tar": 1, "x.mp4": 2}))
    assert writer.add("a_000000", b"video-a", {"clip_id": "a_000000", "label": "dog"}) is None
    assert list_output(out) == {}  # nothing in the output until the shard is full
    assert writer.add("b_000010", b"video-b", {"clip_id": "b_000010"}) == ("shard-000005.tar", ["a_000000", "b_000010"])
    assert writer.add("c_000020", b"video-c", {"clip_id": "c_000020"}) is None
    assert writer.commit() == ("shard-000006.tar", ["c_000020"]) and writer.commit() is None
    with tarfile.open(tmp_path / "out" / "shard-000005.tar") as tar:
        assert tar.getnames() == ["a_000000.mp4", "a_000000.json", "b_000010.mp4", "b_000010.json"]
        assert tar.extractfile("b_000010.mp4").read() == b"video-b"
        assert json.loads(tar.extractfile("a_000000.json").read()) == {"clip_id": "a_000000", "label": "dog"}
    assert sorted(list_output(out)) == ["shard-000005.tar", "shard-000006.tar"]


def test_atomic_writes_leave_the_old_file_or_the_whole_new_one(tmp_path, monkeypatch):
    target = tmp_path / "d" / "clip.mp4"
    write_atomically(str(target), b"first")
    umask = os.umask(0)
    os.umask(umask)
    assert target.read_bytes() == b"first" and target.stat().st_mode & 0o777 == 0o666 & ~umask
    source = tmp_path / "src.mp4"
    source.write_bytes(b"x" * 3_000_000)
    import shutil

    def broken_copy(src, dst, length=0):
        dst.write(src.read(1000))
        raise OSError("disk full")

    monkeypatch.setattr(shutil, "copyfileobj", broken_copy)
    with pytest.raises(OSError, match="disk full"):
        copy_atomically(str(source), str(target))
    assert target.read_bytes() == b"first" and sorted(p.name for p in target.parent.iterdir()) == ["clip.mp4"]
    monkeypatch.undo()
    copy_atomically(str(source), str(target))
    assert target.read_bytes() == source.read_bytes() and source.exists()


def test_ledger_round_trip(tmp_path):
    ledger = Ledger({"a": _row("a", "ok", location="a.mp4"), "b": _row("b", "failed", "private", permanent=True)})
    ledger.write(str(tmp_path))
    back = Ledger.read(str(tmp_path))
    assert back.rows == ledger.rows and back.last_run == 1
    assert back.counts(["a", "b", "c"]) == (1, {"private": 1})
    assert Ledger.read(str(tmp_path / "none")).rows == {}
