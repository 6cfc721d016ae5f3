"""``make portability``: run the reproducibility gate as other CPUs would, on this one.

Results differ between CPUs because other kernels run. Each *variant* switches
the kernels the way another CPU would pick them, through the libraries' own
settings (OpenBLAS's core type is left as the machine sets it: some machines set
it on purpose):

- ``torch-default``: ``ATEN_CPU_CAPABILITY=default``, torch without its AVX2/AVX-512
  kernels (a CPU torch does not recognise);
- ``mkl-compatible``: ``MKL_CBWR=COMPATIBLE``, MKL's portable code path;
- ``numpy-x86-v2``: ``NPY_DISABLE_CPU_FEATURES`` turns numpy's AVX2/AVX-512 dispatch off;
- ``all``: the three together (the most different machine we can emulate).

Each variant re-runs the whole pipeline in its own copy of the working tree
(``linflow verify`` there, with the variant's environment) against the
committed results. Every variant must pass; the table then shows, per checked
number, the largest move seen against its tolerance. The goal is at most a
third: a margin for CPUs we cannot emulate here (AVX-512 on an AVX2 machine).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["VARIANTS", "Spread", "run_portability", "spreads", "render"]

_NUMPY_OFF = "X86_V3 X86_V4 AVX512_ICL AVX512_SPR"
VARIANTS: dict[str, dict[str, str]] = {
    "torch-default": {"ATEN_CPU_CAPABILITY": "default"},
    "mkl-compatible": {"MKL_CBWR": "COMPATIBLE"},
    "numpy-x86-v2": {"NPY_DISABLE_CPU_FEATURES": _NUMPY_OFF},
    "all": {
        "ATEN_CPU_CAPABILITY": "default",
        "MKL_CBWR": "COMPATIBLE",
        "NPY_DISABLE_CPU_FEATURES": _NUMPY_OFF,
    },
}
GOAL = 1 / 3  # largest move / tolerance we aim for


@dataclass(frozen=True)
class Spread:
    """The largest move of one checked number over the variants."""

    where: str  # 'reports/digits/metrics.json:test.accuracy'
    delta: float
    allowed: float
    rule: str
    variant: str  # where the largest move happened

    @property
    def share(self) -> float:
        if self.delta == 0:
            return 0.0
        return self.delta / self.allowed if self.allowed else float("inf")


def spreads(results: dict[str, dict]) -> list[Spread]:
    """Per checked number, its largest move over the variants' verify reports, largest first.

    results : variant -> the JSON report `linflow verify --json` wrote
    """
    best: dict[str, Spread] = {}
    for variant, doc in results.items():
        for row in doc.get("outputs", []):
            for n in row.get("numbers", []):
                where = f"{row['path']}:{n['key']}"
                s = Spread(where, abs(n["now"] - n["committed"]), n["allowed"], n["rule"], variant)
                if where not in best or s.share > best[where].share:
                    best[where] = s
    return sorted(best.values(), key=lambda s: (-s.share, s.where))


def render(results: dict[str, dict], seconds: dict[str, float]) -> tuple[str, bool]:
    """The report and whether every variant passed."""
    lines = ["variant          result   time   what differs"]
    ok = True
    for variant, doc in results.items():
        passed = bool(doc.get("ok"))
        ok &= passed
        counts = ", ".join(f"{n} {s}" for s, n in (doc.get("counts") or {}).items())
        lines.append(
            f"{variant:<16} {'pass' if passed else 'FAIL':<8} {seconds.get(variant, 0):5.0f}s  "
            f"{counts}"
        )
        for row in doc.get("outputs", []) + doc.get("problems", []):
            if row.get("failed"):
                lines.append(f"    {row['path']}  {row['status']}  {row['detail']}")
    table = spreads(results)
    lines += ["", "largest move of each checked number over the variants, against its tolerance:"]
    width = max((len(s.where) for s in table), default=10)
    lines.append(f"{'number':<{width}}  {'move':>9}  {'tolerance':>9}  share  rule (variant)")
    for s in table:
        flag = " !" if s.share > GOAL else ""
        lines.append(
            f"{s.where:<{width}}  {s.delta:9.3g}  {s.allowed:9.3g}  {s.share:5.0%}  "
            f"{s.rule} ({s.variant if s.delta else '-'}){flag}"
        )
    over = [s for s in table if s.share > GOAL]
    worst = table[0] if table else None
    summary = (
        f"portability {'OK' if ok else 'FAILED'}: {len(results)} variants"
        + (f"; largest move {worst.share:.0%} of its tolerance at {worst.where}" if worst else "")
        + (f"; {len(over)} numbers over the goal of a third (!)" if over else "")
    )
    return "\n".join([*lines, "", summary]), ok


def _copy_tree(root: Path, dest: Path) -> None:
    """What a fresh clone of the working tree holds, as a new git repo (DVC needs one)."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src = root / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "linflow",
        "GIT_AUTHOR_EMAIL": "linflow@localhost",
        "GIT_COMMITTER_NAME": "linflow",
        "GIT_COMMITTER_EMAIL": "linflow@localhost",
    }
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=dest, env=env, check=True, capture_output=True)


def run_portability(root: Path, names: list[str], log) -> tuple[str, bool]:
    """Run each variant's verify in its own copy of `root`; (report text, all passed)."""
    results: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    cache = root / "data" / "cache"
    with tempfile.TemporaryDirectory(prefix="linflow-portability-") as tmp:
        for i, name in enumerate(names, 1):
            repo = Path(tmp) / name
            repo.mkdir()
            _copy_tree(root, repo)
            env = {**os.environ, **VARIANTS[name]}
            if cache.is_dir() and "LINFLOW_DATA_ROOT" not in env:
                env["LINFLOW_DATA_ROOT"] = str(cache)  # Fashion-MNIST, if cached here
            out = Path(tmp) / f"{name}.json"
            settings = " ".join(f"{k}={v}" for k, v in VARIANTS[name].items())
            log.info(
                "portability %d/%d: %s (%s): linflow verify ...", i, len(names), name, settings
            )
            t0 = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "linflow", "verify", "--json", str(out)],
                cwd=repo,
                env=env,
                capture_output=True,
                text=True,
            )
            seconds[name] = time.perf_counter() - t0
            if out.is_file():
                results[name] = json.loads(out.read_text())
            else:  # verify could not run at all: its one-line error is the result
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                results[name] = {
                    "ok": False,
                    "outputs": [],
                    "problems": [{"path": "-", "status": "error", "detail": last, "failed": True}],
                }
            log.info(
                "portability %d/%d: %s %s in %.0f s",
                i,
                len(names),
                name,
                "passed" if results[name].get("ok") else "FAILED",
                seconds[name],
            )
    return render(results, seconds)
