"""CPU numerics: kernels pinned to code that every x86-64 machine with AVX2 runs (`portable`),
or the fastest kernels of this one (`fast`), set by params.yaml `run.cpu_numerics`.

Measured: `portable` gives the same bits on one machine whatever kernels it would pick, and
across Intel and AMD for runs that do not call torch's float32 sqrt, exp or log: torch hands
those to MKL's vector math, which is not correctly rounded, and the runs that call them
differed in their last bits between an AMD EPYC and an Intel Xeon on the COMPATIBLE branch
(docs/reproducibility.md).

torch, MKL and numpy each pick their kernels per processor at load time, and kernels of
different vector widths sum in different orders: on one thread a run is deterministic on its
own machine only. `portable` pins each choice to code that every AVX2 CPU runs alike:

- torch's own kernels (elementwise, reductions, softmax): the AVX2 build, not AVX-512;
- MKL's GEMM: its COMPATIBLE branch, the only one MKL keeps reproducible across vendors (its
  AVX2 branch applies to Intel CPUs only: an AMD CPU runs the AUTO branch under
  MKL_CBWR=AVX2); STRICT keeps it reproducible for unaligned views too;
- numpy (two moons' sine and cosine): its AVX2 level, not its AVX-512 versions;
- convolutions: torch's im2col + GEMM path; oneDNN and NNPACK choose their blocking from the
  cache sizes, so they are switched off.

The environment must be set before torch or numpy loads (`pin`, called by the stage entry);
the torch flags after (`configure`, called by train and evaluate, which also take their
device from `pick_device`).

Which kernels compute alike on two machines is measured, not assumed: `fingerprint` digests
what each kernel family returns on fixed inputs, and results/numerics.json holds the digests
of the machine that made the committed results (`python -m pipeline numerics` compares).
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import warnings
from pathlib import Path

PORTABLE_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE,STRICT",
    "NPY_ENABLE_CPU_FEATURES": "X86_V3",
}
REQUIRED_FLAGS = ("avx2", "fma")  # what the pinned kernels execute


def _cpuinfo_field(name: str, cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """The first CPU's `name` line of cpuinfo ("" where absent); None if it cannot be read."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    lines = (line for line in text.splitlines() if line.startswith(name))
    return next((line.split(":", 1)[1].strip() for line in lines), "")


def portable_unavailable(cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """Why this machine cannot run the portable kernels, or None when it can."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"{platform.machine()} is not x86-64"
    flags = _cpuinfo_field("flags", cpuinfo)
    if flags is None:
        return f"cannot read the CPU flags ({cpuinfo})"
    flags = flags.split()
    missing = [f for f in REQUIRED_FLAGS if f not in flags]
    return f"the CPU lacks {', '.join(missing)}" if missing else None


_in_effect = "fast"  # what this process's kernels are: set by pin


def pinned_in_environment() -> bool:
    """Whether this process's environment holds the portable kernels' settings (a child
    process inherits its parent's)."""
    return all(os.environ.get(k) == v for k, v in PORTABLE_ENV.items())


def pin(mode: str) -> str:
    """Set the environment for `mode` before torch and numpy load; returns the mode in effect.
    That is `fast` where this machine cannot run the portable kernels, and the numerics torch
    loaded with where it is already loaded (a stage called in-process), each with a warning."""
    global _in_effect
    pinned = pinned_in_environment()
    loaded = [m for m in ("torch", "numpy") if m in sys.modules]
    reason = None
    if loaded:
        effective = "portable" if pinned else "fast"
        if effective != mode:
            reason = f"{' and '.join(loaded)} already loaded in this process"
    else:
        reason = portable_unavailable() if mode == "portable" else None
        effective = "fast" if reason else mode
        if effective == "portable":
            os.environ.update(PORTABLE_ENV)
        else:  # settings inherited from a shell would pin the kernels all the same
            for key, value in PORTABLE_ENV.items():
                if os.environ.get(key) == value:
                    del os.environ[key]
    if reason:
        warnings.warn(
            f"cpu_numerics {mode} cannot apply ({reason}): this process uses {effective} "
            "numerics (a run records them in its metrics.json)",
            stacklevel=2,
        )
    _in_effect = effective
    return effective


def in_effect() -> str:
    """The CPU numerics of this process (see pin)."""
    return _in_effect


def pick_device(requested: str):
    """The torch device of params.yaml `run.device` (auto: CUDA where there is one)."""
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run.device is cuda but no CUDA device is available")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(requested)


_NAMED: set[str] = set()  # engine thread counts already named in this process


def configure(threads: int) -> None:
    """The torch side of the CPU numerics: the thread count, and in portable mode
    convolutions through im2col + GEMM (call before any CPU work)."""
    import torch

    given = os.environ.get("OMP_NUM_THREADS")  # Snakemake sets it to the job's `threads`
    if given and given != str(threads) and given not in _NAMED:
        _NAMED.add(given)  # once per process
        print(
            f"note: this job was given {given} threads (OMP_NUM_THREADS) but params.yaml "
            f"run.threads is {threads}; the job uses {threads}, which its results depend on: "
            "change run.threads, not the engine's thread count",
            file=sys.stderr,
        )
    torch.set_num_threads(threads)
    if in_effect() == "portable":
        torch.backends.mkldnn.enabled = False
        torch.backends.nnpack.set_flags(False)


def provenance() -> dict:
    """What a run's metrics.json records of the CPU numerics: the same on every machine in
    portable mode (so metrics.json is too), this machine's kernels in fast mode."""
    import torch

    mkl = torch.backends.mkl.is_available()
    return {
        "cpu_numerics": in_effect(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl_cbwr": os.environ.get("MKL_CBWR", "AUTO") if mkl else None,
        "onednn": torch.backends.mkldnn.enabled,
    }


REFERENCE = "results/numerics.json"  # the kernels of the machine that made the results


def _values(n: int, low: float, high: float):
    """n float32 values spread over [low, high), the same on every machine (no RNG)."""
    import torch

    fraction = (torch.arange(n, dtype=torch.int64) * 2654435761 % 2**24).float() / 2**24
    return fraction * (high - low) + low


def _kernels() -> dict:
    """Each kernel family a run calls, on fixed inputs: name -> a function returning its output."""
    import torch
    import torch.nn.functional as F

    a, b = _values(64 * 256, -1, 1).view(64, 256), _values(96 * 256, -1, 1).view(96, 256)
    image, weight = _values(4 * 8 * 16 * 16, -1, 1), _values(16 * 8 * 9, -1, 1)
    positive, wide = _values(2**16, 1e-12, 4.0), _values(2**16, -20, 20)
    return {
        "matmul": lambda: a @ b.T,
        "conv2d": lambda: F.conv2d(image.view(4, 8, 16, 16), weight.view(16, 8, 3, 3), padding=1),
        "sum": lambda: a.sum(dim=1),
        "softmax": lambda: torch.softmax(a, dim=1),
        "sqrt": lambda: positive.sqrt(),
        "log": lambda: positive.log(),
        "exp": lambda: wide.exp(),
        "exp2": lambda: wide.exp2(),
        "tanh": lambda: wide.tanh(),
        "erf": lambda: wide.erf(),
    }


def fingerprint() -> dict[str, str]:
    """The SHA-256 (16 hex digits) of each kernel family's output on one thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return {
                name: hashlib.sha256(kernel().contiguous().numpy().tobytes()).hexdigest()[:16]
                for name, kernel in sorted(_kernels().items())
            }
    finally:
        torch.set_num_threads(threads)


def machine() -> str:
    """This CPU's model name, or the platform's processor where /proc/cpuinfo is absent."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def this_machine() -> dict:
    """What results/numerics.json records: the CPU, torch, the numerics mode, the digests."""
    import torch

    return {
        "machine": machine(),
        "torch": torch.__version__,
        "cpu_numerics": in_effect(),
        "kernels": fingerprint(),
    }


def incomparable(reference: dict, here: dict) -> str | None:
    """Why two machines' kernels cannot be compared (another torch or numerics mode), or None."""
    for key in ("torch", "cpu_numerics"):
        if reference[key] != here[key]:
            return f"{key} {here[key]} here, {reference[key]} in {REFERENCE}"
    return None


def differences_from(reference: dict, here: dict) -> list[str]:
    """Why the kernels cannot be compared (one message), else the kernel families that
    compute otherwise (empty when every one gives the same bits)."""
    reason = incomparable(reference, here)
    if reason:
        return [reason]
    kernels = reference["kernels"]
    return [k for k in sorted(kernels) if here["kernels"].get(k) != kernels[k]]


def summary(reference: dict, here: dict) -> str:
    """One sentence: whether this machine's kernels compute as the reference machine's."""
    reason = incomparable(reference, here)
    if reason:
        return f"the kernels cannot be compared: {reason}"
    found = differences_from(reference, here)
    if not found:
        return (
            "this machine's kernels compute as those of the committed results' machine "
            f"({reference['machine']}): every kernel family the same bits"
        )
    return (
        f"this machine ({here['machine']}) computes {', '.join(found)} otherwise than the "
        f"committed results' machine ({reference['machine']}): runs that call them cannot "
        "repeat here bit for bit (docs/reproducibility.md)"
    )
