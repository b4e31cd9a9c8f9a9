"""The translation track: the Ding sentence pairs and their BPE, the masked noise, the fairseq
student (its loss against fairseq's criterion, padding, float64), DIR's teacher gradient on it
against autograd through the unrolled steps, and a whole run scored with sacreBLEU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_methods import batch_of
from torch.func import functional_call

from pipeline.config import DatasetSpec, NoiseSpec, ScheduleSpec
from pipeline.core.optim import SGDRule, sgd_step
from pipeline.core.student import Student
from pipeline.data import RawDataset
from pipeline.data.translation_sources import (
    EOS,
    MASK,
    PAD,
    SPECIALS,
    _translation_dataset,
    ding_pairs,
    iwslt14_de_en,
)
from pipeline.methods.base import Context
from pipeline.methods.registry import METHODS
from pipeline.noise import generator, make_split, mask_pairs
from pipeline.task import TaskData
from pipeline.task_kinds import Translation

pytest.importorskip("fairseq")

DING_LINES = [
    "# Version :: 1.9",
    "Haus {n} | Das Haus ist groß. | Das Haus ist alt. :: house | The house is big. | "
    "The house is old.",
    "Er kam zu spät. [ugs.]; Er verspätete sich. :: He was late.; He came late.",
    "auf Einladung von jdm. :: at the invitation of sb.",
    "Das ist gut/schlecht. :: That is good/bad.",
    "Sie liest ein Buch. | Zwei Teile :: She reads a book.",  # sub-entries not aligned
    "Das Haus ist groß. :: The house is large.",  # German side seen already
    "Wir gehen nach Hause. {v} :: We are going home.",
]


def test_ding_pairs_keep_aligned_clean_sentences(tmp_path):
    path = tmp_path / "de-en"
    path.write_text("\n".join(DING_LINES) + "\n", encoding="utf-8")
    assert ding_pairs(path) == [
        ("Das Haus ist groß.", "The house is big."),
        ("Das Haus ist alt.", "The house is old."),
        ("Er kam zu spät.", "He was late."),
        ("Wir gehen nach Hause.", "We are going home."),
    ]


def tiny_pairs(n: int = 120) -> list[tuple[str, str]]:
    g = torch.Generator().manual_seed(0)
    de = ["das", "haus", "ist", "groß", "klein", "alt", "wir", "gehen", "nach", "hause"]
    en = ["the", "house", "is", "big", "small", "old", "we", "go", "to", "home"]
    pairs = []
    for _ in range(n):
        words = torch.randint(
            0, len(de), (int(torch.randint(3, 7, (1,), generator=g)),), generator=g
        )
        pairs.append(
            (" ".join(de[i] for i in words).capitalize() + ".",
             " ".join(en[i] for i in words).capitalize() + ".")
        )  # fmt: skip
    return pairs


@pytest.fixture(scope="module")
def tiny_translation() -> RawDataset:
    pairs = tiny_pairs()
    is_test = [i % 6 == 0 for i in range(len(pairs))]
    return _translation_dataset(
        "tiny", pairs, is_test, DatasetSpec(source="ding_de_en", vocab_size=40)
    )


def test_dataset_layout_is_fairseqs_dictionary(tiny_translation):
    d = tiny_translation
    assert d.classes[: len(SPECIALS)] == SPECIALS and d.classes[-1] == MASK
    for row in (*d.x, *d.y):
        tokens = row[row != PAD]
        assert tokens[-1] == EOS and (tokens[:-1] >= 3).all()
    assert len(d.references) == len(d.y) and int(d.is_test.sum()) == 20
    assert d.x.dtype == d.y.dtype == torch.int64


def test_masked_noise_masks_only_picked_pairs_and_keeps_eos():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(4, 50, (4000, 12))
    y[:, 9] = EOS
    y[:, 10:] = PAD
    x = y.clone()
    spec = NoiseSpec(kind="mask", rate=0.1, token_rate=0.15, val_size=1)
    nx, ny, picked = mask_pairs(x, y, spec, 99, PAD, g)
    assert abs(float(picked.double().mean()) - 0.1) < 0.02
    for noisy, clean in ((nx, x), (ny, y)):
        assert torch.equal(noisy[~picked], clean[~picked])
        hit = noisy != clean
        assert (noisy[hit] == 99).all() and not hit[:, 9:].any()
        assert abs(float(hit[picked][:, :9].double().mean()) - 0.15) < 0.02


def test_translation_split_is_a_function_of_the_seed(tiny_translation):
    spec = NoiseSpec(kind="mask", rate=0.3, token_rate=0.3, val_size=20)
    data_spec = DatasetSpec(source="ding_de_en")
    a, b = (make_split(tiny_translation, data_spec, spec, 0) for _ in range(2))
    other = make_split(tiny_translation, data_spec, spec, 1)
    assert torch.equal(a["train_x"], b["train_x"]) and torch.equal(a["train_y"], b["train_y"])
    assert not torch.equal(a["val_idx"], other["val_idx"])
    assert a["noise_mask"].any() and torch.equal(
        a["train_y_clean"], tiny_translation.y[a["train_idx"]]
    )
    assert 0.1 < a["realised_token_rate"] < 0.5


def test_iwslt_files_are_read_and_their_absence_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare-iwslt14.sh"):
        iwslt14_de_en(DatasetSpec(source="iwslt14_de_en", root=str(tmp_path)))
    pairs = tiny_pairs(60)
    for part, rows in (("train", pairs[:40]), ("valid", pairs[40:50]), ("test", pairs[50:])):
        for side, lang in ((0, "de"), (1, "en")):  # fairseq's BPE marks, to be undone
            text = "\n".join(r[side].replace("aus", "@@ aus") for r in rows) + "\n"
            (tmp_path / f"{part}.{lang}").write_text(text)
    d = iwslt14_de_en(DatasetSpec(source="iwslt14_de_en", root=str(tmp_path), vocab_size=40))
    assert int(d.is_test.sum()) == 10 and "@@" not in " ".join(d.references)
    assert d.references[0] == pairs[0][1]


def translation_task(raw: RawDataset, noise: NoiseSpec, dtype=torch.float32) -> TaskData:
    s = make_split(raw, DatasetSpec(source="ding_de_en"), noise, 0)
    refs = raw.references
    return TaskData(
        s["train_x"],
        s["train_y"],
        s["train_y_clean"],
        raw.x[s["val_idx"]],
        s["val_y"],
        raw.x[s["test_idx"]],
        s["test_y"],
        s["num_classes"],
        s["class_names"],
        kind="translation",
        masked_pairs=s["noise_mask"],
        val_references=[refs[i] for i in s["val_idx"].tolist()],
        test_references=[refs[i] for i in s["test_idx"].tolist()],
    )


def tiny_translator(vocab: int, dtype=torch.float64, dropout=0.0, arch="transformer"):
    from pipeline.models import build_model

    torch.manual_seed(0)
    sizes = {"ffn_dim": 16, "heads": 2} if arch == "transformer" else {"hidden_dim": 8}
    options = dict(fairseq_arch=arch, encoder_layers=1, decoder_layers=1, embed_dim=8,
                   dropout=dropout, max_positions=64, **sizes)  # fmt: skip
    return build_model("fairseq", (0,), vocab, **options).to(dtype)


def test_sentence_loss_is_fairseqs_label_smoothed_criterion(tiny_translation):
    from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

    d = tiny_translation
    model = tiny_translator(len(d.classes))
    x, y = d.x[:6], d.y[:6]
    logits = model(x, y)
    ours = Translation(0.1).losses(logits, y)
    target = y[:, : logits.shape[1]]
    lprobs = logits.log_softmax(-1)
    for i in range(len(y)):
        expected, _ = label_smoothed_nll_loss(lprobs[i], target[i], 0.1, ignore_index=PAD)
        assert torch.allclose(ours[i], expected, rtol=1e-12)


@pytest.mark.parametrize("arch", ["transformer", "lstm"])
def test_padding_columns_and_float64_leave_the_output_unchanged(tiny_translation, arch):
    """Right padding, in no length order, for both fairseq families (the LSTM encoder's
    left padding and sorted batches are switched off)."""
    d = tiny_translation
    model = tiny_translator(len(d.classes), arch=arch).eval()
    x, y = d.x[:4], d.y[:4]
    wide = (torch.cat([t, torch.full((4, 5), PAD)], 1) for t in (x, y))
    assert torch.equal(model(x, y), model(*wide))
    logits, features, (encoder,) = model(x, y, states=True)
    assert logits.dtype == features.dtype == encoder.dtype == torch.float64
    assert features.shape == (4, 8) and encoder.shape == (4, 8)


def oracle_student(raw: RawDataset, arch: str):
    """Masked pairs, a tiny float64 fairseq student of `arch` and its context: momentum SGD
    at 0.5 with weight decay, batches of 8, label smoothing 0.1."""
    data = translation_task(raw, NoiseSpec(kind="mask", rate=0.3, token_rate=0.3, val_size=20))
    schedule = ScheduleSpec(epochs=1, batch_size=8, lr=0.5, momentum=0.9, weight_decay=1e-3)
    model = tiny_translator(data.num_classes, arch=arch)
    task = Translation(0.1)
    ctx = Context(Student(model, schedule, 100), data, schedule, generator("m", 0), task=task)
    return data, model, task, ctx


@pytest.mark.parametrize("arch", ["transformer", "lstm"])
def test_dir_teacher_gradient_equals_unrolled_autograd_on_a_fairseq_student(tiny_translation, arch):
    """K = B = 2 real steps of momentum SGD on a float64 fairseq transformer or LSTM (teacher
    reading I0, I1 and L): the gradient DIR applies equals autograd through the steps
    replayed."""
    data, model, task, ctx = oracle_student(tiny_translation, arch)
    settings = METHODS["dir"].Settings(interval=2, back=2, features=("I0", "I1", "L"))
    method = METHODS["dir"](settings, ctx)
    torch.manual_seed(3)
    for p in method.teacher.parameters():
        p.data.normal_(0, 0.1)
    theta0 = {k: p.detach().clone() for k, p in model.named_parameters()}
    val_state = ctx.generator.get_state()
    grads = []
    method.optimizer.step = lambda: grads.append(
        [p.grad.clone() for p in method.teacher.parameters()]
    )
    for i in range(2):
        method.step(batch_of(data, 8 * i, 8))

    ctx.generator.set_state(val_state)
    vx, vy = method.val_batch()
    theta = {k: v.requires_grad_() for k, v in theta0.items()}
    v: dict = {}
    rule = SGDRule(0.5, 0.9, weight_decay=1e-3)
    for i in range(2):
        b = batch_of(data, 8 * i, 8)
        logits, features, maps = functional_call(model, theta, (b.x, b.y), {"states": True})
        losses = task.losses(logits, b.y)
        w = method.teacher(torch.cat([features, maps[0], losses[:, None]], 1).detach())
        names = list(theta)
        g = torch.autograd.grad((w * losses).sum(), [theta[k] for k in names], create_graph=True)
        theta, v = sgd_step(theta, dict(zip(names, g, strict=True)), v, rule)
    val = task.validation_loss(functional_call(model, theta, (vx, vy)), vy, "log_likelihood")
    expected = torch.autograd.grad(val, list(method.teacher.parameters()))
    for a, b in zip(grads[0], expected, strict=True):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-14)


def test_a_run_is_scored_with_sacrebleu(workdir, tiny_raw):
    """ding-format pairs through prepare, noise, train (ERM, Adam with warm-up) and
    evaluate: metrics.json holds BLEU, chrF and the sacreBLEU signature; examples.csv a row
    per training pair."""
    import yaml

    from pipeline import config, plan
    from pipeline.data import sources
    from pipeline.noise import write_splits
    from pipeline.train import train

    ding = workdir / "ding"
    ding.mkdir()
    lines = [f"{de} :: {en}" for de, en in tiny_pairs(150)]
    (ding / "de-en").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tiny_raw["datasets"] = {"pairs": {"source": "ding_de_en", "root": str(ding), "vocab_size": 40}}
    tiny_raw["noise"] = {"masked": {"kind": "mask", "rate": 0.2, "token_rate": 0.2, "val_size": 10}}
    tiny_raw["models"] = {"nmt": {"arch": "fairseq", "encoder_layers": 1, "decoder_layers": 1,
                                  "embed_dim": 16, "ffn_dim": 32, "heads": 2}}  # fmt: skip
    tiny_raw["schedules"] = {"nmt": {"epochs": 2, "batch_size": 16, "lr": 0.003,
                                     "optimizer": "adam", "label_smoothing": 0.1,
                                     "warmup_steps": 4, "lr_decay": "inverse_sqrt"}}  # fmt: skip
    tiny_raw["experiments"]["tiny"].update(
        dataset="pairs", model="nmt", schedule="nmt", noise=["masked"], figure=None
    )
    (workdir / "params.yaml").write_text(yaml.safe_dump(tiny_raw, sort_keys=False))
    p = config.load()
    sources.prepare(p, "pairs")
    write_splits(p, "pairs", "masked", [0])
    run = plan.Run("pairs", "nmt", "nmt", "masked", "erm", 0)
    train(p, run)
    metrics = json.loads(Path(run.file("metrics.json")).read_text())
    assert metrics["test"]["sacrebleu"].startswith("nrefs:1|")
    assert {"bleu", "chrf", "bleu_lowercase"} <= set(metrics["test"]) and "val_bleu" in metrics
    history = json.loads(Path(run.file("history.json")).read_text())
    assert [r["epoch"] for r in history] == [1, 2] and "val_bleu" in history[0]
    rows = Path(run.file("examples.csv")).read_text().splitlines()
    assert len(rows) == 1 + metrics["sizes"]["train"]


def test_methods_declare_the_kinds_of_task_they_are_written_for():
    from pipeline.methods.settings import TASK_KINDS

    declared = {n: c.task_kinds for n, c in METHODS.items() if c.task_kinds != ("classification",)}
    assert declared == TASK_KINDS


@pytest.mark.parametrize(
    "change, message",
    [
        ({"methods": {"erm": {}, "l2rw": {}}, "use": ["erm", "l2rw"]}, "l2rw .* not translation"),
        ({"methods": {"erm": {}, "dir": {"features": ["I0", "M0"]}}, "use": ["dir"]}, "I0, I1"),
        ({"noise_kind": "uniform"}, "uniform does not apply to ding_de_en"),
        ({"model": {"arch": "mlp"}}, "arch fairseq is for translation"),
        ({"methods": {"erm": {}, "ft": {"method": "erm", "start_from": "base"}}, "use": ["ft"],
          "teacher_model": "other"}, "start_from: teacher 'base' is a other"),
    ],
)  # fmt: skip
def test_params_that_do_not_suit_a_translation_are_refused(tiny_raw, change, message):
    from pipeline.config import ParamsError, parse

    nmt = {"arch": "fairseq", "encoder_layers": 1, "decoder_layers": 1, "embed_dim": 16}
    tiny_raw["datasets"] = {"pairs": {"source": "ding_de_en"}}
    kind = change.get("noise_kind", "mask")
    noise = {"kind": kind, "rate": 0.1, "val_size": 10}
    tiny_raw["noise"] = {"n": {**noise, "token_rate": 0.1} if kind == "mask" else noise}
    tiny_raw["models"] = {"nmt": change.get("model", nmt), "other": nmt}
    tiny_raw["methods"] = change.get("methods", {"erm": {}})
    tiny_raw["teachers"] = {"base": {"model": change.get("teacher_model", "nmt"),
                                     "schedule": "short", "method": "erm"}}  # fmt: skip
    tiny_raw["experiments"]["tiny"].update(
        dataset="pairs", model="nmt", noise=["n"], methods=change.get("use", ["erm"]), figure=None
    )
    with pytest.raises(ParamsError, match=message):
        parse(tiny_raw)


HELD = {"bias": True, "hold_eos": True, "metric": "sharp_01", "metric_sharpness": 5.0}


@pytest.mark.parametrize(
    ("arch", "options"), [("transformer", {}), ("lstm", {}), ("transformer", HELD)]
)
def test_dlf_teacher_gradient_equals_unrolled_autograd_on_a_fairseq_student(
    tiny_translation, arch, options
):
    """An episode of 4 momentum-SGD steps from the student's own (warm-start) weights under
    the token loss -sum_r sigmoid(Phi_{y_r} log p(y_r)), Phi in R^|V| read from a BLEU state:
    the teacher gradient DLF applies equals autograd through the steps, of one minus the dev
    expected token accuracy (float64, segments of 2 recomputed; fairseq transformer and LSTM).
    HELD: a bias per target token, `</s>` held at coefficient 1 and bias 0 (so the teacher's
    `</s>` entries get no gradient), and the sharp smoothed 0-1 token error as the measure."""
    data, model, task, ctx = oracle_student(tiny_translation, arch)
    settings = METHODS["dlf"].Settings(
        teacher_steps=1, episode_steps=4, state_every=2, segment=2, start_from="baseline",
        **options,
    )  # fmt: skip
    method = METHODS["dlf"](settings, ctx)
    assert method.teacher.W.shape == (data.num_classes, settings.keys)
    torch.manual_seed(3)
    for p in method.teacher.parameters():  # away from the start: every path active
        p.data.add_(torch.randn_like(p) * 0.3)
    start = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    theta0 = {k: p.detach().clone() for k, p in model.named_parameters()}
    steps = []
    replay = method.replay
    method.replay = lambda m, index, s, rng: steps.append((index, s)) or replay(m, index, s, rng)
    applied = []
    method.optimizer.step = lambda: applied.append(
        [p.grad.clone() for p in method.teacher.parameters()]
    )
    method.optimise_teacher()

    method.teacher.load_state_dict(start)
    theta, v = {k: t.requires_grad_() for k, t in theta0.items()}, {}
    rule = SGDRule(0.5, 0.9, weight_decay=1e-3)
    assert len(steps) == 4
    for index, state in steps:
        assert state.shape == (3,) and bool(((state >= 0) & (state <= 1)).all())
        x, y = data.train_x[index], data.train_y[index]
        logits = functional_call(model, theta, (x, y))
        log_p = logits.log_softmax(-1).gather(-1, y[:, : logits.shape[1], None]).squeeze(-1)
        target = y[:, : logits.shape[1]]
        phi, bias = method.teacher(state), method.teacher.bias
        if options:
            eos = torch.arange(len(phi)) == EOS
            phi, bias = phi.masked_fill(eos, 1.0), bias.masked_fill(eos, 0.0)
        z = phi[target] * log_p + (0 if bias is None else bias[target])
        keep = target != PAD
        loss = -(torch.sigmoid(z) * keep).sum(1).mean()
        names = list(theta)
        g = torch.autograd.grad(loss, [theta[k] for k in names], create_graph=True)
        theta, v = sgd_step(theta, dict(zip(names, g, strict=True)), v, rule)
    logits = functional_call(model, theta, (data.val_x, data.val_y))
    target = data.val_y[:, : logits.shape[1]]
    p = logits.softmax(-1)
    p_y = p.gather(-1, target[..., None]).squeeze(-1)
    measure = p_y[target != PAD].mean()
    recorded = method.history[0]["dev_expected_accuracy"]
    assert recorded == pytest.approx(float(measure.detach()), abs=1e-6)
    if options:
        error = 2 * torch.sigmoid(5.0 * (p.max(-1).values - p_y)) - 1
        measure = 1 - error[target != PAD].mean()
        assert method.history[0]["dev_measure"] == pytest.approx(float(measure.detach()), abs=1e-6)
    expected = torch.autograd.grad(1 - measure, list(method.teacher.parameters()))
    for a, b in zip(applied[0], expected, strict=True):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-14)
    if options:  # W (|V| x N) and the bias: nothing reaches `</s>`'s entries, the rest moves
        grad_w, grad_b = applied[0][1], applied[0][2]
        assert float(grad_w[EOS].abs().max()) == 0.0 and float(grad_b[EOS]) == 0.0
        assert float(grad_w.abs().max()) > 0 and float(grad_b.abs().max()) > 0
    assert torch.equal(steps[0][1][1:], steps[1][1][1:])  # the BLEU part refreshes every 2


def test_token_loss_at_unit_coefficients_is_the_sigmoid_of_each_tokens_log_likelihood():
    from pipeline.methods.dlf import token_dynamic_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 7, dtype=torch.float64)
    y = torch.tensor([[4, 5, EOS], [6, EOS, PAD]])
    got = token_dynamic_loss(logits, y, torch.ones(7, dtype=torch.float64))
    log_p = logits.log_softmax(-1)
    expected = [
        -sum(torch.sigmoid(log_p[0, r, y[0, r]]) for r in range(3)),
        -sum(torch.sigmoid(log_p[1, r, y[1, r]]) for r in range(2)),
    ]
    assert torch.allclose(got, torch.stack(expected))


def test_softmax_margin_raises_every_wrong_class_or_token_by_the_margin(tiny_translation):
    """Classification: cross entropy on logits + m [k != y]; translation: the label-smoothed
    sentence loss on the same cost-augmented logits; m = 0 gives the plain task loss."""
    from pipeline.methods.loss_baselines import cost_augmented

    torch.manual_seed(0)
    logits, y = torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 2, 1, 1])
    wrong = torch.ones(4, 3, dtype=torch.float64).scatter(1, y[:, None], 0.0)
    assert torch.allclose(cost_augmented(logits, y, 0.5), logits + 0.5 * wrong)
    d = tiny_translation
    model = tiny_translator(len(d.classes))
    x, ty = d.x[:4], d.y[:4]
    out = model(x, ty)
    task = Translation(0.1)
    assert torch.equal(task.losses(cost_augmented(out, ty, 0.0), ty), task.losses(out, ty))
    raised = cost_augmented(out, ty, 1.0)
    target = ty[:, : out.shape[1]]
    gap = (raised - out).detach()
    assert bool((gap.gather(-1, target[..., None]) == 0).all()) and float(gap.sum()) == (
        out.numel() - target.numel()
    )
    assert bool((task.losses(raised, ty) > task.losses(out, ty)).all())
