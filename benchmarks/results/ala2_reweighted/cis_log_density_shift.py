"""How a model's log-density moves with temperature at cis against trans peptide-bond frames (benchmarks/results/
README.md, ala2_reweighted/, item 4).

For the 600 K frames of DATA and each trained RUN, prints the mean of log q(x | T) − log q(x | 600 K) over the cis
frames minus that over the trans frames, next to the Boltzmann density's exact value −(β − β0)(⟨U⟩_cis − ⟨U⟩_trans),
and the same with the thermal scaling layer's exponents set to 0 on the dihedrals only and on every feature.

    python benchmarks/results/ala2_reweighted/cis_log_density_shift.py runs/ala2_split_pt_reweighted [RUN ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import openmm.app as app
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))   # benchmarks/
from ala2_transfer import cis_peptide_bonds  # noqa: E402

from trade_md.formats.checkpoint import load_generator  # noqa: E402
from trade_md.thermo import beta  # noqa: E402

T0 = 600.0


def shift(log_q_t: np.ndarray, log_q_0: np.ndarray, cis: np.ndarray) -> float:
    """Mean log-density change on the cis frames minus that on the trans frames (nats)."""
    change = log_q_t - log_q_0
    return float(change[cis].mean() - change[~cis].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories with checkpoint.pt")
    parser.add_argument("--data", default="data/ala2_600K_pt", help="600 K dataset with cis frames")
    args = parser.parse_args()
    frames = np.load(Path(args.data) / "data.npz")
    topology = app.PDBFile(str(Path(args.data) / "topology.pdb")).topology
    cis = cis_peptide_bonds(topology, frames["positions"]).any(axis=1)
    energy = frames["potential_energies"]
    x = torch.tensor(frames["positions"], dtype=torch.float32)
    print(f"{int(cis.sum())} cis frames of {cis.size}")
    for temperature in (800.0, 1000.0):
        exact = -(beta(temperature) - beta(T0)) * (energy[cis].mean() - energy[~cis].mean())
        print(f"exact (Boltzmann) {temperature:.0f} K: {exact:+.2f} nats")
    for run in args.runs:
        for exponents in ("trained", "dihedrals 0", "all 0"):
            generator = load_generator(run).generator
            scaling = generator.flow.scaling
            with torch.no_grad():
                if scaling is not None and exponents == "dihedrals 0":
                    scaling.exponent[scaling._circular] = 0.0
                elif scaling is not None and exponents == "all 0":
                    scaling.exponent.zero_()
                log_q = {t: generator.log_prob(x, t).double().numpy() for t in (T0, 800.0, 1000.0)}
            print(f"{run} (scaling exponents {exponents}): 800 K {shift(log_q[800.0], log_q[T0], cis):+.2f}, "
                  f"1000 K {shift(log_q[1000.0], log_q[T0], cis):+.2f} nats")


if __name__ == "__main__":
    main()
