"""The CI slice of the multi-node rehearsal (infra/rehearsal/run.py --slice): a Ray cluster of three
`ray start` nodes (head with 0 CPUs, two workers, each in its own directory), a moto S3 server and an MLflow
server, then two submitted jobs: both packages load from the uploaded working dir on the driver and on every
worker node (fault 1), and a job naming a driver-local output is refused before it writes anything (fault 5).
The whole rehearsal (`make rehearsal`) takes longer than CI allows; its last result is in
benchmarks/results/rehearsal.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_rehearsal_slice_on_three_nodes(tmp_path):
    work = tmp_path / "rehearsal"
    r = subprocess.run(
        [sys.executable, str(ROOT / "infra" / "rehearsal" / "run.py"), "--slice", "--work-dir", str(work)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    summary = json.loads((work / "rehearsal.json").read_text())
    assert summary["ok"] and [n["name"] for n in summary["nodes"]] == ["head", "worker-1", "worker-2"]
    assert [n["CPU"] for n in summary["nodes"]] == [0.0, 4.0, 4.0]
    origin = summary["code_origin"]
    assert origin["every_place_runs_the_uploaded_code"] and str(ROOT) not in origin["driver_platform_root"]
    assert len(origin["task_nodes"]) == 2  # tasks ran on both worker nodes
    assert summary["driver_local_path_refused"]
    assert {k: v["status"] for k, v in summary["jobs"].items()} == {"probe": "SUCCEEDED", "refused": "FAILED"}
