"""Convert an umbrella run made before windows exchanged (one ``windows/T{T}K_w{k}.npz`` per window, no
``exchange_every_ps`` in run.json) into the current layout (one ``windows/T{T}K.npz`` per temperature), so that
``trade-md umbrella --analyse`` reads it as a run with ``exchange_every_ps = 0``.

    python benchmarks/results/umbrella/convert_independent.py RUN_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main(run: Path) -> None:
    record = json.loads((run / "run.json").read_text())
    settings = record["settings"]
    settings.setdefault("exchange_every_ps", 0.0)
    settings.setdefault("chunk_ps", 50.0)
    for temperature in settings["temperatures"]:
        windows = [np.load(run / "windows" / f"T{temperature:g}K_w{k:03d}.npz") for k in range(settings["n_windows"])]
        n_windows = len(windows)
        arrays = {key: np.stack([w[key] for w in windows]) for key in ("phi", "psi", "energy", "cis", "wrong_chirality")}
        n = arrays["phi"].shape[1]
        arrays.update(lineage=np.repeat(np.arange(n_windows)[:, None], n, axis=1),
                      attempts=np.zeros(n_windows, np.int64), accepts=np.zeros(n_windows, np.int64),
                      lineage_now=np.arange(n_windows), wall_s=np.array(sum(float(w["wall_s"]) for w in windows)))
        np.savez(run / "windows" / f"T{temperature:g}K.npz", **arrays)
    (run / "run.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
