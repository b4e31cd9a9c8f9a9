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
split as every run is. A killed run resumes after its last finished teacher step.
The state is an input, not a path of the gradient (ds/dtheta = 0).

Where the paper is silent the first author's public demo (L2T_loss) chooses, and these are
options: `bias`, a learned coefficient b_y per class inside the sigmoid, -sigmoid(y' Phi log p
+ b_y), zero at the start (the demo's default), which lets the teacher move the sigmoid to its
steep region; `metric: sharp_01`, the demo's dev measure, one minus the sharp smoothed 0-1
error mean(2 sigmoid(K (max_j p_j - p_y)) - 1) with K = `metric_sharpness` (50 in the demo);
and its protocol, a CE-pretrained student that every episode and the test phase start from,
which is `start_from` (a params.yaml teacher of the student's own model, trained by cross
entropy).

Translation (section 4.2): Phi in R^|V| is the diagonal of the interaction, a sentence's loss
-sum_r sigmoid(Phi_{y_r} log p(y_r)) over its target tokens, s_t = (t / T, train BLEU, dev BLEU)
of greedy translations (train BLEU on a fixed sample of as many training pairs as the dev split
has), and the smoothed dev measure the expected token accuracy, teacher-forced. With
`start_from` every episode starts from the pretrained baseline (the paper's warm-start model).
With `hold_eos` the coefficient of the end of sentence stays 1 (its bias 0): the teacher-forced
measure does not see the decoded length, and a teacher free to raise `</s>` wins it by teaching
the student to stop early (measured: brevity penalty 0.65-0.69 against ERM's 0.84-0.87).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.meta import bound, params_of
from pipeline.core.student import Student, predict
from pipeline.core.unroll import (
    Step,
    backward_by_segments,
    replayed_rng,
    rng_state,
    segment_length,
)
from pipeline.data.translation_sources import EOS, PAD
from pipeline.io import log
from pipeline.methods.base import Batch, Method
from pipeline.methods.settings import DLFSettings
from pipeline.models import fresh_copy
from pipeline.noise import generator


class LossTeacher(nn.Module):
    """Phi = W softmax(V s), W in R^{shape x N}, V in R^{N x |s|} (shape C x C, or |V| for a
    translation). Every key starts near the identity, so the first loss is close to
    -sigmoid(log p_y); the keys differ by `spread` (Gaussian), because with equal keys Phi does
    not depend on V, the gradient on V is 0 and Adam keeps the keys equal: Phi could never
    change along training. With `bias`, b (one per class or target token) is a parameter that
    starts at 0, as in the authors' demo; otherwise it is None."""

    def __init__(
        self,
        identity: torch.Tensor,
        state_dim: int,
        keys: int,
        spread: float = 0.1,
        bias: bool = False,
    ):
        super().__init__()
        self.V = nn.Parameter(torch.randn(keys, state_dim) * 0.1)
        start = identity[..., None].repeat(*[1] * identity.dim(), keys)
        self.W = nn.Parameter(start + spread * torch.randn(*identity.shape, keys))
        # drawn after W and V: the unbiased teacher's start is the same with or without it
        self.bias = nn.Parameter(torch.zeros(identity.shape[0])) if bias else None

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.W @ torch.softmax(self.V @ state, 0)


def copies(tensors: dict) -> dict:
    return {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in tensors.items()}


def dynamic_loss(
    logits: torch.Tensor, y: torch.Tensor, phi: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-example l_Phi = -sigmoid(y' Phi log p (+ b_y))."""
    z = (phi[y] * F.log_softmax(logits, 1)).sum(1)
    return -torch.sigmoid(z if bias is None else z + bias[y])


def sharp_01_error(logits: torch.Tensor, y: torch.Tensor, sharpness: float) -> torch.Tensor:
    """The authors' demo's smoothed 0-1 error: the mean over examples (or a translation's
    target tokens, padding left out) of 2 sigmoid(K (max_j p_j - p_y)) - 1, which is 0 where
    the true class has the largest probability and tends to 1 where it does not as K grows."""
    y = y[:, : logits.shape[1]] if logits.dim() == 3 else y
    p = logits.softmax(-1)
    gap = p.max(-1).values - p.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    error = 2 * torch.sigmoid(sharpness * gap) - 1
    if logits.dim() == 2:
        return error.mean()
    keep = (y != PAD).to(error.dtype)
    return (error * keep).sum() / keep.sum()


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

    def state_dict(self) -> tuple:
        return self.dev, self.correct, self.seen

    def load_state_dict(self, state: tuple) -> None:
        dev, self.correct, self.seen = state
        self.dev = dev.to(self.dev.device)


def token_dynamic_loss(
    logits: torch.Tensor, y: torch.Tensor, phi: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Per sentence: -sum_r sigmoid(Phi_{y_r} log p(y_r) (+ b_{y_r})) over its target tokens."""
    y = y[:, : logits.shape[1]]
    log_p = logits.log_softmax(-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
    z = phi[y] * log_p if bias is None else phi[y] * log_p + bias[y]
    return -torch.sigmoid(z).masked_fill(y == PAD, 0).sum(1)


class BleuTracker:
    """A translation student's state s_t = (t / T, train BLEU, dev BLEU), BLEU / 100 of greedy
    translations, refreshed every `every` steps; train BLEU on the pairs `sample` indexes."""

    def __init__(self, data, total_steps: int, every: int, sample: torch.Tensor):
        from pipeline.translation_models import target_text

        self.data, self.total, self.every = data, total_steps, every
        self.src = data.train_x[sample]
        self.references = [target_text(row, data.class_names) for row in data.train_y[sample]]
        self.dev = torch.zeros(2, dtype=torch.float64)

    def refresh(self, model: nn.Module) -> None:
        from pipeline.translation_models import greedy_bleu

        data = self.data
        train = greedy_bleu(model, self.src, self.references, data.class_names)
        dev = greedy_bleu(model, data.val_x, data.val_references, data.class_names)
        self.dev = torch.tensor([train, dev], dtype=torch.float64) / 100

    def state(self, model: nn.Module, step: int) -> torch.Tensor:
        if step % self.every == 0:
            self.refresh(model)
        head = torch.tensor([step / self.total], dtype=torch.float64)
        dtype = model.classifier.weight.dtype
        return torch.cat([head, self.dev]).to(model.classifier.weight.device, dtype)

    def observe(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        """Train BLEU is measured at refresh, not from the batches."""

    def state_dict(self) -> torch.Tensor:
        return self.dev

    def load_state_dict(self, state: torch.Tensor) -> None:
        self.dev = state


class ClassificationLoss:
    """Phi in R^{C x C}; the state's dev part is accuracy and per-class precision."""

    losses = staticmethod(dynamic_loss)

    def __init__(self, data, run_seed: int):
        self.data = data

    def identity(self) -> torch.Tensor:
        return torch.eye(self.data.num_classes)

    def state_dim(self) -> int:
        return 3 + self.data.num_classes

    def tracker(self, total_steps: int, every: int) -> StateTracker:
        return StateTracker(self.data, total_steps, every)

    def diagonal(self, phi: torch.Tensor) -> torch.Tensor:
        return phi.diagonal()

    def held(self, phi: torch.Tensor, bias: torch.Tensor | None) -> tuple:
        return phi, bias


class TranslationLoss:
    """Phi in R^|V|, the diagonal of the token interaction (section 4.2); a BLEU state.
    hold_eos: the end of sentence keeps coefficient 1 and bias 0 whatever the teacher says."""

    losses = staticmethod(token_dynamic_loss)

    def __init__(self, data, run_seed: int, hold_eos: bool = False):
        self.data, self.hold_eos = data, hold_eos
        g = generator("dlf-train-sample", run_seed)
        pairs = min(len(data.val_y), len(data.train_y))
        self.sample = torch.randperm(len(data.train_y), generator=g)[:pairs]

    def identity(self) -> torch.Tensor:
        return torch.ones(self.data.num_classes)

    def state_dim(self) -> int:
        return 3

    def tracker(self, total_steps: int, every: int) -> BleuTracker:
        return BleuTracker(self.data, total_steps, every, self.sample.to(self.data.train_y.device))

    def diagonal(self, phi: torch.Tensor) -> torch.Tensor:
        return phi

    def held(self, phi: torch.Tensor, bias: torch.Tensor | None) -> tuple:
        if not self.hold_eos:
            return phi, bias
        eos = torch.arange(len(phi), device=phi.device) == EOS
        phi = torch.where(eos, torch.ones_like(phi), phi)
        return phi, None if bias is None else torch.where(eos, torch.zeros_like(bias), bias)


LOSS_FAMILIES = {"classification": ClassificationLoss, "translation": TranslationLoss}


class DLF(Method):
    Settings = DLFSettings
    task_kinds = ("classification", "translation")

    SNAPSHOTS = (1 / 3, 2 / 3, 1.0)  # fractions of training at which Phi_t is kept (Figure 4)

    def __init__(self, settings, ctx):
        super().__init__(settings, ctx)
        self.run_seed = ctx.generator.initial_seed()  # episodes follow from the run's seed
        if settings.hold_eos and ctx.task.name != "translation":
            raise ValueError("dlf: hold_eos is for translation (a sentence's end)")
        family = LOSS_FAMILIES[ctx.task.name]
        extra = {"hold_eos": settings.hold_eos} if settings.hold_eos else {}
        self.family = family(ctx.data, self.run_seed, **extra)
        param = ctx.student.model.classifier.weight
        self.teacher = LossTeacher(
            self.family.identity(),
            self.family.state_dim(),
            settings.keys,
            settings.key_spread,
            settings.bias,
        )
        self.teacher.to(param.device, param.dtype)
        self.optimizer = torch.optim.Adam(self.teacher.parameters(), lr=settings.teacher_lr)
        self.tracker = self.family.tracker(ctx.student.total_steps, settings.state_every)
        # with start_from, every episode's student starts from the pretrained baseline
        model = ctx.student.model
        self.start = copies(model.state_dict()) if settings.start_from else None
        self.trained = False
        self.history: list[dict] = []  # the dev measure along teacher optimisation (Figure 3)
        self.best: dict = {"measure": -1.0}  # the teacher with the best dev measure so far
        self.snapshots: list[dict] = []

    def coefficients(self, state: torch.Tensor) -> tuple:
        """(Phi_t, b) for the student's loss at state s_t; b is None without `bias`."""
        return self.family.held(self.teacher(state), self.teacher.bias)

    def dev_measure(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """What the teacher maximises on dev: the paper's expected accuracy, or one minus the
        demo's sharp smoothed 0-1 error."""
        if self.settings.metric == "sharp_01":
            return 1 - sharp_01_error(logits, y, self.settings.metric_sharpness)
        return self.ctx.task.expected_accuracy(logits, y)

    # ---- teacher optimisation ----

    def episode(self, k: int) -> dict:
        """One teacher optimisation step: a fresh student for T steps (the first warm_start
        of them cross entropy), then reverse mode through the teacher-set steps."""
        s, data = self.settings, self.ctx.data
        seed = generator("dlf-episode", self.run_seed, k).initial_seed()
        model = fresh_copy(self.student.model, seed)
        if self.start is not None:
            model.load_state_dict(self.start)
        task, family = self.ctx.task, self.family
        length = s.episode_steps or self.student.total_steps
        if s.warm_start >= length:
            raise ValueError(f"dlf: warm_start {s.warm_start} leaves none of {length} steps")
        student = Student(model, self.ctx.schedule, length)
        tracker = family.tracker(length, s.state_every)
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
            logits = task.forward(model, x, y)
            tracker.observe(logits, y)
            if t < s.warm_start:
                student.update(task.losses(logits, y).mean())
                continue
            with torch.no_grad():
                phi, bias = self.coefficients(state)
            lr = student.rule().lr
            student.update(family.losses(logits, y, phi, bias).mean())
            steps.append(Step(lr, self.replay(model, index, state, rng)))
        theta = {n: p.detach().requires_grad_() for n, p in params_of(model).items()}
        with torch.enable_grad():
            logits = task.forward(bound(model, theta), data.val_x, data.val_y)
            measure = self.dev_measure(logits, data.val_y)
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
        logits = logits.detach()
        record = {
            "teacher_step": k + 1,
            "dev_expected_accuracy": round(float(task.expected_accuracy(logits, data.val_y)), 6),
            "dev_accuracy": round(task.batch_accuracy(logits, data.val_y), 6),
        }
        if s.metric != "expected_accuracy":
            record["dev_measure"] = round(float(measure.detach()), 6)
        return record

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
                logits = self.ctx.task.forward(bound(model, theta), x, y)
            return self.family.losses(logits, y, *self.coefficients(state)).mean()

        return objective

    def optimise_teacher(self) -> None:
        """The teacher steps, then the test phase's teacher: the one whose episode had the
        best dev measure (the last update's result is never measured). A checkpoint after
        each step: a killed run resumes at the next one."""
        for k in range(len(self.history), self.settings.teacher_steps):
            self.history.append(self.episode(k))
            h = self.history[-1]
            log(
                f"dlf teacher step {k + 1}/{self.settings.teacher_steps}: dev expected accuracy "
                f"{h['dev_expected_accuracy']:.4f}, dev accuracy {h['dev_accuracy']:.4f}"
            )
            if self.ctx.checkpoint is not None:
                self.ctx.checkpoint()
        self.teacher.load_state_dict(self.best["teacher"])
        log(f"dlf: the teacher of step {self.best['step'] + 1} (best dev measure) is kept")
        self.trained = True

    # ---- the test phase ----

    def step(self, batch: Batch):
        if not self.trained:
            self.optimise_teacher()
        student = self.student
        state = self.tracker.state(student.model, student.step_count)
        logits = self.ctx.task.forward(student.model, batch.x, batch.y)
        self.tracker.observe(logits, batch.y)
        if student.step_count < self.settings.warm_start:
            loss = self.ctx.task.losses(logits, batch.y).mean()
            student.update(loss)
            return {"loss": loss.detach()}
        with torch.no_grad():
            phi, bias = self.coefficients(state)
        loss = self.family.losses(logits, batch.y, phi, bias).mean()
        student.update(loss)
        self.keep_snapshot(phi, bias)
        return {"loss": loss.detach(), "phi_diag": self.family.diagonal(phi).mean()}

    def keep_snapshot(self, phi: torch.Tensor, bias: torch.Tensor | None) -> None:
        total = self.student.total_steps
        marks = [max(1, round(f * total)) for f in self.SNAPSHOTS]
        if self.student.step_count in marks:
            snapshot = {"step": self.student.step_count, "phi": phi.round(decimals=4).tolist()}
            if bias is not None:
                snapshot["bias"] = bias.round(decimals=4).tolist()
            self.snapshots.append(snapshot)

    def state_dict(self) -> dict:
        return {
            "teacher": self.teacher.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "trained": self.trained,
            "best": self.best,
            "tracker": self.tracker.state_dict(),
            "metrics": {"teacher_history": self.history, "loss_coefficients": self.snapshots},
        }

    def load_state_dict(self, state: dict) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.trained = state["trained"]
        self.best = state["best"]
        self.tracker.load_state_dict(state["tracker"])
        self.history = state["metrics"]["teacher_history"]
        self.snapshots = state["metrics"]["loss_coefficients"]
