"""The comparison behind `linflow verify`, on hand-made locks and files (no DVC run)."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest

from linflow.core.config import ConfigError, VerifySection, parse_params
from linflow.verify.check import (
    Output,
    Report,
    Row,
    VerifyError,
    compare_metrics,
    compare_outputs,
    out_hashes,
    parse_lock,
    rerun_rows,
    stale_rows,
)

MD5 = {c: c * 32 for c in "abcdef0123"}


def _lock(seed: int = 0, cli: str = MD5["a"], raw: str = MD5["b"]) -> dict:
    return parse_lock(
        {
            "schema": "2.0",
            "stages": {
                "prepare@line": {
                    "cmd": "linflow prepare line --out data/raw/line.npz",
                    "deps": [{"path": "src/linflow/cli.py", "hash": "md5", "md5": cli}],
                    "params": {"params.yaml": {"seed": seed, "datasets.line": {"n": 100}}},
                    "outs": [{"path": "data/raw/line.npz", "hash": "md5", "md5": raw}],
                },
                "evaluate@line": {
                    "cmd": "linflow evaluate line",
                    "deps": [{"path": "data/raw/line.npz", "md5": raw}],
                    "outs": [
                        {"path": "reports/line/metrics.json", "md5": MD5["c"]},
                        {"path": "reports/line/predictions.png", "md5": MD5["d"]},
                    ],
                },
            },
        }
    )


STAGES = ["prepare@line", "evaluate@line"]


@pytest.fixture
def cfg(base_params) -> VerifySection:
    return parse_params(base_params).verify


def _metrics(rmse=0.05, r2=0.999, n_test=15, **extra) -> dict:
    return {"dataset": "line", "n_test": n_test, "test": {"rmse": rmse, "r2": r2, **extra}}


# --- stale lock ---------------------------------------------------------------------


def test_identical_locks_are_current():
    assert stale_rows(_lock(), _lock(), STAGES, STAGES) == []


def test_changed_param_is_a_stale_entry_naming_the_key():
    (row,) = stale_rows(_lock(seed=0), _lock(seed=1), STAGES, STAGES)
    assert (row.path, row.stage, row.status, row.failed) == (
        "params.yaml:seed",
        "prepare@line",
        "stale lock",
        True,
    )
    assert row.detail == "value committed 0, now 1"


def test_changed_dependency_hash_is_stale():
    (row,) = stale_rows(_lock(cli=MD5["a"]), _lock(cli=MD5["e"]), STAGES, STAGES)
    assert row.path == "src/linflow/cli.py" and row.detail == "md5 committed aaaaaaaa, now eeeeeeee"


def test_changed_cmd_new_stage_removed_stage_and_new_output_are_stale():
    old, new = _lock(), _lock()
    new["prepare@line"]["cmd"] += " --verbose"
    new["train@line"] = {"cmd": "linflow train line", "outs": [{"path": "models/line"}]}
    new["evaluate@line"]["outs"].append({"path": "reports/line/extra.csv", "md5": MD5["f"]})
    old["gone@line"] = {"cmd": "x"}
    rows = stale_rows(old, new, [*STAGES, "train@line"], [*STAGES, "train@line"])
    got = {(r.path, r.stage, r.detail) for r in rows}
    assert got == {
        ("dvc.yaml", "prepare@line", "cmd differs from the committed lock"),
        ("reports/line/extra.csv", "evaluate@line", "output not in the committed lock"),
        ("dvc.lock", "train@line", "stage not in the committed dvc.lock"),
        ("dvc.lock", "gone@line", "stage is no longer in dvc.yaml"),
    }
    assert all(r.failed and r.status == "stale lock" for r in rows)


def test_a_changed_upstream_output_is_not_also_a_stale_dependency():
    old, new = _lock(raw=MD5["b"]), _lock(raw=MD5["e"])  # prepare@line's output changed
    rows = stale_rows(old, new, STAGES, STAGES)
    assert [(r.path, r.stage) for r in rows] == [("data/raw/line.npz", "evaluate@line")]
    # ... reported once, as the output's own row, when the caller says it changed
    assert stale_rows(old, new, STAGES, STAGES, changed_outputs=["data/raw/line.npz"]) == []


def test_a_folder_dependency_holding_a_changed_output_is_not_stale():
    # report depends on the folder reports/summary; compare@<ds> writes a file in it.
    # Off-platform the file "differs" (allowed); the folder's new md5 is its consequence.
    old, new = _lock(), _lock()
    for lock, md5 in ((old, MD5["a"]), (new, MD5["e"])):
        lock["report"] = {
            "cmd": "linflow report",
            "deps": [{"path": "reports/summary", "md5": md5 + ".dir"}],
            "outs": [{"path": "reports/summary.md", "md5": MD5["f"]}],
        }
    ran = [*STAGES, "report"]
    (row,) = stale_rows(old, new, ran, ran)
    assert (row.path, row.stage, row.status) == ("reports/summary", "report", "stale lock")
    assert stale_rows(old, new, ran, ran, changed_outputs=["reports/summary/line.json"]) == []
    # ... and only a file inside it: a sibling sharing the prefix is not
    assert len(stale_rows(old, new, ran, ran, changed_outputs=["reports/summary2.json"])) == 1


def test_only_stages_that_ran_are_checked():
    # A targeted verify re-runs some stages; the others keep their committed entry.
    assert stale_rows(_lock(seed=0), _lock(seed=1), ["evaluate@line"], STAGES) == []


@pytest.mark.parametrize(
    "doc", [None, [], {"stages": [1]}, {"schema": "2.0"}, {"stages": {"a": 1}}, "garbage"]
)
def test_a_lock_without_stages_is_refused(doc):
    with pytest.raises(VerifyError, match=r"^dvc\.lock: not a dvc\.lock"):
        parse_lock(doc)


# --- metrics ------------------------------------------------------------------------


def test_equal_metrics_need_no_tolerance(cfg):
    assert compare_metrics(_metrics(), _metrics(), "m.json", cfg)[0] == "within tolerance"


def test_metric_within_tolerance_reports_the_largest_move(cfg):
    status, detail, numbers = compare_metrics(
        _metrics(rmse=0.05), _metrics(rmse=0.05 + 1e-6), "reports/line/metrics.json", cfg
    )
    assert status == "within tolerance" and "at test.rmse" in detail
    assert "largest move 2% of its tolerance" in detail  # 1e-6 of 1e-3 * 0.05
    assert {n.key for n in numbers} == {"n_test", "test.rmse", "test.r2"}


def test_metric_beyond_tolerance_drifts_naming_key_values_and_rule(cfg):
    status, detail, _ = compare_metrics(_metrics(rmse=0.5), _metrics(rmse=0.05), "m.json", cfg)
    assert status == "drifted"
    assert detail.startswith("test.rmse 0.5 -> 0.05 (|d|=0.45 > 0.0005: 0.001 relative)")


def test_numbers_of_no_known_kind_and_text_must_match_exactly(cfg):
    assert compare_metrics(_metrics(n_test=15), _metrics(n_test=16), "m", cfg)[0] == "drifted"
    a, b = _metrics(), _metrics()
    b["dataset"] = "other"
    status, detail, _ = compare_metrics(a, b, "m", cfg)
    assert status == "drifted" and detail == "dataset 'line' -> 'other'"


def test_added_removed_and_null_metrics_drift(cfg):
    status, detail, _ = compare_metrics(_metrics(), _metrics(mae=0.1), "m", cfg)
    assert (status, detail) == ("drifted", "test.mae added")
    assert compare_metrics(_metrics(mae=0.1), _metrics(), "m", cfg)[1] == "test.mae removed"
    assert compare_metrics(_metrics(rmse=None), _metrics(), "m", cfg)[0] == "drifted"
    assert compare_metrics(_metrics(rmse=0.1), _metrics(rmse=float("nan")), "m", cfg)[0] == (
        "drifted"
    )


# --- the tolerance model ------------------------------------------------------------


def _moves(cfg, key, old, new, **context):
    doc = lambda v: {key.split(".")[0]: {key.split(".")[1]: v}} if "." in key else {key: v}  # noqa: E731
    return compare_metrics(doc(old), doc(new), "m", cfg, context)[0]


def test_accuracy_may_move_by_the_share_of_rows_or_a_few_rows(cfg):
    # 10000 test rows: 0.2% = 20 rows may flip; 21 may not
    assert _moves(cfg, "test.accuracy", 0.8440, 0.8420, n_test=10000) == "within tolerance"
    assert _moves(cfg, "test.accuracy", 0.8440, 0.8419, n_test=10000) == "drifted"
    # 269 test rows: at least 3 rows (0.0112); 4 rows fail
    assert _moves(cfg, "test.accuracy", 0.9665, 0.9665 - 3 / 269, n_test=269) == "within tolerance"
    assert _moves(cfg, "test.accuracy", 0.9665, 0.9665 - 4 / 269, n_test=269) == "drifted"


def test_agreement_and_accuracy_deltas_allow_both_models_to_flip(cfg):
    assert _moves(cfg, "agreement", 0.99, 0.99 - 6 / 269, n_test=269) == "within tolerance"
    assert _moves(cfg, "agreement", 0.99, 0.99 - 7 / 269, n_test=269) == "drifted"
    assert _moves(cfg, "test_accuracy_delta", 0.004, 0.004 + 40 / 10000, n_test=10000) == (
        "within tolerance"
    )


def test_a_delta_of_two_large_losses_is_judged_on_their_scale_not_its_own(cfg):
    # diabetes: |r2 - r2*| ~ 1e-8 on r2 ~ 0.48; another CPU moved it by 7e-8
    assert _moves(cfg, "test_r2_delta", 1.7e-8, 8.4e-9, r2=0.477) == "within tolerance"
    # ... but a real change of the model's r2 (0.0005 of ~0.52 scale x 2) drifts
    assert _moves(cfg, "test_r2_delta", 1.7e-8, 2e-3, r2=0.477) == "drifted"


def test_losses_move_relatively_and_r2_through_its_mse(cfg):
    assert _moves(cfg, "test.mse", 2635.0, 2637.0) == "within tolerance"  # 0.08%
    assert _moves(cfg, "test.mse", 2635.0, 2638.0) == "drifted"  # 0.11%
    assert _moves(cfg, "test.r2", 0.5, 0.5004) == "within tolerance"  # 1e-3 * 0.5
    assert _moves(cfg, "test.r2", 0.5, 0.5006) == "drifted"
    assert _moves(cfg, "test.r2", 0.9992, 0.9992 + 1e-6) == "drifted"  # 1e-3 * 8e-4


def test_distances_to_the_reference_move_in_units_of_its_weights(cfg):
    assert _moves(cfg, "weight_rel_l2", 2e-7, 9e-5) == "within tolerance"
    assert _moves(cfg, "weight_rel_l2", 2e-7, 2e-4) == "drifted"
    assert _moves(cfg, "train_objective_rel_gap", 0.00853, 0.00851) == "within tolerance"
    assert _moves(cfg, "train_objective_rel_gap", 0.00853, 0.0109) == "drifted"


def test_the_tolerance_knobs_come_from_params(base_params):
    p = copy.deepcopy(base_params)
    p["verify"] = {"tolerance": {"rows": 0.01, "min_rows": 0, "loss": 0.1, "weights": 1.0}}
    cfg = parse_params(p).verify
    assert _moves(cfg, "test.accuracy", 0.80, 0.79, n_test=1000) == "within tolerance"
    assert _moves(cfg, "test.mse", 1.0, 1.09) == "within tolerance"
    assert _moves(cfg, "weight_rel_l2", 0.0, 0.9) == "within tolerance"


BAD_VERIFY = [
    ({"tolerance": {"loss": -1.0}}, "verify.tolerance.loss must be a finite float >= 0, got -1.0"),
    ({"tolerance": {"weights": float("nan")}}, "weights must be a finite float >= 0, got nan"),
    (
        {"tolerance": {"rows": 1.0}},
        r"verify\.tolerance\.rows must be a float in \[0, 1\), got 1\.0",
    ),
    ({"tolerance": {"min_rows": 2.5}}, r"verify\.tolerance\.min_rows must be an integer >= 0"),
    ({"tolerance": {"loss": "1e-6"}}, r"got '1e-6' \(text, not a number: write 1\.0e-06\)"),
    ({"tolerance": {"default": {"abs": 1.0}}}, "verify.tolerance.default is not a known key"),
    ({"strict": "yes"}, "verify.strict must be a valid boolean, got 'yes'"),
    ({"tolerances": {}}, "verify.tolerances is not a known key"),
]


@pytest.mark.parametrize(("section", "match"), BAD_VERIFY, ids=[m for _, m in BAD_VERIFY])
def test_bad_verify_params_give_one_line_naming_the_key(base_params, section, match):
    p = copy.deepcopy(base_params)
    p["verify"] = section
    with pytest.raises(ConfigError, match=match) as info:
        parse_params(p)
    assert "\n" not in str(info.value)


# --- outputs ------------------------------------------------------------------------

RAW = Output("data/raw/line.npz", "prepare@line", cached=True, metric=False)
METRICS = Output("reports/line/metrics.json", "evaluate@line", cached=False, metric=True)
PNG = Output("reports/line/predictions.png", "evaluate@line", cached=False, metric=False)
MODEL = Output("models/line", "train@line", cached=True, metric=False)


def _rows(cfg, old_md5, new_md5, committed=None, current=None, outputs=(RAW, METRICS, PNG)):
    return {
        r.path: r
        for r in compare_outputs(outputs, old_md5, new_md5, committed or {}, current or {}, cfg)
    }


def _bytes(doc) -> bytes:
    return json.dumps(doc).encode()


def test_everything_identical_is_bit_identical(cfg):
    files = {METRICS.path: _bytes(_metrics()), PNG.path: b"png"}
    rows = _rows(cfg, out_hashes(_lock()), out_hashes(_lock()), files, dict(files))
    assert {r.status for r in rows.values()} == {"bit-identical"}
    assert not any(r.failed for r in rows.values())


def test_a_changed_data_output_fails_even_when_not_strict(cfg):
    rows = _rows(cfg, {RAW.path: MD5["b"]}, {RAW.path: MD5["e"]}, outputs=[RAW])
    row = rows[RAW.path]
    assert row.status == "changed" and row.failed
    assert "data must be bit-identical; md5 bbbbbbbb -> eeeeeeee" in row.detail


def test_hand_edited_committed_metric_drifts_although_the_lock_matches(cfg):
    # The committed lock still records the original md5; the committed file was edited.
    old = {METRICS.path: MD5["c"]}
    committed = {METRICS.path: _bytes(_metrics(rmse=0.5))}
    current = {METRICS.path: _bytes(_metrics(rmse=0.05))}
    row = _rows(cfg, old, dict(old), committed, current, outputs=[METRICS])[METRICS.path]
    assert row.status == "drifted" and row.failed and row.detail.startswith("test.rmse 0.5 -> 0.05")
    assert row.detail.endswith("; the committed file is not the one dvc.lock records (edited?)")


def test_hand_edited_metric_fails_even_within_tolerance(cfg):
    produced = _bytes(_metrics(rmse=0.05))
    md5 = hashlib.md5(produced).hexdigest()  # what the committed lock records
    committed = {METRICS.path: _bytes(_metrics(rmse=0.05 + 1e-9))}  # nudged by hand
    rows = _rows(cfg, {METRICS.path: md5}, {METRICS.path: md5}, committed,
                 {METRICS.path: produced}, outputs=[METRICS])  # fmt: skip
    row = rows[METRICS.path]
    assert row.status == "within tolerance" and row.failed and "(edited?)" in row.detail
    # a file that matches its lock entry and moved within tolerance passes
    other = hashlib.md5(committed[METRICS.path]).hexdigest()
    rows = _rows(cfg, {METRICS.path: other}, {METRICS.path: md5}, committed,
                 {METRICS.path: produced}, outputs=[METRICS])  # fmt: skip
    assert not rows[METRICS.path].failed


def test_metrics_within_tolerance_pass_unless_strict(cfg):
    committed = {METRICS.path: _bytes(_metrics(rmse=0.05))}
    current = {METRICS.path: _bytes(_metrics(rmse=0.05 + 1e-8))}
    md5 = (
        {METRICS.path: hashlib.md5(committed[METRICS.path]).hexdigest()},
        {METRICS.path: MD5["d"]},
    )
    row = _rows(cfg, *md5, committed, current, outputs=[METRICS])[METRICS.path]
    assert row.status == "within tolerance" and not row.failed
    strict = cfg.model_copy(update={"strict": True})
    assert _rows(strict, *md5, committed, current, outputs=[METRICS])[METRICS.path].failed


def test_other_outputs_may_differ_unless_strict(cfg):
    md5 = ({MODEL.path: MD5["a"]}, {MODEL.path: MD5["e"]})
    row = _rows(cfg, *md5, outputs=[MODEL])[MODEL.path]
    assert row.status == "differs" and not row.failed
    strict = cfg.model_copy(update={"strict": True})
    assert _rows(strict, *md5, outputs=[MODEL])[MODEL.path].failed


def test_git_tracked_output_missing_from_the_commit_fails(cfg):
    row = _rows(cfg, {}, {PNG.path: MD5["d"]}, {PNG.path: None}, {PNG.path: b"png"}, [PNG])
    assert row[PNG.path].status == "missing" and row[PNG.path].failed


def test_identical_file_with_outdated_lock_hash_is_stale(cfg):
    files = {PNG.path: b"png"}
    rows = _rows(cfg, {PNG.path: MD5["a"]}, {PNG.path: MD5["d"]}, files, dict(files), [PNG])
    assert rows[PNG.path].status == "stale lock" and rows[PNG.path].failed


def test_unparseable_committed_metrics_drift(cfg):
    committed, current = {METRICS.path: b"{not json"}, {METRICS.path: _bytes(_metrics())}
    md5 = ({METRICS.path: MD5["c"]}, {METRICS.path: MD5["d"]})
    row = _rows(cfg, *md5, committed, current, outputs=[METRICS])[METRICS.path]
    assert row.status == "drifted" and row.detail.startswith("cannot parse")


def test_second_run_and_dirty_status_fail():
    rows = rerun_rows(["train@line"], {"evaluate@line": [{"changed outs": {"x": "modified"}}]})
    assert [(r.stage, r.status, r.failed) for r in rows] == [
        ("train@line", "re-ran", True),
        ("evaluate@line", "not up to date", True),
    ]


def test_report_table_prints_bit_identical_per_output_and_groups_what_differs(cfg):
    outputs = _rows(cfg, out_hashes(_lock()), out_hashes(_lock()), outputs=[RAW]).values()
    problems = stale_rows(_lock(seed=0), _lock(seed=1), STAGES, STAGES) * 3
    report = Report(outputs=list(outputs), problems=problems)
    text = report.render()
    lines = text.splitlines()
    assert lines[0].split() == ["path", "stage", "status", "detail"]
    assert lines[1].split() == ["data/raw/line.npz", "prepare@line", "bit-identical"]
    differs = lines[lines.index("What differs:") + 2 :]
    assert differs[0].split()[:3] == ["params.yaml:seed", "prepare@line", "+2"]
    assert lines[-1] == "verify FAILED: 1 outputs; 1 bit-identical; 3 stale lock"
    assert not report.ok
    differing = Row("models/line", "train@line", "differs", "md5 aaaaaaaa -> bbbbbbbb")
    text = Report(outputs=[*outputs, differing], problems=problems).render()
    assert "(and 1 outputs that differ as verify.strict: false allows)" in text
    ok = Report(outputs=list(outputs), problems=[])
    assert ok.ok and ok.render().splitlines()[-1] == "verify OK: 1 outputs; 1 bit-identical"


def test_a_dvc_cached_metric_needs_its_committed_version(cfg):
    cached = Output("reports/line/scores.json", "evaluate@line", cached=True, metric=True)
    md5 = ({cached.path: MD5["a"]}, {cached.path: MD5["b"]})
    current = {cached.path: _bytes(_metrics())}
    row = _rows(cfg, *md5, {cached.path: None}, current, outputs=[cached])[cached.path]
    assert row.status == "drifted" and row.failed and "dvc pull" in row.detail
    both = {cached.path: _bytes(_metrics(rmse=0.05 + 1e-9))}
    assert _rows(cfg, *md5, both, current, outputs=[cached])[cached.path].status == (
        "within tolerance"
    )


def test_a_committed_gap_over_tolerance_fails_verify_naming_it():
    from linflow.verify.check import gate_rows

    out = Output("reports/line/compare.json", "compare@line", cached=False, metric=False)
    over = {
        "passed": False,
        "checks": {
            "weight_rel_l2": {"value": 0.133, "tolerance": 0.001, "bound": "max", "passed": False},
            "test_r2_delta": {"value": 0.001, "tolerance": 0.005, "bound": "max", "passed": True},
        },
    }
    (row,) = gate_rows([out], {out.path: _bytes(over)})
    assert (row.status, row.failed) == ("over tolerance", True)
    assert row.detail == "gap over params.yaml compare: weight_rel_l2 0.133 > 0.001"
    assert gate_rows([out], {out.path: _bytes({**over, "passed": True})}) == []
    assert gate_rows([RAW], {RAW.path: b"\x00"}) == []  # only compare.json is read
