"""The train stage: every seed of one (dataset, model, schedule, noise setting, method).

The loop is the same for every method and kind of task (pipeline/task_kinds.py); the method's
`step` does the update. Each epoch ends with the student's clean-validation score (accuracy, or
a translation's BLEU) in the history and a checkpoint (outside the declared outputs), so a
killed job resumes at its last finished epoch, seeds already done included, and ends
bit-identical to an uninterrupted run on CPU: batch order is a function of (seed, epoch), and
the RNG states are saved with the checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from pipeline import numerics
from pipeline.augment import augment
from pipeline.collapse import how_collapsed
from pipeline.config import Params
from pipeline.core.student import Student
from pipeline.examples import ExampleWeights
from pipeline.io import Progress, load_torch, log, save_torch, write_json
from pipeline.methods.base import NOISE_STATISTICS, Batch, Context
from pipeline.methods.registry import METHODS
from pipeline.models import build_model
from pipeline.noise import generator
from pipeline.plan import Cell, Run, teacher_runs
from pipeline.task import TaskData, load_task
from pipeline.task_kinds import Classification, task_kind


def batches(
    data: TaskData,
    batch_size: int,
    seed: int,
    epoch: int,
    augmentation: str,
    unlabelled: bool = False,
    task=None,
):
    """Full batches of the labelled training examples (all of them for a method that reads
    unlabelled ones, whose label is -1) in an order fixed by (seed, epoch) and drawn the task's
    way (a translation groups pairs of similar length)."""
    g = generator("batches", seed, epoch)
    usable = torch.arange(len(data.train_y)) if unlabelled else data.labelled.nonzero()[:, 0]
    order = (task or Classification()).batch_order(usable.cpu(), data, batch_size, g)
    for i in range(len(order) // batch_size):
        index = order[i * batch_size : (i + 1) * batch_size].to(data.train_x.device)
        x = data.train_x[index]
        x = augment(x, augmentation, g)
        yield Batch(x, data.train_y[index], index)


def steps_per_epoch(data: TaskData, batch_size: int, unlabelled: bool = False) -> int:
    n = len(data.train_y) if unlabelled else int(data.labelled.sum())
    if n < batch_size:
        kind = "training" if unlabelled else "labelled training"
        raise ValueError(f"{n} {kind} examples, fewer than one batch of {batch_size}")
    return n // batch_size


def finetune(student: Student, data: TaskData, task, steps: int, seed: int) -> dict:
    """The papers' "+FT": plain steps of the task's loss on the clean validation split at the
    final learning rate, after training."""
    g = generator("finetune", seed)
    size = min(student.schedule.batch_size, len(data.val_y))
    total = 0.0
    for _ in range(steps):
        index = torch.randperm(len(data.val_y), generator=g)[:size].to(data.val_y.device)
        x, y = data.val_x[index], data.val_y[index]
        loss = task.losses(task.forward(student.model, x, y), y).mean()
        student.update(loss)
        total += float(loss)
    return {
        "finetune_steps": steps,
        "step": student.step_count,
        "loss": round(total / steps, 6),
        "seconds": 0.0,
    }


def fingerprint(p: Params, run: Run) -> str:
    """What a checkpoint's training depends on: the run's resolved settings (its pretrained
    teacher's too) and seed, the device and numerics settings, and the pipeline's code (any
    change to a .py file of the package counts, to be safe)."""
    from pipeline.evaluate import settings_of

    teacher = p.teacher_of(run.method)
    what = {
        "settings": settings_of(p, run),
        "teacher": dataclasses.asdict(p.teachers[teacher]) if teacher else None,
        "seed": run.seed,
        "run": dataclasses.asdict(p.run),
    }
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode())  # NaN allowed here
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def set_aside(checkpoint: str | Path) -> Path:
    """Where a checkpoint that cannot be resumed is kept for inspection: one name per run, so
    a run keeps at most one (the latest set aside), and it goes when the run's job is done."""
    path = Path(checkpoint)
    return path.with_name(path.name + ".stale")


def resumable(path: Path, made_with: str) -> dict | None:
    """The checkpoint at `path` if it loads and was made with these settings and code;
    otherwise it is set aside (renamed *.stale, replacing an earlier one, with a log line) and
    training starts over."""
    if not path.exists():
        return None
    try:
        state = load_torch(path)
    except Exception as e:  # truncated, garbage, or not a checkpoint at all
        reason = f"does not load ({type(e).__name__})"
    else:
        if isinstance(state, dict) and state.get("fingerprint") == made_with:
            return state
        reason = "was made with other settings or code"
    aside = set_aside(path)
    path.replace(aside)
    log(f"checkpoint {path} {reason}: set aside as {aside}; training from the start")
    return None


@contextmanager
def named_failure(run: Run, when: object):
    """A NaN or an infinity (core/student.py, or a method's own check) names the run."""
    try:
        yield
    except FloatingPointError as e:
        where = f"epoch {when}" if isinstance(when, int) else when
        raise FloatingPointError(f"{run.name}, {where}, {e}") from e


def train_cell(p: Params, cell: Cell) -> None:
    train_runs(p, cell.runs)


def train_runs(p: Params, runs: list[Run]) -> None:
    """Train and score every seed; the checkpoints go once all are done, so a killed job
    redoes no finished seed (both engines delete a failed job's outputs, not checkpoints),
    and with them any set aside as stale: a finished run supersedes them."""
    for run in runs:
        train(p, run, keep_checkpoint=True)
    for run in runs:
        Path(run.checkpoint).unlink(missing_ok=True)
        set_aside(run.checkpoint).unlink(missing_ok=True)


def load_pretrained(p: Params, teacher: str, run: Run, data: TaskData, device) -> torch.nn.Module:
    """The pretrain stage's teacher for this run's split (its final model, frozen)."""
    (source,) = teacher_runs(p, teacher, run.dataset, run.noise, [run.seed])
    path = Path(source.file("model.pt"))
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: teacher {teacher!r} is not pretrained; run `python -m pipeline pretrain "
            f"--teacher {teacher} --dataset {run.dataset} --noise {run.noise} --seeds {run.seed}`"
        )
    spec = p.models[source.model]
    model = build_model(spec.arch, data.in_shape, data.num_classes, **spec.options).to(device)
    model.load_state_dict(load_torch(path)["model"])
    return model.requires_grad_(False).eval()


def untuned_teacher(p: Params, teacher: str, data: TaskData, seed: int, device) -> torch.nn.Module:
    """A one-stage method's teacher: the `teachers` entry's model as built from its pretrained
    checkpoint, without the pretrain stage's fine-tuning (the method zeroes its head). Built
    under its own seed so that the student's initialisation and dropout draw the same random
    numbers as in any other run of the seed."""
    spec = p.models[p.teachers[teacher].model]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(generator("untuned_teacher", seed).initial_seed()))
        model = build_model(spec.arch, data.in_shape, data.num_classes, **spec.options)
    return model.to(device).requires_grad_(False).eval()


def validation_view(data: TaskData, size: int, seed: int) -> TaskData:
    """The validation examples the history scores (the schedule's `val_subset`): the whole
    split for size 0, else `size` examples drawn once per seed, so that every evaluation of a
    run and every method of the seed see the same ones."""
    if not size or size >= len(data.val_y):
        return data
    order = torch.randperm(len(data.val_y), generator=generator("val_subset", seed))
    index = order[:size].sort().values
    refs = data.val_references
    return dataclasses.replace(
        data,
        val_x=data.val_x[index.to(data.val_x.device)],
        val_y=data.val_y[index.to(data.val_y.device)],
        val_references=[refs[i] for i in index.tolist()] if refs is not None else None,
    )


def best_on_validation(best: dict, epoch_count: int, finetuned: bool) -> dict | None:
    """The best-on-validation epoch ("+ES"): none after fine-tuning, which follows it; its
    weights only when they are not the final model's (the last epoch was not the best)."""
    if finetuned:
        return None
    return {"model": best["model"] if best["epoch"] < epoch_count else None, "epoch": best["epoch"]}


def train(
    p: Params, run: Run, stop_after_epoch: int | None = None, keep_checkpoint: bool = False
) -> Path:
    """Train one run, write model.pt and history.json, and score it (metrics.json); returns
    the run directory. `stop_after_epoch` simulates an interruption (tests of resuming)."""
    schedule, seed = p.schedules[run.schedule], run.seed
    device = numerics.pick_device(p.run.device)
    if device.type == "cpu":
        numerics.configure(p.run.threads)
    out_dir, ckpt_path = Path(run.dir), Path(run.checkpoint)

    data = load_task(run.dataset, run.noise, seed, device)
    torch.manual_seed(int(generator("init", seed).initial_seed()))  # init and dropout
    spec = p.models[run.model]
    model = build_model(spec.arch, data.in_shape, data.num_classes, **spec.options).to(device)
    task = task_kind(data, schedule.label_smoothing)
    method_cls = METHODS[p.method_kind(run.method)]
    unlabelled = method_cls.uses_unlabelled
    per_epoch = steps_per_epoch(data, schedule.batch_size, unlabelled)
    student = Student(model, schedule, per_epoch * schedule.epochs)
    teacher_name, untuned = p.teacher_of(run.method), p.untuned_teacher_of(run.method)
    pretrained = (
        {teacher_name: load_pretrained(p, teacher_name, run, data, device)} if teacher_name else {}
    )
    if untuned:
        pretrained[untuned] = untuned_teacher(p, untuned, data, seed, device)
    start = p.methods[run.method].start_from
    if start:  # fine-tune the pretrained model (of the student's own architecture)
        model.load_state_dict(pretrained[start].state_dict())
    ctx = Context(
        student,
        data,
        schedule,
        generator("method", seed),
        pretrained,
        ExampleWeights(len(data.train_y), device),
        task,
    )
    teacher = method_cls(p.methods[run.method], ctx)

    history: list[dict] = []
    score = task.validation_key  # the best-on-validation model (early stopping)
    best: dict = {score: -1.0}
    start_epoch = 0
    made_with = fingerprint(p, run)
    state = resumable(ckpt_path, made_with)
    if state is not None:
        student.load_state_dict(state["student"])
        teacher.load_state_dict(state["method"])
        ctx.generator.set_state(state["generator"])
        ctx.example_weights.load_state_dict(state["example_weights"])
        torch.set_rng_state(state["rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"])
        history, best, start_epoch = state["history"], state["best"], state["epoch"]
        log(f"resuming {out_dir} from epoch {start_epoch}")

    def save_checkpoint(epochs_done: int) -> None:
        save_torch(
            {
                "student": student.state_dict(),
                "method": teacher.state_dict(),
                "generator": ctx.generator.get_state(),
                "example_weights": ctx.example_weights.state_dict(),
                "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state() if device.type == "cuda" else None,
                "history": history,
                "best": best,
                "epoch": epochs_done,
                "fingerprint": made_with,
            },
            ckpt_path,
        )

    def restart_point(epoch: int, steps_before: int):
        def save() -> None:
            if student.step_count != steps_before:
                raise RuntimeError("a mid-epoch checkpoint after the student stepped")
            save_checkpoint(epoch)

        return save

    scored = validation_view(data, schedule.val_subset, seed)
    progress = Progress(f"train {run.name} step", student.total_steps)
    # what the epoch line leaves out: the counters, and noise statistics where none is known
    quiet = {"epoch", "seconds"} | (set() if data.noise_mask.any() else set(NOISE_STATISTICS))
    for epoch in range(start_epoch, schedule.epochs):
        ctx.checkpoint = restart_point(epoch, student.step_count)
        started = time.monotonic()
        model.train()
        sums: dict[str, torch.Tensor] = {}
        epoch_batches = batches(
            data, schedule.batch_size, seed, epoch, schedule.augment, unlabelled, task
        )
        for batch in epoch_batches:
            with named_failure(run, epoch + 1):
                logs = teacher.step(batch)
            for key, value in logs.items():
                sums[key] = sums.get(key, 0.0) + value
            progress.update(student.step_count)
            step = student.step_count
            if schedule.eval_every and step % schedule.eval_every == 0 and step % per_epoch:
                history.append({"step": step, **task.validation_figures(model, scored, teacher)})
        validates = (epoch + 1) % schedule.val_every_epochs == 0 or epoch + 1 == schedule.epochs
        record = {
            "epoch": epoch + 1,
            "step": student.step_count,
            **{k: round(float(v) / per_epoch, 6) for k, v in sums.items()},
            **(task.validation_figures(model, scored, teacher) if validates else {}),
            **(task.training_fit(model, data) if schedule.fit_curve else {}),
            "seconds": round(time.monotonic() - started, 2),
        }
        history.append(record)
        if validates and record[score] > best[score]:
            best = {
                score: record[score],
                "epoch": epoch + 1,
                "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
            }
        save_checkpoint(epoch + 1)
        progress.update(
            student.step_count,
            " ".join(f"{k}={v}" for k, v in record.items() if k not in quiet),
            milestone=True,
        )
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            progress.close()
            return out_dir
    progress.close()
    collapsed = how_collapsed(history, score, data.num_classes)
    if collapsed:
        log(f"warning: {run.name} collapsed: {collapsed}")

    if teacher.settings.finetune_steps:
        with named_failure(run, "fine-tuning"):
            history.append(finetune(student, data, task, teacher.settings.finetune_steps, seed))
    save_torch(
        {
            "model": model.state_dict(),
            # the learned teacher and what the method recorded; its optimiser moments are
            # for resuming only (twice the teacher's size: 180 MB for a MiniLM teacher)
            "method": {k: v for k, v in teacher.state_dict().items() if k != "optimizer"},
            "best_val": best_on_validation(
                best, epoch_count=schedule.epochs, finetuned=bool(teacher.settings.finetune_steps)
            ),
            "example_weights": ctx.example_weights.state_dict(),
            # how the inputs were standardised (pipeline/task.py standardise): to apply the
            # model to new rows
            "inputs": data.input_stats,
        },
        out_dir / "model.pt",
    )
    # history.json is committed and compared across runs: no wall-clock times in it.
    write_json(
        [{k: v for k, v in r.items() if k != "seconds"} for r in history], out_dir / "history.json"
    )
    log(f"trained {out_dir} in {sum(r.get('seconds', 0) for r in history):.1f}s of epochs")
    from pipeline.evaluate import evaluate

    metrics = evaluate(p, run, data)
    log(f"test {task.headline} {metrics['test'][task.headline]:.2f}")
    if not keep_checkpoint:
        os.remove(ckpt_path)
    return out_dir
