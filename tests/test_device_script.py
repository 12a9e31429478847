"""benchmarks/gpu/run.sh, the one device script, at small sizes on the CPU (`--device cpu --quick`): every step
runs and writes its JSON with the figures the GPU run reports. The Ray Train smoke step is left out here (this
session runs its own Ray cluster; tests/test_train_job.py covers a crash and a resume)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_the_device_script_runs_on_the_cpu_at_small_sizes(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", "benchmarks/gpu/run.sh", "--device", "cpu", "--quick", "--no-train-smoke", "--out", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("*.json")) == [
        "device_check_cpu_quick.json",
        "unet_tiny_cpu_quick.json",
    ]
    unet = json.loads((tmp_path / "unet_tiny_cpu_quick.json").read_text())
    assert [m["mode"] for m in unet["modes"]] == ["fp32_eager", "channels_last"]
    check = json.loads((tmp_path / "device_check_cpu_quick.json").read_text())
    for precision in ("fp32", "bf16"):
        step = check["unet_step"][precision]
        assert step["steps_per_s"] > 0 and step["flops_per_step"] > 0
        # no GPU: no peak to compare against and no CUDA syncs to count
        assert step["mfu_vs_bf16_peak"] is None and step["syncs_per_step"] is None
        assert check["hifigan_step"][precision]["steps_per_s"] > 0
    # a training step's FLOPs: forward and backward of the tiny U-Net over 4 mels, some gigaFLOPs
    assert 1e8 < check["unet_step"]["fp32"]["flops_per_step"] < 1e12
    assert check["attention_kernels"]["MATH"] is True  # the math kernel takes any inputs
    assert set(check["sampling"]["batches"]) == {"1", "2"}
    assert all(row["fp32"]["samples_per_s"] > 0 for row in check["sampling"]["batches"].values())
    assert "SUMMARY device_check_cpu_quick:" in done.stdout
