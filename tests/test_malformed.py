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
