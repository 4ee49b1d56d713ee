#!/usr/bin/env bash
# GPU check (issue 8), one prepared script, about 3.5 minutes on one H100/H200:
#   1. CUDA energies/forces of alanine dipeptide against the Reference platform (1e-4 relative), throughputs;
#   2. a short TRADE training of alanine dipeptide on the GPU (flow on cuda, energies from Reference workers on the
#      CPU cores), a fixed wall budget with the cosine schedule fitted to it (ala2_transfer.py train --fit-steps);
#   3. flow sampling / log_prob throughput on the GPU and the training figures (steps/s, energy evaluations/s).
# Everything lands in $OUT incrementally: gpu_check.json, gpu_check.log, run/{checkpoint.pt (optimiser state
# stripped, loads with load_generator), benchmark_train.json, summary.json}. Evaluate the run afterwards with
#   python benchmarks/ala2_transfer.py evaluate --run <OUT>/run --out benchmarks/results/ala2_transfer_gpu.json
#
# Needs data/ala2_600K. Where openmm/mdtraj are missing, installs the wheels in .whl/ into /tmp/site.
# Environment overrides (for a CPU dry run: GPU_CHECK_DEVICE=cpu GPU_CHECK_PLATFORM=Reference):
#   OUT (default /tmp/gpu_check_out), GPU_CHECK_DEVICE (cuda), GPU_CHECK_PLATFORM (CUDA),
#   GPU_CHECK_TRAIN_SECONDS (140), GPU_CHECK_WORKERS (12), GPU_CHECK_FRAMES (256), GPU_CHECK_TRADE_START (500).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check_out}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
PLATFORM=${GPU_CHECK_PLATFORM:-CUDA}
TRAIN_SECONDS=${GPU_CHECK_TRAIN_SECONDS:-140}
WORKERS=${GPU_CHECK_WORKERS:-12}
FRAMES=${GPU_CHECK_FRAMES:-256}
TRADE_START=${GPU_CHECK_TRADE_START:-500}
mkdir -p "$OUT/run"
LOG="$OUT/gpu_check.log"
NAME=gpu_check
source benchmarks/gpu_setup.sh

say "1/3 energies: $PLATFORM vs Reference"
timeout 90 $PY benchmarks/gpu_check.py energies --out "$OUT" --device-platform "$PLATFORM" --frames "$FRAMES" \
  --workers "$WORKERS" 2>&1 | tee -a "$LOG"

say "2/3 TRADE training on $DEVICE for $TRAIN_SECONDS s"
timeout $(( TRAIN_SECONDS + 60 )) $PY benchmarks/ala2_transfer.py train --out "$OUT/run" --device "$DEVICE" \
  --minutes "$(echo "$TRAIN_SECONDS" | awk '{print $1 / 60}')" --fit-steps --fit-window 30 --steps 100000 \
  --set flow='{n_layers: 8, hidden: 128, n_hidden_layers: 2, n_bins: 8, seed: 0}' \
  --set learning_rate=5.0e-4 --set batch_size=512 --set kl_batch_size=256 --set trade_batch_size=512 \
  --set trade_start="$TRADE_START" --set trade_ramp=1000 --set grid_nodes=16 --set grid_samples=4000 \
  --set grid_refresh_every=100 --set energy_workers="$WORKERS" --set energy_platform=Reference \
  --set checkpoint_every=250 --set validate_every=100 --print-every 10 2>&1 | tee -a "$LOG"
$PY benchmarks/ala2_transfer.py export --run "$OUT/run" --out "$OUT/run" 2>&1 | tee -a "$LOG"

say "3/3 flow throughput on $DEVICE"
timeout 60 $PY benchmarks/gpu_check.py flow --out "$OUT" --run "$OUT/run" --device "$DEVICE" 2>&1 | tee -a "$LOG"
say "done; files in $OUT:"
ls -la "$OUT" "$OUT/run" | tee -a "$LOG"
