"""The account a fault test gives of itself (issue 28's closing note): what was injected, what the platform did,
what was lost, and the command that reproduces it. Written only when $CLIPSYNTH_FAULT_RECORD names a JSON file
(`make faults` sets it to benchmarks/results/faults_cpu.json); each test replaces its own entry."""

from __future__ import annotations

import json
import os
from pathlib import Path


def record_fault(name: str, injected: dict, platform: dict, lost: dict, command: str) -> None:
    path = os.environ.get("CLIPSYNTH_FAULT_RECORD")
    if not path:
        return
    p = Path(path)
    data = json.loads(p.read_text()) if p.exists() else {}
    data[name] = {"injected": injected, "platform": platform, "lost": lost, "command": command}
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
