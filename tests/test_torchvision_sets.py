"""torchvision's own readers parse tiny files written in the real formats; no download happens.

torchvision checks the md5 of every CIFAR file (batches and meta) and of the SVHN .mat files
against the md5s of the official files, which tiny files cannot match. The tests set those
expected md5s (class attributes, undone by monkeypatch after each test) to the md5s of the tiny
files, so torchvision's own integrity check still runs, on the right file names. MNIST files are
only checked for existence (no md5), so MNIST needs nothing.
"""

from __future__ import annotations

import hashlib
import pickle
import struct

import numpy as np
import pytest
import scipy.io
import torch
from torchvision import datasets

from pipeline.data.torchvision_sets import load_torchvision


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def cifar_images(labels: list[int], offset: int) -> np.ndarray:
    """Rows of 3072 bytes (3 planes of 32x32, row-major): image i has pixel (c=1, h=2, w=3) set."""
    data = np.zeros((len(labels), 3072), np.uint8)
    for i in range(len(labels)):
        data[i, 1 * 1024 + 2 * 32 + 3] = offset + i
    return data


def write_cifar(folder, batches: dict, label_key: str, meta_name: str, meta: dict) -> None:
    """The batches are Python 2 pickles that torchvision loads with encoding="latin1", which
    turns their str keys into Python 3 str; a Python 3 pickle with str keys loads identically."""
    folder.mkdir(parents=True)
    offset = 1
    for name, labels in batches.items():
        entry = {"data": cifar_images(labels, offset), label_key: labels, "batch_label": name}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
        offset += len(labels)
    (folder / meta_name).write_bytes(pickle.dumps(meta, protocol=2))


def accept_cifar_md5s(monkeypatch, cls, folder, train: list[str], test: list[str], meta) -> None:
    monkeypatch.setattr(cls, "train_list", [[n, md5(folder / n)] for n in train])
    monkeypatch.setattr(cls, "test_list", [[n, md5(folder / n)] for n in test])
    monkeypatch.setattr(cls, "meta", {**meta, "md5": md5(folder / meta["filename"])})


def check_cifar_pixels(data, n: int) -> None:
    assert data.x.shape == (n, 3, 32, 32) and data.x.dtype == torch.uint8
    assert data.x[:, 1, 2, 3].tolist() == list(range(1, n + 1))  # HWC -> CHW put it back
    assert int(data.x.sum()) == sum(range(1, n + 1))  # and nothing else is set


def test_cifar10(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    train = {f"data_batch_{b}": [b, b + 1] for b in range(1, 6)}
    names = [f"class{c}" for c in range(10)]
    batches = {**train, "test_batch": [9, 0, 4]}
    write_cifar(folder, batches, "labels", "batches.meta", {"label_names": names})
    meta = {"filename": "batches.meta", "key": "label_names"}
    accept_cifar_md5s(monkeypatch, datasets.CIFAR10, folder, list(train), ["test_batch"], meta)

    data = load_torchvision("cifar10", tmp_path)
    check_cifar_pixels(data, 13)
    assert data.y.tolist() == [1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 9, 0, 4]
    assert data.y.dtype == torch.int64
    assert data.is_test.tolist() == [False] * 10 + [True] * 3
    assert data.classes == names and data.name == "cifar10"


def test_cifar100_fine_labels(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-100-python"
    names = [f"fine{c}" for c in range(100)]
    batches = {"train": [99, 0, 42, 7], "test": [5, 98]}
    meta = {"fine_label_names": names, "coarse_label_names": [f"coarse{c}" for c in range(20)]}
    write_cifar(folder, batches, "fine_labels", "meta", meta)
    meta = {"filename": "meta", "key": "fine_label_names"}
    accept_cifar_md5s(monkeypatch, datasets.CIFAR100, folder, ["train"], ["test"], meta)

    data = load_torchvision("cifar100", tmp_path)
    check_cifar_pixels(data, 6)
    assert data.y.tolist() == [99, 0, 42, 7, 5, 98]
    assert data.is_test.tolist() == [False] * 4 + [True] * 2
    assert data.num_classes == 100 and data.classes[42] == "fine42"


def write_idx(path, array: np.ndarray, magic: int) -> None:
    """IDX: big-endian magic (2051 images, 2049 labels), big-endian dims, then uint8 data."""
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_uncompressed_idx(tmp_path):
    raw = tmp_path / "MNIST" / "raw"  # torchvision 0.29 reads the unzipped files here
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (5, 28, 28)), "t10k": rng.integers(0, 256, (2, 28, 28))}
    labels = {"train": np.array([3, 1, 4, 1, 5]), "t10k": np.array([9, 2])}
    for split in ("train", "t10k"):
        write_idx(raw / f"{split}-images-idx3-ubyte", images[split], 2051)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels[split], 2049)

    data = load_torchvision("mnist", tmp_path)
    assert data.x.shape == (7, 1, 28, 28) and data.x.dtype == torch.uint8
    assert np.array_equal(data.x[:, 0].numpy(), np.concatenate([images["train"], images["t10k"]]))
    assert data.y.tolist() == [3, 1, 4, 1, 5, 9, 2] and data.y.dtype == torch.int64
    assert data.is_test.tolist() == [False] * 5 + [True] * 2
    assert data.classes == [str(d) for d in range(10)]


def test_svhn_mat_label_10_is_digit_0(tmp_path, monkeypatch):
    splits = {"train": [10, 1, 5], "test": [2, 10]}
    for split, labels in splits.items():
        x = np.zeros((32, 32, 3, len(labels)), np.uint8)  # MATLAB layout [H, W, C, N]
        x[4, 6, 2, :] = np.arange(1, len(labels) + 1) + (10 if split == "test" else 0)
        y = np.array(labels, np.uint8).reshape(-1, 1)
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
    split_list = {
        split: [url, name, md5(tmp_path / name) if split in splits else expected]
        for split, (url, name, expected) in datasets.SVHN.split_list.items()
    }
    monkeypatch.setattr(datasets.SVHN, "split_list", split_list)

    data = load_torchvision("svhn", tmp_path)
    assert data.x.shape == (5, 3, 32, 32) and data.x.dtype == torch.uint8
    assert data.x[:, 2, 4, 6].tolist() == [1, 2, 3, 11, 12]
    assert int(data.x.sum()) == 1 + 2 + 3 + 11 + 12
    assert data.y.tolist() == [0, 1, 5, 2, 0] and data.y.dtype == torch.int64
    assert data.is_test.tolist() == [False] * 3 + [True] * 2
    assert data.classes == [str(d) for d in range(10)]


def test_missing_files_say_where_and_how(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_torchvision("cifar10", tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message and "cifar-10-batches-py" in message
    assert "download" in message
    assert isinstance(err.value.__cause__, RuntimeError)  # torchvision's error is chained


def test_corrupt_files_are_reported_too(tmp_path):
    """Files present but not the official ones (md5 mismatch) give the same guidance."""
    (tmp_path / "train_32x32.mat").write_bytes(b"not a mat file")
    (tmp_path / "test_32x32.mat").write_bytes(b"not a mat file")
    with pytest.raises(FileNotFoundError, match="train_32x32.mat"):
        load_torchvision("svhn", tmp_path)


def test_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="cifar10"):
        load_torchvision("imagenet", tmp_path)
