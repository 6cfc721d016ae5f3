"""Every command of docs/lessons.md runs, as a learner would run it, in a copy of
the reproduced repo: `dvc exp run -S ...` completes (or fails exactly as the page
says it does, where the lesson is a failure), and prints what the page says it does.

Marked `ci`: ~5 minutes of experiments, run by `make test-ci` and CI, not by
`make test` (which must stay under 10 minutes here)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from .helpers import ROOT, clone_reproduced, pipeline_env, run

pytestmark = [pytest.mark.slow, pytest.mark.ci]

PAGE = ROOT / "docs" / "lessons.md"


def lesson_commands() -> list[tuple[str, str, str | None, list[str]]]:
    """(lesson title, command, expected failure text or None, texts it must print) for
    every command line (`dvc ...`) in the page's ```bash blocks. After a command,
    `# fails with: TEXT` says it must fail naming TEXT, `# says: TEXT` that its
    output holds TEXT."""
    out: list[tuple[str, str, str | None, list[str]]] = []
    title = ""
    in_block = False
    for line in PAGE.read_text().splitlines():
        if line.startswith("## "):
            title = line[3:].strip()
        elif line.strip() == "```bash" and title.startswith("How to"):
            continue  # a walk-through of several commands: tests/e2e/test_tables.py runs it
        elif line.strip() == "```bash":
            in_block = True
        elif line.strip() == "```":
            in_block = False
        elif in_block and line.startswith("dvc "):
            out.append((title, line.strip(), None, []))
        elif in_block and (m := re.match(r"# (fails with|says): (.+)", line.strip())):
            t, cmd, fails, says = out[-1]
            text = m.group(2).strip().strip('"')
            if m.group(1) == "fails with":
                fails = text
            else:
                says = [*says, text]
            out[-1] = (t, cmd, fails, says)
    return out


def test_the_page_has_a_command_for_every_lesson():
    commands = lesson_commands()
    titles = [line[3:] for line in PAGE.read_text().splitlines() if line.startswith("## ")]
    lessons = [t for t in titles if not t.startswith(("How", "Not yet"))]
    assert len(commands) >= 8 and {c[0] for c in commands} == set(lessons)


@pytest.mark.parametrize(
    ("title", "command", "fails_with", "says"), lesson_commands(), ids=lambda v: str(v)[:40]
)
def test_a_lesson_command_runs_as_the_page_says(
    reproduced, tmp_path, title, command, fails_with, says
):
    repo: Path = clone_reproduced(reproduced[0], tmp_path / "repo")
    # The copy's own mlflow.db, as a learner has: one environment for every lesson, so
    # one warm worker serves them all (a per-test store would start one per test, ~5 s).
    env = pipeline_env()
    res = run(shlex.split(command), repo, env, check=False)
    out = res.stdout + res.stderr
    if fails_with is None:
        assert res.returncode == 0, f"{title}: {command}\n{out[-3000:]}"
    else:
        assert res.returncode != 0 and fails_with in out, f"{title}: {command}\n{out[-3000:]}"
    for text in says:
        assert text in out, f"{title}: {command} does not say {text!r}\n{out[-3000:]}"
