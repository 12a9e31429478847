"""Flags of a job command line that the job's code does not know."""

from __future__ import annotations

import re
from pathlib import Path

from infra_checks.files import ROOT


def unknown_flags(argv: list[str], sources: str) -> list[str]:
    """Flags of a job command line that its code does not know: neither the literal `--flag` nor (for
    parsers generated from config dataclasses) a field named like it appears in the sources."""
    return [
        flag
        for flag in (a for a in argv if a.startswith("--"))
        if f'"{flag}"' not in sources
        and f"'{flag}'" not in sources
        and not re.search(rf"\b{flag[2:].replace('-', '_')}\s*:", sources)
    ]


def job_sources(script: Path) -> str:
    return script.read_text() + "".join(p.read_text() for p in sorted((ROOT / "platform").rglob("*.py")))
