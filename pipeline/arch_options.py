"""The options params.yaml may give each architecture (`models.<name>`, beside `arch`): one
frozen dataclass per architecture, with the types, ranges and defaults of the keyword arguments
of its class in pipeline/models.py (or text_models.py, translation_models.py) that the data does
not set.

Torch-free, so that pipeline/config.py checks a model entry before any job; build_model
passes every field to the class, so the defaults are written here only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pipeline.typed import Form, FractionBelow1, ParamsError, PositiveInt, build


@dataclass(frozen=True)
class MLPOptions:
    hidden: tuple[PositiveInt, ...] = (256, 256)  # widths of the hidden layers
    dropout: FractionBelow1 = 0.0


@dataclass(frozen=True)
class LeNetOptions:
    pass


@dataclass(frozen=True)
class PreActResNetOptions:
    depth: Annotated[int, Form(6, 2)]  # ResNet-32: 32
    width: PositiveInt = 16


@dataclass(frozen=True)
class WideResNetOptions:
    depth: Annotated[int, Form(6, 4)]  # WRN-28-10: 28
    widen: PositiveInt = 1
    dropout: FractionBelow1 = 0.0


@dataclass(frozen=True)
class TextBertOptions:
    weights: str = "none"  # minilm_l6, minilm_l3, a model directory, or none (random)
    layers: PositiveInt | None = None  # keep the first k layers (none: 2 random ones)
    dropout: FractionBelow1 = 0.1
    hidden: PositiveInt = 384  # a random encoder's size (weights: none)
    heads: PositiveInt = 12
    vocab_size: PositiveInt = 30522


@dataclass(frozen=True)
class FairseqOptions:
    """A fairseq translation model (pipeline/translation_models.py); None: the fairseq
    architecture's default."""

    fairseq_arch: str = "transformer"  # a name in fairseq's ARCH_MODEL_REGISTRY
    encoder_layers: PositiveInt | None = None
    decoder_layers: PositiveInt | None = None
    embed_dim: PositiveInt | None = None  # both sides' token embeddings
    hidden_dim: PositiveInt | None = None  # lstm: both sides' hidden state
    ffn_dim: PositiveInt | None = None  # transformer: the feed-forward layers
    heads: PositiveInt | None = None  # transformer: attention heads
    dropout: FractionBelow1 | None = None
    max_positions: PositiveInt = 256  # learned positions: the longest sentence in tokens


ARCH_OPTIONS: dict[str, type] = {  # the arch names of params.yaml
    "mlp": MLPOptions,
    "lenet": LeNetOptions,
    "preact_resnet": PreActResNetOptions,
    "wrn": WideResNetOptions,
    "text_bert": TextBertOptions,
    "fairseq": FairseqOptions,
}
ARCH_NAMES = tuple(ARCH_OPTIONS)

# constructor arguments that build_model sets from the data, never from params.yaml
FROM_DATA = ("in_features", "in_channels", "image_size", "max_length", "num_classes")


def check_options(arch: str, options: dict, where: str = "options"):
    """`arch`'s options (pipeline/arch_options.py) read from `options`, or ParamsError naming
    `where`.<option> for an unknown, missing, mistyped or out-of-range one."""
    if arch not in ARCH_OPTIONS:
        raise ParamsError(f"{where}.arch: unknown arch {arch!r}; known: {', '.join(ARCH_OPTIONS)}")
    for name in options:
        if name in FROM_DATA:
            raise ParamsError(f"{where}.{name}: option of arch {arch!r} set from the data")
    return build(ARCH_OPTIONS[arch], options, where)
