"""The artifact directory: uploaded datasets, and per-job results, plots and checkpoints.

Layout (under `Settings.resolved_artifact_dir`)::

    datasets/<dataset id>.<npz|csv>
    jobs/<job id>/<attempt dir>/<name>     # one directory per attempt: a late upload of a
                                           # dead attempt can never overwrite a live one's file
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi.responses import FileResponse

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# Files a browser may show inline: types that can carry no script. Anything else a worker
# uploads (HTML, SVG, PDF, unknown) is served as an opaque download, never rendered.
INLINE_MEDIA_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".csv": "text/csv; charset=utf-8",
}
DOWNLOAD_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
}


class TooLarge(Exception):
    """An upload exceeded its size limit."""


def safe_name(name: str) -> str:
    """`name` if it is a plain file name (no path, no leading dot), else ValueError."""
    if not _SAFE.match(name) or ".." in name:
        raise ValueError(f"`name` must match {_SAFE.pattern} without '..'. Received: name={name!r}")
    return name


def attempt_dir(token: str) -> str:
    """The directory of one attempt's files (named by its lease token's first 16 characters)."""
    return f"a-{safe_name(token)[:16]}"


def file_response(path: Path, name: str) -> FileResponse:
    """Serve a stored file so that no browser runs it.

    Known-safe types (`INLINE_MEDIA_TYPES`: images, JSON, plain text, CSV) go out with their
    type, inline; every other file as `application/octet-stream` with `Content-Disposition:
    attachment`. Always `X-Content-Type-Options: nosniff` and a sandboxing
    `Content-Security-Policy`.
    """
    from fastapi.responses import FileResponse

    media = INLINE_MEDIA_TYPES.get(Path(name).suffix.lower())
    return FileResponse(
        path,
        media_type=media or "application/octet-stream",
        filename=name,
        content_disposition_type="inline" if media else "attachment",
        headers=DOWNLOAD_HEADERS,
    )


class ArtifactStore:
    """Files of the service, addressed by ids and checked names only."""

    def __init__(self, root: Path):
        self.root = Path(root)
        (self.root / "datasets").mkdir(parents=True, exist_ok=True)
        (self.root / "jobs").mkdir(parents=True, exist_ok=True)

    def dataset_path(self, dataset_id: str, fmt: str) -> Path:
        """Where dataset `dataset_id` (format `npz` or `csv`) is kept."""
        return self.root / "datasets" / f"{safe_name(dataset_id)}.{fmt}"

    def job_file(self, job_id: str, rel: str) -> Path:
        """A job's file `rel` = `<attempt dir>/<name>` (both parts checked)."""
        parts = rel.split("/")
        if len(parts) != 2:
            raise ValueError(f"artifact path must be '<dir>/<name>'. Received: {rel!r}")
        return self.root / "jobs" / safe_name(job_id) / safe_name(parts[0]) / safe_name(parts[1])

    async def save_stream(
        self, chunks: AsyncIterator[bytes], dest: Path, limit: int
    ) -> tuple[int, str]:
        """Write an upload to `dest` atomically, refusing more than `limit` bytes.

        Returns:
            (size, sha256 hex).

        Raises:
            TooLarge: the stream went past `limit` (nothing is left behind).
        """
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".upload-")
        h, size = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as fh:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise TooLarge(f"{size} > {limit} bytes")
                    h.update(chunk)
                    fh.write(chunk)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return size, h.hexdigest()

    def prune_attempts(self, job_id: str, keep: set[str]) -> None:
        """Delete the job's attempt directories not named in `keep` (files of dead attempts)."""
        root = self.root / "jobs" / safe_name(job_id)
        if not root.is_dir():
            return
        for d in root.iterdir():
            if d.is_dir() and d.name not in keep:
                shutil.rmtree(d, ignore_errors=True)

    def copy_in(self, src: Path, dest: Path) -> None:
        """Copy a spooled upload into place atomically."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".upload-")
        os.close(fd)
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
