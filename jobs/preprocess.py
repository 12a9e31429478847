"""Ingest in-the-wild video into training shards (Ray Data): decode videos into 10 s chunks (log-mel, JPEG
frames, CLIP embeddings, 16 kHz PCM) as Parquet shards.

Laptop:   python jobs/preprocess.py --input videos/ --output shards/ --labels MUSIC21_solo_videos.json
Cluster:  ray job submit --working-dir . -- python jobs/preprocess.py --input s3://bucket/videos \\
              --output s3://bucket/shards --num-gpus 4
(with RAY_ADDRESS set, as under `ray job submit`, the job joins that cluster; otherwise it starts a local one).
Re-running the same command resumes: only videos without a committed outcome are processed.
Every option is a field of clipsynth_platform.ingest.IngestConfig.
"""

import sys

from clipsynth_platform.ingest.job import main

if __name__ == "__main__":
    sys.exit(main(None, __doc__))
