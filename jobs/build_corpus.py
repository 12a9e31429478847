"""Build the built-in sample corpus: labelled instrument videos made offline (MIDI -> FluidSynth -> H.264/AAC
mp4, FluidSynth + ffmpeg) with a MUSIC-style JSON label index.

    python jobs/build_corpus.py --out corpus/
    python jobs/build_corpus.py --out corpus/ --classes violin cello flute --videos-per-class 10 --max-seconds 30
    python jobs/preprocess.py --input corpus/ --output shards/ --labels corpus/music_solo_videos.json

Re-running the same command reuses the videos already built (corpus_manifest.json records the config hash).
Needs the Debian packages fluidsynth, ffmpeg and a General MIDI soundfont (timgm6mb-soundfont by default).
Every option but --rebuild and --list-classes is a field of clipsynth_platform.datasets.corpus.CorpusConfig.
"""

import sys

from clipsynth_platform.datasets.corpus.job import main

if __name__ == "__main__":
    sys.exit(main(None, __doc__))
