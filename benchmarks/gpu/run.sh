#!/usr/bin/env bash
# The one device script (issue 27): on one GPU, in under 8 minutes (its steps stop at 150 + 130 + 200 s), what the
# hot paths do there, written to benchmarks/results/:
#   unet_paper_gpu.json         the paper-size U-Net step at batch 128: fp32 / channels_last / bf16 / compile
#                               (benchmarks/core/unet.py): steps/s, peak memory, sampling step
#   device_check_cuda.json      syncs per step, attention kernels, MFU, the paper's HiFi-GAN step, sampling at
#                               batch 1/16/64 for 50 steps in fp32 and bf16 (benchmarks/gpu/device_check.py)
#   train_smoke_cuda.json       a Ray Train run on the GPU with a crash, a resume and a re-run (train_smoke.py)
#
#   benchmarks/gpu/run.sh                       # on the GPU machine, from the repository root
#   benchmarks/gpu/run.sh --device cpu --quick  # the same steps at small sizes
#   --no-train-smoke: leave out the Ray Train run (tests/test_device_script.py, whose session already runs a
#   Ray cluster; tests/test_train_job.py covers the crash and resume there)
set -euo pipefail
cd "$(dirname "$0")/../.."
DEVICE=cuda
QUICK=0
TRAIN=1
OUT=benchmarks/results
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --no-train-smoke) TRAIN=0; shift ;;
    --out) OUT="$2"; shift 2 ;;
    *) echo "usage: $0 [--device cuda|cpu] [--quick] [--no-train-smoke] [--out DIR]" >&2; exit 2 ;;
  esac
done
PY="${PYTHON:-.venv/bin/python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
suffix="$DEVICE"; [ "$QUICK" = 1 ] && suffix="${DEVICE}_quick"
status=0
step() {  # name, seconds allowed, command...: a step that fails or overruns is reported, the others still run
  local name="$1" limit="$2"; shift 2
  echo "== $name (up to ${limit} s)"
  if ! timeout "$limit" "$@"; then echo "!! $name failed or ran past ${limit} s" >&2; status=1; fi
}
if [ "$QUICK" = 1 ]; then
  step unet 120 "$PY" benchmarks/core/unet.py --preset tiny --batch-size 4 --iters 2 --warmup 1 --device "$DEVICE" \
    --modes fp32_eager,channels_last --out "$OUT/unet_tiny_$suffix.json"
  step device_check 240 "$PY" benchmarks/gpu/device_check.py --device "$DEVICE" --quick --out "$OUT/device_check_$suffix.json"
  [ "$TRAIN" = 1 ] && step train_smoke 420 "$PY" benchmarks/gpu/train_smoke.py --device "$DEVICE" --timeout 200 --out "$OUT/train_smoke_$suffix.json"
else
  step unet 150 "$PY" benchmarks/core/unet.py --preset paper --batch-size 128 --device "$DEVICE" \
    --out "$OUT/unet_paper_gpu.json"
  step device_check 130 "$PY" benchmarks/gpu/device_check.py --device "$DEVICE" --out "$OUT/device_check_$suffix.json"
  [ "$TRAIN" = 1 ] && step train_smoke 200 "$PY" benchmarks/gpu/train_smoke.py --device "$DEVICE" --timeout 90 --out "$OUT/train_smoke_$suffix.json"
fi
exit $status
