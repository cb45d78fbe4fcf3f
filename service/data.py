"""Datasets for tuning jobs: bundled digits, synthetic tasks, .npz, .csv, IDX, uploads.

Every loader returns features ``x`` (float64, ``[n, d]``) and integer labels ``y`` (``[n]``,
mapped to ``0..C-1``); :func:`load_dataset` then splits them deterministically from a seed
and standardises with the training statistics.
"""

from __future__ import annotations

import csv
import gzip
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from revhpo.service.spec import (
    CsvDataset,
    DigitsDataset,
    IdxDataset,
    NpzDataset,
    SplitSpec,
    SyntheticDataset,
    UploadedDataset,
)

__all__ = ["DataError", "Dataset", "load_dataset", "read_arrays", "read_idx", "split_counts"]


class DataError(ValueError):
    """A dataset that cannot be found, read or split; the message echoes what was received."""


@dataclass(frozen=True)
class Dataset:
    """A split, standardised classification dataset (float64 features, int32 labels)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    name: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def input_dim(self) -> int:
        """Number of input features."""
        return int(self.x_train.shape[1])

    def summary(self) -> dict[str, Any]:
        """JSON-able description (sizes, classes, where it came from)."""
        return {
            "name": self.name,
            "n_train": int(len(self.y_train)),
            "n_val": int(len(self.y_val)),
            "n_test": int(len(self.y_test)),
            "input_dim": self.input_dim,
            "n_classes": self.n_classes,
            **self.info,
        }


# ----------------------------------------------------------------------------- readers
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # the data file ships inside scikit-learn

    d = load_digits()
    return d.data.astype(np.float64), d.target.astype(np.int64)


def _synthetic(spec: SyntheticDataset) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(spec.seed)
    n, d = spec.n_samples, spec.n_features
    if spec.task == "blobs":
        centers = rng.normal(0.0, 3.0, size=(spec.n_classes, d))
        y = rng.integers(0, spec.n_classes, size=n)
        x = centers[y] + spec.noise * rng.normal(size=(n, d))
    elif spec.task == "xor":
        x = rng.uniform(-1.0, 1.0, size=(n, d))
        y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).astype(np.int64)
        x = x + 0.1 * spec.noise * rng.normal(size=(n, d))
    else:  # spirals: C interleaved arms in the first two coordinates, noise elsewhere
        y = rng.integers(0, spec.n_classes, size=n)
        r = rng.uniform(0.1, 1.0, size=n)
        angle = 3.0 * np.pi * r + 2.0 * np.pi * y / spec.n_classes
        x = 0.1 * spec.noise * rng.normal(size=(n, d))
        x[:, 0] += r * np.cos(angle)
        x[:, 1] += r * np.sin(angle)
    return x.astype(np.float64), y.astype(np.int64)


def _npz(path: Path, x_key: str, y_key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in (x_key, y_key) if k not in z.files]
            if missing:
                raise DataError(
                    f"npz file lacks array(s) {missing}; it holds {sorted(z.files)}. "
                    f"Received: path={str(path)!r}, x_key={x_key!r}, y_key={y_key!r}"
                )
            return np.asarray(z[x_key]), np.asarray(z[y_key])
    except (OSError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"cannot read npz file: {exc}. Received: path={str(path)!r}") from exc


def _csv(
    path: Path, label_column: str | int, header: bool, delimiter: str
) -> tuple[np.ndarray, np.ndarray]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read csv file: {exc}. Received: path={str(path)!r}") from exc
    rows = [r for r in csv.reader(io.StringIO(text), delimiter=delimiter) if r]
    if header:
        if not rows:
            raise DataError(f"csv file is empty. Received: path={str(path)!r}")
        names, rows = [c.strip() for c in rows[0]], rows[1:]
    else:
        names = []
    if not rows:
        raise DataError(f"csv file has no data rows. Received: path={str(path)!r}")
    width = len(rows[0])
    if isinstance(label_column, str) and not label_column.lstrip("-").isdigit():
        if label_column not in names:
            raise DataError(
                f"label column not found; columns are {names}. "
                f"Received: label_column={label_column!r}"
            )
        col = names.index(label_column)
    else:
        col = int(label_column)
        if not -width <= col < width:
            raise DataError(
                f"label column index out of range for {width} columns. "
                f"Received: label_column={label_column!r}"
            )
        col %= width
    labels, feats = [], []
    for i, r in enumerate(rows):
        if len(r) != width:
            raise DataError(
                f"csv row {i + 1 + header} has {len(r)} fields, expected {width}. "
                f"Received: path={str(path)!r}"
            )
        labels.append(r[col].strip())
        try:
            feats.append([float(v) for j, v in enumerate(r) if j != col])
        except ValueError as exc:
            raise DataError(
                f"non-numeric feature in csv row {i + 1 + header}: {exc}. "
                f"Received: path={str(path)!r}"
            ) from exc
    return np.asarray(feats, dtype=np.float64), np.asarray(labels)


_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one MNIST-format IDX file (raw or gzip-compressed).

    Args:
        path: the file.

    Returns:
        The array with the shape stored in the header.

    Raises:
        DataError: the file is missing, its magic number is wrong or it is truncated.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read IDX file: {exc}. Received: path={str(path)!r}") from exc
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"not an IDX file (bad magic {raw[:4]!r}). Received: path={str(path)!r}")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    offset = 4 + 4 * ndim
    need = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - offset < need:
        raise DataError(
            f"IDX file truncated: {len(raw) - offset} data bytes, header says {need}. "
            f"Received: path={str(path)!r}"
        )
    return np.frombuffer(raw, dtype=dtype, count=int(np.prod(dims)), offset=offset).reshape(dims)


def _resolve(path: str, dataset_dir: Path | None) -> Path:
    p = Path(path).expanduser()
    if not p.is_absolute() and not p.exists() and dataset_dir is not None:
        p = Path(dataset_dir) / p
    if not p.is_file():
        raise DataError(f"dataset file not found. Received: path={path!r}")
    return p


def _uploaded(spec: UploadedDataset, dataset_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
    if dataset_dir is None:
        raise DataError(
            f"an uploaded dataset needs a dataset_dir to resolve its id. Received: id={spec.id!r}"
        )
    base = Path(dataset_dir)
    for cand in (base / f"{spec.id}.npz", base / f"{spec.id}.csv", base / spec.id):
        if cand.is_file():
            with cand.open("rb") as fh:
                magic = fh.read(2)
            if cand.suffix == ".npz" or magic == b"PK":
                return _npz(cand, "x", "y")
            return _csv(cand, spec.label_column, True, ",")
    raise DataError(
        f"no uploaded dataset with this id under {str(base)!r} (looked for <id>.npz, <id>.csv, "
        f"<id>). Received: id={spec.id!r}"
    )


def read_arrays(spec: Any, dataset_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load the raw (unsplit) features and labels a dataset spec describes.

    Args:
        spec: one of the dataset models of :mod:`revhpo.service.spec`.
        dataset_dir: where relative paths and uploaded ids are resolved.

    Returns:
        ``(x, y)``: features flattened to ``[n, d]`` float64, labels as given.

    Raises:
        DataError: the data cannot be found or read.
    """
    ddir = Path(dataset_dir) if dataset_dir is not None else None
    if isinstance(spec, DigitsDataset):
        return _digits()
    if isinstance(spec, SyntheticDataset):
        return _synthetic(spec)
    if isinstance(spec, NpzDataset):
        return _npz(_resolve(spec.path, ddir), spec.x_key, spec.y_key)
    if isinstance(spec, CsvDataset):
        return _csv(_resolve(spec.path, ddir), spec.label_column, spec.header, spec.delimiter)
    if isinstance(spec, IdxDataset):
        x = read_idx(_resolve(spec.images, ddir)).astype(np.float64) * spec.scale
        y = read_idx(_resolve(spec.labels, ddir))
        return x, y
    if isinstance(spec, UploadedDataset):
        return _uploaded(spec, ddir)
    raise DataError(f"unknown dataset spec. Received: {spec!r}")


def split_counts(split: SplitSpec, n: int) -> tuple[int, int, int]:
    """Turn a split spec (counts or fractions) into example counts for a dataset of ``n``.

    Raises:
        DataError: a part is empty or the parts need more than ``n`` examples.
    """
    counts = []
    for name in ("train", "val", "test"):
        v = getattr(split, name)
        c = int(round(v * n)) if v < 1 else int(v)
        if c < 1:
            raise DataError(f"split.{name} gives no examples for n={n}. Received: {name}={v!r}")
        counts.append(c)
    if sum(counts) > n:
        raise DataError(
            f"split needs {sum(counts)} examples but the dataset has {n}. "
            f"Received: train={split.train!r}, val={split.val!r}, test={split.test!r}"
        )
    return counts[0], counts[1], counts[2]


def load_dataset(spec: Any, dataset_dir: str | Path | None = None) -> Dataset:
    """Load, split (deterministically from ``spec.split.seed``) and standardise a dataset.

    Args:
        spec: one of the dataset models of :mod:`revhpo.service.spec`.
        dataset_dir: where relative paths and uploaded ids are resolved.

    Returns:
        The :class:`Dataset`.

    Raises:
        DataError: the data cannot be read, is malformed, or cannot be split as asked.
    """
    x, y = read_arrays(spec, dataset_dir)
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim < 2:
        x = x.reshape(len(x), -1) if x.ndim == 1 else x
    x = x.reshape(x.shape[0], -1).astype(np.float64)
    y = y.reshape(-1)
    if len(x) != len(y):
        raise DataError(f"features and labels differ in length. Received: {len(x)} vs {len(y)}")
    if not np.all(np.isfinite(x)):
        raise DataError(f"features contain NaN or Inf. Received: {int((~np.isfinite(x)).sum())}")
    classes, y_idx = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise DataError(f"need at least two classes. Received: classes={classes.tolist()!r}")
    n_train, n_val, n_test = split_counts(spec.split, len(x))
    perm = np.random.default_rng(spec.split.seed).permutation(len(x))
    tr = perm[:n_train]
    va = perm[n_train : n_train + n_val]
    te = perm[n_train + n_val : n_train + n_val + n_test]
    info: dict[str, Any] = {"kind": spec.kind, "split_seed": spec.split.seed}
    if spec.standardize:
        mean = x[tr].mean(axis=0)
        std = x[tr].std(axis=0)
        std = np.where(std > 1e-8, std, 1.0)  # constant features (digits' borders) stay 0
        x = (x - mean) / std
        info["standardized"] = True
    y_idx = y_idx.astype(np.int32)
    return Dataset(
        x_train=x[tr],
        y_train=y_idx[tr],
        x_val=x[va],
        y_val=y_idx[va],
        x_test=x[te],
        y_test=y_idx[te],
        n_classes=int(len(classes)),
        name=spec.kind if spec.kind != "digits" else "digits",
        info={**info, "classes": [c.item() if hasattr(c, "item") else c for c in classes]},
    )
