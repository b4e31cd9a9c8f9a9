"""`python -m pipeline bench`: step time and peak memory of each method relative to ERM.

Same model, batch size (training and validation batches equal) and device for every method;
the double-backward reference of the same meta-gradient (L2RW's Algorithm 1 as written) runs
beside the fast routes. Each measurement runs in a fresh process so that peak memory is its
own: CUDA's max_memory_allocated on a GPU, the growth of the peak resident set on a CPU.
Needs torch only (no workflow engine), so it runs on a bare GPU machine with PYTHONPATH=.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from pipeline.config import ScheduleSpec
from pipeline.core.student import Student
from pipeline.io import atomic_path, write_text
from pipeline.methods import METHODS
from pipeline.methods.base import Batch, Context
from pipeline.models import build_model
from pipeline.noise import generator
from pipeline.task import TaskData

MODELS = {  # name -> (arch, options, input shape)
    "mlp": ("mlp", {"hidden": [256, 256]}, (1, 28, 28)),
    "lenet": ("lenet", {}, (1, 28, 28)),
    "resnet32": ("preact_resnet", {"depth": 32}, (3, 32, 32)),
    "wrn_28_10": ("wrn", {"depth": 28, "widen": 10, "dropout": 0.3}, (3, 32, 32)),
}
VARIANTS = {  # row name -> (method, settings)
    "erm": ("erm", {}),
    "l2rw_jvp_fused": ("l2rw", {"route": "jvp_fused"}),
    "l2rw_jvp": ("l2rw", {"route": "jvp"}),
    "l2rw_double_backward": ("l2rw", {"route": "double_backward"}),
}
DEFAULT_CASES = {"cpu": "mlp:100,mlp:512,resnet32:32", "cuda": "resnet32:512,wrn_28_10:100"}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure(model_name: str, batch: int, variant: str, steps: int, device: str) -> dict:
    """Time per step (median) and peak memory of one method, in this process."""
    arch, options, shape = MODELS[model_name]
    torch.manual_seed(0)
    dev = torch.device(device)
    n = batch * 4
    x = torch.randn(n, *shape, device=dev)
    y = torch.randint(0, 10, (n,), device=dev)
    data = TaskData(x, y, y, x[:batch], y[:batch], x[:1], y[:1], 10, [str(c) for c in range(10)])
    model = build_model(arch, shape, 10, **options).to(dev)
    schedule = ScheduleSpec(epochs=1, batch_size=batch, lr=0.1, momentum=0.9, weight_decay=5e-4)
    ctx = Context(Student(model, schedule, steps + 2), data, schedule, generator("bench"))
    kind, settings = VARIANTS[variant]
    method = METHODS[kind](METHODS[kind].Settings(**settings), ctx)

    def one_step(i: int) -> None:
        index = torch.arange(i % 4 * batch, (i % 4 + 1) * batch, device=dev)
        method.step(Batch(x[index], y[index], index))

    one_step(0)  # warm-up: allocator, kernels, momentum buffers
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _rss_mb()
    times = []
    for i in range(steps):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        one_step(i + 1)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    return {
        "device": dev.type,
        "model": model_name,
        "batch": batch,
        "method": variant,
        "ms_per_step": 1000 * statistics.median(times),
        "peak_mb": peak,
    }


def run(cases: str | None, steps: int, device: str, out_dir: str) -> list[dict]:
    """Measure every variant for every model:batch case, each in a fresh process."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for case in (cases or DEFAULT_CASES[device]).split(","):
        model_name, batch = case.split(":")
        if model_name not in MODELS:
            raise ValueError(f"bench: unknown model {model_name!r} (known: {', '.join(MODELS)})")
        for variant in VARIANTS:
            cmd = [
                sys.executable,
                "-m",
                "pipeline.bench",
                model_name,
                batch,
                variant,
                str(steps),
                device,
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"{device} {model_name} batch {batch} {variant}: "
                f"{row['ms_per_step']:.1f} ms/step, peak {row['peak_mb']:.0f} MB",
                flush=True,
            )
    for row in rows:
        erm = next(
            r
            for r in rows
            if r["model"] == row["model"] and r["batch"] == row["batch"] and r["method"] == "erm"
        )
        row["time_vs_erm"] = row["ms_per_step"] / erm["ms_per_step"]
        row["memory_vs_erm"] = row["peak_mb"] / max(erm["peak_mb"], 1e-9)
    write_outputs(rows, Path(out_dir), device)
    return rows


def write_outputs(rows: list[dict], out_dir: Path, device: str) -> None:
    import pandas as pd

    frame = pd.DataFrame(rows)
    write_text(
        frame.to_csv(index=False, float_format="%.3f", lineterminator="\n"),
        out_dir / f"l2rw_{device}.csv",
    )
    try:
        import matplotlib
    except ImportError:  # a bare GPU machine may lack it: the CSV is the result
        print("matplotlib is not installed: no figure")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    cases = list(dict.fromkeys(f"{r['model']}@{r['batch']}" for r in rows))
    width = 0.8 / len(VARIANTS)
    for k, variant in enumerate(VARIANTS):
        sub = frame[frame["method"] == variant]
        pos = [i + k * width for i in range(len(cases))]
        axes[0].bar(pos, sub["time_vs_erm"], width, label=variant)
        axes[1].bar(pos, sub["memory_vs_erm"], width, label=variant)
    for ax, title in zip(axes, ("step time / ERM", "peak memory / ERM"), strict=True):
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cases))], cases, fontsize=8)
        ax.set_title(f"{title} ({device})", fontsize=9)
        ax.axhline(1, color="gray", lw=0.5)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(out_dir / f"l2rw_{device}.png") as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)


if __name__ == "__main__":  # one measurement, in its own process (see `run`)
    name, batch, variant, steps, device = sys.argv[1:]
    print(json.dumps(measure(name, int(batch), variant, int(steps), device)))
