"""Files and provenance: atomic writes, deterministic JSON, the git revision, progress output."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds,
    so an interrupted stage never leaves a half-written file that looks complete. A temporary
    file that a killed write left behind is removed by the next write of the same path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # what a killed earlier write of this file left (one job writes a path at a time)
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        leftover.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_figure(fig, path: str | Path) -> None:
    """A matplotlib figure as PNG without metadata (so reruns are byte-identical), written
    atomically; the figure is closed."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)


class CorruptFile(OSError):
    """A file of the project that does not load, or whose contents fail their checksum; the
    message names the file and how to make it again."""


def save_torch(obj: Any, path: str | Path, checksum: bool = False) -> None:
    """torch.save, atomically, and byte-identical for equal contents: saved to a path,
    torch names the archive's records after the (random) temporary file; saved to a buffer,
    it uses a fixed name. checksum: store the contents' sha256 beside them (load_torch
    checks it), for inputs whose silent corruption would change every result downstream."""
    import io

    import torch

    if checksum:
        obj = {"sha256": content_sha256(obj), "content": obj}
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load_torch(path: str | Path, checksum: bool = False, remake: str = "") -> Any:
    """A file save_torch wrote, read without pickle (weights_only: tensors, numbers, strings
    and containers only, so a file cannot run code). CorruptFile, naming the file and
    `remake` (the command that writes it again), if it does not load or fails its checksum."""
    import torch

    remake = remake or "delete it and rerun the stage that writes it"
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # truncated, overwritten, or not written by this project
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise CorruptFile(f"{path} does not load ({type(e).__name__}: {reason}); {remake}") from e
    if not checksum:
        return obj
    if not isinstance(obj, dict) or set(obj) != {"sha256", "content"}:
        raise CorruptFile(f"{path} carries no checksum (written by an earlier version); {remake}")
    if content_sha256(obj["content"]) != obj["sha256"]:
        raise CorruptFile(f"{path} fails its sha256 check (corrupted); {remake}")
    return obj["content"]


def content_sha256(obj: Any) -> str:
    """sha256 of nested dicts, lists, tensors and plain values: of the tensors' dtypes, shapes
    and bytes, so it does not depend on how the archive lays them out."""
    import hashlib

    digest = hashlib.sha256()
    _feed(digest, obj)
    return digest.hexdigest()


def _feed(digest, obj: Any) -> None:
    import torch

    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        digest.update(f"tensor {t.dtype} {tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        digest.update(f"dict {len(obj)};".encode())
        for key in sorted(obj, key=repr):
            _feed(digest, key)
            _feed(digest, obj[key])
    elif isinstance(obj, list | tuple):
        digest.update(f"{type(obj).__name__} {len(obj)};".encode())
        for item in obj:
            _feed(digest, item)
    else:
        digest.update(f"{type(obj).__name__} {obj!r};".encode())


def dumps_json(obj: Any) -> str:
    """Stable, strict JSON: sorted keys, fixed indentation, a final newline; NaN and
    infinities are refused (json would write them as invalid JSON)."""
    return json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"


def write_json(obj: Any, path: str | Path) -> None:
    write_text(dumps_json(obj), path)


def write_text(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(data: bytes, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def git_revision() -> str:
    """The commit the code ran at ('+dirty' if files outside results/ have changes: the
    outputs a rerun rewrites do not make the code dirty; 'unknown' outside git)."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def committed_json(path: str | Path) -> Any:
    """The JSON file at `path` as git's HEAD commit holds it (None: no git, not committed, or
    not JSON). The workflow engines delete a job's outputs before it runs, so this is how a
    stage sees what it is about to write again."""
    try:
        shown = subprocess.run(
            ["git", "show", f"HEAD:./{Path(path).as_posix()}"], capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    try:
        return json.loads(shown)
    except ValueError:
        return None


class Progress:
    """Progress of a long loop: on a terminal a tqdm bar (the rate and time left) with the
    milestone lines printed above it; on a pipe or a log file only the milestones (the lines
    the caller marks, an epoch's end), so logs stay a line per epoch."""

    def __init__(self, label: str, total: int, stream=None):
        # sys.stderr as it is now, not at import: the job's log tee replaces it before a stage
        self.stream = stream or sys.stderr
        self.label, self.total = label, total
        self.start = time.monotonic()
        self.bar = None
        if self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, file=self.stream, leave=False)

    def update(self, done: int, message: str = "", milestone: bool = False) -> None:
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        if not milestone:
            return
        elapsed = time.monotonic() - self.start
        eta = (self.total - done) * elapsed / done if done else float("inf")
        line = f"{self.label} {done}/{self.total} {message} [{elapsed:.0f}s, eta {eta:.0f}s]"
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
