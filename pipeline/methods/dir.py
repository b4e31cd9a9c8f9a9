"""Learning to reweight with deep interactions (DIR): a teacher reading the student's internal
states weights each example, and is trained by reverse mode through momentum SGD.

Teacher (section 3.3): w = sigmoid(MLP-k([I; M])), normalised to sum 1 in each batch. Inputs:
  I0  the student's penultimate layer (its `features`);
  I1..I3  earlier internal states, deepest first, each averaged over its spatial positions
      (models.py `feature_maps`; an MLP's earlier hidden layers as they are);
  M0  the label, one-hot (the linear layer on it is the label embedding E M);
  M1  the surface features of section 4.3: the iteration over the total, the average training
      loss so far, the best validation accuracy so far (on the teacher's validation batches),
      the predicted label (one-hot) and the margin p_y - max_{k != y} p_k;
  L   beyond the paper: the example's cross entropy on its given label. Under uniform noise
      whether a label is wrong is independent of I and of y taken one at a time, and the
      paper's teacher is additive in them; L (like M1's margin) reads the two together.
The teacher's last layer starts at zero, so training starts from uniform weights (ERM).

Training (Algorithm 1): every K = `interval` student steps, the validation loss at theta_K is
differentiated back through the last B = `back` steps (pipeline/core/unroll.py: theta_t and v_t
recovered from theta_K and v_K, Hessian-vector products by forward-over-reverse) and the
teacher takes an Adam step. Kept per step: the minibatch, its learning rate, the surface
scalars and the random state (dropout is replayed), never a copy of the parameters. By default
dw/dtheta = 0 (the paper's stabilisation); `deeper: true` keeps that path (section 4.3).

Translation (section 5, through pipeline/task_kinds.py): a weight per sentence pair; I0 is the
decoder's last states averaged over the target tokens, I1 the encoder's output averaged over
the source, L the pair's label-smoothed NLL; R is the validation NLL per target token.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.meta import bound, params_of
from pipeline.core.unroll import Step, backward_through_steps, replayed_rng, rng_state
from pipeline.methods.base import Batch, Method, weight_by_noise
from pipeline.methods.settings import DIRSettings

SURFACE = 4  # M1's scalars besides the predicted label: iteration, loss, best val acc, margin


class WeightTeacher(nn.Module):
    """sigmoid(MLP-k(inputs)): k hidden layers of the input's width with ReLU (Table 4)."""

    def __init__(self, in_dim: int, hidden_layers: int):
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(hidden_layers):
            layers += [nn.Linear(in_dim, in_dim), nn.ReLU()]
        last = nn.Linear(in_dim, 1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        w = torch.sigmoid(self.net(inputs)).squeeze(1)
        return w / w.sum()


@dataclass
class Record:
    """What rebuilds one student step's objective in the reverse pass."""

    x: torch.Tensor
    y: torch.Tensor
    lr: float
    surface: tuple[float, float, float]  # iteration / total, mean training loss, best val acc
    rng: dict = field(repr=False)


class DIR(Method):
    Settings = DIRSettings
    task_kinds = ("classification", "translation")  # translation: features I0, I1 and L

    SAMPLED_STEPS = 50  # batches kept for the weight figures (from half-way through training)

    def __init__(self, settings, ctx):
        super().__init__(settings, ctx)
        schedule = ctx.schedule
        if schedule.optimizer != "sgd" or schedule.nesterov or not schedule.momentum:
            raise ValueError(
                "dir runs momentum SGD backwards: optimizer sgd, momentum > 0, no Nesterov"
            )
        model, x, y = ctx.student.model, ctx.data.train_x[:2], ctx.data.train_y[:2]
        with torch.no_grad():
            _, features, maps = ctx.task.forward(model, x, y.clamp_min(0), states=True)
        levels = [features, *maps]
        deepest = max((int(f[1]) for f in settings.features if f[0] == "I"), default=0)
        if deepest >= len(levels):
            raise ValueError(
                f"dir feature I{deepest}: this student has internal states I0-I{len(levels) - 1}"
            )
        c = ctx.data.num_classes
        widths = {
            "M0": c,
            "M1": SURFACE + c,
            "L": 1,
            **{f"I{i}": s.shape[1] for i, s in enumerate(levels)},
        }
        device = x.device
        self.teacher = WeightTeacher(
            sum(widths[f] for f in settings.features), settings.hidden_layers
        )
        self.teacher.to(device, model.classifier.weight.dtype)
        self.optimizer = torch.optim.Adam(self.teacher.parameters(), lr=settings.teacher_lr)
        self.records: list[Record] = []
        self.loss_sum, self.loss_count, self.best_val = 0.0, 0, 0.0
        self.sample: dict[str, list] = {"weights": [], "noisy": [], "losses": [], "labels": []}

    # ---- the teacher's inputs and the weighted objective ----

    def teacher_inputs(self, logits, features, maps, y, surface) -> torch.Tensor:
        levels = [features, *maps]
        c = logits.shape[1]
        parts = []
        for name in self.settings.features:
            if name[0] == "I":
                parts.append(levels[int(name[1])])
            elif name == "M0":
                parts.append(F.one_hot(y, c).to(logits.dtype))
            elif name == "L":
                parts.append(self.ctx.task.losses(logits, y)[:, None])
            else:
                p = logits.softmax(1)
                p_y = p.gather(1, y[:, None])
                others = p.scatter(1, y[:, None], float("-inf")).amax(1, keepdim=True)
                scalars = torch.tensor(surface, dtype=logits.dtype, device=logits.device)
                parts += [
                    scalars.expand(len(y), -1),
                    F.one_hot(logits.argmax(1), c).to(logits.dtype),
                    p_y - others,
                ]
        inputs = torch.cat(parts, 1)
        return inputs if self.settings.deeper else inputs.detach()

    def objective_terms(self, outputs, y, surface):
        """(weighted loss, weights, per-example losses) from one student forward's outputs."""
        losses = self.ctx.task.losses(outputs[0], y)
        w = self.teacher(self.teacher_inputs(*outputs, y, surface))
        return (w * losses).sum(), w, losses

    def replay(self, record: Record):
        """The objective of a recorded step as a function of the parameters (batch norm on
        fresh buffer copies; dropout replays the step's random state)."""
        model = self.student.model

        def objective(theta):
            with replayed_rng(record.rng):
                outputs = self.ctx.task.forward(
                    bound(model, theta), record.x, record.y, states=True
                )
            return self.objective_terms(outputs, record.y, record.surface)[0]

        return Step(record.lr, objective)

    # ---- training ----

    def surface(self) -> tuple[float, float, float]:
        s = self.student
        mean_loss = self.loss_sum / self.loss_count if self.loss_count else 0.0
        return (s.step_count / s.total_steps, mean_loss, self.best_val)

    def step(self, batch: Batch):
        student = self.student
        record = Record(
            batch.x, batch.y, student.rule().lr, self.surface(), rng_state(batch.x.device)
        )
        # the step's one batch-norm update
        outputs = self.ctx.task.forward(student.model, batch.x, batch.y, states=True)
        loss, w, losses = self.objective_terms(outputs, batch.y, record.surface)
        if not torch.isfinite(loss):
            raise FloatingPointError("dir: non-finite weighted loss")
        self.keep_sample(w, losses, batch)
        self.note_weights(batch, w * len(w))
        student.update(loss)
        self.loss_sum += float(losses.detach().mean())
        self.loss_count += 1
        self.records = [*self.records, record][-self.settings.back :]
        logs = {"loss": loss.detach(), "w_max": w.detach().max() * len(w)}
        noisy = self.ctx.data.noise_mask[batch.index]
        logs.update(weight_by_noise(w.detach(), noisy))
        if student.step_count % self.settings.interval == 0:
            logs["val_loss"] = self.update_teacher()
        return logs

    def update_teacher(self) -> torch.Tensor:
        """Algorithm 1: d R(theta_K) / d omega back through the last B steps, then Adam."""
        model = self.student.model
        vx, vy = self.val_batch(self.settings.val_batch_size)
        theta = {k: p.detach().requires_grad_() for k, p in params_of(model).items()}
        with torch.enable_grad():
            logits = self.ctx.task.forward(bound(model, theta), vx, vy)
            val_loss = self.ctx.task.validation_loss(logits, vy, self.settings.metric)
            val_grad = dict(
                zip(theta, torch.autograd.grad(val_loss, list(theta.values())), strict=True)
            )
        self.best_val = max(self.best_val, self.ctx.task.batch_accuracy(logits, vy))
        rule = self.student.rule()
        steps = [self.replay(r) for r in self.records]
        teacher = list(self.teacher.parameters())
        grads = backward_through_steps(
            theta, self.student.optimizer_state(), steps, rule, val_grad, teacher
        )
        for p, g in zip(teacher, grads, strict=True):
            p.grad = g
        self.step_teacher()
        self.records = []
        return val_loss.detach()

    def keep_sample(self, w, losses, batch: Batch) -> None:
        """Weights (times the batch size), losses and labels of the batches from half-way
        through training, for the weight figures (Figure 2 of the paper)."""
        start = self.student.total_steps // 2
        if start <= self.student.step_count < start + self.SAMPLED_STEPS:
            self.sample["weights"].append((w.detach() * len(w)).cpu())
            self.sample["noisy"].append(self.ctx.data.noise_mask[batch.index].cpu())
            self.sample["losses"].append(losses.detach().cpu())
            self.sample["labels"].append(self.ctx.task.sample_labels(batch.y).cpu())

    def state_dict(self) -> dict:
        return {
            "teacher": self.teacher.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "records": [dataclasses.asdict(r) for r in self.records],  # plain: no pickle
            "surface": (self.loss_sum, self.loss_count, self.best_val),
            "weight_sample": self.sample,
        }

    def load_state_dict(self, state: dict) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        device = self.student.model.classifier.weight.device
        self.records = [
            replace(
                Record(**r), x=r["x"].to(device), y=r["y"].to(device), surface=tuple(r["surface"])
            )
            for r in state["records"]
        ]
        self.loss_sum, self.loss_count, self.best_val = state["surface"]
        self.sample = state["weight_sample"]
