# PYTHON_ARGCOMPLETE_OK
"""The `labkit` command. Each subcommand (labkit/commands/) parses its flags and calls the public API.

Building the parser imports neither torch nor FastAPI, so `--help`, `--version` and a mistyped flag answer at
once. A user's mistake (a bad flag or value, an unknown model) is one line on stderr and exit status 2; the
world refusing (an address in use, a server that does not answer: OSError) one line and exit 1; a bug in
labkit a traceback."""
from __future__ import annotations

import argparse
import os
import sys

from . import __version__
from .commands.bench import add_bench_commands
from .commands.load import add_load_commands
from .commands.monitor import add_monitor_command
from .commands.serve import add_serve_commands
from .commands.up import add_up_command
from .extras import MissingExtra

DESCRIPTION = """labkit: an interactive inference lab. The flow is load → serve → route → scale → monitor.
Models load offline: see `labkit models` for the built-in aliases; any Hugging Face id or local
directory also works when it is cached or reachable."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labkit", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"labkit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_load_commands(commands)
    add_serve_commands(commands)
    add_up_command(commands)
    add_monitor_command(commands)
    add_bench_commands(commands)
    return parser


def _complete(parser: argparse.ArgumentParser) -> None:
    """Shell completion (README: "Shell completion"): the shell runs `labkit` with _ARGCOMPLETE set and reads
    the candidates back. argcomplete is imported only then, and is optional."""
    if "_ARGCOMPLETE" not in os.environ:
        return
    try:
        import argcomplete
    except ImportError:
        return
    argcomplete.autocomplete(parser)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    _complete(parser)
    args = parser.parse_args(argv)
    if argv is not None and getattr(args, "tune", False):
        args.tune = False  # a tuned restart replays the process's command line: only when that is what runs here
    try:
        args.run(args)
    except KeyboardInterrupt:
        print("\nlabkit: interrupted", file=sys.stderr)
        return 130
    except (ValueError, MissingExtra) as err:  # the user's to fix (ModelNotFoundError is one), like argparse's
        print(f"labkit: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the world's: an address in use, a server that does not answer, a file missing
        print(f"labkit: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
