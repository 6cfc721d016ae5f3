"""The reproducibility check: a forced re-run of the pipeline against the committed results.

Pure: this module compares; :mod:`linflow.verify.rerun` runs ``dvc repro -f``,
collects the committed and the new dvc.lock and the bytes of the git-tracked
outputs, and hands them here. Every output the re-run produced gets one status:

- ``bit-identical``: the same bytes (the same md5 in dvc.lock for DVC-cached
  outputs; the same content as the committed file for git-tracked ones);
- ``within tolerance``: a metrics file whose numbers moved, each within the
  tolerance of its kind (:mod:`linflow.verify.tolerance`, params.yaml
  ``verify.tolerance``), everything else equal;
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
A stage that a second, unforced ``dvc repro`` runs again is ``re-ran``, and a
``compare.json`` the re-run wrote with a gap over its tolerance is ``over
tolerance``: the compare stage itself never fails a learner's experiment, the
gate is here. Each of these fails the check.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from linflow.core.errors import VerifyError
from linflow.verify.tolerance import allowed

__all__ = [
    "DATA_STAGES",
    "NumberCheck",
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
    "gate_rows",
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
OVER_TOLERANCE = "over tolerance"


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
class NumberCheck:
    """One number of a metrics file: how far it moved against how far it may."""

    key: str
    committed: float
    now: float
    allowed: float
    rule: str

    @property
    def delta(self) -> float:
        return abs(self.now - self.committed)

    @property
    def ok(self) -> bool:
        # The slack absorbs the rounding of the subtraction itself: 3 of 269 rows
        # flipping is exactly on the bound, and must pass.
        return math.isfinite(self.delta) and self.delta <= self.allowed * (1 + 1e-9) + 1e-15


@dataclass(frozen=True)
class Row:
    path: str
    stage: str
    status: str
    detail: str = ""
    failed: bool = False
    numbers: tuple[NumberCheck, ...] = ()  # metrics files: every number compared


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
    changed_outputs : outputs the re-run changed; as deps of later stages (or inside a
        folder that is one) their new md5 is a consequence, reported once as the
        output's own row
    """
    changed = set(changed_outputs)
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
        for path in set(deps_was) & set(deps_now):
            if _holds_changed(path, changed):
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


def _holds_changed(dep: str, changed: set[str]) -> bool:
    """The dep is a changed output, or a folder holding one (report's reports/summary)."""
    prefix = dep.rstrip("/") + "/"
    return dep in changed or any(c.startswith(prefix) for c in changed)


def gate_rows(outputs: Iterable[Output], current: Mapping[str, bytes | None]) -> list[Row]:
    """A compare.json the re-run wrote with a gap over its tolerance (``passed: false``).

    The compare stage completes either way (exploring is never failed); this is where
    the committed pipeline is held to params.yaml ``compare:``.
    """
    rows = []
    for out in outputs:
        data = current.get(out.path)
        if not out.path.endswith("compare.json") or data is None:
            continue
        doc = _parse(out.path, data)
        if not isinstance(doc, Mapping) or doc.get("passed") is not False:
            continue
        failed = [
            f"{name} {_num(c.get('value'))} {'<' if c.get('bound') == 'min' else '>'} "
            f"{_num(c.get('tolerance'))}"
            for name, c in (doc.get("checks") or {}).items()
            if isinstance(c, Mapping) and c.get("passed") is False
        ]
        detail = "gap over params.yaml compare: " + "; ".join(failed)
        rows.append(Row(out.path, out.stage, OVER_TOLERANCE, detail, True))
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


def compare_metrics(
    old: Any, new: Any, file: str, cfg, context: Mapping[str, Any] | None = None
) -> tuple[str, str, tuple[NumberCheck, ...]]:
    """(status, detail, numbers) of a metrics document against the committed one, leaf by leaf.

    cfg : config.VerifySection (its `tolerance` gives each kind's allowed move)
    context : the dataset's scale for the tolerance rules (n_test, r2)
    """
    a, b = _flatten(old), _flatten(new)
    problems: list[str] = []
    for key in sorted(set(a) ^ set(b)):
        problems.append(f"{key} {'removed' if key in a else 'added'}")
    numbers: list[NumberCheck] = []
    for key in sorted(set(a) & set(b)):
        x, y = a[key], b[key]
        if _is_number(x) and _is_number(y):
            tol = allowed(key, x, cfg.tolerance, context)
            check = NumberCheck(key, x, y, tol.value, tol.rule)
            numbers.append(check)
            if x != y and not check.ok:
                problems.append(
                    f"{key} {_num(x)} -> {_num(y)} (|d|={check.delta:.3g} > {tol.value:.3g}: "
                    f"{tol.rule})"
                )
        elif x != y:
            problems.append(f"{key} {_short(x, 20)} -> {_short(y, 20)}")
    if problems:
        more = f"; +{len(problems) - 2} more" if len(problems) > 2 else ""
        return DRIFTED, "; ".join(problems[:2]) + more, tuple(numbers)
    moved = [c for c in numbers if c.committed != c.now]
    if not moved:
        return WITHIN, "same values, different formatting", tuple(numbers)
    worst = max(moved, key=lambda c: c.delta / c.allowed if c.allowed else math.inf)
    share = worst.delta / worst.allowed if worst.allowed else math.inf
    return (
        WITHIN,
        f"largest move {share:.0%} of its tolerance at {worst.key} (|d|={worst.delta:.3g})",
        tuple(numbers),
    )


def _load_doc(path: str, data: bytes) -> Any:
    if path.endswith(".json"):
        return json.loads(data)
    from linflow.core.storage import load_yaml

    return load_yaml(data)


# --- outputs ------------------------------------------------------------------------


def compare_outputs(
    outputs: Iterable[Output],
    old_md5: Mapping[str, str | None],
    new_md5: Mapping[str, str | None],
    committed: Mapping[str, bytes | None],
    current: Mapping[str, bytes | None],
    cfg,
    changed_files: Mapping[str, list[str]] | None = None,
    contexts: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Row]:
    """One row per output.

    old_md5, new_md5 : path -> md5 from the committed and the new dvc.lock
    committed : path -> bytes before the re-run (git-tracked outputs; DVC-cached
        metrics when the cache still holds them); None when absent
    current : path -> bytes after the re-run, for the same paths
    cfg : config.VerifySection
    changed_files : dir output -> the files in it that differ, where both
        manifests were in the DVC cache
    contexts : metrics path -> its dataset's scale (n_test, r2) for the tolerances
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
            numbers: tuple[NumberCheck, ...] = ()
            if out.metric and committed.get(p) is not None:  # each number moved 0
                doc = _parse(p, committed[p])
                if doc is not None:
                    numbers = compare_metrics(doc, doc, p, cfg, (contexts or {}).get(p))[2]
            rows.append(Row(p, out.stage, BIT_IDENTICAL, numbers=numbers))
            continue
        files = (changed_files or {}).get(p)
        if files:
            md5_detail += f" ({', '.join(files[:3])}{' ...' if len(files) > 3 else ''})"
        before = committed.get(p)
        # The committed file is not what the committed lock says the pipeline wrote: a
        # hand edit (or a lock from another run). Wrong on any platform, so it fails
        # even when the numbers are within tolerance.
        edited = (
            not out.cached
            and before is not None
            and bool(was)
            and not str(was).endswith(".dir")
            and _md5(before) != was
        )
        note = "; the committed file is not the one dvc.lock records (edited?)" if edited else ""
        if out.is_data:
            row = Row(
                p, out.stage, CHANGED, f"data must be bit-identical; {md5_detail}{note}", True
            )
        elif out.metric:
            context = (contexts or {}).get(p)
            row = _metric_row(out, before, current.get(p), cfg, was, now, note, context)
        else:
            strict = " (verify.strict)" if cfg.strict else ""
            row = Row(p, out.stage, DIFFERS, md5_detail + note + strict, cfg.strict)
        rows.append(replace(row, failed=True) if edited else row)
    return rows


def _parse(path: str, data: bytes) -> Any:
    try:
        return _load_doc(path, data)
    except Exception:  # a broken file is reported where it differs, not here
        return None


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _metric_row(out: Output, before, after, cfg, was, now, note: str = "", context=None) -> Row:
    if before is None or after is None:
        detail = f"committed version not in the DVC cache (dvc pull?); md5 {_short(was)} -> {_short(now)}"
        return Row(out.path, out.stage, DRIFTED, detail, True)
    try:
        old_doc, new_doc = _load_doc(out.path, before), _load_doc(out.path, after)
    except Exception as exc:  # JSON or YAML syntax errors in a (hand-edited) metrics file
        detail = f"cannot parse: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        return Row(out.path, out.stage, DRIFTED, detail[:120], True)
    status, detail, numbers = compare_metrics(old_doc, new_doc, out.path, cfg, context)
    detail += note
    if cfg.strict and status == WITHIN:
        return Row(out.path, out.stage, status, detail + " (verify.strict)", True, numbers)
    return Row(out.path, out.stage, status, detail, status == DRIFTED, numbers)


# --- the report ---------------------------------------------------------------------


@dataclass
class Report:
    outputs: list[Row]  # one per output, in pipeline order
    problems: list[Row]  # stale lock entries and re-runs
    # The numeric platforms (verify/platform.py) the committed results and this re-run
    # were made on; None when unknown (an older commit without reports/platform.json).
    committed_platform: Mapping[str, Any] | None = None
    platform: Mapping[str, Any] | None = None

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
        lines += self._platform_lines()
        summary = f"verify {'OK' if self.ok else 'FAILED'}: {len(self.outputs)} outputs"
        for rows in (self.outputs, self.problems):
            if rows:
                summary += "; " + ", ".join(f"{n} {s}" for s, n in self.counts(rows).items())
        return "\n".join([*lines, "", summary])

    def to_json(self) -> dict[str, Any]:
        """The report as data (`linflow verify --json`, read by make portability)."""

        def row(r: Row) -> dict[str, Any]:
            return {
                "path": r.path,
                "stage": r.stage,
                "status": r.status,
                "detail": r.detail,
                "failed": r.failed,
                "numbers": [
                    {"key": n.key, "committed": n.committed, "now": n.now,
                     "allowed": n.allowed, "rule": n.rule}
                    for n in r.numbers
                ],
            }  # fmt: skip

        return {
            "ok": self.ok,
            "counts": self.counts(self.rows),
            "outputs": [row(r) for r in self.outputs],
            "problems": [row(r) for r in self.problems],
            "committed_platform": self.committed_platform,
            "platform": self.platform,
        }

    def _platform_lines(self) -> list[str]:
        """Why outputs differ: the committed numeric platform beside this one."""
        from linflow.verify.platform import describe, differences

        if self.platform is None:
            return []
        here = describe(self.platform)
        if self.committed_platform is None:
            return [
                "",
                f"Numeric platform: committed unknown (no reports/platform.json); here {here}",
            ]
        diff = differences(self.committed_platform, self.platform)
        n_differ = sum(r.status in (DIFFERS, WITHIN) for r in self.outputs)
        if not diff:
            why = (
                "; the same platform, so outputs that differ point at nondeterminism"
                if n_differ
                else ""
            )
            return ["", f"Numeric platform: the committed one ({here}){why}"]
        out = [
            "",
            f"Numeric platform: committed {describe(self.committed_platform)}",
            f"                  here      {here}",
        ]
        if n_differ:
            out.append(
                f"{n_differ} outputs differ as expected across platforms ("
                + ", ".join(diff)
                + "): other kernels round differently and SGD amplifies it; "
                "the metrics are judged by verify.tolerance"
            )
        return out


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
