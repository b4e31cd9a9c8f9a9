"""Sources for a user's own data, named by `path` in the dataset entry of params.yaml.

table: a CSV or Parquet file, one example per row; `label` names the column of integer
    class labels, `id_column` an optional column of example ids (kept, not a feature); the
    other columns are features: numeric ones as they are (the task standardises every
    feature with the training split's mean and spread), text ones one-hot.
arrays: an .npz file with `x` and `y` (and optionally `test_x`, `test_y`, the test split);
    uint8 arrays are images ([N, H, W] or [N, C, H, W]), others feature vectors.
image_folder: torchvision's ImageFolder layout (a folder per class), each image converted to
    RGB and resized to `image_size` x `image_size`.

Trusted rows: the rows you checked by hand, given as a second file of the same columns
(table: `val_path`), a column of 0/1 or true/false (table: `trusted_column`, not a feature) or
a second folder of class folders (image_folder: `val_path`). A noise setting with
`val_trusted: true` makes exactly these rows the clean validation split: never corrupted,
never in the training or test split.

Without a test split of their own (`test_x`), set `test_size`. Nothing is known of these
files before the prepare stage reads them, so it checks them: a missing file, a missing or
non-integer label column, a missing value, a class with no example.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.config import DatasetSpec
from pipeline.data import RawDataset


def _existing(spec: DatasetSpec, what: str) -> Path:
    if spec.path is None:
        raise FileNotFoundError(f"source {spec.source}: set `path` to the {what}")
    path = Path(spec.path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such {what} (the dataset's `path`)")
    return path


def _classes(labels: np.ndarray, where: str) -> tuple[np.ndarray, list[str]]:
    """Labels as 0..k-1 in the order of the sorted label values, and those values' names."""
    if labels.dtype.kind not in "iu":
        if labels.dtype.kind == "f" and np.all(np.mod(labels, 1) == 0):
            labels = labels.astype(np.int64)
        else:
            raise ValueError(f"{where}: labels must be integers, got {labels.dtype} values")
    values, index = np.unique(labels, return_inverse=True)
    return index.astype(np.int64), [str(v) for v in values]


def _read_table(path: Path):
    import pandas as pd

    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def _trusted_rows(spec: DatasetSpec, path: Path, frame):
    """The table with the trusted rows of `val_path` appended, and which rows are trusted
    (None: none marked)."""
    import pandas as pd

    if spec.val_path is not None:
        val_path = Path(spec.val_path)
        if not val_path.exists():
            raise FileNotFoundError(f"{val_path}: no such file (the dataset's `val_path`)")
        trusted = _read_table(val_path)
        if list(trusted.columns) != list(frame.columns):
            raise ValueError(
                f"{val_path}: its columns {list(trusted.columns)} differ from {path}'s "
                f"{list(frame.columns)}"
            )
        marks = np.r_[np.zeros(len(frame), bool), np.ones(len(trusted), bool)]
        return pd.concat([frame, trusted], ignore_index=True), marks
    if spec.trusted_column is not None:
        if spec.trusted_column not in frame.columns:
            raise ValueError(f"{path}: no trusted column {spec.trusted_column!r}")
        column = frame[spec.trusted_column]
        as_text = column.astype(str).str.strip().str.lower()
        known = {"1": True, "true": True, "0": False, "false": False, "1.0": True, "0.0": False}
        unknown = sorted(set(as_text) - set(known))
        if unknown:
            raise ValueError(
                f"{path}: column {spec.trusted_column!r} must hold 0/1 or true/false, got "
                f"{unknown[:5]}"
            )
        return frame.drop(columns=[spec.trusted_column]), np.array(as_text.map(known), bool)
    return frame, None


def table(spec: DatasetSpec) -> RawDataset:
    import pandas as pd

    path = _existing(spec, "CSV or Parquet file")
    frame, trusted = _trusted_rows(spec, path, _read_table(path))
    if spec.label not in frame.columns:
        raise ValueError(f"{path}: no label column {spec.label!r} (columns: {list(frame.columns)})")
    if spec.id_column is not None and spec.id_column not in frame.columns:
        raise ValueError(f"{path}: no id column {spec.id_column!r}")
    missing = frame.columns[frame.isna().any()].tolist()
    if missing:
        raise ValueError(f"{path}: missing values in column(s) {missing}")
    labels = frame[spec.label]
    if not pd.api.types.is_numeric_dtype(labels):
        raise ValueError(f"{path}: label column {spec.label!r} must hold integers")
    y, names = _classes(labels.to_numpy(), f"{path}: column {spec.label!r}")
    features = frame.drop(columns=[c for c in (spec.label, spec.id_column) if c is not None])
    text = [c for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    features = pd.get_dummies(features, columns=text, dtype=np.float32)  # sorted categories
    if features.shape[1] == 0:
        raise ValueError(f"{path}: no feature column besides the label")
    x = torch.from_numpy(features.to_numpy(np.float32, copy=True))
    ids = None if spec.id_column is None else frame[spec.id_column].astype(str).tolist()
    no_test = torch.zeros(len(y), dtype=torch.bool)
    is_trusted = None if trusted is None else torch.from_numpy(trusted)
    return RawDataset(path.stem, x, torch.from_numpy(y), no_test, names, ids, None, is_trusted)


def arrays(spec: DatasetSpec) -> RawDataset:
    path = _existing(spec, ".npz file")
    with np.load(path) as f:
        parts = {k: f[k] for k in f.files}
    for key in ("x", "y"):
        if key not in parts:
            raise ValueError(f"{path}: no array {key!r} (it has {sorted(parts)})")
    if ("test_x" in parts) != ("test_y" in parts):
        raise ValueError(f"{path}: give both test_x and test_y, or neither")
    xs = [parts["x"], *([parts["test_x"]] if "test_x" in parts else [])]
    ys = [parts["y"], *([parts["test_y"]] if "test_y" in parts else [])]
    for x, y, key in zip(xs, ys, ("x", "test_x"), strict=False):
        if len(x) != len(y):
            raise ValueError(f"{path}: {key} has {len(x)} rows and its labels {len(y)}")
    x = np.concatenate(xs)
    y, names = _classes(np.concatenate(ys), f"{path}: y")
    if x.dtype == np.uint8 and x.ndim == 3:  # grey images [N, H, W]
        x = x[:, None]
    x = torch.from_numpy(x if x.dtype == np.uint8 else x.astype(np.float32))
    is_test = torch.arange(len(y)) >= len(ys[0])
    return RawDataset(path.stem, x, torch.from_numpy(y), is_test, names)


def image_folder(spec: DatasetSpec) -> RawDataset:
    path = _existing(spec, "folder of class folders")
    folder = _image_folder(path)
    samples = list(folder.samples)
    trusted = None
    if spec.val_path is not None:  # the hand-checked images, in class folders of their own
        val_path = Path(spec.val_path)
        if not val_path.exists():
            raise FileNotFoundError(f"{val_path}: no such folder (the dataset's `val_path`)")
        val = _image_folder(val_path)
        if val.classes != folder.classes:
            raise ValueError(
                f"{val_path}: its class folders {val.classes} differ from {path}'s {folder.classes}"
            )
        trusted = torch.tensor([False] * len(samples) + [True] * len(val.samples))
        samples += val.samples
    size = (spec.image_size, spec.image_size)
    images = [np.asarray(folder.loader(p).convert("RGB").resize(size)) for p, _ in samples]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor([label for _, label in samples], dtype=torch.int64)
    no_test = torch.zeros(len(y), dtype=torch.bool)
    return RawDataset(path.name, x, y, no_test, folder.classes, None, None, trusted)


def _image_folder(path: Path):
    from torchvision.datasets import ImageFolder

    try:
        return ImageFolder(str(path))
    except FileNotFoundError as e:  # no class folder, or a class without images
        raise ValueError(f"{path}: {e}") from None


USER_SOURCES = {"table": table, "arrays": arrays, "image_folder": image_folder}
