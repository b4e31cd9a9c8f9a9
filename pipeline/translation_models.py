"""fairseq translation models as students, and how they are scored (BLEU with sacreBLEU).

A `Translator` wraps a model that fairseq's own registry builds (`fairseq_arch`: transformer,
transformer_iwslt_de_en, lstm, lstm_wiseman_iwslt_de_en, ...), so the project's loop, core and
teachers train it like any student:

    model(src, tgt)                  -> logits [N, T, V], teacher-forced on tgt
    model(src, tgt, states=True)     -> (logits, features, [encoder state]), the decoder's last
                                        features and the encoder's output, each averaged over
                                        the sentence's tokens (what a DIR teacher reads)

Made differentiable twice and in forward mode (the meta-gradients): learned positions (fairseq's
sinusoidal ones go through an ONNX shape op that forward-mode AD cannot trace) and fairseq's
own attention (bmm and softmax) rather than the fused kernel, which has neither double backward
nor forward-mode AD. fairseq's softmax computes in float32 whatever the input; here a float64
input stays float64 (the float64 oracles), every other dtype as fairseq does it.
"""

from __future__ import annotations

import argparse
import functools

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.data.translation_sources import EOS, MASK, PAD, SPECIALS, to_text

MAX_LENGTH_A, MAX_LENGTH_B = 1.2, 10  # generated length <= a * source length + b (fairseq's)


def _load_fairseq() -> None:
    """Import fairseq quietly (its import warns of torch.jit and of optional packages that
    its speech tasks use) and keep its float64 softmax (see above)."""
    import logging
    import warnings

    logging.getLogger("fairseq").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import fairseq.models  # noqa: F401
    _keep_float64_softmax()


def _keep_float64_softmax() -> None:
    from fairseq import utils

    if getattr(utils.softmax, "keeps_float64", False):
        return
    fairseq_softmax = utils.softmax

    def softmax(x, dim: int, onnx_trace: bool = False):
        if x.dtype == torch.float64:
            return F.softmax(x, dim=dim)
        return fairseq_softmax(x, dim, onnx_trace)

    softmax.keeps_float64 = True
    utils.softmax = softmax


def _dictionary(size: int):
    """A fairseq dictionary of `size` symbols with fairseq's special indices (what the model
    and the generator read of it: its length and <s> <pad> </s> <unk>)."""
    from fairseq.data import Dictionary

    d = Dictionary()
    while len(d) < size:
        d.add_symbol(f"piece{len(d)}")
    return d


class _Task:  # what fairseq's build_model reads of a task
    def __init__(self, dictionary):
        self.source_dictionary = self.target_dictionary = dictionary


def fairseq_args(fairseq_arch: str, **options) -> argparse.Namespace:
    """The model's fairseq arguments: ours (None: the fairseq architecture's default), then the
    architecture's defaults (its ARCH_CONFIG_REGISTRY function) for the rest."""
    from fairseq.models import ARCH_CONFIG_REGISTRY

    names = {
        "encoder_layers": ["encoder_layers"],
        "decoder_layers": ["decoder_layers"],
        "embed_dim": ["encoder_embed_dim", "decoder_embed_dim"],
        "hidden_dim": ["encoder_hidden_size", "decoder_hidden_size", "decoder_out_embed_dim"],
        "ffn_dim": ["encoder_ffn_embed_dim", "decoder_ffn_embed_dim"],
        "heads": ["encoder_attention_heads", "decoder_attention_heads"],
        "dropout": ["dropout"],
    }
    positions = options.pop("max_positions")
    args = argparse.Namespace(
        share_decoder_input_output_embed=True,
        encoder_learned_pos=True,
        decoder_learned_pos=True,
        max_source_positions=positions,
        max_target_positions=positions,
        criterion="label_smoothed_cross_entropy",  # read by the lstm's builder (not used)
    )
    for ours, value in options.items():
        for name in names[ours] if value is not None else ():
            setattr(args, name, value)
    ARCH_CONFIG_REGISTRY[fairseq_arch](args)
    args.arch = fairseq_arch
    return args


class Translator(nn.Module):
    def __init__(self, num_classes: int, fairseq_arch: str, **options):
        super().__init__()
        _load_fairseq()
        from fairseq.models import ARCH_MODEL_REGISTRY
        from fairseq.modules import MultiheadAttention

        self.dictionary = _dictionary(num_classes)
        args = fairseq_args(fairseq_arch, **options)
        self.net = ARCH_MODEL_REGISTRY[fairseq_arch].build_model(args, _Task(self.dictionary))
        for m in self.net.modules():
            if isinstance(m, MultiheadAttention):
                m.skip_embed_dim_check = True  # fairseq's bmm/softmax path (see above)
        if hasattr(self.net.encoder, "left_pad"):  # an LSTM: our batches are right-padded and
            self.net.encoder.left_pad = False  # in no length order
            self.net.encoder.forward = functools.partial(
                self.net.encoder.forward, enforce_sorted=False
            )

    @property
    def classifier(self) -> nn.Module:
        """The output projection (whose weight tells a teacher the student's device and dtype)."""
        decoder = self.net.decoder
        return getattr(decoder, "output_projection", None) or decoder.embed_tokens

    def forward(self, src: torch.Tensor, tgt: torch.Tensor, states: bool = False):
        src, tgt = _trim(src), _trim(tgt)
        prev = torch.where(tgt == PAD, PAD, tgt.roll(1, 1))  # fairseq's prev_output_tokens:
        prev[:, 0] = EOS  # </s> first, the target shifted right
        lengths = (src != PAD).sum(1)
        encoder_out = self.net.encoder(src, src_lengths=lengths)
        features, _ = self.net.decoder.extract_features(prev, encoder_out=encoder_out)
        logits = self.net.decoder.output_layer(features)
        if not states:
            return logits
        keep = (tgt != PAD).unsqueeze(-1).to(features.dtype)
        pooled = (features * keep).sum(1) / keep.sum(1)
        return logits, pooled, [_encoder_state(encoder_out, src)]


def _trim(tokens: torch.Tensor) -> torch.Tensor:
    """Drop the columns that are padding in every row (a batch is padded to the dataset's
    longest sentence; attention masks the padding, so the result does not change)."""
    used = int((tokens != PAD).any(0).nonzero().max()) + 1
    return tokens[:, :used]


def _encoder_state(encoder_out, src: torch.Tensor) -> torch.Tensor:
    """The encoder's output averaged over each source sentence's tokens."""
    if isinstance(encoder_out, dict):  # transformer: {"encoder_out": [T x N x C], ...}
        out = encoder_out["encoder_out"][0].transpose(0, 1)
    else:  # lstm: (outputs T x N x C, hiddens, cells, padding mask)
        out = encoder_out[0].transpose(0, 1)
    keep = (src[:, : out.shape[1]] != PAD).unsqueeze(-1).to(out.dtype)
    return (out * keep).sum(1) / keep.sum(1)


def sentence_losses(logits: torch.Tensor, y: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Each sentence's label-smoothed NLL, summed over its target tokens (fairseq's
    label_smoothed_nll_loss: (1 - eps - eps / (V - 1)) nll + eps / (V - 1) sum of -log p)."""
    y = y[:, : logits.shape[1]]
    lprobs = logits.log_softmax(-1)
    loss = -lprobs.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    if smoothing:
        share = smoothing / (lprobs.shape[-1] - 1)
        loss = (1 - smoothing - share) * loss - share * lprobs.sum(-1)
    return loss.masked_fill(y == PAD, 0).sum(1)


@torch.no_grad()
def pair_losses(
    model: Translator, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pair's summed token NLL (no smoothing) in eval mode, and its number of tokens."""
    was_training = model.training
    model.eval()
    losses = [
        sentence_losses(
            model(x[i : i + batch_size], y[i : i + batch_size]), y[i : i + batch_size], 0
        )
        for i in range(0, len(y), batch_size)
    ]
    model.train(was_training)
    return torch.cat(losses), (y != PAD).sum(1)


@torch.no_grad()
def token_fit(model: Translator, data, batch_size: int = 500) -> dict:
    """train_acc: the fraction of the given target tokens the teacher-forced model predicts;
    noisy_fit: of the <mask> tokens of the masked pairs' targets, the fraction predicted as
    <mask> (0 while the student ignores the noise, towards 1 as it memorises it)."""
    was_training = model.training
    model.eval()
    mask = data.class_names.index(MASK)
    right = total = masked_right = masked = 0
    x, y = data.train_x, data.train_y
    for i in range(0, len(y), batch_size):
        target = _trim(y[i : i + batch_size])
        pred = model(x[i : i + batch_size], target).argmax(-1)
        tokens = target != PAD
        right += int(((pred == target) & tokens).sum())
        total += int(tokens.sum())
        hidden = target == mask
        masked_right += int(((pred == mask) & hidden).sum())
        masked += int(hidden.sum())
    model.train(was_training)
    return {
        "train_acc": round(right / total, 6),
        "noisy_fit": round(masked_right / masked, 6) if masked else 0.0,
    }


def target_text(ids: list[int], symbols: list[str]) -> str:
    """A row of token ids as a sentence (special tokens dropped, BPE undone)."""
    return to_text([symbols[i] for i in ids if i >= len(SPECIALS) and symbols[i] != MASK])


@torch.no_grad()
def translate(model: Translator, src: torch.Tensor, beam: int, batch_size: int = 200) -> list:
    """The best hypothesis of fairseq's beam search (beam 1: greedy) for each source, as a list
    of token ids without </s>; in eval mode."""
    from fairseq.sequence_generator import SequenceGenerator

    generator = SequenceGenerator(
        [model.net],
        model.dictionary,
        beam_size=beam,
        max_len_a=MAX_LENGTH_A,
        max_len_b=MAX_LENGTH_B,
    )
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(src), batch_size):
        tokens = _trim(src[i : i + batch_size])
        sample = {"net_input": {"src_tokens": tokens, "src_lengths": (tokens != PAD).sum(1)}}
        for hypos in generator.generate([model.net], sample):
            out.append([t for t in hypos[0]["tokens"].tolist() if t != EOS])
    model.train(was_training)
    return out


def translations(model: Translator, src: torch.Tensor, symbols: list[str], beam: int) -> list:
    """The sentences `model` translates `src` into (BPE undone)."""
    return [target_text(ids, symbols) for ids in translate(model, src, beam)]


def greedy_bleu(model: Translator, src: torch.Tensor, references: list[str], symbols) -> float:
    """sacreBLEU of the greedy translations of `src` (what a teacher's state reads)."""
    import sacrebleu

    hypotheses = translations(model, src, symbols, beam=1)
    return sacrebleu.metrics.BLEU().corpus_score(hypotheses, [references]).score


def bleu_scores(model: Translator, data, split: str, beam: int) -> dict:
    """sacreBLEU (its signature kept), chrF and BLEU on lowercased text (beside the papers'
    tokenised multi-bleu numbers) of the `split`'s translations against its references."""
    import sacrebleu

    x = getattr(data, f"{split}_x")
    hypotheses = translations(model, x, data.class_names, beam)
    references = getattr(data, f"{split}_references")
    bleu = sacrebleu.metrics.BLEU()
    score = bleu.corpus_score(hypotheses, [references])
    lower = sacrebleu.metrics.BLEU(lowercase=True).corpus_score(hypotheses, [references])
    chrf = sacrebleu.metrics.CHRF().corpus_score(hypotheses, [references])
    return {
        "bleu": round(score.score, 4),
        "chrf": round(chrf.score, 4),
        "bleu_lowercase": round(lower.score, 4),
        "beam": beam,
        "sacrebleu": str(bleu.get_signature()),
    }
