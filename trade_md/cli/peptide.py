"""``trade-md build-peptide``: a capped peptide (ACE-...-NME) with hydrogens, minimised, as a PDB file."""

from __future__ import annotations

import argparse
from typing import Any

from trade_md.peptides import DEFAULT_FORCEFIELD, parse_sequence, write_capped_peptide

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``trade-md build-peptide``."""
    parser = subparsers.add_parser(
        "build-peptide", help="build a capped peptide (ACE-...-NME) from its sequence as a PDB file",
        description="Builds ACE-<sequence>-NME with ideal backbone geometry, side chains and hydrogens (PDBFixer), "
                    "L amino acids, minimised with the force field; use the PDB with --pdb in the other commands.")
    parser.add_argument("sequence", help="residues, e.g. ALA-ALA-ALA, AAA or PHE (caps are added)")
    parser.add_argument("--out", required=True, help="PDB file to write")
    parser.add_argument("--forcefield", metavar="XML", action="append",
                        help=f"OpenMM force-field file (repeatable; default {' '.join(DEFAULT_FORCEFIELD)})")
    parser.set_defaults(func=_main, command="build-peptide")


def _main(args: argparse.Namespace) -> int:
    residues = parse_sequence(args.sequence)
    forcefield = tuple(args.forcefield) if args.forcefield else DEFAULT_FORCEFIELD
    path = write_capped_peptide(residues, args.out, forcefield)
    print(f"wrote {path}: ACE-{'-'.join(residues)}-NME; use it with --pdb {path} "
          f"{' '.join(f'--forcefield {f}' for f in forcefield)}")
    return 0
