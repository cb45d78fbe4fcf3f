"""The `revhpo` command line: one entry point, subcommands registered by their modules.

Contract (command names): tune, verify, bench, serve, worker, submit, status, result, cancel,
jobs, keys create (plus `demo`, the README's main job).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# Modules that each expose `register(subparsers) -> None`; a subcommand's handler is stored
# as `func` on its parser and called with the parsed namespace; it returns an exit status.
_COMMAND_MODULES = (
    "service.cli_local",  # tune
    "service.cli_numerics",  # verify, bench
    "service.cli_client",  # serve, worker, submit, status, result, cancel, jobs, keys, demo
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (every module that is present registers its commands)."""
    parser = argparse.ArgumentParser(
        prog="revhpo",
        description="Hyperparameter optimisation through exactly reversible learning.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a module not written yet
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
