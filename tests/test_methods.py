"""Teaching methods on real (tiny) data: L2RW's four routes agree, its weights are guarded,
and the baselines do what the paper says they do."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import DatasetSpec, NoiseSpec, ScheduleSpec
from pipeline.core.student import Student
from pipeline.data.sources import sklearn_digits
from pipeline.methods.base import Batch, Context
from pipeline.methods.l2rw import normalise_weights
from pipeline.methods.registry import METHODS
from pipeline.models import build_model
from pipeline.noise import generator, make_split
from pipeline.task import TaskData, normalise

SCHEDULE = ScheduleSpec(epochs=1, batch_size=32, lr=0.1, momentum=0.9, weight_decay=5e-4)


def digits_task(noise: NoiseSpec, dtype=torch.float32) -> TaskData:
    raw = sklearn_digits(DatasetSpec(source="sklearn_digits"))
    s = make_split(raw, DatasetSpec(source="sklearn_digits", test_size=297), noise, 0)
    ref = raw.x[s["train_idx"]]
    x = {k: normalise(raw.x[s[f"{k}_idx"]], ref).to(dtype) for k in ("train", "val", "test")}
    return TaskData(
        x["train"],
        s["train_y"],
        s["train_y_clean"],
        x["val"],
        s["val_y"],
        x["test"],
        s["test_y"],
        s["num_classes"],
        s["class_names"],
    )


def make_method(name: str, data: TaskData, arch="preact_resnet", dtype=torch.float32, **kw):
    torch.manual_seed(0)
    options = {"depth": 8, "width": 4} if arch == "preact_resnet" else {"hidden": [32]}
    model = build_model(arch, data.in_shape, data.num_classes, **options).to(dtype)
    student = Student(model, SCHEDULE, 100)
    cls = METHODS[name]
    ctx = Context(student, data, SCHEDULE, generator("m", 0))
    if "teacher" in cls.Settings.__dataclass_fields__:  # a pretrained teacher: a small MLP
        kw.setdefault("teacher", "pretrained")
        teacher = build_model("mlp", data.in_shape, data.num_classes, hidden=[16]).to(dtype)
        ctx.pretrained[kw["teacher"]] = teacher.requires_grad_(False).eval()
    return cls(cls.Settings(**kw), ctx)


def batch_of(data: TaskData, start: int, n: int = 32) -> Batch:
    index = torch.arange(start, start + n)
    return Batch(data.train_x[index], data.train_y[index], index)


@pytest.fixture(scope="module")
def noisy64() -> TaskData:
    return digits_task(NoiseSpec(kind="uniform", rate=0.4, val_size=100), torch.float64)


def test_l2rw_routes_agree(noisy64):
    """jvp_fused, jvp_traced, jvp and double backward (Alg. 1) give the same weights and the
    same step, on a pre-activation ResNet with batch norm, after momentum has built up."""
    results = {}
    from pipeline.core.traced import traced

    for route in ("jvp_fused", "jvp_traced", "jvp", "double_backward"):
        method = make_method("l2rw", noisy64, dtype=torch.float64, route=route)
        assert traced(method.student.model) is not None  # jvp_traced does not fall back
        for start in (0, 32):  # warm up momentum buffers and batch-norm statistics
            method.step(batch_of(noisy64, start))
        w, _, _ = method.weights(batch_of(noisy64, 64))
        method.step(batch_of(noisy64, 64))
        state = method.student.model.state_dict()
        results[route] = (w, state)
    w_ref, state_ref = results["double_backward"]
    assert (w_ref > 0).any() and (w_ref == 0).any()
    for route in ("jvp_fused", "jvp_traced", "jvp"):
        w, state = results[route]
        assert (w - w_ref).abs().max() <= 1e-10 * w_ref.abs().max()
        for k, v in state_ref.items():
            assert torch.allclose(state[k].double(), v.double(), rtol=1e-9, atol=1e-12), k


def test_weight_normalisation_guards():
    assert torch.equal(normalise_weights(-torch.ones(4)), torch.zeros(4))  # all-zero batch
    w = normalise_weights(torch.tensor([2.0, -1.0, 6.0]))
    assert torch.allclose(w, torch.tensor([0.25, 0.0, 0.75]))


def test_l2rw_refuses_non_finite_weights(noisy64):
    method = make_method("l2rw", noisy64, dtype=torch.float64)
    bad = batch_of(noisy64, 0)
    bad.x = bad.x.clone()
    bad.x[0] = float("nan")
    with pytest.raises(FloatingPointError):
        method.step(bad)


def test_l2rw_downweights_flipped_labels():
    """Ren et al. Figure 3: after some training, corrupted examples get less weight."""
    data = digits_task(NoiseSpec(kind="background", rate=0.4, val_per_class=10, background=3))
    method = make_method("l2rw", data, arch="mlp")
    clean, noisy = [], []
    for epoch in range(4):
        for start in range(0, len(data.train_y) - 32, 32):
            logs = method.step(batch_of(data, start))
            if epoch == 3:
                clean.append(float(logs["w_clean"]))
                noisy.append(float(logs["w_noisy"]))
    assert sum(noisy) / len(noisy) < 0.5 * sum(clean) / len(clean)


@pytest.fixture(scope="module")
def noisy() -> TaskData:
    return digits_task(NoiseSpec(kind="background", rate=0.4, val_per_class=10, background=3))


# settings that keep a first step small (DLF's first step trains its teacher)
SMALL = {"dlf": {"teacher_steps": 2, "episode_steps": 3}}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_takes_a_step(noisy, name):
    method = make_method(name, noisy, arch="mlp", **SMALL.get(name, {}))
    before = {k: v.clone() for k, v in method.student.model.state_dict().items()}
    logs = method.step(batch_of(noisy, 0))
    assert torch.isfinite(logs["loss"])
    after = method.student.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert method.student.step_count == 1
    checkpoint = io.BytesIO()  # what a checkpoint keeps of the method loads without pickle
    torch.save({"student": method.student.state_dict(), "method": method.state_dict()}, checkpoint)
    checkpoint.seek(0)
    method.load_state_dict(torch.load(checkpoint, weights_only=True)["method"])


@pytest.mark.parametrize("name", ["mwn", "mpl", "lgtm", "dlf"])
def test_a_teacher_step_is_under_the_same_non_finite_check(noisy, name):
    """A teacher stepped by its own optimiser stops the run, naming the tensor, like the
    student's update (a hook makes one teacher parameter's gradient NaN)."""
    from pipeline.core.student import NonFinite

    method = make_method(name, noisy, arch="mlp", **SMALL.get(name, {}))
    next(method.teacher.parameters()).register_hook(lambda g: g * float("nan"))
    with pytest.raises(NonFinite, match=r"step \d+: the teacher gradient of \S+ is not finite"):
        for start in range(0, 96, 32):
            method.step(batch_of(noisy, start))


def test_random_weights_are_a_rectified_gaussian(noisy):
    method = make_method("random", noisy, arch="mlp")
    w = method.weights(batch_of(noisy, 0, n=1000))
    assert (w >= 0).all() and 0.4 < float((w == 0).float().mean()) < 0.6


def test_oracle_weighted_uses_clean_fractions(noisy):
    method = make_method("weighted", noisy, arch="mlp")
    frac = method.clean_fraction
    assert frac[3] < 0.5 and torch.allclose(frac[[0, 1, 2, 4]], torch.ones(4))


def test_proportion_and_resample_balance_classes():
    data = digits_task(
        NoiseSpec(
            kind="imbalance", classes=(4, 9), majority_fraction=0.9, train_size=150, val_per_class=5
        )
    )
    proportion = make_method("proportion", data, arch="mlp")
    w = proportion.inverse_frequency
    assert torch.allclose(w[0] / w[1], torch.tensor(135 / 15))
    resample = make_method("resample", data, arch="mlp")
    drawn = data.train_y[resample.draw(4000)]
    assert abs(float(drawn.float().mean()) - 0.5) < 0.03  # the majority is 90% of the data


def test_hard_mining_keeps_the_hardest_majority_examples():
    data = digits_task(
        NoiseSpec(
            kind="imbalance", classes=(4, 9), majority_fraction=0.9, train_size=150, val_per_class=5
        )
    )
    method = make_method("hard_mining", data, arch="mlp", majority_keep=0.5)
    assert method.majority == 1
    y = torch.tensor([0, 1, 1, 1, 1, 0])
    losses = torch.tensor([0.1, 0.5, 2.0, 0.2, 3.0, 0.05])
    assert method.keep(losses, y).tolist() == [True, False, True, False, True, True]


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_bootstrap_targets(mode):
    """Reed et al.: beta * CE(label) + (1 - beta) * CE(prediction held fixed): its entropy
    (soft) or its argmax (hard); beta 1 is plain cross entropy."""
    data = digits_task(NoiseSpec(kind="none", val_size=100))
    b = batch_of(data, 0)
    plain = make_method("bootstrap", data, arch="mlp", mode=mode, beta=1.0)
    assert torch.allclose(
        plain.step(b)["loss"], make_method("erm", data, arch="mlp").step(b)["loss"]
    )

    method = make_method("bootstrap", data, arch="mlp", mode=mode, beta=0.8)
    params = list(method.student.model.parameters())
    logits = method.student.model(b.x)
    log_p = logits.log_softmax(-1)
    fixed = log_p.detach().exp()
    if mode == "hard":
        second = F.cross_entropy(logits, fixed.argmax(-1))
    else:
        second = -(fixed * log_p).sum(-1).mean()
    expected = 0.8 * F.cross_entropy(logits, b.y) + 0.2 * second
    expected_grads = torch.autograd.grad(expected, params)
    captured = {}
    method.student.update = lambda loss: captured.update(grads=torch.autograd.grad(loss, params))
    torch.testing.assert_close(method.step(b)["loss"], expected.detach())
    for got, want in zip(captured["grads"], expected_grads, strict=True):
        torch.testing.assert_close(got, want)


def test_bench_writes_relative_figures(tmp_path):
    from pipeline.bench import VARIANTS, run

    rows = run("steps", "mlp:16", steps=2, device="cpu", out_dir=str(tmp_path), rounds=2)
    assert [r["method"] for r in rows] == list(VARIANTS)
    assert all(r["ms_per_step"] > 0 and r["time_vs_erm"] > 0 for r in rows)
    assert rows[0]["time_vs_erm"] == 1 and rows[0]["time_vs_erm_iqr"] == 0  # ERM against itself
    assert all(r["rounds"] == 2 and r["time_vs_erm_iqr"] >= 0 for r in rows)
    csv = (tmp_path / "steps_cpu.csv").read_text().splitlines()
    assert csv[0].startswith("device,model,batch,method,ms_per_step,peak_mb,time_vs_erm")
    assert len(csv) == 1 + len(VARIANTS) and (tmp_path / "steps_cpu.png").exists()


def test_bench_times_an_epoch_in_each_setting(tmp_path):
    """The epoch suite trains the same model in each setting (the same last loss, to
    rounding), compiled through the eager backend here (a GPU run uses inductor)."""
    from pipeline.bench import run

    variants = ["fp32", "channels_last", "compiled"]
    rows = run(
        "epoch", "lenet:16", 1, "cpu", str(tmp_path), images=48,
        epoch_variants=variants, backend="eager",
    )  # fmt: skip
    assert [r["method"] for r in rows] == variants
    assert all(r["seconds_per_epoch"] > 0 and r["images_per_s"] > 0 for r in rows)
    losses = [r["last_loss"] for r in rows]
    assert max(losses) - min(losses) < 1e-3 * abs(losses[0])  # channels-last rounds apart
    assert (tmp_path / "epoch_cpu.csv").read_text().startswith("device,model,batch,method,images")


def test_a_method_steps_in_turn_with_erm():
    """Each method step has an ERM step beside it, and each step's time counts to its own."""
    import time

    from pipeline.bench import _paired_steps

    seen = []

    def stepper(name, seconds):
        def one_step(i):
            seen.append((name, i))
            time.sleep(seconds)

        return one_step

    erm, method = _paired_steps(
        stepper("erm", 0.001), stepper("m", 0.02), 3, 4, torch.device("cpu")
    )
    assert seen == [(name, i) for i in range(3, 7) for name in ("erm", "m")]
    assert 0.001 <= erm < method and method >= 0.02  # a sleep only overshoots


def test_a_ratio_is_to_the_erm_steps_beside_the_method(monkeypatch):
    """Each round's ratio divides a method's time by ERM's beside it, not by ERM's row."""
    from pipeline import bench

    found = {
        "device": "cpu",
        "times": {"erm": [10.0, 10.0, 10.0], "mwn": [30.0, 60.0, 36.0]},
        "erm_beside": {"erm": [10.0, 10.0, 10.0], "mwn": [10.0, 20.0, 12.0]},  # load came
        "peak_mb": {"erm": 2.0, "mwn": 3.0},
    }
    monkeypatch.setattr(bench, "_in_fresh_process", lambda *args: found)
    erm, mwn = bench.timed_rows("mlp", 8, ["erm", "mwn"], 20, "cpu", 3)
    assert (erm["time_vs_erm"], erm["time_vs_erm_iqr"]) == (1, 0)
    assert (mwn["time_vs_erm"], mwn["time_vs_erm_iqr"], mwn["ms_per_step"]) == (3, 0, 36)
    assert mwn["memory_vs_erm"] == 1.5
    with pytest.raises(ValueError, match="ERM first"):
        bench.measure_case("mlp", 8, ["mwn", "erm"], 2, "cpu", 1)


def test_median_and_interquartile_range():
    from pipeline.bench import median_iqr

    assert median_iqr([2.0]) == (2.0, 0.0)
    assert median_iqr([1.0, 2.0, 3.0, 4.0, 100.0]) == (3.0, 2.0)  # an outlier moves neither


def test_bench_distill_variants_take_steps():
    """Every row of the distill suite (LGTM Table 3's three influence routes included) trains
    on the MiniLMs: the pretrained teacher loads, the student steps, a learned teacher too."""
    from pipeline.bench import DISTILL_VARIANTS, _setup

    for variant, (kind, settings) in DISTILL_VARIANTS.items():
        method, one_step, _ = _setup("minilm_l3", 2, kind, settings, 1, "cpu")
        models = [method.student.model, getattr(method, "teacher", None)]
        trained = [
            m for m in models if m is not None and any(p.requires_grad for p in m.parameters())
        ]
        before = [[p.detach().clone() for p in m.parameters()] for m in trained]
        one_step(0)
        for model, old in zip(trained, before, strict=True):
            assert any(
                not torch.equal(a, b) for a, b in zip(old, model.parameters(), strict=True)
            ), variant
        assert method.student.step_count == 1
        assert len(trained) == (2 if kind in ("dml", "meta_distill", "lgtm") else 1), variant


def test_bench_times_the_reverse_passes(tmp_path):
    from pipeline.bench import run

    items = [("dir", 1), ("dir", 3), ("dlf_momentum", 4), ("dlf_stored", 4)]
    rows = run("reverse", "mlp:16", 1, "cpu", str(tmp_path), reverse=items)
    assert [(r["method"], r["steps_back"]) for r in rows] == items
    assert all(r["ms"] > 0 for r in rows)
    csv = (tmp_path / "reverse_cpu.csv").read_text()
    assert csv.startswith("device,model,batch,method,steps_back,ms,peak_mb")


def test_bench_measures_under_the_numerics_asked_for(tmp_path):
    """--numerics reaches every measurement's process, whatever the shell holds, and the CSV
    says which by its name."""
    from conftest import REPO

    from pipeline import numerics

    if numerics.portable_unavailable():
        pytest.skip(numerics.portable_unavailable())
    shell = {k: v for k, v in os.environ.items() if k not in numerics.PORTABLE_ENV}
    for mode, held, csv in (("portable", {}, "steps_portable_cpu.csv"),
                            ("fast", numerics.PORTABLE_ENV, "steps_cpu.csv")):  # fmt: skip
        out = tmp_path / mode
        subprocess.run(
            [sys.executable, "-m", "pipeline", "bench", "--cases", "mlp:8", "--steps", "2",
             "--rounds", "1", "--numerics", mode, "--out", str(out)],
            env={**shell, **held, "PYTHONPATH": str(REPO)}, check=True, capture_output=True,
        )  # fmt: skip
        assert [p.name for p in out.glob("*.csv")] == [csv]


def test_bench_refuses_a_measurement_that_ran_other_kernels(monkeypatch):
    from pipeline import bench, numerics
    from pipeline.bench import unlike_portable

    for key in numerics.PORTABLE_ENV:  # the child runs this CPU's fastest kernels
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(numerics, "in_effect", lambda: "portable")
    with pytest.raises(RuntimeError, match="meant for portable numerics ran with fast numerics"):
        bench._in_fresh_process("reverse", "mlp", "16", "dir", "1", "cpu")

    portable = {"cpu_capability": "AVX2", "mkl_cbwr": "COMPATIBLE,STRICT", "onednn": False}
    assert unlike_portable(portable) is None
    assert unlike_portable({**portable, "onednn": True}) == "onednn True"
    assert unlike_portable({**portable, "cpu_capability": "AVX512"}) == "cpu_capability AVX512"
