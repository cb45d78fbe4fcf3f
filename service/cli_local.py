"""``revhpo tune SPEC --out DIR``: run a tuning job locally with a progress display."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

__all__ = ["Progress", "register", "run_tune"]


def register(subparsers: Any) -> None:
    """Add the ``tune`` subcommand."""
    p = subparsers.add_parser(
        "tune",
        help="run a tuning job locally (hyper-descent through reversible learning)",
        description="Tune the hyperparameters of a job spec (YAML or JSON) by exact "
        "hypergradient descent; writes result.json, checkpoint.npz and PNG plots into --out.",
    )
    p.add_argument("spec", nargs="?", help="job spec file (.yaml/.yml/.json)")
    p.add_argument("--out", "-o", default=None, help="output directory (default: runs/<name>)")
    p.add_argument("--schema", action="store_true", help="print the job spec's JSON Schema")
    p.add_argument("--check", action="store_true", help="validate the spec and exit")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--dataset-dir", default=None, help="where uploaded dataset ids resolve")
    p.add_argument("--iterations", type=int, default=None, help="override meta.iterations")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    p.set_defaults(func=run_tune)


def _fmt_eta(s: float | None) -> str:
    if s is None or s != s:
        return "--:--"
    s = int(round(s))
    return f"{s // 60:d}:{s % 60:02d}" if s < 3600 else f"{s // 3600:d}h{s % 3600 // 60:02d}m"


class Progress:
    """One status line (rewritten in place on a terminal, one line per meta-iteration else)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr  # the current one
        self.tty = self.stream.isatty()
        self.meta: dict[str, Any] = {}
        self.total = 0

    def __call__(self, event: dict[str, Any]) -> None:
        """Handle one ``tune`` event."""
        kind = event.get("type")
        if kind == "meta":
            self.meta = event
            self.total = event["meta_iterations"]
            line = self._line(event["meta_iteration"] + 1, "done", None)
            self._write(line, final=True)
        elif kind == "step" and self.tty:
            it = event["meta_iteration"]
            self._write(self._line(it + 1, event["phase"], (event["step"], event["steps"])))
        elif kind == "evaluation":
            self._write("evaluating initial and tuned hyperparameters on held-out seeds", True)
        elif kind == "done":
            self._write(f"{event['status']}: {event['result']}", final=True)

    def _line(self, it: int, phase: str, step: tuple[int, int] | None) -> str:
        m = self.meta
        val = m.get("val_loss")
        parts = [f"meta {it}/{self.total or '?'}"]
        if step:
            parts.append(f"{phase} step {step[0]}/{step[1]}")
        parts.append(f"val loss {val:.4f}" if isinstance(val, float) else "val loss -")
        if m.get("diverged"):
            parts.append("DIVERGED")
        parts.append(f"ETA {_fmt_eta(m.get('eta_s'))}")
        return " | ".join(parts)

    def _write(self, line: str, final: bool = False) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + line + ("\n" if final else ""))
        elif final:
            self.stream.write(line + "\n")
        self.stream.flush()


def run_tune(args: argparse.Namespace) -> int:
    """Handler of ``revhpo tune``; returns the exit status."""
    from service.spec import SpecError, json_schema, load_spec

    if args.schema:
        print(json.dumps(json_schema(), indent=2))
        return 0
    if not args.spec:
        print("revhpo tune: error: SPEC is required (or --schema)", file=sys.stderr)
        return 2
    try:
        spec = load_spec(args.spec)
        if args.iterations is not None:
            data = spec.model_dump(mode="json")
            data["meta"]["iterations"] = args.iterations
            spec = load_spec(data)
    except SpecError as exc:
        print(f"revhpo tune: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(f"{args.spec}: valid")
        return 0
    from service.data import DataError
    from service.tuning import Cancelled, tune

    out = Path(args.out or Path("runs") / spec.name)
    progress = None if args.quiet else Progress()
    t0 = time.perf_counter()
    try:
        result = tune(
            spec,
            out,
            callback=progress,
            resume=not args.no_resume,
            dataset_dir=args.dataset_dir,
        )
    except (SpecError, DataError) as exc:
        print(f"revhpo tune: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Cancelled):
        print(
            f"\nrevhpo tune: interrupted; rerun the same command to resume from {out}",
            file=sys.stderr,
        )
        return 130
    ev = result.evaluation
    print(f"status: {result.status}" + (f" ({result.stop_reason})" if result.stop_reason else ""))
    print(
        f"tuned hyperparameters: {result.n_hyperparameters}; meta-iterations: "
        f"{result.meta_iterations}; time {time.perf_counter() - t0:.1f} s"
    )
    if ev.get("initial") and ev.get("final"):
        n = len(ev["seeds"])
        for key in ("initial", "final"):
            e = ev[key]
            if "test_loss_mean" in e:
                acc = e.get("test_acc_mean")
                acc_s = f", test acc {100 * acc:.1f}%" if acc is not None else ""
                print(
                    f"{key:>7}: val loss {e['val_loss_mean']:.4f}, test loss "
                    f"{e['test_loss_mean']:.4f} ± {e['test_loss_std']:.4f}{acc_s} "
                    f"(mean over {n} held-out training seeds)"
                )
    print(
        f"results: {out / 'result.json'}; plots: "
        + ", ".join(str(out / f) for f in result.files.get("plots", {}).values())
    )
    return 0
