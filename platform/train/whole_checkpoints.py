"""Checkpoints that prove they are whole: a manifest of every file's size and sha256, written last into the
directory rank 0 hands to Ray Train, and a resume that takes the newest checkpoint whose files all match it.

A node lost while a checkpoint uploads can leave a directory without some of its files, or with a file cut
short; Ray Train still reports it as the latest. Ray uploads a directory's files in no fixed order, so the
manifest's presence alone proves nothing: every listed file is checked against its size and checksum (files
the manifest does not list, such as the other ranks' rank_<r>.json, are not needed to resume). A checkpoint
without a manifest, or with a file missing, short or changed, is skipped for the one before it, with a warning
that says why; with none whole the run starts from step 0, and says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_FILE = "checkpoint_manifest.json"
MANIFEST_FORMAT = "clipsynth-checkpoint-manifest/1"
CHECKPOINT_PREFIX = "checkpoint_"


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_manifest(directory: Path) -> dict:
    """List every file under `directory` (its size and sha256) in MANIFEST_FILE; call it after the last file."""
    files = {
        p.relative_to(directory).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST_FILE
    }
    manifest = {"format": MANIFEST_FORMAT, "files": files}
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


@dataclass(frozen=True)
class Wholeness:
    whole: bool
    reason: str = ""  # why not, for the warning


def check_whole(directory: Path) -> Wholeness:
    """Whether every file the manifest lists is there with its size and checksum."""
    path = directory / MANIFEST_FILE
    if not path.exists():
        return Wholeness(False, f"no {MANIFEST_FILE} (written last: the checkpoint was cut short)")
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError) as exc:
        return Wholeness(False, f"{MANIFEST_FILE} is unreadable ({exc})")
    if manifest.get("format") != MANIFEST_FORMAT:
        return Wholeness(False, f"{MANIFEST_FILE} has an unknown format {manifest.get('format')!r}")
    for name, expected in sorted(files.items()):
        p = directory / name
        if not p.is_file():
            return Wholeness(False, f"{name} is missing")
        size = p.stat().st_size
        if size != expected["bytes"]:
            return Wholeness(False, f"{name} has {size} bytes, the manifest says {expected['bytes']}")
        if _sha256(p) != expected["sha256"]:
            return Wholeness(False, f"{name} does not match its sha256 in the manifest")
    return Wholeness(True)


@dataclass
class Restored:
    """What `restore_whole` loaded, from which checkpoint, and the named subdirectories it copied out of it."""

    saved: Any
    path: str
    skipped: list[str] = field(default_factory=list)
    carried: dict[str, Path] = field(default_factory=dict)


def older_checkpoints(checkpoint) -> list:
    """Ray Train checkpoints beside `checkpoint` in its run's storage whose names sort before it, newest first
    (the names end in the zero-padded step)."""
    import pyarrow.fs as pafs
    import ray.train

    parent, _, name = checkpoint.path.rstrip("/").rpartition("/")
    infos = checkpoint.filesystem.get_file_info(pafs.FileSelector(parent, allow_not_found=True))
    names = sorted(
        (i.base_name for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith(CHECKPOINT_PREFIX)),
        reverse=True,
    )
    return [ray.train.Checkpoint(f"{parent}/{n}", filesystem=checkpoint.filesystem) for n in names if n < name]


def restore_whole(
    checkpoint,
    load: Callable[[Path, str], Any],
    log: logging.Logger,
    carry: tuple[str, ...] = (),
) -> Restored | None:
    """`load(directory, path)` on the newest whole checkpoint, from Ray Train's `checkpoint` back through the older
    ones in its storage; the subdirectories named in `carry` are copied to local temporary directories first
    (a remote checkpoint's directory is gone after loading). None when no checkpoint is whole."""
    skipped: list[str] = []
    for candidate in [checkpoint, *older_checkpoints(checkpoint)]:
        with candidate.as_directory() as d:
            directory = Path(d)
            verdict = check_whole(directory)
            if not verdict.whole:
                log.warning(f"checkpoint {candidate.path} is not whole: {verdict.reason}; skipping it")
                skipped.append(candidate.path)
                continue
            carried = {}
            for name in carry:
                if (directory / name).is_dir():
                    carried[name] = Path(tempfile.mkdtemp(prefix=f"clipsynth-{name}-"))
                    shutil.copytree(directory / name, carried[name], dirs_exist_ok=True)
            saved = load(directory, candidate.path)
        if skipped:
            log.warning(f"resuming from {candidate.path}, the newest whole checkpoint ({len(skipped)} newer skipped)")
        return Restored(saved, candidate.path, skipped, carried)
    log.warning(f"no whole checkpoint among {len(skipped)} ({', '.join(skipped)}): training starts from step 0")
    return None
