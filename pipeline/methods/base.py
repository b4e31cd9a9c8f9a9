"""The interface every teaching method implements."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.func import functional_call

from pipeline.config import ScheduleSpec
from pipeline.core.meta import buffer_copies, params_of
from pipeline.core.student import Student, first_bad
from pipeline.examples import ExampleWeights
from pipeline.methods.settings import MethodSettings
from pipeline.task import TaskData
from pipeline.task_kinds import Classification, Translation


@dataclass
class Batch:
    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor  # positions in the training split (for per-example state and analysis)


@dataclass
class Context:
    """What a method may use: the student, the run's data (validation split included; never the
    test split), the schedule and a seeded generator for the method's own random choices."""

    student: Student
    data: TaskData
    schedule: ScheduleSpec
    generator: torch.Generator
    # pretrained teachers by params.yaml `teachers` name (the pretrain stage's models), for a
    # method whose settings name one in `teacher`
    pretrained: dict[str, torch.nn.Module] = field(default_factory=dict)
    # each training example's weights over training, for examples.csv (reweighting methods)
    example_weights: ExampleWeights | None = None
    # the kind of task (pipeline/task_kinds.py): how the student is called and its loss
    task: Classification | Translation = field(default_factory=Classification)
    # saves a checkpoint from which the current epoch restarts, with the method's state as it
    # is now: for a method's long work before the student's first step of an epoch (DLF's
    # teacher optimisation), so that a killed run resumes from there; None outside a run
    checkpoint: Callable[[], None] | None = None


class Method:
    Settings = MethodSettings
    uses_unlabelled = False  # True: batches include unlabelled examples (label -1)
    # the kinds of task (pipeline/task_kinds.py) the method is written for; settings.py's
    # TASK_KINDS says the same for params.yaml's check
    task_kinds = ("classification",)
    # True: the method's state_dict()["teacher"] is a model of the student's architecture and
    # task, which the evaluate stage scores on the test split beside the student (MPL)
    scores_teacher = False

    def __init__(self, settings, ctx: Context):
        if ctx.task.name not in self.task_kinds:
            raise ValueError(
                f"{type(self).__name__} is written for {', '.join(self.task_kinds)} tasks, not "
                f"{ctx.task.name}"
            )
        self.settings = settings
        self.ctx = ctx

    def losses(self, model, x: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:
        """The task's per-example training loss of `model` (a module, or functional_call
        bound to parameters) on (x, y)."""
        task = self.ctx.task
        return task.losses(task.forward(model, x, y, **kwargs), y)

    @property
    def student(self) -> Student:
        return self.ctx.student

    def step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One training step; returns detached scalars to log (averaged over an epoch)."""
        raise NotImplementedError

    def step_teacher(self) -> None:
        """One step of the teacher's torch optimiser (`self.optimizer` on `self.teacher`, whose
        .grad the method has set), under the same check as the student's update: a gradient
        that is not finite stops the run before the step, a parameter after it, naming it."""
        step = self.student.step_count + 1
        params = dict(self.teacher.named_parameters())
        grads = {k: p.grad for k, p in params.items() if p.grad is not None}
        first_bad("teacher gradient", grads, step)
        self.optimizer.step()
        first_bad("teacher parameter", params, step)

    def note_weights(self, batch: Batch, weights: torch.Tensor) -> None:
        """Record the weights this step gave the batch's examples, on a scale where 1 is
        uniform (a batch-normalised weight times the batch size), for examples.csv."""
        if self.ctx.example_weights is not None:
            self.ctx.example_weights.add(batch.index, weights)

    def val_index(self, size: int | None = None) -> torch.Tensor:
        """Positions of a random batch of the clean validation split (the teacher's data)."""
        data = self.ctx.data
        size = min(
            size or self.ctx.schedule.val_batch_size or self.ctx.schedule.batch_size,
            len(data.val_y),
        )
        index = torch.randperm(len(data.val_y), generator=self.ctx.generator)[:size]
        return index.to(data.val_y.device)

    def val_batch(self, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A random batch of the clean validation split (the teacher's data)."""
        index = self.val_index(size)
        return self.ctx.data.val_x[index], self.ctx.data.val_y[index]

    def gradient_cosine(self, train_grads, vx: torch.Tensor, vy: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of the student's training gradient (`train_grads`, one tensor per
        parameter) and of its cross-entropy gradient on the labelled batch (vx, vy): MPL
        Figure 8. Buffers untouched."""
        model = self.student.model
        params = params_of(model)
        out = functional_call(model, (params, buffer_copies(model)), (vx,))
        val = torch.autograd.grad(F.cross_entropy(out, vy), list(params.values()))
        flat = [torch.cat([g.reshape(-1) for g in grads]) for grads in (train_grads, val)]
        return F.cosine_similarity(*flat, dim=0).detach()

    def validation_metrics(self, student_logits: torch.Tensor, val_x, val_y) -> dict:
        """Extra figures for the history's validation records (e.g. a learning teacher's
        validation loss), at the validation points of the schedule, given the student's logits
        on the validation examples val_x (the schedule's `val_subset`) with labels val_y; in
        eval mode (no random state drawn); none by default."""
        return {}

    def state_dict(self) -> dict:
        """Method state beyond the student (a teacher, its optimiser) for resuming."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


# what a reweighting method logs of its weights where the noise stage corrupted labels
NOISE_STATISTICS = ("w_clean", "w_noisy")


def weight_by_noise(w: torch.Tensor, noisy: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean weight of clean and of corrupted examples, times the batch size (1 = uniform).
    Analysis only: the method never sees which labels are corrupted."""
    n = len(w)
    out = {}
    for name, mask in zip(NOISE_STATISTICS, (~noisy, noisy), strict=True):
        count = mask.sum().clamp_min(1)
        out[name] = (w * mask).sum() / count * n
    return out
