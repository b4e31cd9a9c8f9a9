"""Knowledge distillation from a learned teacher: KD, DML, Meta Distill and LGTM.

Every method here starts from a teacher named in params.yaml `teachers` and trains the student
on

    (1 - alpha) * CE(y, S(x)) + alpha * D(T(x), S(x))

with D a distillation objective (`objective`, at `temperature`):
- `ce`: Hinton et al.'s soft-target cross entropy, times temperature^2;
- `dist`: DIST (Huang et al. 2022): 1 - Pearson correlation of the two distributions per
  example (inter-class) plus 1 - Pearson per class over the batch (intra-class);
- `mse`: squared error of the logits, averaged over classes.

Two-stage or one-stage (LGTM Figure 1, appendix F.1): KD and Meta Distill distill from the
teacher the pretrain stage fine-tuned on the task; online distillation and LGTM train teacher and
student together from the start. `one_stage` (dml, prokt, lgtm) gives such a method the
teacher's pretrained checkpoint, not fine-tuned (the train stage builds it), and sets both
classifier heads to zero, as the authors' code does (`init_classifier_to_zero`, after Shi et
al. 2020), so both start from the uniform distribution; without it they start from the
fine-tuned teacher (the project's first, two-stage form).

The methods differ in the teacher:
- `kd` (Hinton et al. 2015): frozen.
- `dml` (Zhang et al. 2018): trained jointly, on (1 - alpha) CE(y, T) + alpha D(S, T).
- `prokt` (Shi et al. 2020; online distillation as LGTM eq. 3 and the authors' code train it
  without `use_lgtm`): trained jointly on L_aux alone (below), the teacher fitting its labels
  and the student's distribution; LGTM without the distillation influence.
- `meta_distill` (Zhou et al. 2022): descends the student's validation loss after one step,
  R(theta'), theta' = step(theta, grad L_s(omega)): the core's one-step JVP route, exact.
- `lgtm` (Ren et al. 2023, Algorithm 1): descends scale * L_influence + L_aux with
  L_aux = teacher_alpha CE(y, T) + (1 - teacher_alpha) D_aux and the distillation influence
  L_influence = -(1/B) sum_i < grad_theta D_i(T, S), v >, v = grad R(theta') at the student's
  virtual step. `influence: fd` takes it by the paper's central finite difference (two student
  forwards at theta +- eps v, eps = epsilon / |v|); `influence: jvp` exactly, as the tangent of
  the student's outputs along v (one forward-mode pass); `influence: double_backward` exactly,
  as the paper's route without the finite difference (grad_theta D with a graph, dotted with
  v, differentiated again: the reference for timing, LGTM Table 3). The sign: to first order
  the student's step changes R by -lr alpha < grad D, v >, so the teacher that lowers R raises
  the influence (the paper's eq. 10 prints it without the minus that its Appendix C
  derivation carries). Two choices the paper leaves open, as settings: `aux_target` student
  (the default, as the authors' code: D_aux = D(S, T), the teacher fits the student's
  distribution, KL(S || T) for `ce`) or teacher (D(T, S) differentiated through T, as the
  paper's notation reads; its minimiser moves the teacher's mass onto the student's argmax);
  `influence_scale` teacher_lr (the default, as the authors' code: the influence times the
  teacher's Adam rate), first_order (the student's rate times alpha: the weight the influence
  has in R(theta') to first order) or one.
The teachers that learn are updated before the student (the paper's order), with Adam.

Dropout: the forwards at theta +- eps v (and the JVP) replay the random state of the student's
training forward, so all of them see the same dropout masks and the finite difference
differentiates one function.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch.func import functional_call

from pipeline.core.meta import (
    buffer_copies,
    lookahead_direction,
    loss_and_grad,
    params_of,
    tangent_only,
    teacher_surrogate,
)
from pipeline.core.student import accuracy, predict
from pipeline.core.unroll import replayed_rng, rng_state
from pipeline.methods.base import Batch, Method
from pipeline.methods.settings import (
    DistillSettings,
    LGTMSettings,
    OnlineDistillSettings,
    ProKTSettings,
)


def _pearson(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    a = a - a.mean(dim, keepdim=True)
    b = b - b.mean(dim, keepdim=True)
    return (a * b).sum(dim) / (a.norm(dim=dim) * b.norm(dim=dim)).clamp_min(1e-8)


def distillation_losses(
    teacher: torch.Tensor, student: torch.Tensor, objective: str, temperature: float
) -> torch.Tensor:
    """Per-example distillation losses D_i(T, S) from logits; their mean is the batch loss
    (DIST's intra-class term, a batch quantity, is added to every example)."""
    if objective == "mse":
        return (student - teacher).pow(2).mean(1)
    t, s = teacher / temperature, student / temperature
    if objective == "ce":
        return -(F.softmax(t, 1) * F.log_softmax(s, 1)).sum(1) * temperature**2
    p_t, p_s = F.softmax(t, 1), F.softmax(s, 1)
    inter = 1 - _pearson(p_s, p_t, dim=1)
    intra = (1 - _pearson(p_s, p_t, dim=0)).mean()
    return (inter + intra) * temperature**2


def zero_head(model: torch.nn.Module) -> None:
    """The classifier's weights and bias set to zero: the model predicts the uniform
    distribution until its head learns (the one-stage start, as the authors' code does)."""
    with torch.no_grad():
        for p in model.classifier.parameters():
            p.zero_()


class Distill(Method):
    """Shared by the distillation methods: the teacher and the student's loss."""

    trains_teacher = False

    Settings = DistillSettings

    def __init__(self, settings, ctx):
        super().__init__(settings, ctx)
        pretrained = ctx.pretrained[settings.teacher]
        if self.trains_teacher:
            self.teacher = copy.deepcopy(pretrained).requires_grad_(True).train()
            if getattr(settings, "one_stage", False):
                zero_head(self.teacher)
                zero_head(self.student.model)
            self.optimizer = torch.optim.Adam(self.teacher.parameters(), lr=settings.teacher_lr)
        else:
            self.teacher = pretrained.eval()

    def distill(self, teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
        s = self.settings
        return distillation_losses(teacher, student, s.objective, s.temperature).mean()

    def student_loss(self, logits, teacher_logits, y) -> torch.Tensor:
        a = self.settings.alpha
        return (1 - a) * F.cross_entropy(logits, y) + a * self.distill(teacher_logits, logits)

    def update_teacher(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward(inputs=list(self.teacher.parameters()))  # leave the student's .grad
        self.step_teacher()

    def update_student(self, logits, batch: Batch) -> torch.Tensor:
        """The student's step on the teacher as it is now (after its own update)."""
        with torch.no_grad():
            teacher_logits = self.teacher(batch.x)
        loss = self.student_loss(logits, teacher_logits, batch.y)
        self.student.update(loss)
        return loss.detach()

    def validation_metrics(self, student_logits: torch.Tensor, val_x, val_y) -> dict:
        """Validation loss of the student, and of the teacher where it learns (Figure 2), on
        the examples the student's logits are of (the schedule's validation subset)."""
        loss = F.cross_entropy(student_logits, val_y)
        out = {"student_val_loss": round(float(loss), 6)}
        if self.trains_teacher:
            t = predict(self.teacher, val_x, 256)
            out["teacher_val_loss"] = round(float(F.cross_entropy(t, val_y)), 6)
            out["teacher_val_acc"] = round(accuracy(t, val_y), 6)
        return out

    def state_dict(self) -> dict:
        if not self.trains_teacher:
            return {}
        return {"teacher": self.teacher.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.trains_teacher:
            self.teacher.load_state_dict(state["teacher"])
            self.optimizer.load_state_dict(state["optimizer"])


class KD(Distill):
    def step(self, batch: Batch):
        return {"loss": self.update_student(self.student.model(batch.x), batch)}


class DML(Distill):
    trains_teacher = True
    Settings = OnlineDistillSettings

    def step(self, batch: Batch):
        logits, teacher_logits = self.student.model(batch.x), self.teacher(batch.x)
        a = self.settings.alpha
        teacher_loss = (1 - a) * F.cross_entropy(teacher_logits, batch.y) + a * self.distill(
            logits.detach(), teacher_logits
        )
        self.update_teacher(teacher_loss)
        return {"loss": self.update_student(logits, batch), "teacher_loss": teacher_loss.detach()}


def teacher_auxiliary(method, teacher_logits, logits, y) -> tuple[torch.Tensor, torch.Tensor]:
    """LGTM's L_aux (eq. 11) and the teacher's cross entropy, the student's logits held
    fixed: teacher_alpha CE(y, T) + (1 - teacher_alpha) D_aux, D_aux = D(S, T) (the teacher
    fits the student's distribution, as the authors' code) or D(T, S) (`aux_target`)."""
    s, student = method.settings, logits.detach()
    if s.aux_target == "student":
        fit = method.distill(student, teacher_logits)
    else:
        fit = method.distill(teacher_logits, student)
    teacher_ce = F.cross_entropy(teacher_logits, y)
    return s.teacher_alpha * teacher_ce + (1 - s.teacher_alpha) * fit, teacher_ce


class ProKT(Distill):
    """Online distillation on LGTM's auxiliary loss (eq. 3 / eq. 11's L_aux) with no
    distillation influence: the ablation that isolates what the influence adds. The teacher
    steps first, then the student learns from it (eq. 4)."""

    trains_teacher = True
    Settings = ProKTSettings

    def step(self, batch: Batch):
        logits, teacher_logits = self.student.model(batch.x), self.teacher(batch.x)
        aux, teacher_ce = teacher_auxiliary(self, teacher_logits, logits, batch.y)
        self.update_teacher(aux)
        return {
            "loss": self.update_student(logits, batch),
            "teacher_loss": aux.detach(),
            "teacher_ce": teacher_ce.detach(),
        }


class MetaDistill(Distill):
    trains_teacher = True

    def training_forward(self, batch: Batch):
        """Teacher and student logits, the student's loss and its gradient at theta, and the
        random state the student's forward started from."""
        model = self.student.model
        teacher_logits = self.teacher(batch.x)
        rng = rng_state(batch.x.device)
        logits = model(batch.x)
        loss = self.student_loss(logits, teacher_logits.detach(), batch.y)
        params = params_of(model)
        grads = torch.autograd.grad(loss, list(params.values()), retain_graph=True)
        return teacher_logits, logits, rng, dict(zip(params, grads, strict=True))

    def step(self, batch: Batch):
        student, a = self.student, self.settings.alpha
        teacher_logits, logits, rng, grads = self.training_forward(batch)
        vx, vy = self.val_batch(self.settings.val_batch_size)
        direction, r_after = lookahead_direction(
            student.model, student.rule(), student.optimizer_state(), grads, vx, vy
        )
        with replayed_rng(rng):
            _, tangents = tangent_only(student.model, batch.x, direction)

        def loss(z, t):  # the part of the student's loss that depends on the teacher
            return a * self.distill(t, z)

        meta = teacher_surrogate(loss, logits, tangents, teacher_logits)
        self.update_teacher(meta)
        return {"loss": self.update_student(logits, batch), "val_loss": r_after.detach()}


class LGTM(MetaDistill):
    Settings = LGTMSettings

    def validation_gradient(self, grads) -> tuple[dict, torch.Tensor]:
        """v = grad R(theta') after the student's virtual step (Algorithm 1, lines 3-5)."""
        student = self.student
        theta = {k: p.detach() for k, p in params_of(student.model).items()}
        virtual, _ = student.rule().step(theta, grads, student.optimizer_state())
        vx, vy = self.val_batch(self.settings.val_batch_size)
        r_after, v = loss_and_grad(student.model, virtual, vx, vy)
        return v, r_after

    def influence(self, x, logits, teacher_logits, v, rng) -> torch.Tensor:
        """L_influence as a function of the teacher's logits (see the module docstring)."""
        model = self.student.model
        if self.settings.influence == "jvp":
            with replayed_rng(rng):
                _, tangents = tangent_only(model, x, v)
            return -teacher_surrogate(
                lambda z, t: self.distill(t, z), logits, tangents, teacher_logits
            )
        if self.settings.influence == "double_backward":
            params = params_of(model)
            with replayed_rng(rng):  # its own forward: the student's graph stays for its step
                distill = self.distill(teacher_logits, model(x))
            grads = torch.autograd.grad(distill, list(params.values()), create_graph=True)
            return -sum((g * v[k]).sum() for g, k in zip(grads, params, strict=True))
        norm = torch.sqrt(sum((g * g).sum() for g in v.values()))
        eps = self.settings.epsilon / norm.clamp_min(1e-12)
        theta = {k: p.detach() for k, p in params_of(model).items()}
        shifted = []
        for sign in (1, -1):
            params = {k: p + sign * eps * v[k] for k, p in theta.items()}
            with torch.no_grad(), replayed_rng(rng):
                shifted.append(functional_call(model, (params, buffer_copies(model)), (x,)))
        plus, minus = (self.distill(teacher_logits, s) for s in shifted)
        return -(plus - minus) / (2 * eps)

    def influence_weight(self) -> float:
        s = self.settings
        return {
            "teacher_lr": s.teacher_lr,
            "first_order": self.student.rule().lr * s.alpha,
            "one": 1.0,
        }[s.influence_scale]

    def step(self, batch: Batch):
        teacher_logits, logits, rng, grads = self.training_forward(batch)
        v, r_after = self.validation_gradient(grads)
        influence = self.influence(batch.x, logits.detach(), teacher_logits, v, rng)
        aux, teacher_ce = teacher_auxiliary(self, teacher_logits, logits, batch.y)
        self.update_teacher(self.influence_weight() * influence + aux)
        return {
            "loss": self.update_student(logits, batch),
            "val_loss": r_after.detach(),
            "influence": influence.detach(),
            "teacher_ce": teacher_ce.detach(),
        }
