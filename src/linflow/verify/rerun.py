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

from linflow.core.errors import VerifyError
from linflow.verify import check as verify
from linflow.verify.check import Output
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
    old = read_lock(root / "dvc.lock")
    outputs, declared, cache = declared_outputs(root)
    old_md5 = verify.out_hashes(old)
    committed = {o.path: _snapshot(root, o, old_md5, cache) for o in outputs}
    contexts = _contexts(root, [o for o in outputs if o.metric])
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
        + verify.rerun_rows(again, status)
        + verify.gate_rows(checked, current),
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


def read_lock(path: Path) -> dict[str, dict]:
    """The parsed `stages` of a dvc.lock; a one-line VerifyError when absent or corrupted."""
    import yaml

    from linflow.core.storage import load_yaml

    try:
        doc = load_yaml(path.read_text())
    except FileNotFoundError:
        raise VerifyError(f"{path.name}: not found (run dvc repro and commit dvc.lock)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise VerifyError(f"{path.name}: not valid YAML{where} (corrupted?)") from None
    return verify.parse_lock(doc, path.name)


def declared_outputs(root: Path) -> tuple[list[Output], list[str], Path | None]:
    """(outputs in pipeline order, every stage name, the DVC cache folder) from dvc.yaml."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    from linflow.core.storage import load_yaml

    top = load_yaml((root / "dvc.yaml").read_text()) or {}
    top_metrics = {str(m) for m in top.get("metrics") or [] if isinstance(m, str)}
    try:
        with Repo(str(root)) as repo:
            stages = list(repo.index.stages)
            outputs = []
            for stage in stages:
                for o in stage.outs:
                    rel = Path(os.path.relpath(o.fs_path, root)).as_posix()
                    metric = bool(o.metric) or rel in top_metrics
                    outputs.append(Output(rel, stage.addressing, bool(o.use_cache), metric))
            cache = getattr(getattr(repo.cache, "local", None), "path", None)
    except DvcException as exc:
        raise VerifyError(f"dvc.yaml: {str(exc).splitlines()[0]}") from None
    return outputs, [s.addressing for s in stages], Path(cache) if cache else None


def _snapshot(root: Path, out: Output, md5s: dict, cache: Path | None) -> bytes | None:
    # Git-tracked outputs are compared by content (DVC deletes them before a re-run);
    # a DVC-cached metrics file by its cached object, where the cache holds it.
    if not out.cached:
        path = root / out.path
        if path.is_dir():  # a git-tracked folder: its file names and contents, in order
            files = sorted(f for f in path.rglob("*") if f.is_file())
            return b"".join(
                f.relative_to(path).as_posix().encode() + b"\0" + f.read_bytes() + b"\0"
                for f in files
            )
        return path.read_bytes() if path.is_file() else None
    md5 = md5s.get(out.path)
    if out.metric and md5 and cache is not None:
        obj = cache / md5[:2] / md5[2:]
        return obj.read_bytes() if obj.is_file() else None
    return None


def _changed_files(outputs, old_md5: dict, new_md5: dict, cache: Path | None) -> dict:
    """Files that differ inside changed directory outputs, where both manifests are cached."""

    def manifest(md5: str | None) -> dict | None:
        if not md5 or not md5.endswith(".dir") or cache is None:
            return None
        try:
            entries = json.loads((cache / md5[:2] / md5[2:]).read_text())
            return {e["relpath"]: e["md5"] for e in entries}
        except (OSError, ValueError, KeyError, TypeError):
            return None

    out = {}
    for o in outputs:
        a, b = manifest(old_md5.get(o.path)), manifest(new_md5.get(o.path))
        if a is not None and b is not None and a != b:
            out[o.path] = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return out


def _dvc_repro(args: list[str], env: dict, echo: bool) -> list[str]:
    """Run `dvc repro ARGS` (its output echoed to stderr); the stages it ran, in order."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if echo:
            sys.stderr.write(line)
            sys.stderr.flush()
    code = proc.wait()
    if code != 0:
        errors = [ln for ln in lines if ln.startswith("ERROR")] or lines[-1:] or ["no output"]
        raise VerifyError(f"dvc repro {' '.join(args)} failed (exit {code}): {errors[-1]}")
    return [m.group(1) for ln in lines if (m := re.match(r"Running stage '([^']+)'", ln))]


def _dvc_status(targets: list[str], env: dict) -> dict:
    res = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json", *targets],
        capture_output=True,
        text=True,
        env=env,
    )
    try:
        status = json.loads(res.stdout or "{}")
    except ValueError:
        status = None
    if res.returncode != 0 or not isinstance(status, dict):
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise VerifyError(f"dvc status failed (exit {res.returncode}): {last}")
    return status
