"""A user's settings in a file of their own that params.yaml includes: its entries join the
project's, a clash or a misplaced key is refused naming the files, and both engines read it
(Snakemake through the parsed settings, DVC through the file each stage's params name)."""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml
from conftest import REPO

from pipeline import plan
from pipeline.config import ParamsError, load

MINE = {
    "profiles": {"mine": {"seeds": [0], "experiments": ["mine"]}},
    "noise": {"mine_flipped": {"kind": "uniform", "rate": 0.25, "val_size": 100}},
    "experiments": {
        "mine": {
            "dataset": "digits",
            "model": "mlp",
            "schedule": "short",
            "noise": ["mine_flipped"],
            "methods": ["erm"],
        }
    },
}


def with_include(workdir, tiny_raw, mine, **main) -> None:
    (workdir / "own").mkdir(exist_ok=True)
    (workdir / "own/mine.yaml").write_text(yaml.safe_dump(mine, sort_keys=False))
    raw = {**tiny_raw, "include": ["own/mine.yaml"], **main}
    (workdir / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def test_an_included_files_entries_join_the_projects(workdir, tiny_raw):
    with_include(workdir, tiny_raw, MINE, profile="mine")
    p = load()
    assert set(p.experiments) == {"tiny", "mine"} and "mine_flipped" in p.noise
    assert p.settings_files == ["params.yaml", "own/mine.yaml"]
    assert p.file_of("noise.mine_flipped.rate") == "own/mine.yaml"
    assert p.file_of("noise.clean.val_size") == "params.yaml"
    # the user's profile runs their experiment alone
    assert {j.name for j in plan.jobs(p) if j.name.startswith("train")} == {
        "train-digits-mlp-short-mine_flipped-erm"
    }


@pytest.mark.parametrize(
    "mine, words",
    [
        (
            {"experiments": {"tiny": MINE["experiments"]["mine"]}},
            "experiments.tiny: defined in params.yaml and in own/mine.yaml",
        ),
        ({"run": {"threads": 2}}, "own/mine.yaml: run: an included file gives entries of"),
        ({"include": ["x.yaml"]}, "own/mine.yaml: include: an included file gives entries"),
        ({"bogus": {}}, "own/mine.yaml: bogus: unknown top-level key"),
        ({"noise": [1]}, "own/mine.yaml: noise: expected a mapping of names to settings"),
        ({"noise": {"bad": {"kind": "uniform", "rate": 2}}}, "noise.bad.rate"),
    ],
    ids=["clash", "run", "nested", "unknown", "not-a-mapping", "checked-as-params"],
)
def test_an_included_file_is_checked_and_named(workdir, tiny_raw, mine, words):
    with_include(workdir, tiny_raw, mine)
    with pytest.raises(ParamsError, match=words.replace(".", r"\.")):
        load()


def test_a_missing_included_file_is_named(workdir, tiny_raw):
    raw = {**tiny_raw, "include": ["own/absent.yaml"]}
    (workdir / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"own/absent\.yaml: not found \(include\)"):
        load()


def test_dvc_reads_an_included_entry_from_its_file(workdir, tiny_raw):
    with_include(workdir, tiny_raw, MINE, profile="mine")
    p = load()
    stages = yaml.safe_load(plan.dvc_yaml(p))["stages"]
    assert stages["check"]["deps"] == ["params.yaml", "own/mine.yaml"]
    noise = stages["noise-digits-mine_flipped"]
    assert noise["params"] == ["datasets.digits", {"own/mine.yaml": ["noise.mine_flipped"]}]
    (workdir / "dvc.yaml").write_text(plan.dvc_yaml(p))
    env = {**os.environ, "PYTHONPATH": str(REPO), "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=workdir, env=env, check=True)
    stage = "noise-digits-mine_flipped"
    run = subprocess.run(
        ["dvc", "repro", stage], cwd=workdir, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr
    mine = yaml.safe_load((workdir / "own/mine.yaml").read_text())
    mine["noise"]["mine_flipped"]["rate"] = 0.3  # a change in the user's file alone
    (workdir / "own/mine.yaml").write_text(yaml.safe_dump(mine))
    status = subprocess.run(
        ["dvc", "status", stage], cwd=workdir, env=env, capture_output=True, text=True
    )
    words = status.stdout.split()
    assert words[words.index("own/mine.yaml:") + 1 :][:2] == ["modified:", "noise.mine_flipped"], (
        status.stdout + status.stderr
    )


def test_snakemake_plans_an_included_experiment(workdir, tiny_raw):
    with_include(workdir, tiny_raw, MINE)
    out = subprocess.run(
        ["snakemake", "-n", "--cores", "1", "results/tables/mine.md"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "/mine_flipped/erm/" in out.stdout and "results/tables/mine.md" in out.stdout


def test_the_documented_example_is_valid(tmp_path):
    """docs/own-data.md's file, included by the repository's params.yaml, parses and plans
    its experiment in its own profile."""
    text = (REPO / "docs/own-data.md").read_text()
    example = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "data").mkdir()
    (tmp_path / "data/mine.yaml").write_text(example)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert "`include: [data/mine.yaml]`" in text
    raw["include"], raw["profile"] = ["data/mine.yaml"], "mine"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    p = load(tmp_path / "params.yaml")
    trains = [j.name for j in plan.jobs(p) if j.name.startswith("train")]
    assert sorted(trains) == [
        f"train-mine-mlp-table_memorise-mine_as_given-{m}"
        for m in sorted(["erm", "l2rw", "mwn_flat", "confident_learning"])
    ]
