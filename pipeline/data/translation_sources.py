"""Translation datasets: German-English sentence pairs as token ids of one joint BPE vocabulary.

`ding_de_en` (offline): the example sentences of the Ding German-English dictionary (Debian
`trans-de-en`, GPL-2+), lines `de :: en` whose ` | `-separated sub-entries are aligned. A pair is
kept when, after dropping `{...}` / `[...]` annotations and all synonyms but the first, both
sides are sentences (capitalised, ending in . ! or ?, at least 3 words, not an abbreviation
like "jdm.") without `/` alternatives or parentheses; duplicates of either side are dropped.
`iwslt14_de_en` (paper profile): the tokenised, BPE'd files of fairseq's
`prepare-iwslt14.sh` (train/valid/test.de and .en) that the user provides under `root`.

The layout is fairseq's dictionary: <s> 0, <pad> 1, </s> 2, <unk> 3, the BPE pieces, <mask>
last (the masked-noise token). x holds source ids and y target ids, each ending in </s> and
padded with <pad> to the longest kept pair; the vocabulary is the dataset's `classes`.
The test split is fixed here, before the BPE is learnt from the rest (the validation split is
carved from that rest by the noise stage), so no test sentence shapes the vocabulary.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import torch

from pipeline.config import DatasetSpec
from pipeline.data import RawDataset

DING_FILE = "/usr/share/trans/de-en"
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
PAD, EOS, UNK = 1, 2, 3
MASK = "<mask>"
DING_TEST = 1000  # pairs in the fixed test split (before the length filter)
WORD_BOUNDARY = "\u2581"  # SentencePiece's marker of a word start

_ANNOTATION = re.compile(r"\s*(\{[^}]*\}|\[[^\]]*\])")
_ABBREVIATION = re.compile(r"\b(jdm|jdn|jds|etw|sb|sth|usw|etc|vgl|z\.B|bzw)\.$")


def _clean(side: str) -> str:
    return re.sub(r"\s+", " ", _ANNOTATION.sub("", side.split(";")[0])).strip()


def _sentence(s: str) -> bool:
    return (
        len(s.split()) >= 3
        and s[0].isupper()
        and s.endswith((".", "!", "?"))
        and not re.search(r"[/()<>~]", s)
        and not _ABBREVIATION.search(s)
    )


def ding_pairs(path: str | Path = DING_FILE) -> list[tuple[str, str]]:
    """The dictionary's sentence pairs (German, English) in file order, deduplicated."""
    pairs, seen_de, seen_en = [], set(), set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or " :: " not in line:
                continue
            de, en = line.rstrip("\n").split(" :: ", 1)
            de_parts, en_parts = de.split(" | "), en.split(" | ")
            if len(de_parts) != len(en_parts):
                continue
            for d, e in zip(map(_clean, de_parts), map(_clean, en_parts), strict=True):
                if _sentence(d) and _sentence(e) and d not in seen_de and e not in seen_en:
                    seen_de.add(d)
                    seen_en.add(e)
                    pairs.append((d, e))
    return pairs


def learn_bpe(sentences: list[str], vocab_size: int):
    """A SentencePiece BPE model learnt from `sentences` (in memory, one thread: the same
    pieces on every machine)."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=1.0,
        unk_id=0,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        num_threads=1,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    return spm.SentencePieceProcessor(model_proto=model.getvalue())


def to_text(pieces: list[str]) -> str:
    """BPE pieces back to a sentence (SentencePiece's decoding, without its model)."""
    return "".join(pieces).replace(WORD_BOUNDARY, " ").strip()


def _padded(rows: list[list[int]]) -> torch.Tensor:
    out = torch.full((len(rows), max(map(len, rows))), PAD, dtype=torch.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row)
    return out


def _translation_dataset(
    name: str, pairs: list[tuple[str, str]], is_test: list[bool], spec: DatasetSpec
) -> RawDataset:
    """Learn the joint BPE on the non-test pairs, encode both sides and drop pairs longer than
    `max_length` tokens (</s> included)."""
    train_side = [s for (d, e), t in zip(pairs, is_test, strict=True) if not t for s in (d, e)]
    bpe = learn_bpe(train_side, spec.vocab_size)
    pieces = [bpe.id_to_piece(i) for i in range(1, bpe.get_piece_size())]
    symbols = [*SPECIALS, *pieces, MASK]

    def ids(sentence: str) -> list[int]:
        return [UNK if i == 0 else len(SPECIALS) - 1 + i for i in bpe.encode(sentence)] + [EOS]

    src, tgt, test, refs = [], [], [], []
    for (d, e), t in zip(pairs, is_test, strict=True):
        s, r = ids(d), ids(e)
        if len(s) <= spec.max_length and len(r) <= spec.max_length:
            src.append(s)
            tgt.append(r)
            test.append(t)
            refs.append(e)
    return RawDataset(
        name, _padded(src), _padded(tgt), torch.tensor(test), symbols, references=refs
    )


def ding_de_en(spec: DatasetSpec) -> RawDataset:
    pairs = ding_pairs(Path(spec.root) / "de-en" if spec.root else DING_FILE)
    g = torch.Generator().manual_seed(0)  # the test split is the same for every seed
    is_test = torch.zeros(len(pairs), dtype=torch.bool)
    size = min(DING_TEST, len(pairs) // 10)  # a smaller file of the user's: a tenth
    is_test[torch.randperm(len(pairs), generator=g)[:size]] = True
    return _translation_dataset("ding_de_en", pairs, is_test.tolist(), spec)


def iwslt14_de_en(spec: DatasetSpec) -> RawDataset:
    """fairseq's prepare-iwslt14.sh output (its BPE is undone, ours learnt on its train set)."""
    root = Path(spec.root or "results/data/iwslt14.tokenized.de-en")
    files = {
        (part, lang): root / f"{part}.{lang}"
        for part in ("train", "valid", "test")
        for lang in ("de", "en")
    }
    missing = [str(f) for f in files.values() if not f.exists()]
    if missing:
        raise FileNotFoundError(
            f"iwslt14_de_en: {', '.join(missing)} not found: run fairseq's "
            "examples/translation/prepare-iwslt14.sh and set datasets.<name>.root to its "
            "iwslt14.tokenized.de-en folder"
        )

    def read(part: str, lang: str) -> list[str]:
        text = files[part, lang].read_text(encoding="utf-8")
        return [line.replace("@@ ", "").strip() for line in text.splitlines()]

    pairs, is_test = [], []
    for part in ("train", "valid", "test"):
        de, en = read(part, "de"), read(part, "en")
        if len(de) != len(en):
            raise ValueError(f"iwslt14_de_en: {part}.de and {part}.en differ in line count")
        pairs += list(zip(de, en, strict=True))
        is_test += [part == "test"] * len(de)
    return _translation_dataset("iwslt14_de_en", pairs, is_test, spec)


TRANSLATION_SOURCES = {"ding_de_en": ding_de_en, "iwslt14_de_en": iwslt14_de_en}
