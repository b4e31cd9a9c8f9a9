"""`python -m pipeline bench`: the cost of the teaching methods, in three suites.

steps: time per student step (the mean, so that a teacher update every K steps is amortised)
    and peak memory of each method relative to ERM: same model, batch size (training and
    validation batches equal) and device; the double-backward reference of L2RW's meta-gradient
    runs beside the fast routes. Writes results/bench/steps_<device>.csv and .png.
distill: the same for the distillation methods on text (LGTM Table 3: the influence by finite
    differences against the exact JVP and against the paper's exact route, double backward):
    MiniLM-L3 student, MiniLM-L6 teacher, random token ids (the cost does not depend on the
    text). Writes results/bench/distill_<device>.csv.
reverse: reverse mode through many steps. DIR's teacher update (Algorithm 1) against B, the
    steps differentiated back, and a DLF teacher optimisation step (T student steps, then T
    back) against T, by checkpointed segments of sqrt(T) steps (`segments`) or keeping every
    theta_t (`stored`, segments of 1): time and peak memory; DIR's must not grow with B, DLF's
    segments grow like sqrt(T). Writes results/bench/reverse_<device>.csv.
epoch: one ERM epoch with the data resident on the device (a GPU: 50,000 32x32 images,
    ResNet-32, batch 128), plain, channels-last, bf16 autocast, both, and compiled
    (torch.compile; `reduce-overhead`: CUDA graphs). Writes results/bench/epoch_<device>.csv.

Peak memory: the peak of the tensor memory allocated during a window of steps, above what
was allocated when it began (activations, gradients, the teacher's work; not the parameters
and data already resident): CUDA's allocator statistics on a GPU, the profiler's allocation
events added up in order on a CPU, the same on every run (the resident set moves with the C
allocator's granularity). Time: the steps and distill suites set up every method of a case in
one fresh process and time it in rounds; in a round each method steps in turn with ERM, each
step timed alone, and its ratio is to the ERM steps beside it, so that load that comes and
goes on a shared machine (the 2-core machine these figures come from moved by about 15% from
one second to the next), and the process's own layout, fall on both alike; a row gives the
median over rounds and the interquartile range of its ratio, with a warning where it exceeds
10% of the ratio; then each method's peak memory over one period of its teacher (2 steps,
DIR's 20). Everything runs on one thread.
`--quick`: the CPU case resnet8:8 alone (a pre-activation ResNet-8, batch norm included), 20
steps a timing, 5 rounds (under 2 minutes with `fast` numerics).
`--numerics`: the CPU kernels of every measurement (pipeline/numerics.py): `fast` (the
default: each CPU's fastest, oneDNN's convolutions) or `portable`, what the workflow trains
with (MKL's COMPATIBLE GEMM, im2col convolutions), written to <suite>[_quick]_portable_cpu.csv;
each measurement's process reports its kernels and one that is not the portable set is refused.
Needs torch only (no workflow engine), so it runs on a bare GPU machine with PYTHONPATH=.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from pipeline import numerics
from pipeline.config import ScheduleSpec
from pipeline.core.student import Student
from pipeline.io import save_figure, write_text
from pipeline.methods.base import Batch, Context
from pipeline.methods.registry import METHODS
from pipeline.models import build_model
from pipeline.noise import generator
from pipeline.task import TaskData

MODELS = {  # name -> (arch, options, input shape)
    "mlp": ("mlp", {"hidden": [256, 256]}, (1, 28, 28)),
    "lenet": ("lenet", {}, (1, 28, 28)),
    "resnet8": ("preact_resnet", {"depth": 8}, (3, 32, 32)),
    "resnet32": ("preact_resnet", {"depth": 32}, (3, 32, 32)),
    "wrn_28_10": ("wrn", {"depth": 28, "widen": 10, "dropout": 0.3}, (3, 32, 32)),
    "minilm_l3": ("text_bert", {"weights": "minilm_l3"}, (32,)),  # 32 token ids
}
VARIANTS = {  # row name -> (method, settings)
    "erm": ("erm", {}),
    "l2rw_jvp_fused": ("l2rw", {"route": "jvp_fused"}),
    "l2rw_jvp_traced": ("l2rw", {"route": "jvp_traced"}),
    "l2rw_jvp": ("l2rw", {"route": "jvp"}),
    "l2rw_double_backward": ("l2rw", {"route": "double_backward"}),
    "mwn": ("mwn", {}),
    "mwn_jvp_traced": ("mwn", {"route": "jvp_traced"}),
    "dir": ("dir", {"interval": 20, "back": 2}),
}
TEACHER = {"teacher": "minilm_l6"}
DISTILL_VARIANTS = {  # erm is the student fine-tuned alone (student_ft)
    "erm": ("erm", {}),
    "kd": ("kd", TEACHER),
    "dml": ("dml", TEACHER),
    "meta_distill": ("meta_distill", TEACHER),
    "lgtm_fd": ("lgtm", TEACHER),
    "lgtm_jvp": ("lgtm", {**TEACHER, "influence": "jvp"}),
    "lgtm_double_backward": ("lgtm", {**TEACHER, "influence": "double_backward"}),
}
SUITE_VARIANTS = {"steps": VARIANTS, "distill": DISTILL_VARIANTS}
BACKS = (1, 2, 5, 10)  # the reverse suite's B for DIR (with K = B: one update per window)
LENGTHS = (25, 50, 100, 200)  # and its T for a DLF teacher optimisation step
REVERSE = [("dir", b) for b in BACKS] + [
    (f"dlf_{how}", t) for how in ("segments", "stored") for t in LENGTHS
]
DEFAULT_CASES = {"cpu": "mlp:100,mlp:512,resnet32:32", "cuda": "resnet32:512,wrn_28_10:100"}
QUICK_CASES = {"cpu": "resnet8:8", "cuda": "resnet32:512"}  # ERM: about 25 ms on a CPU
QUICK_STEPS = 20  # per timing: one period of every teacher (DIR: K = 20), one update each
ROUNDS = 5  # timings of each method, each paired with ERM, in one process
QUICK_ROUNDS = 5
SPREAD_WARNING = 0.10  # interquartile range of a ratio, relative to the ratio
DISTILL_CASES = {"cpu": "minilm_l3:16", "cuda": "minilm_l3:32"}
EPOCH_VARIANTS = {  # row -> (channels last, bf16 autocast, torch.compile mode or None)
    "fp32": (False, False, None),
    "channels_last": (True, False, None),
    "bf16": (False, True, None),
    "channels_last_bf16": (True, True, None),
    "compiled": (True, True, "default"),
    "compiled_cuda_graphs": (True, True, "reduce-overhead"),  # CUDA graphs on a GPU
}
EPOCH_CASES = {"cpu": "resnet8:128", "cuda": "resnet32:128"}
EPOCH_IMAGES = {"cpu": 2048, "cuda": 50_000}  # a CIFAR-sized epoch on a GPU


def _setup(model_name: str, batch: int, kind: str, settings: dict, steps: int, device: str):
    arch, options, shape = MODELS[model_name]
    torch.manual_seed(0)
    dev = torch.device(device)
    n, classes = batch * 4, 2 if arch == "text_bert" else 10
    if arch == "text_bert":
        x = torch.randint(1000, 20000, (n, *shape), device=dev)
    else:
        x = torch.randn(n, *shape, device=dev)
    y = torch.randint(0, classes, (n,), device=dev)
    names = [str(c) for c in range(classes)]
    data = TaskData(x, y, y, x[:batch], y[:batch], x[:1], y[:1], classes, names)
    model = build_model(arch, shape, classes, **options).to(dev)
    schedule = ScheduleSpec(epochs=1, batch_size=batch, lr=0.1, momentum=0.9, weight_decay=5e-4)
    ctx = Context(Student(model, schedule, steps + 2), data, schedule, generator("bench"))
    if "teacher" in settings:
        teacher = build_model(arch, shape, classes, weights=settings["teacher"]).to(dev)
        ctx.pretrained[settings["teacher"]] = teacher.requires_grad_(False).eval()
    method = METHODS[kind](METHODS[kind].Settings(**settings), ctx)

    def one_step(i: int) -> None:
        index = torch.arange(i % 4 * batch, (i % 4 + 1) * batch, device=dev)
        method.step(Batch(x[index], y[index], index))

    return method, one_step, dev


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _peak_mb(dev: torch.device, work: Callable[[], None]) -> float:
    """Peak of the tensor memory allocated while `work` runs, above what was allocated when it
    started (MB). On a GPU from CUDA's allocator statistics; on a CPU by adding up the
    profiler's allocation and release events in order, so that it is the same on every run
    (the resident set moves with the C allocator's granularity and what it keeps)."""
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        work()
        _sync(dev)
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        work()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):  # stable: ties keep their order
        live += event.nbytes()
        peak = max(peak, live)
    return peak / 2**20


def _paired_steps(reference, method, first: int, steps: int, dev: torch.device):
    """Seconds per step of ERM (`reference`) and of a method over `steps` steps from step
    number `first`, the two stepping in turn and each step timed alone, so that every method
    step has an ERM step beside it under the same load: on this kind of machine the speed
    moves by about 15% from one second to the next. Each step starts from the caches the
    other left, on both sides alike."""
    seconds = [0.0, 0.0]
    for i in range(first, first + steps):
        for which, one_step in enumerate((reference, method)):
            start = time.perf_counter()
            one_step(i)
            _sync(dev)
            seconds[which] += time.perf_counter() - start
    return seconds[0] / steps, seconds[1] / steps


def memory_window(variant: str) -> int:
    """Steps whose peak memory is a variant's: one period of its teacher (DIR: its interval,
    so that the window holds one teacher update), at least 2 (the first step of a window
    may still allocate what later steps reuse)."""
    _, settings = {**VARIANTS, **DISTILL_VARIANTS}[variant]
    return max(settings.get("interval", 1), 2)


def measure_case(
    model_name: str, batch: int, variants: list[str], steps: int, device: str, rounds: int
) -> dict:
    """Milliseconds per step of every method in each of `rounds` rounds, all in this process:
    in a round each method steps in turn with ERM (`_paired_steps`), so that its ratio to ERM
    shares the process's memory layout and the machine's load of that moment (`erm_beside`:
    ERM's times beside each method; ERM's own time in a round is their median); then each
    variant's peak memory over its memory window: what the others hold was allocated before
    that window, so each peak is the variant's own."""
    if variants[0] != "erm" or len(variants) < 2:
        raise ValueError(f"bench: a case times ERM first and methods beside it, not {variants}")
    setups = {}
    for variant in variants:
        kind, settings = {**VARIANTS, **DISTILL_VARIANTS}[variant]
        paired = len(variants) - 1 if variant == "erm" else 1  # ERM steps beside each method
        total = steps * rounds * paired + memory_window(variant) + 1
        _, one_step, dev = _setup(model_name, batch, kind, settings, total, device)
        one_step(0)  # warm-up: allocator, kernels, momentum buffers
        setups[variant] = one_step
    times: dict[str, list[float]] = {v: [] for v in variants}
    beside: dict[str, list[float]] = {v: [] for v in variants}  # ERM's, paired with each
    for r in range(rounds):
        for variant in variants[1:]:
            erm, seconds = _paired_steps(setups["erm"], setups[variant], 1 + r * steps, steps, dev)
            beside[variant].append(1000 * erm)
            times[variant].append(1000 * seconds)
        times["erm"].append(statistics.median(beside[v][-1] for v in variants[1:]))
    beside["erm"] = times["erm"]
    first = 1 + rounds * steps
    peaks = {}
    for variant, one_step in setups.items():
        window = range(first, first + memory_window(variant))
        peaks[variant] = _peak_mb(dev, lambda f=one_step, w=window: [f(i) for i in w])
    return {"device": dev.type, "times": times, "erm_beside": beside, "peak_mb": peaks}


def measure_epoch(
    model_name: str, batch: int, variant: str, device: str, images: int, backend: str
) -> dict:
    """Seconds for one ERM epoch over `images` random images resident on the device, after a
    warm-up epoch (compilation included): a plain loop of momentum SGD with no host sync
    inside the epoch, with the variant's memory format, autocast and torch.compile mode
    (`backend`: the compiler, inductor; tests use eager)."""
    channels_last, bf16, mode = EPOCH_VARIANTS[variant]
    arch, options, shape = MODELS[model_name]
    torch.manual_seed(0)
    dev = torch.device(device)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(arch, shape, 10, **options).to(dev, memory_format=layout)
    x = torch.randn(images, *shape, device=dev).contiguous(memory_format=layout)
    y = torch.randint(0, 10, (images,), device=dev)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    forward = model if mode is None else torch.compile(model, mode=mode, backend=backend)

    def epoch() -> torch.Tensor:
        order = torch.randperm(images, device=dev)
        for start in range(0, images - batch + 1, batch):
            index = order[start : start + batch]
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                loss = torch.nn.functional.cross_entropy(forward(x[index]), y[index])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    epoch()
    _sync(dev)
    start = time.perf_counter()
    loss = epoch()
    _sync(dev)
    seconds = time.perf_counter() - start
    return {
        "device": dev.type,
        "model": model_name,
        "batch": batch,
        "method": variant,
        "images": images,
        "seconds_per_epoch": seconds,
        "images_per_s": images // batch * batch / seconds,
        "last_loss": float(loss),
    }


def measure_reverse(model_name: str, batch: int, method: str, steps: int, device: str) -> dict:
    """Two reverse passes through `steps` steps: DIR's window of K = B = steps student steps
    and its teacher update, or a DLF teacher optimisation step with T = steps (training
    included in both). Peak memory of the first pass, time of the second, in this process."""
    if method == "dir":
        settings = {"interval": steps, "back": steps}
        kind, total = "dir", steps * 2
    else:
        kind, total = "dlf", steps
        segment = 1 if method == "dlf_stored" else None
        settings = {"teacher_steps": 2, "episode_steps": steps, "segment": segment}
    teacher, one_step, dev = _setup(model_name, batch, kind, settings, total, device)

    def one_pass(k: int) -> None:
        if kind == "dir":
            for i in range(steps):
                one_step(k * steps + i)
        else:
            teacher.episode(k)

    peak = _peak_mb(dev, lambda: one_pass(0))  # the first pass gives the peak, the second the time
    start = time.perf_counter()
    one_pass(1)
    _sync(dev)
    return {
        "device": dev.type,
        "model": model_name,
        "batch": batch,
        "method": method,
        "steps_back": steps,
        "ms": 1000 * (time.perf_counter() - start),
        "peak_mb": peak,
    }


def _in_fresh_process(*args: str) -> dict:
    """One measurement in a new process, under this process's numerics (its environment)."""
    cmd = [sys.executable, "-m", "pipeline.bench", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    kernels, mode = found.pop("kernels"), numerics.in_effect()
    if kernels["cpu_numerics"] != mode:
        wrong = f"{kernels['cpu_numerics']} numerics"
    else:
        wrong = unlike_portable(kernels) if mode == "portable" else None
    if wrong:
        raise RuntimeError(f"bench: a measurement meant for {mode} numerics ran with {wrong}")
    return found


def unlike_portable(kernels: dict) -> str | None:
    """What of a process's kernels (numerics.provenance) is not the portable set, or None."""
    expected = {
        "cpu_capability": numerics.PORTABLE_ENV["ATEN_CPU_CAPABILITY"].upper(),
        "mkl_cbwr": numerics.PORTABLE_ENV["MKL_CBWR"],
        "onednn": False,  # numerics.configure turns it off
    }
    found = [f"{k} {kernels.get(k)}" for k, v in expected.items() if kernels.get(k) != v]
    return ", ".join(found) or None


def median_iqr(values: list[float]) -> tuple[float, float]:
    """The median and the interquartile range (0 for a single value)."""
    if len(values) < 2:
        return values[0], 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return statistics.median(values), q3 - q1


def timed_rows(model_name, batch, variants, steps, device, rounds) -> list[dict]:
    """Every variant's time in `rounds` interleaved rounds (ratios to the ERM steps beside it)
    and its peak memory, from one fresh process."""
    args = (model_name, batch, ",".join(variants), str(steps), device, str(rounds))
    found = _in_fresh_process("case", *args)
    times, beside, peaks = found["times"], found["erm_beside"], found["peak_mb"]
    rows = []
    for variant in variants:
        ratio, spread = median_iqr(
            [t / e for t, e in zip(times[variant], beside[variant], strict=True)]
        )
        memory = peaks[variant] / max(peaks["erm"], 1e-9)
        row = {
            "device": found["device"],
            "model": model_name,
            "batch": int(batch),
            "method": variant,
            "ms_per_step": statistics.median(times[variant]),
            "peak_mb": peaks[variant],
            "time_vs_erm": ratio,
            "time_vs_erm_iqr": spread,
            "memory_vs_erm": memory,
            "rounds": rounds,
        }
        rows.append(row)
        noisy = spread > SPREAD_WARNING * ratio
        print(
            f"{device} {model_name} batch {batch} {variant} {row['ms_per_step']:.1f} ms/step, "
            f"{ratio:.2f}x ERM (IQR {spread:.2f}), peak {row['peak_mb']:.1f} MB, "
            f"{memory:.2f}x ERM"
            + (" WARNING: spread above 10%, the machine is noisy" if noisy else ""),
            flush=True,
        )
    return rows


def run(
    suite: str,
    cases: str | None,
    steps: int,
    device: str,
    out_dir: str,
    reverse: list[tuple[str, int]] = REVERSE,
    rounds: int = ROUNDS,
    quick: bool = False,
    images: int | None = None,
    epoch_variants: list[str] | None = None,
    backend: str = "inductor",
) -> list[dict]:
    """Run one suite for every model:batch case, each measurement in a fresh process
    (`reverse`: the (method, steps back) measured by the reverse suite; `rounds`: of the
    steps and distill suites; `images`, `epoch_variants`, `backend`: of the epoch suite)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    defaults = {"distill": DISTILL_CASES, "epoch": EPOCH_CASES}.get(suite, DEFAULT_CASES)
    defaults = QUICK_CASES if quick else defaults
    steps = max(steps, QUICK_STEPS) if quick else steps
    rounds = max(rounds, QUICK_ROUNDS) if quick else rounds
    for case in (cases or defaults[device]).split(","):
        model_name, batch = case.split(":")
        if model_name not in MODELS:
            raise ValueError(f"bench: unknown model {model_name!r} (known: {', '.join(MODELS)})")
        timed = SUITE_VARIANTS.get(suite)
        if timed:
            rows += timed_rows(model_name, batch, timed, steps, device, rounds)
            continue
        if suite == "epoch":
            count = str(images or EPOCH_IMAGES[device])
            for variant in epoch_variants or EPOCH_VARIANTS:
                row = _in_fresh_process("epoch", model_name, batch, variant, device, count, backend)
                rows.append(row)
                print(
                    f"{device} {model_name} batch {batch} {variant}: an epoch of {count} images "
                    f"in {row['seconds_per_epoch']:.2f} s ({row['images_per_s']:.0f} images/s)",
                    flush=True,
                )
            continue
        for method, count in reverse:
            row = _in_fresh_process(suite, model_name, batch, method, str(count), device)
            rows.append(row)
            print(
                f"{device} {model_name} batch {batch} {method} {count} steps back: "
                f"{row['ms']:.0f} ms, peak {row['peak_mb']:.0f} MB",
                flush=True,
            )
    name = suite + ("_quick" if quick else "")
    if device == "cpu" and numerics.in_effect() == "portable":
        name += "_portable"
    write_outputs(rows, Path(out_dir), name, device)
    return rows


def write_outputs(rows: list[dict], out_dir: Path, suite: str, device: str) -> None:
    import pandas as pd

    frame = pd.DataFrame(rows)
    write_text(
        frame.to_csv(index=False, float_format="%.3f", lineterminator="\n"),
        out_dir / f"{suite}_{device}.csv",
    )
    if not suite.startswith("steps"):
        return
    try:
        import matplotlib
    except ImportError:  # a bare GPU machine may lack it: the CSV is the result
        print("matplotlib is not installed: no figure")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    cases = list(dict.fromkeys(f"{r['model']}@{r['batch']}" for r in rows))
    width = 0.8 / len(VARIANTS)
    for k, variant in enumerate(VARIANTS):
        sub = frame[frame["method"] == variant]
        pos = [i + k * width for i in range(len(cases))]
        axes[0].bar(pos, sub["time_vs_erm"], width, yerr=sub["time_vs_erm_iqr"] / 2, label=variant)
        axes[1].bar(pos, sub["memory_vs_erm"], width, label=variant)
    for ax, title in zip(axes, ("step time / ERM", "peak memory / ERM"), strict=True):
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cases))], cases, fontsize=8)
        ax.set_title(f"{title} ({device})", fontsize=9)
        ax.axhline(1, color="gray", lw=0.5)
    handles, labels = axes[0].get_legend_handles_labels()  # below the bars, not over them
    fig.legend(handles, labels, loc="lower center", ncol=len(VARIANTS), fontsize=7)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    save_figure(fig, out_dir / f"{suite}_{device}.png")


if __name__ == "__main__":  # one measurement, in its own process (see `run`)
    # the parent's numerics (its environment), on one core: threads fighting for cores add noise
    numerics.pin("portable" if numerics.pinned_in_environment() else "fast")
    numerics.configure(1)
    if sys.argv[1] == "case":
        name, batch, items, steps, device, rounds = sys.argv[2:]
        found = measure_case(name, int(batch), items.split(","), int(steps), device, int(rounds))
    elif sys.argv[1] == "epoch":
        name, batch, variant, device, images, backend = sys.argv[2:]
        found = measure_epoch(name, int(batch), variant, device, int(images), backend)
    else:
        suite, name, batch, item, steps, device = sys.argv[1:]
        found = measure_reverse(name, int(batch), item, int(steps), device)
    print(json.dumps({**found, "kernels": numerics.provenance()}))
