# Shared preamble of the one-shot GPU scripts (sourced, not run): needs NAME (log prefix) and LOG (log file) set.
# Defines PY and say(); installs the wheels in .whl/ into /tmp/site where openmm/mdtraj are missing (the GPU
# machine has no network but these files), puts them on PYTHONPATH, and logs the Python, torch, OpenMM and GPU.
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=${PYTHON:-python3}
start=$(date +%s)
say() { echo "[$NAME +$(( $(date +%s) - start ))s] $*" | tee -a "$LOG"; }

if ! $PY -c "import openmm, mdtraj" 2>/dev/null; then
  say "installing .whl/*.whl into /tmp/site"
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    2>&1 | tail -3 | tee -a "$LOG"
fi
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
say "python $($PY -c 'import sys, torch, openmm; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available(), "openmm", openmm.__version__, [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())])' 2>&1)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$LOG"
