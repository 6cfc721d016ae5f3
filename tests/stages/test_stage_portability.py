"""portability, in-process: variant names are checked first; the exit code follows the runs
(each variant's real re-run needs dvc and is tested in tests/e2e)."""

from __future__ import annotations

import pytest

from linflow.core.errors import ConfigError
from linflow.verify.portability import VARIANTS


def test_an_unknown_variant_names_the_known_ones_and_runs_nothing(
    monkeypatch, make_params, run_stage
):
    import linflow.verify.portability

    monkeypatch.setattr(linflow.verify.portability, "run_portability", pytest.fail)
    known = ", ".join(VARIANTS)
    with pytest.raises(ConfigError, match=rf"^unknown variant 'avx9'; known: {known}$"):
        run_stage("portability", make_params(), "mkl-compatible", "avx9")


@pytest.mark.parametrize(
    ("argv", "ok"), [((), True), (("mkl-compatible",), False)], ids=["all-pass", "one-fails"]
)
def test_the_chosen_variants_run_and_the_exit_code_follows(
    monkeypatch, capsys, make_params, run_stage, argv, ok
):
    import linflow.verify.portability

    calls = []

    def fake(root, names, log):
        calls.append(names)
        return "the spreads", ok

    monkeypatch.setattr(linflow.verify.portability, "run_portability", fake)
    assert run_stage("portability", make_params(), *argv) == (0 if ok else 1)
    assert calls == [list(argv) or list(VARIANTS)]  # none named: every variant
    assert capsys.readouterr().out == "the spreads\n"
