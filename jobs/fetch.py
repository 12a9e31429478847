"""Fetch the clips a manifest lists (yt-dlp on Ray): only each clip's window, H.264/AAC where offered, into
`{clip_id}.mp4` files (what jobs/preprocess.py --input reads) or WebDataset tar shards, with a per-clip ledger
(_fetch_ledger.parquet: status, error class, the tool's message, attempts) and _fetch_summary.json.

    python jobs/fetch.py --manifest vggsound.csv --format vggsound --output videos/
    python jobs/fetch.py --manifest MUSIC21_solo_videos.json --format music --output s3://bucket/music \\
        --output-format webdataset --cookies cookies.txt --concurrency 8
    python jobs/fetch.py --manifest clips.csv --format table --output videos/ \\
        --url-template "http://mirror.example/{clip_id}.mp4" --no-cut

Re-running the same command resumes: clips already fetched cost no request; transient failures (HTTP 429, the bot
check, network, timeouts) are tried again, permanent ones (unavailable, private, removed) only with
--retry-failed. Every option is a field of clipsynth_platform.fetch.FetchConfig.
"""

import sys

from clipsynth_platform.fetch.job import main

if __name__ == "__main__":
    sys.exit(main(None, __doc__))
