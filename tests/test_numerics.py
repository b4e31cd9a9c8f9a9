"""Portable CPU numerics: the same bits whatever kernels the machine would pick, the provenance
runs record, and a verify command that retrains committed runs and finds where they differ."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from pipeline import numerics

# What a different machine would pick: torch's kernel level and MKL's instruction set (as far
# as this CPU has them; MKL ignores MKL_ENABLE_INSTRUCTIONS on AMD processors).
MACHINES = (
    {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
)
needs_portable = pytest.mark.skipif(
    numerics.portable_unavailable() is not None, reason="portable numerics need x86-64 + AVX2"
)


def stage(*args: str, machine: dict) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in (*MACHINES[0], *numerics.PORTABLE_ENV)}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        env={**env, **machine, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
    )


def set_numerics(mode: str, arch: str = "mlp") -> None:
    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["run"]["cpu_numerics"] = mode
    raw["models"]["conv"] = {"arch": "preact_resnet", "depth": 8, "width": 4}
    raw["experiments"]["tiny"]["model"] = arch
    Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def train_tiny(machine: dict, model: str = "mlp") -> dict[str, bytes]:
    """The tiny profile's clean runs of `model` (both seeds): their result files' bytes."""
    for args in (
        ("prepare", "--dataset", "digits"),
        ("noise", "--dataset", "digits", "--noise", "clean", "--seeds", "0,1"),
        ("train", "--dataset", "digits", "--model", model, "--schedule", "short",
         "--noise", "clean", "--method", "erm", "--seeds", "0,1"),
    ):  # fmt: skip
        out = stage(*args, machine=machine)
        assert out.returncode == 0, out.stderr[-2000:]
    files = sorted(Path("results/runs").rglob("*.json"))
    return {str(f): f.read_bytes() for f in files}


@needs_portable
@pytest.mark.parametrize("model", ["mlp", "conv"])
def test_portable_runs_are_byte_identical_across_kernel_choices(workdir, model):
    set_numerics("portable", model)
    first = train_tiny(MACHINES[0], model)
    second = train_tiny(MACHINES[1], model)
    assert len(first) == 4 and first == second
    metrics = yaml.safe_load(next(v for k, v in first.items() if k.endswith("metrics.json")))
    assert metrics["provenance"]["cpu_numerics"] == "portable"
    assert metrics["provenance"]["mkl_cbwr"] == "COMPATIBLE,STRICT"
    assert metrics["provenance"]["onednn"] is False


@needs_portable
def test_fast_runs_follow_the_kernels_and_verify_says_so(workdir):
    """Without the pin the kernel choice reaches the weights; verify then compares within its
    tolerance and names what differs in bits. With the pin, verify finds the same bits."""
    set_numerics("fast")
    train_tiny(MACHINES[1])
    out = stage("verify", machine=MACHINES[0])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "within tolerance" in out.stdout and "model_sha256" in out.stdout
    set_numerics("portable")
    train_tiny(MACHINES[1])
    out = stage("verify", machine=MACHINES[0])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "same bits        erm" in out.stdout and "1 of 1 runs agree" in out.stdout


@needs_portable
def test_verify_names_a_run_that_differs(workdir):
    set_numerics("portable")
    train_tiny(MACHINES[0])
    history = Path("results/runs/digits/mlp/short/clean/erm/seed0/history.json")
    history.write_text(history.read_text().replace('"val_acc": 0.', '"val_acc": 1.', 1))
    out = stage("verify", machine=MACHINES[0])
    assert out.returncode == 1
    assert "DIFFERS" in out.stdout and "digits-mlp-short-clean-erm-seed0" in out.stdout
    assert "history.json [0].val_acc" in out.stdout
    assert "results/numerics.json is missing" in out.stdout
    assert stage("numerics", "--record", machine=MACHINES[0]).returncode == 0
    out = stage("verify", machine=MACHINES[0])
    assert "every kernel family the same bits" in out.stdout


@needs_portable
def test_numerics_names_the_kernels_this_machine_computes_otherwise(workdir):
    set_numerics("portable")
    out = stage("numerics", "--record", machine=MACHINES[0])
    assert out.returncode == 0, out.stderr
    out = stage("numerics", machine=MACHINES[1])  # portable: another kernel choice, same bits
    assert out.returncode == 0 and "every kernel family the same bits" in out.stdout
    reference = json.loads(Path(numerics.REFERENCE).read_text())
    reference["kernels"]["sqrt"] = "0" * 16  # as a machine whose sqrt rounds otherwise
    Path(numerics.REFERENCE).write_text(json.dumps(reference))
    out = stage("numerics", machine=MACHINES[0])
    assert out.returncode == 1
    assert "DIFFERS" in out.stdout and "computes sqrt otherwise" in out.stdout
    set_numerics("fast")
    out = stage("numerics", machine=MACHINES[0])
    assert "cannot be compared: cpu_numerics fast here" in out.stdout
    assert stage("numerics", "--record", machine=MACHINES[0]).returncode == 2


@needs_portable
def test_the_fingerprint_follows_the_kernel_choice():
    """Unpinned, torch's kernel level reaches softmax and exp2: the digests see it."""
    code = "import json; from pipeline import numerics; print(json.dumps(numerics.fingerprint()))"
    digests = []
    for machine in MACHINES:
        env = {k: v for k, v in os.environ.items() if k not in numerics.PORTABLE_ENV}
        out = subprocess.run(
            [sys.executable, "-c", code], env={**env, **machine, "PYTHONPATH": str(REPO)},
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        digests.append(json.loads(out.stdout))
    changed = {k for k in digests[0] if digests[0][k] != digests[1][k]}
    assert {"softmax", "exp2"} <= changed
    assert numerics.fingerprint() == numerics.fingerprint()


def test_a_half_power_uses_the_sqrt_kernel():
    """Focal loss with gamma 0.5 raises to the power 0.5 in its forward, which torch computes
    with the sqrt kernel: the sqrt digest speaks for that (docs/reproducibility.md; its
    backward's power -0.5 is rsqrt, which no digest covers)."""
    import torch

    x = numerics._values(2**16, 1e-12, 4.0)
    assert torch.equal(x**0.5, x.sqrt())


def test_the_committed_kernels_are_those_fingerprint_digests():
    reference = json.loads((REPO / numerics.REFERENCE).read_text())
    assert reference["cpu_numerics"] == "portable"
    assert sorted(reference["kernels"]) == sorted(numerics._kernels())
    assert all(len(d) == 16 and int(d, 16) >= 0 for d in reference["kernels"].values())


@pytest.mark.skipif(platform.machine() != "x86_64", reason="reads x86 CPU flags")
def test_portable_needs_avx2_and_fma(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse sse2 avx\n")
    assert numerics.portable_unavailable(str(info)) == "the CPU lacks avx2, fma"
    info.write_text("flags\t\t: fpu sse avx avx2 fma\n")
    assert numerics.portable_unavailable(str(info)) is None
    assert "cannot read" in numerics.portable_unavailable(str(tmp_path / "none"))


def test_pin_after_torch_loaded_warns_and_records_what_runs(monkeypatch):
    import torch  # noqa: F401  (loaded, as in a test process)

    for key in numerics.PORTABLE_ENV:
        monkeypatch.delenv(key, raising=False)
    saved = numerics.in_effect()
    try:
        with pytest.warns(UserWarning, match="already loaded"):
            assert numerics.pin("portable") == "fast" == numerics.in_effect()
        assert "ATEN_CPU_CAPABILITY" not in os.environ  # torch has read it already
    finally:
        numerics._in_effect = saved


def test_verify_knows_every_architectures_cost():
    from pipeline.arch_options import ARCH_NAMES
    from pipeline.verify import ARCH_COST

    assert sorted(ARCH_COST) == sorted(ARCH_NAMES)


def test_rewritten_results_do_not_make_the_revision_dirty(tmp_path, monkeypatch):
    from pipeline.io import git_revision

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "metrics.json").write_text("{}")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    monkeypatch.chdir(tmp_path)
    clean = git_revision()
    assert len(clean) == 40
    (tmp_path / "results" / "metrics.json").write_text('{"a": 1}')
    assert git_revision() == clean
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_revision() == clean + "+dirty"


@needs_portable
def test_verify_fills_in_options_added_after_a_run_was_committed(workdir):
    """A committed metrics.json made before an option existed (here the schedule's optimizer
    and fit_curve) took its default: no difference; a non-default value would be one."""
    set_numerics("portable")
    train_tiny(MACHINES[0])
    metrics = Path("results/runs/digits/mlp/short/clean/erm/seed0/metrics.json")
    saved = json.loads(metrics.read_text())
    for key in ("optimizer", "fit_curve"):
        del saved["settings"]["schedule"]["short"][key]
    metrics.write_text(json.dumps(saved))
    out = stage("verify", machine=MACHINES[0])
    assert out.returncode == 0 and "same bits        erm" in out.stdout, out.stdout + out.stderr
    saved["settings"]["schedule"]["short"]["momentum"] = 0.5
    metrics.write_text(json.dumps(saved))
    out = stage("verify", machine=MACHINES[0])
    assert out.returncode == 1 and "momentum" in out.stdout


def test_an_engine_thread_count_unlike_run_threads_is_named_not_followed(monkeypatch, capsys):
    """Snakemake exports a job's `threads` as OMP_NUM_THREADS; the results depend on
    run.threads, so a different count from the engine (e.g. --set-threads) is named, and
    run.threads is what the job uses."""
    import torch

    from pipeline import numerics

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        numerics.configure(1)
        assert capsys.readouterr().err == ""
        monkeypatch.setenv("OMP_NUM_THREADS", "4")
        monkeypatch.setattr(numerics, "_NAMED", set())
        numerics.configure(1)
        assert "given 4 threads (OMP_NUM_THREADS) but params.yaml run.threads is 1" in (
            capsys.readouterr().err
        )
        numerics.configure(1)  # evaluate configures again in the same process: said once
        assert capsys.readouterr().err == ""
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_verify_leaves_out_only_what_the_committed_run_predates():
    """A committed metrics.json made before the detection figures existed is compared without
    them; where it has them, they are compared."""
    from pipeline.verify import differences, with_later_records

    new = {"test": {"accuracy": 90.0}, "detection": {"auc": 0.9}}
    assert list(differences(with_later_records(new, {"test": {"accuracy": 90.0}}),
                            {"test": {"accuracy": 90.0}}, exact=True)) == []  # fmt: skip
    old = {"test": {"accuracy": 90.0}, "detection": {"auc": 0.8}}
    assert list(differences(with_later_records(new, old), old, exact=True)) == [
        "detection.auc: 0.9 vs 0.8"
    ]
