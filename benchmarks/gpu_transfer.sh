#!/usr/bin/env bash
# Alanine-dipeptide TRADE transfer on one GPU (issue 4), one prepared script of about 9 minutes:
#   1. TRADE training on the GPU (flow on cuda, energies from Reference workers on the CPU cores), started from the
#      model in $INIT (the exported boundary of benchmarks/configs/ala2_boundary.yaml, trained on a CPU), with
#      benchmarks/configs/ala2_transfer.yaml and 4x larger batches; the cosine schedule is fitted to the wall budget
#      (ala2_transfer.py train --fit-steps);
#   2. evaluation at 300, 450, 600, 800 and 1000 K against the shipped MBAR reference (ala2_transfer.py evaluate).
# Everything lands in $OUT: gpu_transfer.log, ala2_transfer_gpu.json, run/{checkpoint.pt (optimiser state
# stripped), benchmark_train.json, summary.json}.
#
# Needs data/ala2_600K and $INIT. Where openmm/mdtraj are missing, installs the wheels in .whl/ into /tmp/site.
# Environment overrides (for a CPU dry run: TRANSFER_DEVICE=cpu TRANSFER_MINUTES=0.5 TRANSFER_SAMPLES=500
# TRANSFER_WORKERS=2): OUT (/tmp/gpu_transfer_out), INIT (runs/ala2_boundary_export), TRANSFER_DEVICE (cuda),
# TRANSFER_MINUTES (6), TRANSFER_WORKERS (12), TRANSFER_SAMPLES (100000 per temperature), TRANSFER_TRADE_START
# (200: $INIT is a boundary; 0 when it is already a TRADE model), TRANSFER_LR (5e-5, as in the config),
# TRANSFER_TRADE_WEIGHT (0.1), TRANSFER_TRADE_RAMP (1000 steps).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_transfer_out}
INIT=${INIT:-runs/ala2_boundary_export}
DEVICE=${TRANSFER_DEVICE:-cuda}
MINUTES=${TRANSFER_MINUTES:-6}
WORKERS=${TRANSFER_WORKERS:-12}
SAMPLES=${TRANSFER_SAMPLES:-100000}
TRADE_START=${TRANSFER_TRADE_START:-200}
LR=${TRANSFER_LR:-5.0e-5}
TRADE_WEIGHT=${TRANSFER_TRADE_WEIGHT:-0.1}
TRADE_RAMP=${TRANSFER_TRADE_RAMP:-1000}
mkdir -p "$OUT"
LOG="$OUT/gpu_transfer.log"
NAME=gpu_transfer
source benchmarks/gpu_setup.sh

say "1/2 TRADE training on $DEVICE for $MINUTES min from $INIT"
timeout $(( ${MINUTES%.*} * 60 + 90 )) $PY benchmarks/ala2_transfer.py train \
  --config benchmarks/configs/ala2_transfer.yaml --out "$OUT/run_full" --device "$DEVICE" --minutes "$MINUTES" \
  --fit-steps --fit-window 30 --steps 100000 --set init_from="$INIT" --set energy_workers="$WORKERS" \
  --set batch_size=1024 --set kl_batch_size=512 --set trade_batch_size=1024 --set trade_temperatures=32 \
  --set learning_rate="$LR" --set trade_start="$TRADE_START" --set trade_ramp="$TRADE_RAMP" --set trade_weight="$TRADE_WEIGHT" \
  --set trade_energy_cap=50 --set grid_samples=4000 \
  --set grid_refresh_every=500 --set checkpoint_every=500 --set validate_every=250 --print-every 15 2>&1 | tee -a "$LOG"
$PY benchmarks/ala2_transfer.py export --run "$OUT/run_full" --out "$OUT/run" 2>&1 | tee -a "$LOG"
rm -rf "$OUT/run_full"

say "2/2 evaluation: $SAMPLES samples per temperature, $WORKERS energy workers"
timeout 240 $PY benchmarks/ala2_transfer.py evaluate --run "$OUT/run" --samples "$SAMPLES" --batch-size 8192 \
  --energy-workers "$WORKERS" --device "$DEVICE" --out "$OUT/ala2_transfer_gpu.json" 2>&1 | tee -a "$LOG"
say "done; files in $OUT:"
ls -la "$OUT" "$OUT/run" | tee -a "$LOG"
