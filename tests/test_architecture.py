"""The package's structure: no import circles, a params layer without torch, one registry."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO

from pipeline import plan
from pipeline.__main__ import main

PACKAGE = REPO / "pipeline"

# Runs a stage with torch unimportable: any `import torch` on its way fails loudly.
WITHOUT_TORCH = """
import importlib.abc, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "torch":
            raise ImportError("this stage must not import torch")

sys.meta_path.insert(0, NoTorch())
from pipeline.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the pipeline modules it imports (anywhere in it, deferred imports too), with
    the packages whose __init__ an import runs."""
    files = {module_name(f): f for f in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
        for target in list(targets):
            parts = target.split(".")
            targets |= {".".join(parts[:i]) for i in range(2, len(parts))}  # parent packages
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, found = {}, {}, [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_of_the_package_imports_itself_in_a_circle():
    assert circles(import_graph()) == []


def test_the_circle_check_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]


def test_the_params_layer_imports_no_torch():
    code = (
        "import sys; from pipeline.config import json_schema, load; "
        f"load({str(REPO / 'params.yaml')!r}); json_schema(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_method_has_its_settings_registered_once():
    from pipeline.methods.registry import METHODS
    from pipeline.methods.settings import SETTINGS

    assert list(METHODS) == list(SETTINGS)
    assert all(METHODS[name].Settings is SETTINGS[name] for name in METHODS)


def test_report_suspects_and_check_run_without_torch(workdir):
    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["experiments"]["tiny"].update({"suspects": 2, "contact_sheet": True})
    Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["prepare", "--dataset", "digits"]) == 0
    for noise in ("clean", "uniform40"):
        assert main(["noise", "--dataset", "digits", "--noise", noise, "--seeds", "0,1"]) == 0
    for noise in ("clean", "uniform40"):
        args = ["--dataset", "digits", "--model", "mlp", "--schedule", "short", "--method", "erm"]
        assert main(["train", *args, "--noise", noise, "--seeds", "0,1"]) == 0
    stages = (["report", "--experiment", "tiny"], ["suspects", "--experiment", "tiny"], ["check"])
    for stage in stages:
        out = subprocess.run(
            [sys.executable, "-c", WITHOUT_TORCH, *stage], capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr[-2000:]
    assert Path("results/tables/tiny.md").exists()
    assert Path(plan.suspects_paths("tiny")[2]).exists()  # the contact sheet too
