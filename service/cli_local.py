"""``revhpo tune SPEC --out DIR``: run a tuning job locally with a progress display;
``revhpo export RUN|JOB_ID``: its tuned schedules in json, csv or npz."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

__all__ = ["register", "run_export", "run_tune"]

EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED = 0, 2, 130
JOB_ID = re.compile(r"[0-9a-f]{32}")  # the API's job ids (uuid4, hex)


def register(subparsers: Any) -> None:
    """Add the ``tune`` subcommand."""
    p = subparsers.add_parser(
        "tune",
        help="run a tuning job locally (hyper-descent through reversible learning)",
        description="Tune the hyperparameters of a job spec (YAML or JSON) by exact "
        "hypergradient descent; writes result.json, checkpoint.npz and PNG plots into --out. "
        "Rerunning the same command resumes from the checkpoint in --out; a checkpoint of "
        "another spec is refused (use --no-resume or another --out). Progress goes to stderr: "
        "a live bar on a terminal, one line per meta-iteration otherwise.",
    )
    p.add_argument("spec", nargs="?", help="job spec file (.yaml/.yml/.json)")
    p.add_argument("--out", "-o", default=None, help="output directory; default: runs/<name>")
    p.add_argument("--schema", action="store_true", help="print the job spec's JSON Schema")
    p.add_argument("--check", action="store_true", help="validate the spec and exit")
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="start over, ignoring (and replacing) a checkpoint in --out",
    )
    p.add_argument(
        "--dataset-dir",
        default=None,
        help="directory where uploaded dataset ids (and relative dataset paths not found "
        "from the working directory) resolve; default: none",
    )
    p.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="override meta.iterations; default: the spec's",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    p.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write TensorBoard event files into OUT/tensorboard (as the spec's "
        "`tensorboard: true` does); view with `tensorboard --logdir OUT`",
    )
    p.set_defaults(func=run_tune)

    e = subparsers.add_parser(
        "export",
        help="export a run's tuned schedules (json, keras, csv, npz)",
        description="Write the tuned learning rates, momentum decays, weight decays and init "
        "scales of a finished run with named axes (step, layer) and the training convention "
        "they were tuned under. RUN is a run directory (revhpo tune --out) or a result.json; "
        "a job id (32 hex digits) that is not a file names a succeeded job of the API "
        "(--api, --token). The keras format is the JSON that revhpo.keras.ScheduledMomentum "
        "reads.",
    )
    e.add_argument("run", metavar="RUN|JOB_ID", help="run directory, result.json or job id")
    e.add_argument(
        "--format",
        "-f",
        choices=("json", "keras", "csv", "npz"),
        default="json",
        help="output format; default: json",
    )
    e.add_argument(
        "--which",
        choices=("final", "last", "start", "initial"),
        default="final",
        help="which hyperparameters: final (the returned iterate), last, start or initial; "
        "default: final",
    )
    e.add_argument(
        "--out", "-o", default=None, help="output file; default: standard output (not npz)"
    )
    from revhpo.service.cli_client import add_client_arguments

    add_client_arguments(e)
    e.set_defaults(func=run_export)


def run_tune(args: argparse.Namespace) -> int:
    """Handler of ``revhpo tune``; returns the exit status."""
    from revhpo.service.spec import SpecError, json_schema, load_spec, spec_warnings

    if args.schema:
        print(json.dumps(json_schema(), indent=2))
        return EXIT_OK
    if not args.spec:
        print("revhpo tune: error: SPEC is required (or --schema)", file=sys.stderr)
        return EXIT_USAGE
    try:
        spec = load_spec(args.spec)
        if args.iterations is not None:
            data = spec.model_dump(mode="json")
            data["meta"]["iterations"] = args.iterations
            spec = load_spec(data)
    except SpecError as exc:
        print(f"revhpo tune: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for warning in spec_warnings(spec):
        print(f"revhpo tune: warning: {warning}", file=sys.stderr)
    if args.check:
        print(f"{args.spec}: valid")
        return EXIT_OK

    from revhpo.runtime import import_tensorflow

    import_tensorflow()  # quietly, before revhpo.service.tuning imports it
    from revhpo.service.data import DataError
    from revhpo.service.progress import ProgressDisplay, summary_lines
    from revhpo.service.results import CheckpointError
    from revhpo.service.tuning import Cancelled, tune

    out = Path(args.out or Path("runs") / spec.name)
    progress = None if args.quiet else ProgressDisplay(sys.stderr, total=spec.meta.iterations)
    try:
        result = tune(
            spec,
            out,
            callback=progress,
            resume=not args.no_resume,
            dataset_dir=args.dataset_dir,
            tensorboard=True if args.tensorboard else None,
        )
    except CheckpointError as exc:
        _close(progress)
        print(
            f"revhpo tune: {_first_line(exc)}; rerun with --no-resume to start over in {out} "
            "(or choose another --out)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except (SpecError, DataError) as exc:
        _close(progress)
        print(f"revhpo tune: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (KeyboardInterrupt, Cancelled):
        _close(progress)
        print(
            f"\nrevhpo tune: interrupted; rerun the same command to resume from {out}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    _close(progress)
    doc = result.to_dict()
    for line in summary_lines(doc):
        print(line)
    print(
        f"results: {out / 'result.json'}; plots: "
        + ", ".join(str(out / f) for f in result.files.get("plots", {}).values())
    )
    unrepresentable = _initial_weights_out_of_range(doc)
    if unrepresentable:
        t, hp = spec.training, spec.hyperparameters
        print(
            f"revhpo tune: the initial weights do not fit the fixed-point range, so no "
            f"meta-iteration could run ({unrepresentable}); lower "
            f"hyperparameters.init_scale.init or training.frac_bits. Received: "
            f"hyperparameters.init_scale.init={hp.init_scale.init!r}, "
            f"training.frac_bits={t.frac_bits}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    return EXIT_OK


def _initial_weights_out_of_range(doc: dict[str, Any]) -> str | None:
    """The reason when a run diverged before any meta-iteration succeeded because its
    weights were outside the fixed-point range (a spec problem, not a training outcome)."""
    from revhpo.optimizers.tuner import FIXED_POINT_RANGE

    history = doc.get("history") or []
    if (
        doc.get("status") != "diverged"
        or not history
        or not all(h.get("diverged") for h in history)
    ):
        return None
    last = history[-1]
    return (
        last.get("divergence_reason") if last.get("divergence_kind") == FIXED_POINT_RANGE else None
    )


def _close(progress: Any) -> None:
    if progress is not None:
        progress.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def run_export(args: argparse.Namespace) -> int:
    """Handler of ``revhpo export``; returns the exit status (TensorFlow is not imported)."""
    from revhpo.export import ExportError, TunedSchedules, load_schedules

    try:
        if Path(args.run).exists() or not JOB_ID.fullmatch(args.run):
            schedules = load_schedules(args.run, which=args.which)
        else:  # a job of the API: its schedules travel as the json export
            from revhpo.service.cli_client import EXIT_FAILED, client_from_args
            from revhpo.service.client import ClientError

            try:
                body = client_from_args(args).export(args.run, "json", args.which)
            except ClientError as exc:
                print(f"revhpo export: {exc}", file=sys.stderr)
                return EXIT_FAILED
            schedules = TunedSchedules.from_dict(json.loads(body))
    except ExportError as exc:
        print(f"revhpo export: {exc}", file=sys.stderr)
        return EXIT_USAGE
    fmt = args.format
    if args.out:
        path = schedules.write(args.out, fmt)
        print(f"wrote {path}", file=sys.stderr)
    elif fmt == "npz":
        print("revhpo export: --format npz needs --out FILE", file=sys.stderr)
        return EXIT_USAGE
    elif fmt == "csv":
        sys.stdout.write(schedules.to_csv())
    else:
        sys.stdout.write(json.dumps(schedules.to_dict(), indent=1) + "\n")
    return EXIT_OK
