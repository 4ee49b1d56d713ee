"""Options shared by several commands: the molecular system (--system | --pdb | --prmtop), temperatures, torch
threads."""

from __future__ import annotations

import argparse

import numpy as np

from trade_md.errors import InputError
from trade_md.systems import (
    CONSTRAINT_CHOICES,
    IMPLICIT_SOLVENT_CHOICES,
    MolecularSystem,
    from_amber,
    load_system,
)
from trade_md.thermo import parse_temperatures

__all__ = ["add_system_arguments", "add_threads_argument", "system_from_args", "temperatures_from_text"]


def add_system_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the system-selection options (--system | --pdb/--forcefield | --prmtop/--inpcrd, ...) to ``parser``."""
    group = parser.add_argument_group("molecular system (choose one of --system, --pdb, --prmtop)")
    group.add_argument("--system", metavar="NAME", help="built-in system, e.g. alanine-dipeptide")
    group.add_argument("--pdb", metavar="FILE", help="PDB file (one model, with hydrogens unless --add-hydrogens)")
    group.add_argument("--forcefield", metavar="XML", action="append",
                       help="OpenMM force-field file (repeatable), e.g. --forcefield amber99sbildn.xml "
                            "--forcefield amber99_obc.xml")
    group.add_argument("--prmtop", metavar="FILE", help="Amber prmtop (with --inpcrd)")
    group.add_argument("--inpcrd", metavar="FILE", help="Amber inpcrd/rst7 coordinates (with --prmtop)")
    group.add_argument("--implicit-solvent", choices=IMPLICIT_SOLVENT_CHOICES,
                       help="generalized-Born model for --prmtop (default: vacuum)")
    group.add_argument("--add-hydrogens", action="store_true", help="add missing hydrogens at pH 7 (--pdb only)")
    group.add_argument("--constraints", choices=CONSTRAINT_CHOICES,
                       help="constrain bonds to hydrogen (HBonds; allows 2 fs MD steps) or none "
                            "(default: the system's own setting, none for alanine-dipeptide)")


def system_from_args(args: argparse.Namespace) -> MolecularSystem:
    """Build the system that the options of :func:`add_system_arguments` describe."""
    chosen = [flag for flag, value in (("--system", args.system), ("--pdb", args.pdb), ("--prmtop", args.prmtop))
              if value]
    if len(chosen) != 1:
        problem = "no system given" if not chosen else f"{' and '.join(chosen)} given together"
        raise InputError(f"{problem}; choose exactly one of --system alanine-dipeptide, "
                         "--pdb FILE --forcefield XML ..., or --prmtop FILE --inpcrd FILE")
    if args.inpcrd and not args.prmtop:
        raise InputError("--inpcrd needs --prmtop")
    if args.prmtop:
        if not args.inpcrd:
            raise InputError("--prmtop needs its coordinates: add --inpcrd FILE")
        if args.forcefield or args.add_hydrogens:
            raise InputError("--forcefield and --add-hydrogens do not apply to --prmtop (the prmtop holds the force "
                             "field); drop them")
        return from_amber(args.prmtop, args.inpcrd, constraints=args.constraints,
                          implicit_solvent=args.implicit_solvent)
    if args.implicit_solvent:
        raise InputError("--implicit-solvent applies to --prmtop only; for a PDB add an implicit-solvent force-field "
                         "file, e.g. --forcefield amber99_obc.xml")
    return load_system(args.system or args.pdb, args.forcefield, add_hydrogens=args.add_hydrogens,
                       constraints=args.constraints)


def temperatures_from_text(text: str, option: str = "--temperatures", *, ladder: bool = False) -> np.ndarray:
    """Temperatures [K] from an option's text (``300,450,600`` or ``Tmin:Tmax:K``); InputError naming ``option``."""
    return parse_temperatures(text, ladder=ladder, what=option)


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: torch threads per process, default 1 (a positive integer, else a one-line error)."""
    parser.add_argument("--threads", type=_positive_threads, default=1,
                        help="torch threads per process (default 1: on a 2-core or shared CPU more threads slow the "
                             "small flows down several times)")


def _positive_threads(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of torch threads, e.g. --threads 2")
    return int(text)
