"""The distillation protocols: the one-stage start (the teacher's pretrained checkpoint, not the
fine-tuned one; both classifier heads at zero), ProKT (online distillation without the
distillation influence), and the validation subset the history is scored on."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from test_distill import CLASSES, make, task, token_ids  # noqa: F401 (fixture)

from pipeline import plan
from pipeline.__main__ import main
from pipeline.config import load
from pipeline.io import load_torch, read_json
from pipeline.methods.base import Batch
from pipeline.text_models import random_encoder
from pipeline.train import train, untuned_teacher, validation_view


@pytest.mark.parametrize("name", ["dml", "prokt", "lgtm"])
def test_one_stage_starts_both_heads_at_zero(task, name):  # noqa: F811
    """Both classifiers are zero, so teacher and student start at the uniform distribution;
    the teacher's encoder is the given pretrained one; without one_stage nothing is zeroed."""
    method = make(name, task, one_stage=True)
    for model in (method.teacher, method.student.model):
        assert all(not p.any() for p in model.classifier.parameters())
        probs = model.eval()(task.val_x).softmax(1)
        torch.testing.assert_close(probs, torch.full_like(probs, 1 / CLASSES))
    pretrained = method.ctx.pretrained["t"].state_dict()
    encoder = {k: v for k, v in method.teacher.state_dict().items() if k.startswith("encoder.")}
    assert encoder and all(torch.equal(v, pretrained[k]) for k, v in encoder.items())

    two_stage = make(name, task)
    for model in (two_stage.teacher, two_stage.student.model):
        assert model.classifier.weight.abs().sum() > 0


def test_the_frozen_teachers_have_no_one_stage():
    """KD and Meta Distill distill from the fine-tuned teacher by definition."""
    from pipeline.methods.settings import SETTINGS

    for kind in ("kd", "meta_distill"):
        assert "one_stage" not in {f.name for f in dataclasses.fields(SETTINGS[kind])}
    for kind in ("dml", "prokt", "lgtm"):
        assert "one_stage" in {f.name for f in dataclasses.fields(SETTINGS[kind])}


def saved_bert(folder: Path) -> dict:
    """A tiny BERT written as a Hugging Face model folder (a stand-in for a pretrained
    checkpoint such as all-MiniLM-L6-v2); its weights."""
    torch.manual_seed(11)
    encoder = random_encoder(16, 2, 2, 110, 0.0)
    encoder.save_pretrained(str(folder))
    return {k: v.clone() for k, v in encoder.state_dict().items()}


def test_one_stage_teacher_is_the_pretrained_checkpoint_not_the_fine_tuned(
    workdir,
    tiny_raw,
    tmp_path,
    task,  # noqa: F811
):
    """The train stage builds a one-stage teacher from its model's checkpoint, and neither
    the plan nor the run reads the pretrain stage's fine-tuned model; a two-stage method
    needs that model."""
    weights = saved_bert(tmp_path / "bert")
    tiny_raw["models"]["bert"] = {"arch": "text_bert", "weights": str(tmp_path / "bert")}
    tiny_raw["teachers"] = {"big": {"model": "bert", "schedule": "short", "method": "erm"}}
    tiny_raw["methods"].update(
        dml={"teacher": "big"}, dml_one={"method": "dml", "teacher": "big", "one_stage": True}
    )
    Path("params.yaml").write_text(yaml.safe_dump(tiny_raw, sort_keys=False))
    p = load("params.yaml")
    assert p.teacher_of("dml") == "big" and p.untuned_teacher_of("dml") is None
    assert p.teacher_of("dml_one") is None and p.untuned_teacher_of("dml_one") == "big"
    fine_tuned = "results/teachers/digits/clean/big/seed0/model.pt"
    needs = {
        m: plan.train_job(p, plan.Cell("digits", "mlp", "short", "clean", m, (0,))).deps
        for m in ("dml", "dml_one")
    }
    assert fine_tuned in needs["dml"] and fine_tuned not in needs["dml_one"]

    teacher = untuned_teacher(p, "big", task, 0, torch.device("cpu"))
    got = teacher.encoder.state_dict()
    assert set(weights) <= set(got)
    assert all(torch.equal(got[k], v) for k, v in weights.items())
    again = untuned_teacher(p, "big", task, 0, torch.device("cpu"))
    assert torch.equal(again.classifier.weight, teacher.classifier.weight)  # seeded


@pytest.fixture
def digits(workdir, tiny_raw):
    """Prepared digits, with a teacher entry and one-stage and two-stage methods."""
    tiny_raw["teachers"] = {"big": {"model": "mlp", "schedule": "short", "method": "erm"}}
    tiny_raw["methods"].update(
        dml={"teacher": "big"},
        dml_one={"method": "dml", "teacher": "big", "one_stage": True, "teacher_lr": 0.01},
        prokt={"teacher": "big", "one_stage": True, "teacher_lr": 0.01},
        focal={},
    )
    Path("params.yaml").write_text(yaml.safe_dump(tiny_raw, sort_keys=False))
    assert main(["prepare", "--dataset", "digits"]) == 0
    assert main(["noise", "--dataset", "digits", "--noise", "clean", "--seeds", "0,1"]) == 0
    return tiny_raw


def test_a_one_stage_run_never_reads_the_fine_tuned_teacher(digits, capsys):
    """No pretrain has run: the two-stage method stops for want of its fine-tuned teacher,
    the one-stage one trains and its teacher learns."""
    p = load("params.yaml")
    two = plan.Run("digits", "mlp", "short", "clean", "dml", 0)
    with pytest.raises(FileNotFoundError, match="teacher 'big' is not pretrained"):
        train(p, two)
    one = dataclasses.replace(two, method="dml_one")
    train(p, one)
    teacher = load_torch(one.file("model.pt"))["method"]["teacher"]
    assert teacher["classifier.weight"].abs().sum() > 0  # learned from zero
    assert read_json(one.file("metrics.json"))["test"]["accuracy"] > 50


def test_prokt_teacher_learns_from_l_aux_alone(task):  # noqa: F811
    """ProKT's teacher gradient is that of teacher_alpha CE(y, T) + (1 - teacher_alpha)
    CE(S, T) (the student's distribution as target): no distillation influence, and the
    validation split is never read. LGTM in the same state adds a non-zero influence."""
    method = make("prokt", task, teacher_alpha=0.7, temperature=2.0)
    method.val_batch = method.val_index = None  # any validation read fails
    batch = Batch(task.train_x[:6], task.train_y[:6], torch.arange(6))
    captured = {}
    method.update_teacher = lambda loss: captured.setdefault("loss", loss)
    method.update_student = lambda logits, batch: torch.tensor(0.0)
    teacher = list(method.teacher.parameters())
    logits = method.student.model(batch.x).detach()
    method.step(batch)
    got = torch.autograd.grad(captured["loss"], teacher)

    t = method.teacher(batch.x)
    soft = -((logits / 2).softmax(1) * (t / 2).log_softmax(1)).sum(1).mean() * 4
    expected = torch.autograd.grad(0.7 * F.cross_entropy(t, batch.y) + 0.3 * soft, teacher)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)

    lgtm = make("lgtm", task, teacher_alpha=0.7, temperature=2.0, influence="jvp")
    lgtm.update_teacher = lambda loss: captured.__setitem__("lgtm", loss)
    lgtm.update_student = method.update_student
    lgtm.val_batch = lambda size=None: (task.val_x, task.val_y)
    lgtm.step(batch)
    with_influence = torch.autograd.grad(captured["lgtm"], list(lgtm.teacher.parameters()))
    gap = sum(float((a - b).abs().sum()) for a, b in zip(with_influence, got, strict=True))
    assert gap > 1e-9


def test_prokt_updates_teacher_then_student(task):  # noqa: F811
    """Eq. 4: the student's step reads the teacher as updated in the same step."""
    method = make("prokt", task, teacher_lr=0.01)
    batch = Batch(task.train_x[:6], task.train_y[:6], torch.arange(6))
    before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    seen = {}
    update = method.student.update

    def spy(loss):
        seen["teacher"] = {k: v.clone() for k, v in method.teacher.state_dict().items()}
        update(loss)

    method.student.update = spy
    logged = method.step(batch)
    assert any(not torch.equal(before[k], seen["teacher"][k]) for k in before)
    assert set(logged) == {"loss", "teacher_loss", "teacher_ce"}


def test_the_validation_subset_is_fixed_per_seed(task):  # noqa: F811
    """The same examples at every call of a seed, another draw for another seed; size 0
    (or the whole split) is the whole split."""
    data = dataclasses.replace(task, val_x=token_ids(40, 5), val_y=torch.arange(40) % CLASSES)
    first, again = validation_view(data, 12, 0), validation_view(data, 12, 0)
    assert len(first.val_y) == 12 and torch.equal(first.val_x, again.val_x)
    assert torch.equal(first.val_y, again.val_y)
    rows = {tuple(r) for r in data.val_x.tolist()}
    assert {tuple(r) for r in first.val_x.tolist()} <= rows
    assert not torch.equal(validation_view(data, 12, 1).val_x, first.val_x)
    assert validation_view(data, 0, 0) is data and validation_view(data, 40, 0) is data
    assert torch.equal(first.test_x, data.test_x)  # the test split untouched


def test_every_method_is_validated_on_the_same_subset_and_tested_on_all(digits, monkeypatch):
    """With val_subset and val_every_epochs, every validation record of every method of a seed
    reads the same examples, only the chosen epochs (and the last) are validated, and the
    test split is scored in full."""
    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["schedules"]["sparse"] = {**raw["schedules"]["short"], "epochs": 3}
    raw["schedules"]["sparse"].update(val_subset=30, val_every_epochs=2, eval_every=5)
    Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    p = load("params.yaml")
    from pipeline import task_kinds

    seen = []
    figures = task_kinds.Classification.validation_figures

    def spy(self, model, data, method):
        seen.append((type(method).__name__, data.val_x.clone()))
        return figures(self, model, data, method)

    monkeypatch.setattr(task_kinds.Classification, "validation_figures", spy)
    for method in ("focal", "prokt"):
        run = plan.Run("digits", "mlp", "sparse", "clean", method, 0)
        train(p, run)
        history = read_json(run.file("history.json"))
        epochs = [r for r in history if "epoch" in r]
        assert ["val_acc" in r for r in epochs] == [False, True, True]
        accuracies = [r["val_acc"] * 30 for r in history if "val_acc" in r]
        assert all(abs(a - round(a)) < 1e-4 for a in accuracies)  # k of 30 examples
        metrics = read_json(run.file("metrics.json"))
        assert metrics["sizes"]["test"] == 297 and metrics["best_epoch"] in (2, 3)
    assert {name for name, _ in seen} == {"Focal", "ProKT"} and len(seen) > 4
    assert all(torch.equal(x, seen[0][1]) for _, x in seen)
    assert len(seen[0][1]) == 30
