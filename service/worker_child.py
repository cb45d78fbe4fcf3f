"""One tuning job in its own process: `python -m revhpo.service.worker_child ...`.

The worker starts a fresh process per job so that TensorFlow's memory (GPU memory above all,
which TensorFlow keeps until its process exits) is returned when the job ends. The process
calls `revhpo.service.tuning.tune(..., resume=True)`, writes each progress event as one JSON line to
the file descriptor `--events-fd`, and stops at the next meta-iteration once `--stop-file`
exists.

Exit status: 0 done (`result.json` in the out dir), 3 stopped on request (`Cancelled`),
1 the job failed (`error.json` holds the exception type and message), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import signal
import sys
import traceback
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_CANCELLED = 0, 1, 3
ERROR_FILE = "error.json"


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent (the worker) dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    """Run one job; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m revhpo.service.worker_child")
    p.add_argument("--spec", type=Path, required=True, help="the job spec (JSON)")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--dataset-dir", type=Path, default=None)
    p.add_argument("--stop-file", type=Path, required=True)
    p.add_argument("--events-fd", type=int, required=True)
    p.add_argument("--parent-pid", type=int, default=None)
    args = p.parse_args(argv)
    from revhpo.service.logs import configure_logging

    configure_logging()  # the job id, attempt and worker come from the environment
    die_with_parent()
    if args.parent_pid is not None and os.getppid() != args.parent_pid:
        return EXIT_FAILED  # the worker died before we armed PDEATHSIG
    events = os.fdopen(args.events_fd, "w", buffering=1, encoding="utf-8")

    def emit(event: dict) -> None:
        events.write(json.dumps(event, default=str) + "\n")

    def should_stop() -> bool:
        return args.stop_file.exists()

    def write_error(exc: BaseException) -> None:
        doc = {
            "type": type(exc).__name__,
            "message": str(exc),
            "traceback": traceback.format_exc(limit=20),
        }
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / ERROR_FILE).write_text(json.dumps(doc), encoding="utf-8")

    try:
        from revhpo.runtime import import_tensorflow

        import_tensorflow()  # quietly: the job's log is the user's, not TensorFlow's start-up
        from revhpo.service.tuning import CHECKPOINT_FILE, Cancelled, tune
    except Exception as exc:  # noqa: BLE001 (a broken install fails the job, with the reason)
        write_error(exc)
        return EXIT_FAILED
    try:
        spec = json.loads(args.spec.read_text(encoding="utf-8"))
        logging.getLogger("revhpo.service.worker_child").info(
            "job process %d: tuning %r (resume: %s)",
            os.getpid(),
            spec.get("name"),
            (args.out_dir / CHECKPOINT_FILE).exists(),
        )
        tune(  # writes result.json and the plots into out_dir
            spec,
            out_dir=args.out_dir,
            callback=emit,
            should_stop=should_stop,
            resume=True,
            dataset_dir=args.dataset_dir,
        )
        return EXIT_OK
    except Cancelled:
        return EXIT_CANCELLED
    except BrokenPipeError:
        return EXIT_FAILED  # the worker went away
    except Exception as exc:  # noqa: BLE001 (every failure of the job is reported)
        write_error(exc)
        return EXIT_FAILED
    finally:
        try:
            events.close()
        except OSError:
            pass


if __name__ == "__main__":
    sys.exit(main())
