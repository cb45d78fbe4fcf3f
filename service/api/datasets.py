"""`/v1/datasets`: upload `.npz` / `.csv` files that job specs then reference by id."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, UploadFile
from fastapi.concurrency import run_in_threadpool
from revhpo.service import queue
from revhpo.service.auth import Principal
from revhpo.service.db import session_scope
from revhpo.service.models import Dataset
from revhpo.service.schemas import DatasetPublic, Problem

from .deps import EngineDep, PrincipalDep, SettingsDep, StoreDep
from .problems import ProblemError

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


def _inspect(path: Path, dataset_id: str) -> tuple[int, int, int]:
    """(rows, features, classes) of an uploaded file, read the way a job will read it."""
    import numpy as np
    from revhpo.service.data import DataError, read_arrays
    from revhpo.service.spec import UploadedDataset

    try:
        x, y = read_arrays(UploadedDataset(id=dataset_id), path.parent)
    except (DataError, ValueError) as exc:
        raise ProblemError(422, "Invalid dataset", str(exc), field="file") from exc
    x = np.asarray(x)
    y = np.asarray(y).reshape(-1)
    if x.ndim == 0 or len(x) != len(y) or len(x) == 0:
        raise ProblemError(
            422,
            "Invalid dataset",
            f"features and labels must be non-empty and of one length. "
            f"Received: {x.shape} and {y.shape}",
            field="file",
        )
    d = int(np.prod(x.shape[1:])) if x.ndim > 1 else 1
    return len(x), d, len(np.unique(y))


def _store(engine, store, principal: Principal, upload: UploadFile, limit: int) -> DatasetPublic:
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
        n, d, c = _inspect(dest, dataset_id)
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
        413: {"model": Problem, "description": "file larger than the server's limit"},
        422: {"model": Problem, "description": "not a readable .npz/.csv dataset"},
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
    return await run_in_threadpool(
        _store, engine, store, principal, file, settings.max_dataset_bytes
    )
