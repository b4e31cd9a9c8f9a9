"""Learning to Teach with Dynamic Loss Functions (L2T-DLF, Wu et al. 2018).

The student minimises l_Phi(p, y) = -sigmoid(y' Phi_t log p) (mean over the batch), with the
loss coefficients Phi_t = W softmax(V s_t) set by the teacher from the student's state s_t:
the iteration over the total, the training accuracy (batches since the last refresh), the dev
accuracy and the dev precision of each class, all in [0, 1] (section 4.1): 3 + C entries for C
classes (13 for 10 classes; 103 for CIFAR-100). The dev statistics are refreshed every
`state_every` steps on the clean validation split.

Teacher optimisation (Algorithm 1), before the run's student trains: each of `teacher_steps`
steps trains a fresh student (a new initialisation) for T = `episode_steps` steps of the run's
optimiser under the current teacher, differentiates the smoothed dev measure (the expected
0-1 accuracy, mean p_y on the validation split) back through those T steps and takes an Adam
step on the teacher. Reverse mode keeps a checkpoint every `segment` steps and recomputes
each segment (pipeline/core/unroll.py: exact at any T, O(T / segment + segment) states; 1
keeps every theta_t as the authors' demo does). With `warm_start` = W, the first W steps of
every student (episodes and the test phase alike) are plain cross entropy and the teacher
sets the loss of the rest, so the teacher learns from, and then teaches, a CE-pretrained
student, as the demo does; reverse mode then runs through the T - W teacher-set steps. The
teacher with the best dev measure is kept (chosen on dev). Then the test phase: the run's
student trains from its own initialisation with that teacher, and is scored on the test
split as every run is.
The state is an input, not a path of the gradient (ds/dtheta = 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from pipeline.core.meta import buffer_copies, params_of
from pipeline.core.student import Student, accuracy, cross_entropy, predict
from pipeline.core.unroll import (
    Step,
    backward_by_segments,
    replayed_rng,
    rng_state,
    segment_length,
)
from pipeline.io import log
from pipeline.methods.base import Batch, Method
from pipeline.methods.settings import DLFSettings
from pipeline.models import fresh_copy
from pipeline.noise import generator


class LossTeacher(nn.Module):
    """Phi = W softmax(V s), W in R^{C x C x N}, V in R^{N x |s|}. Every key starts near the
    identity, so the first loss is close to -sigmoid(log p_y); the keys differ by `spread`
    (Gaussian), because with equal keys Phi does not depend on V, the gradient on V is 0 and
    Adam keeps the keys equal: Phi could never change along training."""

    def __init__(self, classes: int, state_dim: int, keys: int, spread: float = 0.1):
        super().__init__()
        self.V = nn.Parameter(torch.randn(keys, state_dim) * 0.1)
        identity = torch.eye(classes)[:, :, None].repeat(1, 1, keys)
        self.W = nn.Parameter(identity + spread * torch.randn(classes, classes, keys))

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.W @ torch.softmax(self.V @ state, 0)


def copies(tensors: dict) -> dict:
    return {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in tensors.items()}


def dynamic_loss(logits: torch.Tensor, y: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """Per-example l_Phi = -sigmoid(y' Phi log p)."""
    return -torch.sigmoid((phi[y] * F.log_softmax(logits, 1)).sum(1))


def expected_accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The smoothed 0-1 accuracy: the mean probability of the true class."""
    return logits.softmax(1).gather(1, y[:, None]).mean()


class StateTracker:
    """The student's state s_t, its dev part refreshed every `every` steps."""

    def __init__(self, data, total_steps: int, every: int):
        self.data, self.total, self.every = data, total_steps, every
        self.dev = torch.zeros(
            1 + data.num_classes, dtype=data.val_x.dtype, device=data.val_x.device
        )
        self.correct, self.seen = 0.0, 0

    def refresh(self, model: nn.Module) -> None:
        pred = predict(model, self.data.val_x).argmax(1)
        y, c = self.data.val_y, self.data.num_classes
        hits = torch.bincount(pred[pred == y], minlength=c).to(self.dev.dtype)
        predicted = torch.bincount(pred, minlength=c).to(self.dev.dtype)
        precision = hits / predicted.clamp_min(1)
        self.dev = torch.cat([(pred == y).to(self.dev.dtype).mean()[None], precision])
        self.correct, self.seen = 0.0, 0

    def state(self, model: nn.Module, step: int) -> torch.Tensor:
        if step % self.every == 0:
            self.refresh(model)
        train_acc = self.correct / self.seen if self.seen else 0.0
        head = torch.tensor([step / self.total, train_acc], device=self.dev.device)
        return torch.cat([head.to(self.dev.dtype), self.dev])

    def observe(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.correct += float((logits.argmax(1) == y).sum())
        self.seen += len(y)


class DLF(Method):
    Settings = DLFSettings

    SNAPSHOTS = (1 / 3, 2 / 3, 1.0)  # fractions of training at which Phi_t is kept (Figure 4)

    def __init__(self, settings, ctx):
        super().__init__(settings, ctx)
        c = ctx.data.num_classes
        param = ctx.student.model.classifier.weight
        self.teacher = LossTeacher(c, 3 + c, settings.keys, settings.key_spread)
        self.teacher.to(param.device, param.dtype)
        self.optimizer = torch.optim.Adam(self.teacher.parameters(), lr=settings.teacher_lr)
        self.tracker = StateTracker(ctx.data, ctx.student.total_steps, settings.state_every)
        self.trained = False
        self.history: list[dict] = []  # the dev measure along teacher optimisation (Figure 3)
        self.best: dict = {"measure": -1.0}  # the teacher with the best dev measure so far
        self.snapshots: list[dict] = []
        self.run_seed = ctx.generator.initial_seed()  # episodes follow from the run's seed

    # ---- teacher optimisation ----

    def episode(self, k: int) -> dict:
        """One teacher optimisation step: a fresh student for T steps (the first warm_start
        of them cross entropy), then reverse mode through the teacher-set steps."""
        s, data = self.settings, self.ctx.data
        seed = generator("dlf-episode", self.run_seed, k).initial_seed()
        model = fresh_copy(self.student.model, seed)
        length = s.episode_steps or self.student.total_steps
        if s.warm_start >= length:
            raise ValueError(f"dlf: warm_start {s.warm_start} leaves none of {length} steps")
        student = Student(model, self.ctx.schedule, length)
        tracker = StateTracker(data, length, s.state_every)
        every = segment_length(length - s.warm_start, s.segment)
        g = generator("dlf-batches", self.run_seed, k)
        size = self.ctx.schedule.batch_size
        steps, checkpoints = [], []
        for t in range(length):
            index = torch.randint(0, len(data.train_y), (size,), generator=g).to(
                data.train_y.device
            )
            x, y = data.train_x[index], data.train_y[index]
            state = tracker.state(model, t)
            rng = rng_state(x.device)
            if t >= s.warm_start and (t - s.warm_start) % every == 0:
                checkpoints.append((copies(params_of(model)), copies(student.state)))
            logits = model(x)
            tracker.observe(logits, y)
            if t < s.warm_start:
                student.update(cross_entropy(logits, y).mean())
                continue
            with torch.no_grad():
                phi = self.teacher(state)
            lr = student.rule().lr
            student.update(dynamic_loss(logits, y, phi).mean())
            steps.append(Step(lr, self.replay(model, index, state, rng)))
        theta = {n: p.detach().requires_grad_() for n, p in params_of(model).items()}
        with torch.enable_grad():
            logits = functional_call(model, (theta, buffer_copies(model)), (data.val_x,))
            measure = expected_accuracy(logits, data.val_y)
            val_grad = torch.autograd.grad(1 - measure, list(theta.values()))
        self.keep_if_best(float(measure.detach()), k)
        grads = backward_by_segments(
            checkpoints,
            every,
            steps,
            student.rule(),
            dict(zip(theta, val_grad, strict=True)),
            list(self.teacher.parameters()),
        )
        for p, grad in zip(self.teacher.parameters(), grads, strict=True):
            p.grad = grad
        self.step_teacher()
        return {
            "teacher_step": k + 1,
            "dev_expected_accuracy": round(float(measure.detach()), 6),
            "dev_accuracy": round(accuracy(logits, data.val_y), 6),
        }

    def keep_if_best(self, measure: float, k: int) -> None:
        """Keep the teacher that gave this dev measure (before its update) if it is the best."""
        if measure > self.best["measure"]:
            self.best = {
                "measure": measure,
                "step": k,
                "teacher": copies(self.teacher.state_dict()),
            }

    def replay(self, model, index, state, rng):
        """Step t's loss as a function of theta. It keeps the batch's indices, not its images:
        what an episode holds per step is then a few kilobytes (mostly the RNG state), so
        memory stays O(|theta|) in practice, not O(T x batch)."""
        data = self.ctx.data

        def objective(theta):
            x, y = data.train_x[index], data.train_y[index]
            with replayed_rng(rng):
                logits = functional_call(model, (theta, buffer_copies(model)), (x,))
            return dynamic_loss(logits, y, self.teacher(state)).mean()

        return objective

    def optimise_teacher(self) -> None:
        """The teacher steps, then the test phase's teacher: the one whose episode had the
        best dev measure (the last update's result is never measured)."""
        for k in range(len(self.history), self.settings.teacher_steps):
            self.history.append(self.episode(k))
            h = self.history[-1]
            log(
                f"dlf teacher step {k + 1}/{self.settings.teacher_steps}: dev expected accuracy "
                f"{h['dev_expected_accuracy']:.4f}, dev accuracy {h['dev_accuracy']:.4f}"
            )
        self.teacher.load_state_dict(self.best["teacher"])
        log(f"dlf: the teacher of step {self.best['step'] + 1} (best dev measure) is kept")
        self.trained = True

    # ---- the test phase ----

    def step(self, batch: Batch):
        if not self.trained:
            self.optimise_teacher()
        student = self.student
        state = self.tracker.state(student.model, student.step_count)
        logits = student.model(batch.x)
        self.tracker.observe(logits, batch.y)
        if student.step_count < self.settings.warm_start:
            loss = cross_entropy(logits, batch.y).mean()
            student.update(loss)
            return {"loss": loss.detach()}
        with torch.no_grad():
            phi = self.teacher(state)
        loss = dynamic_loss(logits, batch.y, phi).mean()
        student.update(loss)
        self.keep_snapshot(phi)
        return {"loss": loss.detach(), "phi_diag": phi.diagonal().mean()}

    def keep_snapshot(self, phi: torch.Tensor) -> None:
        total = self.student.total_steps
        marks = [max(1, round(f * total)) for f in self.SNAPSHOTS]
        if self.student.step_count in marks:
            self.snapshots.append(
                {"step": self.student.step_count, "phi": phi.round(decimals=4).tolist()}
            )

    def state_dict(self) -> dict:
        return {
            "teacher": self.teacher.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "trained": self.trained,
            "best": self.best,
            "tracker": (self.tracker.dev, self.tracker.correct, self.tracker.seen),
            "metrics": {"teacher_history": self.history, "loss_coefficients": self.snapshots},
        }

    def load_state_dict(self, state: dict) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.trained = state["trained"]
        self.best = state["best"]
        dev, self.tracker.correct, self.tracker.seen = state["tracker"]
        self.tracker.dev = dev.to(self.tracker.dev.device)
        self.history = state["metrics"]["teacher_history"]
        self.snapshots = state["metrics"]["loss_coefficients"]
