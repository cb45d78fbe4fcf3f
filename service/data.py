"""Datasets for tuning jobs: bundled digits, synthetic tasks, .npz, .csv, IDX, uploads.

Every loader returns features ``x`` (float64, ``[n, d]``) and integer labels ``y`` (``[n]``,
mapped to ``0..C-1``); :func:`load_dataset` then splits them deterministically from a seed
and standardises with the training statistics.
"""

from __future__ import annotations

import csv
import gzip
import math
import zipfile
import zlib
from collections.abc import Callable, Iterator
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

__all__ = [
    "DataError",
    "DataLimits",
    "Dataset",
    "DatasetStats",
    "DatasetTooLarge",
    "inspect_upload",
    "load_dataset",
    "read_arrays",
    "read_idx",
    "split_counts",
]


class DataError(ValueError):
    """A dataset that cannot be found, read or split; the message echoes what was received."""


class DatasetTooLarge(DataError):
    """A dataset over a size limit once decompressed or parsed (the API answers 413)."""


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


CSV_MAX_ROW_CHARS = 1 << 20
"""Longest line of an uploaded .csv (1 Mi characters): wider data belongs in an .npz."""


def _bounded_lines(fh: Any, max_chars: int) -> Iterator[str]:
    """The lines of `fh`, refusing one longer than `max_chars` without reading all of it."""
    while line := fh.readline(max_chars + 1):
        if len(line) > max_chars and not line.endswith("\n"):
            raise DatasetTooLarge(
                f"csv line longer than {max_chars} characters (use .npz for wide data). "
                f"Received: a line of more than {max_chars} characters"
            )
        yield line


def _column_name(j: int, names: list[str]) -> str:
    """`column 3 ('age')`: the 0-based index and, with a header, the name."""
    return f"column {j} ({names[j]!r})" if j < len(names) else f"column {j}"


def _label_index(label_column: str | int, names: list[str], width: int) -> int:
    if isinstance(label_column, str) and not label_column.lstrip("-").isdigit():
        if label_column not in names:
            raise DataError(
                f"label column not found; columns are {names}. "
                f"Received: label_column={label_column!r}"
            )
        return names.index(label_column)
    col = int(label_column)
    if not -width <= col < width:
        raise DataError(
            f"label column index out of range for {width} columns. "
            f"Received: label_column={label_column!r}"
        )
    return col % width


CSV_BLOCK_VALUES = 1 << 16
"""Feature values parsed per block (one `np.array` call) while reading a .csv."""


@dataclass(frozen=True)
class _CsvBlock:
    """Consecutive data rows of a .csv: their line numbers, labels and features `[k, d]`."""

    lines: list[int]
    labels: list[str]
    x: np.ndarray
    names: list[str]
    col: int

    def where(self, i: int, j: int) -> str:
        """`csv row 12, column 3 ('age')`: row `i` of the block, feature `j`."""
        k = j if j < self.col else j + 1
        return f"csv row {self.lines[i]}, {_column_name(k, self.names)}"


def _parse_block(fields: list[str], rows: list[int], names: list[str], col: int) -> np.ndarray:
    """The features of consecutive rows (`fields`, row-major) as float64 `[rows, d]`."""
    d = len(fields) // len(rows)
    try:
        x = np.array(fields, dtype=np.float64)
    except ValueError:
        for i, v in enumerate(fields):
            try:
                float(v)
            except ValueError:
                where = _CsvBlock(rows, [], np.empty((0, d)), names, col).where(*divmod(i, d))
                raise DataError(
                    f"non-numeric feature in {where}: features must be real numbers. "
                    f"Received: {v[:100]!r}"
                ) from None
        x = np.array([float(v) for v in fields], dtype=np.float64)
    return x.reshape(len(rows), d)


def _csv_scan(
    path: Path,
    label_column: str | int,
    header: bool,
    delimiter: str,
    on_block: Callable[[_CsvBlock], None],
    *,
    max_row_chars: int | None = None,
) -> None:
    """Read a .csv a block of rows at a time (about `CSV_BLOCK_VALUES` values): `on_block`.

    Only one block is in memory at a time (and, with `max_row_chars`, one line of at most that
    many characters). Blank lines are skipped; every row must have the first row's width.

    Raises:
        DataError: unreadable or non-UTF-8 text, a malformed row, a non-numeric feature, no
            feature column; DatasetTooLarge: a line over `max_row_chars`.
    """
    try:
        fh = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise DataError(f"cannot read csv file: {exc}. Received: path={str(path)!r}") from exc
    with fh:
        lines = fh if max_row_chars is None else _bounded_lines(fh, max_row_chars)
        reader = csv.reader(lines, delimiter=delimiter)
        names: list[str] | None = None if header else []
        width = col = -1
        rows: list[int] = []
        labels: list[str] = []
        fields: list[str] = []
        try:
            for r in reader:
                if not r:
                    continue
                if names is None:
                    names = [c.strip() for c in r]
                    continue
                if width < 0:
                    width = len(r)
                    col = _label_index(label_column, names, width)
                    if width < 2:
                        raise DataError(
                            f"csv file has no feature columns: each row holds only the label "
                            f"({_column_name(col, names)}). Received: {width} column per row"
                        )
                if len(r) != width:
                    raise DataError(
                        f"csv row {reader.line_num} has {len(r)} fields, expected {width}. "
                        f"Received: {len(r)} fields"
                    )
                rows.append(reader.line_num)
                labels.append(r.pop(col).strip())
                fields.extend(r)
                if len(fields) >= CSV_BLOCK_VALUES:
                    on_block(
                        _CsvBlock(rows, labels, _parse_block(fields, rows, names, col), names, col)
                    )
                    rows, labels, fields = [], [], []
            if rows:
                on_block(
                    _CsvBlock(rows, labels, _parse_block(fields, rows, names, col), names, col)
                )
        except csv.Error as exc:
            raise DataError(f"cannot parse csv line {reader.line_num}: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise DataError(f"csv file is not UTF-8 text: {exc}") from exc
    if names is None or width < 0:
        raise DataError(f"csv file has no data rows. Received: {path.name!r}")


def _csv(
    path: Path, label_column: str | int, header: bool, delimiter: str
) -> tuple[np.ndarray, np.ndarray]:
    feats: list[np.ndarray] = []
    labels: list[str] = []

    def keep(block: _CsvBlock) -> None:
        feats.append(block.x)
        labels.extend(block.labels)

    _csv_scan(path, label_column, header, delimiter, keep)
    return np.concatenate(feats), np.asarray(labels)


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


# ----------------------------------------------------------------------------- upload checks
NPZ_MAX_MEMBERS = 64
"""Most members of an uploaded .npz (it needs two: x and y)."""
NPZ_MAX_DIRECTORY_BYTES = 64 << 10
"""Largest zip central directory of an uploaded .npz (read whole by `zipfile`)."""
LABEL_MAX_CHARS = 256
"""Longest string label of an uploaded .npz."""
_CHUNK_BYTES = 4 << 20
_FEATURE_KINDS = {"b": "bool", "i": "integer", "u": "unsigned integer", "f": "float"}
_LABEL_KINDS = {**_FEATURE_KINDS, "U": "string", "S": "bytes"}


@dataclass(frozen=True)
class DataLimits:
    """The bounds an uploaded dataset is checked against before anything is loaded whole.

    Attributes:
        max_values: features plus labels once decompressed or parsed (a job holds them as
            float64, 8 bytes each); `REVHPO_MAX_DATASET_VALUES`.
        max_classes: distinct labels; `REVHPO_MAX_DATASET_CLASSES`.
        max_row_chars: longest .csv line.
    """

    max_values: int = 1 << 25
    max_classes: int = 10_000
    max_row_chars: int = CSV_MAX_ROW_CHARS


@dataclass(frozen=True)
class DatasetStats:
    """What an upload holds: rows, features per row, distinct labels."""

    n_rows: int
    n_features: int
    n_classes: int


def _values_error(what: str, values: int, limits: DataLimits) -> DatasetTooLarge:
    return DatasetTooLarge(
        f"{what}: {values} values (features + labels) once decompressed or parsed; an "
        f"upload may hold at most {limits.max_values} "
        f"(REVHPO_MAX_DATASET_VALUES). Received: {values} values"
    )


def _classes_error(where: str, limits: DataLimits) -> DataError:
    return DataError(
        f"{where}: more than {limits.max_classes} distinct labels; a dataset may have at "
        f"most {limits.max_classes} classes (REVHPO_MAX_DATASET_CLASSES). Is it a class label? "
        f"Received: over {limits.max_classes} distinct values"
    )


def _too_few_classes(where: str, classes: np.ndarray | list) -> DataError:
    shown = [c.item() if hasattr(c, "item") else c for c in list(classes)[:5]]
    return DataError(
        f"{where}: {len(classes)} class{'' if len(classes) == 1 else 'es'}; a "
        f"classification dataset needs at least two. "
        f"Received: classes={shown!r}"
    )


def _check_zip_directory(path: Path) -> None:
    """Refuse a zip whose central directory (which `zipfile` reads whole) is oversized.

    Uses `zipfile`'s own end-of-directory reader, so the figures checked are the ones
    `zipfile.ZipFile` then trusts (including a ZIP64 record).
    """
    with path.open("rb") as fh:
        end = zipfile._EndRecData(fh)  # noqa: SLF001 (zipfile's own reading of the record)
    if end is None:
        raise DataError("not an .npz (zip) file: no end-of-central-directory record")
    members, size = end[zipfile._ECD_ENTRIES_TOTAL], end[zipfile._ECD_SIZE]  # noqa: SLF001
    if members > NPZ_MAX_MEMBERS or size > NPZ_MAX_DIRECTORY_BYTES:
        raise DataError(
            f"an .npz dataset holds the arrays x and y: at most {NPZ_MAX_MEMBERS} members and "
            f"a {NPZ_MAX_DIRECTORY_BYTES}-byte directory. Received: {members} members, a "
            f"{size}-byte directory"
        )


@dataclass(frozen=True)
class _Npy:
    """One .npy member of an .npz, its header read and its data not yet."""

    key: str
    name: str
    shape: tuple[int, ...]
    fortran: bool
    dtype: np.dtype

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def index(self, flat: int) -> str:
        """`x[3, 1]`: the element at position `flat` of the stored order."""
        pos = np.unravel_index(flat, self.shape, order="F" if self.fortran else "C")
        return f"{self.key}[{', '.join(str(int(i)) for i in pos)}]"


def _npy_open(zf: zipfile.ZipFile, key: str) -> tuple[Any, _Npy]:
    """Open member `key` (as `np.load` finds it: `key` or `key.npy`) and read its header."""
    from numpy.lib import format as npy

    names = zf.namelist()
    name = key if key in names else f"{key}.npy"
    if name not in names:
        held = sorted(n[:-4] if n.endswith(".npy") else n for n in names)
        raise DataError(f"npz file lacks array {key!r}; it holds {held}. Received: {held}")
    fh = zf.open(name)
    try:
        try:
            version = npy.read_magic(fh)
        except ValueError as exc:
            raise DataError(f"array {key!r} is not in .npy format: {exc}") from exc
        if version == (1, 0):
            shape, fortran, dtype = npy.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = npy.read_array_header_2_0(fh)
        else:
            raise DataError(f"array {key!r}: unsupported .npy version. Received: {version}")
    except BaseException:
        fh.close()
        raise
    if any(n < 0 for n in shape):
        fh.close()
        raise DataError(f"array {key!r} has a negative dimension. Received: shape={shape}")
    return fh, _Npy(key, name, tuple(int(n) for n in shape), bool(fortran), np.dtype(dtype))


def _npy_chunks(fh: Any, a: _Npy) -> Iterator[tuple[int, np.ndarray]]:
    """(offset, values) of `a`'s data, a few MiB at a time; refuses truncated data."""
    per = max(1, _CHUNK_BYTES // max(a.dtype.itemsize, 1))
    for start in range(0, a.size, per):
        count = min(per, a.size - start)
        want = count * a.dtype.itemsize
        buf = fh.read(want)
        if len(buf) != want:
            raise DataError(
                f"array {a.key!r} is truncated: its header says shape {a.shape} "
                f"({a.dtype.str}). Received: {start * a.dtype.itemsize + len(buf)} of "
                f"{a.size * a.dtype.itemsize} data bytes"
            )
        yield start, np.frombuffer(buf, dtype=a.dtype)
    fh.read(1)  # reach the member's end: a corrupt one fails its CRC check here


def _first_nonfinite(a: _Npy, start: int, chunk: np.ndarray) -> None:
    if a.dtype.kind == "f":
        bad = ~np.isfinite(chunk)
        if bad.any():
            i = int(bad.argmax())
            raise DataError(
                f"{a.index(start + i)} is {chunk[i].item()!r}: "
                f"{'features' if a.key == 'x' else 'labels'} must be finite numbers "
                f"(no NaN or Inf). Received: {a.index(start + i)}={chunk[i].item()!r}"
            )


def _inspect_npz(path: Path, limits: DataLimits) -> DatasetStats:
    _check_zip_directory(path)
    with zipfile.ZipFile(path) as zf:
        fx, x = _npy_open(zf, "x")
        fy, y = _npy_open(zf, "y")
        with fx, fy:
            for a, kinds, what in ((x, _FEATURE_KINDS, "features"), (y, _LABEL_KINDS, "labels")):
                if a.dtype.kind not in kinds or a.dtype.fields is not None:
                    raise DataError(
                        f"array {a.key!r} has dtype {a.dtype}: {what} must be "
                        f"{', '.join(sorted(set(kinds.values())))}. "
                        f"Received: {a.key}.dtype={a.dtype.str!r}"
                    )
            if y.dtype.kind in "US" and y.dtype.itemsize > LABEL_MAX_CHARS * 4:
                raise DataError(
                    f"array 'y' holds labels of up to {LABEL_MAX_CHARS} characters. "
                    f"Received: y.dtype={y.dtype.str!r}"
                )
            values = x.size + y.size
            if values > limits.max_values:
                raise _values_error(f"arrays x {x.shape} and y {y.shape}", values, limits)
            if len(x.shape) == 0 or x.shape[0] == 0:
                raise DataError(f"array 'x' holds no rows. Received: x.shape={x.shape}")
            n = x.shape[0]
            d = math.prod(x.shape[1:]) if len(x.shape) > 1 else 1
            if d == 0:
                raise DataError(f"array 'x' has no feature columns. Received: x.shape={x.shape}")
            if y.size != n:
                raise DataError(
                    f"array 'y' must hold one label per row of x ({n}). "
                    f"Received: x.shape={x.shape}, y.shape={y.shape}"
                )
            for start, chunk in _npy_chunks(fx, x):
                _first_nonfinite(x, start, chunk)
            classes = np.empty(0, dtype=y.dtype)
            for start, chunk in _npy_chunks(fy, y):
                _first_nonfinite(y, start, chunk)
                classes = np.union1d(classes, chunk)
                if len(classes) > limits.max_classes:
                    raise _classes_error("array 'y' (the labels)", limits)
    if len(classes) < 2:
        raise _too_few_classes("array 'y' (the labels)", classes)
    return DatasetStats(n, d, len(classes))


def _inspect_csv(path: Path, label_column: str | int, limits: DataLimits) -> DatasetStats:
    rows = values = width = 0
    classes: set[str] = set()
    label_name = "the label column"

    def check(block: _CsvBlock) -> None:
        nonlocal rows, values, width, label_name
        k, d = block.x.shape
        width = d + 1
        label_name = f"the label {_column_name(block.col, block.names)}"
        values += k * width
        if values > limits.max_values:
            raise _values_error(
                f"the csv rows up to line {block.lines[-1]} ({width} columns)", values, limits
            )
        bad = ~np.isfinite(block.x)
        if bad.any():
            i, j = divmod(int(bad.argmax()), d)
            v = block.x[i, j].item()
            raise DataError(
                f"{block.where(i, j)} is {v!r}: features must be finite numbers "
                f"(no NaN or Inf). Received: {v!r}"
            )
        rows += k
        classes.update(block.labels)
        if len(classes) > limits.max_classes:
            raise _classes_error(label_name, limits)

    _csv_scan(path, label_column, True, ",", check, max_row_chars=limits.max_row_chars)
    if len(classes) < 2:
        raise _too_few_classes(label_name, sorted(classes))
    return DatasetStats(rows, width - 1, len(classes))


def _upload_format(path: Path) -> str:
    """How a job reads an uploaded file: as .npz if so named or zip-signed, else as .csv."""
    with path.open("rb") as fh:
        magic = fh.read(2)
    return "npz" if path.suffix == ".npz" or magic == b"PK" else "csv"


def inspect_upload(
    path: str | Path, limits: DataLimits | None = None, label_column: str | int = -1
) -> DatasetStats:
    """Check an uploaded file the way a job will read it, without loading it whole.

    An .npz is checked from its zip directory and the .npy headers of `x` and `y` (shape,
    dtype, hence the decompressed size) before any data is decompressed, then its data is
    streamed a few MiB at a time; a .csv is parsed one row at a time and refused as soon as
    it passes a limit. At most a few MiB of the data are in memory at once.

    Args:
        path: the stored upload.
        limits: the bounds (default `DataLimits()`).
        label_column: the label column of a .csv (jobs may name another one later).

    Returns:
        Rows, features per row and classes.

    Raises:
        DatasetTooLarge: more values (decompressed or parsed) than `limits.max_values`, or a
            .csv line longer than `limits.max_row_chars`.
        DataError: anything a job could not train on: an unreadable file, missing arrays, no
            rows, no feature column, features that are not real numbers (complex, strings),
            NaN or Inf, labels not one per row, a single class or too many classes. The
            message names the array (`x[3, 1]`) or the csv row and column.
    """
    path = Path(path)
    limits = limits or DataLimits()
    if _upload_format(path) == "csv":
        return _inspect_csv(path, label_column, limits)
    try:
        return _inspect_npz(path, limits)
    except DataError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, RuntimeError) as exc:
        # RuntimeError: an encrypted member; NotImplementedError: an unknown compression
        raise DataError(f"cannot read npz file: {exc}") from exc


def _uploaded(spec: UploadedDataset, dataset_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
    if dataset_dir is None:
        raise DataError(
            f"an uploaded dataset needs a dataset_dir to resolve its id. Received: id={spec.id!r}"
        )
    base = Path(dataset_dir)
    for cand in (base / f"{spec.id}.npz", base / f"{spec.id}.csv", base / spec.id):
        if cand.is_file():
            if _upload_format(cand) == "npz":
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
