"""The `trade-md` command line.

Each subcommand lives in the module of its concept; that module exposes ``register_cli(subparsers)``, which
adds its parser(s) and sets ``func`` to a handler ``(args: argparse.Namespace) -> int``. Errors derived from
:class:`trade_md.errors.TradeMDError` print as one line (exit status 2), never as a traceback. SIGTERM (a scheduler's
or a closing session's stop) ends a command as Ctrl-C does: every ``finally`` runs, checkpoints and cost records
are written, exit status 143.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from collections.abc import Sequence

from trade_md import __version__
from trade_md.errors import TradeMDError

__all__ = ["Terminated", "main", "build_parser"]


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM, so that the command stops as on Ctrl-C."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated

# Modules that contribute subcommands, in the order `trade-md --help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "trade_md.cli.run",
    "trade_md.cli.md",
    "trade_md.cli.train",
    "trade_md.cli.remd",
    "trade_md.cli.umbrella",
    "trade_md.cli.sample",
    "trade_md.cli.export",
    "trade_md.cli.calibrate",
    "trade_md.cli.evaluate",
    "trade_md.cli.peptide",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trade-md",
        description="Temperature-transferable Boltzmann generators trained with TRADE.",
    )
    parser.add_argument("--version", action="version", version=f"trade-md {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        (getattr(module, "register", None) or module.register_cli)(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 1
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return int(args.func(args) or 0)
    except TradeMDError as error:
        print(f"trade-md {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        print(f"trade-md: {'terminated' if isinstance(interrupt, Terminated) else 'interrupted'}; finished "
              "checkpoints and datasets are kept", file=sys.stderr)
        return 143 if isinstance(interrupt, Terminated) else 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


if __name__ == "__main__":
    sys.exit(main())
