"""ReducedMPL (Pham et al. 2021, section 3.2 and Appendix C.2) and its baseline NoisyStudent.

Both start from a large teacher pretrained to convergence by the pretrain stage (params.yaml
`teachers`; the setting `teacher` names it) and compute its class distributions for every
training and validation example once, before the student's first step.

reduced_mpl: the teacher that adapts is a small MLP q_Psi (`layers` linear layers of width
    `hidden`, ReLU) reading the large teacher's distribution. Its output is added to the large
    teacher's log-probabilities, with the last layer zero-initialised, so it starts as the
    pretrained teacher and learns a calibration of it (the paper expects a near-identity map;
    the residual form is our choice). It is trained exactly as MPL's teacher (mpl.py: either
    route), with Adam at 1e-4 and L2 1e-4 as in Appendix C.2.
noisy_student: Xie et al. 2020 self-training, "the only difference [from ReducedMPL] is that
    ReducedMPL has a teacher that adapts": the student learns the fixed distributions (soft,
    or their argmax: hard), with noise on the student alone: an augmentation of its input and
    its architecture's dropout.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.augment import augment
from pipeline.core.meta import targets_loss
from pipeline.core.student import predict
from pipeline.methods.base import Batch, Method
from pipeline.methods.mpl import MetaPseudoLabels
from pipeline.methods.settings import NoisyStudentSettings, ReducedMPLSettings


@torch.no_grad()
def distributions(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's class distributions on x, in evaluation mode (no dropout)."""
    return predict(model, x).softmax(1)


class Calibrator(nn.Module):
    """q_Psi: log p_large + MLP(p_large), the MLP's last layer zero-initialised."""

    def __init__(self, num_classes: int, hidden: int, layers: int):
        super().__init__()
        widths = [num_classes] + [hidden] * (layers - 1)
        blocks: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            blocks += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*blocks, nn.Linear(widths[-1], num_classes))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        return p.clamp_min(1e-8).log() + self.net(p)


class ReducedMPL(MetaPseudoLabels):
    Settings = ReducedMPLSettings
    scores_teacher = False  # the calibrator reads distributions, not the student's input

    def make_teacher(self) -> nn.Module:
        data, s = self.ctx.data, self.settings
        large = self.ctx.pretrained[s.teacher]
        self.large = {
            "train": distributions(large, data.train_x),
            "val": distributions(large, data.val_x),
        }
        seed = int(torch.randint(2**31, (1,), generator=self.ctx.generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            calibrator = Calibrator(data.num_classes, s.hidden, s.layers)
        return calibrator.to(data.val_x)

    def teacher_input(self, x: torch.Tensor, index: torch.Tensor, split: str) -> torch.Tensor:
        return self.large[split][index]


class NoisyStudent(Method):
    uses_unlabelled = True

    Settings = NoisyStudentSettings

    def __init__(self, settings, ctx):
        super().__init__(settings, ctx)
        self.large = distributions(ctx.pretrained[settings.teacher], ctx.data.train_x)
        if settings.pseudo_labels == "hard":
            self.large = nn.functional.one_hot(self.large.argmax(1), ctx.data.num_classes)
            self.large = self.large.to(ctx.data.train_x)

    def step(self, batch: Batch):
        x = augment(batch.x, self.settings.augment, self.ctx.generator)
        loss = targets_loss(self.student.model(x), self.large[batch.index]).sum()
        self.student.update(loss)
        return {"loss": loss.detach()}
