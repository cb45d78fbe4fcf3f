"""`/v1/datasets`: upload `.npz` / `.csv` files that job specs then reference by id, and list
the caller's own uploads."""

from __future__ import annotations

import base64
import binascii
import hashlib
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from revhpo.service import queue
from revhpo.service.auth import Principal
from revhpo.service.db import session_scope
from revhpo.service.models import Dataset
from revhpo.service.schemas import DatasetPublic, Problem
from revhpo.service.settings import Settings
from sqlalchemy import select

from .deps import EngineDep, PrincipalDep, ReadSessionDep, SettingsDep, StoreDep
from .problems import ProblemError

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


def _inspect(path: Path, settings: Settings) -> tuple[int, int, int]:
    """(rows, features, classes) of an uploaded file, checked the way a job will read it
    without loading it whole (`revhpo.service.data.inspect_upload`).

    Raises:
        ProblemError: 413 over `max_dataset_values` (decompressed) or a .csv line over its
            limit; 422 for anything a job could not train on.
    """
    from revhpo.service.data import DataError, DataLimits, DatasetTooLarge, inspect_upload

    limits = DataLimits(
        max_values=settings.max_dataset_values, max_classes=settings.max_dataset_classes
    )
    try:
        st = inspect_upload(path, limits)
    except DatasetTooLarge as exc:
        raise ProblemError(413, "Request too large", str(exc), field="file") from exc
    except DataError as exc:
        raise ProblemError(422, "Invalid dataset", str(exc), field="file") from exc
    return st.n_rows, st.n_features, st.n_classes


def _store(
    engine, store, principal: Principal, upload: UploadFile, settings: Settings
) -> DatasetPublic:
    limit = settings.max_dataset_bytes
    if "\x00" in (upload.filename or ""):
        raise ProblemError(
            422,
            "Invalid request",
            f"filename: a NUL character is not allowed. Received: {upload.filename!r}",
            field="filename",
        )
    name = Path(upload.filename or "").name
    fmt = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if fmt not in ("npz", "csv"):
        raise ProblemError(
            422,
            "Invalid dataset",
            f"upload a .npz or .csv file. Received: filename={upload.filename!r}",
            field="file",
        )
    dataset_id = queue.new_id()
    dest = store.dataset_path(dataset_id, fmt)
    upload.file.seek(0, 2)
    size = upload.file.tell()
    upload.file.seek(0)
    if size > limit:
        raise ProblemError(413, "Request too large", f"dataset exceeds {limit} bytes", field="file")
    h = hashlib.sha256()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    with tmp.open("wb") as out:
        while chunk := upload.file.read(1 << 20):
            h.update(chunk)
            out.write(chunk)
    try:
        tmp.replace(dest)
        n, d, c = _inspect(dest, settings)
    except BaseException:
        dest.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
        raise
    with session_scope(engine) as s:
        row = Dataset(
            id=dataset_id,
            owner=principal.owner,
            filename=name[:200],
            format=fmt,
            size=size,
            sha256=h.hexdigest(),
            path=str(dest.relative_to(store.root)),
            n_rows=n,
            n_features=d,
            n_classes=c,
        )
        s.add(row)
        s.flush()
        s.refresh(row)
        return DatasetPublic.from_row(row)


@router.post(
    "",
    status_code=201,
    response_model=DatasetPublic,
    responses={
        401: {"model": Problem},
        413: {
            "model": Problem,
            "description": "file larger than the server's limit, or more values once "
            "decompressed or parsed than `max_dataset_values`",
        },
        422: {
            "model": Problem,
            "description": "not a dataset a job can train on: unreadable, no feature column, "
            "non-real or non-finite features, labels not one per row, a single class",
        },
    },
    summary="Upload a dataset",
)
async def upload_dataset(
    file: Annotated[UploadFile, File(description=".npz (arrays x, y) or .csv (label last)")],
    principal: PrincipalDep,
    settings: SettingsDep,
    engine: EngineDep,
    store: StoreDep,
) -> DatasetPublic:
    """Store the file, check it reads as a dataset, and return its id."""
    return await run_in_threadpool(_store, engine, store, principal, file, settings)


class DatasetsPage(BaseModel):
    """One page of `GET /v1/datasets`, newest first."""

    items: list[DatasetPublic]
    next_cursor: str | None = Field(None, description="pass as `cursor` for the next page")


MAX_SEQ = 2**63 - 1  # the largest listing position a database integer holds


def encode_cursor(seq: int) -> str:
    """The opaque cursor of the dataset listing position `seq` (not a job listing's)."""
    return base64.urlsafe_b64encode(f"d{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The listing position of a cursor `encode_cursor` issued.

    Raises:
        ProblemError: 422 (`field: cursor`) for anything else, a job listing's cursor included.
    """
    seq = -1
    if cursor.isascii():
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        except (binascii.Error, ValueError):
            raw = ""
        digits = raw[1:]
        if raw[:1] == "d" and digits.isascii() and digits.isdigit() and len(digits) <= 19:
            seq = int(digits)
    if not 0 <= seq <= MAX_SEQ or encode_cursor(seq) != cursor:  # only the canonical form
        raise ProblemError(
            422,
            "Invalid request",
            f"cursor: not a `next_cursor` of this listing. Received: {cursor[:80]!r}",
            field="cursor",
        )
    return seq


@router.get(
    "",
    response_model=DatasetsPage,
    responses={
        401: {"model": Problem, "description": "missing or unknown API key"},
        422: {"model": Problem, "description": "invalid `limit` or `cursor`"},
    },
    summary="List your datasets",
)
def list_datasets(
    principal: PrincipalDep,
    session: ReadSessionDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=64, description="`next_cursor`")] = None,
) -> DatasetsPage:
    """One page of the caller's uploaded datasets, newest first (cursor pagination, one
    query). Other owners' datasets are never listed."""
    limit = min(limit, settings.page_size_max)
    q = select(Dataset).where(Dataset.owner == principal.owner)
    if cursor is not None:
        q = q.where(Dataset.seq < decode_cursor(cursor))
    rows = list(session.scalars(q.order_by(Dataset.seq.desc()).limit(limit + 1)))
    nxt = encode_cursor(rows[limit - 1].seq) if len(rows) > limit else None
    return DatasetsPage(items=[DatasetPublic.from_row(d) for d in rows[:limit]], next_cursor=nxt)
