"""The queue's SQL on both backends: claims, leases on the database clock, reaper, cancel."""

from __future__ import annotations

import threading
import time

import pytest
from revhpo.service import queue
from revhpo.service.db import StorageError, db_epoch, now, session_scope
from revhpo.service.models import Job, JobEvent
from sqlalchemy import inspect, select, text, update
from svc_helpers import BACKENDS

pytestmark = pytest.mark.parametrize("db_url", BACKENDS, indirect=True)

SPEC = {"name": "t", "training": {"steps": 5}}


def _enqueue(engine, owner="alice", key=None, spec=None, max_attempts=3):
    spec = spec or SPEC
    with session_scope(engine) as s:
        job, created = queue.enqueue(
            s,
            owner=owner,
            spec=spec,
            spec_sha256=str(hash(str(spec))),
            idempotency_key=key,
            max_attempts=max_attempts,
            cost=1.0,
            dataset_ids=[],
            name="t",
        )
        return job.id, created


def _claim(engine, lease=30.0, worker="w"):
    with session_scope(engine) as s:
        return queue.claim(s, worker=worker, lease_seconds=lease)


def _expire(engine, job_id):
    """Move the lease into the past on the database clock (as if the worker went silent)."""
    with session_scope(engine) as s:
        s.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=db_epoch() - 1.0))


def _reap(engine, backoff=0.0):
    with session_scope(engine) as s:
        return queue.reap(s, backoff_seconds=backoff, backoff_max_seconds=60)


def _job(engine, job_id):
    with session_scope(engine, write=False) as s:
        return queue.get_job(s, job_id, None)


def test_idempotency_replay_and_conflict(engine):
    a, created = _enqueue(engine, key="k1")
    assert created
    b, created2 = _enqueue(engine, key="k1")
    assert (b, created2) == (a, False)
    with pytest.raises(queue.IdempotencyConflict):
        _enqueue(engine, key="k1", spec={"name": "other"})
    c, created3 = _enqueue(engine, owner="bob", key="k1")  # keys are per owner
    assert created3 and c != a


def test_unique_constraint_maps_to_conflict(engine):
    _enqueue(engine, key="dup")
    with pytest.raises(StorageError) as info, session_scope(engine) as s:
        s.add(
            Job(
                id="x" * 32,
                owner="alice",
                state="queued",
                spec={},
                spec_sha256="0",
                idempotency_key="dup",
                dataset_ids=[],
                cost=0,
                attempts=0,
                max_attempts=1,
                cancel_requested=False,
                artifacts=[],
                requeues=0,
            )
        )
    assert info.value.conflict


def test_claim_is_fifo_and_lease_uses_db_clock(engine):
    ids = [_enqueue(engine)[0] for _ in range(3)]
    c = _claim(engine, lease=30.0)
    assert c.job_id == ids[0] and c.attempt == 1 and c.spec == SPEC
    with session_scope(engine, write=False) as s:
        t = now(s)
    assert t + 25 < c.lease_expires_at < t + 31
    assert _claim(engine).job_id == ids[1]


def test_concurrent_claims_never_share_a_job(engine):
    n_jobs, n_threads = 24, 6
    for _ in range(n_jobs):
        _enqueue(engine)
    got: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        try:
            while True:
                c = _claim(engine, worker=f"w{i}")
                if c is None:
                    return
                with lock:
                    got.append(c.job_id)
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(got) == n_jobs and len(set(got)) == n_jobs


def test_heartbeat_extends_and_expired_attempt_is_refused(engine):
    job_id, _ = _enqueue(engine)
    c = _claim(engine, lease=30.0)

    def lease_left() -> float:
        with session_scope(engine) as s:
            left = select(Job.lease_expires_at - db_epoch()).where(Job.id == job_id)
            return float(s.execute(left).scalar_one())  # on the database clock

    assert 0 < lease_left() <= 30
    with session_scope(engine) as s:
        assert queue.heartbeat(s, job_id=job_id, token=c.token, lease_seconds=300) is False
    assert 290 < lease_left() <= 300  # the heartbeat moved the lease 300 s past now
    _expire(engine, job_id)
    # Expired but not yet reaped: the late heartbeat and the late result are both refused.
    with pytest.raises(queue.LeaseLost), session_scope(engine) as s:
        queue.heartbeat(s, job_id=job_id, token=c.token, lease_seconds=30)
    with pytest.raises(queue.LeaseLost), session_scope(engine) as s:
        queue.complete(s, job_id=job_id, token=c.token, result={"late": True})
    reaped = _reap(engine)
    assert [r.job_id for r in reaped] == [job_id] and reaped[0].state == "queued"
    c2 = _claim(engine)
    assert c2.job_id == job_id and c2.attempt == 2 and c2.token != c.token
    with pytest.raises(queue.LeaseLost), session_scope(engine) as s:
        queue.complete(s, job_id=job_id, token=c.token, result={"late": True})
    with session_scope(engine) as s:
        queue.complete(s, job_id=job_id, token=c2.token, result={"ok": 1})
    job = _job(engine, job_id)
    assert job.state == "succeeded" and job.result == {"ok": 1} and job.attempts == 2
    with session_scope(engine, write=False) as s:
        kinds = [e.data["type"] for e in s.scalars(select(JobEvent).order_by(JobEvent.id))]
    assert kinds == ["claimed", "lease_expired", "claimed", "done"]


def test_reaper_backoff_and_max_attempts(engine):
    job_id, _ = _enqueue(engine, max_attempts=2)
    c = _claim(engine)
    _expire(engine, job_id)
    _reap(engine, backoff=30.0)  # attempt 1 -> wait 30 s before the next claim
    assert _job(engine, job_id).state == "queued"
    assert _claim(engine) is None
    with session_scope(engine) as s:
        s.execute(update(Job).where(Job.id == job_id).values(not_before=db_epoch() - 1))
    c = _claim(engine)
    assert c.attempt == 2
    _expire(engine, job_id)
    _reap(engine)
    job = _job(engine, job_id)
    assert job.state == "failed" and "lease expired" in job.error


def test_live_lease_is_not_reaped(engine):
    job_id, _ = _enqueue(engine)
    _claim(engine, lease=30)
    assert _reap(engine) == []
    assert _job(engine, job_id).state == "running"


def test_fail_retryable_and_final(engine):
    a, _ = _enqueue(engine, max_attempts=3)
    c = _claim(engine)
    with session_scope(engine) as s:
        queue.fail(
            s,
            job_id=a,
            token=c.token,
            reason="worker crashed",
            retryable=True,
            backoff_seconds=0,
            backoff_max_seconds=0,
        )
    assert _job(engine, a).state == "queued"
    c = _claim(engine)
    with session_scope(engine) as s:
        queue.fail(
            s,
            job_id=a,
            token=c.token,
            reason="DivergenceError: NaN at step 3",
            retryable=False,
            backoff_seconds=0,
            backoff_max_seconds=0,
        )
    job = _job(engine, a)
    assert job.state == "failed" and job.error.startswith("DivergenceError")


def test_release_does_not_count_an_attempt(engine):
    a, _ = _enqueue(engine, max_attempts=1)
    c = _claim(engine)
    with session_scope(engine) as s:
        queue.release(s, job_id=a, token=c.token)
    job = _job(engine, a)
    assert job.state == "queued" and job.attempts == 0
    assert _claim(engine).attempt == 1


def test_cancel_queued_and_running(engine):
    a, _ = _enqueue(engine)
    b, _ = _enqueue(engine)
    with session_scope(engine) as s:
        assert queue.request_cancel(s, job_id=a, owner="alice").state == "cancelled"
    c = _claim(engine)
    assert c.job_id == b  # the cancelled job is never claimed
    with session_scope(engine) as s:
        job = queue.request_cancel(s, job_id=b, owner="alice")
        assert job.state == "running" and job.cancel_requested
    with session_scope(engine) as s:
        assert queue.heartbeat(s, job_id=b, token=c.token, lease_seconds=30) is True
    with session_scope(engine) as s:
        queue.mark_cancelled(s, job_id=b, token=c.token)
    assert _job(engine, b).state == "cancelled"
    with pytest.raises(queue.NotFound), session_scope(engine) as s:
        queue.request_cancel(s, job_id=b, owner="mallory")


def test_listing_pages_with_cursor_and_state_filter(engine):
    ids = [_enqueue(engine)[0] for _ in range(7)]
    _enqueue(engine, owner="bob")
    c = _claim(engine)  # ids[0] running
    seen, cursor = [], None
    while True:
        with session_scope(engine, write=False) as s:
            page, cursor = queue.list_jobs(s, owner="alice", states=None, limit=3, cursor=cursor)
            seen += [j.id for j in page]
        if cursor is None:
            break
    assert seen == ids[::-1]
    with session_scope(engine, write=False) as s:
        page, nxt = queue.list_jobs(s, owner="alice", states=["running"], limit=3, cursor=None)
    assert [j.id for j in page] == [c.job_id] and nxt is None
    with pytest.raises(ValueError):
        queue.decode_cursor("not-a-cursor!")


def test_db_clock_advances(engine):
    with session_scope(engine, write=False) as s:
        t0 = now(s)
    time.sleep(0.05)
    with session_scope(engine, write=False) as s:
        t1 = now(s)
    assert 0.03 < t1 - t0 < 5


def test_migrations_match_the_models_and_downgrade(db_url, engine):
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from revhpo.service.db import alembic_config, migrate
    from revhpo.service.models import Base

    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    cfg = alembic_config(db_url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    migrate(db_url)
    _enqueue(engine)
    assert _claim(engine) is not None


RESULT = {
    "status": "completed",
    "meta_iterations": 3,
    "n_hyperparameters": 24,
    "selection": {"iteration": 2, "select_loss": 0.55},
    "evaluation": {
        "seeds": [7, 8],
        "initial": {"val_loss_mean": 2.0, "test_loss_mean": 2.1, "test_acc_mean": 0.3},
        "final": {"val_loss_mean": 0.6, "test_loss_mean": 0.61, "test_acc_mean": 0.81},
    },
    "history": [{"iteration": i, "payload": "x" * 1000} for i in range(50)],
}


def test_a_completed_job_lists_its_summary_not_its_result(engine):
    jid, _ = _enqueue(engine)
    c = _claim(engine)
    with session_scope(engine) as s:
        queue.complete(s, job_id=jid, token=c.token, result=RESULT)
    with session_scope(engine, write=False) as s:
        (row,), _ = queue.list_jobs(s, owner="alice", states=None, limit=5, cursor=None)
        assert row.summary == {
            "status": "completed",
            "meta_iterations": 3,
            "n_hyperparameters": 24,
            "returned_iteration": 2,
            "select_loss": 0.55,
            "eval_seeds": 2,
            "initial": {"val_loss": 2.0, "test_loss": 2.1, "test_acc": 0.3},
            "final": {"val_loss": 0.6, "test_loss": 0.61, "test_acc": 0.81},
        }
        # the listing did not load the result (nor the spec): reading it is a new query
        assert {"result", "spec"} <= inspect(row).unloaded
    assert _job(engine, jid).result == RESULT


def test_an_existing_database_upgrades_to_the_summary_column(db_url, engine):
    from alembic import command
    from revhpo.service.db import alembic_config, migrate

    cfg = alembic_config(db_url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0001")
    with engine.begin() as conn:  # a job of the older schema (no `summary` column)
        conn.execute(
            text(
                "INSERT INTO jobs (id, owner, name, state, spec, spec_sha256, dataset_ids, cost,"
                " attempts, max_attempts, cancel_requested, artifacts, requeues)"
                " VALUES ('0123456789abcdef0123456789abcdef', 'alice', 'old', 'succeeded',"
                " '{}', 'x', '[]', 1.0, 1, 3, false, '[]', 0)"
            )
        )
    migrate(db_url)
    with session_scope(engine, write=False) as s:
        (row,), _ = queue.list_jobs(s, owner="alice", states=None, limit=5, cursor=None)
    assert row.name == "old" and row.summary is None
