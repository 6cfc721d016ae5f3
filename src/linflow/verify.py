"""The reproducibility check: a forced re-run of the pipeline against the committed results.

Pure: this module compares; ``linflow verify`` (cli.py) runs ``dvc repro -f``,
collects the committed and the new dvc.lock and the bytes of the git-tracked
outputs, and hands them here. Every output the re-run produced gets one status:

- ``bit-identical``: the same bytes (the same md5 in dvc.lock for DVC-cached
  outputs; the same content as the committed file for git-tracked ones);
- ``within tolerance``: a metrics file whose numbers moved, each within its
  tolerance (params.yaml ``verify.tolerance``), everything else equal;
- ``drifted``: a metrics file with a number beyond its tolerance, or with a
  changed key or text value;
- ``changed``: a data output (``prepare``, ``split``) that is not bit-identical:
  data must be exact on every platform;
- ``differs``: another output (weights, figures, tables) that is not
  bit-identical; the metrics gate its effect, so it passes unless
  ``verify.strict``;
- ``missing``: a git-tracked output the commit does not hold.

The committed dvc.lock must also be *current*: a stage whose ``cmd``, deps
(hashes), params (values) or declared outs differ between the committed entry
and the one the re-run wrote, a stage absent from the committed lock, or an
entry for a stage dvc.yaml no longer has, is ``stale lock`` -- exactly what
``dvc status`` on a clean clone would list and ``dvc repro`` would re-run.
A stage that a second, unforced ``dvc repro`` runs again is ``re-ran``.
Each of these fails the check.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from linflow.storage import DataError

__all__ = [
    "DATA_STAGES",
    "Output",
    "Row",
    "Report",
    "VerifyError",
    "parse_lock",
    "out_hashes",
    "stale_rows",
    "compare_metrics",
    "compare_outputs",
    "rerun_rows",
]

# Stages whose outputs are data: they must be bit-identical everywhere.
DATA_STAGES = ("prepare", "split")

BIT_IDENTICAL = "bit-identical"
WITHIN = "within tolerance"
DRIFTED = "drifted"
CHANGED = "changed"
DIFFERS = "differs"
MISSING = "missing"
STALE = "stale lock"
RERAN = "re-ran"
NOT_UP_TO_DATE = "not up to date"


class VerifyError(DataError):
    """verify cannot run or read its inputs (dvc.lock, dvc.yaml, dvc itself); one line."""


@dataclass(frozen=True)
class Output:
    """One declared output of a stage."""

    path: str
    stage: str  # e.g. 'prepare@line'
    cached: bool  # DVC-cached (compared by md5 in dvc.lock) or git-tracked (by content)
    metric: bool  # declared as metrics (stage `metrics:` or top-level `metrics:`)

    @property
    def is_data(self) -> bool:
        return self.stage.split("@")[0] in DATA_STAGES


@dataclass(frozen=True)
class Row:
    path: str
    stage: str
    status: str
    detail: str = ""
    failed: bool = False


# --- dvc.lock -----------------------------------------------------------------------


def parse_lock(doc: Any, where: str = "dvc.lock") -> dict[str, dict]:
    """The `stages` mapping of a loaded dvc.lock, checked for shape."""
    stages = doc.get("stages") if isinstance(doc, Mapping) else None
    if not isinstance(stages, Mapping) or not all(isinstance(v, Mapping) for v in stages.values()):
        raise VerifyError(f"{where}: not a dvc.lock (expected 'stages:' mapping stage -> entry)")
    return {str(k): dict(v) for k, v in stages.items()}


def _hash(entry: Mapping) -> str | None:
    for key in ("md5", "checksum", "etag"):
        if entry.get(key):
            return str(entry[key])
    return None


def _by_path(entries: Any) -> dict[str, str | None]:
    if not isinstance(entries, list):
        return {}
    return {str(e["path"]): _hash(e) for e in entries if isinstance(e, Mapping) and "path" in e}


def out_hashes(stages: Mapping[str, Mapping]) -> dict[str, str | None]:
    """path -> md5 of every output recorded in a parsed lock."""
    out: dict[str, str | None] = {}
    for entry in stages.values():
        out.update(_by_path(entry.get("outs")))
    return out


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves of nested mappings/lists as dotted keys: {'test': {'r2': 1}} -> {'test.r2': 1}."""
    if isinstance(value, Mapping):
        items: Iterable[tuple[Any, Any]] = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return {prefix: value}
    out: dict[str, Any] = {}
    for k, v in items:
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    if not out and prefix:
        out[prefix] = value  # an empty mapping/list is a value too
    return out


def _short(value: Any, width: int = 40) -> str:
    """A value for a table cell; an md5 as its first 8 hex digits."""
    if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{32}(\.dir)?", value):
        return value[:8]
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _diff_rows(stage: str, old: Mapping, new: Mapping, what: str, path_of) -> list[Row]:
    rows = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if a == b:
            continue
        if a is _ABSENT:
            detail = f"{what} not in the committed lock (now {_short(b)})"
        elif b is _ABSENT:
            detail = f"{what} in the committed lock but no longer declared"
        else:
            detail = f"{what} committed {_short(a)}, now {_short(b)}"
        rows.append(Row(path_of(key), stage, STALE, detail, failed=True))
    return rows


_ABSENT = object()


def stale_rows(
    old: Mapping[str, Mapping],
    new: Mapping[str, Mapping],
    ran: Iterable[str],
    declared: Iterable[str] | None = None,
    changed_outputs: Iterable[str] = (),
) -> list[Row]:
    """Where the committed lock is not what the current dvc.yaml/params/deps give.

    old, new : parsed dvc.lock stages before and after the forced re-run
    ran : the stages the re-run ran (only their new entries are fresh)
    declared : every stage dvc.yaml declares now (None: do not check for leftovers)
    changed_outputs : outputs the re-run changed; as deps of later stages their new
        md5 is a consequence, reported once as the output's own row
    """
    upstream = set(changed_outputs)
    rows: list[Row] = []
    for stage in ran:
        was, now = old.get(stage), new.get(stage)
        if now is None:
            continue  # dvc did not record it (a stage without outputs or deps)
        if was is None:
            rows.append(Row("dvc.lock", stage, STALE, "stage not in the committed dvc.lock", True))
            continue
        if was.get("cmd") != now.get("cmd"):
            rows.append(Row("dvc.yaml", stage, STALE, "cmd differs from the committed lock", True))
        deps_was, deps_now = _by_path(was.get("deps")), _by_path(now.get("deps"))
        for path in upstream & set(deps_was) & set(deps_now):
            del deps_was[path], deps_now[path]
        rows += _diff_rows(stage, deps_was, deps_now, "md5", lambda p: p)
        for file in sorted(set(was.get("params") or {}) | set(now.get("params") or {})):
            rows += _diff_rows(
                stage,
                _flatten((was.get("params") or {}).get(file, {})),
                _flatten((now.get("params") or {}).get(file, {})),
                "value",
                lambda k, f=file: f"{f}:{k}",
            )
        was_outs, now_outs = set(_by_path(was.get("outs"))), set(_by_path(now.get("outs")))
        for path in sorted(was_outs ^ now_outs):
            where = "committed lock only" if path in was_outs else "not in the committed lock"
            rows.append(Row(path, stage, STALE, f"output {where}", True))
    if declared is not None:
        for stage in sorted(set(old) - set(declared)):
            rows.append(Row("dvc.lock", stage, STALE, "stage is no longer in dvc.yaml", True))
    return rows


def rerun_rows(stages: Iterable[str], status: Mapping[str, Any] | None = None) -> list[Row]:
    """Stages a second `dvc repro` ran, and what `dvc status` still reports."""
    rows = [
        Row("-", s, RERAN, "a second dvc repro ran it again (not idempotent)", True) for s in stages
    ]
    for stage, changes in sorted((status or {}).items()):
        detail = json.dumps(changes, sort_keys=True, separators=(",", ":"))
        rows.append(Row("-", stage, NOT_UP_TO_DATE, f"dvc status: {detail}"[:120], True))
    return rows


# --- metrics ------------------------------------------------------------------------


def _num(v: float) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def compare_metrics(old: Any, new: Any, file: str, cfg) -> tuple[str, str]:
    """(status, detail) of a metrics document against the committed one, leaf by leaf.

    cfg : config.VerifySection (its `tolerance_for(file, key)` gives abs/rel)
    """
    a, b = _flatten(old), _flatten(new)
    problems: list[str] = []
    for key in sorted(set(a) ^ set(b)):
        problems.append(f"{key} {'removed' if key in a else 'added'}")
    worst: tuple[float, str] | None = None
    for key in sorted(set(a) & set(b)):
        x, y = a[key], b[key]
        if _is_number(x) and _is_number(y):
            if x == y:
                continue
            tol = cfg.tolerance_for(file, key)
            delta = abs(y - x)
            allowed = tol.abs + tol.rel * abs(x)
            if not math.isfinite(delta) or delta > allowed:
                problems.append(f"{key} {_num(x)} -> {_num(y)} (|d|={delta:.3g} > {allowed:.3g})")
            elif worst is None or delta > worst[0]:
                worst = (delta, key)
        elif x != y:
            problems.append(f"{key} {_short(x, 20)} -> {_short(y, 20)}")
    if problems:
        more = f"; +{len(problems) - 2} more" if len(problems) > 2 else ""
        return DRIFTED, "; ".join(problems[:2]) + more
    if worst is None:
        return WITHIN, "same values, different formatting"
    return WITHIN, f"max |d|={worst[0]:.3g} at {worst[1]}"


def _load_doc(path: str, data: bytes) -> Any:
    if path.endswith(".json"):
        return json.loads(data)
    import yaml

    return yaml.safe_load(data)


# --- outputs ------------------------------------------------------------------------


def compare_outputs(
    outputs: Iterable[Output],
    old_md5: Mapping[str, str | None],
    new_md5: Mapping[str, str | None],
    committed: Mapping[str, bytes | None],
    current: Mapping[str, bytes | None],
    cfg,
    changed_files: Mapping[str, list[str]] | None = None,
) -> list[Row]:
    """One row per output.

    old_md5, new_md5 : path -> md5 from the committed and the new dvc.lock
    committed : path -> bytes before the re-run (git-tracked outputs; DVC-cached
        metrics when the cache still holds them); None when absent
    current : path -> bytes after the re-run, for the same paths
    cfg : config.VerifySection
    changed_files : dir output -> the files in it that differ, where both
        manifests were in the DVC cache
    """
    rows = []
    for out in outputs:
        p, was, now = out.path, old_md5.get(out.path), new_md5.get(out.path)
        md5_detail = f"md5 {_short(was)} -> {_short(now)}" if was else f"md5 now {_short(now)}"
        if not out.cached:
            before = committed.get(p)
            if before is None:
                detail = "git-tracked output not in the committed tree: commit it"
                rows.append(Row(p, out.stage, MISSING, detail, True))
                continue
            same = before == current.get(p)
            if same and was != now:
                detail = (
                    "bit-identical, but not recorded in the committed dvc.lock"
                    if was is None
                    else f"bit-identical, but dvc.lock records {_short(was)}, not {_short(now)}"
                )
                rows.append(Row(p, out.stage, STALE, detail, True))
                continue
        else:
            same = was is not None and was == now
        if same:
            rows.append(Row(p, out.stage, BIT_IDENTICAL))
            continue
        files = (changed_files or {}).get(p)
        if files:
            md5_detail += f" ({', '.join(files[:3])}{' ...' if len(files) > 3 else ''})"
        before = committed.get(p)
        if not out.cached and before is not None and was and _md5(before) != was:
            md5_detail += "; the committed file is not the one dvc.lock records (edited?)"
        if out.is_data:
            rows.append(
                Row(p, out.stage, CHANGED, f"data must be bit-identical; {md5_detail}", True)
            )
        elif out.metric:
            note = md5_detail[md5_detail.index(";") :] if ";" in md5_detail else ""
            rows.append(_metric_row(out, before, current.get(p), cfg, was, now, note))
        else:
            strict = " (verify.strict)" if cfg.strict else ""
            rows.append(Row(p, out.stage, DIFFERS, md5_detail + strict, cfg.strict))
    return rows


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _metric_row(out: Output, before, after, cfg, was, now, note: str = "") -> Row:
    if before is None or after is None:
        detail = f"committed version not in the DVC cache (dvc pull?); md5 {_short(was)} -> {_short(now)}"
        return Row(out.path, out.stage, DRIFTED, detail, True)
    try:
        old_doc, new_doc = _load_doc(out.path, before), _load_doc(out.path, after)
    except Exception as exc:  # JSON or YAML syntax errors in a (hand-edited) metrics file
        detail = f"cannot parse: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        return Row(out.path, out.stage, DRIFTED, detail[:120], True)
    status, detail = compare_metrics(old_doc, new_doc, out.path, cfg)
    detail += note
    if cfg.strict and status == WITHIN:
        return Row(out.path, out.stage, status, detail + " (verify.strict)", True)
    return Row(out.path, out.stage, status, detail, status == DRIFTED)


# --- the report ---------------------------------------------------------------------


@dataclass
class Report:
    outputs: list[Row]  # one per output, in pipeline order
    problems: list[Row]  # stale lock entries and re-runs

    @property
    def rows(self) -> list[Row]:
        return self.outputs + self.problems

    @property
    def ok(self) -> bool:
        return not any(r.failed for r in self.rows)

    @staticmethod
    def counts(rows: list[Row]) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in rows:
            out[r.status] = out.get(r.status, 0) + 1
        return out

    def render(self) -> str:
        lines = [_table(self.outputs)]
        failing = _grouped([r for r in self.rows if r.failed])
        if failing:
            lines += ["", "What differs:", _table(failing)]
            allowed = sum(r.status in (WITHIN, DIFFERS) and not r.failed for r in self.outputs)
            if allowed:
                lines.append(f"(and {allowed} outputs that differ as verify.strict: false allows)")
        summary = f"verify {'OK' if self.ok else 'FAILED'}: {len(self.outputs)} outputs"
        for rows in (self.outputs, self.problems):
            if rows:
                summary += "; " + ", ".join(f"{n} {s}" for s, n in self.counts(rows).items())
        return "\n".join([*lines, "", summary])


def _grouped(rows: list[Row]) -> list[Row]:
    """One row per (path, status, detail): a dep that changed for 17 stages is one line."""
    stages: dict[tuple[str, str, str], list[str]] = {}
    for r in rows:
        stages.setdefault((r.path, r.status, r.detail), []).append(r.stage)
    return [
        Row(path, names[0] + (f" +{len(names) - 1}" if len(names) > 1 else ""), status, detail)
        for (path, status, detail), names in stages.items()
    ]


def _table(rows: list[Row]) -> str:
    head = ("path", "stage", "status", "detail")
    cells = [head] + [(r.path, r.stage, r.status, r.detail) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(3)]
    return "\n".join(
        "  ".join(c[i].ljust(widths[i]) for i in range(3)) + ("  " + c[3] if c[3] else "")
        for c in cells
    ).rstrip()
