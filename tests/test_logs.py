"""What a train job prints: noise statistics only where the noise is known, and no warning
from torch's internals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml


def pipeline(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", *args], check=True, capture_output=True, text=True
    )
    return done.stdout + done.stderr


def train_output(noise: str) -> str:
    pipeline("prepare", "--dataset", "digits")
    pipeline("noise", "--dataset", "digits", "--noise", noise, "--seeds", "0")
    cell = ["--dataset", "digits", "--model", "mlp", "--schedule", "short", "--noise", noise]
    return pipeline("train", *cell, "--method", "l2rw", "--seeds", "0")


def test_a_clean_run_logs_no_noise_statistics_and_no_jit_warning(workdir, tiny_raw):
    tiny_raw["methods"]["l2rw"] = {}
    Path("params.yaml").write_text(yaml.safe_dump(tiny_raw, sort_keys=False))
    clean = train_output("clean")
    assert "loss=" in clean and "w_noisy" not in clean and "w_clean" not in clean
    assert "jit.script" not in clean
    noisy = train_output("uniform40")
    assert "w_noisy=" in noisy and "jit.script" not in noisy
