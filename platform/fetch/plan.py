"""What a fetch run does with each clip of the manifest, given the ledger and what the output holds:

- ok in the ledger, its file (or shard) in the output: nothing, and no request;
- failed permanently: nothing, unless --retry-failed;
- failed transiently, never tried, or ok but its file gone: fetched;
- no ok row but its `{clip_id}.mp4` in the output (a run stopped between writing the file and saving the
  ledger): adopted as ok without a request."""

from __future__ import annotations

from dataclasses import dataclass, field

from clipsynth_platform.datasets.manifest import Clip, Manifest

from .attempts import ClipRequest
from .config import FetchConfig, render_url
from .ledger import STATUS_OK, Ledger, LedgerRow
from .output import clip_file_name

URL_SCHEMES = ("http://", "https://", "ftp://")
ADOPTED_MESSAGE = "found in the output: written by an earlier run that stopped before saving the ledger"


@dataclass
class FetchPlan:
    to_fetch: list[tuple[Clip, ClipRequest]] = field(default_factory=list)
    skipped_ok: int = 0
    skipped_permanent: int = 0
    adopted: int = 0
    missing_outputs: int = 0  # ok in the ledger, but the file or shard is gone: fetched again
    limited: int = 0  # left for a later run by --limit


def clip_url(clip: Clip, template: str) -> str:
    """A table's own URL, else the template's URL of the clip's video."""
    if clip.source is not None:
        if not clip.source.startswith(URL_SCHEMES):
            raise ValueError(
                f"manifest line {clip.line}: {clip.source!r} is not a URL (a table's url column needs http(s) "
                "URLs; give an id column instead to build them with --url-template)"
            )
        return clip.source
    return render_url(template, clip.video_id, clip.clip_id, clip.start, clip.end)


def plan_fetch(
    manifest: Manifest, ledger: Ledger, present: dict[str, int], config: FetchConfig, run: int, tool: str
) -> FetchPlan:
    """Sort the manifest's clips; adopted files are recorded in `ledger` here."""
    plan = FetchPlan()
    for clip in manifest.clips:
        url = clip_url(clip, config.url_template)
        row = ledger.get(clip.clip_id)
        if row is not None and row.ok:
            if row.location in present:
                plan.skipped_ok += 1
                continue
            plan.missing_outputs += 1
        elif row is not None and row.permanent and not config.retry_failed:
            plan.skipped_permanent += 1
            continue
        elif config.output_format == "files" and clip_file_name(clip.clip_id) in present:
            name = clip_file_name(clip.clip_id)
            ledger.record(_adopted(clip.clip_id, url, name, present[name], row, run, tool))
            plan.adopted += 1
            continue
        if config.limit is not None and len(plan.to_fetch) >= config.limit:
            plan.limited += 1
            continue
        plan.to_fetch.append((clip, ClipRequest(clip.clip_id, url, clip.start, clip.end)))
    return plan


def _adopted(clip_id: str, url: str, name: str, size: int, old: LedgerRow | None, run: int, tool: str) -> LedgerRow:
    return LedgerRow(
        clip_id=clip_id,
        url=url,
        status=STATUS_OK,
        error_class=None,
        permanent=False,
        message=ADOPTED_MESSAGE,
        attempts=(old.attempts if old is not None else 0) + 1,  # the try that wrote it, unrecorded
        bytes=size,
        seconds=0.0,
        duration=None,
        video_codec=None,
        audio_codec=None,
        location=name,
        tool_version=tool,
        run=run,
    )
