"""A corpus of malformed params.yaml files: each is refused before any job, naming its key.

Every case edits the tiny params of conftest.py (or its YAML text) in one way; `load` must
raise ParamsError whose message starts with the dotted key (or the file and line, for
mistakes below the level of keys). A sample also goes through `snakemake -n` and `dvc repro`
(DVC runs the check stage of dvc.yaml first; it reads params.yaml itself before that, and
refuses a duplicate key or a byte that is not UTF-8 in its own words).
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import subprocess
import typing

import pytest
import yaml
from conftest import REPO, TINY

from pipeline import plan
from pipeline.config import ParamsError, load

EXTRA = {  # entries some cases edit, beside the tiny ones (all valid as they stand)
    "datasets": {
        "fashion": {"source": "fashion_mnist"},
        "moons": {"source": "two_moons", "size": 400, "test_size": 100},
    },
    "noise": {
        "imbalance": {
            "kind": "imbalance",
            "classes": [4, 9],
            "majority_fraction": 0.9,
            "train_size": 200,
            "val_size": 50,
        },
        "few": {"kind": "few_labels", "labels": 20},
        "background": {"kind": "background", "rate": 0.3, "background": 9, "val_size": 100},
    },
    "models": {
        "resnet": {"arch": "preact_resnet", "depth": 8},
        "wrn": {"arch": "wrn", "depth": 10},
        "bert": {"arch": "text_bert", "hidden": 32, "heads": 2},
    },
    "methods": {
        "reed": {"method": "bootstrap", "beta": 0.8},
        "hard_mining": {"majority_keep": 0.5},
        "dir": {"interval": 4, "back": 2},
        "mwn": {"teacher_lr": 0.001},
        "focal": {"gamma": 2},
        "dlf": {"segment": 5},
        "spl": {"full_at": 0.5},
    },
}
EXTRA_NOISE = ["imbalance", "few", "background"]


def base() -> dict:
    raw = copy.deepcopy(TINY)
    for section, entries in EXTRA.items():
        raw[section].update(copy.deepcopy(entries))
    raw["experiments"]["tiny"]["noise"] += EXTRA_NOISE
    raw["experiments"]["tiny"]["methods"] += list(EXTRA["methods"])
    return raw


def put(dotted: str, value):
    """An edit setting one dotted key (its last part may be new)."""

    def edit(raw: dict) -> None:
        *parents, last = dotted.split(".")
        node = raw
        for key in parents:
            node = node[key]
        node[last] = value

    return edit


def both(*edits):
    def edit(raw: dict) -> None:
        for one in edits:
            one(raw)

    return edit


class TextEdit(typing.NamedTuple):
    """An edit of the YAML text: the mistakes a mapping cannot hold."""

    old: str
    new: str


NAN, INF = math.nan, math.inf
S, N, M = "schedules.short", "noise.uniform40", "methods"
CASES = [  # (the key the message must start with, an edit of the mapping or of the text)
    (f"{S}.lr", put(f"{S}.lr", NAN)),
    (f"{S}.lr", put(f"{S}.lr", INF)),
    (f"{S}.lr", put(f"{S}.lr", -0.1)),
    (f"{S}.lr", put(f"{S}.lr", 0)),
    (f"{S}.lr", put(f"{S}.lr", "fast")),
    (f"{S}.momentum", put(f"{S}.momentum", 5)),
    (f"{S}.momentum", put(f"{S}.momentum", 1.0)),
    (f"{S}.gamma", put(f"{S}.gamma", -1)),
    (f"{S}.milestones", put(f"{S}.milestones", [0.8, 0.5])),
    (f"{S}.milestones", put(f"{S}.milestones", [0.5, 0.5])),
    (f"{S}.milestones[0]", put(f"{S}.milestones", [1.5])),
    (f"{S}.weight_decay", put(f"{S}.weight_decay", -1e-4)),
    (f"{S}.eps", put(f"{S}.eps", 0)),
    (f"{S}.betas", put(f"{S}.betas", [0.9])),
    (f"{S}.betas[1]", put(f"{S}.betas", [0.9, 1.0])),
    (f"{S}.epochs", put(f"{S}.epochs", 0)),
    (f"{S}.batch_size", put(f"{S}.batch_size", 2.5)),
    (f"{S}.eval_every", put(f"{S}.eval_every", -1)),
    (f"{S}.nesterov", both(put(f"{S}.optimizer", "adam"), put(f"{S}.nesterov", True))),
    (f"{N}.rate", put(f"{N}.rate", 1.5)),
    (f"{N}.rate", put(f"{N}.rate", -0.1)),
    (f"{N}.val_size", put(f"{N}.val_size", 0)),
    (f"{N}.val_size", put(f"{N}.val_size", 100_000)),
    (f"{N}.train_size", put(f"{N}.train_size", 1_500)),
    (f"{N}.val_size", lambda raw: raw["noise"]["uniform40"].pop("val_size")),
    ("noise.imbalance.classes", put("noise.imbalance.classes", [4, 4])),
    ("noise.imbalance.classes[1]", put("noise.imbalance.classes", [4, 12])),
    ("noise.imbalance.classes", put("noise.imbalance.classes", [1, 2, 3])),
    ("noise.imbalance.majority_fraction", put("noise.imbalance.majority_fraction", 1.0)),
    ("noise.few.labels", put("noise.few.labels", 5)),
    ("noise.background.background", put("noise.background.background", 10)),
    ("datasets.digits.test_size", put("datasets.digits.test_size", 2_000)),
    ("datasets.digits.test_size", lambda raw: raw["datasets"]["digits"].pop("test_size")),
    ("datasets.fashion.test_size", put("datasets.fashion.test_size", 1_000)),
    ("datasets.moons.test_size", put("datasets.moons.test_size", 400)),
    ("datasets.moons.noise", put("datasets.moons.noise", -0.1)),
    ("models.mlp.dropout", put("models.mlp.dropout", 1.5)),
    ("models.mlp.hidden", put("models.mlp.hidden", "abc")),
    ("models.mlp.hidden[0]", put("models.mlp.hidden", [0])),
    ("models.resnet.depth", put("models.resnet.depth", 7)),
    ("models.wrn.depth", put("models.wrn.depth", 12)),
    ("models.bert.dropout", put("models.bert.dropout", 1.0)),
    (f"{M}.reed.beta", put(f"{M}.reed.beta", 1.5)),
    (f"{M}.hard_mining.majority_keep", put(f"{M}.hard_mining.majority_keep", 2)),
    (f"{M}.dir.back", put(f"{M}.dir.back", 5)),
    (f"{M}.mwn.teacher_lr", put(f"{M}.mwn.teacher_lr", 0)),
    (f"{M}.focal.gamma", put(f"{M}.focal.gamma", -1)),
    (f"{M}.dlf.segment", put(f"{M}.dlf.segment", 0)),
    (f"{M}.spl.full_at", put(f"{M}.spl.full_at", 0)),
    ("run.threads", put("run.threads", 0)),
    ("profiles.default.seeds[0]", put("profiles.default.seeds", [-1])),
    ("profiles.default.seeds", put("profiles.default.seeds", [0, 0])),
    ("schedules.short.lr", TextEdit("lr: 0.1", "lr: 0.1\n    lr: 0.2")),
    ("noise.clean", TextEdit("noise:\n", "noise:\n  clean: {kind: none}\n")),
    ("params.yaml, line 2", TextEdit("profiles:", "profiles: caf\udce9")),
    ("params.yaml, line", TextEdit("seeds:", "seeds: [0")),
    # a value that would run for ever, or overflow the int64 it becomes
    (f"{S}.epochs", put(f"{S}.epochs", 10**30)),
    (f"{S}.batch_size", put(f"{S}.batch_size", 2**64)),
    # an oversized validation split is its own key's fault, train_size given or not
    (f"{N}.val_size", both(put(f"{N}.val_size", 100_000), put(f"{N}.train_size", 500))),
    # a structure that contains itself (directly, in a list, through a merge key)
    ("noise.cycle", TextEdit("noise:\n", "noise:\n  cycle: &cycle {kind: none, x: *cycle}\n")),
    ("noise.cycle[1]", TextEdit("noise:\n", "noise:\n  cycle: &cycle [1, *cycle]\n")),
    ("noise.cycle", TextEdit("noise:\n", "noise:\n  cycle: &cycle {kind: none, <<: *cycle}\n")),
    # entries that are not mappings
    (f"{M}.erm", put(f"{M}.erm", 1)),
    (f"{M}.bogus_option", put(f"{M}.bogus_option", 1)),
    ("models.mlp", put("models.mlp", 1)),
    # a noise setting no experiment uses must fit some dataset (digits, fashion, moons)
    (
        "noise.unused.classes[1]",
        put("noise.unused", {**EXTRA["noise"]["imbalance"], "classes": [4, 42]}),
    ),
    (
        "noise.unused.background",
        put("noise.unused", {**EXTRA["noise"]["background"], "background": 99}),
    ),
    ("noise.unused.val_size", put("noise.unused", {"kind": "none", "val_size": 100_000})),
    (
        "noise.unused.train_size",
        put("noise.unused", {"kind": "none", "val_size": 100, "train_size": 70_000}),
    ),
    (
        "noise.unused.kind",
        put("noise.unused", {"kind": "mask", "rate": 0.1, "token_rate": 0.1, "val_size": 10}),
    ),
    (f"{M}.dlf.metric", put(f"{M}.dlf.metric", "bleu")),
    (f"{M}.dlf.hold_eos", put(f"{M}.dlf.hold_eos", True)),  # digits: no sentence to end
]


def write(path, edit) -> None:
    raw = base()
    if isinstance(edit, TextEdit):
        text = yaml.safe_dump(raw, sort_keys=False).replace(edit.old, edit.new, 1)
        path.write_bytes(text.encode("utf-8", "surrogateescape"))  # \udce9: the byte 0xe9
    else:
        edit(raw)
        path.write_text(yaml.safe_dump(raw, sort_keys=False))


def test_the_base_of_the_corpus_is_valid(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(base(), sort_keys=False))
    load(path)


@pytest.mark.parametrize("key, edit", CASES, ids=[f"{i}-{k}" for i, (k, _) in enumerate(CASES)])
def test_each_malformed_file_names_its_key(tmp_path, key, edit):
    path = tmp_path / "params.yaml"
    write(path, edit)
    with pytest.raises(ParamsError) as e:
        load(path)
    message = str(e.value).replace(str(tmp_path) + os.sep, "")
    assert message.startswith(key), message


def test_the_corpus_covers_every_kind_of_mistake():
    assert len(CASES) >= 40


def test_an_unused_noise_setting_that_fits_some_dataset_is_valid(tmp_path):
    """Only a setting that fits none is refused: one meant for a dataset no experiment uses
    yet passes (the noise stage checks it against the dataset it is given)."""
    raw = base()
    raw["noise"]["spare"] = {"kind": "none", "val_size": 5_000}  # fits fashion, not digits
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    load(path)


def test_the_epochs_bound_is_in_the_schema_too():
    """epochs' bound is in the JSON schema too (one declaration, both checks)."""
    from pipeline.config import MAX_EPOCHS, json_schema

    schedule = json_schema()["properties"]["schedules"]["additionalProperties"]
    assert schedule["properties"]["epochs"]["maximum"] == MAX_EPOCHS


NOISE_STAGE = {  # settings no experiment uses that fit fashion or cifar100, not digits
    "big_val": ({"kind": "none", "val_size": 5_000}, "noise.big_val.val_size"),
    "big_train": (
        {"kind": "none", "val_size": 100, "train_size": 5_000},
        "noise.big_train.train_size",
    ),
    "class42": (
        {
            "kind": "imbalance",
            "classes": [4, 42],
            "majority_fraction": 0.9,
            "train_size": 100,
            "val_size": 20,
        },
        "noise.class42.classes[1]",
    ),
    "background99": (
        {"kind": "background", "rate": 0.3, "background": 99, "val_size": 100},
        "noise.background99.background",
    ),
    # only the prepared data says a class has too few examples for the imbalance asked for
    "too_imbalanced": (
        {
            "kind": "imbalance",
            "classes": [4, 9],
            "majority_fraction": 0.9,
            "train_size": 1_000,
            "val_size": 20,
        },
        "noise.too_imbalanced.train_size",
    ),
}


def test_the_noise_stage_checks_the_setting_it_is_given(workdir, tiny_raw, capsys):
    """`python -m pipeline noise` with a setting no experiment uses: one line naming the key
    (it was a ValueError or IndexError traceback), and no split written."""
    from pipeline.__main__ import main

    tiny_raw["datasets"].update(
        {"fashion": {"source": "fashion_mnist"}, "c100": {"source": "cifar100"}}
    )
    tiny_raw["noise"].update({name: setting for name, (setting, _) in NOISE_STAGE.items()})
    (workdir / "params.yaml").write_text(yaml.safe_dump(tiny_raw, sort_keys=False))
    assert main(["prepare", "--dataset", "digits"]) == 0
    for name, (_, key) in NOISE_STAGE.items():
        capsys.readouterr()
        assert main(["noise", "--dataset", "digits", "--noise", name, "--seeds", "0"]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith(f"error: {key}: ") and err.count("\n") == 1, err
        assert not (workdir / plan.split_path("digits", name, 0)).exists()


def test_the_noise_stage_checks_a_users_data_once_prepared(workdir, tiny_raw, capsys):
    """A user's own data: nothing is known of it before the prepare stage, so the noise stage
    checks the setting against the prepared data (3 classes, 50 examples)."""
    import numpy as np

    from pipeline.__main__ import main

    rng = np.random.default_rng(0)
    np.savez(
        workdir / "mine.npz", x=rng.normal(size=(50, 4)).astype("float32"), y=np.arange(50) % 3
    )
    tiny_raw["datasets"]["mine"] = {"source": "arrays", "path": "mine.npz", "test_size": 10}
    tiny_raw["noise"]["bg5"] = {"kind": "background", "rate": 0.3, "background": 5, "val_size": 10}
    tiny_raw["noise"]["val60"] = {"kind": "none", "val_size": 60}
    (workdir / "params.yaml").write_text(yaml.safe_dump(tiny_raw, sort_keys=False))
    assert main(["prepare", "--dataset", "mine"]) == 0
    for name, key in (("bg5", "noise.bg5.background"), ("val60", "noise.val60.val_size")):
        capsys.readouterr()
        assert main(["noise", "--dataset", "mine", "--noise", name, "--seeds", "0"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {key}: ") and "(used by --dataset mine)" in err, err


@pytest.mark.parametrize(
    "target, name, known",
    [
        ("results/tables/tiny_typo.md", "experiment 'tiny_typo'", "did you mean tiny?"),
        ("results/figures/weights/tiyn.png", "experiment 'tiyn'", "did you mean tiny?"),
        (
            "results/runs/digits/mlp/short/uniform40/ermm/seed0/metrics.json",
            "method 'ermm'",
            "did you mean erm?",
        ),
        ("results/noise/digits/unifrm40/seed0.json", "noise 'unifrm40'", "known: clean, uniform40"),
        ("results/data/prepared/digts.pt", "dataset 'digts'", "known: digits"),
    ],
)
def test_a_misspelt_target_lists_the_known_names(workdir, target, name, known):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        ["snakemake", "-n", "--cores", "1", target],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert f"error: {name} (in the target's path): no such entry in params.yaml" in text, text[
        -2000:
    ]
    assert known in text and "Traceback" not in text and "KeyError" not in text, text[-2000:]


SAMPLE = [0, 8, 23, 26, 39, 52, 54]  # nan, unsorted, too large, class index, depth, dup, byte


def engine_copy(tmp_path, edit) -> None:
    shutil.copy(REPO / "Snakefile", tmp_path / "Snakefile")
    shutil.copytree(REPO / "workflow", tmp_path / "workflow")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(base(), sort_keys=False))
    (tmp_path / "dvc.yaml").write_text(plan.dvc_yaml(load(tmp_path / "params.yaml")))
    write(tmp_path / "params.yaml", edit)


@pytest.mark.parametrize("case", SAMPLE, ids=[CASES[i][0] for i in SAMPLE])
def test_the_engines_refuse_before_any_job(tmp_path, case):
    key, edit = CASES[case]
    engine_copy(tmp_path, edit)
    env = {**os.environ, "PYTHONPATH": str(REPO), "DVC_NO_ANALYTICS": "1"}
    commands = [
        ["snakemake", "-n", "--cores", "1"],
        ["dvc", "init", "--no-scm", "-q"],
        ["dvc", "repro"],
    ]
    for command in commands:
        out = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
        if command[1] == "init":
            continue
        assert out.returncode != 0, command
        text = (out.stdout + out.stderr).replace(str(tmp_path) + os.sep, "")
        if command[0] == "dvc" and isinstance(edit, TextEdit):
            # DVC reads params.yaml itself first and refuses these in its own words
            assert "unable to read: 'params.yaml'" in text, text[-2000:]
        else:
            assert f"error: {key}" in text, text[-2000:]
    assert not (tmp_path / "results/data").exists()  # no job ran
