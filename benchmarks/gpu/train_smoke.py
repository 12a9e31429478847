"""A Ray Train smoke run on this machine's device: the diffusion job (tiny U-Net, one worker, on the GPU when there
is one) on a synthetic dataset, its worker killed after the step-3 checkpoint by the fault drill, resumed by Ray
Train; then the same command with more steps resumes from the last checkpoint. Checks the job's own lines and
the checkpoints; prints JSON (default benchmarks/results/train_smoke_<device>.json) and a one-line summary.

    python benchmarks/gpu/train_smoke.py --device cuda
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import benchmark_parser, emit

from clipsynth_core import ClipConfig, ClipQueryEncoder
from clipsynth_platform.datasets.synthetic import write_synthetic_dataset

REPO = Path(__file__).resolve().parents[2]


def run_job(args: list[str], env: dict, timeout: float) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "jobs/train_music.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done.returncode, done.stdout + done.stderr, time.perf_counter() - t0


def main() -> None:
    p = benchmark_parser(__doc__)
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--timeout", type=float, default=240, help="seconds per job run")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="clipsynth-train-smoke-"))
    data, runs = work / "data", work / "runs"
    write_synthetic_dataset(str(data), ClipQueryEncoder(ClipConfig(model_name="tiny", pretrained="none")))
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    env.pop("RAY_ADDRESS", None)  # a local Ray of its own
    flags = ["--data", str(data), "--model-size", "tiny", "--num-workers", "1", "--batch-size", "8"]
    flags += ["--checkpoint-every", "3", "--keep-checkpoints", "10", "--log-every", "2", "--sample-every", "0"]
    flags += ["--diffusion-steps", "100", "--sample-steps", "3", "--bundle-sampling-steps", "10", "--max-failures", "1"]
    flags += ["--storage-path", str(runs), "--run-name", "smoke", "--experiment", "device-smoke"]
    flags += ["--use-gpu" if args.device == "cuda" else "--no-use-gpu"]
    code1, out1, s1 = run_job([*flags, "--max-steps", "6", "--fail-at-step", "5"], env, args.timeout)
    code2, out2, s2 = run_job([*flags, "--max-steps", "8"], env, args.timeout)
    checkpoints = sorted(p.name for p in (runs / "smoke").glob("checkpoint_0*"))
    (work / "first.log").write_text(out1)
    (work / "again.log").write_text(out2)
    tracked = {}
    if (runs / "smoke" / "clipsynth_run.json").exists():
        import mlflow

        run_id = json.loads((runs / "smoke" / "clipsynth_run.json").read_text())["mlflow_run_id"]
        run = mlflow.tracking.MlflowClient(env["MLFLOW_TRACKING_URI"]).get_run(run_id)
        keys = ("use_gpu", "bf16", "num_workers", "batch.per_worker")
        tracked = {
            "params": {k: run.data.params.get(k) for k in keys},
            "metrics": {k: run.data.metrics.get(k) for k in ("loss", "samples_per_s", "train_seconds")},
            "status": run.info.status,
        }
    result = {
        "benchmark": "train_smoke",
        "device": args.device,
        "first": {
            "returncode": code1,
            "seconds": s1,
            "fault_drill": (runs / "smoke" / "fault_drill_step_5.done").exists(),
        },
        "again": {"returncode": code2, "seconds": s2, "resumed_at_8": "resuming at step 6 of 8" in out2},
        "checkpoints": checkpoints,
        "mlflow": tracked,
        "tail_first": out1[-1500:] if code1 else "",
        "tail_again": out2[-1500:] if code2 else "",
        "work_dir": str(work),
    }
    ok = code1 == 0 and code2 == 0 and result["first"]["fault_drill"] and result["again"]["resumed_at_8"]
    result["ok"] = ok
    summary = f"{args.device}: crash at step 5 resumed, re-run resumed at 6: {'ok' if ok else 'FAILED'}; {checkpoints}"
    emit(result, f"train_smoke_{args.device}", summary, args.out)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
