"""`GET /metrics` on a real server: job counts, attempts, meta-iteration durations and HTTP
latency by route template, read back with Prometheus's own text parser."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from svc_helpers import BACKENDS, create_key, tiny_spec

pytestmark = pytest.mark.parametrize("db_url", BACKENDS, indirect=True)


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_report_jobs_attempts_events_and_routes(db_url, server_factory):
    srv = server_factory(db_url)
    user = httpx.Client(base_url=srv.url, timeout=30)
    key = create_key(srv.db_url, "pool", worker=True)
    pool = httpx.Client(base_url=srv.url, timeout=30, headers={"Authorization": f"Bearer {key}"})
    jobs = [user.post("/v1/jobs", json=tiny_spec()).json()["id"] for _ in range(3)]
    claim = pool.post("/v1/worker/claim", json={"worker": "w"}).json()
    meta = {"type": "meta", "meta_iteration": 0, "duration_s": 1.5}
    r = pool.post(
        f"/v1/worker/jobs/{claim['job_id']}/events",
        json={"token": claim["token"], "events": [meta, {**meta, "duration_s": 2.5}]},
    )
    assert r.status_code == 200, r.text
    for jid in jobs:
        user.get(f"/v1/jobs/{jid}")
    assert user.get("/v1/jobs/no-such-job").status_code == 404

    resp = user.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    m = _samples(resp.text)
    assert m[("revhpo_jobs", (("state", "queued"),))] == 2
    assert m[("revhpo_jobs", (("state", "running"),))] == 1
    assert m[("revhpo_jobs", (("state", "succeeded"),))] == 0
    assert m[("revhpo_job_attempts_total", ())] == 1
    assert m[("revhpo_job_requeues_total", ())] == 0
    assert m[("revhpo_queue_oldest_wait_seconds", ())] >= 0
    assert m[("revhpo_meta_iteration_seconds", (("quantile", "0.5"),))] == 2.0
    assert m[("revhpo_meta_iteration_seconds", (("quantile", "0.99"),))] > 2.4
    route = "/v1/jobs/{job_id}"
    ok = (("method", "GET"), ("route", route), ("status", "200"))
    assert m[("revhpo_http_request_duration_seconds_count", ok)] == 3
    missing = (("method", "GET"), ("route", route), ("status", "404"))
    assert m[("revhpo_http_request_duration_seconds_count", missing)] == 1
    assert not [k for k in m if any(jid in str(k) for jid in jobs)]  # ids never become labels


def test_metrics_need_a_key_off_loopback(db_url, server_factory):
    srv = server_factory(db_url, REVHPO_HOST="0.0.0.0")
    assert httpx.get(srv.url + "/metrics").status_code == 401
    key = create_key(srv.db_url, "monitoring")
    r = httpx.get(srv.url + "/metrics", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200 and "revhpo_jobs" in r.text
