"""What ``linflow verify`` does around the comparison: run DVC and collect its results.

0. Read the committed numeric platform (``reports/platform.json``) and this
   machine's; ``verify.strict: true`` across different ones is refused at once.
1. Snapshot the committed state: dvc.lock and the bytes of every git-tracked
   (``cache: false``) output, as they are in the working tree before the run
   (on a clean clone: the commit).
2. ``dvc repro -f [targets]``: every stage really runs. A plain ``dvc repro``
   would skip stages whose git-tracked outputs a clone already holds (and
   restore others from the run cache), so it would check nothing.
3. A second, plain ``dvc repro`` must run nothing, and ``dvc status`` must be clean.
4. Hand the committed and the new lock and bytes to :mod:`linflow.verify.check`.

MLflow runs made by the check go to a throwaway store, not the project's.
Not a stage and not a dependency of one: editing it re-runs no stage.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from linflow.verify import check as verify
from linflow.verify.check import Output, VerifyError
from linflow.verify.platform import describe, differences, fingerprint

log = logging.getLogger(__name__)

__all__ = ["PLATFORM_FILE", "run_verify", "read_lock", "declared_outputs", "read_platform"]

# Written by the report stage: the numeric platform the committed results were made on.
PLATFORM_FILE = "reports/platform.json"


def run_verify(root: Path, cfg, targets: list[str], threads: dict[str, int]) -> verify.Report:
    """Force a re-run in `root` and compare it with the committed state.

    cfg : config.VerifySection
    targets : stages to re-run with their upstream stages; [] = the whole pipeline
    threads : the thread counts params.yaml pins (part of the numeric platform)
    """
    if not (root / "dvc.yaml").is_file():
        raise VerifyError(f"{root}: no dvc.yaml here (run from the repo root)")
    committed_platform = read_platform(root / PLATFORM_FILE)
    here = fingerprint(threads)
    if committed_platform is not None:
        diff = differences(committed_platform, here)
        log.info("verify: results committed on %s", describe(committed_platform))
        if diff:
            log.info("verify: this machine differs: %s", "; ".join(diff))
            if cfg.strict:
                raise VerifyError(
                    f"params.yaml: verify.strict: true needs the numeric platform the results "
                    f"were made on, and this one differs ({'; '.join(diff)}); set "
                    "verify.strict: false to judge metrics by verify.tolerance"
                )
    old = read_lock(root / "dvc.lock")
    outputs, declared, cache = declared_outputs(root)
    old_md5 = verify.out_hashes(old)
    committed = {o.path: _snapshot(root, o, old_md5, cache) for o in outputs}
    contexts = _contexts(root, [o for o in outputs if o.metric])

    with tempfile.TemporaryDirectory(prefix="linflow-verify-") as tmp:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}
        t0 = time.perf_counter()
        ran = _dvc_repro(["-f", *targets], env, echo=True)
        log.info(
            "verify: dvc repro -f ran %d stage(s) in %.1f s", len(ran), time.perf_counter() - t0
        )
        again = _dvc_repro(targets, env, echo=False)
        status = _dvc_status(targets, env)

    new = read_lock(root / "dvc.lock")
    new_md5 = verify.out_hashes(new)
    ran_set = set(ran)
    checked = [o for o in outputs if o.stage in ran_set]
    current = {o.path: _snapshot(root, o, new_md5, cache) for o in checked}
    rows = verify.compare_outputs(
        checked,
        old_md5,
        new_md5,
        committed,
        current,
        cfg,
        _changed_files(checked, old_md5, new_md5, cache),
        contexts,
    )
    changed = [r.path for r in rows if r.status != verify.BIT_IDENTICAL]
    return verify.Report(
        outputs=rows,
        problems=verify.stale_rows(old, new, ran, declared, changed)
        + verify.rerun_rows(again, status),
        committed_platform=committed_platform,
        platform=here,
    )


def read_platform(path: Path) -> dict | None:
    """A recorded fingerprint, or None when the file is absent or unreadable."""
    return _json_mapping(path)


def _json_mapping(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _contexts(root: Path, metrics: list[Output]) -> dict[str, dict]:
    """Each metrics file's scale for the tolerance rules, from its dataset's committed
    compare.json: the test rows (n_test) and our test r2."""
    out = {}
    for o in metrics:
        doc = _json_mapping((root / o.path).parent / "compare.json") or {}
        ours = (doc.get("test") or {}).get("ours") or {}
        ctx = {"n_test": doc.get("n_test"), "r2": ours.get("r2")}
        out[o.path] = {k: v for k, v in ctx.items() if isinstance(v, (int, float))}
    return out
