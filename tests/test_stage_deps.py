"""Every source file a stage imports is one of its DVC dependencies.

Follows ``linflow.*`` imports from ``src/linflow/stages/<stage>.py``
transitively (imports inside functions included) and checks that each module's
file lies under a path the stage lists in dvc.yaml, so editing any code a stage
runs makes ``dvc status`` list that stage.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
# The process shell: how a stage starts, not what it computes (see dvc.yaml's header).
SHELL = {
    "linflow", "linflow.cli", "linflow.stages", "linflow.launch", "linflow.launch.worker",
    "linflow.launch.torchrun",  # starts the train stage as torchrun ranks
}  # fmt: skip


def _file(module: str) -> Path | None:
    base = SRC / module.replace(".", "/")
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.exists():
            return cand
    return None


def _imports(path: Path, module: str) -> set[str]:
    out: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}  # `from pkg import module`
    return {m for m in out if m.startswith("linflow") and _file(m)}


def _closure(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        parts = mod.split(".")
        parents = {".".join(parts[:i]) for i in range(1, len(parts))}  # packages run their __init__
        todo += [m for m in _imports(_file(mod), mod) | parents if _file(m)]
    return seen - SHELL


def _deps(stage: str) -> list[Path]:
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]
    deps = spec.get("do", spec).get("deps", [])
    return [ROOT / d for d in deps if d.startswith("src/")]


@pytest.mark.parametrize(
    "stage",
    ["validate", "prepare", "split", "train", "evaluate", "reference", "compare", "report", "gd"],
)
def test_every_module_a_stage_imports_is_a_dependency(stage):
    deps = _deps(stage)
    missing = [
        str(_file(m).relative_to(ROOT))
        for m in sorted(_closure(f"linflow.stages.{stage}"))
        if not any(_file(m) == d or d in _file(m).parents for d in deps)
    ]
    assert not missing, f"{stage} imports {missing} but dvc.yaml does not list them"
