"""What a rerun leaves behind: a reproduced metrics.json as committed (a fresh clone stays
clean), no retraining for data regenerated with the same bytes, at most one stale checkpoint
per run."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from pipeline import plan
from pipeline.__main__ import main
from pipeline.config import load
from pipeline.evaluate import evaluate
from pipeline.io import read_json
from pipeline.train import set_aside, train, train_runs

RUN = plan.Run("digits", "mlp", "short", "uniform40", "erm", 0)


@pytest.fixture
def prepared(workdir):
    assert main(["prepare", "--dataset", "digits"]) == 0
    assert main(["noise", "--dataset", "digits", "--noise", "uniform40", "--seeds", "0"]) == 0
    return load("params.yaml")


def test_a_run_keeps_at_most_one_stale_checkpoint_and_none_once_done(prepared):
    """Each checkpoint that cannot be resumed replaces the one set aside before; the job's
    end removes it with the checkpoint."""
    checkpoint = Path(RUN.checkpoint)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    for garbage in (b"\x00" * 64, b"\x01" * 64):
        checkpoint.write_bytes(garbage)
        train(prepared, RUN, keep_checkpoint=True)
        stale = [f.name for f in checkpoint.parent.iterdir() if "stale" in f.name]
        assert stale == [set_aside(checkpoint).name]
        assert set_aside(checkpoint).read_bytes() == garbage  # the latest set aside
    checkpoint.write_bytes(b"\x02" * 64)
    train_runs(prepared, [RUN])
    assert not checkpoint.exists() and not list(checkpoint.parent.glob("*stale*"))


def git(*args: str) -> str:
    who = ["-c", "user.name=test", "-c", "user.email=test@example.org"]
    return subprocess.run(
        ["git", *who, *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_a_reproduced_metrics_json_keeps_its_committed_revision(prepared):
    """The engines delete a job's outputs before it runs; a run that reproduces the committed
    metrics.json (all but the revision) writes it back byte for byte, so the checkout stays
    clean; one whose figures differ records the revision it ran at."""
    Path(".gitignore").write_text("results/data/\nresults/checkpoints/\nresults/logs/\n*.pt\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "code")
    made_at = git("rev-parse", "HEAD")
    train(prepared, RUN)
    metrics = Path(RUN.file("metrics.json"))
    assert read_json(metrics)["provenance"]["git"] == made_at
    git("add", "-A")
    git("commit", "-q", "-m", "results")
    Path("notes.txt").write_text("a later commit\n")
    git("add", "notes.txt")
    git("commit", "-q", "-m", "later")
    committed = metrics.read_bytes()

    metrics.unlink()  # as Snakemake and DVC do before a job
    evaluate(prepared, RUN)
    assert metrics.read_bytes() == committed
    assert git("status", "--porcelain") == ""

    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["schedules"]["short"]["lr"] = 0.05
    Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    train(load("params.yaml"), RUN)
    assert read_json(metrics)["provenance"]["git"] == git("rev-parse", "HEAD") + "+dirty"


def snakemake(*args: str, cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        ["snakemake", "--cores", "1", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out.stdout + out.stderr


def planned(text: str) -> dict[str, int]:
    """The job counts of a dry run's "Job stats" table (empty: nothing to be done)."""
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:", 1)[1].split("\n\n", 1)[0].splitlines()[3:]
    return {rule: int(n) for rule, n in (line.split() for line in table) if rule != "total"}


def test_data_made_again_retrains_nothing_and_a_changed_setting_still_reruns(workdir, tiny_raw):
    """Data stages run again (same bytes, newer files) retrain nothing: where the jobs ran,
    by Snakemake's recorded checksums; in a fresh clone (no logs, no data), by the ancient
    inputs of jobs that never ran there (they planned every train job of the chain). A
    changed noise setting still reruns its noise job, the train job that reads it and the
    report."""

    def noise_by_hand() -> None:
        for noise in ("clean", "uniform40"):
            assert main(["noise", "--dataset", "digits", "--noise", noise, "--seeds", "0,1"]) == 0

    snakemake(cwd=workdir)
    noise_by_hand()
    assert planned(snakemake("-n", cwd=workdir)) == {}

    changed = {
        **tiny_raw,
        "noise": {
            **tiny_raw["noise"],
            "uniform40": {"kind": "uniform", "rate": 0.3, "val_size": 100},
        },
    }
    Path("params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    assert planned(snakemake("-n", cwd=workdir)) == {"noise": 1, "train": 1, "report": 1, "all": 1}
    Path("params.yaml").write_text(yaml.safe_dump(tiny_raw, sort_keys=False))

    shutil.rmtree("results/logs")  # a fresh clone: what git does not keep
    shutil.rmtree(".snakemake")
    for path in Path("results/data").rglob("*.pt"):
        path.unlink()
    snakemake("results/data/prepared/digits.pt", cwd=workdir)
    assert planned(snakemake("-n", cwd=workdir)) == {}
    noise_by_hand()
    assert planned(snakemake("-n", cwd=workdir)) == {}
