"""The fetch summary (`_fetch_summary.json`): every clip of the manifest accounted for (ok + failed + not tried =
clips in), failures by class, what this run did, and the coverage per split and label."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

from clipsynth_platform.datasets.manifest import Manifest

from .failures import PERMANENT
from .ledger import Ledger


@dataclass(frozen=True)
class RunCounts:
    """What one run did."""

    run: int
    to_fetch: int
    fetched_ok: int
    fetched_failed: int
    skipped_ok: int
    skipped_permanent: int
    adopted: int
    missing_outputs: int
    limited: int
    attempts: int
    bytes: int
    seconds: float
    # the driver's S3 requests during the run (runtime/s3_requests.py): the manifest, the ledger, WebDataset
    # shards; the download actors write the clip files and count their own
    s3_requests_driver: dict[str, int] = field(default_factory=dict)

    @property
    def clips_per_second(self) -> float | None:
        done = self.fetched_ok + self.fetched_failed
        return round(done / self.seconds, 3) if self.seconds > 0 and done else None


@dataclass(frozen=True)
class FetchSummary:
    output: str
    output_format: str
    tool_version: str
    clips_in: int
    ok: int
    failed: int
    not_tried: int
    failed_by_class: dict[str, int]
    failed_permanent: int
    failed_transient: int
    run: RunCounts
    coverage: dict[str, dict[str, dict[str, int]]]  # split -> label -> {"expected", "ok"}
    manifest: dict  # ManifestReport.to_dict()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["run"]["clips_per_second"] = self.run.clips_per_second
        return d

    def line(self) -> str:
        by_class = ", ".join(f"{k} {v}" for k, v in sorted(self.failed_by_class.items())) or "none"
        return (
            f"{self.clips_in} clips in: {self.ok} ok, {self.failed} failed ({by_class}), {self.not_tried} not tried; "
            f"this run fetched {self.run.fetched_ok} ok and {self.run.fetched_failed} failed of {self.run.to_fetch}, "
            f"skipped {self.run.skipped_ok} done and {self.run.skipped_permanent} permanently failed"
        )


def summarize(
    manifest: Manifest, ledger: Ledger, run: RunCounts, output: str, output_format: str, tool: str
) -> FetchSummary:
    ids = [c.clip_id for c in manifest.clips]
    ok, failed = ledger.counts(ids)
    coverage: dict[str, dict[str, Counter]] = {}
    for clip in manifest.clips:
        row = ledger.get(clip.clip_id)
        cell = coverage.setdefault(clip.split or "unsplit", {}).setdefault(clip.label or "", Counter())
        cell["expected"] += 1
        cell["ok"] += int(row is not None and row.ok)
    permanent = sum(n for cls, n in failed.items() if cls in PERMANENT)
    return FetchSummary(
        output=output,
        output_format=output_format,
        tool_version=tool,
        clips_in=len(ids),
        ok=ok,
        failed=sum(failed.values()),
        not_tried=len(ids) - ok - sum(failed.values()),
        failed_by_class=dict(sorted(failed.items())),
        failed_permanent=permanent,
        failed_transient=sum(failed.values()) - permanent,
        run=run,
        coverage={
            split: {label: {"expected": c["expected"], "ok": c["ok"]} for label, c in sorted(labels.items())}
            for split, labels in sorted(coverage.items())
        },
        manifest=manifest.report().to_dict(),
    )
