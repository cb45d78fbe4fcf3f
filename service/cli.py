"""The `revhpo` command line: one entry point, subcommands registered by their modules.

Contract (command names): tune, verify, bench, sim, serve, worker, submit, status, result, cancel,
jobs, keys create (plus `demo`, the README's main job).

Nothing here, nor in the modules' ``register`` functions, imports TensorFlow: ``revhpo --help``,
``--version`` and the client commands never load it. The commands that do (tune, verify,
bench) import it through :func:`revhpo.runtime.import_tensorflow` (which runs
:func:`revhpo.runtime.quiet_tensorflow` first); the worker runs ``quiet_tensorflow`` for its
job processes.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from revhpo.service.logs import configure_logging

from revhpo.runtime import __version__

__all__ = ["EPILOG", "HelpFormatter", "build_parser", "main"]

# Modules that each expose `register(subparsers) -> None`; a subcommand's handler is stored
# as `func` on its parser and called with the parsed namespace; it returns an exit status.
_COMMAND_MODULES = (
    "revhpo.service.cli_local",  # tune, export
    "revhpo.service.cli_numerics",  # verify, bench, sim
    "revhpo.service.cli_client",  # serve, worker, submit, status, result, cancel, jobs, keys, demo
)

EPILOG = (
    "exit status: 0 success; 1 a check or a job failed, or the API could not be reached "
    "(the message names the URL tried) or answered with an error; 2 invalid command line, "
    "job spec or checkpoint; 130 interrupted. `revhpo COMMAND --help` describes each command."
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default (``(default: X)`` after its help).

    A default of None (or False for a flag) is not shown: its help says what happens then.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose subcommands share the help formatter."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (every module that is present registers its commands)."""
    parser = _Parser(
        prog="revhpo",
        description="Hyperparameter optimisation through exactly reversible learning: tune "
        "hundreds to thousands of hyperparameters by gradient descent, locally (`tune`) or "
        "as jobs of a service (`serve`, `worker`, `submit`, ...).",
        epilog=EPILOG,
    )
    parser.add_argument(
        "--version", action="version", version=f"revhpo {__version__}", help="print the version"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=None,
        help="log lines as text or JSON objects (with job_id, attempt, worker); "
        "default: $REVHPO_LOG_FORMAT, else text. Passed on to the workers and jobs started",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a module not written yet
            if exc.name != name:
                raise
            continue
        module.register(sub)
    for p in sub.choices.values():  # every command documents the exit statuses
        if p.epilog is None:
            p.epilog = EPILOG
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.log_format:  # child processes (workers, API, jobs) inherit it
        os.environ["REVHPO_LOG_FORMAT"] = args.log_format
    configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
