"""The slurm profile on a real one-node SLURM cluster started here (munged, slurmctld and
slurmd): the tiny profile run through it gives a local run's results, byte for byte. Needs
root and Debian's slurm-wlm and munge (installed here when apt-get can); skipped, with the
reason, where either is missing or the machine has a SLURM configuration of its own (the
test writes /etc/slurm/slurm.conf, which the job steps read, and removes it at the end)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO
from test_workflow import BIN

MARK = "# a one-node cluster for tests/test_slurm.py (removed at its end)"
SLURM_CONF = (
    MARK
    + """
ClusterName=pipelinetest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
ReturnToService=2
MinJobAge=300
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName={host} CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""
)


def installed() -> str | None:
    """None when SLURM and munge are there (installing them where apt-get can), else why not."""
    if os.geteuid() != 0:
        return "starting SLURM's daemons needs root"
    if shutil.which("slurmctld") and shutil.which("munged"):
        return None
    if not shutil.which("apt-get"):
        return "slurm-wlm and munge are not installed and there is no apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "slurm-wlm", "munge"]
    done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode:  # an old package list: update it once and try again
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=900)
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode:
        return f"apt-get could not install slurm-wlm and munge: {done.stderr.strip()[-300:]}"
    return None


def node_size() -> tuple[int, int]:
    """CPUs and memory (MB, less 1 GB for the system) as slurmd sees this machine."""
    found = dict(
        item.split("=", 1)
        for item in subprocess.run(["slurmd", "-C"], capture_output=True, text=True).stdout.split()
        if "=" in item
    )
    return int(found["CPUs"]), int(found["RealMemory"]) - 1024


def start_munged() -> bool:
    """Start munged unless one runs; True if this call started it."""
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode == 0:
        return False
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    if not Path("/etc/munge/munge.key").exists():
        subprocess.run(["mungekey", "--create"], check=True)
        shutil.chown("/etc/munge/munge.key", "munge", "munge")
    subprocess.run(["su", "-s", "/bin/sh", "munge", "-c", "/usr/sbin/munged"], check=True)
    return True


def stop(pid_file: Path) -> None:
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text().split()[0])
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(40):
            os.kill(pid, 0)
            time.sleep(0.25)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A one-node cluster on this machine; yields the environment its clients need."""
    reason = installed()
    if reason:
        pytest.skip(reason)
    conf_dir = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool"):
        (conf_dir / sub).mkdir()
    host = socket.gethostname().split(".")[0]
    cpus, memory = node_size()
    conf = Path("/etc/slurm/slurm.conf")
    if conf.exists() and not conf.read_text().startswith(MARK):
        pytest.skip(f"{conf} configures another cluster on this machine")
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(SLURM_CONF.format(host=host, dir=conf_dir, cpus=cpus, memory=memory))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started_munged = start_munged()
    for daemon in ("slurmctld", "slurmd"):
        subprocess.run([daemon, "-f", str(conf)], env=env, check=True)
    try:
        for _ in range(60):
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True)
            if state.stdout.strip() == b"idle":
                break
            time.sleep(0.5)
        else:
            logs = "".join(p.read_text()[-800:] for p in conf_dir.glob("*.log"))
            pytest.skip(f"the one-node cluster did not come up: {logs}")
        yield env
    finally:
        subprocess.run(["scancel", "--user", "root"], env=env, capture_output=True)
        stop(conf_dir / "slurmd.pid")
        stop(conf_dir / "slurmctld.pid")
        if started_munged:
            stop(Path("/run/munge/munged.pid"))
        conf.unlink()


def snakemake(cwd: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    env = {**env, "PATH": f"{BIN}:{env['PATH']}", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [str(BIN / "snakemake"), *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def results(cwd: Path) -> dict[str, bytes]:
    """Every table and every run's history, metrics and examples, by path."""
    files = [*(cwd / "results/tables").glob("*"), *(cwd / "results/runs").rglob("*.json")]
    files += (cwd / "results/runs").rglob("examples.csv")
    return {str(f.relative_to(cwd)): f.read_bytes() for f in files}


def test_the_tiny_profile_through_slurm_equals_a_local_run(cluster, workdir, tmp_path):
    local = tmp_path / "local"
    shutil.copytree(workdir, local, ignore=shutil.ignore_patterns("local"))
    shutil.copytree(REPO / "workflow/profiles/slurm", workdir / "workflow/profiles/slurm")
    out = snakemake(
        workdir,
        cluster,
        "--workflow-profile", "workflow/profiles/slurm",
        "--jobs", "4",
        "--latency-wait", "5",
        "--slurm-init-seconds-before-status-checks", "2",
    )  # fmt: skip
    submitted = [line for line in out.stderr.splitlines() if "SLURM jobid" in line]
    print("\n".join(submitted))  # the job list (pytest -s shows it)
    assert len(submitted) >= 5  # prepare, two noise, two train (the report jobs too)
    assert list((workdir / ".snakemake/slurm_logs/rule_train").rglob("*.log"))  # kept
    snakemake(local, cluster, "--cores", "2")
    ours, theirs = results(workdir), results(local)
    assert "results/tables/tiny.md" in ours and ours == theirs
