"""What differs between kinds of task, behind one small interface (KINDS):

- `batch_order(usable, data, batch_size, g)`: the order an epoch draws the training examples in;
- `forward(model, x, y)`: the student's output on a batch (a classifier reads x; a translation
  model reads the source and, teacher-forced, the target);
- `losses(output, y)`: the per-example training loss every method weights, targets or reshapes;
- `validation_loss(output, y, metric)`, `expected_accuracy(output, y)` and
  `batch_accuracy(output, y)`: what a teacher reads of the student on a validation batch (its
  meta-objective R, the smoothed accuracy it may be made of, and a score of the batch);
- `validation_figures(model, data, method)`: the history's validation record during training,
  whose `validation_key` picks the best-on-validation epoch (higher is better);
- `scores(model, data, split)`: the metrics of the evaluate stage; `headline` is the one the
  tables report;
- `example_columns(model, data)`: what examples.csv says of each training example.

The training loop, the evaluate stage and the methods use only this; a new kind of task is one
class here plus its data source, model builder and metric.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.core.student import accuracy, cross_entropy, predict
from pipeline.data.translation_sources import PAD
from pipeline.task import TaskData


def classification_metrics(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict:
    """Accuracy, error and macro F1 (classes absent from both y and pred are skipped), in %."""
    acc = float((pred == y).double().mean())
    f1s = []
    for c in range(num_classes):
        tp = float(((pred == c) & (y == c)).sum())
        support, predicted = float((y == c).sum()), float((pred == c).sum())
        if support + predicted:
            f1s.append(2 * tp / (support + predicted))
    return {
        "accuracy": round(100 * acc, 4),
        "error": round(100 * (1 - acc), 4),
        "macro_f1": round(100 * sum(f1s) / len(f1s), 4),
    }


class Classification:
    name = "classification"
    validation_key = "val_acc"
    headline = "accuracy"

    def __init__(self, label_smoothing: float = 0.0):
        if label_smoothing:
            raise ValueError("label_smoothing is a translation setting (classification: 0)")

    def batch_order(self, usable, data: TaskData, batch_size: int, g) -> torch.Tensor:
        """A random permutation."""
        return usable[torch.randperm(len(usable), generator=g)]

    def forward(self, model, x: torch.Tensor, y: torch.Tensor, **kwargs):
        return model(x, **kwargs)

    def losses(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return cross_entropy(output, y)

    def validation_loss(self, output: torch.Tensor, y: torch.Tensor, metric: str) -> torch.Tensor:
        """R = -M: the negative log-likelihood, or one minus the expected accuracy (Wu et al.)."""
        if metric == "log_likelihood":
            return F.cross_entropy(output, y)
        return 1 - self.expected_accuracy(output, y)

    def expected_accuracy(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The smoothed 0-1 accuracy: the mean probability of the true class."""
        return output.softmax(1).gather(1, y[:, None]).mean()

    def batch_accuracy(self, output: torch.Tensor, y: torch.Tensor) -> float:
        return float((output.argmax(1) == y).double().mean())

    def sample_labels(self, y: torch.Tensor) -> torch.Tensor:
        """What the weight figures colour an example by: its label."""
        return y

    def validation_figures(self, model, data: TaskData, method) -> dict:
        """The student's validation accuracy and what the method adds from the same logits
        (e.g. a learning teacher's validation loss and accuracy)."""
        logits = predict(model, data.val_x)
        return {
            "val_acc": round(accuracy(logits, data.val_y), 6),
            **method.validation_metrics(logits, data.val_x, data.val_y),
        }

    def training_fit(self, model, data: TaskData) -> dict:
        """Accuracy on the labels training sees (noisy ones included) and the fraction of the
        corrupted examples predicted as their corrupted label: near 1 - rate and 0 while the
        student ignores the noise, towards 1 and 1 as it memorises it."""
        labelled = data.train_y >= 0
        pred = predict(model, data.train_x[labelled]).argmax(1)
        given = data.train_y[labelled]
        noisy = data.noise_mask[labelled]
        fits = (pred == given).double()
        return {
            "train_acc": round(float(fits.mean()), 6),
            "noisy_fit": round(float(fits[noisy].mean()), 6) if bool(noisy.any()) else 0.0,
        }

    def scores(self, model, data: TaskData, split: str) -> dict:
        x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
        return classification_metrics(predict(model, x).argmax(1), y, data.num_classes)

    def example_columns(self, model, data: TaskData) -> dict[str, torch.Tensor | list]:
        """Each training example's prediction (class index), its probability and its loss
        on the given label (unlabelled examples: on class 0, dropped later)."""
        logits = predict(model, data.train_x)
        prob, pred = logits.softmax(1).max(1)
        names = data.class_names
        return {
            "pred": [names[i] for i in pred.tolist()],
            "label": [names[i] if i >= 0 else "" for i in data.train_y.tolist()],
            "prob": prob,
            "loss": cross_entropy(logits, data.train_y.clamp_min(0)),
        }


class Translation:
    """Sentence pairs; the student is a fairseq encoder-decoder (pipeline/translation_models.py).
    Loss: a sentence's label-smoothed token NLL summed over its target tokens (fairseq's
    label_smoothed_cross_entropy, per sentence). Validation: greedy BLEU on the validation
    split; test: beam search, sacreBLEU (and chrF, and lowercased BLEU beside the papers'
    multi-bleu numbers)."""

    name = "translation"
    validation_key = "val_bleu"
    headline = "bleu"
    BEAM = 5
    BUCKET = 50  # batches per window of the length sort

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = label_smoothing

    def batch_order(self, usable, data: TaskData, batch_size: int, g) -> torch.Tensor:
        """Batches of pairs of similar length, in random order (as fairseq's batching does, so
        a batch pads little): a random permutation, sorted by length in windows of
        BUCKET batches, cut into batches that are then shuffled."""
        order = usable[torch.randperm(len(usable), generator=g)]
        lengths = ((data.train_x != PAD).sum(1) + (data.train_y != PAD).sum(1)).cpu()
        window = self.BUCKET * batch_size
        parts = []
        for start in range(0, len(order), window):
            part = order[start : start + window]
            parts.append(part[torch.sort(lengths[part], stable=True).indices])
        grouped = torch.cat(parts)
        whole = len(grouped) // batch_size
        shuffled = torch.randperm(whole, generator=g)
        rows = grouped[: whole * batch_size].view(whole, batch_size)[shuffled]
        return torch.cat([rows.reshape(-1), grouped[whole * batch_size :]])

    def forward(self, model, x: torch.Tensor, y: torch.Tensor, **kwargs):
        return model(x, y, **kwargs)

    def losses(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from pipeline.translation_models import sentence_losses

        return sentence_losses(output, y, self.label_smoothing)

    def validation_loss(self, output: torch.Tensor, y: torch.Tensor, metric: str) -> torch.Tensor:
        """Per target token: the NLL, or one minus the expected token accuracy."""
        if metric != "log_likelihood":
            return 1 - self.expected_accuracy(output, y)
        y = y[:, : output.shape[1]]
        keep = (y != PAD).to(output.dtype)
        log_p = output.log_softmax(-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
        return -(log_p * keep).sum() / keep.sum()

    def expected_accuracy(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The smoothed token accuracy: the mean probability of each target token,
        teacher-forced."""
        y = y[:, : output.shape[1]]
        keep = (y != PAD).to(output.dtype)
        p_y = output.softmax(-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
        return (p_y * keep).sum() / keep.sum()

    def batch_accuracy(self, output: torch.Tensor, y: torch.Tensor) -> float:
        """Teacher-forced token accuracy."""
        y = y[:, : output.shape[1]]
        keep = y != PAD
        return float(((output.argmax(-1) == y) & keep).sum() / keep.sum())

    def sample_labels(self, y: torch.Tensor) -> torch.Tensor:
        """What the weight figures colour a pair by: its target length in tokens."""
        return (y != PAD).sum(1)

    def validation_figures(self, model, data: TaskData, method) -> dict:
        from pipeline.translation_models import bleu_scores

        bleu = bleu_scores(model, data, "val", beam=1)["bleu"]
        return {"val_bleu": round(bleu, 4)}

    def training_fit(self, model, data: TaskData) -> dict:
        """Teacher-forced token accuracy on the targets training sees and, in the masked
        pairs, the fraction of <mask> tokens predicted as <mask> (memorising the noise)."""
        from pipeline.translation_models import token_fit

        return token_fit(model, data)

    def scores(self, model, data: TaskData, split: str) -> dict:
        from pipeline.translation_models import bleu_scores

        return bleu_scores(model, data, split, beam=self.BEAM)

    def example_columns(self, model, data: TaskData) -> dict[str, torch.Tensor | list]:
        """Each training pair's given (possibly masked) target and its loss under the model
        (no smoothing); `prob` is the geometric mean of its token probabilities."""
        from pipeline.translation_models import pair_losses, target_text

        loss, tokens = pair_losses(model, data.train_x, data.train_y)
        return {
            "pred": [""] * len(loss),
            "label": [target_text(row, data.class_names) for row in data.train_y.tolist()],
            "prob": torch.exp(-loss / tokens),
            "loss": loss,
        }


KINDS = {"classification": Classification, "translation": Translation}


def task_kind(data: TaskData, label_smoothing: float = 0.0):
    return KINDS[data.kind](label_smoothing)
