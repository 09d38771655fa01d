#!/usr/bin/env bash
# Issue 23's GPU checks in one call on a CUDA machine, most important first, within a deadline.
#
#   make gpu-wheels                     # here, once: the packages a bare CUDA image lacks (.whl/)
#   bash benchmarks/gpu_checks.sh OUT   # there, from the repository root (the device tool:
#                                       # carry [".whl"], command `bash benchmarks/gpu_checks.sh`)
#
# Each step's output goes to OUT/<step>.txt (default: $OUT, else gpu-out/) and its last lines
# to stdout; a step that would run past DEADLINE seconds (default 500, from the start) is cut
# at it, and later steps are skipped, so the whole call ends inside one 10-minute command. Steps:
#   env        the GPU, torch, CUDA, CPU cores
#   infer      benchmarks/inference.py: paper U-Net, 8192², tile 512, overlap 64, batch 8, no TTA:
#              bare forward vs predict_scene end to end vs the I/O floor (goal: the last column
#              >= 0.5)
#   infer_tta  the same with the 8 test-time symmetries on a 4096² scene (goal: e2e/bare <= 2)
#   train      benchmarks/train_step.py at batch 16 and 64, bf16, with torch.compile (goal: MFU
#              >= 35 % at batch 64; the peak is H100/H200 dense BF16, 989 TFLOP/s)
#   loader     benchmarks/loader.py at batch 64, num_workers 0/2/4 (the loader must not be the
#              bottleneck)
#   test_gpu   tests/test_gpu.py (the CUDA path against the CPU)
#   floor      benchmarks/inference.py --floor-side 12288 on the CPU: the CPU goal (<= 2.0x the
#              I/O floor) on this machine's cores
# DEVICE=cpu QUICK=1 runs the same steps small on a CPU (to check the script, not to measure).
set -u
OUTDIR=${1:-${OUT:-gpu-out}}
DEADLINE=${DEADLINE:-500}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
PY=${PYTHON:-python3}
mkdir -p "$OUTDIR"
T0=$(date +%s)

if compgen -G ".whl/*.whl" >/dev/null; then  # the wheels `make gpu-wheels` downloaded
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/p2p-site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/p2p-site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1

step() {  # step NAME LIMIT_S COMMAND...
  local name=$1 limit=$2 left
  shift 2
  left=$((DEADLINE - ($(date +%s) - T0)))
  if [ "$left" -lt 20 ]; then
    echo "== $name: skipped (deadline)"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (at most ${limit} s): $*"
  local start=$(date +%s)
  timeout --kill-after=5 "$limit" "$@" >"$OUTDIR/$name.txt" 2>&1
  local rc=$?
  echo "   rc $rc in $(($(date +%s) - start)) s"
  tail -n 14 "$OUTDIR/$name.txt"
}

if [ "$QUICK" = 1 ]; then
  INFER=(--side 512 --tile 256 --overlap 32 --batch 4 --ngf 8 --num-downs 5 --repeat 1)
  INFER_TTA=("${INFER[@]}")
  TRAIN=(--batch-sizes 2 --size 64 --ngf 8 --ndf 8 --steps 2 --rounds 1 --warmup 1)
  LOADER=(--chip 64 --chips 32 --batch 4 --batches 2 --ngf 8 --steps 1)
  FLOOR=(--floor-side 1024 --repeat 1)
else
  INFER=(--side 8192 --tile 512 --overlap 64 --batch 8 --repeat 2)
  INFER_TTA=(--side 4096 --tile 512 --overlap 64 --batch 8 --repeat 2)
  TRAIN=(--batch-sizes 16 64 --precision bf16 --compile)
  LOADER=(--batch 64 --chips 1024)
  FLOOR=(--floor-side 12288 --repeat 2)
fi

step env 30 bash -c "nvidia-smi -L 2>/dev/null; nproc; $PY -c 'import torch, rasterio; \
print(torch.__version__, torch.version.cuda, torch.cuda.is_available() and \
torch.cuda.get_device_name(0), \"rasterio\", rasterio.__version__, rasterio.__gdal_version__)'"
step infer 150 $PY benchmarks/inference.py --device "$DEVICE" --skip-rss "${INFER[@]}"
step infer_tta 110 $PY benchmarks/inference.py --device "$DEVICE" --skip-rss --tta "${INFER_TTA[@]}"
step train 150 $PY benchmarks/train_step.py --device "$DEVICE" "${TRAIN[@]}"
step loader 90 $PY benchmarks/loader.py --device "$DEVICE" "${LOADER[@]}"
step test_gpu 90 $PY -m pytest tests/test_gpu.py -q -p no:cacheprovider
step floor 80 $PY benchmarks/inference.py --device cpu --skip-throughput --skip-rss "${FLOOR[@]}"
echo "== done in $(($(date +%s) - T0)) s; outputs in $OUTDIR"
