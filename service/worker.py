"""The HTTP worker: `revhpo worker --api URL --token KEY`.

It talks to the API only (no database credentials on GPU machines). For each claimed job it

1. downloads the job's datasets and its last checkpoint (if an earlier attempt left one)
   into a fresh out dir,
2. starts `python -m revhpo.service.worker_child` (a fresh process: TensorFlow frees GPU memory only
   when its process exits), which calls `revhpo.service.tuning.tune(..., resume=True)`,
3. heartbeats from its own thread (the training runs in another process and cannot block it)
   and forwards progress events; every checkpoint the tuning loop writes is uploaded at once,
4. uploads `result.json` and the plots and reports success, or reports the failure.

A 409 from the API means the attempt lost its lease (the job was given to someone else): the
worker kills the job process and drops the attempt without writing anything more.
SIGTERM/SIGINT: stop taking jobs, ask the running job to stop at its next meta-iteration
(its checkpoint is uploaded) and hand it back; a second signal stops at once (hand back
after killing the job process).

All HTTP goes through :class:`revhpo.service.client.Client` (its retry policy, its errors).
An API that cannot be reached is waited for; an API that refuses the worker's key (401: unknown,
revoked or malformed; 403: not a worker key) stops the worker with exit status 2.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from revhpo.service.cli_client import WORKER_DESCRIPTION, WORKER_EPILOG, add_worker_arguments
from revhpo.service.client import ApiError, Client, ClientError, LeaseLostError
from revhpo.service.logs import (
    configure_logging,
    context_thread,
    env_for_child,
    forward_lines,
    json_logs,
    log_context,
    set_process_context,
)
from revhpo.service.worker_child import ERROR_FILE, EXIT_CANCELLED, EXIT_OK

from revhpo.runtime import quiet_tensorflow

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.npz"  # service.tuning.CHECKPOINT_FILE (not imported: no TF here)
RESULT_FILE = "result.json"
STEP_EVENT_PERIOD_S = 1.0
EXIT_AUTH = 2  # the API refused the worker's key (401) or its role (403)


def _refused(exc: ApiError) -> bool:
    """The API refused the worker's credentials (no retry can fix that)."""
    return exc.status in (401, 403)


@dataclass
class Attempt:
    """The state of one running attempt, shared by the worker's threads."""

    job_id: str
    token: str
    attempt: int
    out_dir: Path
    stop_file: Path
    lost: threading.Event = field(default_factory=threading.Event)
    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    proc: subprocess.Popen | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_step_sent: float = 0.0

    def request_stop(self) -> None:
        """Ask the job process to stop before its next meta-iteration."""
        self.stop_file.touch()

    def kill(self) -> None:
        """Kill the job process now."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()


class Worker:
    """Claims jobs from the API and runs each in a fresh subprocess.

    Args:
        api: base URL of the API.
        token: a worker API key (None: anonymous, loopback servers only).
        name: worker name shown in job events.
        work_dir: where attempts' out dirs are made (a temporary directory by default).
        poll_seconds: wait between claims when the queue is empty.
        max_jobs: stop after this many jobs (None: run until signalled).
        grace_seconds: after SIGTERM, how long the job may take to reach a meta-iteration
            boundary before it is killed and handed back.
        client: the API client to use (default: one made from ``api`` and ``token``).
    """

    def __init__(
        self,
        api: str,
        token: str | None = None,
        *,
        name: str | None = None,
        work_dir: Path | None = None,
        poll_seconds: float = 1.0,
        max_jobs: int | None = None,
        grace_seconds: float = 120.0,
        client: Client | None = None,
    ):
        self.client = client or Client(api, token)
        self.api = self.client.worker
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self._own_work_dir = work_dir is None
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="revhpo-worker-"))
        self.poll_seconds = poll_seconds
        self.max_jobs = max_jobs
        self.grace_seconds = grace_seconds
        self.draining = threading.Event()
        self.hard_stop = threading.Event()
        self.current: Attempt | None = None
        self.jobs_run = 0
        self.auth_error: ApiError | None = None

    # ------------------------------------------------------------------ signals
    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: drain (hand the running job back); a second one: stop now."""

        def handler(signum: int, _frame: Any) -> None:
            if self.draining.is_set():
                log.warning("second signal: stopping the job now")
                self.hard_stop.set()
                if self.current:
                    self.current.kill()
                return
            log.warning(
                "signal %d: finishing the current meta-iteration, then handing back", signum
            )
            self.draining.set()
            if self.current:
                self.current.request_stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    # ------------------------------------------------------------------ main loop
    def run(self) -> int:
        """Claim and run jobs until drained (or `max_jobs`); returns an exit status."""
        set_process_context(worker=self.name)
        log.info("worker %s polling %s", self.name, self.client.base_url)
        try:
            while not self.draining.is_set():
                if self.max_jobs is not None and self.jobs_run >= self.max_jobs:
                    break
                try:
                    claim = self.api.claim(self.name)
                except ApiError as exc:
                    if _refused(exc):
                        self._auth_failed(exc)
                        break
                    log.warning("claim failed: %s", exc)
                    self.draining.wait(self.poll_seconds * 3)
                    continue
                except ClientError as exc:
                    log.warning("claim failed: %s", exc)
                    self.draining.wait(self.poll_seconds * 3)
                    continue
                if claim is None:
                    self.draining.wait(self.poll_seconds)
                    continue
                self.run_job(claim)
                self.jobs_run += 1
        finally:
            self.client.close()
            if self._own_work_dir:
                shutil.rmtree(self.work_dir, ignore_errors=True)
        if self.auth_error is not None:
            return EXIT_AUTH
        return 0

    def _auth_failed(self, exc: ApiError) -> None:
        """The API refused this worker's key: stop taking jobs (the operator must act)."""
        if self.auth_error is None:
            self.auth_error = exc
            log.error(
                "worker %s: the API at %s refused the worker key: %s. Check --token or "
                "$REVHPO_TOKEN (a worker key is made by `revhpo keys create --worker`); stopping",
                self.name,
                self.client.base_url,
                exc,
            )
        self.draining.set()

    def run_job(self, claim: dict[str, Any]) -> str:
        """Run one claimed job to its end; returns what happened (for logs and tests)."""
        with log_context(job_id=claim["job_id"], attempt=claim["attempt"], worker=self.name):
            return self._run_job(claim)

    def _run_job(self, claim: dict[str, Any]) -> str:
        job_id, token = claim["job_id"], claim["token"]
        out_dir = self.work_dir / job_id / f"attempt-{claim['attempt']}-{token[:8]}"
        out_dir.mkdir(parents=True, exist_ok=True)
        att = Attempt(job_id, token, claim["attempt"], out_dir, out_dir / ".stop")
        self.current = att
        if self.draining.is_set():
            att.request_stop()
        log.info("job %s attempt %d: start", job_id, att.attempt)
        hb = context_thread(
            self._heartbeat_loop,
            att,
            float(claim.get("heartbeat_seconds", 5.0)),
            name=f"heartbeat-{job_id[:8]}",
            daemon=True,
        )
        hb.start()
        try:
            outcome = self._run_attempt(att, claim)
        except LeaseLostError:
            outcome = "lease_lost"
        except Exception as exc:  # noqa: BLE001 (report, keep the worker alive)
            log.exception("job %s: worker-side error", job_id)
            outcome = self._report_fail(att, f"worker error: {type(exc).__name__}: {exc}", True)
        finally:
            att.done.set()
            att.kill()
            hb.join(timeout=5)
            self.current = None
            shutil.rmtree(self.work_dir / job_id, ignore_errors=True)
        log.info("job %s attempt %d: %s", job_id, att.attempt, outcome)
        return outcome

    # ------------------------------------------------------------------ one attempt
    def _run_attempt(self, att: Attempt, claim: dict[str, Any]) -> str:
        dataset_dir = att.out_dir / "datasets"
        for ds in claim.get("dataset_ids") or []:
            self.api.download_dataset(att.job_id, att.token, ds, dataset_dir)
        if claim.get("checkpoint"):
            got = self.api.download_checkpoint(att.job_id, att.token, att.out_dir / CHECKPOINT_FILE)
            log.info("job %s: resuming from checkpoint: %s", att.job_id, got)
        spec_path = att.out_dir / "spec.json"
        spec_path.write_text(json.dumps(claim["spec"]), encoding="utf-8")

        r_fd, w_fd = os.pipe()
        cmd = [
            sys.executable,
            "-m",
            "revhpo.service.worker_child",
            "--spec",
            str(spec_path),
            "--out-dir",
            str(att.out_dir),
            "--dataset-dir",
            str(dataset_dir),
            "--stop-file",
            str(att.stop_file),
            "--events-fd",
            str(w_fd),
            "--parent-pid",
            str(os.getpid()),
        ]
        if att.lost.is_set():
            return "lease_lost"
        structured = json_logs()  # then the job's stderr becomes log lines of this worker
        att.proc = subprocess.Popen(
            cmd,
            pass_fds=(w_fd,),
            start_new_session=True,
            env={**os.environ, **env_for_child()},
            stderr=subprocess.PIPE if structured else None,
        )
        os.close(w_fd)
        reader = context_thread(self._read_events, att, r_fd, name="events", daemon=True)
        reader.start()
        stderr = None
        if structured:
            stderr = context_thread(forward_lines, att.proc.stderr, name="stderr", daemon=True)
            stderr.start()
        deadline: float | None = None
        while True:
            try:
                code = att.proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                pass
            if att.lost.is_set() or self.hard_stop.is_set():
                att.kill()
            elif self.draining.is_set():
                att.request_stop()
                deadline = deadline or time.monotonic() + self.grace_seconds
                if time.monotonic() > deadline:
                    log.warning(
                        "job %s: no meta-iteration boundary within grace; killing", att.job_id
                    )
                    att.kill()
        reader.join(timeout=30)
        if stderr is not None:
            stderr.join(timeout=30)
        self._flush_events(att)
        if att.lost.is_set():
            return "lease_lost"
        if code == EXIT_OK:
            return self._report_success(att)
        if code == EXIT_CANCELLED or (code < 0 and (self.draining.is_set() or att.cancel.is_set())):
            if att.cancel.is_set() and not self.draining.is_set():
                self.api.cancelled(att.job_id, att.token)
                return "cancelled"
            self.api.release(att.job_id, att.token)
            return "released"
        err_file = att.out_dir / ERROR_FILE
        if code > 0 and err_file.exists():
            err = json.loads(err_file.read_text(encoding="utf-8"))
            return self._report_fail(att, f"{err['type']}: {err['message']}", False)
        how = f"signal {-code}" if code < 0 else f"exit status {code}"
        return self._report_fail(att, f"job process died ({how})", True)

    def _report_success(self, att: Attempt) -> str:
        """Upload `result.json` and the plots, then complete the job.

        The result document travels only as the uploaded file (a streamed PUT, up to the API's
        `REVHPO_MAX_ARTIFACT_BYTES`), never inside the JSON body of `complete`, which is held
        to `REVHPO_MAX_REQUEST_BYTES`: a result of any size the API accepts is delivered. A file
        over the upload limit fails the job for good (another attempt would make the same file).
        """
        result = json.loads((att.out_dir / RESULT_FILE).read_text(encoding="utf-8"))
        listed = result.get("files") or {}
        files = [RESULT_FILE, *sorted(listed.get("plots", {}).values())]
        extras = [rel for rel in listed.get("tensorboard", []) if isinstance(rel, str)]
        for rel in files + extras:
            path, name = att.out_dir / rel, Path(rel).name
            if not path.is_file() or not path.resolve().is_relative_to(att.out_dir.resolve()):
                continue
            try:
                self.api.upload_artifact(att.job_id, att.token, path, name)
            except ApiError as exc:
                if rel in extras and not isinstance(exc, LeaseLostError):
                    # an optional output (TensorBoard events) never fails a finished job
                    log.warning("job %s: %s not uploaded: %s", att.job_id, name, exc)
                    continue
                if exc.status != 413:
                    raise
                size = path.stat().st_size
                reason = f"{name} is {size} bytes, over the API's upload limit: {exc}"
                return self._report_fail(att, reason, False)
        self.api.complete(att.job_id, att.token, {})  # {}: the uploaded result.json
        return "succeeded"

    def _report_fail(self, att: Attempt, reason: str, retryable: bool) -> str:
        try:
            self.api.fail(att.job_id, att.token, reason, retryable=retryable)
        except LeaseLostError:
            return "lease_lost"
        except ClientError as exc:  # the lease expires and the reaper retries the job
            if isinstance(exc, ApiError) and _refused(exc):
                self._auth_failed(exc)
            log.error("job %s: could not report the failure (%s): %s", att.job_id, reason, exc)
            return "unreported"
        return "failed" if not retryable else "retry"

    # ------------------------------------------------------------------ threads
    def _heartbeat_loop(self, att: Attempt, period: float) -> None:
        """Extend the lease every `period` seconds until the attempt ends."""
        while not att.done.wait(period):
            try:
                self._on_lease_response(att, self.api.heartbeat(att.job_id, att.token))
            except LeaseLostError:
                log.warning("job %s: lease lost; abandoning the attempt", att.job_id)
                att.lost.set()
                att.kill()
                return
            except ApiError as exc:
                if _refused(exc):  # the key was revoked: nothing this attempt writes counts
                    self._auth_failed(exc)
                    att.lost.set()
                    att.kill()
                    return
                log.warning("job %s: heartbeat failed: %s", att.job_id, exc)
            except ClientError as exc:
                log.warning("job %s: heartbeat failed: %s", att.job_id, exc)

    def _on_lease_response(self, att: Attempt, body: dict[str, Any]) -> None:
        if body.get("cancel_requested") and not att.cancel.is_set():
            log.info("job %s: cancel requested", att.job_id)
            att.cancel.set()
            att.request_stop()

    def _read_events(self, att: Attempt, fd: int) -> None:
        """Forward the job process's events; upload each checkpoint as it is written."""
        with os.fdopen(fd, "r", encoding="utf-8") as stream:
            for line in stream:
                try:
                    ev = json.loads(line)
                except json.JSONDecodeError:
                    continue
                kind = ev.get("type")
                if kind == "step":
                    now = time.monotonic()
                    if now - att.last_step_sent < STEP_EVENT_PERIOD_S:
                        continue
                    att.last_step_sent = now
                if kind == "checkpoint":  # the worker's local path means nothing to clients
                    ev = {"type": "checkpoint", "file": Path(ev.get("path", "")).name}
                if kind == "done":
                    ev = {k: v for k, v in ev.items() if k != "result"}
                    ev["type"] = "finished"  # the API's own `done` marks the job's end
                with att.lock:
                    att.events.append(ev)
                try:
                    if kind == "checkpoint":
                        path = att.out_dir / CHECKPOINT_FILE
                        if path.is_file():
                            self.api.upload_checkpoint(att.job_id, att.token, path)
                    if kind in ("meta", "checkpoint", "evaluation", "finished") or (kind == "step"):
                        self._flush_events(att)
                except LeaseLostError:
                    att.lost.set()
                    att.kill()
                except ClientError as exc:
                    log.warning("job %s: event upload failed: %s", att.job_id, exc)

    def _flush_events(self, att: Attempt) -> None:
        with att.lock:
            batch, att.events = att.events, []
        if not batch or att.lost.is_set():
            return
        try:
            self._on_lease_response(att, self.api.send_events(att.job_id, att.token, batch))
        except LeaseLostError:
            att.lost.set()
            att.kill()


def main(argv: list[str] | None = None) -> int:
    """`python -m revhpo.service.worker --api URL [--token KEY]`; returns the exit status."""
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m revhpo.service.worker",
        description=WORKER_DESCRIPTION,
        epilog=WORKER_EPILOG,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_worker_arguments(p)
    args = p.parse_args(argv)
    configure_logging()
    return run_from_args(args)


add_arguments = add_worker_arguments  # the flags shared with `revhpo worker`


def run_from_args(args: Any) -> int:
    """Build and run a worker from parsed flags; returns the exit status."""
    quiet_tensorflow()  # inherited by the job processes, which import TensorFlow
    logging.getLogger("httpx").setLevel(logging.WARNING)
    w = Worker(
        args.api,
        args.token or os.environ.get("REVHPO_TOKEN") or None,
        name=args.name,
        work_dir=args.work_dir,
        poll_seconds=args.poll,
        max_jobs=args.max_jobs,
        grace_seconds=args.grace,
    )
    w.install_signal_handlers()
    return w.run()


if __name__ == "__main__":
    sys.exit(main())
