"""A user's own data: a table, arrays and an image folder load from tiny files the tests
write; bad files are refused with a message that names the problem."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import DatasetSpec
from pipeline.data.user_sources import arrays, image_folder, table


def write_table(path, **changes) -> None:
    import pandas as pd

    frame = pd.DataFrame(
        {
            "id": ["a", "b", "c", "d", "e", "f"],
            "size": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            "colour": ["red", "blue", "red", "green", "blue", "red"],
            "label": [3, 7, 3, 7, 7, 3],
        }
    )
    for column, values in changes.items():
        frame[column] = values
    frame.to_csv(path, index=False)


def test_a_table_gives_numeric_and_one_hot_features_and_dense_classes(tmp_path):
    write_table(tmp_path / "data.csv")
    data = table(DatasetSpec("table", path=str(tmp_path / "data.csv"), id_column="id"))
    assert data.classes == ["3", "7"] and data.y.tolist() == [0, 1, 0, 1, 1, 0]
    # size, then colour one-hot in sorted order (blue, green, red); the id is not a feature
    assert data.x.tolist()[1] == [2.0, 1.0, 0.0, 0.0] and data.x.dtype == torch.float32
    assert not data.is_test.any()


@pytest.mark.parametrize(
    "changes, spec, message",
    [
        ({}, {"label": "class"}, "no label column 'class'"),
        ({"label": ["x", "y", "x", "y", "x", "y"]}, {}, "must hold integers"),
        ({"label": [0.5, 1, 0, 1, 1, 0]}, {}, "labels must be integers"),
        ({"size": [1.0, None, 3.0, 4.0, 5.0, 6.0]}, {}, "missing values in column(s) ['size']"),
        ({}, {"id_column": "key"}, "no id column 'key'"),
    ],
)
def test_a_bad_table_is_refused_naming_the_problem(tmp_path, changes, spec, message):
    write_table(tmp_path / "data.csv", **changes)
    with pytest.raises(ValueError) as e:
        table(DatasetSpec("table", path=str(tmp_path / "data.csv"), **spec))
    assert message in str(e.value)


def test_a_missing_file_names_the_path(tmp_path):
    for load, source in ((table, "table"), (arrays, "arrays"), (image_folder, "image_folder")):
        with pytest.raises(FileNotFoundError, match="no such"):
            load(DatasetSpec(source, path=str(tmp_path / "nothing")))
        with pytest.raises(FileNotFoundError, match="set `path`"):
            load(DatasetSpec(source))


def test_arrays_with_a_test_split_and_grey_images(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 4, 4)).astype(np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([1, 2, 1, 2, 1, 2]), test_x=x[:2], test_y=[2, 1])
    data = arrays(DatasetSpec("arrays", path=str(tmp_path / "d.npz")))
    assert data.x.shape == (8, 1, 4, 4) and data.x.dtype == torch.uint8
    assert data.is_test.tolist() == [False] * 6 + [True] * 2
    assert data.classes == ["1", "2"] and data.y.tolist()[-2:] == [1, 0]


@pytest.mark.parametrize(
    "parts, message",
    [
        ({"x": np.zeros((3, 2))}, "no array 'y'"),
        ({"x": np.zeros((3, 2)), "y": [0, 1]}, "x has 3 rows and its labels 2"),
        ({"x": np.zeros((3, 2)), "y": [0, 1, 0], "test_x": np.zeros((1, 2))}, "give both"),
    ],
)
def test_bad_arrays_are_refused_naming_the_problem(tmp_path, parts, message):
    np.savez(tmp_path / "d.npz", **parts)
    with pytest.raises(ValueError, match=message):
        arrays(DatasetSpec("arrays", path=str(tmp_path / "d.npz")))


def test_an_image_folder_is_resized_to_rgb_squares(tmp_path):
    from PIL import Image

    for k, name in enumerate(("cat", "dog")):
        (tmp_path / name).mkdir()
        for i in range(3):
            image = Image.new("L" if k else "RGB", (10 + i, 7), color=40 * (i + 1))
            image.save(tmp_path / name / f"{i}.png")
    data = image_folder(DatasetSpec("image_folder", path=str(tmp_path), image_size=8))
    assert data.x.shape == (6, 3, 8, 8) and data.x.dtype == torch.uint8
    assert data.classes == ["cat", "dog"] and data.y.tolist() == [0, 0, 0, 1, 1, 1]


def test_an_empty_image_folder_is_refused(tmp_path):
    with pytest.raises(ValueError, match="class"):
        image_folder(DatasetSpec("image_folder", path=str(tmp_path)))


def test_l2rw_runs_on_the_users_own_csv_and_names_its_suspects(workdir, tiny_raw):
    """docs/own-data.md's example: a CSV with its label column and ids, its labels as given and
    with uniform noise, ERM and L2RW, through the stages, from params.yaml to the table and
    the suspects (with the user's ids; detection figures only where labels were flipped)."""
    import pandas as pd
    import yaml

    from pipeline.__main__ import main

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)  # three classes, told apart by `size`
    ids = [f"r{i}" for i in range(300)]
    pd.DataFrame({"id": ids, "size": y + rng.normal(0, 0.3, 300), "label": y}).to_csv(
        "mine.csv", index=False
    )
    mine = {"source": "table", "path": "mine.csv", "id_column": "id", "test_size": 60}
    tiny_raw["datasets"]["mine"] = mine
    tiny_raw["noise"]["as_given"] = {"kind": "none", "val_size": 30}
    tiny_raw["noise"]["noisy"] = {"kind": "uniform", "rate": 0.3, "val_size": 30}
    tiny_raw["methods"]["l2rw"] = {}
    tiny_raw["experiments"]["mine"] = {
        "dataset": "mine",
        "model": "mlp",
        "schedule": "short",
        "noise": ["as_given", "noisy"],
        "methods": ["erm", "l2rw"],
        "suspects": 3,
    }
    tiny_raw["profiles"]["default"]["experiments"] = ["mine"]
    Path("params.yaml").write_text(yaml.safe_dump(tiny_raw, sort_keys=False))
    assert main(["prepare", "--dataset", "mine"]) == 0
    for noise in ("as_given", "noisy"):
        assert main(["noise", "--dataset", "mine", "--noise", noise, "--seeds", "0,1"]) == 0
        args = ["--dataset", "mine", "--model", "mlp", "--schedule", "short", "--noise", noise]
        for method in ("erm", "l2rw"):
            assert main(["train", *args, "--method", method, "--seeds", "0,1"]) == 0
    assert main(["report", "--experiment", "mine"]) == 0
    table_md = Path("results/tables/mine.md").read_text()
    assert "| erm |" in table_md and "| l2rw |" in table_md
    assert main(["suspects", "--experiment", "mine"]) == 0
    suspects = Path("results/tables/suspects/mine.md").read_text()
    assert "## noisy: K = " in suspects and "## as_given: K" not in suspects
    assert len(re.findall(r"\n\| [012] \| \d+ \| \d+ \| r\d+ \| ", suspects)) == 2 * 2 * 3 * 3
    # a row: given label, rank, row, the user's id of that row
    for row, key in re.findall(r"\n\| [012] \| \d+ \| (\d+) \| (r\d+) \| ", suspects):
        assert key == ids[int(row)]


def test_a_trusted_file_is_appended_and_marked(tmp_path):
    write_table(tmp_path / "data.csv")
    write_table(tmp_path / "checked.csv", id=["u", "v", "w", "x", "y", "z"])
    spec = DatasetSpec(
        "table",
        path=str(tmp_path / "data.csv"),
        id_column="id",
        val_path=str(tmp_path / "checked.csv"),
    )
    data = table(spec)
    assert data.is_trusted.tolist() == [False] * 6 + [True] * 6
    assert data.ids[6:] == ["u", "v", "w", "x", "y", "z"] and len(data.y) == 12


def test_a_trusted_column_marks_rows_and_is_no_feature(tmp_path):
    write_table(tmp_path / "data.csv", checked=[1, 0, "true", "False", 0, 1])
    data = table(
        DatasetSpec(
            "table", path=str(tmp_path / "data.csv"), id_column="id", trusted_column="checked"
        )
    )
    assert data.is_trusted.tolist() == [True, False, True, False, False, True]
    assert data.x.shape[1] == 4  # size and the three colours, not the mark


@pytest.mark.parametrize(
    "changes, spec, message",
    [
        ({"checked": [1, 0, 2, 0, 0, 1]}, {"trusted_column": "checked"}, "0/1 or true/false"),
        ({}, {"trusted_column": "checked"}, "no trusted column 'checked'"),
    ],
)
def test_a_bad_trusted_column_is_refused(tmp_path, changes, spec, message):
    write_table(tmp_path / "data.csv", **changes)
    with pytest.raises(ValueError, match=re.escape(message)):
        table(DatasetSpec("table", path=str(tmp_path / "data.csv"), **spec))


def test_a_trusted_file_with_other_columns_is_refused(tmp_path):
    write_table(tmp_path / "data.csv")
    write_table(tmp_path / "checked.csv", extra=[0] * 6)
    spec = DatasetSpec(
        "table", path=str(tmp_path / "data.csv"), val_path=str(tmp_path / "checked.csv")
    )
    with pytest.raises(ValueError, match="columns"):
        table(spec)


def test_an_image_folder_takes_a_trusted_folder(tmp_path):
    from PIL import Image

    for root, count in (("train", 3), ("val", 2)):
        for name in ("cat", "dog"):
            (tmp_path / root / name).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (9, 9), color=30 * (i + 1)).save(
                    tmp_path / root / name / f"{i}.png"
                )
    spec = DatasetSpec(
        "image_folder", path=str(tmp_path / "train"), val_path=str(tmp_path / "val"), image_size=8
    )
    data = image_folder(spec)
    assert data.is_trusted.tolist() == [False] * 6 + [True] * 4
    assert data.y.tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 1, 1]


def test_trusted_rows_are_exactly_the_validation_split_and_never_corrupted(tmp_path):
    from pipeline.config import NoiseSpec
    from pipeline.noise import make_split

    write_table(tmp_path / "data.csv", id=list("abcdef"), label=[3, 7, 3, 7, 7, 3])
    frame_rows = 6
    import pandas as pd

    big = pd.concat([pd.read_csv(tmp_path / "data.csv")] * 20, ignore_index=True)
    big["id"] = [f"r{i}" for i in range(len(big))]
    big.to_csv(tmp_path / "data.csv", index=False)
    checked = big.iloc[:10].assign(id=[f"t{i}" for i in range(10)])
    checked.to_csv(tmp_path / "checked.csv", index=False)
    dspec = DatasetSpec(
        "table",
        path=str(tmp_path / "data.csv"),
        id_column="id",
        test_size=20,
        val_path=str(tmp_path / "checked.csv"),
    )
    data = table(dspec)
    n = 20 * frame_rows
    for seed in (0, 1):
        split = make_split(data, dspec, NoiseSpec("uniform", rate=0.5, val_trusted=True), seed)
        assert split["val_idx"].tolist() == list(range(n, n + 10))
        assert split["val_y"].tolist() == data.y[n:].tolist()  # as given, never corrupted
        outside = torch.cat([split["train_idx"], split["test_idx"]])
        assert not torch.isin(outside, split["val_idx"]).any()
        assert len(split["train_idx"]) == n - 20 and split["noise_mask"].any()
    with pytest.raises(ValueError, match="marks no trusted row"):
        make_split(
            table(DatasetSpec("table", path=str(tmp_path / "data.csv"), test_size=20)),
            dspec,
            NoiseSpec("none", val_trusted=True),
            0,
        )


def test_a_csv_with_trusted_rows_runs_through_the_stages(workdir, tiny_raw):
    """A user's CSV and a second file of rows checked by hand: the checked rows are exactly
    the validation split of every seed, the flipped labels stay in training, and the suspects
    table ranks them by ERM, L2RW, Meta-Weight-Net and cleanlab's confident learning."""
    import pandas as pd
    import yaml

    from pipeline.__main__ import main
    from pipeline.io import load_torch
    from pipeline.plan import split_path

    rng = np.random.default_rng(1)

    def rows(n, prefix):
        y = rng.integers(0, 3, n)
        return pd.DataFrame(
            {
                "id": [f"{prefix}{i}" for i in range(n)],
                "size": y + rng.normal(0, 0.3, n),
                "label": y,
            }
        )

    rows(300, "r").to_csv("mine.csv", index=False)
    rows(30, "t").to_csv("checked.csv", index=False)
    tiny_raw["datasets"]["mine"] = {
        "source": "table", "path": "mine.csv", "val_path": "checked.csv", "id_column": "id",
        "test_size": 60,
    }  # fmt: skip
    tiny_raw["noise"]["noisy"] = {"kind": "uniform", "rate": 0.3, "val_trusted": True}
    methods = ["erm", "l2rw", "mwn", "confident_learning"]
    tiny_raw["methods"].update({m: {} for m in methods[1:]})
    tiny_raw["methods"]["confident_learning"] = {"folds": 3}
    tiny_raw["experiments"]["mine"] = {
        "dataset": "mine", "model": "mlp", "schedule": "short", "noise": ["noisy"],
        "methods": methods, "suspects": 2,
    }  # fmt: skip
    tiny_raw["profiles"]["default"]["experiments"] = ["mine"]
    Path("params.yaml").write_text(yaml.safe_dump(tiny_raw, sort_keys=False))
    assert main(["prepare", "--dataset", "mine"]) == 0
    assert main(["noise", "--dataset", "mine", "--noise", "noisy", "--seeds", "0,1"]) == 0
    for seed in (0, 1):
        split = load_torch(split_path("mine", "noisy", seed), True)
        assert split["val_idx"].tolist() == list(range(300, 330))
        assert not torch.isin(split["train_idx"], split["val_idx"]).any()
        assert split["noise_mask"].any()
    args = ["--dataset", "mine", "--model", "mlp", "--schedule", "short", "--noise", "noisy"]
    for method in methods:
        assert main(["train", *args, "--method", method, "--seeds", "0,1"]) == 0
    assert main(["suspects", "--experiment", "mine"]) == 0
    suspects = Path("results/tables/suspects/mine.md").read_text()
    assert "| confident_learning | cleanlab label quality |" in suspects
    for method in methods[:3]:
        assert f"| {method} | " in suspects
    # each run keeps the training split's input statistics: new rows are standardised alike
    from pipeline.plan import prepared_path
    from pipeline.task import load_task, standardise

    saved = load_torch("results/runs/mine/mlp/short/noisy/erm/seed0/model.pt")
    raw, split = (
        load_torch(prepared_path("mine"), True),
        load_torch(split_path("mine", "noisy", 0), True),
    )
    train_rows = raw["x"][split["train_idx"]].float()
    assert torch.allclose(saved["inputs"]["mean"][0], train_rows.mean(0))
    assert torch.allclose(saved["inputs"]["scale"][0], train_rows.std(0))
    new_rows = raw["x"][split["test_idx"]]
    assert torch.equal(standardise(new_rows, saved["inputs"]), load_task("mine", "noisy", 0).test_x)


def test_a_feature_constant_in_training_is_centred_not_blown_up():
    """A column that is 0 on every training row but 1 on a validation row (a pixel of the
    digits table): divided by its zero spread it was ~1e6 and sent L2RW's validation loss to
    hundreds; centred, it stays 1. Other columns are standardised as before."""
    from pipeline.task import normalise

    train = torch.tensor([[0.0, 1.0], [0.0, 3.0], [0.0, 5.0]])
    val = torch.tensor([[1.0, 3.0]])
    assert normalise(val, train).tolist() == [[1.0, 0.0]]
    assert torch.allclose(normalise(train, train)[:, 1], torch.tensor([-1.0, 0.0, 1.0]))
