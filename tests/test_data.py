"""Datasets: bundled digits, synthetic, .npz, .csv, IDX, uploads; splits and standardisation."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from revhpo.service.data import DataError, load_dataset, read_idx
from revhpo.service.spec import load_spec


def ds(doc):
    return load_spec({"dataset": doc}).dataset


def test_digits_split_sizes_determinism_and_standardisation():
    d = load_dataset(ds({"kind": "digits"}))
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (1000, 397, 400)
    assert d.input_dim == 64 and d.n_classes == 10
    np.testing.assert_allclose(d.x_train.mean(0), 0.0, atol=1e-12)
    stds = d.x_train.std(0)
    assert np.all((np.abs(stds - 1) < 1e-9) | (stds == 0))  # constant border pixels stay 0
    again = load_dataset(ds({"kind": "digits"}))
    np.testing.assert_array_equal(d.x_val, again.x_val)
    other = load_dataset(ds({"kind": "digits", "split": {"seed": 1}}))
    assert not np.array_equal(d.y_train, other.y_train)


def test_split_is_a_partition_of_the_data():
    from sklearn.datasets import load_digits

    d = load_dataset(ds({"kind": "digits", "standardize": False}))
    parts = np.concatenate([d.x_train, d.x_val, d.x_test])  # 1000 + 397 + 400 = all 1797
    full = load_digits().data

    def rows(a):
        return a[np.lexsort(a.T[::-1])]

    np.testing.assert_array_equal(rows(parts), rows(full))


def test_fraction_split_and_too_large_split():
    d = load_dataset(ds({"kind": "synthetic", "n_samples": 100}))
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (60, 20, 20)
    with pytest.raises(DataError, match="1797"):
        load_dataset(ds({"kind": "digits", "split": {"train": 1500, "val": 300, "test": 10}}))


@pytest.mark.parametrize("task", ["blobs", "xor", "spirals"])
def test_synthetic_tasks(task):
    d = load_dataset(ds({"kind": "synthetic", "task": task, "n_samples": 200, "n_features": 5}))
    assert d.input_dim == 5
    assert d.n_classes == (2 if task == "xor" else 4)


def test_npz(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 2, 3)), rng.integers(0, 3, 50) * 10  # labels 0, 10, 20
    np.savez(tmp_path / "d.npz", feats=x, labels=y)
    spec = ds(
        {
            "kind": "npz",
            "path": str(tmp_path / "d.npz"),
            "x_key": "feats",
            "y_key": "labels",
            "split": {"train": 30, "val": 10, "test": 10},
            "standardize": False,
        }
    )
    d = load_dataset(spec)
    assert d.input_dim == 6 and d.n_classes == 3
    assert set(np.unique(d.y_train)) <= {0, 1, 2}
    assert d.info["classes"] == [0, 10, 20]
    bad = ds({"kind": "npz", "path": str(tmp_path / "d.npz"), "x_key": "nope"})
    with pytest.raises(DataError, match="nope"):
        load_dataset(bad)


def test_csv_header_by_name_and_index(tmp_path):
    lines = ["a,b,label,c"] + [f"{i},{i * 2},{'cat' if i % 2 else 'dog'},{-i}" for i in range(20)]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    split = {"train": 10, "val": 5, "test": 5}
    d = load_dataset(
        ds({"kind": "csv", "path": "d.csv", "label_column": "label", "split": split}),
        dataset_dir=tmp_path,
    )
    assert d.input_dim == 3 and d.n_classes == 2 and d.info["classes"] == ["cat", "dog"]
    d2 = load_dataset(
        ds({"kind": "csv", "path": str(tmp_path / "d.csv"), "label_column": 2, "split": split})
    )
    np.testing.assert_array_equal(d.x_train, d2.x_train)
    with pytest.raises(DataError, match="'lbl'"):
        load_dataset(
            ds({"kind": "csv", "path": str(tmp_path / "d.csv"), "label_column": "lbl"}),
        )
    (tmp_path / "bad.csv").write_text("x,y\n1,a\nq,b\n")
    with pytest.raises(DataError, match="non-numeric"):
        load_dataset(ds({"kind": "csv", "path": str(tmp_path / "bad.csv"), "label_column": "y"}))


def _write_idx(path, arr, gz=False):
    code = {np.uint8: 0x08}[arr.dtype.type]
    head = bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", s) for s in arr.shape)
    data = head + arr.tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


@pytest.mark.parametrize("gz", [False, True])
def test_idx(tmp_path, gz):
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, size=(40, 4, 4)).astype(np.uint8)
    labels = (np.arange(40) % 4).astype(np.uint8)
    _write_idx(tmp_path / "img.idx", imgs, gz)
    _write_idx(tmp_path / "lab.idx", labels, gz)
    np.testing.assert_array_equal(read_idx(tmp_path / "img.idx"), imgs)
    d = load_dataset(
        ds(
            {
                "kind": "idx",
                "images": str(tmp_path / "img.idx"),
                "labels": str(tmp_path / "lab.idx"),
                "split": {"train": 20, "val": 10, "test": 10},
                "standardize": False,
            }
        )
    )
    assert d.input_dim == 16 and d.n_classes == 4
    assert d.x_train.max() <= 1.0
    (tmp_path / "junk").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="magic"):
        read_idx(tmp_path / "junk")


def test_uploaded_dataset_by_id(tmp_path):
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "abc123.npz", x=rng.normal(size=(30, 3)), y=np.arange(30) % 2)
    spec = ds({"kind": "uploaded", "id": "abc123", "split": {"train": 20, "val": 5, "test": 5}})
    d = load_dataset(spec, dataset_dir=tmp_path)
    assert d.input_dim == 3
    with pytest.raises(DataError, match="dataset_dir"):
        load_dataset(spec)
    with pytest.raises(DataError, match="'zzz'"):
        load_dataset(ds({"kind": "uploaded", "id": "zzz"}), dataset_dir=tmp_path)


def test_missing_file_echoes_path(tmp_path):
    with pytest.raises(DataError, match="nowhere.npz"):
        load_dataset(ds({"kind": "npz", "path": str(tmp_path / "nowhere.npz")}))
