"""Building the corpus: plan every video from the seed, render and mux the missing ones in parallel, reuse the
rest, and write the label index and the manifest."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from clipsynth_platform.runtime import logs
from clipsynth_platform.runtime.console import progress_bar
from clipsynth_platform.runtime.logs import LogFn

from .audio import _tool_version, find_tools, render_audio, write_wav
from .config import (
    INSTRUMENTS,
    LABEL_INDEX_FILE,
    MANIFEST_FILE,
    RENDER_DIR,
    SPLIT_INDEX_FILE,
    CorpusConfig,
    CorpusManifest,
    CorpusVideo,
)
from .drawing import iter_frames, make_scene
from .melody import Melody, compose_melody, midi_bytes, video_rng, video_seconds
from .mux import encode_video


def _generator_digest() -> str:
    """SHA-256 of this package's source: every module here shapes the files."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def config_hash(config: CorpusConfig, tools: dict[str, str]) -> tuple[str, dict[str, str]]:
    """SHA-256 over everything that shapes the files: the config (less `out`, `workers`), this package's
    source (any change to the generator rebuilds rather than mixing old and new videos), the soundfont's
    identity, and the fluidsynth/ffmpeg versions. Returns (hash, identity)."""
    content = config.to_dict()
    content.pop("out")
    content.pop("workers")
    sf = Path(tools["soundfont"])
    identity = {
        "generator": _generator_digest(),
        "soundfont": f"{sf.name} ({sf.stat().st_size} bytes)",
        "fluidsynth": _tool_version(tools["fluidsynth"], "--version"),
        "ffmpeg": _tool_version(tools["ffmpeg"], "-version"),
    }
    blob = json.dumps({"config": content, "identity": identity}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest(), identity


def plan_videos(config: CorpusConfig) -> list[tuple[CorpusVideo, Melody]]:
    """Every video of the config with its melody; cheap (no rendering), deterministic from the seed."""
    planned = []
    for label in config.classes:
        instrument = INSTRUMENTS[label]
        for index in range(1, config.videos_per_class + 1):
            rng = video_rng(config.seed, label, index)
            seconds = video_seconds(rng, config)
            melody = compose_melody(rng, instrument, seconds)
            vid = f"{label}_{index:03d}"
            pitches = [n.pitch for n in melody.notes]
            entry = CorpusVideo(
                id=vid,
                label=label,
                video=f"{label}/{vid}.mp4",
                midi=f"{RENDER_DIR}/{label}/{vid}.mid",
                wav=f"{RENDER_DIR}/{label}/{vid}.wav",
                seconds=seconds,
                program=instrument.program,
                tempo_bpm=melody.tempo_bpm,
                tonic=melody.tonic,
                scale=melody.scale,
                lowest_note=min(pitches),
                highest_note=max(pitches),
                notes=len(pitches),
            )
            planned.append((entry, melody))
    assign_splits([entry for entry, _ in planned], config)
    return planned


def assign_splits(videos: Sequence[CorpusVideo], config: CorpusConfig) -> None:
    """Stratified split: in every class, the `test_per_class` videos that rank first by a hash of (seed, id) go
    to test. A video's rank does not depend on how many videos its class has."""
    by_label: dict[str, list[CorpusVideo]] = {}
    for v in videos:
        by_label.setdefault(v.label, []).append(v)
    for group in by_label.values():
        ranked = sorted(group, key=lambda v: hashlib.sha256(f"clipsynth-split:{config.seed}:{v.id}".encode()).digest())
        for rank, v in enumerate(ranked):
            v.split = "test" if rank < config.test_per_class else "train"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _partial(path: Path) -> Path:
    """Where a file is written before its atomic rename: hidden and with a non-video suffix, so that an
    interrupted build never leaves something the ingestion job would list."""
    return path.with_name(f".{path.name}.partial")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = _partial(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build_video(root: Path, entry: CorpusVideo, melody: Melody, config: CorpusConfig, tools: dict[str, str]) -> dict:
    """Write one video's MIDI, WAV and mp4 (each atomically; the mp4 last, so its presence means done)."""
    instrument = INSTRUMENTS[entry.label]
    midi_path, wav_path, video_path = root / entry.midi, root / entry.wav, root / entry.video
    midi_path.parent.mkdir(parents=True, exist_ok=True)
    video_path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(midi_path, midi_bytes(melody, instrument.program, name=entry.id))
    pcm = render_audio(midi_path, tools, config, entry.seconds)
    tmp_wav = _partial(wav_path)
    write_wav(tmp_wav, pcm, config.sample_rate)
    os.replace(tmp_wav, wav_path)
    # The scene draws from its own stream so that the music above and the picture never shift each other.
    picture_rng = video_rng(config.seed, entry.label + "/picture", int(entry.id.rsplit("_", 1)[1]))
    scene = make_scene(picture_rng, entry.label, config)
    frames = iter_frames(scene, melody, instrument, config.fps)
    tmp_video = _partial(video_path)
    encode_video(tmp_video, frames, wav_path, tools, config)
    os.replace(tmp_video, video_path)
    return {"video": _sha256(video_path), "midi": _sha256(midi_path), "wav": _sha256(wav_path)}


def _is_complete(root: Path, entry: CorpusVideo, recorded: CorpusVideo | None) -> dict | None:
    """The entry's SHA-256 digests if its three files exist and match what the manifest recorded (files of an
    interrupted build have no record; they are whole, since each appeared by an atomic rename)."""
    paths = {"video": root / entry.video, "midi": root / entry.midi, "wav": root / entry.wav}
    if not all(p.is_file() for p in paths.values()):
        return None
    digests = {k: _sha256(p) for k, p in paths.items()}
    if recorded is not None and recorded.sha256 and recorded.sha256 != digests:
        return None
    return digests


def _remove_files(root: Path, videos: Sequence[CorpusVideo]) -> None:
    """Delete a previous build's files (only the ones its manifest names) and the folders left empty."""
    dirs = set()
    for v in videos:
        for rel in (v.video, v.midi, v.wav):
            p = root / rel
            for candidate in (p, _partial(p)):
                if candidate.is_file():
                    candidate.unlink()
            dirs.add(p.parent)
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        for parent in (d, *d.parents):
            if parent == root or root not in parent.parents:
                break
            try:
                parent.rmdir()
            except OSError:
                break


def write_label_index(root: Path, manifest: CorpusManifest) -> Path:
    """MUSIC's JSON format: {"videos": {"<class>": ["<id>", ...]}}; files are `<root>/<class>/<id>.mp4`."""
    path = root / LABEL_INDEX_FILE
    _write_atomic(path, (json.dumps({"videos": manifest.by_label()}, indent=1) + "\n").encode())
    return path


def write_split_index(root: Path, manifest: CorpusManifest) -> Path:
    """`path,label,split` rows (the ingestion job's CSV label format), paths relative to the corpus root."""
    path = root / SPLIT_INDEX_FILE
    rows = ["path,label,split"] + [f"{v.video},{v.label},{v.split}" for v in manifest.videos]
    _write_atomic(path, ("\n".join(rows) + "\n").encode())
    return path


def _write_manifest(root: Path, manifest: CorpusManifest) -> None:
    _write_atomic(root / MANIFEST_FILE, (manifest.to_json() + "\n").encode())


def build_corpus(
    config: CorpusConfig,
    rebuild: bool = False,
    progress: LogFn | None = None,
) -> CorpusManifest:
    """Build (or reuse) the corpus under `config.out` and return its manifest.

    With a manifest of the same config hash in `out`, every video whose files are present and match the
    recorded SHA-256 is reused; the rest are built. A manifest of another config: its files are removed first.
    A non-empty `out` without a manifest is refused (it is not a corpus this builder made). `rebuild=True`
    builds everything again.
    """
    started = time.perf_counter()
    config.validate()
    say = progress or logs.progress("corpus")
    tools = find_tools(config)
    digest, identity = config_hash(config, tools)
    root = Path(config.out).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"corpus output {root} exists and is not a directory")
    root.mkdir(parents=True, exist_ok=True)

    previous: CorpusManifest | None = None
    if (root / MANIFEST_FILE).is_file():
        previous = CorpusManifest.read(root)
    elif any(root.iterdir()):
        shown = ", ".join(sorted(p.name for p in root.iterdir())[:5])
        raise ValueError(
            f"corpus output {root} is not empty and holds no {MANIFEST_FILE} ({shown}...): "
            "give an empty or new directory, or one this builder wrote"
        )
    planned = plan_videos(config)
    if previous is not None and (previous.config_hash != digest or rebuild):
        say(f"config changed or rebuild asked: removing the {len(previous.videos)} videos of the previous build")
        _remove_files(root, previous.videos)
        (root / LABEL_INDEX_FILE).unlink(missing_ok=True)
        (root / SPLIT_INDEX_FILE).unlink(missing_ok=True)
        previous = None
    recorded = {v.id: v for v in previous.videos} if previous is not None else {}

    manifest = CorpusManifest(
        root=str(root),
        config=config.to_dict(),
        config_hash=digest,
        status="building",
        videos=[entry for entry, _ in planned],
        tools=identity,
    )
    manifest.config.pop("out")  # the folder may move
    manifest.config.pop("workers")  # changes speed, not content
    # Written before any video, so an interrupted build is recognised (and resumed) by the next one.
    _write_manifest(root, manifest)
    todo = []
    for entry, melody in planned:
        digests = _is_complete(root, entry, recorded.get(entry.id))
        if digests is not None:
            entry.sha256 = digests
            manifest.reused.append(entry.id)
        else:
            todo.append((entry, melody))
    workers = config.workers or os.cpu_count() or 1
    say(
        f"corpus {root}: {len(planned)} videos ({len(config.classes)} classes x {config.videos_per_class}), "
        f"{len(manifest.reused)} reused, {len(todo)} to build"
        + (f" with {min(workers, len(todo))} workers" if todo else "")
    )
    if todo:
        detail = logs.get_logger("corpus").debug  # one line per video, in the log file
        with ThreadPoolExecutor(max_workers=workers) as pool, progress_bar(len(todo), "corpus", "videos", say) as bar:
            futures = {pool.submit(build_video, root, e, m, config, tools): e for e, m in todo}
            for done, future in enumerate(as_completed(futures), start=1):
                entry = futures[future]
                entry.sha256 = future.result()
                manifest.built.append(entry.id)
                detail(
                    f"[{done}/{len(todo)}] {entry.video}: {entry.seconds:.1f} s, {entry.tempo_bpm} bpm, "
                    f"notes {entry.lowest_note}-{entry.highest_note}"
                )
                bar.update(1)
    manifest.built.sort()
    write_label_index(root, manifest)
    write_split_index(root, manifest)
    manifest.status = "complete"
    manifest.elapsed_seconds = round(time.perf_counter() - started, 3)
    _write_manifest(root, manifest)
    total = sum(v.seconds for v in manifest.videos)
    say(
        f"done in {manifest.elapsed_seconds:.1f} s: {len(manifest.built)} built, {len(manifest.reused)} reused, "
        f"{total:.0f} s of video; labels: {root / LABEL_INDEX_FILE}"
    )
    return manifest
