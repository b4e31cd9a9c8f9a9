"""Training: ERM learns, a killed run resumes to the same result, evaluation uses the test split."""

from __future__ import annotations

import dataclasses
import io
import re
from pathlib import Path

import pytest
import torch
import yaml

from pipeline import plan
from pipeline.__main__ import main
from pipeline.config import load
from pipeline.io import load_torch, read_json
from pipeline.train import train, train_cell

RUN = plan.Run("digits", "mlp", "short", "uniform40", "erm", 0)
RUN_ARGS = ["--dataset", "digits", "--model", "mlp", "--schedule", "short", "--method", "erm"]


@pytest.fixture
def prepared(workdir):
    assert main(["prepare", "--dataset", "digits"]) == 0
    for noise in ("clean", "uniform40"):
        assert main(["noise", "--dataset", "digits", "--noise", noise, "--seeds", "0,1"]) == 0
    return load("params.yaml")


def model_state(run: plan.Run) -> dict:
    return load_torch(run.file("model.pt"))["model"]


@pytest.mark.parametrize("method", ["erm", "mwn"])
def test_interrupted_run_resumes_to_the_same_weights(prepared, method):
    """MW-Net also resumes its teacher and the teacher's momentum."""
    params, run = with_method(method), dataclasses.replace(RUN, method=method)
    train(params, run)
    saved, history = load_torch(run.file("model.pt")), Path(run.file("history.json")).read_text()
    checkpoint = Path(run.checkpoint)
    assert not checkpoint.exists()  # removed once the outputs are written

    Path(run.file("model.pt")).unlink()
    train(params, run, stop_after_epoch=1)  # "killed" after epoch 1
    assert checkpoint.exists() and not Path(run.file("model.pt")).exists()
    assert load_torch(checkpoint)["epoch"] == 1
    train(params, run)  # resumes at epoch 2
    resumed = load_torch(run.file("model.pt"))
    for key in ("model", "method"):
        assert_same_tensors(saved[key], resumed[key])
    assert Path(run.file("history.json")).read_text() == history


def test_a_run_killed_during_dlfs_teacher_optimisation_resumes_at_its_next_step(
    prepared, monkeypatch
):
    """DLF's teacher steps come before the student's first; each ends with a checkpoint, and
    the resumed run ends with the weights, teacher and history of one never killed."""
    from pipeline.methods.dlf import DLF

    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["methods"]["dlf"] = {"teacher_steps": 3, "episode_steps": 4, "state_every": 2}
    Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params, run = load("params.yaml"), dataclasses.replace(RUN, method="dlf")
    train(params, run)
    saved, history = load_torch(run.file("model.pt")), Path(run.file("history.json")).read_text()
    Path(run.file("model.pt")).unlink()

    episode, done = DLF.episode, []

    def killed_at_the_third(self, k):
        if k == 2:
            raise KeyboardInterrupt
        done.append(k)
        return episode(self, k)

    monkeypatch.setattr(DLF, "episode", killed_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        train(params, run)
    state = load_torch(run.checkpoint)
    assert state["epoch"] == 0 and len(state["method"]["metrics"]["teacher_history"]) == 2
    monkeypatch.setattr(DLF, "episode", lambda self, k: done.append(k) or episode(self, k))
    train(params, run)
    assert done == [0, 1, 2]  # the resumed run did only the third step
    resumed = load_torch(run.file("model.pt"))
    for key in ("model", "method"):
        assert_same_tensors(saved[key], resumed[key])
    assert Path(run.file("history.json")).read_text() == history


def test_the_saved_model_keeps_the_teacher_not_its_optimiser(prepared):
    run = dataclasses.replace(RUN, method="mwn")
    train(with_method("mwn"), run)
    saved = load_torch(run.file("model.pt"))
    assert set(saved["method"]) == {"teacher"} and saved["method"]["teacher"]
    best = saved["best_val"]  # its weights are kept only when it is not the final model
    assert best["epoch"] in (1, 2) and (best["model"] is None) == (best["epoch"] == 2)


def with_method(name: str):
    """params.yaml with the method `name` (default settings) added."""
    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["methods"].setdefault(name, {})
    Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return load("params.yaml")


def assert_same_tensors(a, b) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same_tensors(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same_tensors(x, y)
    else:
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def test_a_killed_cell_redoes_no_finished_seed(prepared, capsys):
    """Both engines delete a failed job's outputs; the finished seed's last checkpoint stays
    until the whole cell is done, so the rerun only writes that seed's outputs again."""
    cell = plan.Cell("digits", "mlp", "short", "uniform40", "erm", (0, 1))
    train_cell(prepared, cell)
    first = {r.seed: model_state(r) for r in cell.runs}
    assert not any(Path(r.checkpoint).exists() for r in cell.runs)

    train(prepared, cell.runs[0], keep_checkpoint=True)  # seed 0 done, then the job dies
    for r in cell.runs:
        for name in plan.RUN_OUTPUTS:
            Path(r.file(name)).unlink()
    capsys.readouterr()
    train_cell(prepared, cell)
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert "seed0 from epoch 2" in out and "seed1 from" not in out
    assert all(
        torch.equal(first[r.seed][k], model_state(r)[k]) for r in cell.runs for k in first[0]
    )
    assert not any(Path(r.checkpoint).exists() for r in cell.runs)


def test_erm_learns_and_is_scored_on_test(prepared):
    assert main(["train", "--noise", "clean", *RUN_ARGS, "--seeds", "0"]) == 0
    clean = plan.Run("digits", "mlp", "short", "clean", "erm", 0)
    m = read_json(clean.file("metrics.json"))  # train scores the model on the test split
    Path(clean.file("metrics.json")).unlink()
    assert main(["evaluate", "--noise", "clean", *RUN_ARGS, "--seed", "0"]) == 0  # re-scoring
    assert read_json(clean.file("metrics.json")) == m
    assert m["sizes"]["test"] == 297 and m["test"]["accuracy"] > 85
    assert m["test"]["error"] == pytest.approx(100 - m["test"]["accuracy"])
    assert m["settings"]["noise"]["clean"]["kind"] == "none" and m["seed"] == 0
    assert m["provenance"]["git"] and 1 <= m["best_epoch"] <= 2
    history = read_json(clean.file("history.json"))
    assert [h["epoch"] for h in history] == [1, 2] and history[-1]["loss"] < history[0]["loss"]


def test_validation_records_between_epochs_leave_training_unchanged(prepared):
    train(prepared, RUN)
    reference, per_epoch = model_state(RUN), read_json(RUN.file("history.json"))
    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["schedules"]["short"]["eval_every"] = 4
    Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    train(load("params.yaml"), RUN)
    assert all(torch.equal(reference[k], model_state(RUN)[k]) for k in reference)
    history = read_json(RUN.file("history.json"))
    steps_per_epoch = per_epoch[0]["step"]
    between = [r["step"] for r in history if "epoch" not in r]
    assert between == [s for s in range(4, 2 * steps_per_epoch, 4) if s % steps_per_epoch]
    assert all(0 <= r["val_acc"] <= 1 for r in history)
    assert [r for r in history if "epoch" in r] == per_epoch


def test_unknown_name_on_the_command_line(prepared, capsys):
    assert main(["train", "--noise", "uniform45", *RUN_ARGS, "--seeds", "0"]) == 2
    assert "--noise uniform45" in capsys.readouterr().err


@pytest.fixture
def with_teacher(workdir, tiny_raw):
    """The tiny params with a teacher pretrained for two methods that share it."""
    import yaml

    tiny_raw["teachers"] = {"big": {"model": "mlp", "schedule": "short", "method": "erm"}}
    tiny_raw["methods"].update(
        noisy_student={"teacher": "big", "augment": "none"}, reduced_mpl={"teacher": "big"}
    )
    tiny_raw["experiments"]["tiny"]["methods"] = ["erm", "noisy_student", "reduced_mpl"]
    Path("params.yaml").write_text(yaml.safe_dump(tiny_raw, sort_keys=False))
    assert main(["prepare", "--dataset", "digits"]) == 0
    assert main(["noise", "--dataset", "digits", "--noise", "clean", "--seeds", "0"]) == 0
    return load("params.yaml")


def test_a_pretrained_teacher_is_one_job_reused_by_every_method(with_teacher, capsys):
    p = with_teacher
    pretrains = [j for j in plan.jobs(p) if j.name.startswith("pretrain-")]
    assert [j.name for j in pretrains] == [
        "pretrain-big-digits-clean",
        "pretrain-big-digits-uniform40",
    ]
    teacher_model = "results/teachers/digits/clean/big/seed0/model.pt"
    assert teacher_model in pretrains[0].outs
    needs = {
        m: plan.train_job(p, plan.Cell("digits", "mlp", "short", "clean", m, p.seeds)).deps
        for m in ("erm", "noisy_student", "reduced_mpl")
    }
    assert teacher_model not in needs["erm"]
    assert teacher_model in needs["noisy_student"] and teacher_model in needs["reduced_mpl"]

    args = ["--model", "mlp", "--schedule", "short", "--noise", "clean", "--seeds", "0"]
    assert main(["train", "--dataset", "digits", "--method", "noisy_student", *args]) == 2
    assert "teacher 'big' is not pretrained" in capsys.readouterr().err
    teacher_args = ["--teacher", "big", "--dataset", "digits", "--noise", "clean", "--seeds", "0"]
    assert main(["pretrain", *teacher_args]) == 0
    assert read_json(Path(teacher_model).with_name("metrics.json"))["test"]["accuracy"] > 80
    for method in ("noisy_student", "reduced_mpl"):
        assert main(["train", "--dataset", "digits", "--method", method, *args]) == 0
        run = plan.Run("digits", "mlp", "short", "clean", method, 0)
        assert read_json(run.file("metrics.json"))["test"]["accuracy"] > 50


def test_teacher_references_are_checked(tiny_raw):
    from pipeline.config import ParamsError, parse

    tiny_raw["methods"]["noisy_student"] = {"teacher": "missing"}
    with pytest.raises(ParamsError, match="methods.noisy_student.teacher: unknown teacher"):
        parse(tiny_raw)
    tiny_raw["teachers"] = {
        "missing": {"model": "mlp", "schedule": "short", "method": "noisy_student"}
    }
    with pytest.raises(ParamsError, match="teachers.missing.method: a teacher's method needs no"):
        parse(tiny_raw)


def test_every_stage_is_described_in_the_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    listing = capsys.readouterr().out.split("positional arguments:")[1]
    described = re.findall(r"^    (\S+) +\S", listing, re.M)
    stages = re.search(r"\{([a-z,-]+)\}", listing).group(1).split(",")
    assert described == stages and "bench" in stages


def test_a_diverging_run_stops_naming_the_run_the_step_and_the_tensor(prepared, capsys):
    """One check in the student's update serves every method: a NaN or an infinity stops the
    job before it is applied (exit 1, no traceback) and nothing is written for the run. A
    learning rate that is not finite never gets that far: params.yaml is refused (exit 2)."""
    raw = yaml.safe_load(Path("params.yaml").read_text())
    for lr, code in ((float("nan"), 2), (1e6, 1)):
        raw["schedules"]["short"]["lr"] = lr
        Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        assert main(["train", "--noise", "clean", *RUN_ARGS, "--seeds", "0"]) == code
    refused, diverged = capsys.readouterr().err.split("\n", 1)
    assert refused == "error: schedules.short.lr: must be a finite number, got nan"
    found = r"epoch \d+, step \d+: the training loss is nan"  # over a few steps
    assert re.search(r"error: digits-mlp-short-clean-erm-seed0, " + found, diverged), diverged
    assert "Traceback" not in diverged
    clean = plan.Run("digits", "mlp", "short", "clean", "erm", 0)
    assert not Path(clean.file("metrics.json")).exists()


def test_json_is_strict_and_a_table_refuses_a_non_finite_metric(prepared):
    from pipeline.io import write_json
    from pipeline.report import finite_or_refuse

    with pytest.raises(ValueError, match="not JSON compliant"):
        write_json({"loss": float("nan")}, "results/x.json")
    assert not Path("results/x.json").exists()
    with pytest.raises(FloatingPointError, match=r"m\.json: test\.accuracy is nan"):
        finite_or_refuse("m.json", {"test": {"accuracy": float("nan"), "error": 0.0}})
    finite_or_refuse("m.json", {"test": {"accuracy": 90.0}})


@pytest.mark.parametrize("damage", ["settings", "garbage"])
def test_a_stale_or_broken_checkpoint_is_set_aside_and_training_starts_over(
    prepared, capsys, damage
):
    """A checkpoint made at another learning rate (or one that does not load) is renamed
    *.stale with a log line; the run then ends as a clean run at the current settings."""
    raw = yaml.safe_load(Path("params.yaml").read_text())
    checkpoint = Path(RUN.checkpoint)
    if damage == "settings":
        train(prepared, RUN, stop_after_epoch=1)  # "killed" after epoch 1 at lr 0.1
        raw["schedules"]["short"]["lr"] = 0.05
        Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    else:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.write_bytes(b"\x00" * 64)
    assert checkpoint.exists()
    now = load("params.yaml")
    train(now, RUN, keep_checkpoint=True)
    reason = "was made with other settings" if damage == "settings" else "does not load"
    assert reason in capsys.readouterr().err
    assert Path(f"{checkpoint}.stale").exists()
    resumed, history = model_state(RUN), read_json(RUN.file("history.json"))
    checkpoint.unlink()
    train(now, RUN)  # from scratch, nothing to resume
    assert_same_tensors(resumed, model_state(RUN))
    assert read_json(RUN.file("history.json")) == history


def test_torch_outputs_are_byte_identical_across_reruns(prepared):
    """A rerun rewrites model.pt and the noise splits with the same bytes (DVC then sees no
    change): torch.save into a buffer names its records the same way every time."""
    train(prepared, RUN)
    first = Path(RUN.file("model.pt")).read_bytes()
    split = Path(plan.split_path("digits", "uniform40", 0))
    split_bytes = split.read_bytes()
    train(prepared, RUN)
    assert main(["noise", "--dataset", "digits", "--noise", "uniform40", "--seeds", "0,1"]) == 0
    assert Path(RUN.file("model.pt")).read_bytes() == first
    assert split.read_bytes() == split_bytes


def test_a_killed_write_leaves_no_temporary_file_after_the_next_one(tmp_path):
    from pipeline.io import write_json

    target = tmp_path / "metrics.json"
    leftover = tmp_path / ".metrics.json.k3x9.tmp"  # what SIGKILL during a write leaves
    leftover.write_text("{half")
    other = tmp_path / ".history.json.a1b2.tmp"  # another file's: not this write's business
    other.write_text("{")
    write_json({"accuracy": 90.0}, target)
    assert read_json(target) == {"accuracy": 90.0}
    assert not leftover.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, "metrics.json"]


@pytest.mark.parametrize(
    "file, damage, found",
    [
        ("prepared", "truncate", "does not load"),
        ("prepared", "overwrite", "fails its sha256 check"),
        ("split", "truncate", "does not load"),
        ("split", "overwrite", "fails its sha256 check"),
    ],
)
def test_a_corrupt_input_names_the_file_and_the_command_that_remakes_it(
    prepared, capsys, file, damage, found
):
    path = Path(
        plan.prepared_path("digits")
        if file == "prepared"
        else plan.split_path("digits", "uniform40", 0)
    )
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:  # 64 random bytes in the middle of the largest record: the archive still loads
        middle = len(data) // 2
        data[middle : middle + 64] = (
            torch.randint(0, 256, (64,), generator=torch.Generator().manual_seed(0))
            .to(torch.uint8)
            .numpy()
            .tobytes()
        )
    path.write_bytes(bytes(data))
    assert main(["train", *RUN_ARGS, "--noise", "uniform40", "--seeds", "0"]) == 2
    err = capsys.readouterr().err
    remake = (
        "prepare --dataset digits"
        if file == "prepared"
        else "noise --dataset digits --noise uniform40 --seeds 0"
    )
    assert f"{path} " in err and found in err and f"python -m pipeline {remake}" in err, err
    assert "Traceback" not in err


def test_every_file_the_project_writes_loads_without_pickle(prepared):
    """load_torch reads with weights_only=True: the prepared data, splits, models and
    checkpoints all load that way (each method's checkpoint state: tests/test_methods.py)."""
    train(prepared, RUN, stop_after_epoch=1)
    train(prepared, RUN, keep_checkpoint=True)
    files = sorted(Path("results").rglob("*.pt")) + [Path(RUN.checkpoint)]
    assert {f.name for f in files} >= {"digits.pt", "seed0.pt", "model.pt"}
    for f in files:
        torch.load(f, map_location="cpu", weights_only=True)


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stream", [io.StringIO, FakeTerminal])
def test_progress_is_a_bar_on_a_terminal_and_a_line_per_milestone_in_a_log(stream):
    from pipeline.io import Progress

    out = stream()
    progress = Progress("train run step", 20, stream=out)
    for step in range(1, 21):
        progress.update(step, f"val_acc={step}" if step % 10 == 0 else "", milestone=step % 10 == 0)
    progress.close()
    text = out.getvalue()
    lines = [line for line in text.replace("\r", "\n").splitlines() if line.startswith("train")]
    milestones = [line for line in lines if "val_acc=" in line]
    assert [m.split(" [")[0] for m in milestones] == [
        "train run step 10/20 val_acc=10",
        "train run step 20/20 val_acc=20",
    ]
    assert ("\r" in text) == (stream is FakeTerminal)  # the bar redraws only on a terminal
    if stream is io.StringIO:
        assert text.count("\n") == 2  # nothing but the two milestone lines


def test_mpl_resumes_inside_the_students_wait_and_its_teacher_is_scored(prepared):
    """A run killed while MPL's student waits (30 of 2 x 28 steps) resumes to the weights of
    an uninterrupted run; the evaluate stage scores the saved teacher on the test split, and
    the history holds its validation accuracy beside the student's."""
    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["methods"]["mpl_wait"] = {
        "method": "mpl",
        "student_wait_steps": 30,
        "teacher_warmup_steps": 5,
        "teacher_lr_decay": "cosine",
    }
    Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    p = load("params.yaml")
    run = plan.Run("digits", "mlp", "short", "clean", "mpl_wait", 0)
    train(p, run, stop_after_epoch=1)  # "killed" after epoch 1, inside the wait
    train(p, run)
    resumed = model_state(run)
    train(p, run)  # from scratch
    assert_same_tensors(resumed, model_state(run))

    m = read_json(run.file("metrics.json"))
    saved = load_torch(run.file("model.pt"))
    from pipeline.core.student import predict
    from pipeline.models import build_model
    from pipeline.task import load_task

    data = load_task("digits", "clean", 0, torch.device("cpu"))
    teacher = build_model("mlp", data.in_shape, data.num_classes, hidden=[32])
    teacher.load_state_dict(saved["method"]["teacher"])
    correct = (predict(teacher, data.test_x).argmax(1) == data.test_y).double().mean()
    assert m["teacher_test"]["accuracy"] == pytest.approx(100 * float(correct), abs=0.01)
    assert m["teacher_test"]["accuracy"] != m["test"]["accuracy"]
    history = read_json(run.file("history.json"))
    assert all(0 < h["teacher_val_acc"] <= 1 for h in history)


def test_the_demos_protocol_starts_every_student_from_the_ce_checkpoint(prepared, monkeypatch):
    """start_from a CE-pretrained teacher of the student's own model: DLF's episodes and its
    test phase, and the cross entropy baseline that continues for the same steps, all start
    from the checkpoint's weights; a run without start_from does not."""
    from pipeline.core.student import Student

    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["teachers"] = {"ce": {"model": "mlp", "schedule": "short", "method": "erm"}}
    raw["methods"].update(
        erm_from_ce={"method": "erm", "start_from": "ce"},
        dlf_from_ce={"method": "dlf", "start_from": "ce", "teacher_steps": 2,
                     "episode_steps": 3, "state_every": 2, "bias": True, "metric": "sharp_01"},
    )  # fmt: skip
    Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["pretrain", "--teacher", "ce", "--dataset", "digits", "--noise", "uniform40",
                 "--seeds", "0"]) == 0  # fmt: skip
    params = load("params.yaml")
    (source,) = plan.teacher_runs(params, "ce", "digits", "uniform40", [0])
    checkpoint = load_torch(source.file("model.pt"))["model"]

    firsts: list[dict] = []
    update = Student.update

    def recording(self, loss):
        if self.step_count == 0:
            firsts.append({k: p.detach().clone() for k, p in self.model.named_parameters()})
        update(self, loss)

    monkeypatch.setattr(Student, "update", recording)
    for method, students in (("dlf_from_ce", 3), ("erm_from_ce", 1), ("erm", 1)):
        firsts.clear()
        train(params, dataclasses.replace(RUN, method=method))
        assert len(firsts) == students  # DLF: two episodes, then the test phase
        for first in firsts:
            same = all(torch.equal(first[k], checkpoint[k]) for k in first)
            assert same == (method != "erm"), method
