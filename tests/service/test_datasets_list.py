"""`GET /v1/datasets`: the caller's own uploads, newest first, cursor-paginated, on a real
uvicorn server for each backend (keys required). Every test makes its own owners."""

from __future__ import annotations

import base64
import io
import uuid

import httpx
import numpy as np
import pytest
from svc_helpers import BACKENDS, PROBLEM
from svc_helpers import assert_problem as _problem

pytestmark = pytest.mark.parametrize("shared_server", BACKENDS, indirect=True, scope="module")


def _client(server, owner: str | None = None) -> httpx.Client:
    from revhpo.service.auth import create_key
    from revhpo.service.db import get_engine

    key = create_key(get_engine(server.db_url), owner or f"user-{uuid.uuid4().hex[:8]}")
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _npz(n: int = 40, d: int = 3, classes: int = 2, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    np.savez(buf, x=rng.normal(size=(n, d)), y=rng.integers(0, classes, size=n))
    return buf.getvalue()


def _upload(client: httpx.Client, name: str, **shape: int) -> dict:
    r = client.post("/v1/datasets", files={"file": (name, _npz(**shape))})
    assert r.status_code == 201, r.text
    return r.json()


def test_an_owner_without_uploads_gets_an_empty_page(shared_server):
    with _client(shared_server) as c:
        r = c.get("/v1/datasets")
        assert r.status_code == 200
        assert r.json() == {"items": [], "next_cursor": None}


def test_pages_list_every_upload_once_newest_first(shared_server):
    with _client(shared_server) as c:
        uploaded = [_upload(c, f"d{i}.npz", n=30 + i, d=2 + i, seed=i) for i in range(5)]
        seen, cursor, pages = [], None, 0
        while True:
            params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
            page = c.get("/v1/datasets", params=params).json()
            assert len(page["items"]) <= 2
            seen += page["items"]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert pages == 3
        # exactly the upload answers, newest first, every field
        assert seen == uploaded[::-1]
        first = c.get("/v1/datasets").json()
        assert first["items"] == uploaded[::-1] and first["next_cursor"] is None
        exact = c.get("/v1/datasets", params={"limit": 5}).json()
        assert len(exact["items"]) == 5 and exact["next_cursor"] is None
        assert seen[0]["n_rows"] == 34 and seen[0]["n_features"] == 6
        assert seen[0]["filename"] == "d4.npz" and seen[0]["format"] == "npz"


def test_other_owners_uploads_are_never_listed(shared_server):
    with _client(shared_server) as alice, _client(shared_server) as bob:
        mine = _upload(alice, "alice.npz")
        theirs = _upload(bob, "bob.npz")
        assert [d["id"] for d in alice.get("/v1/datasets").json()["items"]] == [mine["id"]]
        assert [d["id"] for d in bob.get("/v1/datasets").json()["items"]] == [theirs["id"]]
        # alice's cursor past her own upload gives bob nothing of hers either
        page = alice.get("/v1/datasets", params={"limit": 1}).json()
        assert page["next_cursor"] is None
        cursor = base64.urlsafe_b64encode(b"d999999").decode().rstrip("=")
        listed = bob.get("/v1/datasets", params={"cursor": cursor}).json()["items"]
        assert [d["id"] for d in listed] == [theirs["id"]]
    with _client(shared_server, "alice-again") as other_key_other_owner:
        assert other_key_other_owner.get("/v1/datasets").json()["items"] == []


def test_a_second_key_of_the_same_owner_sees_the_same_datasets(shared_server):
    owner = f"team-{uuid.uuid4().hex[:8]}"
    with _client(shared_server, owner) as first, _client(shared_server, owner) as second:
        ds = _upload(first, "shared.npz")
        assert second.get("/v1/datasets").json()["items"] == [ds]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage!",
        _b64(b"j5"),  # a job listing's cursor
        _b64(b"d"),
        _b64(b"d-1"),
        _b64(b"d12x"),
        _b64(b"d" + b"9" * 20),  # past what a database integer holds
        _b64(b"d9223372036854775808"),
        _b64(b"d5") + "==",  # not the canonical form the listing issues
        "ZDU=",
        "\u00e9t\u00e9",
    ],
)
def test_a_cursor_this_listing_did_not_issue_is_refused(shared_server, cursor: str):
    with _client(shared_server) as c:
        doc = _problem(c.get("/v1/datasets", params={"cursor": cursor}), 422, "cursor")
        assert "cursor" in doc["detail"]


def test_the_largest_valid_cursor_is_accepted(shared_server):
    with _client(shared_server) as c:
        ds = _upload(c, "one.npz")
        page = c.get("/v1/datasets", params={"cursor": _b64(b"d9223372036854775807")}).json()
        assert page["items"] == [ds]


@pytest.mark.parametrize("limit", ["0", "-1", "201", "x", "1e999"])
def test_a_bad_limit_is_refused(shared_server, limit: str):
    with _client(shared_server) as c:
        _problem(c.get("/v1/datasets", params={"limit": limit}), 422, "query.limit")


def test_no_key_or_a_revoked_key_is_refused(shared_server):
    from revhpo.service.auth import create_key, revoke_key
    from revhpo.service.db import get_engine

    anon = httpx.get(shared_server.url + "/v1/datasets", timeout=30)
    _problem(anon, 401, "Authorization")
    engine = get_engine(shared_server.db_url)
    key = create_key(engine, f"gone-{uuid.uuid4().hex[:8]}")
    revoke_key(engine, key)  # never verified by the server, so nothing cached there
    r = httpx.get(
        shared_server.url + "/v1/datasets", headers={"Authorization": f"Bearer {key}"}, timeout=30
    )
    _problem(r, 401, "Authorization")


def test_the_listing_is_described_in_openapi(shared_server):
    with _client(shared_server) as c:
        op = c.get("/openapi.json").json()["paths"]["/v1/datasets"]["get"]
    assert {p["name"] for p in op["parameters"]} >= {"limit", "cursor"}
    for code in ("401", "422"):
        content = op["responses"][code]["content"]
        assert list(content) == [PROBLEM]
    ok = op["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["$ref"].endswith("/DatasetsPage")
