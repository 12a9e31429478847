"""The built-in sample corpus: real, labelled instrument videos made offline, for demos, smoke runs and tests.

Each video is a melody written here as a Standard MIDI File (varied tempo, key, scale, register, rhythm and
articulation, all drawn from the seed), rendered to audio by FluidSynth with a General MIDI soundfont
(Debian packages), and muxed by ffmpeg with frames drawn by PIL (the instrument's picture in its class
colour and the class name, with a per-video background, size, tilt and placement) into an H.264 + AAC mp4.

    from clipsynth_platform.datasets.corpus import CorpusConfig, build_corpus
    manifest = build_corpus(CorpusConfig(out="corpus/"))

Layout under `out` (MUSIC's layout; the ingestion job reads it with `--labels out/corpus_index.csv` for the corpus's
stratified split, or `--labels out/music_solo_videos.json` to hash videos into splits):

    <out>/<class>/<id>.mp4                  the videos, ids like "violin_003"
    <out>/music_solo_videos.json            {"videos": {"<class>": ["<id>", ...], ...}} (MUSIC21 JSON format)
    <out>/corpus_index.csv                  path,label,split rows: the stratified train/test split
    <out>/_render/<class>/<id>.mid|.wav     the MIDI written and the mono 16-bit audio muxed into the video
    <out>/corpus_manifest.json              the config, its hash, and every file with its SHA-256

The same config (seed included) gives byte-identical MIDI, WAV and label index; the mp4 files are encoded
with ffmpeg's bitexact flags and one thread so they are reproducible too with the same ffmpeg build.
Building is idempotent: a second build with the same config hash checks the files against the manifest and
rebuilds only missing or altered ones; an interrupted build resumes; a new config replaces the old files.
"""

from .build import assign_splits, build_corpus, plan_videos
from .config import CorpusConfig, CorpusManifest, CorpusToolError

# The package's API is the build and its config, manifest and error; the file names, the instruments and the
# other constants live in .config (import them from there).
__all__ = [
    "CorpusConfig",
    "CorpusManifest",
    "CorpusToolError",
    "assign_splits",
    "build_corpus",
    "plan_videos",
]
