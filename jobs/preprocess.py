"""Ingest in-the-wild video into training shards (Ray Data): decode videos into 10 s chunks (log-mel, JPEG
frames, CLIP embeddings, 16 kHz PCM) as Parquet shards.

Laptop:   python jobs/preprocess.py --input videos/ --output shards/ --labels MUSIC21_solo_videos.json
Mirrors:  python jobs/preprocess.py --input vggsound_mirror/ --output shards/ --labels vggsound.csv
              (a folder, files or s3:// prefixes of WebDataset .tar / .tar.gz shards of {clip_id}.mp4, Parquet
              files with a video-bytes column (--parquet-video-column), or videos; mixed is fine)
Cluster:  ray job submit --working-dir . -- python jobs/preprocess.py --input s3://bucket/videos \\
              --output s3://bucket/shards --num-gpus 4
(with RAY_ADDRESS set, as under `ray job submit`, the job joins that cluster; otherwise it starts a local one).
Re-running the same command resumes: only videos without a committed outcome are processed. A .tar.gz is read
by one task from its start; decompress mirrors' shards (`gunzip -k x.tar.gz`: mp4 does not compress) for their
members to spread over all workers. Why each video failed: _failures.parquet; counts, hygiene and the coverage
report against the label index: _summary.json (and MLflow with --tracking-uri).
Every option is a field of clipsynth_platform.ingest.IngestConfig.
"""

import sys

from clipsynth_platform.ingest.job import main

if __name__ == "__main__":
    sys.exit(main(None, __doc__))
