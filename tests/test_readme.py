"""The front door: the README's commands run as written, and every page it and docs/ link to
exists. The commands are read out of the README itself, so a test fails when it drifts."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
BIN = REPO / ".venv" / "bin"


def shell_blocks(text: str) -> list[str]:
    """The commands of the ```sh blocks, one string per line."""
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def steps(command: str) -> list[list[str]]:
    """A command line's steps (split on &&), each as its words."""
    return [shlex.split(step) for step in command.split("&&")]


def test_the_readme_has_the_two_commands_and_stays_short():
    commands = shell_blocks(README.read_text())
    assert len(commands) == 2, commands
    setup, tests = commands
    assert steps(setup)[0] == ["bash", "workflow/setup.sh"]
    assert steps(tests)[-1] == ["pytest"]
    assert len(README.read_text().splitlines()) <= 200
    ci = (REPO / ".ci/run").read_text()
    assert tests in ci, ".ci/run must run the README's test command"


def test_the_readme_commands_run_as_written():
    """Each step of the README's commands: the set-up script parses, the venv it makes is
    there, and the workflow command is accepted by Snakemake (as a dry run: the real run is
    the workflow tests' business)."""
    setup, tests = shell_blocks(README.read_text())
    for words in steps(setup) + steps(tests):
        if words[0] == "bash":
            subprocess.run(["bash", "-n", *words[1:]], cwd=REPO, check=True)
        elif words[0] == ".":
            assert (REPO / words[1]).is_file(), words
        elif words[0] == "snakemake":
            subprocess.run(
                [str(BIN / "snakemake"), *words[1:], "-n", "--quiet", "rules"],
                cwd=REPO,
                check=True,
                capture_output=True,
            )
        else:
            assert (BIN / words[0]).is_file(), f"{words[0]} is not installed in .venv"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_resolves(page):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_stage_and_profile_named_exists(page):
    from pipeline.__main__ import STAGES

    text = page.read_text()
    for stage in re.findall(r"python -m pipeline ([a-z][a-z-]*)", text):
        assert stage in STAGES, f"{page.name} names an unknown stage: {stage}"
    for profile in re.findall(r"--workflow-profile (\S+?)[`)\s]", text):
        assert (REPO / profile / "config.yaml").is_file(), f"{page.name}: no profile {profile}"
