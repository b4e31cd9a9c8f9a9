"""The two workflow engines run the same jobs, lint clean, and run end to end on tiny data."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from pipeline import plan
from pipeline.config import load

BIN = Path(sys.executable).parent
QUIET = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}


def run(*cmd: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    exe = str(BIN / cmd[0]) if (BIN / cmd[0]).exists() else cmd[0]
    env = {
        "PATH": f"{BIN}:/usr/bin:/bin",
        "DVC_NO_ANALYTICS": "1",
        "HOME": str(Path.home()),
        "PYTHONPATH": str(REPO),
    }
    out = subprocess.run([exe, *cmd[1:]], cwd=cwd, capture_output=True, text=True, env=env)
    if check and out.returncode != 0:
        raise AssertionError(f"{cmd} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def snakemake_jobs(cwd: Path) -> dict[str, dict]:
    """Jobs of Snakemake's dry run, keyed by shell command: inputs, outputs, log."""
    text = run("snakemake", "-n", "-p", "--forceall", cwd=cwd).stdout
    jobs = {}
    for block in re.split(r"\n\[[^\]]+\]\n", text)[1:]:
        fields = dict(re.findall(r"^\s+(input|output|log): (.*)$", block, re.M))
        shell = re.search(r"^Shell command: (.*)$", block, re.M)
        if shell and shell.group(1) != "None":  # rule all has no command
            jobs[shell.group(1)] = {k: sorted(v.split(", ")) for k, v in fields.items()}
    return jobs


def dvc_jobs(text: str) -> dict[str, dict]:
    """The jobs of dvc.yaml but its check stage, which every other stage waits for."""
    stages = yaml.safe_load(text)["stages"]
    check = stages.pop("check")
    assert check["outs"] == [{plan.PARAMS_CHECKED: {"cache": False}}]
    out = {}
    for stage in stages.values():
        entries = [o for kind in ("outs", "metrics", "plots") for o in stage.get(kind, [])]
        outs = [o if isinstance(o, str) else next(iter(o)) for o in entries]
        deps = stage["deps"]
        assert deps[0] == plan.PARAMS_CHECKED, stage["cmd"]
        out[stage["cmd"]] = {"output": sorted(outs), "input": sorted(deps[1:])}
    return out


def assert_same_jobs(cwd: Path, dvc_text: str) -> None:
    p = load(cwd / "params.yaml")
    smk, dvc = snakemake_jobs(cwd), dvc_jobs(dvc_text)
    assert set(smk) == set(dvc), set(smk) ^ set(dvc)
    logs = {j.cmd: j.log for j in plan.jobs(p)}
    for cmd, job in dvc.items():
        assert smk[cmd]["output"] == job["output"], cmd
        assert smk[cmd].get("input", []) == job["input"], cmd
        assert smk[cmd]["log"] == [logs[cmd]], cmd


def test_repository_dvc_yaml_is_current():
    p = load(REPO / "params.yaml")
    assert (REPO / "dvc.yaml").read_text() == plan.dvc_yaml(p), "run python -m pipeline dvc-yaml"


def test_snakemake_and_dvc_agree_on_repository_profile():
    assert_same_jobs(REPO, (REPO / "dvc.yaml").read_text())


def test_snakemake_and_dvc_agree_on_tiny_profile(workdir):
    assert_same_jobs(workdir, plan.dvc_yaml(load("params.yaml")))


def test_drift_is_detected(workdir):
    """A rule whose command differs from the plan makes the comparison fail."""
    rules = workdir / "workflow/rules/report.smk"
    rules.write_text(
        rules.read_text().replace(
            "--experiment {wildcards.experiment}", "--experiment {wildcards.experiment} -v"
        )
    )
    with pytest.raises(AssertionError):
        assert_same_jobs(workdir, plan.dvc_yaml(load("params.yaml")))


def test_lint_and_format():
    run("snakemake", "--lint", cwd=REPO)
    run("snakefmt", "--check", "Snakefile", "workflow/rules", cwd=REPO)
    run("ruff", "check", ".", cwd=REPO)
    run("ruff", "format", "--check", ".", cwd=REPO)


def test_conda_environment_pins_what_pyproject_pins():
    """The rules' --use-conda environment: the package's dependencies, without the two engines
    (they run the rules, outside it)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((REPO / "workflow/envs/pipeline.yaml").read_text())["dependencies"]
    (pip,) = [d["pip"] for d in env if isinstance(d, dict)]
    assert sorted(pip) == sorted(d for d in project if not d.startswith(("snakemake", "dvc")))


def test_bad_params_fail_before_any_job(workdir):
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["schedules"]["short"]["epochs"] = "two"
    Path("params.yaml").write_text(yaml.safe_dump(params))
    out = run("snakemake", "--cores", "1", cwd=workdir, check=False)
    assert out.returncode != 0
    assert "epochs" in out.stdout + out.stderr
    assert not Path("results").exists()


def test_config_overrides_are_refused(workdir):
    out = run("snakemake", "-n", "--config", "profile=other", cwd=workdir, check=False)
    assert out.returncode != 0 and "params.yaml" in out.stdout + out.stderr


def test_snakemake_end_to_end_is_deterministic(workdir):
    run("snakemake", "--cores", "2", cwd=workdir)
    tables = sorted(Path("results/tables").glob("*"))
    assert [t.name for t in tables] == ["tiny.csv", "tiny.json", "tiny.md"]
    first = {t: t.read_bytes() for t in tables}
    figure = Path("results/figures/tiny.png").read_bytes()
    md = first[Path("results/tables/tiny.md")].decode()
    assert "| erm |" in md and "±" in md
    log = Path("results/logs/train/digits-mlp-short-uniform40-erm.log").read_text()
    assert "seed0" in log and "seed1" in log  # one job trains every seed of a setting
    epoch_line = r"train digits-mlp-short-uniform40-erm-seed1 step \d+/\d+ step=\d+ .*val_acc="
    assert re.search(epoch_line, log)  # a line per epoch reaches the job's log
    benchmark = Path(plan.benchmark_path("train", "digits-mlp-short-uniform40-erm"))
    assert benchmark.read_text().startswith("s\th:m:s\tmax_rss")  # time and memory per job
    run("snakemake", "--cores", "2", "--forceall", cwd=workdir)
    assert {t: t.read_bytes() for t in tables} == first
    assert Path("results/figures/tiny.png").read_bytes() == figure
    run("snakemake", "--report", "results/report.html", cwd=workdir)
    html = Path("results/report.html").read_text()
    assert '"tiny.csv"' in html and '"tiny.png"' in html  # the table and the figure
    assert "Test accuracy in % per noise setting and method" in html  # their captions


def commit(workdir: Path, message: str) -> None:
    run("git", "add", "-A", cwd=workdir)
    who = ("-c", "user.name=test", "-c", "user.email=test@example.org")
    run("git", *who, "commit", "-q", "-m", message, cwd=workdir)


def test_dvc_repro_reruns_only_what_a_noise_rate_touches(workdir):
    Path("dvc.yaml").write_text(plan.dvc_yaml(load("params.yaml")))
    run("git", "init", "-q", cwd=workdir)
    run("dvc", "init", "-q", cwd=workdir)
    run("dvc", "config", "core.analytics", "false", cwd=workdir)
    first = run("dvc", "repro", cwd=workdir).stdout
    assert first.count("Running stage") == len(plan.jobs(load("params.yaml"))) + 1  # + check
    commit(workdir, "first run")
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["noise"]["uniform40"]["rate"] = 0.3
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    second = run("dvc", "repro", cwd=workdir).stdout
    ran = sorted(re.findall(r"Running stage '([^']+)'", second))
    assert ran == sorted(  # the check reruns on any edit, and invalidates nothing itself
        [
            "check",
            "noise-digits-uniform40",
            "train-digits-mlp-short-uniform40-erm",
            "report-tiny",
        ]
    )
    # the table's numbers are DVC metrics: after the change, the diff shows the new mean
    diff = run("dvc", "metrics", "diff", "--json", cwd=workdir).stdout
    changed = json.loads(diff)["results/tables/tiny.json"]
    assert "uniform40.erm.mean" in changed and "clean.erm.mean" not in changed
    assert "uniform40.erm.mean" in run("dvc", "exp", "show", "--csv", cwd=workdir).stdout
    # seeds change the grid, which dvc.yaml is generated from: the check stage refuses
    commit(workdir, "rate 0.3")
    exp = run("dvc", "exp", "run", "-S", "profiles.default.seeds=[0]", cwd=workdir, check=False)
    assert exp.returncode != 0
    assert "run `python -m pipeline dvc-yaml`" in exp.stdout + exp.stderr


def test_paper_profile_builds_the_same_dag(workdir):
    """The paper profile's grid, from the repository's params.yaml, in both engines."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["profile"] = "paper"
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    p = load("params.yaml")
    glue = {"sst2", "mrpc", "rte", "mnli", "qnli", "qqp"}
    assert {e.dataset for e in p.active_experiments.values()} == {
        "cifar10",
        "cifar100",
        "svhn",
        "iwslt14_de_en",
    } | glue
    assert_same_jobs(workdir, plan.dvc_yaml(p))


PROFILE = ("--workflow-profile", "workflow/profiles/default")  # the README's command


def test_the_readme_command_uses_the_default_profile(workdir):
    shutil.copytree(REPO / "workflow/profiles", workdir / "workflow/profiles")
    out = run("snakemake", "-n", *PROFILE, cwd=workdir)
    assert "Using workflow specific profile workflow/profiles/default" in out.stdout + out.stderr


def test_after_snakemake_is_killed_the_readme_commands_finish_the_same(workdir, tiny_raw):
    """kill -9 of Snakemake and its jobs during a train job; `--unlock`, then the same command
    resumes (rerun-incomplete from the profile; training from its checkpoint) and ends with
    the tables of an uninterrupted run."""
    shutil.copytree(REPO / "workflow/profiles", workdir / "workflow/profiles")
    tiny_raw["schedules"]["short"]["epochs"] = 8
    Path("params.yaml").write_text(yaml.safe_dump(tiny_raw, sort_keys=False))
    command = [str(BIN / "snakemake"), *PROFILE, "--cores", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{BIN}:{os.environ['PATH']}"}
    job = subprocess.Popen(command, env=env, start_new_session=True, **QUIET)
    checkpoints = Path("results/checkpoints")
    deadline = time.monotonic() + 300
    while not any(checkpoints.rglob("*.pt")) and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(job.pid, signal.SIGKILL)  # Snakemake and the train job it runs
    job.wait()
    assert any(checkpoints.rglob("*.pt")) and not Path("results/tables/tiny.md").exists()
    run("snakemake", *PROFILE, "--unlock", cwd=workdir)
    resumed = run("snakemake", *PROFILE, "--cores", "1", cwd=workdir)
    assert "resuming" in resumed.stdout + resumed.stderr
    tables = {t: t.read_bytes() for t in Path("results/tables").glob("tiny.*")}
    run("snakemake", *PROFILE, "--cores", "1", "--forceall", cwd=workdir)
    assert {t: t.read_bytes() for t in Path("results/tables").glob("tiny.*")} == tables


@pytest.mark.parametrize(("device", "asked"), [("cpu", "gpu=0"), ("auto", "gpu=1")])
def test_a_train_job_asks_for_a_gpu_only_where_its_run_can_use_one(workdir, device, asked):
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["run"]["device"] = device
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    found = rule_resources(run("snakemake", "-n", "--cores", "1", cwd=workdir).stdout)
    assert {job["gpu"] for job in found["train"]} == {asked.split("=")[1]}


def rule_resources(dry_run: str) -> dict[str, list[dict[str, str]]]:
    """Each rule's jobs' resources, from `snakemake -n` output."""
    found: dict[str, list[dict[str, str]]] = {}
    rule = None
    for line in dry_run.splitlines():
        if line.startswith(("rule ", "localrule ")):
            rule = line.split()[1].rstrip(":")
        elif line.strip().startswith("resources:") and rule:
            pairs = line.split("resources:", 1)[1].split(", ")
            found.setdefault(rule, []).append(dict(p.strip().split("=", 1) for p in pairs))
    return found


def test_cluster_requests_come_from_params_and_only_gpu_jobs_ask_for_a_gpu(workdir):
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["run"]["device"] = "auto"
    params["cluster"] = {"partition": "short", "gpu_partition": "gpu", "account": "lab"}
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    found = rule_resources(run("snakemake", "-n", "--cores", "1", cwd=workdir).stdout)
    found.pop("all", None)  # the target rule runs nothing
    assert set(found) >= {"prepare", "noise", "train", "report"}
    for rule, jobs in found.items():
        for job in jobs:
            gpu = rule == "train"
            assert job["slurm_partition"] == ("gpu" if gpu else "short")
            assert job["slurm_account"] == "lab" and job["cpus_per_task"] == "1"
            assert job.get("gpu", "0") == ("1" if gpu else "0")
            assert int(job["mem_mb"]) <= 8000 and int(job["runtime"]) <= 720  # fit a node
    params["cluster"] = {}
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    found = rule_resources(run("snakemake", "-n", "--cores", "1", cwd=workdir).stdout)
    assert not any("slurm_partition" in j or "slurm_account" in j for js in found.values()
                   for j in js)  # fmt: skip
