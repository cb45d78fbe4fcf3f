"""Structured logs: JSON lines from the real API, worker and job processes, each line of a job
carrying its job id, attempt and worker; text lines with the same fields."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from svc_helpers import REPO, base_env, kill_group, start_worker, tiny_spec, wait_for


def _json_lines(path: Path) -> list[dict]:
    """Every line of a log file, parsed: each must be one JSON object with the base fields."""
    docs = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        doc = json.loads(line)  # a line that is not JSON fails the test here
        assert {"time", "level", "logger", "message"} <= doc.keys(), doc
        docs.append(doc)
    return docs


def _one(docs: list[dict], start: str) -> dict:
    found = [d for d in docs if d["message"].startswith(start)]
    assert found, f"no line starting {start!r} in {[d['message'] for d in docs]}"
    return found[0]


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_json_lines_carry_job_attempt_and_worker(db_url, server_factory):
    srv = server_factory(db_url, REVHPO_LOG_FORMAT="json")
    c = httpx.Client(base_url=srv.url, timeout=30)
    worker, worker_log = start_worker(srv, name="gpu-0")
    try:
        spec = {**tiny_spec(iterations=1), "tensorboard": True}  # (its event file travels too)
        jid = c.post("/v1/jobs", json=spec).json()["id"]
        wait_for(lambda: c.get(f"/v1/jobs/{jid}").json()["state"] == "succeeded", 180, what="job")
    finally:
        kill_group(worker)
    names = [a["name"] for a in c.get(f"/v1/jobs/{jid}/result").json()["artifacts"]]
    events = [n for n in names if n.startswith("events.out.tfevents.")]
    assert len(events) == 1, names
    assert c.get(f"/v1/jobs/{jid}/artifacts/{events[0]}").content  # downloadable
    job = {"job_id": jid}
    api = _json_lines(srv.log)
    assert _one(api, "submitted by 'local'").items() >= job.items()
    claimed = _one(api, "claimed by 'gpu-0'")
    assert claimed.items() >= {**job, "attempt": 1, "worker": "gpu-0"}.items()
    done = _one(api, "attempt succeeded")  # the worker's headers name it and its attempt
    assert done.items() >= {**job, "attempt": 1, "worker": "gpu-0"}.items()

    lines = _json_lines(worker_log)
    assert _one(lines, "worker gpu-0 polling")["worker"] == "gpu-0"
    every = {**job, "attempt": 1, "worker": "gpu-0"}
    start = _one(lines, f"job {jid} attempt 1: start")
    child = _one(lines, "job process")  # the TensorFlow process, through its environment
    end = _one(lines, f"job {jid} attempt 1: succeeded")
    for doc in (start, child, end):
        assert doc.items() >= every.items(), doc
    assert child["logger"] == "revhpo.service.worker_child"


def test_text_lines_show_the_context_in_threads_and_children(tmp_path):
    script = textwrap.dedent(
        """
        import logging, subprocess, sys
        from revhpo.service.logs import (
            configure_logging, context_thread, env_for_child, log_context, set_process_context,
        )
        configure_logging()
        log = logging.getLogger("t")
        set_process_context(worker="w9")
        log.info("idle")
        with log_context(job_id="ab12", attempt=3):
            t = context_thread(log.info, "in a thread")
            t.start(); t.join()
            child = "from revhpo.service.logs import configure_logging; import logging; " \\
                "configure_logging(); logging.getLogger('c').warning('in a child')"
            env = {**__import__("os").environ, **env_for_child()}
            subprocess.run([sys.executable, "-c", child], env=env, check=True)
        log.info("after")
        log.info("forged\\n2026 INFO x [job_id=evil]: hi", extra={"worker": None})
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=base_env(REVHPO_LOG_FORMAT="text"),
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stderr.splitlines()
    by_message = {line.split(": ", 1)[1]: line.split(": ", 1)[0] for line in out if ": " in line}
    assert by_message["idle"].endswith("INFO t [worker=w9]")
    assert by_message["in a thread"].endswith("INFO t [job_id=ab12 attempt=3 worker=w9]")
    assert by_message["in a child"].endswith("WARNING c [job_id=ab12 attempt=3 worker=w9]")
    assert by_message["after"].endswith("INFO t [worker=w9]")


def test_headers_are_labels_only():
    from revhpo.service.logs import safe_label

    assert safe_label("gpu-0.host:1") == "gpu-0.host:1"
    for bad in ("a\nb", "x" * 65, "", "a b", "é"):
        assert safe_label(bad) is None


def test_unknown_format_is_refused():
    out = subprocess.run(
        [sys.executable, "-m", "revhpo", "--log-format", "xml", "jobs"],
        env=base_env(),
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "invalid choice: 'xml'" in out.stderr
