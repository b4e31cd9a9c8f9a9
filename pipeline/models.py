"""Student networks for small images and flat feature vectors, all with the interface of
pipeline/student_net.py; build_model makes any architecture of params.yaml (their options:
pipeline/arch_options.py).

No module works in place (no inplace=True, no += on activations), so the models run under
torch.func.functional_call, torch.func.jvp and forward-mode dual tensors, BatchNorm in train
mode included.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.arch_options import check_options
from pipeline.student_net import StudentNet


class MLP(StudentNet):
    """Fully connected ReLU net on the flattened input, dropout after each hidden layer.

    features: the last hidden layer (the flattened input if `hidden` is empty);
    feature_maps: the earlier hidden layers, deepest first (empty with one hidden layer).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: Sequence[int],
        dropout: float,
    ):
        super().__init__()
        widths = [in_features, *hidden]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(widths))
        self.dropout = nn.Dropout(dropout)
        self.feature_dim = widths[-1]
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def _states(self, x: Tensor) -> list[Tensor]:
        h = x.flatten(1)
        states = []
        for layer in self.hidden:
            h = self.dropout(F.relu(layer(h)))
            states.append(h)
        return states or [h]


class LeNet(StudentNet):
    """LeNet-5 (LeCun et al. 1998) with ReLU and max pooling: conv 5x5 (6) -> pool -> conv 5x5
    (16) -> pool -> fc 120 -> fc 84 -> classifier. No BatchNorm, as in the original.

    Images under 32 pixels a side get 2 pixels of zero padding in the first conv (LeNet-5 saw
    28x28 MNIST digits centred in a 32x32 field); images under 12x12 (e.g. 8x8 digits) leave
    nothing after the second pool and raise ValueError. `image_size` is an int or (H, W).

    features: fc 84; feature_maps: [fc 120, pooled conv 2 (16), pooled conv 1 (6)].
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int | Sequence[int]):
        super().__init__()
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        pad = 2 if min(h, w) < 32 else 0
        fh, fw = (((s + 2 * pad - 4) // 2 - 4) // 2 for s in (h, w))
        if fh < 1 or fw < 1:
            raise ValueError(
                f"LeNet needs images of at least 12x12 (two 5x5 convs, two 2x2 "
                f"pools), got {h}x{w}; use 'mlp' or 'preact_resnet' instead"
            )
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=pad)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * fh * fw, 120)
        self.fc2 = nn.Linear(120, 84)
        self.feature_dim = 84
        self.classifier = nn.Linear(84, num_classes)
        self._init_weights()

    def _states(self, x: Tensor) -> list[Tensor]:
        c1 = F.max_pool2d(F.relu(self.conv1(x)), 2)
        c2 = F.max_pool2d(F.relu(self.conv2(c1)), 2)
        f1 = F.relu(self.fc1(c2.flatten(1)))
        return [c1, c2, f1, F.relu(self.fc2(f1))]


class _PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016, "Identity mappings"): BN-ReLU-conv3x3-BN-ReLU-
    [dropout, as in WRN]-conv3x3 plus the shortcut, a 1x1 conv of the pre-activated input where
    the shape changes (as in the authors' code) and the identity otherwise."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = (
            nn.Conv2d(c_in, c_out, 1, stride, bias=False) if stride != 1 or c_in != c_out else None
        )

    def forward(self, x: Tensor) -> Tensor:
        a = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(a)
        out = self.conv2(self.dropout(F.relu(self.bn2(self.conv1(a)))))
        return out + skip


class _PreActNet(StudentNet):
    """conv3x3 stem, three stages of `n` blocks (stride 2 before stages 2 and 3), final BN-ReLU,
    global average pooling (so any input of 8x8 or more works) and the classifier.

    features: the pooled final BN-ReLU; feature_maps: pooled outputs of stages 3, 2, 1.
    """

    def __init__(
        self, in_channels: int, num_classes: int, widths: Sequence[int], n: int, dropout: float
    ):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        # Stride 1 into stage 1, 2 into stages 2 and 3; only a stage's first block changes shape.
        self.stages = nn.ModuleList(
            nn.Sequential(
                _PreActBlock(c_in, c_out, 1 if i == 0 else 2, dropout),
                *(_PreActBlock(c_out, c_out, 1, dropout) for _ in range(n - 1)),
            )
            for i, (c_in, c_out) in enumerate(pairwise(widths))
        )
        self.bn = nn.BatchNorm2d(widths[-1])  # pre-activation nets end with one more BN-ReLU
        self.feature_dim = widths[-1]
        self.classifier = nn.Linear(widths[-1], num_classes)
        self._init_weights()

    def _states(self, x: Tensor) -> list[Tensor]:
        h = self.stem(x)
        states = []
        for stage in self.stages:
            h = stage(h)
            states.append(h)
        return [*states, F.relu(self.bn(h)).mean(dim=(2, 3))]


class PreActResNet(_PreActNet):
    """Pre-activation ResNet-(6n+2) for CIFAR (He et al. 2016, "Identity mappings in deep
    residual networks"): stage widths width, 2*width, 4*width; ResNet-32 is depth=32."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        depth: int,
        width: int,
    ):
        widths = (width, width, 2 * width, 4 * width)
        super().__init__(in_channels, num_classes, widths, (depth - 2) // 6, 0.0)


class WideResNet(_PreActNet):
    """Wide ResNet WRN-depth-widen (Zagoruyko & Komodakis 2016, "Wide residual networks"):
    stage widths 16k, 32k, 64k, dropout between the two convs of each block."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        depth: int,
        widen: int,
        dropout: float,
    ):
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        super().__init__(in_channels, num_classes, widths, (depth - 4) // 6, dropout)


ARCHITECTURES: dict[str, type[StudentNet]] = {  # text_bert: pipeline/text_models.py
    "mlp": MLP,
    "lenet": LeNet,
    "preact_resnet": PreActResNet,
    "wrn": WideResNet,
}


def _architecture(arch: str) -> type[nn.Module]:
    if arch == "text_bert":  # imported here: transformers is slow to import
        from pipeline.text_models import TextClassifier

        return TextClassifier
    if arch == "fairseq":  # so is fairseq
        from pipeline.translation_models import Translator

        return Translator
    return ARCHITECTURES[arch]  # check_options has refused any other name


def build_model(arch: str, in_shape: tuple[int, ...], num_classes: int, **options) -> nn.Module:
    """The `arch` network for examples of shape `in_shape` ((C, H, W), (D,) or token ids (L,);
    a translation model: num_classes is the vocabulary's size);
    `options` are the class's remaining keyword arguments (e.g. depth, width, hidden, dropout)."""
    options = dataclasses.asdict(check_options(arch, options))
    cls = _architecture(arch)
    in_shape = tuple(in_shape)
    if arch == "text_bert":
        derived = {"max_length": in_shape[0]}
    elif arch == "fairseq":
        derived = {}
    elif cls is MLP:
        derived: dict = {"in_features": math.prod(in_shape)}
    elif len(in_shape) != 3:
        raise ValueError(f"arch {arch!r} needs image inputs of shape (C, H, W), got {in_shape}")
    else:
        derived = {"in_channels": in_shape[0]}
        if cls is LeNet:
            derived["image_size"] = in_shape[1:]
    derived["num_classes"] = num_classes
    return cls(**derived, **options)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def fresh_copy(model: nn.Module, seed: int) -> nn.Module:
    """A copy of `model` with its parameters drawn anew from `seed` (a teacher of the
    student's architecture, or a fresh student), leaving the global RNG as it was."""
    model = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in model.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        if hasattr(model, "_init_weights"):
            model._init_weights()
    return model
