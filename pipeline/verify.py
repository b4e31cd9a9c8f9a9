"""The verify command: retrain a sample of the committed runs and compare them with the files.

One run per method kind of the active profile (the cheapest to retrain, see `sample`), with
the pretrained teachers it needs, retrained from the raw data in a scratch directory, so
nothing of the repository is touched. Where the committed run and
the new one were both made on a CPU with portable numerics the comparison is exact: every
figure of history.json and metrics.json (the trained weights' SHA-256 included) must be equal.
Otherwise (fast numerics or a GPU, on either side) numbers must agree within TOLERANCE.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline import numerics, plan
from pipeline.config import Params
from pipeline.io import log, read_json

TOLERANCE = 0.02  # relative, absolute for values below 1: what fast numerics or a GPU keep
IGNORED = {("provenance", "git")}  # the commit that made the file, not its result
NOT_COMPARED = {"model_sha256", "provenance"}  # what differs by design without exact numerics
LATER_RECORDS = {"detection"}  # metrics.json keys added since some committed runs were made
# cheapest per example first
ARCH_COST = ("mlp", "lenet", "preact_resnet", "wrn", "text_bert", "fairseq")
INPUTS = (
    "results/data/external",
    "results/data/torchvision",
    "results/data/glue",
    "results/models",
)


def steps_seen(run: plan.Run) -> float:
    """A committed run's student steps (its history's last step); inf when it has none."""
    path = Path(run.file("history.json"))
    if not path.exists():
        return math.inf
    return max(r.get("step", 0) for r in read_json(path))


def sample(p: Params, kinds: list[str] | None = None) -> list[plan.Run]:
    """Per method kind, the committed run of the profile that costs least to retrain, on
    the profile's first seed: the cheapest architecture per example (ARCH_COST), then the
    fewest training examples, then name order."""
    best: dict[str, tuple[tuple, plan.Run]] = {}
    for experiment in p.active_experiments:
        for run in plan.runs(p, experiment):
            kind = p.method_kind(run.method)
            if run.seed != p.seeds[0] or (kinds and kind not in kinds):
                continue
            arch = p.models[run.model].arch
            examples = steps_seen(run) * p.schedules[run.schedule].batch_size
            cost = (ARCH_COST.index(arch), examples, run.name)
            if kind not in best or cost < best[kind][0]:
                best[kind] = (cost, run)
    missing = sorted(set(kinds or ()) - set(best))
    if missing:
        raise ValueError(f"no run of the profile has method kind {', '.join(missing)}")
    return [best[k][1] for k in sorted(best)]


def differences(new, old, exact: bool, path: str = "") -> Iterator[str]:
    """Where two JSON values differ: exactly, or beyond TOLERANCE for numbers."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            here = f"{path}.{key}" if path else key
            if tuple(here.split(".")) in IGNORED or (not exact and key in NOT_COMPARED):
                continue
            if key not in old or key not in new:
                yield f"{here}: only in the {'new' if key in new else 'committed'} run"
            else:
                yield from differences(new[key], old[key], exact, here)
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(new, old, strict=True)):
            yield from differences(a, b, exact, f"{path}[{i}]")
    elif _number(old) and _number(new) and not exact:
        if abs(new - old) > TOLERANCE * max(1.0, abs(old)):
            yield f"{path}: {new} vs {old}"
    elif new != old:
        yield f"{path}: {_short(new)} vs {_short(old)}"


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def exact_pair(new: dict, old: dict) -> bool:
    """Both runs made on a CPU with portable numerics: then their bits must agree."""
    return all(
        m["provenance"].get("cpu_numerics") == "portable" and m["provenance"]["device"] == "cpu"
        for m in (new, old)
    )


def teacher_runs(p: Params, run: plan.Run) -> list[plan.TeacherRun]:
    """The pretrained teacher a run needs, on its seed's split (none for most methods)."""
    teacher = p.teacher_of(run.method)
    return plan.teacher_runs(p, teacher, run.dataset, run.noise, [run.seed]) if teacher else []


@contextmanager
def scratch_directory(repo: Path) -> Iterator[Path]:
    """A working directory with the repository's raw inputs linked in, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="verify-"))
    try:
        for name in INPUTS:
            if (repo / name).exists():
                (path / name).parent.mkdir(parents=True, exist_ok=True)
                (path / name).symlink_to(repo / name)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def retrain(p: Params, run: plan.Run) -> None:
    """A run and its inputs from scratch in the current directory (teachers first), each
    input made once for every run that shares it."""
    from pipeline.data.sources import prepare
    from pipeline.noise import write_splits
    from pipeline.train import train_runs

    if not Path(plan.prepared_path(run.dataset)).exists():
        prepare(p, run.dataset)
    if not Path(plan.split_path(run.dataset, run.noise, run.seed)).exists():
        write_splits(p, run.dataset, run.noise, [run.seed])
    for source in teacher_runs(p, run):
        if not Path(source.file("model.pt")).exists():
            train_runs(p, [source])
    train_runs(p, [run])


def with_later_defaults(p: Params, metrics: dict) -> dict:
    """A committed metrics.json with the options added to the code since it was made filled
    in at their defaults (what that run used), so that they are not reported as differences."""
    specs = {
        "dataset": p.datasets,
        "noise": p.noise,
        "model": p.models,
        "schedule": p.schedules,
        "method": p.methods,
    }
    for section, entries in metrics.get("settings", {}).items():
        for name, values in entries.items():
            for f in dataclasses.fields(specs[section][name]):
                if f.name not in values and f.default is not dataclasses.MISSING:
                    values[f.name] = json.loads(json.dumps(f.default))
    return metrics


def with_later_records(new: dict, committed: dict) -> dict:
    """The new metrics.json less what the code records since the committed one was made (the
    detection figures of its examples' ranking), so that it is not reported as a difference."""
    return {k: v for k, v in new.items() if k in committed or k not in LATER_RECORDS}


def compare(p: Params, run: plan.Run, repo: Path) -> tuple[list[str], list[str]]:
    """Differences of the run retrained here from the committed one in `repo`: (in any bit,
    beyond what the comparison allows: nothing when both runs used portable numerics on a
    CPU, TOLERANCE otherwise). Its noise split's summary must be equal."""
    pairs = {
        name: (read_json(run.file(name)), read_json(repo / run.file(name)))
        for name in ("metrics.json", "history.json")
    }
    new, committed = pairs["metrics.json"]
    pairs["metrics.json"] = (with_later_records(new, committed), with_later_defaults(p, committed))
    exact = exact_pair(*pairs["metrics.json"])
    bits: list[str] = []
    allowed: list[str] = []
    for name, (new, old) in pairs.items():
        bits += [f"{name} {d}" for d in differences(new, old, exact=True)]
        allowed += [f"{name} {d}" for d in differences(new, old, exact=exact)]
    split = plan.split_summary_path(run.dataset, run.noise, run.seed)
    if (repo / split).exists():
        new, old = read_json(split), read_json(repo / split)
        found = [f"{split} {d}" for d in differences(new, old, exact=True)]
        bits, allowed = bits + found, allowed + found
    return bits, allowed


def kernels_note(p: Params, repo: Path) -> str:
    """Whether this machine's kernels compute as those that made the committed results."""
    path = repo / numerics.REFERENCE
    if not path.exists():
        return f"{numerics.REFERENCE} is missing: the kernels are not compared"
    numerics.configure(p.run.threads)
    return numerics.summary(read_json(path), numerics.this_machine())


def verify(p: Params, kinds: list[str] | None = None) -> int:
    """Retrain the sample and print one line per run; 1 if any run differs, else 0."""
    repo = Path.cwd()
    runs = sample(p, kinds)
    for run in runs:
        for name in ("history.json", "metrics.json"):
            if not Path(run.file(name)).exists():
                raise FileNotFoundError(f"{run.file(name)}: no committed run to compare with")
    print(f"verify: {len(runs)} runs, one per method kind, retrained from scratch")
    kernels = kernels_note(p, repo)
    print(f"verify: {kernels}")
    failed = 0
    with scratch_directory(repo) as scratch:
        os.chdir(scratch)
        try:
            for run in runs:
                log(f"verify: retraining {run.name}")
                retrain(p, run)
                bits, found = compare(p, run, repo)
                for source in teacher_runs(p, run):
                    if (repo / source.file("metrics.json")).exists():
                        more = compare(p, source, repo)
                        bits, found = bits + more[0], found + more[1]
                verdict = "DIFFERS" if found else "within tolerance" if bits else "same bits"
                failed += bool(found)
                print(f"{verdict:16} {p.method_kind(run.method):14} {run.name}")
                shown = found or bits  # what fails, else what differs within tolerance
                for line in shown[:5]:
                    print(f"{'':18}{line}")
                if len(shown) > 5:
                    print(f"{'':18}... and {len(shown) - 5} more")
        finally:
            os.chdir(repo)
    print(f"verify: {len(runs) - failed} of {len(runs)} runs agree, {failed} differ")
    if failed:
        print(f"verify: {kernels}")
    return 1 if failed else 0
