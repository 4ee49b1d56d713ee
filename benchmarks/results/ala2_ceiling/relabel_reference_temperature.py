"""Copy a trade-md checkpoint with its reference temperature T0 relabelled (weights unchanged), as the starting
point of a boundary fit at another temperature: ``python relabel_reference_temperature.py RUN NEW_T0 DATA OUT``.

Diagnostic only: a model whose context weights are zero (a boundary-only run) is the same density at every T,
so relabelling T0 changes nothing but the temperature the next fit treats as its boundary.
"""

import sys
from pathlib import Path

import torch

run, new_t0, data, out = sys.argv[1], float(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
checkpoint = torch.load(Path(run) / "checkpoint.pt", map_location="cpu", weights_only=True)
checkpoint["generator_config"]["reference_temperature"] = new_t0
checkpoint["config"]["reference_temperature"] = new_t0
checkpoint["config"]["data"] = data
out.mkdir(parents=True, exist_ok=True)
torch.save(checkpoint, out / "checkpoint.pt")
print(f"wrote {out / 'checkpoint.pt'}: {run} with T0 = {new_t0} K")
