"""The HTTP worker: `revhpo worker --api URL --token KEY`.

It talks to the API only (no database credentials on GPU machines). For each claimed job it

1. downloads the job's datasets and its last checkpoint (if an earlier attempt left one)
   into a fresh out dir,
2. starts `python -m service.worker_child` (a fresh process: TensorFlow frees GPU memory only
   when its process exits), which calls `service.tuning.tune(..., resume=True)`,
3. heartbeats from its own thread (the training runs in another process and cannot block it)
   and forwards progress events; every checkpoint the tuning loop writes is uploaded at once,
4. uploads `result.json` and the plots and reports success, or reports the failure.

A 409 from the API means the attempt lost its lease (the job was given to someone else): the
worker kills the job process and drops the attempt without writing anything more.
SIGTERM/SIGINT: stop taking jobs, ask the running job to stop at its next meta-iteration
(its checkpoint is uploaded) and hand it back; a second signal stops at once (hand back
after killing the job process).
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

import httpx

from service.worker_child import ERROR_FILE, EXIT_CANCELLED, EXIT_OK

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.npz"  # service.tuning.CHECKPOINT_FILE (not imported: no TF here)
RESULT_FILE = "result.json"
STEP_EVENT_PERIOD_S = 1.0


class LeaseLostError(Exception):
    """The API refused a write of this attempt (409): another attempt owns the job now."""


class ApiClient:
    """Minimal client of the worker protocol, with retries on transport errors."""

    def __init__(self, api: str, token: str | None, timeout: float = 30.0, retries: int = 5):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=api.rstrip("/"), headers=headers, timeout=timeout)
        self.retries = retries
        self.lock = threading.Lock()

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        """Send with retries on connection errors and 503; 409 raises `LeaseLostError`.

        Raises:
            LeaseLostError: the attempt's lease is gone.
            httpx.HTTPStatusError: any other 4xx/5xx.
        """
        delay = 0.5
        for attempt in range(self.retries + 1):
            try:
                resp = self.http.request(method, url, **kw)
            except httpx.TransportError:
                if attempt == self.retries:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 10)
                continue
            if resp.status_code == 503 and attempt < self.retries:
                time.sleep(delay)
                delay = min(delay * 2, 10)
                continue
            if resp.status_code == 409:
                raise LeaseLostError(resp.text)
            resp.raise_for_status()
            return resp
        raise AssertionError("unreachable")

    def post(self, url: str, body: dict[str, Any]) -> httpx.Response:
        """POST JSON."""
        return self.request("POST", url, json=body)

    def upload(self, url: str, path: Path, token: str) -> None:
        """PUT a file as the body."""
        data = path.read_bytes()
        self.request("PUT", url, content=data, headers={"X-Lease-Token": token})

    def download(self, url: str, dest: Path, token: str) -> bool:
        """GET a file into `dest`; False on 404."""
        try:
            resp = self.request("GET", url, headers={"X-Lease-Token": token})
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == 404:
                return False
            raise
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        tmp.write_bytes(resp.content)
        tmp.replace(dest)
        return True


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
    ):
        self.client = ApiClient(api, token)
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
        log.info("worker %s polling %s", self.name, self.client.http.base_url)
        try:
            while not self.draining.is_set():
                if self.max_jobs is not None and self.jobs_run >= self.max_jobs:
                    break
                try:
                    resp = self.client.post("/v1/worker/claim", {"worker": self.name})
                except (httpx.HTTPError, LeaseLostError) as exc:
                    log.warning("claim failed: %s", exc)
                    self.draining.wait(self.poll_seconds * 3)
                    continue
                if resp.status_code == 204:
                    self.draining.wait(self.poll_seconds)
                    continue
                self.run_job(resp.json())
                self.jobs_run += 1
        finally:
            self.client.close()
            if self._own_work_dir:
                shutil.rmtree(self.work_dir, ignore_errors=True)
        return 0

    def run_job(self, claim: dict[str, Any]) -> str:
        """Run one claimed job to its end; returns what happened (for logs and tests)."""
        job_id, token = claim["job_id"], claim["token"]
        out_dir = self.work_dir / job_id / f"attempt-{claim['attempt']}-{token[:8]}"
        out_dir.mkdir(parents=True, exist_ok=True)
        att = Attempt(job_id, token, claim["attempt"], out_dir, out_dir / ".stop")
        self.current = att
        if self.draining.is_set():
            att.request_stop()
        log.info("job %s attempt %d: start", job_id, att.attempt)
        hb = threading.Thread(
            target=self._heartbeat_loop,
            args=(att, float(claim.get("heartbeat_seconds", 5.0))),
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
        base = f"/v1/worker/jobs/{att.job_id}"
        dataset_dir = att.out_dir / "datasets"
        for ds in claim.get("dataset_ids") or []:
            resp = self.client.request(
                "GET", f"{base}/datasets/{ds}", headers={"X-Lease-Token": att.token}
            )
            cd = resp.headers.get("content-disposition", "")
            ext = ".csv" if ".csv" in cd else ".npz"
            dataset_dir.mkdir(parents=True, exist_ok=True)
            (dataset_dir / f"{ds}{ext}").write_bytes(resp.content)
        if claim.get("checkpoint"):
            got = self.client.download(
                f"{base}/checkpoint", att.out_dir / CHECKPOINT_FILE, att.token
            )
            log.info("job %s: resuming from checkpoint: %s", att.job_id, got)
        spec_path = att.out_dir / "spec.json"
        spec_path.write_text(json.dumps(claim["spec"]), encoding="utf-8")

        r_fd, w_fd = os.pipe()
        cmd = [
            sys.executable,
            "-m",
            "service.worker_child",
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
            raise LeaseLostError(att.job_id)
        att.proc = subprocess.Popen(cmd, pass_fds=(w_fd,), start_new_session=True)
        os.close(w_fd)
        reader = threading.Thread(
            target=self._read_events, args=(att, r_fd), name="events", daemon=True
        )
        reader.start()
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
        self._flush_events(att)
        if att.lost.is_set():
            return "lease_lost"
        base_kw = {"token": att.token}
        if code == EXIT_OK:
            return self._report_success(att)
        if code == EXIT_CANCELLED or (code < 0 and (self.draining.is_set() or att.cancel.is_set())):
            if att.cancel.is_set() and not self.draining.is_set():
                self.client.post(f"{base}/cancelled", base_kw)
                return "cancelled"
            self.client.post(f"{base}/release", base_kw)
            return "released"
        err_file = att.out_dir / ERROR_FILE
        if code > 0 and err_file.exists():
            err = json.loads(err_file.read_text(encoding="utf-8"))
            return self._report_fail(att, f"{err['type']}: {err['message']}", False)
        how = f"signal {-code}" if code < 0 else f"exit status {code}"
        return self._report_fail(att, f"job process died ({how})", True)

    def _report_success(self, att: Attempt) -> str:
        base = f"/v1/worker/jobs/{att.job_id}"
        result = json.loads((att.out_dir / RESULT_FILE).read_text(encoding="utf-8"))
        files = [RESULT_FILE, *sorted((result.get("files") or {}).get("plots", {}).values())]
        for name in files:
            path = att.out_dir / name
            if path.is_file():
                self.client.upload(f"{base}/artifacts/{name}", path, att.token)
        self.client.post(f"{base}/complete", {"token": att.token, "result": result})
        return "succeeded"

    def _report_fail(self, att: Attempt, reason: str, retryable: bool) -> str:
        try:
            self.client.post(
                f"/v1/worker/jobs/{att.job_id}/fail",
                {"token": att.token, "reason": reason[:4000], "retryable": retryable},
            )
        except LeaseLostError:
            return "lease_lost"
        return "failed" if not retryable else "retry"

    # ------------------------------------------------------------------ threads
    def _heartbeat_loop(self, att: Attempt, period: float) -> None:
        """Extend the lease every `period` seconds until the attempt ends."""
        url = f"/v1/worker/jobs/{att.job_id}/heartbeat"
        while not att.done.wait(period):
            try:
                resp = self.client.post(url, {"token": att.token})
                self._on_lease_response(att, resp.json())
            except LeaseLostError:
                log.warning("job %s: lease lost; abandoning the attempt", att.job_id)
                att.lost.set()
                att.kill()
                return
            except httpx.HTTPError as exc:
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
                            self.client.upload(
                                f"/v1/worker/jobs/{att.job_id}/checkpoint/{CHECKPOINT_FILE}",
                                path,
                                att.token,
                            )
                    if kind in ("meta", "checkpoint", "evaluation", "finished") or (kind == "step"):
                        self._flush_events(att)
                except LeaseLostError:
                    att.lost.set()
                    att.kill()
                except httpx.HTTPError as exc:
                    log.warning("job %s: event upload failed: %s", att.job_id, exc)

    def _flush_events(self, att: Attempt) -> None:
        with att.lock:
            batch, att.events = att.events, []
        if not batch or att.lost.is_set():
            return
        try:
            resp = self.client.post(
                f"/v1/worker/jobs/{att.job_id}/events", {"token": att.token, "events": batch}
            )
            self._on_lease_response(att, resp.json())
        except LeaseLostError:
            att.lost.set()
            att.kill()


def main(argv: list[str] | None = None) -> int:
    """`python -m service.worker --api URL [--token KEY]`."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m service.worker")
    add_arguments(p)
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return run_from_args(args)


def add_arguments(p: Any) -> None:
    """The worker's command-line flags (shared with `revhpo worker`)."""
    p.add_argument("--api", default=os.environ.get("REVHPO_API", "http://127.0.0.1:8765"))
    p.add_argument("--token", default=os.environ.get("REVHPO_TOKEN"), help="worker API key")
    p.add_argument("--name", default=None, help="worker name (default host-pid)")
    p.add_argument("--work-dir", type=Path, default=None, help="scratch space for job out dirs")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between claims when idle")
    p.add_argument("--max-jobs", type=int, default=None, help="exit after this many jobs")
    p.add_argument("--grace", type=float, default=120.0, help="SIGTERM grace (seconds)")


def run_from_args(args: Any) -> int:
    """Build and run a worker from parsed flags."""
    logging.getLogger("httpx").setLevel(logging.WARNING)
    w = Worker(
        args.api,
        args.token,
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
