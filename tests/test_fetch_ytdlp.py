"""yt-dlp's real code path (Python API in the download child, generic extractor, ffmpeg cutting the window)
against a loopback HTTP server serving ffmpeg-made videos; a stand-in extractor (a yt-dlp plugin, loaded by
yt-dlp's own plugin mechanism) for what loopback cannot produce: YouTube's bot check and its private/removed
answers. No Ray: one DownloaderProcess and the retry loop, as each download actor runs them."""

from __future__ import annotations

import os
import textwrap

import pytest
from loopback_videos import LoopbackServer, tone_seconds, tone_video

from clipsynth_platform.fetch.attempts import ClipRequest, RetryPolicy, fetch_with_retries
from clipsynth_platform.fetch.config import default_format_selector
from clipsynth_platform.fetch.process import DownloaderProcess
from clipsynth_platform.fetch.ytdlp import DownloaderSettings


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    tone_video(root / "long.mp4", seconds=60)
    (root / "broken.mp4").write_bytes(b"this is a text file, not a video\n" * 20)
    with LoopbackServer(root) as server:
        yield server


def _downloader(tmp_path, extractors=("generic",), socket_timeout=30.0) -> DownloaderProcess:
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    settings = DownloaderSettings(
        scratch=str(scratch),
        format_selector=default_format_selector(360),
        extractors=extractors,
        socket_timeout=socket_timeout,
    )
    return DownloaderProcess(settings)


@pytest.fixture(scope="module")
def downloader(tmp_path_factory):
    process = _downloader(tmp_path_factory.mktemp("child"))
    yield process
    process.close()


def test_the_window_downloaded_is_the_clips_and_two_clips_of_one_video_are_both_kept(site, downloader):
    before = len(site.log)
    first = downloader.download(site.url("long.mp4"), "long_000030", 30.0, 40.0, 60.0)
    second = downloader.download(site.url("long.mp4"), "long_000000", 0.0, 10.0, 60.0)
    assert first.ok and second.ok, (first.message, second.message)
    assert first.path != second.path and os.path.exists(first.path) and os.path.exists(second.path)
    # The tone says which source second each second of the clip holds.
    assert tone_seconds(first.path) == list(range(30, 40))
    assert tone_seconds(second.path) == list(range(0, 10))
    assert (first.video_codec, first.audio_codec) == ("h264", "aac")
    assert abs(first.duration - 10.0) < 0.1 and first.bytes == os.path.getsize(first.path)
    # ffmpeg asked for the bytes from the window on (a range request past the file's first third), not the start.
    size = os.path.getsize(site.root / "long.mp4")
    ranges = [r for path, r, _ in site.log[before:] if path == "long.mp4" and r.startswith("bytes=")]
    assert any(int(r[6:].split("-")[0]) > size / 3 for r in ranges), ranges
    # A whole video (MUSIC: no window).
    whole = downloader.download(site.url("long.mp4"), "long", None, None, 60.0)
    assert whole.ok and abs(whole.duration - 60.0) < 0.2


def test_a_404_is_permanent_and_a_non_video_fails_with_its_reason(site, downloader):
    waits: list[float] = []
    policy = RetryPolicy(retries=2, backoff_seconds=1.0, timeout_seconds=60.0)
    before = site.requests["gone.mp4"]
    done = fetch_with_retries(
        ClipRequest("gone", site.url("gone.mp4"), 0.0, 10.0), downloader.download, policy, waits.append
    )
    assert (done.failure.error_class, done.failure.permanent, done.attempts, waits) == ("unavailable", True, 1, [])
    assert "HTTP Error 404" in done.failure.message and site.requests["gone.mp4"] == before + 1  # no retry
    done = fetch_with_retries(
        ClipRequest("broken", site.url("broken.mp4"), 0.0, 10.0), downloader.download, policy, waits.append
    )
    assert (done.failure.error_class, done.failure.permanent, done.attempts) == ("invalid_media", True, 1)
    assert "Invalid data found when processing input" in done.failure.message  # ffmpeg's own words


def test_http_429_is_retried_with_backoff(site, downloader):
    site.fail_first["busy.mp4"] = (2, 429)
    os.link(site.root / "long.mp4", site.root / "busy.mp4")
    waits: list[float] = []
    policy = RetryPolicy(retries=3, backoff_seconds=0.5, max_backoff_seconds=10.0, timeout_seconds=60.0)
    request = ClipRequest("busy_000005", site.url("busy.mp4"), 5.0, 15.0)
    done = fetch_with_retries(request, downloader.download, policy, waits.append, rng=lambda: 0.5)
    assert done.failure is None and done.attempts == 3 and waits == [0.5, 1.0]
    assert tone_seconds(done.reply.path) == list(range(5, 15))
    # Too many 429s for the retries: the clip fails as rate_limited (transient: a re-run tries it again).
    site.fail_first["busy.mp4"] = (site.requests["busy.mp4"] + 10, 429)
    done = fetch_with_retries(request, downloader.download, RetryPolicy(1, 0.1, 1.0, 60.0), waits.append)
    assert (done.failure.error_class, done.failure.permanent, done.attempts) == ("rate_limited", False, 2)
    assert "HTTP Error 429" in done.failure.message


@pytest.mark.slow  # 8 s on 2 shared cores: out of make test-fast
def test_a_hang_past_the_timeout_is_stopped_and_the_next_clip_still_works(site, tmp_path):
    site.hang.add("stall.mp4")
    process = _downloader(tmp_path)
    try:
        reply = process.download(site.url("stall.mp4"), "stall", 0.0, 10.0, 2.0)
        assert (reply.ok, reply.error_kind) == (False, "timeout") and "no result after 2 s" in reply.message
        assert process.proc is None  # the child and its process group were killed
        ok = process.download(site.url("long.mp4"), "long_000050", 50.0, 60.0, 60.0)
        assert ok.ok and process.starts == 2 and tone_seconds(ok.path) == list(range(50, 60))
        # Through the retry loop: a timeout is transient, tried again, and each try is stopped in time.
        done = fetch_with_retries(
            ClipRequest("stall", site.url("stall.mp4"), 0.0, 10.0),
            process.download,
            RetryPolicy(retries=1, backoff_seconds=0.1, timeout_seconds=1.5),
            sleep=lambda s: None,
        )
        assert (done.failure.error_class, done.failure.permanent, done.attempts) == ("timeout", False, 2)
        assert site.requests["stall.mp4"] == 3
    finally:
        process.close()


# A yt-dlp plugin extractor that answers as YouTube's does where loopback cannot: the bot check, a private video,
# a removed one; "flaky" gives the bot check twice, then hands over to the loopback video named by ?target=.
STAND_IN = """
from urllib.parse import parse_qs, urlparse

from yt_dlp.extractor.common import InfoExtractor

REASONS = {
    "botcheck": "Sign in to confirm you\u2019re not a bot. Use --cookies-from-browser or --cookies for the "
    "authentication",
    "private": "Private video. Sign in if you've been granted access to this video",
    "removed": "Video unavailable. This video has been removed by the uploader",
}


class ClipsynthStandInIE(InfoExtractor):
    _VALID_URL = r"https?://standin\\.invalid/(?P<kind>[a-z]+)/(?P<id>[^/?#]+)"
    _tries = {}

    def _real_extract(self, url):
        kind, video_id = self._match_valid_url(url).group("kind", "id")
        if kind == "flaky":
            self._tries[video_id] = self._tries.get(video_id, 0) + 1
            if self._tries[video_id] > 2:
                return self.url_result(parse_qs(urlparse(url).query)["target"][0])
            kind = "botcheck"
        self.raise_no_formats(REASONS[kind], expected=True, video_id=video_id)
"""


def test_stand_in_extractor_bot_check_private_and_removed(site, tmp_path, monkeypatch):
    plugin = tmp_path / "plugins" / "yt_dlp_plugins" / "extractor" / "clipsynth_standin.py"
    plugin.parent.mkdir(parents=True)
    plugin.write_text(textwrap.dedent(STAND_IN))
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))  # the child's PYTHONPATH: yt-dlp finds the plugin there
    process = _downloader(tmp_path, extractors=("clipsynthstandin", "generic"))
    try:
        waits: list[float] = []
        policy = RetryPolicy(retries=2, backoff_seconds=3.0, max_backoff_seconds=100.0, timeout_seconds=60.0)

        def fetch(url: str, clip_id: str = "abc_000010"):
            return fetch_with_retries(
                ClipRequest(clip_id, url, 10.0, 20.0), process.download, policy, waits.append, lambda: 0.5
            )

        done = fetch("http://standin.invalid/botcheck/abc")
        assert (done.failure.error_class, done.failure.permanent, done.attempts) == ("bot_check", False, 3)
        assert waits == [3.0, 6.0] and "confirm you\u2019re not a bot" in done.failure.message
        assert done.failure.message.startswith("[ClipsynthStandIn] abc:")  # yt-dlp's own line, as recorded
        waits.clear()
        for kind, expected in (("private", "private"), ("removed", "removed")):
            done = fetch(f"http://standin.invalid/{kind}/abc")
            assert (done.failure.error_class, done.failure.permanent, done.attempts) == (expected, True, 1)
        assert waits == []
        done = fetch(f"http://standin.invalid/flaky/xyz?target={site.url('long.mp4')}", "xyz_000010")
        assert done.failure is None and done.attempts == 3 and waits == [3.0, 6.0]
        assert tone_seconds(done.reply.path) == list(range(10, 20))
    finally:
        process.close()
