"""One command line for both workflow engines: `python -m pipeline <stage> [options]`.

Snakemake's rules and dvc.yaml call exactly these commands; each workflow stage reads
params.yaml (checked first) and writes its outputs atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from pathlib import Path

from pipeline import numerics, plan
from pipeline.config import PARAMS_FILE, ParamsError, load, load_run
from pipeline.io import CorruptFile


def missing_packages(p) -> str | None:
    """What the active profile needs that is not installed (found, not imported)."""
    import importlib.util

    needs = {"translation": ("fairseq", "sentencepiece")}
    kinds = {p.datasets[e.dataset].facts.task for e in p.active_experiments.values()}
    absent = [m for k in kinds for m in needs.get(k, ()) if importlib.util.find_spec(m) is None]
    if not absent:
        return None
    return (
        f"profile {p.profile} has translation experiments and {', '.join(absent)} is not "
        "installed: run workflow/setup.sh (it builds fairseq-fixed 0.12.3.1)"
    )


def cmd_check(p, args) -> None:
    """Check params.yaml and that dvc.yaml (and .gitignore's generated block) match it;
    --record: write a fixed line there."""
    from pipeline.io import write_text

    stale = Path("dvc.yaml").exists() and Path("dvc.yaml").read_text() != plan.dvc_yaml(p)
    if stale:
        raise ParamsError("dvc.yaml does not match params.yaml: run `python -m pipeline dvc-yaml`")
    ignore = Path(plan.GITIGNORE)
    text = ignore.read_text() if ignore.exists() else None
    if text is not None and plan.with_gitignore_block(text, plan.gitignore_block(p)) != text:
        raise ParamsError(
            ".gitignore does not keep the files the suspects stages read: run "
            "`python -m pipeline dvc-yaml`"
        )
    missing = missing_packages(p)
    if missing:
        raise ParamsError(missing)
    if args.record:
        write_text("params.yaml passed `python -m pipeline check`\n", args.record)
    print(f"params.yaml is valid: profile {p.profile}, {len(plan.jobs(p))} jobs")


def cmd_schema(p, args) -> None:
    """Write the JSON schema of params.yaml (after adding or changing an option)."""
    from pipeline.config import SCHEMA_FILE, schema_yaml
    from pipeline.io import write_text

    write_text(schema_yaml(), SCHEMA_FILE)
    print(f"wrote {SCHEMA_FILE}")


def cmd_dvc_yaml(p, args) -> None:
    """Write dvc.yaml for params.yaml's profile (after changing the experiment grid), and the
    block of .gitignore that keeps the per-example files its suspects stages read."""
    from pipeline.io import write_text

    write_text(plan.dvc_yaml(p), "dvc.yaml")
    ignore = Path(plan.GITIGNORE)
    text = ignore.read_text() if ignore.exists() else ""
    write_text(plan.with_gitignore_block(text, plan.gitignore_block(p)), ignore)
    print(
        f"wrote dvc.yaml: {len(plan.jobs(p))} stages for profile {p.profile}; and the files "
        "that .gitignore keeps"
    )


def cmd_prepare(p, args) -> None:
    """Load a dataset from its source into one tensor file."""
    from pipeline.data.sources import prepare

    data = prepare(p, args.dataset)
    print(
        f"prepared {args.dataset}: {len(data.y)} examples, {data.num_classes} classes, "
        f"{int(data.is_test.sum())} in the official test split"
    )


def cmd_noise(p, args) -> None:
    """Split a prepared dataset per seed and corrupt the training labels."""
    from pipeline.noise import write_splits

    infos = write_splits(p, args.dataset, args.noise, args.seeds)
    for seed, info in zip(args.seeds, infos, strict=True):
        print(
            f"split {args.dataset}/{args.noise}/seed{seed}: {info['sizes']}, "
            f"realised noise rate {info['realised_rate']:.4f}"
        )


def _run(args) -> plan.Run:
    return plan.Run(**{f.name: getattr(args, f.name) for f in dataclasses.fields(plan.Run)})


def cmd_train(p, args) -> None:
    """Train one setting's student on every seed and score it on the test split."""
    from pipeline.train import train_cell

    train_cell(
        p, plan.Cell(**{f.name: getattr(args, f.name) for f in dataclasses.fields(plan.Cell)})
    )


def cmd_pretrain(p, args) -> None:
    """Pretrain a teacher (params.yaml `teachers`) on every seed's split."""
    from pipeline.train import train_runs

    train_runs(p, plan.teacher_runs(p, args.teacher, args.dataset, args.noise, args.seeds))


def cmd_evaluate(p, args) -> None:
    """Re-score one seed's saved model.pt into metrics.json."""
    from pipeline.evaluate import evaluate

    run = _run(args)
    m = evaluate(p, run)
    metric = "bleu" if "bleu" in m["test"] else "accuracy"
    print(f"{run.name}: test {metric} {m['test'][metric]:.2f}")


def cmd_report(p, args) -> None:
    """An experiment's table (mean and 95 percent CI over seeds, beside the papers) and figure."""
    from pipeline.report import report

    print(report(p, args.experiment).to_string(index=False))


def cmd_fidelity(p, args) -> None:
    """One row per headline claim of the papers: ours, theirs and a verdict from the CIs."""
    from pipeline.report import fidelity

    print(fidelity(p).to_string(index=False))


def cmd_weights(p, args) -> None:
    """Figure of what the teachers produced: example weights, or DLF's Figures 3-4."""
    from pipeline.report import weights_figure

    weights_figure(p, args.experiment)


def cmd_regions(p, args) -> None:
    """Figures for two-dimensional data: decision regions and gradient cosine (MPL 1 and 8)."""
    from pipeline.regions import regions_figures

    regions_figures(p, args.experiment)


def cmd_suspects(p, args) -> None:
    """Each method's suspect labels and how well its ranking finds the corrupted ones."""
    from pipeline.suspects import suspects

    suspects(p, args.experiment)


def cmd_verify(p, args) -> int:
    """Retrain one committed run per method kind and compare it with the committed files."""
    from pipeline.verify import verify

    return verify(p, args.kinds.split(",") if args.kinds else None)


def cmd_numerics(p, args) -> int:
    """Compare this machine's kernels with those that made the committed results; --record:
    write this machine's as theirs (after regenerating every result here)."""
    from pipeline.io import read_json, write_json

    numerics.configure(p.run.threads)
    here = numerics.this_machine()
    if args.record:
        if here["cpu_numerics"] != "portable":
            raise ParamsError(
                f"the kernels of {here['cpu_numerics']} numerics repeat on no other machine: "
                "record with run.cpu_numerics portable"
            )
        write_json(here, numerics.REFERENCE)
        print(f"wrote {numerics.REFERENCE}: the kernels of {here['machine']}")
        return 0
    if not Path(numerics.REFERENCE).exists():
        raise FileNotFoundError(f"{numerics.REFERENCE}: no committed kernels to compare with")
    reference = read_json(numerics.REFERENCE)
    print(f"{'kernel':10} {'this machine':18} {'committed':18}")
    for name, digest in sorted(reference["kernels"].items()):
        mine = here["kernels"].get(name, "-")
        print(f"{name:10} {mine:18} {digest:18} {'same' if mine == digest else 'DIFFERS'}")
    print(numerics.summary(reference, here))
    return 1 if numerics.differences_from(reference, here) else 0


def cmd_bench(args) -> None:
    """Step time and peak memory: the methods, the distillation methods, reverse passes."""
    from pipeline.bench import run

    run(
        args.suite,
        args.cases,
        args.steps,
        args.device,
        args.out,
        rounds=args.rounds,
        quick=args.quick,
        images=args.images,
    )


def _bench_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--suite",
        default="steps",
        choices=["steps", "distill", "reverse", "epoch"],
        help="steps: each method's step vs ERM; distill: the distillation methods on text "
        "(LGTM Table 3); reverse: DIR's teacher update vs B and DLF's teacher step vs T; "
        "epoch: an ERM epoch with the data on the device (channels-last, bf16, compiled)",
    )
    parser.add_argument(
        "--images", type=int, help="images of the epoch suite (default: CPU 2,048, GPU 50,000)"
    )
    parser.add_argument(
        "--cases",
        help="model:batch list, e.g. resnet32:512,wrn_28_10:100 (default: a CPU or a GPU set)",
    )
    parser.add_argument(
        "--steps", type=int, default=20, help="timed steps per measurement (steps, distill)"
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="timings of each method beside ERM (quick: >= 5)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one small case (CPU: resnet8:8), under 2 minutes with fast numerics",
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--numerics",
        default="fast",
        choices=["fast", "portable"],
        help="CPU kernels (a GPU's are not affected): this CPU's fastest, or the workflow's "
        "portable ones (run.cpu_numerics)",
    )
    parser.add_argument("--out", default="results/bench", help="output folder")


def seed_list(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected seeds like 0,1,2") from None
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: distinct seeds >= 0 expected")
    return seeds


def _run_args(parser: argparse.ArgumentParser, many: bool = False) -> None:
    for f in dataclasses.fields(plan.Run)[:-1]:
        parser.add_argument(f"--{f.name}", required=True)
    if many:
        parser.add_argument("--seeds", required=True, type=seed_list, help="e.g. 0,1,2")
    else:
        parser.add_argument("--seed", required=True, type=int)


STAGES = {
    "check": (cmd_check, lambda s: s.add_argument("--record", help="a file to write if valid")),
    "dvc-yaml": (cmd_dvc_yaml, None),
    "schema": (cmd_schema, None),
    "prepare": (cmd_prepare, lambda s: s.add_argument("--dataset", required=True)),
    "noise": (
        cmd_noise,
        lambda s: (
            s.add_argument("--dataset", required=True),
            s.add_argument("--noise", required=True),
            s.add_argument("--seeds", required=True, type=seed_list, help="e.g. 0,1,2"),
        ),
    ),
    "pretrain": (
        cmd_pretrain,
        lambda s: (
            s.add_argument("--teacher", required=True),
            s.add_argument("--dataset", required=True),
            s.add_argument("--noise", required=True),
            s.add_argument("--seeds", required=True, type=seed_list, help="e.g. 0,1,2"),
        ),
    ),
    "train": (cmd_train, lambda s: _run_args(s, many=True)),
    "evaluate": (cmd_evaluate, _run_args),
    "report": (cmd_report, lambda s: s.add_argument("--experiment", required=True)),
    "fidelity": (cmd_fidelity, lambda s: None),
    "weights": (cmd_weights, lambda s: s.add_argument("--experiment", required=True)),
    "regions": (cmd_regions, lambda s: s.add_argument("--experiment", required=True)),
    "suspects": (cmd_suspects, lambda s: s.add_argument("--experiment", required=True)),
    "verify": (
        cmd_verify,
        lambda s: s.add_argument(
            "--kinds", help="method kinds to check, e.g. erm,l2rw (default: every kind)"
        ),
    ),
    "numerics": (
        cmd_numerics,
        lambda s: s.add_argument(
            "--record", action="store_true", help="write this machine's kernels as the results'"
        ),
    ),
    "bench": (cmd_bench, _bench_args),
}


def _check_names(p, args) -> None:
    """Names on the command line must exist in params.yaml."""
    plan.check_names(p, vars(args), "--{key} {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    parser.add_argument("--params", default=PARAMS_FILE, help="settings file (params.yaml)")
    sub = parser.add_subparsers(dest="stage", required=True)
    for name, (func, add_args) in STAGES.items():
        s = sub.add_parser(name, help=(func.__doc__ or "").strip().split("\n")[0] or None)
        if add_args:
            add_args(s)
    args = parser.parse_args(argv)
    if args.stage == "bench":  # needs no params.yaml (runs on a bare GPU machine)
        numerics.pin(args.numerics)  # before the bench loads torch; its processes inherit it
        cmd_bench(args)
        return 0
    try:
        numerics.pin(load_run(args.params).cpu_numerics)  # before anything loads torch
        p = load(args.params)
        _check_names(p, args)
        stage_args = {k: v for k, v in vars(args).items() if k not in ("params", "stage")}
        job = plan.job_for(p, args.stage, stage_args)
        with tee_output(job.log if job else None):
            return STAGES[args.stage][0](p, args) or 0
    except (ParamsError, FileNotFoundError, CorruptFile) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # a run diverged: its name, step and tensor, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 1


class _Tee:
    def __init__(self, stream, log):
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        if not text.startswith("\r"):  # a terminal's progress line is not worth logging
            self.log.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()
        self.log.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()


@contextlib.contextmanager
def tee_output(path: str | None):
    """Copy stdout and stderr into the job's log file (results/logs/<stage>/<job>.log)."""
    if path is None:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as log:
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(sys.stdout, log), _Tee(sys.stderr, log)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = saved


if __name__ == "__main__":
    sys.exit(main())
