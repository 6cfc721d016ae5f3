"""verify, in-process: what the command does around the re-run (the re-run itself needs
dvc and is tested in tests/e2e): its exit code, the printed table, the --json copy."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from linflow.core.errors import VerifyError


def test_outside_a_repository_it_says_where_to_run_it(
    tmp_path, monkeypatch, make_params, run_stage
):
    monkeypatch.chdir(tmp_path)
    report = tmp_path / "verify.json"
    with pytest.raises(VerifyError, match=r"^.*: no dvc.yaml here \(run from the repo root\)$"):
        run_stage("verify", make_params(), "--json", report)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("ok", [True, False], ids=["same", "differs"])
def test_exit_code_table_and_json_follow_the_report(
    tmp_path, monkeypatch, capsys, make_params, run_stage, ok
):
    import linflow.verify.rerun

    calls = []

    def fake_run_verify(root, cfg, targets, threads):
        calls.append((root, cfg, targets, threads))
        return SimpleNamespace(ok=ok, render=lambda: "the table", to_json=lambda: {"ok": ok})

    monkeypatch.setattr(linflow.verify.rerun, "run_verify", fake_run_verify)
    monkeypatch.chdir(tmp_path)
    params = make_params({"train.threads": 2, "reference.threads": 1})
    code = run_stage("verify", params, "train@line", "compare@line", "--json", "out/v.json")
    assert code == (0 if ok else 1)
    assert capsys.readouterr().out == "the table\n"
    assert json.loads((tmp_path / "out" / "v.json").read_text()) == {"ok": ok}
    ((root, cfg, targets, threads),) = calls
    assert root == Path.cwd() and cfg == params.verify
    assert targets == ["train@line", "compare@line"]
    assert threads == {"train": 2, "reference": 1}  # the pinned counts, part of the platform
