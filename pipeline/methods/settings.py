"""The settings of every method: frozen dataclasses built from params.yaml's `methods`
entries, and SETTINGS, the method names mapped to them.

Torch-free (like pipeline/config.py, which checks params.yaml with them before any job), so
the settings live here and each method module takes its own (`Settings = L2RWSettings`);
pipeline/methods/registry.py maps the same names to the method classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.typed import (
    Fraction,
    FractionBelow1,
    NonNegative,
    NonNegativeInt,
    ParamsError,
    Positive,
    PositiveInt,
    Share,
)

DIR_FEATURES = ("I0", "I1", "I2", "I3", "M0", "M1", "L")  # the teacher inputs DIR knows
# the kinds of task (pipeline/task_kinds.py) each method is written for beyond classification
# (its class's `task_kinds` says the same; a test keeps them equal)
TASK_KINDS = {
    "erm": ("classification", "translation"),
    "dir": ("classification", "translation"),
    "dlf": ("classification", "translation"),
    "softmax_margin": ("classification", "translation"),
}


@dataclass(frozen=True)
class MethodSettings:
    """Options every method has. finetune_steps: after training, steps of plain cross entropy
    on the clean validation split at the final learning rate (the papers' "+FT" rows).
    start_from: a params.yaml `teachers` name of the student's own model, whose pretrained
    weights the student starts from (fine-tuning a converged baseline, as the
    deep-interactions paper's translation runs do)."""

    finetune_steps: NonNegativeInt = 0
    start_from: str = ""


def _require_teacher(where: str, teacher: str) -> None:
    if not teacher:
        raise ParamsError(f"{where}.teacher: required (a name in params.yaml `teachers`)")


@dataclass(frozen=True)
class L2RWSettings(MethodSettings):
    """route: how dR/deps is computed, all exact and equal (tests/test_methods.py):
    jvp_fused: one training forward with dual tensors gives the loss graph and the
        tangents (fewest passes; keeps tangent intermediates alive for the backward);
    jvp_traced: the same one pass over the traced student, each tangent computed outside
        autograd and freed after its last use (fewest passes and ERM's memory; a model that
        does not trace, or works in place, runs as jvp_fused; pipeline/core/traced.py);
    jvp: a separate no-grad tangent forward, then an ordinary forward (less memory);
    double_backward: Algorithm 1 as written (backward on backward), the reference."""

    val_batch_size: PositiveInt | None = None  # None: the schedule's (or the batch size)
    route: Literal["jvp_fused", "jvp_traced", "jvp", "double_backward"] = "jvp_fused"


@dataclass(frozen=True)
class HardMiningSettings(MethodSettings):
    majority_keep: Share = 0.5


@dataclass(frozen=True)
class BootstrapSettings(MethodSettings):
    mode: Literal["soft", "hard"] = "soft"
    beta: Fraction = 0.95


@dataclass(frozen=True)
class ConfidentLearningSettings(MethodSettings):
    """folds: the cross-validation that gives each training example out-of-sample class
    probabilities (a logistic regression on the standardised inputs, `inverse_regularisation`
    its C); prune: train the student on the examples confident learning does not flag (False:
    on all of them, so the row's accuracy is ERM's and only its ranking differs)."""

    folds: PositiveInt = 5
    inverse_regularisation: Positive = 1.0
    prune: bool = True

    def check(self, where: str) -> None:
        if not 2 <= self.folds <= 20:
            raise ParamsError(f"{where}.folds: between 2 and 20 (got {self.folds})")


@dataclass(frozen=True)
class CleanOnlySettings(MethodSettings):
    label_smoothing: FractionBelow1 = 0.0
    augment: Literal["none", "crop_flip", "randaugment"] = "none"


@dataclass(frozen=True)
class DIRSettings(MethodSettings):
    """features: the teacher's inputs (any of I0-I3, M0, M1, L); hidden_layers: MLP-k;
    interval, back: K student steps between teacher updates, B steps differentiated back
    (Table 8; B <= K); deeper: keep dw/dtheta; metric: the validation measure;
    teacher_lr: Adam's step size; val_batch_size: None = the training batch size."""

    features: tuple[str, ...] = ("I0", "M0")
    hidden_layers: NonNegativeInt = 0
    interval: PositiveInt = 20
    back: PositiveInt = 2
    deeper: bool = False
    metric: Literal["log_likelihood", "expected_accuracy"] = "log_likelihood"
    teacher_lr: Positive = 1e-3
    val_batch_size: PositiveInt | None = None

    def check(self, where: str) -> None:
        unknown = [f for f in self.features if f not in DIR_FEATURES]
        if unknown or not self.features:
            raise ParamsError(f"{where}.features: choose from {', '.join(DIR_FEATURES)}")
        if self.back > self.interval:
            raise ParamsError(f"{where}.back: must be at most interval (K)")


@dataclass(frozen=True)
class FocalSettings(MethodSettings):
    gamma: NonNegative = 1.0


@dataclass(frozen=True)
class SelfPacedSettings(MethodSettings):
    start_fraction: Share = 0.5
    full_at: Share = 0.5


@dataclass(frozen=True)
class MWNSettings(MethodSettings):
    """normalise: the teacher's weights over their batch sum in the virtual and the real step
    (the authors' noisy-label script); False: over the batch size (their later script).
    teacher_lr, teacher_momentum, nesterov, teacher_weight_decay: the teacher's SGD (the
    defaults are the noisy-label script's). flat_start: the weight function starts constant
    (its last layer's weights zero), so that its direction is learned, not drawn.
    route: how the tangents along d = A^T grad R(theta') are computed, both exact (tests/
    test_dir.py): jvp: a separate no-grad tangent forward; jvp_traced: from the values the
    training forward recorded, over the traced student (pipeline/core/traced.py), with no
    second forward and dropout's masks the same as the training forward's (a model that does
    not trace runs as jvp)."""

    hidden: PositiveInt = 100
    normalise: bool = True
    teacher_lr: Positive = 1e-3
    teacher_momentum: FractionBelow1 = 0.9
    nesterov: bool = True
    teacher_weight_decay: NonNegative = 5e-4
    flat_start: bool = False
    val_batch_size: PositiveInt | None = None
    route: Literal["jvp", "jvp_traced"] = "jvp"

    def check(self, where: str) -> None:
        if self.nesterov and self.teacher_momentum == 0:
            raise ParamsError(f"{where}.nesterov: Nesterov momentum needs teacher_momentum > 0")


@dataclass(frozen=True)
class DLFSettings(MethodSettings):
    """teacher_steps: teacher optimisation steps (the paper: 60 for MNIST, 100 for CIFAR);
    episode_steps: T, the student steps of each (None: the run's training length, so
    that the state's iteration feature means the same in both phases); keys: N of the
    attention; key_spread: the keys' initial differences; teacher_lr: Adam's alpha;
    state_every: steps between refreshes of the dev statistics; segment: steps between
    reverse-mode checkpoints (None: sqrt(T); 1 keeps every state); warm_start: the
    first steps of every student that are plain cross entropy. Where the paper is silent, the
    authors' demo's choices: bias: a learned coefficient per class (per target token) inside
    the sigmoid, zero at the start (off: the paper's loss); metric: the teacher's dev measure,
    the paper's expected accuracy or one minus the demo's sharp smoothed 0-1 error, with K =
    metric_sharpness; hold_eos (translation): `</s>` keeps coefficient 1, so the teacher
    cannot raise its teacher-forced measure by making the student stop early."""

    teacher_steps: PositiveInt = 60
    episode_steps: PositiveInt | None = None  # None: as long as the run's own training
    keys: PositiveInt = 10
    key_spread: NonNegative = 0.1
    teacher_lr: Positive = 1e-4
    state_every: PositiveInt = 20
    segment: PositiveInt | None = None
    warm_start: NonNegativeInt = 0
    bias: bool = False
    metric: Literal["expected_accuracy", "sharp_01"] = "expected_accuracy"
    metric_sharpness: Positive = 50.0
    hold_eos: bool = False


@dataclass(frozen=True)
class Smooth01Settings(MethodSettings):
    sharpness: Positive = 50.0  # K


@dataclass(frozen=True)
class SoftmaxMarginSettings(MethodSettings):
    margin: Positive = 1.0  # the cost of a wrong class or token


@dataclass(frozen=True)
class LargeMarginSettings(MethodSettings):
    margin: PositiveInt = 2  # m
    beta_start: NonNegative = 1000.0
    beta_decay: Fraction = 0.99
    beta_min: NonNegative = 0.0


@dataclass(frozen=True)
class MPLSettings(MethodSettings):
    """route: the teacher's gradient, exact (soft labels) or first_order (hard labels);
    pseudo_labels: soft (the teacher's tempered softmax), hard (its argmax, as both public
    codes label) or sampled (a one-hot draw from the tempered softmax);
    student_wait_steps: the student's rate is 0 and it does not step for these first steps,
    while the teacher learns from its own labelled loss (and UDA's, where set): the MPL term
    is 0 while the student stands still, as in both codes; the student's schedule (warm-up,
    decay) then runs over the steps left;
    teacher_warmup_steps, teacher_lr_decay: the teacher's rate, a linear warm-up, then
    constant or half a cosine to 0 at the run's last step (pipeline/core/student.py
    scheduled_lr, the students' too);
    unlabelled_ratio: unlabelled examples per labelled one in a step: the labelled batch is
    the schedule's (unlabelled) batch size divided by it, rounded down (None: val_batch_size,
    else the batch size)."""

    route: Literal["exact", "first_order"] = "exact"
    pseudo_labels: Literal["soft", "hard", "sampled"] = "soft"
    temperature: Positive = 1.0
    teacher_optimizer: Literal["sgd", "adam"] = "sgd"
    teacher_lr: Positive = 0.05
    teacher_momentum: FractionBelow1 = 0.9
    nesterov: bool = True
    teacher_weight_decay: NonNegative = 0.0
    teacher_dropout: FractionBelow1 | None = None  # None: the student's architecture's rate
    supervised_weight: NonNegative = 1.0  # the teacher's own cross entropy on labelled data
    val_batch_size: PositiveInt | None = None
    unlabelled_ratio: PositiveInt | None = None
    student_wait_steps: NonNegativeInt = 0
    teacher_warmup_steps: NonNegativeInt = 0
    teacher_lr_decay: Literal["constant", "cosine"] = "constant"
    augment: Literal["none", "randaugment"] = "none"
    uda_weight: NonNegative = 0.0  # UDA + MPL: the teacher's consistency loss
    uda_temperature: Positive = 0.4
    uda_threshold: Fraction = 0.8
    gradient_cosine: bool = False

    def check(self, where: str) -> None:
        pairs = {"exact": ("soft",), "first_order": ("hard", "sampled")}
        if self.pseudo_labels not in pairs[self.route]:
            raise ParamsError(
                f"{where}.pseudo_labels: route {self.route} is defined for "
                f"{' or '.join(pairs[self.route])} pseudo labels (exact differentiates soft "
                "targets; hard labels have no derivative, hence first_order)"
            )
        if self.uda_weight > 0 and self.augment == "none":
            raise ParamsError(f"{where}.uda_weight: UDA needs a strong view (augment)")
        if self.unlabelled_ratio is not None and self.val_batch_size is not None:
            raise ParamsError(
                f"{where}.unlabelled_ratio: sets the labelled batch; give it or val_batch_size"
            )

    def check_schedule(self, where: str, schedule, used_by: str) -> None:
        """The ratio leaves at least one labelled example in a step of `schedule`."""
        ratio = self.unlabelled_ratio
        if ratio is not None and ratio > schedule.batch_size:
            raise ParamsError(
                f"{where}.unlabelled_ratio: {ratio} unlabelled examples per labelled one leave "
                f"none of a batch of {schedule.batch_size} (used by {used_by})"
            )

    def labelled_batch_size(self, batch_size: int) -> int | None:
        """The labelled batch of a step whose unlabelled batch is `batch_size` (None: the
        method's default, val_batch_size or the schedule's)."""
        if self.unlabelled_ratio is None:
            return self.val_batch_size
        return batch_size // self.unlabelled_ratio


@dataclass(frozen=True)
class PseudoLabelSettings(MethodSettings):
    weight: NonNegative = 1.0
    threshold: Fraction = 0.0
    rampup: Fraction = 0.3  # fraction of training over which the weight rises from 0
    labelled_batch_size: PositiveInt | None = None  # None: the schedule's batch size
    gradient_cosine: bool = False  # log the training-validation gradient cosine


@dataclass(frozen=True)
class UDASettings(MethodSettings):
    weight: NonNegative = 1.0  # the UDA factor
    temperature: Positive = 0.4  # sharpening of the target
    threshold: Fraction = 0.8  # confidence mask
    augment: Literal["crop_flip", "randaugment"] = "randaugment"  # the strong view
    labelled_batch_size: PositiveInt | None = None


@dataclass(frozen=True)
class ReducedMPLSettings(MPLSettings):
    teacher: str = ""
    hidden: PositiveInt = 128
    layers: PositiveInt = 5
    teacher_optimizer: Literal["sgd", "adam"] = "adam"
    teacher_lr: Positive = 1e-4
    teacher_weight_decay: NonNegative = 1e-4

    def check(self, where: str) -> None:
        super().check(where)
        _require_teacher(where, self.teacher)
        if self.uda_weight > 0:
            raise ParamsError(f"{where}.uda_weight: the calibrator reads no images")


@dataclass(frozen=True)
class NoisyStudentSettings(MethodSettings):
    teacher: str = ""
    pseudo_labels: Literal["soft", "hard"] = "soft"
    augment: Literal["none", "crop_flip", "randaugment"] = "randaugment"

    def check(self, where: str) -> None:
        _require_teacher(where, self.teacher)


@dataclass(frozen=True)
class DistillSettings(MethodSettings):
    teacher: str = ""  # a params.yaml `teachers` entry (the fine-tuned teacher)
    alpha: Fraction = 0.5  # weight of distillation in the student's loss (Hinton's alpha)
    temperature: Positive = 1.0
    objective: Literal["ce", "dist", "mse"] = "ce"
    teacher_lr: Positive = 3e-5  # Adam, for the teachers that learn (paper: 3e-5)
    val_batch_size: PositiveInt | None = None

    def check(self, where: str) -> None:
        if not self.teacher:
            raise ParamsError(f"{where}.teacher: distillation needs a pretrained teacher")


@dataclass(frozen=True)
class OnlineDistillSettings(DistillSettings):
    """The distillation methods whose teacher learns beside the student (dml, prokt, lgtm).
    one_stage: the teacher starts from its model's pretrained checkpoint, not the pretrain
    stage's fine-tuned one, and both classifier heads start at zero (LGTM Figure 1 and
    appendix F.1, as the authors' code does for online distillation and LGTM); KD and Meta
    Distill are two-stage by definition and have no such option."""

    one_stage: bool = False


@dataclass(frozen=True)
class ProKTSettings(OnlineDistillSettings):
    teacher_alpha: Fraction = 0.6  # the teacher's own cross entropy in L_aux (Table 7)
    aux_target: Literal["student", "teacher"] = "student"  # see distill.py's docstring


@dataclass(frozen=True)
class LGTMSettings(ProKTSettings):
    influence: Literal["fd", "jvp", "double_backward"] = "fd"
    epsilon: Positive = 0.01  # fd: step along v, relative to |v|
    influence_scale: Literal["teacher_lr", "first_order", "one"] = "teacher_lr"


SETTINGS: dict[str, type] = {  # the names of params.yaml's `method:`; registry.py's METHODS
    "erm": MethodSettings,
    "l2rw": L2RWSettings,
    "random": MethodSettings,
    "proportion": MethodSettings,
    "resample": MethodSettings,
    "hard_mining": HardMiningSettings,
    "bootstrap": BootstrapSettings,
    "weighted": MethodSettings,
    "clean_only": CleanOnlySettings,
    "confident_learning": ConfidentLearningSettings,
    "dir": DIRSettings,
    "focal": FocalSettings,
    "spl": SelfPacedSettings,
    "mwn": MWNSettings,
    "dlf": DLFSettings,
    "smooth_01": Smooth01Settings,
    "large_margin": LargeMarginSettings,
    "softmax_margin": SoftmaxMarginSettings,
    "mpl": MPLSettings,
    "pseudo_label": PseudoLabelSettings,
    "uda": UDASettings,
    "reduced_mpl": ReducedMPLSettings,
    "noisy_student": NoisyStudentSettings,
    "kd": DistillSettings,
    "dml": OnlineDistillSettings,
    "prokt": ProKTSettings,
    "meta_distill": DistillSettings,
    "lgtm": LGTMSettings,
}
