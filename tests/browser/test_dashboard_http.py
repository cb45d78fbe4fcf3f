"""The dashboard's files as a real API server sends them: security headers, media types,
no inline script or style, nothing loaded from elsewhere, every module present, no path
escapes, and the package data that ships them. HTTP only (no browser): the fast tier runs it."""

from __future__ import annotations

import hashlib
import re
import tomllib
from fnmatch import fnmatch
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from dash_helpers import REPO

STATIC = REPO / "service" / "dashboard" / "static"
OWN_FILES = [p for p in STATIC.rglob("*") if p.is_file() and "vendor" not in p.parts]
ALL_FILES = [p for p in STATIC.rglob("*") if p.is_file()]
TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".md": "text/plain",
}


@pytest.fixture(scope="module")
def api(bare):
    with httpx.Client(base_url=bare.url, timeout=30) as client:
        yield client


def _csp(headers: httpx.Headers) -> dict[str, list[str]]:
    out = {}
    for part in headers["content-security-policy"].split(";"):
        name, *values = part.split()
        out[name] = values
    return out


def _check_security_headers(headers: httpx.Headers) -> None:
    csp = _csp(headers)
    assert csp["default-src"] == ["'self'"]
    assert csp["script-src"] == ["'self'"]  # no 'unsafe-inline', no 'unsafe-eval'
    assert csp["style-src"] == ["'self'"]
    assert csp["object-src"] == ["'none'"] and csp["frame-ancestors"] == ["'none'"]
    assert set(csp["img-src"]) == {"'self'", "blob:"}
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"


def test_the_page_is_served_at_the_root_with_a_strict_policy(api):
    r = api.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.text == (STATIC / "index.html").read_text()
    _check_security_headers(r.headers)
    assert r.headers["cache-control"] == "no-cache"
    head = api.head("/")
    assert head.status_code == 200 and head.content == b""
    # the page is not part of the API's description
    paths = api.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/dashboard") for p in paths)


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: str(p.relative_to(STATIC)))
def test_every_file_is_served_with_its_type_and_headers(api, path: Path):
    rel = path.relative_to(STATIC).as_posix()
    r = api.get(f"/dashboard/{rel}")
    assert r.status_code == 200, rel
    expected = TYPES.get(path.suffix)
    if expected:
        assert r.headers["content-type"].split(";")[0] == expected, rel
    assert r.content == path.read_bytes()
    _check_security_headers(r.headers)
    again = api.get(f"/dashboard/{rel}", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text = ""
        self._in_script = False

    def handle_starttag(self, tag, attrs):  # noqa: ANN001
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):  # noqa: ANN001
        self._in_script = False

    def handle_data(self, data):  # noqa: ANN001
        if self._in_script:
            self.script_text += data.strip()


def _page_refs() -> list[str]:
    parser = _Tags()
    parser.feed((STATIC / "index.html").read_text())
    return [v for _, attrs in parser.tags for k, v in attrs.items() if k in ("src", "href") and v]


def test_no_inline_script_or_style_and_nothing_from_elsewhere():
    parser = _Tags()
    parser.feed((STATIC / "index.html").read_text())
    assert parser.script_text == ""  # every script is a file of this origin
    for tag, attrs in parser.tags:
        assert "style" not in attrs, tag
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
        if tag == "script":
            assert attrs.get("type") == "module" and attrs["src"].startswith("/dashboard/")
    assert "style" not in [tag for tag, _ in parser.tags]
    for ref in _page_refs():
        assert ref.startswith(("/dashboard/", "#", "/docs")), ref
    for path in OWN_FILES:
        text = path.read_text().replace('xmlns="http://www.w3.org/2000/svg"', "")  # a name
        assert not re.search(r"https?://", text), f"{path.name} refers to another origin"
    for path in ALL_FILES:
        if path.suffix != ".js":
            continue
        text = path.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in text, f"{path.name} uses {sink}"
        assert "new Function" not in text, path.name
        assert not re.search(r"""(import|from)\s*\(?\s*["'](https?:)?//""", text), path.name


def _imports(path: Path) -> list[Path]:
    text = path.read_text()
    refs = re.findall(r"""(?:from|import)\s*\(?\s*["'](\.{1,2}/[^"']+)["']""", text)
    return [(path.parent / ref).resolve() for ref in refs]


def test_every_module_the_page_loads_is_served(api):
    todo = [
        STATIC / ref.removeprefix("/dashboard/")
        for ref in _page_refs()
        if ref.startswith("/dashboard/")
    ]
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        rel = path.relative_to(STATIC).as_posix()
        assert api.get(f"/dashboard/{rel}").status_code == 200, rel
        if path.suffix == ".js":
            todo.extend(_imports(path))
    served = {p.relative_to(STATIC).as_posix() for p in seen}
    assert {"app.js", "api.js", "sse.js", "charts.js", "vendor/uplot/uPlot.esm.js"} <= served
    assert {"pages/job.js", "pages/jobs.js", "pages/compare.js", "pages/datasets.js"} <= served


@pytest.mark.parametrize(
    "path",
    [
        "/dashboard/%2e%2e/__init__.py",
        "/dashboard/..%2f__init__.py",
        "/dashboard/%2e%2e/%2e%2e/pyproject.toml",
        "/dashboard/",
        "/dashboard/vendor",
        "/dashboard/nope.js",
    ],
)
def test_nothing_outside_the_static_files_is_served(api, path: str):
    r = api.get(path)
    assert r.status_code == 404, (path, r.text[:200])
    assert r.headers["content-type"].startswith("application/problem+json")


def test_the_vendored_chart_library_is_the_one_its_note_names():
    note = (STATIC / "vendor" / "uplot" / "README.md").read_text()
    listed = dict(re.findall(r"`([\w.]+)` ([0-9a-f]{64})", note))
    assert set(listed) == {"uPlot.esm.js", "uPlot.min.css", "LICENSE"}
    for name, digest in listed.items():
        data = (STATIC / "vendor" / "uplot" / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, name
    assert "The MIT License" in (STATIC / "vendor" / "uplot" / "LICENSE").read_text()


def test_the_package_data_ships_every_dashboard_file():
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "revhpo.service.dashboard" in cfg["packages"]
    globs = cfg["package-data"]["revhpo.service.dashboard"]
    root = STATIC.parent
    for path in ALL_FILES:
        rel = path.relative_to(root).as_posix()
        assert any(fnmatch(rel, g) and rel.count("/") == g.count("/") for g in globs), rel
