"""What ``dvc.lock`` says about a stage, checked against the workspace, without DVC.

``train`` asks whether DVC is about to skip ``evaluate@<ds>`` and ``compare@<ds>``
(the weights it just wrote are the ones those stages last saw): then their
outputs in the workspace are this training's results, and train logs them to
its MLflow run itself -- on a fresh tracking server no earlier run can lend them.

A stage is current when dvc.lock records it and every dependency, output and
param it records still has the recorded hash or value: DVC's own test for
skipping it (a folder's hash is DVC's ``<md5>.dir``: the md5 of the sorted JSON
list of its files' md5 and relative paths). Reads files; no DVC import (~1 s).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from linflow.core.storage import file_md5

__all__ = ["dir_md5", "path_md5", "stage_current"]


def dir_md5(path: Path) -> str:
    """DVC's hash of a folder: ``<md5 of its file listing>.dir``."""
    entries = sorted(
        (
            {"md5": file_md5(p), "relpath": p.relative_to(path).as_posix()}
            for p in path.rglob("*")
            if p.is_file()
        ),
        key=lambda e: e["relpath"],
    )
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"


def path_md5(path: Path) -> str | None:
    """The hash DVC records for a file or folder; None when it does not exist."""
    if path.is_dir():
        return dir_md5(path)
    if path.is_file():
        return file_md5(path)
    return None


def _dotted(doc: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(doc, Mapping) or part not in doc:
            return _MISSING
        doc = doc[part]
    return doc


_MISSING = object()


def stage_current(lock_path: Path, stage: str, needs: Iterable[Path] = ()) -> bool:
    """True when `lock_path` records `stage` and the workspace still matches every
    dependency, output and param it records (so ``dvc repro`` would skip it), and
    each path of `needs` is among its dependencies. False when anything differs,
    is missing or unreadable."""
    import yaml

    from linflow.core.storage import load_yaml

    root = lock_path.parent
    try:
        entry = (load_yaml(lock_path.read_text()) or {}).get("stages", {}).get(stage)
    except (OSError, yaml.YAMLError, AttributeError):
        return False
    if not isinstance(entry, Mapping):
        return False
    deps = entry.get("deps") or []
    outs = entry.get("outs") or []
    dep_paths = {(root / d.get("path", "")).resolve() for d in deps if isinstance(d, Mapping)}
    if any(Path(n).resolve() not in dep_paths for n in needs):
        return False
    wanted = {Path(n).resolve() for n in needs}
    # `needs` first: usually what changed (the new weights), found before hashing the rest
    items = sorted(
        [*deps, *outs],
        key=lambda i: (
            not (isinstance(i, Mapping) and (root / i.get("path", "")).resolve() in wanted)
        ),
    )
    for item in items:
        if not isinstance(item, Mapping) or "path" not in item or "md5" not in item:
            return False
        if path_md5(root / item["path"]) != item["md5"]:
            return False
    for file, values in (entry.get("params") or {}).items():
        try:
            current = load_yaml((root / file).read_text())
        except (OSError, yaml.YAMLError):
            return False
        if any(_dotted(current, k) != v for k, v in (values or {}).items()):
            return False
    return True
