"""Anonymous access and dataset uploads, on real uvicorn servers over both backends.

* An anonymous caller (a loopback-bound server, no key) is the user `local`: it sees and
  submits its own jobs only and has no worker rights; it cannot claim, read, download or
  complete another owner's job, neither directly nor through a same-host reverse proxy (a
  proxied, DNS-rebound or cross-site request is not anonymous at all).
* Uploads are checked without being loaded whole: an .npz from its zip directory and .npy
  headers before any data is decompressed, then streamed; a .csv a row at a time. Bombs are
  refused with 413 at a bounded cost in the API process's memory (VmHWM of the real server
  process, its peak reset through /proc/<pid>/clear_refs before each measured request).
* Uploads no job could train on (no feature column, NaN/Inf, one class, complex or string
  features, ...) are refused with 422 naming the array or the csv row and column.
"""

from __future__ import annotations

import http.server
import io
import struct
import threading
import time
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from svc_helpers import BACKENDS, ServerProc, tiny_spec
from svc_helpers import assert_problem as _problem

MiB = 1 << 20
MEMORY_BUDGET = 50 * MiB  # the API process's peak RSS may grow by at most this per upload

_backends = pytest.mark.parametrize("db_url", BACKENDS, indirect=True)


def _key(server: ServerProc, owner: str, worker: bool = False) -> str:
    from revhpo.service.auth import create_key
    from revhpo.service.db import get_engine

    return create_key(get_engine(server.db_url), owner, is_worker=worker)


def _client(server: ServerProc, key: str | None = None, url: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url or server.url, headers=headers, timeout=60)


def _npz_bytes(n: int = 60, d: int = 4, classes: int = 3, **arrays: np.ndarray) -> bytes:
    rng = np.random.default_rng(0)
    arrays = {"x": rng.normal(size=(n, d)), "y": rng.integers(0, classes, size=n), **arrays}
    buf = io.BytesIO()
    np.savez(buf, **{k: v for k, v in arrays.items() if v is not None})
    return buf.getvalue()


def _upload(c: httpx.Client, name: str, data: bytes) -> httpx.Response:
    return c.post("/v1/datasets", files={"file": (name, data)})


# ----------------------------------------------------------------------------- anonymous
@_backends
def test_anonymous_caller_has_no_worker_rights(db_url, server_factory):
    """Issue item 1: the anonymous caller claimed another owner's job, read its spec,
    downloaded the owner's private dataset and completed the job with a forged result."""
    srv = server_factory(db_url)  # loopback bind, anonymous access on (the default)
    alice = _client(srv, _key(srv, "alice"))
    pool = _client(srv, _key(srv, "pool", worker=True))
    anon = _client(srv)
    ds = _upload(alice, "private.npz", _npz_bytes()).json()
    spec = {
        **tiny_spec(),
        "dataset": {
            "kind": "uploaded",
            "id": ds["id"],
            "split": {"train": 30, "val": 15, "test": 15},
        },
    }
    job = alice.post("/v1/jobs", json=spec)
    assert job.status_code == 202, job.text
    jid = job.json()["id"]

    # Who each caller is taken for: the dashboard shows it; a bad key is refused.
    assert anon.get("/v1/whoami").json() == {"owner": "local", "worker": False, "anonymous": True}
    assert alice.get("/v1/whoami").json() == {"owner": "alice", "worker": False, "anonymous": False}
    assert pool.get("/v1/whoami").json() == {"owner": "pool", "worker": True, "anonymous": False}
    _problem(_client(srv, "rhp_not.a-key").get("/v1/whoami"), 401, "Authorization")

    # No claim: the job stays queued, its spec unseen.
    doc = _problem(anon.post("/v1/worker/claim", json={"worker": "thief"}), 401, "Authorization")
    assert "worker key" in doc["detail"]
    assert alice.get(f"/v1/jobs/{jid}").json()["state"] == "queued"
    # Alice's job, spec, events, result and dataset are invisible to it.
    for path in (f"/v1/jobs/{jid}", f"/v1/jobs/{jid}/result", f"/v1/jobs/{jid}/events"):
        _problem(anon.get(path), 404)
    _problem(anon.post(f"/v1/jobs/{jid}/cancel"), 404)
    assert anon.get("/v1/jobs").json()["items"] == []
    # Even holding the live lease token of a real worker's attempt, it cannot act for it.
    claim = pool.post("/v1/worker/claim", json={"worker": "real"}).json()
    assert claim["job_id"] == jid
    lease = {"X-Lease-Token": claim["token"]}
    _problem(anon.get(f"/v1/worker/jobs/{jid}/datasets/{ds['id']}", headers=lease), 401)
    _problem(anon.get(f"/v1/worker/jobs/{jid}/checkpoint", headers=lease), 401)
    _problem(anon.post(f"/v1/worker/jobs/{jid}/heartbeat", json={"token": claim["token"]}), 401)
    forged = {"token": claim["token"], "result": {"status": "completed", "forged": True}}
    _problem(anon.post(f"/v1/worker/jobs/{jid}/complete", json=forged), 401)
    _problem(anon.put(f"/v1/worker/jobs/{jid}/artifacts/x.png", content=b"x", headers=lease), 401)
    _problem(anon.post(f"/v1/worker/jobs/{jid}/release", json={"token": claim["token"]}), 401)
    assert alice.get(f"/v1/jobs/{jid}").json()["state"] == "running"
    _problem(alice.get(f"/v1/jobs/{jid}/result"), 409, "state")  # no forged result
    # A user key is refused on the worker routes as before (403).
    _problem(alice.post("/v1/worker/claim", json={"worker": "x"}), 403, "Authorization")
    # What anonymous local use may do: its own jobs and datasets, as the user `local`.
    own = _upload(anon, "mine.npz", _npz_bytes())
    assert own.status_code == 201, own.text
    mine = anon.post("/v1/jobs", json=tiny_spec()).json()
    assert anon.get(f"/v1/jobs/{mine['id']}").json()["id"] == mine["id"]
    assert [j["id"] for j in anon.get("/v1/jobs").json()["items"]] == [mine["id"]]
    _problem(alice.get(f"/v1/jobs/{mine['id']}"), 404)


class _Proxy:
    """A real reverse proxy on its own loopback port, forwarding to `upstream` like nginx:

    * `xff`: adds `X-Forwarded-For` (`proxy_add_x_forwarded_for`) and `X-Forwarded-Proto`;
    * `host`: passes the client's `Host` on (`proxy_set_header Host $host`), nothing else;
    * `bare`: `proxy_pass` alone (Host rewritten to the upstream, no header added).
    """

    def __init__(self, upstream: str, mode: str):
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                skip = {"host", "connection", "content-length", "transfer-encoding"}
                headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                if mode == "xff":
                    prior = self.headers.get("x-forwarded-for")
                    peer = self.client_address[0]
                    headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
                    headers["X-Forwarded-Proto"] = "http"
                if mode == "host":
                    headers["Host"] = self.headers.get("host", "")
                r = proxy.http.request(self.command, self.path, content=body, headers=headers)
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            do_GET = do_POST = do_PUT = _forward

        self.http = httpx.Client(base_url=upstream, timeout=60)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.http.close()


@pytest.fixture
def proxies(db_url, server_factory) -> Iterator[tuple[ServerProc, dict[str, _Proxy]]]:
    srv = server_factory(db_url)
    made = {mode: _Proxy(srv.url, mode) for mode in ("xff", "host", "bare")}
    yield srv, made
    for p in made.values():
        p.close()


@_backends
def test_anonymous_access_behind_a_same_host_proxy(proxies):
    srv, px = proxies
    alice = _client(srv, _key(srv, "alice"))
    jid = alice.post("/v1/jobs", json=tiny_spec()).json()["id"]
    worker_key = _key(srv, "pool", worker=True)

    # A proxy that says so (X-Forwarded-For, even one claiming 127.0.0.1): no anonymous access.
    with _client(srv, url=px["xff"].url) as via:
        doc = _problem(via.get("/v1/jobs"), 401, "Authorization")
        assert "x-forwarded-for" in doc["detail"]
        spoof = via.get("/v1/jobs", headers={"X-Forwarded-For": "127.0.0.1"})
        _problem(spoof, 401, "Authorization")
        _problem(via.post("/v1/worker/claim", json={"worker": "thief"}), 401, "Authorization")
    # A proxy that passes the public Host on: no anonymous access either.
    with _client(srv, url=px["host"].url) as via:
        public = {"Host": "revhpo.example.org"}
        doc = _problem(via.get("/v1/jobs", headers=public), 401, "Authorization")
        assert "revhpo.example.org" in doc["detail"]
    # A bare proxy_pass is indistinguishable from a local caller: it gets the user `local`,
    # never a worker, and never another owner's job.
    with _client(srv, url=px["bare"].url) as via:
        assert via.get("/v1/jobs").json()["items"] == []
        _problem(via.get(f"/v1/jobs/{jid}"), 404)
        _problem(via.post("/v1/worker/claim", json={"worker": "thief"}), 401, "Authorization")
    assert alice.get(f"/v1/jobs/{jid}").json()["state"] == "queued"
    # A worker with its key works through any of them.
    with _client(srv, worker_key, url=px["xff"].url) as w:
        assert w.post("/v1/worker/claim", json={"worker": "real"}).json()["job_id"] == jid

    # Direct requests: a DNS-rebound Host or a cross-site Origin is not anonymous.
    anon = _client(srv)
    refused = [
        {"Host": "attacker.example:80"},
        {"Origin": "http://attacker.example"},
        {"Forwarded": "for=127.0.0.1"},
        {"X-Real-IP": "127.0.0.1"},
        {"Via": "1.1 proxy"},
    ]
    for headers in refused:
        doc = _problem(anon.get("/v1/jobs", headers=headers), 401, "Authorization")
        assert any(v in doc["detail"] or k.lower() in doc["detail"] for k, v in headers.items())
    for headers in ({"Origin": srv.url}, {"Host": f"localhost:{srv.port}"}, {}):
        assert anon.get("/v1/jobs", headers=headers).status_code == 200, headers


# ----------------------------------------------------------------------------- bombs
def _zip_of_zeros(members: dict[str, tuple[str, tuple[int, ...]]]) -> bytes:
    """An .npz whose members are .npy arrays of zeros (`name: (descr, shape)`), each a genuine
    deflate stream of its full size: gigabytes of data in a file of a few MB.

    Written by hand because `zipfile` would have to compress every byte: one MiB of zeros is
    compressed once, ended with a full flush (so the block is self-contained) and repeated.
    """
    from numpy.lib import format as npy

    zero = bytes(MiB)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = comp.compress(zero) + comp.flush(zlib.Z_FULL_FLUSH)
    tail = zlib.compressobj(9, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)
    out, central = io.BytesIO(), io.BytesIO()
    for name, (descr, shape) in members.items():
        hdr = io.BytesIO()
        npy.write_array_header_1_0(hdr, {"descr": descr, "fortran_order": False, "shape": shape})
        header = hdr.getvalue()
        size = int(np.prod(shape)) * np.dtype(descr).itemsize
        assert size % MiB == 0 and len(header) + size < 1 << 32
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        data = [c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)]
        crc = zlib.crc32(header)
        for _ in range(size // MiB):
            data.append(block)
            crc = zlib.crc32(zero, crc)
        data.append(tail)
        blob = b"".join(data)
        offset, fname = out.tell(), name.encode()
        fields = (20, 0, 8, 0, 0x21, crc, len(blob), len(header) + size, len(fname))
        out.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", *fields, 0) + fname + blob)
        central.write(
            struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, *fields, 0, 0, 0, 0, 0, offset) + fname
        )
    cd = central.getvalue()
    n = len(members)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, n, n, len(cd), out.tell(), 0)
    return out.getvalue() + cd + end


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def _measured(srv: ServerProc, send) -> tuple[httpx.Response, float, int]:  # noqa: ANN001
    """(response, seconds, peak RSS growth in bytes) of one request to the real server."""
    pid = srv.proc.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS now
    before = _status(pid)["VmRSS"]
    t0 = time.perf_counter()
    resp = send()
    elapsed = time.perf_counter() - t0
    grew = _status(pid)["VmHWM"] - before
    return resp, elapsed, grew


def _report(what: str, srv: ServerProc, elapsed: float, grew: int) -> None:
    backend = "postgres" if srv.db_url.startswith("postgresql") else "sqlite"
    print(f"\n[figure] {what} [{backend}]: {elapsed * 1000:.1f} ms, peak RSS +{grew / MiB:.1f} MiB")


@pytest.fixture
def upload_server(db_url, server_factory) -> Iterator[tuple[ServerProc, httpx.Client]]:
    """A server with the default dataset limits, warmed up by one small upload of each kind
    (so lazy imports are not counted in a measurement)."""
    srv = server_factory(db_url)
    c = _client(srv, _key(srv, "uploader"))
    assert _upload(c, "warm.npz", _npz_bytes()).status_code == 201
    assert _upload(c, "warm.csv", b"a,b,label\n1,2,x\n3,4,y\n").status_code == 201
    yield srv, c
    c.close()


@_backends
def test_npz_bomb_refused_from_its_headers(upload_server):
    """Issue item 5: a 0.75 MB .npz raised the API's memory by 734 MB. This one is 2 MB and
    decompresses to 2 GiB of float64 (a genuine deflate stream, not a lying header)."""
    srv, c = upload_server
    rows = 1 << 27  # x: (2^27, 2) float64 = 2 GiB; y: 2^27 int8 = 128 MiB
    bomb = _zip_of_zeros({"x.npy": ("<f8", (rows, 2)), "y.npy": ("|i1", (rows,))})
    with zipfile.ZipFile(io.BytesIO(bomb)) as zf:  # what it holds, according to zipfile
        assert sum(i.file_size for i in zf.infolist()) > 2 << 30
    assert len(bomb) < 3 * MiB
    resp, elapsed, grew = _measured(srv, lambda: _upload(c, "bomb.npz", bomb))
    _report(f"npz bomb ({len(bomb) / MiB:.2f} MiB -> 2.1 GiB)", srv, elapsed, grew)
    doc = _problem(resp, 413, "file")
    assert "(134217728, 2)" in doc["detail"] and "REVHPO_MAX_DATASET_VALUES" in doc["detail"]
    assert grew <= MEMORY_BUDGET, f"API peak RSS grew by {grew / MiB:.0f} MiB"
    assert elapsed < 30  # measured figures are reported above; this only catches a hang
    assert c.get("/healthz").status_code == 200


@_backends
def test_csv_over_the_limits_refused_early(db_url, server_factory):
    srv = server_factory(
        db_url, REVHPO_MAX_DATASET_VALUES="100000", REVHPO_MAX_DATASET_BYTES=str(4 * MiB)
    )
    c = _client(srv, _key(srv, "uploader"))
    assert _upload(c, "warm.csv", b"a,b,label\n1,2,x\n3,4,y\n").status_code == 201
    row = b"0.125,0.5,0.25,1\n"
    over_values = b"a,b,c,label\n" + row * (3 * MiB // len(row))  # 3 MiB: 740k values
    resp, elapsed, grew = _measured(srv, lambda: _upload(c, "many.csv", over_values))
    _report("csv over the value limit (3 MiB, limit 100000 values)", srv, elapsed, grew)
    doc = _problem(resp, 413, "file")
    assert "100000" in doc["detail"] and "REVHPO_MAX_DATASET_VALUES" in doc["detail"]
    assert grew <= MEMORY_BUDGET and elapsed < 30
    over_bytes = b"a,b,c,label\n" + row * (8 * MiB // len(row))  # 8 MiB > 4 MiB
    resp, elapsed, grew = _measured(srv, lambda: _upload(c, "big.csv", over_bytes))
    _report("csv over the byte limit (8 MiB, limit 4 MiB)", srv, elapsed, grew)
    _problem(resp, 413)
    assert grew <= MEMORY_BUDGET and elapsed < 30
    wide = b"a,label\n" + b"1," * (MiB // 2 + 1) + b"x\n"  # one line over 1 Mi characters
    _problem(_upload(c, "wide.csv", wide), 413, "file")


@pytest.mark.slow
@_backends
def test_valid_uploads_are_checked_in_bounded_memory(upload_server):
    """Issue item 5: an 8 MiB CSV cost +245 MB. Valid uploads near that size are accepted
    and checked a row (csv) or a few MiB (npz) at a time."""
    srv, c = upload_server
    rng = np.random.default_rng(1)
    n = 8 * MiB // 32
    feats = rng.normal(size=(n, 3))
    labels = rng.integers(0, 4, size=n)
    text = "a,b,c,label\n" + "".join(
        f"{a:.5f},{b:.5f},{d:.5f},{y}\n" for (a, b, d), y in zip(feats, labels, strict=True)
    )
    data = text.encode()
    resp, elapsed, grew = _measured(srv, lambda: _upload(c, "ok.csv", data))
    _report(f"valid csv ({len(data) / MiB:.1f} MiB, {n} rows)", srv, elapsed, grew)
    assert resp.status_code == 201, resp.text
    got = resp.json()
    assert (got["n_rows"], got["n_features"], got["n_classes"]) == (n, 3, 4)
    assert grew <= MEMORY_BUDGET
    x = rng.normal(size=(1 << 19, 8))  # 32 MiB of float64
    y = rng.integers(0, 10, size=1 << 19)
    data = _npz_bytes(x=x, y=y)
    resp, elapsed, grew = _measured(srv, lambda: _upload(c, "ok.npz", data))
    _report(f"valid npz ({len(data) / MiB:.1f} MiB)", srv, elapsed, grew)
    assert resp.status_code == 201, resp.text
    assert resp.json()["n_rows"] == 1 << 19 and resp.json()["n_features"] == 8
    assert grew <= MEMORY_BUDGET


# ----------------------------------------------------------------------------- unusable data
def _x(n: int = 8, d: int = 2, **at: float) -> np.ndarray:
    x = np.arange(n * d, dtype=np.float64).reshape(n, d)
    for pos, value in at.items():
        i, j = (int(v) for v in pos[1:].split("_"))
        x[i, j] = value
    return x


def _y(n: int = 8) -> np.ndarray:
    return np.arange(n) % 2


def _zip_members(k: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, a in (("x.npy", _x()), ("y.npy", _y())):
            with zf.open(name, "w") as fh:
                np.lib.format.write_array(fh, a)
        for i in range(k):
            zf.writestr(f"extra{i}", b"")
    return buf.getvalue()


UNUSABLE = {
    "npz-no-feature-column": ("d.npz", _npz_bytes(x=np.ones((8, 0)), y=_y()), "(8, 0)"),
    "npz-nan": ("d.npz", _npz_bytes(x=_x(r3_1=np.nan), y=_y()), "x[3, 1] is nan"),
    "npz-inf": ("d.npz", _npz_bytes(x=_x(r5_0=-np.inf), y=_y()), "x[5, 0] is -inf"),
    "npz-nan-fortran": (
        "d.npz",
        _npz_bytes(x=np.asfortranarray(_x(r6_1=np.nan)), y=_y()),
        "x[6, 1] is nan",
    ),
    "npz-single-class": ("d.npz", _npz_bytes(x=_x(), y=np.zeros(8, int)), "1 class"),
    "npz-complex": ("d.npz", _npz_bytes(x=_x().astype(complex), y=_y()), "x.dtype='<c16'"),
    "npz-string-features": ("d.npz", _npz_bytes(x=_x().astype(str), y=_y()), "x.dtype='<U"),
    "npz-nan-label": ("d.npz", _npz_bytes(x=_x(), y=np.array([0.0, np.nan] * 4)), "y[1] is nan"),
    "npz-labels-not-one-per-row": ("d.npz", _npz_bytes(x=_x(), y=_y(5)), "y.shape=(5,)"),
    "npz-no-y": ("d.npz", _npz_bytes(x=_x(), y=None), "lacks array 'y'"),
    "npz-truncated": ("d.npz", _npz_bytes(x=_x(), y=_y())[:300], "npz"),
    "npz-too-many-members": ("d.npz", _zip_members(70), "72 members"),
    "csv-no-feature-column": ("d.csv", b"label\na\nb\n", "no feature columns"),
    "csv-nan": ("d.csv", b"a,b,label\n1,2,x\n3,nan,y\n", "row 3, column 1 ('b') is nan"),
    "csv-inf": ("d.csv", b"a,b,label\n1,inf,x\n3,4,y\n", "row 2, column 1 ('b') is inf"),
    "csv-single-class": ("d.csv", b"a,b,label\n1,2,x\n3,4,x\n", "column 2 ('label'): 1 class"),
    "csv-complex": ("d.csv", b"a,b,label\n1,2,x\n1+2j,4,y\n", "column 0 ('a')"),
    "csv-string-feature": ("d.csv", b"a,b,label\n1,2,x\n3,four,y\n", "'four'"),
    "csv-ragged": ("d.csv", b"a,b,label\n1,2,x\n3,4\n", "row 3 has 2 fields"),
    "csv-header-only": ("d.csv", b"a,b,label\n", "no data rows"),
    "csv-not-utf8": ("d.csv", b"a,b,label\n1,\xff,x\n", "UTF-8"),
}


@pytest.mark.parametrize("shared_server", BACKENDS, indirect=True, scope="module")
@pytest.mark.parametrize("case", sorted(UNUSABLE))
def test_unusable_upload_refused_naming_the_problem(shared_server, case):
    """Issue item 9: uploads no job can use were accepted."""
    name, data, expected = UNUSABLE[case]
    with _client(shared_server, _key(shared_server, f"u-{uuid.uuid4().hex[:8]}")) as c:
        doc = _problem(_upload(c, name, data), 422, "file")
        assert expected in doc["detail"], doc["detail"]


@pytest.mark.parametrize("shared_server", BACKENDS, indirect=True, scope="module")
def test_usable_uploads_still_accepted(shared_server):
    with _client(shared_server, _key(shared_server, f"u-{uuid.uuid4().hex[:8]}")) as c:
        cases = [
            ("int.npz", _npz_bytes(x=np.arange(16).reshape(8, 2), y=_y()), (8, 2, 2)),
            ("img.npz", _npz_bytes(x=np.zeros((8, 2, 3), np.float32), y=_y()), (8, 6, 2)),
            ("col.npz", _npz_bytes(x=_x(), y=_y().reshape(8, 1)), (8, 2, 2)),
            ("str.npz", _npz_bytes(x=_x(), y=np.array(["cat", "dog"] * 4)), (8, 2, 2)),
            ("one.npz", _npz_bytes(x=np.arange(8.0), y=_y()), (8, 1, 2)),
            ("d.csv", b"a,b,label\n1,2,x\n\n3,4,y\n5,6,z\n", (3, 2, 3)),
            ("q.csv", b'a,b,label\n1,2,"x, y"\n3,4,z\n', (2, 2, 2)),
        ]
        for name, data, shape in cases:
            r = _upload(c, name, data)
            assert r.status_code == 201, (name, r.text)
            got = r.json()
            assert (got["n_rows"], got["n_features"], got["n_classes"]) == shape, name


def test_a_job_reads_an_uploaded_csv_as_checked(tmp_path):
    """The job side (`read_arrays`, `load_dataset`) reads a .csv a row at a time too, to the
    same arrays the upload check described."""
    from revhpo.service.data import inspect_upload, load_dataset, read_arrays
    from revhpo.service.spec import UploadedDataset

    (tmp_path / "abc.csv").write_text('f1,label,f2\n1.5,"a, b",2\n\n-3,c,4e1\n0,c,1\n')
    x, y = read_arrays(UploadedDataset(id="abc", label_column="label"), tmp_path)
    assert x.dtype == np.float64 and x.tolist() == [[1.5, 2.0], [-3.0, 40.0], [0.0, 1.0]]
    assert y.tolist() == ["a, b", "c", "c"]
    st = inspect_upload(tmp_path / "abc.csv", label_column="label")
    assert (st.n_rows, st.n_features, st.n_classes) == (3, 2, 2)
    spec = UploadedDataset(id="abc", label_column=1, split={"train": 1, "val": 1, "test": 1})
    assert load_dataset(spec, tmp_path).n_classes == 2
